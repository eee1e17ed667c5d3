//! Macro strings (RFC 7208 §7): `%{letter digits r delimiters}`, `%%`, `%_`, `%-`, parsed once
//! with the record and expanded against a check's facts.

use std::net::IpAddr;

#[derive(Debug, Clone)]
pub(crate) struct MacroString(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Macro { letter: u8, upper: bool, keep: Option<usize>, reverse: bool, delimiters: String },
}

/// What the macros of one check expand to.
pub(crate) struct Facts<'a> {
    pub local: &'a str,
    pub sender_domain: &'a str,
    /// `<domain>` of the check_host() being evaluated.
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    /// `%{p}`: the validated name of the client, found only if a macro asks.
    pub validated: Option<&'a str>,
    /// `%{r}`: our own host name (explanations only).
    pub receiver: &'a str,
}

/// Where a macro string is expanded: `c`, `r` and `t` are for explanations only (§7.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    DomainSpec,
    Explanation,
}

impl MacroString {
    /// Parses a domain-spec: a macro string without `c`, `r` and `t`, which only explanation
    /// texts may use (§7.1); `None` for a syntax error.
    pub fn parse_spec(s: &str) -> Option<MacroString> {
        let m = MacroString::parse(s)?;
        let text_only = m.0.iter().any(|p| matches!(p, Part::Macro { letter: b'c' | b'r' | b't', .. }));
        (!text_only).then_some(m)
    }

    /// Parses a macro string; `None` for a syntax error.
    pub fn parse(s: &str) -> Option<MacroString> {
        let mut parts = vec![];
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            match chars.next()?.1 {
                '%' => lit.push('%'),
                '_' => lit.push(' '),
                '-' => lit.push_str("%20"),
                '{' => {
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    let (_, letter) = chars.next()?;
                    if !"slodiphcrtv".contains(letter.to_ascii_lowercase()) {
                        return None;
                    }
                    let mut digits = String::new();
                    while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                        digits.push(*d);
                        chars.next();
                    }
                    let reverse = chars.next_if(|(_, c)| *c == 'r' || *c == 'R').is_some();
                    let mut delimiters = String::new();
                    loop {
                        match chars.next()?.1 {
                            '}' => break,
                            d @ ('.' | '-' | '+' | ',' | '/' | '_' | '=') => delimiters.push(d),
                            _ => return None,
                        }
                    }
                    let keep = if digits.is_empty() {
                        None
                    } else {
                        // A zero is not a useful count (§7.3: "nonzero"); 128 is plenty.
                        let n: usize = digits.parse().ok().filter(|n| (1..=128).contains(n))?;
                        Some(n)
                    };
                    parts.push(Part::Macro {
                        letter: letter.to_ascii_lowercase() as u8,
                        upper: letter.is_ascii_uppercase(),
                        keep,
                        reverse,
                        delimiters,
                    });
                }
                _ => return None,
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Some(MacroString(parts))
    }

    /// Whether `%{p}` appears (it costs DNS look-ups to expand).
    pub fn wants_validated_name(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Macro { letter: b'p', .. }))
    }

    /// A domain-spec ends with a macro or with `.toplabel` and an optional dot (§7.1).
    pub fn is_domain_spec(&self) -> bool {
        match self.0.last() {
            None => false,
            Some(Part::Macro { .. }) => true,
            Some(Part::Literal(l)) => {
                if self.0.len() > 1 && l == "." {
                    // "%{d}." : the last macro is the domain end, followed by a dot.
                    return true;
                }
                let l = l.strip_suffix('.').unwrap_or(l);
                match l.rsplit_once('.') {
                    Some((_, top)) => is_toplabel(top),
                    // A literal without a dot ends a domain only after a macro ("%{d}x" no).
                    None => false,
                }
            }
        }
    }

    /// Expands the string; `None` when a letter is not allowed in `cx`.
    pub fn expand(&self, f: &Facts<'_>, cx: Context) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Macro { letter, upper, keep, reverse, delimiters } => {
                    let value = match letter {
                        b's' => format!("{}@{}", f.local, f.sender_domain),
                        b'l' => f.local.to_string(),
                        b'o' => f.sender_domain.to_string(),
                        b'd' => f.domain.to_string(),
                        b'i' => dotted(f.ip),
                        b'p' => f.validated.unwrap_or("unknown").to_string(),
                        b'v' => if f.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
                        b'h' => f.helo.to_string(),
                        b'c' if cx == Context::Explanation => f.ip.to_string(),
                        b'r' if cx == Context::Explanation => f.receiver.to_string(),
                        b't' if cx == Context::Explanation => unix_now().to_string(),
                        _ => return None,
                    };
                    let value = transform(&value, *keep, *reverse, delimiters);
                    if *upper {
                        out.push_str(&url_escape(&value));
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
        Some(out)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
pub(crate) fn is_toplabel(l: &str) -> bool {
    let b = l.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

/// `%{i}`: dotted decimal for IPv4, dot-separated nibbles for IPv6 (§7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for b in v6.octets() {
                for n in [b >> 4, b & 0xf] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    // Upper-case nibbles, as in RFC 7208's own examples.
                    s.push(char::from_digit(n.into(), 16).unwrap_or('0').to_ascii_uppercase());
                }
            }
            s
        }
    }
}

/// Splits on the delimiters (`.` by default), reverses if asked, keeps the rightmost `keep`
/// parts and joins them with dots.
fn transform(value: &str, keep: Option<usize>, reverse: bool, delimiters: &str) -> String {
    if keep.is_none() && !reverse && (delimiters.is_empty() || delimiters == ".") {
        return value.to_string();
    }
    let delims = if delimiters.is_empty() { "." } else { delimiters };
    let mut parts: Vec<&str> = value.split(|c| delims.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    let n = keep.unwrap_or(parts.len()).min(parts.len());
    parts[parts.len() - n..].join(".")
}

/// Uppercase macros are URL-escaped (§7.3): everything but the unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
