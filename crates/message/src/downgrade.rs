//! 8-bit content made 7-bit for a next hop without 8BITMIME (RFC 6152 §3, RFC 2045): every
//! part whose body has 8-bit octets is re-encoded — quoted-printable for text, base64 for
//! anything else — and labelled so; multiparts and embedded messages are walked into and
//! relabelled `7bit`. Header fields are left as they are: 8-bit octets in a header section
//! cannot be made 7-bit without guessing a charset, and such a message is refused.
//!
//! The walk is bounded ([`MAX_DEPTH`]) and each part is handled once, so no input makes it
//! recurse without end or grow beyond what the encodings cost.

use mail_builder::encoders::base64::Base64Encoder;
use mail_builder::encoders::quoted_printable::QuotedPrintableEncoder;

/// Deeper than this the message is refused (the session already refuses deeper structures:
/// `limits.max_mime_depth`, 50 by default).
pub const MAX_DEPTH: usize = 64;

/// Why a message cannot be made 7-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeError {
    #[error("a header section has 8-bit octets")]
    EightBitHeader,
    #[error("an already encoded part has 8-bit octets")]
    EncodedEightBit,
    #[error("MIME structure nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a message/global part (UTF-8 headers) cannot be made 7-bit")]
    Global,
}

/// The message (CRLF lines) with every 8-bit body re-encoded; ASCII input is returned as is.
pub fn to_seven_bit(message: &[u8]) -> Result<Vec<u8>, DowngradeError> {
    if message.is_ascii() {
        return Ok(message.to_vec());
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 3);
    entity(message, &mut out, 0, Default::Text)?;
    Ok(out)
}

/// Whether the message's header section has a `DKIM-Signature` or `ARC-Message-Signature`
/// field: re-encoding its body would break that signature.
pub fn is_signed(message: &[u8]) -> bool {
    let (headers, _) = split(message);
    headers.split(|b| *b == b'\n').any(|line| {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        name.eq_ignore_ascii_case(b"dkim-signature") || name.eq_ignore_ascii_case(b"arc-message-signature")
    })
}

/// What a part with no Content-Type is (RFC 2046 §5.1.5: in a multipart/digest, a message).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Default {
    Text,
    Message,
}

/// Splits an entity at the end of its header section: (headers including their last CRLF,
/// body). No empty line: all header; an entity starting with CRLF has no headers.
pub(crate) fn split(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&entity[..0], &entity[2..]);
    }
    match crate::blank_line(entity) {
        Some(i) => (&entity[..i + 2], &entity[i + 4..]),
        None => (entity, &entity[entity.len()..]),
    }
}

/// The unfolded value of the first `name` field, if any.
pub(crate) fn field(headers: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut value: Option<String> = None;
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case(name) {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

/// The header section without any `Content-Transfer-Encoding` field, with `cte` added.
fn relabel(headers: &[u8], cte: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 40);
    let mut skipping = false;
    for line in headers.split_inclusive(|b| *b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation {
            skipping = line.len() >= 26 && line[..26].eq_ignore_ascii_case(b"content-transfer-encoding:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
    out
}

/// `type/subtype` (lowercase) and the `boundary` parameter of a Content-Type value.
fn content_type(value: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(v) = value else { return (None, None) };
    let mut parts = v.split(';');
    let mime = parts.next().map(|t| t.trim().to_ascii_lowercase()).filter(|t| t.contains('/'));
    let boundary = parts.find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| val.trim().trim_matches('"').to_string())
    });
    (mime, boundary)
}

fn entity(data: &[u8], out: &mut Vec<u8>, depth: usize, default: Default) -> Result<(), DowngradeError> {
    if depth > MAX_DEPTH {
        return Err(DowngradeError::TooDeep);
    }
    let (headers, body) = split(data);
    if !headers.is_ascii() {
        return Err(DowngradeError::EightBitHeader);
    }
    if body.is_ascii() {
        // Nothing to encode; an `8bit`/`binary` label over ASCII is made true.
        let cte = field(headers, "content-transfer-encoding").map(|c| c.to_ascii_lowercase());
        match cte.as_deref() {
            Some("8bit" | "binary") => out.extend(relabel(headers, "7bit")),
            _ => out.extend_from_slice(headers),
        }
        if headers.len() < data.len() {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
        return Ok(());
    }
    let (mime, boundary) = content_type(field(headers, "content-type").as_deref());
    let mime = mime.unwrap_or_else(|| match default {
        Default::Text => "text/plain".into(),
        Default::Message => "message/rfc822".into(),
    });
    let cte = field(headers, "content-transfer-encoding").map(|c| c.to_ascii_lowercase());
    if matches!(cte.as_deref(), Some("base64" | "quoted-printable")) {
        return Err(DowngradeError::EncodedEightBit);
    }
    if let (true, Some(b)) = (mime.starts_with("multipart/"), boundary.filter(|b| !b.is_empty())) {
        let inner = if mime == "multipart/digest" { Default::Message } else { Default::Text };
        out.extend(relabel(headers, "7bit"));
        out.extend_from_slice(b"\r\n");
        return multipart(body, b.as_bytes(), out, depth, inner);
    }
    if mime == "message/global" {
        return Err(DowngradeError::Global);
    }
    if mime == "message/rfc822" {
        // RFC 2046 §5.2.1: an embedded message is never encoded itself; its parts are.
        out.extend(relabel(headers, "7bit"));
        out.extend_from_slice(b"\r\n");
        return entity(body, out, depth + 1, Default::Text);
    }
    let encoded = if mime.starts_with("text/") {
        out.extend(relabel(headers, "quoted-printable"));
        QuotedPrintableEncoder::new().preserve_line_breaks().encode(body)
    } else {
        out.extend(relabel(headers, "base64"));
        Base64Encoder::new().wrap_lines().encode(body)
    };
    out.extend_from_slice(b"\r\n");
    out.extend(encoded.unwrap_or_default());
    Ok(())
}

/// A multipart body: preamble, parts between `--boundary` lines, `--boundary--`, epilogue.
/// Preamble and epilogue are not shown to anyone (RFC 2046 §5.1.1): their 8-bit octets become
/// `?`.
fn multipart(
    body: &[u8],
    boundary: &[u8],
    out: &mut Vec<u8>,
    depth: usize,
    inner: Default,
) -> Result<(), DowngradeError> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    // Offsets of delimiter lines: (start of the line, end of the line incl. CRLF, closing).
    let mut lines = vec![];
    let mut at = 0;
    while at < body.len() {
        let end = memchr::memmem::find(&body[at..], b"\r\n").map_or(body.len(), |i| at + i + 2);
        let line = &body[at..end];
        if line.starts_with(&delimiter) {
            let rest = &line[delimiter.len()..];
            let closing = rest.starts_with(b"--");
            let tail = if closing { &rest[2..] } else { rest };
            if tail.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                lines.push((at, end, closing));
                if closing {
                    break;
                }
            }
        }
        at = end;
    }
    let seven = |bytes: &[u8]| -> Vec<u8> { bytes.iter().map(|b| if b.is_ascii() { *b } else { b'?' }).collect() };
    let Some(&(first, _, _)) = lines.first() else {
        // No delimiter at all: nothing to walk into.
        out.extend(seven(body));
        return Ok(());
    };
    // The preamble, with the CRLF before the first delimiter (it belongs to the delimiter).
    out.extend(seven(&body[..first]));
    for (i, &(start, end, closing)) in lines.iter().enumerate() {
        out.extend_from_slice(&body[start..end]);
        if closing {
            out.extend(seven(&body[end..]));
            return Ok(());
        }
        // The part runs to the CRLF before the next delimiter line, which belongs to that
        // line; an unterminated multipart's last part runs to the end.
        let next = lines.get(i + 1).map_or(body.len(), |l| l.0);
        let part_end = if next >= end + 2 && body[end..next].ends_with(b"\r\n") { next - 2 } else { next };
        entity(&body[end..part_end], out, depth + 1, inner)?;
        out.extend_from_slice(&body[part_end..next]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_untouched_and_a_false_8bit_label_is_corrected() {
        let m = b"Subject: x\r\n\r\nhello\r\n";
        assert_eq!(to_seven_bit(m).unwrap(), m);
        let m = b"Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\nhello\r\n";
        // ASCII as a whole: returned as is (the label is harmless on ASCII).
        assert_eq!(to_seven_bit(m).unwrap(), m);
    }

    #[test]
    fn a_text_body_becomes_quoted_printable() {
        let m = "Subject: caf\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCafé crème\r\nzweite Zeile\r\n";
        let out = String::from_utf8(to_seven_bit(m.as_bytes()).unwrap()).unwrap();
        assert!(out.is_ascii());
        assert!(out.starts_with("Subject: caf\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"), "{out}");
        assert!(out.contains("Caf=C3=A9 cr=C3=A8me\r\nzweite Zeile\r\n"), "{out}");
        assert_eq!(out.matches("Content-Transfer-Encoding").count(), 1, "{out}");
    }

    #[test]
    fn multiparts_and_embedded_messages_are_walked_into() {
        let m = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                 préambule\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nnaïve\r\n\
                 --b1\r\nContent-Type: application/octet-stream\r\n\r\n\u{ff}\u{fe}bin\r\n\
                 --b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\nünter\r\n\
                 --b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1--\r\népilogue\r\n";
        let out = String::from_utf8(to_seven_bit(m.as_bytes()).unwrap()).unwrap();
        assert!(out.is_ascii(), "{out}");
        assert!(out.contains("Content-Transfer-Encoding: 7bit\r\n\r\npr??ambule\r\n--b1\r\n"), "{out}");
        assert!(out.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--b1\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\n"),
            "{out}"
        );
        assert!(out.contains("=C3=BCnter\r\n--b1\r\n"), "{out}");
        assert!(out.contains("Content-Type: text/plain\r\n\r\nplain ascii\r\n--b1--\r\n??pilogue\r\n"), "{out}");
    }

    #[test]
    fn signatures_are_seen() {
        assert!(is_signed(b"Received: x\r\nDKIM-Signature: v=1; a=ed25519-sha256\r\n\r\nbody\r\n"));
        assert!(is_signed(b"arc-message-signature: i=1\r\n\r\n"));
        assert!(!is_signed(b"Subject: DKIM-Signature: no\r\n\r\nDKIM-Signature: in the body\r\n"));
    }

    #[test]
    fn what_cannot_be_made_seven_bit_is_refused() {
        assert_eq!(to_seven_bit("Subject: Grüße\r\n\r\nx\r\n".as_bytes()), Err(DowngradeError::EightBitHeader));
        assert_eq!(
            to_seven_bit("Content-Transfer-Encoding: base64\r\n\r\nü\r\n".as_bytes()),
            Err(DowngradeError::EncodedEightBit)
        );
        assert_eq!(
            to_seven_bit("Content-Type: message/global\r\n\r\nSubject: x\r\n\r\nü\r\n".as_bytes()),
            Err(DowngradeError::Global)
        );
        // Nested past the bound: refused, not a stack overflow.
        let mut m = String::new();
        for i in 0..200 {
            m += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n");
        }
        m += "\r\nü\r\n";
        assert_eq!(to_seven_bit(m.as_bytes()), Err(DowngradeError::TooDeep));
    }

    fn canonical(b: &[u8]) -> bool {
        b.iter().enumerate().all(|(i, &c)| match c {
            b'\n' => i > 0 && b[i - 1] == b'\r',
            b'\r' => b.get(i + 1) == Some(&b'\n'),
            _ => true,
        })
    }

    /// Messages put together from the pieces that matter (boundaries, labels, 8-bit octets,
    /// missing CRLFs): a downgrade is always 7-bit and CRLF-canonical, or a refusal.
    #[test]
    fn any_assembly_of_pieces_downgrades_to_canonical_seven_bit_or_is_refused() {
        const PIECES: &[&str] = &[
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
            "Content-Type: multipart/digest; boundary=b\r\n",
            "Content-Type: message/rfc822\r\n",
            "Content-Type: text/plain; charset=latin1\r\n",
            "Content-Type: image/png\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "Content-Transfer-Encoding: binary\r\n",
            " folded\r\n",
            "\r\n",
            "--b\r\n",
            "--b--\r\n",
            "--b",
            "caf\u{e9} \u{fc}ber\r\n",
            "\u{ff}\u{fe}\u{80}",
            "ascii line\r\n",
            "=3D trailing space \r\n",
            "\t\r\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut m = String::new();
            for _ in 0..(seed % 24) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                m.push_str(PIECES[(seed >> 33) as usize % PIECES.len()]);
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            if let Ok(out) = to_seven_bit(m.as_bytes()) {
                assert!(out.is_ascii(), "{m:?} → {:?}", String::from_utf8_lossy(&out));
                if canonical(m.as_bytes()) {
                    assert!(canonical(&out), "{m:?} → {:?}", String::from_utf8_lossy(&out));
                }
            }
        }
    }
}
