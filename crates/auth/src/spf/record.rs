//! An SPF record's syntax (RFC 7208 §4.6.1, §5, §6 and the ABNF of §12): `v=spf1` and its
//! terms. Any syntax error anywhere makes the whole record a `permerror` before anything is
//! evaluated (§4.6), so the record is parsed in full first.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::MacroString;

/// A parsed `v=spf1` record.
#[derive(Debug)]
pub(crate) struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

#[derive(Debug)]
pub(crate) struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug)]
pub(crate) enum Mechanism {
    All,
    Include(MacroString),
    /// `a` and `mx` take an optional target and prefix lengths for IPv4 and IPv6.
    A(Option<MacroString>, u8, u8),
    Mx(Option<MacroString>, u8, u8),
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

/// Whether a TXT record is an SPF record: `v=spf1` (any case) alone or followed by a space
/// (§4.5).
pub(crate) fn is_spf(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

/// Parses an SPF record (`is_spf` already holds). `None`: a syntax error, i.e. `permerror`.
pub(crate) fn parse(txt: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(txt).ok()?;
    let mut record = Record { directives: vec![], redirect: None, exp: None };
    // Terms are separated by spaces only (§12); anything else inside a term is a syntax error
    // of that term.
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        if !term.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return None;
        }
        if let Some((name, value)) = modifier(term) {
            let name = name.to_ascii_lowercase();
            let value = if name == "redirect" || name == "exp" {
                MacroString::parse_spec(value)?
            } else {
                MacroString::parse(value)?
            };
            match name.as_str() {
                "redirect" => {
                    if record.redirect.is_some() || !value.is_domain_spec() {
                        return None;
                    }
                    record.redirect = Some(value);
                }
                "exp" => {
                    if record.exp.is_some() || !value.is_domain_spec() {
                        return None;
                    }
                    record.exp = Some(value);
                }
                // Unknown modifiers are ignored, once their syntax is checked (§6).
                _ => {}
            }
            continue;
        }
        record.directives.push(directive(term)?);
    }
    Some(record)
}

/// `name=value` when the term is a modifier: a name (ALPHA *(ALPHA / DIGIT / - / _ / .))
/// before the first `=`.
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .then_some((name, value))
}

fn directive(term: &str) -> Option<Directive> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    // The mechanism's name ends at ':' or '/' (a/24, mx//64).
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(end);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(arg)?),
        "exists" => Mechanism::Exists(required_domain(arg)?),
        "ptr" => Mechanism::Ptr(optional_domain(arg)?),
        "a" | "mx" => {
            let (spec, v4, v6) = dual_cidr(arg)?;
            let target = optional_domain(spec)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A(target, v4, v6)
            } else {
                Mechanism::Mx(target, v4, v6)
            }
        }
        "ip4" => {
            let net = arg.strip_prefix(':')?;
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 32)?),
                None => (net, 32),
            };
            Mechanism::Ip4(ip4(addr)?, len)
        }
        "ip6" => {
            let net = arg.strip_prefix(':')?;
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 128)?),
                None => (net, 128),
            };
            Mechanism::Ip6(addr.parse().ok()?, len)
        }
        _ => return None,
    };
    Some(Directive { qualifier, mechanism })
}

/// `:domain-spec`, required.
fn required_domain(arg: &str) -> Option<MacroString> {
    let spec = MacroString::parse_spec(arg.strip_prefix(':')?)?;
    spec.is_domain_spec().then_some(spec)
}

/// Nothing, or `:domain-spec`.
fn optional_domain(arg: &str) -> Option<Option<MacroString>> {
    if arg.is_empty() {
        return Some(None);
    }
    required_domain(arg).map(Some)
}

/// Splits `[:domain-spec][/ip4-len][//ip6-len]` into the target part and the two lengths.
/// The lengths are taken from the end: a domain-spec may itself contain `/`.
fn dual_cidr(arg: &str) -> Option<(&str, u8, u8)> {
    let mut rest = arg;
    let mut v6 = 128;
    if let Some(i) = rest.rfind("//") {
        if is_len(&rest[i + 2..]) {
            v6 = cidr(&rest[i + 2..], 128)?;
            rest = &rest[..i];
        }
    }
    let mut v4 = 32;
    if let Some(i) = rest.rfind('/') {
        if is_len(&rest[i + 1..]) {
            v4 = cidr(&rest[i + 1..], 32)?;
            rest = &rest[..i];
        }
    }
    Some((rest, v4, v6))
}

fn is_len(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A prefix length: no leading zeros (ABNF), at most `max`.
fn cidr(s: &str, max: u8) -> Option<u8> {
    if !is_len(s) || (s.len() > 1 && s.starts_with('0')) || s.len() > 3 {
        return None;
    }
    let n: u16 = s.parse().ok()?;
    (n <= max as u16).then_some(n as u8)
}

/// A dotted quad with no leading zeros (the ABNF's qnum).
fn ip4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if !is_len(p) || (p.len() > 1 && p.starts_with('0')) || p.len() > 3 {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}
