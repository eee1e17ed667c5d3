//! The structural check that runs before anything parses a message.
//!
//! mail-parser builds a tree: an embedded `message/rfc822` becomes a nested `Message`. Its
//! parser walks plain nesting with its own stack, but turning a nested result into an owned
//! one, dropping it, and parsing an *encoded* embedded message (base64/quoted-printable inside
//! `message/global`) all recurse once per level. A few thousand levels fit in 160 KB and
//! overflow any small stack (a wasm fiber's first), so [`inspect`] measures the structure
//! first, without recursion and with bounded allocation, and refuses what is over the limits:
//!
//! 1. one pass over the lines: the top header section's field count and size, and caps on the
//!    lines that can open a part or a header field (what bounds the parser's allocations);
//! 2. a parse with `Content-Transfer-Encoding` ignored, which mail-parser does without any
//!    recursion, walked with an explicit stack for depth and part count — skipped when the
//!    message has no Content-Type, or one only, in its top header, naming a leaf type (then
//!    it is one part, whatever the parser would say: the common single-part message);
//! 3. embedded messages that *are* encoded: decoded here and measured the same way, as deep
//!    as mail-parser would decode them (three levels);
//! 4. every parse result is taken apart iteratively, so dropping it cannot recurse either.
//!
//! A message that passes has at most `max_depth` levels, and the lazy parse for plugins
//! ([`crate::ParsedMessage`]) recurses at most that deep.

use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders, PartType};
use mailgate_smtp::{Enhanced, Reply};

/// How far mail-parser decodes encoded embedded messages (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;

/// The structural limits of one message (see `[limits]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Deepest nesting of multiparts and embedded messages.
    pub max_depth: usize,
    /// Most parts in all, embedded messages' parts included.
    pub max_parts: usize,
    /// Most fields in the top header section.
    pub max_header_fields: usize,
    /// Largest top header section, in octets.
    pub max_header_size: usize,
}

impl MessageLimits {
    pub fn from_config(l: &mailgate_config::Limits) -> MessageLimits {
        MessageLimits {
            max_depth: l.max_mime_depth,
            max_parts: l.max_mime_parts,
            max_header_fields: l.max_header_fields,
            max_header_size: l.max_header_size,
        }
    }

    /// Lines that may open a part (`--…`, `Content-Type:`) before the parser is not even
    /// asked: a legitimate message has about two per part, plus some text that looks alike.
    fn max_part_lines(&self) -> usize {
        self.max_parts.saturating_mul(4).saturating_add(10_000)
    }

    /// Lines that look like a header field, anywhere in the message: every part's header
    /// fields plus body text that looks alike (`Note: …`).
    fn max_field_lines(&self) -> usize {
        self.max_parts.saturating_mul(10).saturating_add(self.max_header_fields).saturating_add(10_000)
    }
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits::from_config(&mailgate_config::Limits::default())
    }
}

/// Why a message's structure is refused. Each becomes `554 5.6.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("MIME structure nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("more than {limit} MIME parts")]
    TooManyParts { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaderFields { limit: usize },
    #[error("header section larger than {limit} octets")]
    HeaderTooBig { limit: usize },
}

impl MessageError {
    /// The reply the client gets (RFC 3463 5.6.0: other or undefined media error).
    pub fn reply(&self) -> Reply {
        Reply::new(554, Enhanced(5, 6, 0), format!("Message refused: {self}"))
    }
}

/// What [`inspect`] measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Structure {
    /// Levels of multiparts and embedded messages (a plain text message: 0).
    pub depth: usize,
    /// MIME parts in all (a plain text message: 1).
    pub parts: usize,
    /// Fields of the top header section.
    pub header_fields: usize,
    /// Octets of the top header section.
    pub header_size: usize,
}

/// Measures a message's structure and refuses it when it is over `limits`. Linear in the
/// size of the message, no recursion, and bounded allocation: safe on any stack.
pub fn inspect(raw: &[u8], limits: &MessageLimits) -> Result<Structure, MessageError> {
    let mut s = Structure::default();
    let lines = scan_lines(raw, limits)?;
    s.header_fields = lines.header_fields;
    s.header_size = lines.header_size;
    if lines.content_types == 0 || lines.single_leaf {
        // No Content-Type anywhere, or one in the top header that names no container type:
        // mail-parser sees one leaf part, whatever else is there.
        s.parts = 1;
        return Ok(s);
    }
    parse_and_measure(raw, limits, s)
}

/// Steps 2 to 4: the parse, the walk, encoded embedded messages.
fn parse_and_measure(raw: &[u8], limits: &MessageLimits, mut s: Structure) -> Result<Structure, MessageError> {
    // Buffers still to measure: the message, then decoded embedded messages, each with the
    // depth it sits at and how many encodings deep it is.
    let mut work: Vec<(Option<Vec<u8>>, usize, usize)> = vec![(None, 0, 0)];
    while let Some((buf, base, level)) = work.pop() {
        let bytes = buf.as_deref().unwrap_or(raw);
        if buf.is_some() {
            scan_lines(bytes, limits)?;
        }
        let parser = MessageParser::new().with_mime_headers().ignore_header(HeaderName::ContentTransferEncoding);
        let Some(message) = parser.parse(bytes) else { continue };
        let found = measure(&message, bytes, base, level, limits, &mut s, &mut work);
        dismantle(message);
        found?;
    }
    Ok(s)
}

/// What one pass over the lines found.
struct Lines {
    header_fields: usize,
    header_size: usize,
    /// Lines starting with `Content-Type` (any case), anywhere.
    content_types: usize,
    /// The only such line is a field of the top header section, and that field (with its
    /// continuation lines) cannot name a multipart or an embedded message: no `multipart`,
    /// no `message` (any case), no comment or encoded word that could hide either.
    single_leaf: bool,
}

/// Whether a Content-Type field (name, value and continuation lines) may open a container:
/// conservative, any doubt says yes (the full parse then decides).
/// One pass (every message with a Content-Type field comes here): only `m`, `M` and `=` start
/// a closer look.
fn may_contain(field: &[u8]) -> bool {
    let at = |i: usize, word: &[u8]| field.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
    field.iter().enumerate().any(|(i, b)| match b {
        b'(' | b'\\' | 0x80.. => true,
        b'm' | b'M' => at(i, b"multipart") || at(i, b"message"),
        b'=' => field.get(i + 1) == Some(&b'?'),
        _ => false,
    })
}

/// One pass over the lines (LF-terminated, CR or not): the top header section, and the caps
/// that bound what the parser will allocate.
fn scan_lines(raw: &[u8], limits: &MessageLimits) -> Result<Lines, MessageError> {
    let mut out = Lines { header_fields: 0, header_size: raw.len(), content_types: 0, single_leaf: false };
    let (mut in_header, mut part_lines, mut field_lines) = (true, 0usize, 0usize);
    // The top header's Content-Type field while its lines are read: where it starts.
    let mut ct_field: Option<usize> = None;
    let mut pos = 0;
    while pos < raw.len() {
        let end = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..end];
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if in_header {
            let continued = !body.is_empty() && matches!(body[0], b' ' | b'\t');
            if let Some(start) = ct_field.filter(|_| !continued) {
                // The top Content-Type field ended at this line.
                out.single_leaf = !may_contain(&raw[start..pos]);
                ct_field = None;
            }
            if body.is_empty() {
                in_header = false;
                out.header_size = pos;
            } else {
                if !continued {
                    out.header_fields += 1;
                    if out.header_fields > limits.max_header_fields {
                        return Err(MessageError::TooManyHeaderFields { limit: limits.max_header_fields });
                    }
                }
                if end > limits.max_header_size {
                    return Err(MessageError::HeaderTooBig { limit: limits.max_header_size });
                }
            }
        }
        let ct = body.len() >= 12 && body[..12].eq_ignore_ascii_case(b"content-type");
        if ct {
            out.content_types += 1;
            out.single_leaf = false;
            if in_header && out.content_types == 1 {
                ct_field = Some(pos);
            }
        }
        if ct || body.starts_with(b"--") {
            part_lines += 1;
            if part_lines > limits.max_part_lines() {
                return Err(MessageError::TooManyParts { limit: limits.max_parts });
            }
        }
        if looks_like_field(body) {
            field_lines += 1;
            if field_lines > limits.max_field_lines() {
                return Err(MessageError::TooManyHeaderFields { limit: limits.max_header_fields });
            }
        }
        pos = end;
    }
    if let Some(start) = ct_field {
        // A message that is all header, the Content-Type field last.
        out.single_leaf = !may_contain(&raw[start..]);
    }
    if out.content_types != 1 {
        out.single_leaf = false;
    }
    Ok(out)
}

/// `name:` at the start of a line, the name printable ASCII without spaces (RFC 5322 §2.2).
fn looks_like_field(line: &[u8]) -> bool {
    // The colon first (most body lines have none: base64, long words), then the name.
    memchr::memchr(b':', line).is_some_and(|c| c > 0 && line[..c].iter().all(|&b| b > b' ' && b < 127))
}

/// Walks one parse result with an explicit stack: depth and part count into `s`, encoded
/// embedded messages (decoded) onto `work`.
fn measure<'a>(
    message: &'a Message<'a>,
    bytes: &[u8],
    base: usize,
    level: usize,
    limits: &MessageLimits,
    s: &mut Structure,
    work: &mut Vec<(Option<Vec<u8>>, usize, usize)>,
) -> Result<(), MessageError> {
    // (message, part id, depth of that part, whether its parent is a multipart/digest)
    let mut stack: Vec<(&'a Message<'a>, u32, usize, bool)> = vec![(message, 0, base, false)];
    while let Some((m, id, depth, in_digest)) = stack.pop() {
        let Some(part) = m.parts.get(id as usize) else { continue };
        if id == 0 {
            s.parts += m.parts.len();
            if s.parts > limits.max_parts {
                return Err(MessageError::TooManyParts { limit: limits.max_parts });
            }
        }
        let ct = part.content_type();
        if let PartType::Multipart(children) = &part.body {
            let d = deeper(depth, limits, s)?;
            let digest = ct.is_some_and(|c| {
                c.ctype().eq_ignore_ascii_case("multipart")
                    && c.subtype().is_some_and(|t| t.eq_ignore_ascii_case("digest"))
            });
            // Children come after their parent in `parts`; anything else is ignored (no cycles).
            stack.extend(children.iter().filter(|&&c| c > id).map(|&c| (m, c, d, digest)));
            continue;
        }
        // mail-parser's rule for an embedded message: message/rfc822 or message/global, or no
        // Content-Type at all inside a multipart/digest.
        let embedded = match ct {
            Some(c) => {
                c.ctype().eq_ignore_ascii_case("message")
                    && c.subtype().is_some_and(|t| t.eq_ignore_ascii_case("rfc822") || t.eq_ignore_ascii_case("global"))
            }
            None => in_digest,
        };
        if !embedded {
            continue;
        }
        let d = deeper(depth, limits, s)?;
        match (encoding(part, bytes), &part.body) {
            (Some(decode), _) => {
                // mail-parser decodes this part and parses what comes out (as deep as
                // ENCODED_LEVELS): measure the same thing.
                if level < ENCODED_LEVELS {
                    let body = bytes.get(part.offset_body as usize..part.offset_end as usize).unwrap_or(&[]);
                    work.push((Some(decode(body)), d, level + 1));
                }
            }
            (None, PartType::Message(inner)) => stack.push((inner, 0, d, false)),
            (None, _) => {}
        }
    }
    Ok(())
}

/// One level deeper than `depth`, or the refusal when that is over the limit.
fn deeper(depth: usize, limits: &MessageLimits, s: &mut Structure) -> Result<usize, MessageError> {
    let d = depth + 1;
    if d > limits.max_depth {
        return Err(MessageError::TooDeep { limit: limits.max_depth });
    }
    s.depth = s.depth.max(d);
    Ok(d)
}

/// Turns an encoded body into the bytes it stands for.
type Decoder = fn(&[u8]) -> Vec<u8>;

/// The decoder of a part whose `Content-Transfer-Encoding` mail-parser would decode.
fn encoding(part: &mail_parser::MessagePart<'_>, bytes: &[u8]) -> Option<Decoder> {
    let h = part.headers.iter().find(|h| h.name == HeaderName::ContentTransferEncoding)?;
    let value = bytes.get(h.offset_start as usize..h.offset_end as usize)?;
    let value = String::from_utf8_lossy(value);
    let value = value.trim();
    if value.eq_ignore_ascii_case("base64") {
        Some(decode_base64)
    } else if value.eq_ignore_ascii_case("quoted-printable") {
        Some(decode_qp)
    } else {
        None
    }
}

/// Lenient base64 as MIME readers do it: characters outside the alphabet are skipped, `=`
/// ends the data.
fn decode_base64(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in src {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Quoted-printable: `=XX` decoded, soft line breaks removed, anything else kept.
fn decode_qp(src: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        if src[i] == b'=' {
            match (src.get(i + 1), src.get(i + 2)) {
                (Some(b'\r'), Some(b'\n')) => i += 3,
                (Some(b'\n'), _) => i += 2,
                (Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                    out.push(hex(a).unwrap_or(0) << 4 | hex(b).unwrap_or(0));
                    i += 3;
                }
                _ => {
                    out.push(b'=');
                    i += 1;
                }
            }
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
    out
}

/// Drops a parse result without recursion: embedded messages are moved out of their parts
/// onto a stack first, so each `Message` is dropped with flat parts.
pub fn dismantle(message: Message<'_>) {
    let mut stack = vec![message];
    while let Some(mut m) = stack.pop() {
        for p in m.parts.iter_mut() {
            if let PartType::Message(_) = p.body {
                if let PartType::Message(inner) = std::mem::take(&mut p.body) {
                    stack.push(inner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
