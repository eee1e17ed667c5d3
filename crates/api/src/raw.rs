//! `POST /api/v1/messages` with `Content-Type: message/rfc822`: a message the client wrote.
//! The envelope comes from the query (`from`, `to` — repeatable or comma-separated) or, when
//! absent, from the message's own From and To/Cc/Bcc fields, as `sendmail -t` does (the Bcc
//! field is then removed). Line ends are made CRLF (HTTP clients send files as they are).

use axum::http::StatusCode;
use mailgate_smtp::Address;

use crate::error::ApiError;

/// The envelope and the canonical message.
#[derive(Debug)]
pub struct Raw {
    pub from: Address,
    pub rcpts: Vec<Address>,
    pub message: Vec<u8>,
    /// Every address of the From field (the key's sender domains apply to them too).
    pub header_from: Vec<String>,
}

fn parse(s: &str, ptr: &str) -> Result<Address, ApiError> {
    Address::parse_mailbox(s.trim()).map_err(|_| ApiError::field(ptr, format!("{s:?} is not an address")))
}

/// Where the header section ends (the offset of the empty line's CRLF), or the whole length.
fn header_end(m: &[u8]) -> usize {
    if m.starts_with(b"\r\n") {
        return 0;
    }
    mailgate_message::blank_line(m).map_or(m.len(), |p| p + 2)
}

/// Reads only the fields the envelope comes from; every other field is skipped, not parsed
/// (a full parse of a header section cost more than the rest of reading the request). With
/// the whole envelope in the query only From is read (the key's sender domains bind it).
fn envelope_fields(from_only: bool) -> &'static mail_parser::MessageParser {
    use mail_parser::HeaderName::{self, *};
    fn parser(fields: &[HeaderName<'static>]) -> mail_parser::MessageParser {
        fields
            .iter()
            .fold(mail_parser::MessageParser::new(), |p, h| p.header_address(h.clone()))
            .default_header_ignore()
    }
    static ALL: std::sync::LazyLock<mail_parser::MessageParser> =
        std::sync::LazyLock::new(|| parser(&[From, Sender, To, Cc, Bcc]));
    static FROM: std::sync::LazyLock<mail_parser::MessageParser> = std::sync::LazyLock::new(|| parser(&[From]));
    if from_only {
        &FROM
    } else {
        &ALL
    }
}

/// The fields of `head` (a header section) named in `names` (lower case), each with its
/// continuation lines, then an empty line: what the envelope is read from. A header section
/// is mostly other fields, and mail-parser's reading of each name — even of a field it then
/// skips — cost more than the rest of reading a raw request.
fn only_fields(head: &[u8], names: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut taking = false;
    let mut at = 0;
    while at < head.len() {
        let end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |i| at + i + 1);
        let line = &head[at..end];
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            // A field's name: what comes before its colon, blanks before the colon allowed.
            taking = memchr::memchr(b':', line).is_some_and(|c| {
                let name = line[..c].trim_ascii_end();
                names.iter().any(|n| name.eq_ignore_ascii_case(n))
            });
        }
        if taking {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        at = end;
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The message without its Bcc fields (with their continuation lines).
fn without_bcc(m: Vec<u8>) -> Vec<u8> {
    let end = header_end(&m);
    let starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', &m[..end]).map(|i| i + 1));
    if !starts.into_iter().any(|at| m.get(at..at + 4).is_some_and(|n| n.eq_ignore_ascii_case(b"bcc:"))) {
        return m;
    }
    let mut out = Vec::with_capacity(m.len());
    let mut dropping = false;
    for line in m[..end].split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&m[end..]);
    out
}

/// Reads the envelope of a raw message. `query` is the decoded query string. A header section
/// larger than `max_header_size` is refused before it is parsed, as the cleanup stage would
/// refuse it after (with the same SMTP reply).
pub fn read(
    query: &[(String, String)],
    message: Vec<u8>,
    max_rcpts: usize,
    max_header_size: usize,
) -> Result<Raw, ApiError> {
    if message.is_empty() {
        return Err(ApiError::bad_request("empty", "the message is empty"));
    }
    let message = mailgate_smtp::content::into_crlf(message);
    let head = header_end(&message);
    if head > max_header_size {
        let reply = mailgate_message::MessageError::HeaderTooBig { limit: max_header_size }.reply();
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_message", reply.text.to_string());
        e.smtp = Some((&reply).into());
        return Err(e);
    }
    fn qs<'a>(query: &'a [(String, String)], k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        query.iter().filter(move |(n, _)| n == k).flat_map(|(_, v)| v.split(','))
    }
    let given: Vec<&str> = qs(query, "to").filter(|t| !t.trim().is_empty()).collect();
    let from_only = qs(query, "from").next().is_some() && !given.is_empty();
    let wanted: &[&[u8]] = if from_only { &[b"from"] } else { &[b"from", b"sender", b"to", b"cc", b"bcc"] };
    let fields = only_fields(&message[..head], wanted);
    let parsed = envelope_fields(from_only).parse_headers(&fields[..]);
    let addrs = |a: Option<&mail_parser::Address>| -> Vec<String> {
        a.map(|a| a.iter().filter_map(|x| x.address().map(str::to_string)).collect()).unwrap_or_default()
    };
    let header_from = addrs(parsed.as_ref().and_then(|p| p.from()));
    let mut unknown = query.iter().map(|(k, _)| k.as_str()).filter(|k| !["from", "to", "tag"].contains(k));
    if let Some(k) = unknown.next() {
        return Err(ApiError::field(format!("?{k}"), "unknown query parameter"));
    }
    let from = match qs(query, "from").next() {
        Some(f) => parse(f, "?from")?,
        None => {
            let sender = addrs(parsed.as_ref().and_then(|p| p.sender()));
            let one = if header_from.len() == 1 { header_from.first() } else { sender.first() };
            parse(
                one.ok_or_else(|| ApiError::field("?from", "no from given, and the message has no single From"))?,
                "From:",
            )?
        }
    };
    let mut distinct = crate::request::Recipients::new(max_rcpts);
    let too_many =
        |max: usize| ApiError::field("?to", format!("more than {max} recipients; at most {max} per message"));
    let mut push = |a: Address| distinct.add(a).map_err(too_many);
    let message = if given.is_empty() {
        let p = parsed.as_ref();
        for (a, field) in
            [(p.and_then(|p| p.to()), "To:"), (p.and_then(|p| p.cc()), "Cc:"), (p.and_then(|p| p.bcc()), "Bcc:")]
        {
            for x in addrs(a) {
                push(parse(&x, field)?)?;
            }
        }
        drop(parsed);
        without_bcc(message)
    } else {
        for t in given {
            push(parse(t, "?to")?)?;
        }
        message
    };
    let rcpts = distinct.into_vec();
    if rcpts.is_empty() {
        return Err(ApiError::field("?to", "no recipients: give ?to= or To/Cc/Bcc fields"));
    }
    Ok(Raw { from, rcpts, message, header_from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_from_query_or_fields() {
        let m =
            b"From: A <a@b.test>\nTo: x@y.test, X2 <x2@y.test>\nBcc: hidden@z.test,\n  h2@z.test\nSubject: s\n\nbody\n";
        let r = read(&[], m.to_vec(), 10, 1 << 20).unwrap();
        assert_eq!(r.from.as_str(), "a@b.test");
        let rc: Vec<&str> = r.rcpts.iter().map(|a| a.as_str()).collect();
        assert_eq!(rc, ["x@y.test", "x2@y.test", "hidden@z.test", "h2@z.test"]);
        let text = String::from_utf8(r.message).unwrap();
        assert!(!text.contains("hidden") && !text.contains("h2@"), "Bcc removed: {text}");
        assert!(text.contains("Subject: s\r\n\r\nbody\r\n"), "{text}");
        let q = vec![
            ("from".to_string(), "bounce@b.test".to_string()),
            ("to".to_string(), "p@q.test,r@q.test".to_string()),
        ];
        let r = read(&q, m.to_vec(), 10, 1 << 20).unwrap();
        assert_eq!(r.from.as_str(), "bounce@b.test");
        assert_eq!(r.rcpts.len(), 2);
        assert!(String::from_utf8(r.message).unwrap().contains("Bcc:"), "kept when the envelope is given");
        assert_eq!(r.header_from, ["a@b.test"]);
        // Half the envelope in the query: the other half still comes from the fields.
        let r = read(&[("to".into(), "p@q.test".into())], m.to_vec(), 10, 1 << 20).unwrap();
        assert_eq!((r.from.as_str(), r.rcpts.len()), ("a@b.test", 1));
        let r = read(&[("from".into(), "bounce@b.test".into())], m.to_vec(), 10, 1 << 20).unwrap();
        assert_eq!((r.from.as_str(), r.rcpts.len()), ("bounce@b.test", 4));
        let e = read(&[("to".into(), "nope".into())], m.to_vec(), 10, 1 << 20).unwrap_err();
        assert_eq!(e.pointer.as_deref(), Some("?to"));
        assert_eq!(
            read(&[], b"Subject: x\r\n\r\nb\r\n".to_vec(), 10, 1 << 20).unwrap_err().pointer.as_deref(),
            Some("?from")
        );
    }

    /// The envelope fields read from the selected fields are those read from the whole
    /// header section: folded fields, names in any case, a blank before the colon, names that
    /// begin like ours (`From-X`, `Toy`), fields given twice, groups and comments, a last field
    /// without a line end (read as if it had one).
    #[test]
    fn selected_fields_read_as_the_whole_section() {
        let fields = [
            "From: A <a@b.test>\r\n",
            "FROM : \"Q, R\" <q@b.test>, s@b.test\r\n",
            "From-X: no@b.test\r\n",
            "Toy: no@b.test\r\n",
            "To: x@y.test,\r\n\tX2 <x2@y.test>\r\n",
            "cc: group: g1@y.test, g2@y.test;, (comment) c@y.test\r\n",
            "Bcc: hidden@z.test,\r\n  h2@z.test\r\n",
            "Sender: sender@b.test\r\n",
            "Subject: To: not@y.test\r\n",
            "X-Long: aaaa\r\n bbbb\r\n From: fake@y.test\r\n",
            "To: second@y.test",
        ];
        let addrs = |a: Option<&mail_parser::Address>| -> Vec<String> {
            a.map(|a| a.iter().filter_map(|x| x.address().map(str::to_string)).collect()).unwrap_or_default()
        };
        let read = |p: Option<mail_parser::Message>| {
            let p = p.as_ref();
            [
                p.and_then(|p| p.from()),
                p.and_then(|p| p.sender()),
                p.and_then(|p| p.to()),
                p.and_then(|p| p.cc()),
                p.and_then(|p| p.bcc()),
            ]
            .map(addrs)
        };
        // Every field alone, every pair in both orders, and all of them.
        let mut heads: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        for a in &fields {
            for b in &fields {
                if !a.ends_with("y.test") {
                    heads.push(format!("{a}{b}"));
                }
            }
        }
        heads.push(fields.concat());
        for head in heads {
            for from_only in [false, true] {
                let wanted: &[&[u8]] = if from_only { &[b"from"] } else { &[b"from", b"sender", b"to", b"cc", b"bcc"] };
                // A last field without its line end is read too (the whole section's reading
                // drops it): compared with the section given its CRLF.
                let terminated = if head.ends_with('\n') { head.clone() } else { format!("{head}\r\n") };
                let whole = read(envelope_fields(from_only).parse_headers(terminated.as_bytes()));
                let selected =
                    read(envelope_fields(from_only).parse_headers(&only_fields(head.as_bytes(), wanted)[..]));
                assert_eq!(whole, selected, "{head:?}");
            }
        }
    }

    /// A header section over the limit is refused before it is parsed, with the reply the
    /// cleanup stage gives; many recipients are refused at the first one too many, from the
    /// fields and from the query alike, counting each address once.
    #[test]
    fn big_headers_and_many_recipients_are_refused_early() {
        let many: Vec<String> = (0..200_000).map(|i| format!("r{i}@y.test")).collect();
        let m = format!("From: a@b.test\r\nTo: {}\r\n\r\nbody\r\n", many.join(", "));
        let e = read(&[], m.clone().into_bytes(), 100, 512 << 10).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "invalid_message"), "{e:?}");
        assert_eq!(e.smtp.as_ref().map(|r| r.code), Some(554), "{e:?}");
        let e = read(&[], m.into_bytes(), 100, 8 << 20).unwrap_err();
        assert_eq!((e.pointer.as_deref(), e.status.as_u16()), (Some("?to"), 400), "{e:?}");
        let q = vec![("to".to_string(), many[..5_000].join(","))];
        let e = read(&q, b"From: a@b.test\r\n\r\nb\r\n".to_vec(), 100, 1 << 20).unwrap_err();
        assert_eq!(e.pointer.as_deref(), Some("?to"), "{e:?}");
        // The same 100 addresses four times over, in other cases: 100 recipients.
        let again: Vec<String> = (0..400).map(|i| format!("R{}@Y.test", i % 100)).collect();
        let q = vec![("to".to_string(), again.join(","))];
        let r = read(&q, b"From: a@b.test\r\n\r\nb\r\n".to_vec(), 100, 1 << 20).unwrap();
        assert_eq!(r.rcpts.len(), 100);
    }
}
