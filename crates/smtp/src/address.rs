//! Mailbox addresses in SMTP paths (RFC 5321 §4.1.2, RFC 6531 for UTF-8).

use std::fmt;

/// A mailbox `local@domain` from a path. The null reverse path `<>` is represented by
/// `Option<Address>::None` at the envelope level, never by an empty `Address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The mailbox as the client wrote it (quotes kept), e.g. `"a b"@example.org`.
    raw: String,
    /// Byte index of the `@` separating local part and domain.
    at: usize,
}

/// Why an address was refused; each maps to a reply in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// Not `<...>`, bad characters, empty parts.
    Syntax,
    /// Longer than RFC 5321 §4.5.3.1 allows (64 local, 255 domain, 256 path).
    TooLong,
}

impl Address {
    /// Parses a mailbox without angle brackets.
    pub fn parse_mailbox(s: &str) -> Result<Address, AddressError> {
        let at = if s.starts_with('"') {
            // Quoted local part: find the closing quote, honouring backslash escapes.
            let b = s.as_bytes();
            let mut i = 1;
            loop {
                match b.get(i) {
                    None => return Err(AddressError::Syntax),
                    Some(b'\\') => {
                        if b.get(i + 1).is_none_or(|c| *c < 0x20 && *c != b'\t') {
                            return Err(AddressError::Syntax);
                        }
                        i += 2
                    }
                    Some(b'"') => break,
                    Some(c) if *c < 0x20 || *c == 0x7f => return Err(AddressError::Syntax),
                    Some(_) => i += 1,
                }
            }
            if b.get(i + 1) != Some(&b'@') {
                return Err(AddressError::Syntax);
            }
            i + 1
        } else {
            let at = s.rfind('@').ok_or(AddressError::Syntax)?;
            let local = &s[..at];
            if local.is_empty()
                || local.starts_with('.')
                || local.ends_with('.')
                || local.contains("..")
                || !local.chars().all(|c| c == '.' || is_atext(c))
            {
                return Err(AddressError::Syntax);
            }
            at
        };
        let domain = &s[at + 1..];
        if !valid_domain(domain) {
            return Err(AddressError::Syntax);
        }
        if at > 64 || domain.len() > 255 || s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        Ok(Address { raw: s.to_string(), at })
    }

    /// Parses a path `<mailbox>` (with an optional obsolete source route `<@a,@b:mailbox>`,
    /// which RFC 5321 §4.1.2 says to accept and ignore). `<>` is refused here.
    pub fn parse_path(s: &str) -> Result<Address, AddressError> {
        let inner = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).ok_or(AddressError::Syntax)?;
        let inner = match inner.strip_prefix('@') {
            Some(route) => route.split_once(':').ok_or(AddressError::Syntax)?.1,
            None => inner,
        };
        Address::parse_mailbox(inner)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn local_part(&self) -> &str {
        &self.raw[..self.at]
    }
    pub fn domain(&self) -> &str {
        &self.raw[self.at + 1..]
    }
    /// The domain lower-cased, as used for routing and domain lookups.
    pub fn domain_lower(&self) -> String {
        self.domain().to_ascii_lowercase()
    }
    /// True when the address needs SMTPUTF8 (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.raw.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// RFC 5322 atext, extended with any non-ASCII character (RFC 6531 UTF8-non-ascii).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (!c.is_ascii() && !c.is_control())
}

/// A domain name (LDH labels, or U-labels under SMTPUTF8) or an address literal.
pub fn valid_domain(d: &str) -> bool {
    if let Some(lit) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= 255
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let a = Address::parse_path("<User@Example.ORG>").unwrap();
        assert_eq!((a.local_part(), a.domain(), a.domain_lower().as_str()), ("User", "Example.ORG", "example.org"));
        let a = Address::parse_path("<@relay.a,@relay.b:u@d.example>").unwrap();
        assert_eq!(a.as_str(), "u@d.example");
        let a = Address::parse_path("<\"a b@c\"@d.example>").unwrap();
        assert_eq!(a.domain(), "d.example");
        assert!(Address::parse_path("<ünïcode@bücher.example>").unwrap().is_utf8());
        assert!(Address::parse_path("<u@[127.0.0.1]>").is_ok());
        assert!(Address::parse_path("<u@[IPv6:::1]>").is_ok());
    }

    #[test]
    fn refuses_bad_paths() {
        for bad in [
            "u@d",
            "<u>",
            "<@d>",
            "<u@>",
            "<u..v@d>",
            "<.u@d>",
            "<u@-d.example>",
            "<u@d..e>",
            "<u v@d>",
            "<\"u@d>",
            "<>",
        ] {
            assert!(Address::parse_path(bad).is_err(), "{bad}");
        }
        let long = format!("<{}@d.example>", "x".repeat(65));
        assert_eq!(Address::parse_path(&long), Err(AddressError::TooLong));
    }
}
