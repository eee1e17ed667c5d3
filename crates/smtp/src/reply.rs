//! SMTP replies: building them (server side) and parsing them (client side).

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl Enhanced {
    /// Parses `x.y.z` (RFC 3463 §2: class 2, 4 or 5; subject and detail up to 3 digits).
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut it = s.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject = it.next()?;
        let detail = it.next()?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let ok = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok(subject) || !ok(detail) {
            return None;
        }
        Some(Enhanced(class, subject.parse().ok()?, detail.parse().ok()?))
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply: a code, an optional enhanced code and text (one or more lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Absent only where RFC 2034 exempts a reply (the greeting and the EHLO response).
    pub enhanced: Option<Enhanced>,
    /// Lines separated by `\n`; each becomes one reply line.
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Self {
        Reply { code, enhanced: Some(enhanced), text: text.into() }
    }

    /// A reply without an enhanced code (greeting, EHLO).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply { code, enhanced: None, text: text.into() }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (CRLF line ends, `-` continuation) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let code = self.code.to_string();
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            // Never let text smuggle a line end onto the wire.
            out.extend(line.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

/// Incremental parser of server replies (client side). Feed it lines; it returns a [`Reply`]
/// once the final line (`ddd SP`) of a possibly multi-line reply is seen.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

/// A malformed reply line from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply line: {:?}", self.0)
    }
}
impl std::error::Error for BadReply {}

impl ReplyParser {
    /// Feeds one line (without CRLF). Returns the finished reply after its last line.
    pub fn feed(&mut self, line: &[u8]) -> Result<Option<Reply>, BadReply> {
        let text = String::from_utf8_lossy(line);
        let bad = || BadReply(text.chars().take(200).collect());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let code: u16 = text[..3].parse().map_err(|_| bad())?;
        if !(200..600).contains(&code) || self.code.is_some_and(|c| c != code) {
            return Err(bad());
        }
        self.code = Some(code);
        let (last, rest) = match line.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &text[4..]),
            Some(b'-') => (false, &text[4..]),
            Some(_) => return Err(bad()),
        };
        self.lines.push(rest.to_string());
        if !last {
            if self.lines.len() > 100 {
                return Err(bad());
            }
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        // The enhanced code, when present, starts every line; keep it once.
        let enhanced = lines[0].split(' ').next().and_then(Enhanced::parse);
        let strip = |l: &String| -> String {
            match enhanced {
                Some(_) => l.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default(),
                None => l.clone(),
            }
        };
        let text = lines.iter().map(strip).collect::<Vec<_>>().join("\n");
        Ok(Some(Reply { code, enhanced, text: text.into() }))
    }
}

/// Replies the server sends, in one place so their codes stay consistent.
pub mod codes {
    use super::{Enhanced, Reply};

    pub fn ok() -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), "OK")
    }
    pub fn syntax(text: &'static str) -> Reply {
        Reply::new(501, Enhanced(5, 5, 4), text)
    }
    pub fn bad_sequence(text: &'static str) -> Reply {
        Reply::new(503, Enhanced(5, 5, 1), text)
    }
    pub fn unrecognized() -> Reply {
        Reply::new(500, Enhanced(5, 5, 2), "Command unrecognized")
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, Enhanced(5, 5, 2), "Line too long")
    }
    pub fn bare_line_ending() -> Reply {
        Reply::new(500, Enhanced(5, 5, 2), "Bare CR or LF not allowed; lines end with CRLF")
    }
    pub fn shutting_down() -> Reply {
        Reply::new(421, Enhanced(4, 3, 2), "Service shutting down, try again later")
    }
    pub fn timeout() -> Reply {
        Reply::new(421, Enhanced(4, 4, 2), "Timeout, closing connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_multiline_with_enhanced() {
        let r = Reply::new(250, Enhanced(2, 1, 0), "one\ntwo");
        assert_eq!(r.to_bytes(), b"250-2.1.0 one\r\n250 2.1.0 two\r\n");
        assert_eq!(Reply::plain(220, "hi").to_bytes(), b"220 hi\r\n");
        let evil = Reply::new(550, Enhanced(5, 7, 1), "a\rb");
        assert_eq!(evil.to_bytes(), b"550 5.7.1 ab\r\n");
    }

    #[test]
    fn parses_replies() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"250-mx.example Hello").unwrap(), None);
        assert_eq!(p.feed(b"250-PIPELINING").unwrap(), None);
        let r = p.feed(b"250 SIZE 100").unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "mx.example Hello\nPIPELINING\nSIZE 100");
        let r = p.feed(b"451 4.3.0 try later").unwrap().unwrap();
        assert_eq!((r.code, r.enhanced, &*r.text), (451, Some(Enhanced(4, 3, 0)), "try later"));
        assert!(p.feed(b"25x nope").is_err());
        assert!(p.feed(b"999 nope").is_err());
        assert_eq!(p.feed(b"250").unwrap().unwrap().text, "");
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(Enhanced::parse("5.7.1"), Some(Enhanced(5, 7, 1)));
        assert_eq!(Enhanced::parse("3.7.1"), None);
        assert_eq!(Enhanced::parse("5.7"), None);
        assert_eq!(Enhanced::parse("5.7.1234"), None);
    }
}

/// A TLS cipher suite's IANA name (as `Received:` fields of other MTAs write it) from rustls's
/// spelling, which prefixes TLS 1.3 suites with `TLS13_` (`TLS13_AES_256_GCM_SHA384` is
/// `TLS_AES_256_GCM_SHA384`); TLS 1.2 names are the same in both.
pub fn iana_cipher_name(rustls_name: &str) -> String {
    match rustls_name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls_name.to_string(),
    }
}

#[cfg(test)]
mod cipher_tests {
    #[test]
    fn iana_names() {
        assert_eq!(super::iana_cipher_name("TLS13_AES_256_GCM_SHA384"), "TLS_AES_256_GCM_SHA384");
        assert_eq!(
            super::iana_cipher_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }
}
