//! The Authentication-Results header field (RFC 8601): ours is added, and any that claims our
//! authserv-id on an incoming message is removed first (section 5: such a field is forged or
//! stale and downstream filters must not trust it).

use std::net::IpAddr;

use crate::results::{Dkim, Iprev, MessageResults, Spf, Status};

/// The value of our Authentication-Results field (without the name) for what was computed;
/// `<id>; none` when nothing was (the gateway then adds no field at all).
pub fn authentication_results(
    authserv_id: &str,
    ip: IpAddr,
    spf: &[&Spf],
    iprev: Option<&Iprev>,
    message: Option<&MessageResults>,
) -> String {
    let mut parts = vec![];
    if let Some(m) = message {
        if m.dkim.is_empty() {
            parts.push("dkim=none".to_string());
        }
        for Dkim { status, domain, selector, reason } in &m.dkim {
            let why = reason.as_ref().map(|r| format!(" ({})", clean(r))).unwrap_or_default();
            parts.push(format!(
                "dkim={}{why} header.d={} header.s={}",
                status.as_str(),
                clean(domain),
                clean(selector)
            ));
        }
    }
    for s in spf {
        let key = if s.helo { "smtp.helo" } else { "smtp.mailfrom" };
        parts.push(format!("spf={} {key}={}", s.status.as_str(), clean(&s.domain)));
    }
    if let Some(m) = message {
        if let Some(d) = &m.dmarc {
            let p = match d.policy {
                crate::Policy::None => "none",
                crate::Policy::Quarantine => "quarantine",
                crate::Policy::Reject => "reject",
            };
            parts.push(format!("dmarc={} header.from={} policy.dmarc={p}", d.status.as_str(), clean(&d.domain)));
        }
        if m.arc.status != Status::None || m.arc.instances > 0 {
            parts.push(format!("arc={} smtp.remote-ip={ip}", m.arc.status.as_str()));
        }
    }
    if let Some(i) = iprev {
        let host = i.hostname.as_ref().map(|h| format!(" ({})", clean(h))).unwrap_or_default();
        parts.push(format!("iprev={}{host} policy.iprev={ip}", i.status.as_str()));
    }
    if parts.is_empty() {
        return format!("{authserv_id}; none");
    }
    format!("{authserv_id};\r\n\t{}", parts.join(";\r\n\t"))
}

/// Header text may not break the field: no CR/LF, no ';' or parentheses that would nest.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() && !matches!(c, ';' | '(' | ')')).take(200).collect()
}

/// Removes every Authentication-Results field (or ARC-Authentication-Results is left alone)
/// whose authserv-id is `authserv_id` (case-insensitive) from the header of `raw`; returns how
/// many were removed.
pub fn strip_ours(raw: &mut Vec<u8>, authserv_id: &str) -> usize {
    let body_at = find_body(raw);
    // The common case, no such field at all, costs one scan and no copy.
    let name = b"authentication-results:";
    let has_any = raw[..body_at]
        .split(|&b| b == b'\n')
        .any(|line| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name));
    if !has_any {
        return 0;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut removed = 0;
    let mut i = 0;
    while i < body_at {
        // One field: a line and its continuation lines.
        let mut end = next_line(raw, i);
        while end < body_at && matches!(raw.get(end), Some(b' ' | b'\t')) {
            end = next_line(raw, end);
        }
        let field = &raw[i..end];
        if is_ours(field, authserv_id) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
        i = end;
    }
    out.extend_from_slice(&raw[body_at..]);
    *raw = out;
    removed
}

fn next_line(raw: &[u8], from: usize) -> usize {
    raw[from..].iter().position(|&b| b == b'\n').map_or(raw.len(), |p| from + p + 1)
}

/// Offset of the empty line that ends the header (or the end).
fn find_body(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\r\n") || raw[i..].starts_with(b"\n") {
            return i;
        }
        i = next_line(raw, i);
    }
    raw.len()
}

fn is_ours(field: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(field);
    let Some((name, value)) = text.split_once(':') else { return false };
    if !name.trim().eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    // The authserv-id is the first token, before ';' (CFWS and a version may follow it).
    let id = value.trim_start().split([';', ' ', '\t', '\r', '\n', '(']).next().unwrap_or("");
    id.eq_ignore_ascii_case(authserv_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_fields_with_our_authserv_id() {
        let mut m = b"Authentication-Results: MX.Gateway.test;\r\n\tspf=pass smtp.mailfrom=evil.test\r\nAuthentication-Results: other.example; dkim=pass\r\nSubject: x\r\n\r\nAuthentication-Results: mx.gateway.test; body text stays\r\n".to_vec();
        assert_eq!(strip_ours(&mut m, "mx.gateway.test"), 1);
        let s = String::from_utf8(m).unwrap();
        assert!(s.starts_with("Authentication-Results: other.example; dkim=pass\r\nSubject: x\r\n\r\n"), "{s}");
        assert!(s.contains("body text stays"));
    }

    #[test]
    fn header_lists_what_was_computed() {
        let spf = Spf { status: Status::Fail, domain: "a.test".into(), helo: false };
        let h = authentication_results("mx.test", "192.0.2.1".parse().unwrap(), &[&spf], None, None);
        assert_eq!(h, "mx.test;\r\n\tspf=fail smtp.mailfrom=a.test");
        assert_eq!(authentication_results("mx.test", "192.0.2.1".parse().unwrap(), &[], None, None), "mx.test; none");
    }
}
