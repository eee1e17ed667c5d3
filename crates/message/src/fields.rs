//! Facts about a message's own header fields that decide how it travels, read from the raw
//! bytes without a parse.

use crate::downgrade::{field, split};

/// `TLS-Required: No` (RFC 8689 §5): the sender asks that the recipient domain's TLS policies
/// (MTA-STS, DANE) not stop delivery. Meaningless, and ignored by the caller, when the
/// message came with REQUIRETLS.
pub fn tls_required_no(message: &[u8]) -> bool {
    let (headers, _) = split(message);
    // Asked at every delivery, and almost no message has the field: first one pass over the
    // line starts (a field name starts a line; continuation lines start with a space or tab).
    let named = |line: &[u8]| line.len() >= 12 && line[..12].eq_ignore_ascii_case(b"tls-required");
    if !named(headers) && !memchr::memchr_iter(b'\n', headers).any(|i| named(&headers[i + 1..])) {
        return false;
    }
    field(headers, "tls-required").is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
}

/// The fields called `name` (any case, blanks allowed before the colon) in the header section,
/// in order, each whole: name, value and continuation lines, through its last line end. For
/// reading one field with a parser without having it parse every other field (a `Received:`
/// or a `DKIM-Signature:` costs more to parse than a `From:`).
pub fn raw_fields<'m>(message: &'m [u8], name: &'m str) -> impl Iterator<Item = &'m [u8]> + 'm {
    // The header section ends at the first empty line, whichever line end it has (a message
    // from the spool has CRLF only; this does not rely on it).
    let headers = message;
    let n = name.len();
    let named = move |line: &[u8]| {
        line.len() > n
            && line[..n].eq_ignore_ascii_case(name.as_bytes())
            && line[n..].iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b':')
    };
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', headers).map(|i| i + 1))
        .take_while(move |&at| !headers[at..].starts_with(b"\n") && !headers[at..].starts_with(b"\r\n"))
        .filter(move |&at| named(&headers[at..]))
        .map(move |start| {
            let mut end = start;
            while let Some(i) = memchr::memchr(b'\n', &headers[end..]) {
                end += i + 1;
                if !matches!(headers.get(end), Some(b' ' | b'\t')) {
                    return &headers[start..end];
                }
            }
            &headers[start..]
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_are_whole_fields_of_the_header_section() {
        let all = |m: &'static [u8], name: &'static str| raw_fields(m, name).collect::<Vec<_>>();
        let m = b"Subject: from: x\r\nX-From: a\r\nFrom : a@b.example,\r\n\tc@d.example\r\n To: no\r\nFrom: second\r\n\r\nFrom: body\r\n";
        assert_eq!(all(m, "from"), [&b"From : a@b.example,\r\n\tc@d.example\r\n To: no\r\n"[..], b"From: second\r\n"]);
        assert_eq!(all(m, "x-from"), [b"X-From: a\r\n"]);
        assert_eq!(all(b"from:a", "From"), [b"from:a"], "no line end, no body");
        assert_eq!(all(b"From: a\r\n b", "From"), [b"From: a\r\n b"], "a continuation without a line end");
        assert!(all(b"Fromage: x\r\nFrom\r\n\r\n", "from").is_empty(), "another name, no colon");
        assert!(all(b"To: x\r\n\r\nFrom: body\r\n", "from").is_empty(), "only in the body");
        assert!(all(b"\r\nFrom: body\r\n", "from").is_empty(), "no header section");
        assert_eq!(all(b"To: x\nFrom: y\n", "from"), [b"From: y\n"], "bare line feeds");
        assert!(all(b"To: x\n\nFrom: body\n", "from").is_empty(), "ended by a bare empty line");
        assert!(all(b"To: x\n\r\nFrom: body\n", "from").is_empty(), "ended by an empty line after a bare one");
    }

    #[test]
    fn tls_required_no_is_read_from_the_header_section_only() {
        assert!(tls_required_no(b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n"));
        assert!(tls_required_no(b"tls-required:  no \r\n\r\n"));
        assert!(!tls_required_no(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_required_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n"));
        assert!(tls_required_no(b"Subject: x\r\nTLS-REQUIRED : no\r\n\r\n"));
        assert!(tls_required_no(b"Subject: x\r\nTLS-Required:\r\n No\r\n\r\n"), "folded");
        assert!(!tls_required_no(b"Subject: x\r\n TLS-Required: No\r\n\r\n"), "a continuation line");
        assert!(!tls_required_no(b"Subject: x\r\nX-TLS-Required: No\r\n\r\n"));
    }
}
