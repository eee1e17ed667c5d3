//! helo-check: refuses a HELO/EHLO argument that is neither a valid host name nor an
//! address literal (`501 5.5.2`), and an address literal that is not the client's own IP
//! address (`550 5.7.1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct HeloCheck {
    /// Also check clients that the gateway config trusts (they are skipped by default).
    check_trusted: bool,
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// RFC 5321 address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`; `None` if malformed.
fn address_literal(text: &str) -> Option<IpAddr> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => inner.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

impl Filter for HeloCheck {
    fn init(&mut self) -> Result<(), String> {
        self.check_trusted = config::parse("check_trusted")?.unwrap_or(false);
        Ok(())
    }

    fn on_helo(&mut self, conn: &ConnectionInfo, helo: &str) -> Verdict {
        if conn.trusted && !self.check_trusted {
            return Verdict::Next;
        }
        if !helo.starts_with('[') {
            return match valid_hostname(helo) {
                true => Verdict::Next,
                false => {
                    Verdict::reject(501, "5.5.2", "HELO/EHLO argument is not a valid host name")
                }
            };
        }
        let Some(literal) = address_literal(helo) else {
            return Verdict::reject(501, "5.5.2", "HELO/EHLO address literal is malformed");
        };
        let client = conn.client_ip.parse::<IpAddr>().map(|ip| ip.to_canonical());
        if client == Ok(literal.to_canonical()) {
            Verdict::Next
        } else {
            Verdict::reject(
                550,
                "5.7.1",
                format!("HELO {helo} is not your address {}", conn.client_ip),
            )
        }
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(HeloCheck);
