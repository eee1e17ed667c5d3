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

#[cfg(test)]
mod tests {
    use super::*;

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
