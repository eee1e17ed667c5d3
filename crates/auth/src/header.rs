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
            let mut part = format!("dkim={}", status.as_str());
            if let Some(r) = reason {
                part += &format!(" ({})", clean(r));
            }
            for (key, value) in [("header.d", token(domain)), ("header.s", token(selector))] {
                if !value.is_empty() {
                    part += &format!(" {key}={value}");
                }
            }
            parts.push(part);
        }
    }
    for s in spf {
        let key = if s.helo { "smtp.helo" } else { "smtp.mailfrom" };
        let part = format!("spf={} {key}={}", s.status.as_str(), token(&s.domain));
        // The null sender's MAIL FROM result is the HELO identity's: show it once.
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    if let Some(m) = message {
        if let Some(d) = &m.dmarc {
            let p = match d.policy {
                crate::Policy::None => "none",
                crate::Policy::Quarantine => "quarantine",
                crate::Policy::Reject => "reject",
            };
            parts.push(format!("dmarc={} header.from={} policy.dmarc={p}", d.status.as_str(), token(&d.domain)));
        }
        if m.arc.status != Status::None {
            let why = m.arc.reason.as_ref().map(|r| format!(" ({})", clean(r))).unwrap_or_default();
            parts.push(format!("arc={}{why} smtp.remote-ip={ip}", m.arc.status.as_str()));
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

/// A comment's text: no CR/LF, no parentheses or backslash that would end or escape it.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() && !matches!(c, ';' | '(' | ')' | '\\' | '"')).take(200).collect()
}

/// A property value (RFC 8601 `pvalue`): a domain, selector or address; anything else is
/// dropped so that a hostile PTR name or selector cannot bend the field.
fn token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+' | ':'))
        .take(200)
        .collect()
}

/// Removes every Authentication-Results field whose authserv-id is `authserv_id`
/// (case-insensitive; comments and quotes around the id do not hide it) from the header of
/// `raw`; returns how many were removed. ARC-Authentication-Results fields are not touched.
pub fn strip_ours(raw: &mut Vec<u8>, authserv_id: &str) -> usize {
    let body_at = find_body(raw);
    // The common case, no line starting with that name (field names start a line; spaces may
    // follow the name before the colon), costs one pass over line starts and no copy.
    let name = b"authentication-results";
    let head = &raw[..body_at];
    let mut line_starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', head).map(|i| i + 1));
    let has_any = line_starts.any(|at| head.get(at..at + name.len()).is_some_and(|n| n.eq_ignore_ascii_case(name)));
    if !has_any {
        return 0;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut removed = 0;
    for field in fields(&raw[..body_at]) {
        if is_ours(field, authserv_id) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&raw[body_at..]);
    *raw = out;
    removed
}

/// Why the header From of `raw` cannot be judged by DMARC or matched to a signing domain,
/// if it cannot: more than one From field (RFC 5322 allows one), or mailboxes of more than one
/// domain in it (RFC 7489 §6.6.1). Such a message would otherwise slip past DMARC.
pub fn ambiguous_from(raw: &[u8]) -> Option<String> {
    // Bytes, not text: this runs on every message, and a field name is ASCII.
    let mut froms: Vec<&[u8]> = vec![];
    for field in fields(&raw[..find_body(raw)]) {
        if let Some(colon) = memchr::memchr(b':', field) {
            let name = &field[..colon];
            // A non-ASCII name is trimmed as text (Unicode spaces too), as it always was.
            let is_from = match name.is_ascii() {
                true => name.trim_ascii().eq_ignore_ascii_case(b"from"),
                false => String::from_utf8_lossy(name).trim().eq_ignore_ascii_case("from"),
            };
            if is_from {
                froms.push(&field[colon + 1..]);
            }
        }
    }
    if froms.len() > 1 {
        return Some(format!("{} From header fields", froms.len()));
    }
    // One mailbox (the common case) cannot name two domains: no parse needed.
    if froms.first().is_none_or(|f| memchr::memchr_iter(b'@', f).nth(1).is_none()) {
        return None;
    }
    let parsed = mail_parser::MessageParser::default().parse_headers(raw)?;
    let mut domains: Vec<String> = parsed
        .from()?
        .iter()
        .filter_map(|a| a.address.as_ref()?.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    (domains.len() > 1).then(|| format!("From addresses in {} domains", domains.len()))
}

/// The fields of a header section: each a line with its continuation lines, CRLFs included.
fn fields(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= header.len() {
            return None;
        }
        let mut end = next_line(header, i);
        while matches!(header.get(end), Some(b' ' | b'\t')) {
            end = next_line(header, end);
        }
        let field = &header[i..end];
        i = end;
        Some(field)
    })
}

fn next_line(raw: &[u8], from: usize) -> usize {
    memchr::memchr(b'\n', &raw[from..]).map_or(raw.len(), |p| from + p + 1)
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
    // The authserv-id is the first token before ';'; CFWS (comments, folding) may come
    // before and after it, and it may be a quoted string.
    let mut v = value.replace(['\r', '\n'], " ");
    loop {
        let t = v.trim_start();
        if let Some(rest) = t.strip_prefix('(') {
            v = rest.split_once(')').map_or("", |(_, r)| r).to_string();
        } else {
            v = t.to_string();
            break;
        }
    }
    let id = v.split([';', ' ', '\t', '(']).next().unwrap_or("").trim_matches('"');
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
    fn comments_quotes_and_spacing_do_not_hide_our_id() {
        for forged in [
            "Authentication-Results : mx.gw.test; dkim=pass",
            "authentication-results:(sneaky) mx.gw.test; dkim=pass",
            "Authentication-Results: \"MX.GW.TEST\"; dkim=pass",
            "Authentication-Results:\r\n\t(folded)\r\n mx.gw.test;\r\n\tdkim=pass",
        ] {
            let mut m = format!("{forged}\r\nSubject: x\r\n\r\nbody\r\n").into_bytes();
            assert_eq!(strip_ours(&mut m, "mx.gw.test"), 1, "{forged}");
            assert_eq!(m, b"Subject: x\r\n\r\nbody\r\n");
        }
        let mut other = b"Authentication-Results: (mx.gw.test) other.test; dkim=pass\r\n\r\n".to_vec();
        assert_eq!(strip_ours(&mut other, "mx.gw.test"), 0);
    }

    #[test]
    fn hostile_values_cannot_bend_the_field() {
        let ip = "192.0.2.1".parse().unwrap();
        let iprev = Iprev { status: Status::Pass, hostname: Some("evil\\) ; dkim=pass (".into()) };
        let h = authentication_results("mx.test", ip, &[], Some(&iprev), None);
        assert_eq!(h, "mx.test;\r\n\tiprev=pass (evil  dkim=pass ) policy.iprev=192.0.2.1");
        let m = MessageResults {
            dkim: vec![Dkim {
                status: Status::TempError,
                domain: String::new(),
                selector: String::new(),
                reason: None,
            }],
            dmarc: None,
            arc: crate::results::Arc { status: Status::None, reason: None, instances: 0, sealer: None },
        };
        assert_eq!(authentication_results("mx.test", ip, &[], None, Some(&m)), "mx.test;\r\n\tdkim=temperror");
    }

    #[test]
    fn two_from_fields_or_domains_are_ambiguous() {
        assert_eq!(ambiguous_from(b"From: a@x.test\r\nSubject: s\r\n\r\nb"), None);
        assert_eq!(ambiguous_from(b"From: a@x.test, b@x.test\r\n\r\nb"), None);
        assert!(ambiguous_from(b"From: a@bank.test\r\nfrom : b@evil.test\r\n\r\nb").is_some());
        assert!(ambiguous_from(b"From: a@bank.test, b@evil.test\r\n\r\nb").is_some());
        assert!(ambiguous_from(b"From: a@bank.test\r\nFrom\xc2\xa0: b@evil.test\r\n\r\nb").is_some(), "Unicode space");
        assert!(ambiguous_from(b"From: \"x@y\" <a@bank.test>\r\n\r\nb").is_none(), "two @, one domain");
    }

    #[test]
    fn header_lists_what_was_computed() {
        let spf = Spf { status: Status::Fail, domain: "a.test".into(), helo: false, explanation: None };
        let h = authentication_results("mx.test", "192.0.2.1".parse().unwrap(), &[&spf], None, None);
        assert_eq!(h, "mx.test;\r\n\tspf=fail smtp.mailfrom=a.test");
        assert_eq!(authentication_results("mx.test", "192.0.2.1".parse().unwrap(), &[], None, None), "mx.test; none");
    }
}
