//! Facts about a message's own header fields that decide how it travels, read from the raw
//! bytes without a parse.

use crate::downgrade::{field, split};

/// `TLS-Required: No` (RFC 8689 §5): the sender asks that the recipient domain's TLS policies
/// (MTA-STS, DANE) not stop delivery. Meaningless, and ignored by the caller, when the
/// message came with REQUIRETLS.
pub fn tls_required_no(message: &[u8]) -> bool {
    let (headers, _) = split(message);
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
    }
}
