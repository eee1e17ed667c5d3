//! SMTP replies: building them (server side) and parsing them (client side).

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl Enhanced {
    /// Parses `x.y.z` (RFC 3463 §2: class 2, 4 or 5; subject and detail 1 to 3 digits). Every
    /// reply read from a next hop is asked: octets, not `str::split` and `parse`.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let b = s.as_bytes();
        let (&class, rest) = b.split_first()?;
        if !matches!(class, b'2' | b'4' | b'5') {
            return None;
        }
        let rest = rest.strip_prefix(b".")?;
        let dot = rest.iter().position(|c| *c == b'.')?;
        let (subject, detail) = (number(&rest[..dot])?, number(&rest[dot + 1..])?);
        return Some(Enhanced(class - b'0', subject, detail));

        fn number(d: &[u8]) -> Option<u16> {
            if d.is_empty() || d.len() > 3 || !d.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(d.iter().fold(0u16, |n, c| n * 10 + u16::from(c - b'0')))
        }
    }
}

impl Enhanced {
    /// Appends `class.subject.detail` to `out` (replies are written for every command: no
    /// formatter machinery).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        push_decimal(out, u64::from(self.0));
        out.push(b'.');
        push_decimal(out, u64::from(self.1));
        out.push(b'.');
        push_decimal(out, u64::from(self.2));
    }
}

/// A reply code's three digits (codes are 200–599 by construction; others are written modulo
/// 1000, as the wire has room for three).
fn three_digits(code: u16) -> [u8; 3] {
    let c = code % 1000;
    [b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]
}

/// Appends `n` in decimal to `out`, without the formatter (reply codes on every reply; message
/// ids of the API).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        // The parts of an enhanced status code, mostly.
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
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
        let code = three_digits(self.code);
        // Most replies are one line without a CR: written without splitting (a reply goes out
        // for every command).
        if memchr::memchr2(b'\n', b'\r', self.text.as_bytes()).is_none() {
            out.extend_from_slice(&code);
            out.push(b' ');
            if let Some(e) = self.enhanced {
                e.write_to(out);
                if !self.text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(self.text.as_bytes());
            out.extend_from_slice(b"\r\n");
            return;
        }
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.push(if lines.peek().is_none() { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                e.write_to(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            // Never let text smuggle a line end onto the wire.
            if line.contains('\r') {
                out.extend(line.bytes().filter(|b| *b != b'\r'));
            } else {
                out.extend_from_slice(line.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Writes a reply without an enhanced code from its lines, as `write_to` writes
    /// `Reply::plain(code, lines.join("\n"))`, without joining them into a `String` first
    /// (EHLO's list of extensions, at every connection; RFC 2034 gives it no enhanced code). A
    /// CR or LF inside a line is dropped: a line stays one line on the wire.
    pub fn write_lines(out: &mut Vec<u8>, code: u16, lines: &[&str]) {
        let code = three_digits(code);
        if lines.is_empty() {
            out.extend_from_slice(&code);
            out.extend_from_slice(b" \r\n");
        }
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(&code);
            out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
            if line.bytes().any(|b| b == b'\r' || b == b'\n') {
                out.extend(line.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            } else {
                out.extend_from_slice(line.as_bytes());
            }
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
    /// One line: `code [enhanced] text`, the text's lines joined by ` / `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&three_digits(self.code));
        head.push(b' ');
        if let Some(e) = self.enhanced {
            e.write_to(&mut head);
            head.push(b' ');
        }
        // ASCII digits, dots and spaces only.
        f.write_str(std::str::from_utf8(&head).unwrap_or_default())?;
        let mut lines = self.text.split('\n');
        f.write_str(lines.next().unwrap_or_default())?;
        for line in lines {
            f.write_str(" / ")?;
            f.write_str(line)?;
        }
        Ok(())
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
        let bad = || BadReply(String::from_utf8_lossy(line).chars().take(200).collect());
        let [a, b, c, ..] = *line else { return Err(bad()) };
        if ![a, b, c].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
        if !(200..600).contains(&code) || self.code.is_some_and(|c| c != code) {
            return Err(bad());
        }
        self.code = Some(code);
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(bad()),
        };
        let rest = String::from_utf8_lossy(line.get(4..).unwrap_or_default());
        if !last {
            if self.lines.len() >= 100 {
                return Err(bad());
            }
            self.lines.push(rest.into_owned());
            return Ok(None);
        }
        self.code = None;
        // The enhanced code, when present, starts every line; keep it once.
        let first = self.lines.first().map_or(&*rest, String::as_str);
        let enhanced = first.split(' ').next().and_then(Enhanced::parse);
        let strip = |l: &str| -> String {
            match enhanced {
                Some(_) => l.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default(),
                None => l.to_string(),
            }
        };
        if self.lines.is_empty() {
            // The common case: a one-line reply, one allocation.
            return Ok(Some(Reply { code, enhanced, text: strip(&rest).into() }));
        }
        let mut lines = std::mem::take(&mut self.lines);
        lines.push(rest.into_owned());
        let text = lines.iter().map(|l| strip(l)).collect::<Vec<_>>().join("\n");
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
    fn lines_are_written_as_the_joined_reply() {
        let cases: &[&[&str]] = &[
            &[],
            &[""],
            &["one"],
            &["mx.test greets c.test", "PIPELINING", "SIZE 10485760", "HELP"],
            &["a", "", "b"],
            &["é ü", "x"],
        ];
        for lines in cases {
            let mut out = vec![];
            Reply::write_lines(&mut out, 250, lines);
            assert_eq!(out, Reply::plain(250, lines.join("\n")).to_bytes(), "{lines:?}");
        }
        let mut out = vec![];
        Reply::write_lines(&mut out, 250, &["a\r\nb", "c\rd\n"]);
        assert_eq!(out, b"250-ab\r\n250 cd\r\n", "no line end inside a line");
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        let mut n = 1u64;
        for x in [0, 1, 9, 10, 99, 100, 65_535, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, x);
            assert_eq!(out, format!("x{x}").into_bytes());
        }
        while let Some(m) = n.checked_mul(7) {
            let mut out = vec![];
            push_decimal(&mut out, m - 1);
            assert_eq!(out, (m - 1).to_string().into_bytes());
            n = m;
        }
    }

    #[test]
    fn one_line_replies_are_written_as_lines_are() {
        for code in [220, 250, 354, 550] {
            for e in [None, Some(Enhanced(2, 0, 0)), Some(Enhanced(5, 7, 30)), Some(Enhanced(4, 100, 999))] {
                for text in ["", "ok", "é ünïcode", "a\tb", "trailing "] {
                    let r = Reply { code, enhanced: e, text: text.into() };
                    let head =
                        e.map_or(String::new(), |e| if text.is_empty() { e.to_string() } else { format!("{e} ") });
                    assert_eq!(String::from_utf8(r.to_bytes()).unwrap(), format!("{code} {head}{text}\r\n"), "{r:?}");
                }
            }
        }
    }

    #[test]
    fn writes_multiline_with_enhanced() {
        let r = Reply::new(250, Enhanced(2, 1, 0), "one\ntwo");
        assert_eq!(r.to_bytes(), b"250-2.1.0 one\r\n250 2.1.0 two\r\n");
        assert_eq!(Reply::plain(220, "hi").to_bytes(), b"220 hi\r\n");
        let evil = Reply::new(550, Enhanced(5, 7, 1), "a\rb");
        assert_eq!(evil.to_bytes(), b"550 5.7.1 ab\r\n");
        assert_eq!(Reply::new(550, Enhanced(5, 7, 30), "").to_bytes(), b"550 5.7.30\r\n");
        assert_eq!(Reply::new(421, Enhanced(4, 100, 999), "x\n").to_bytes(), b"421-4.100.999 x\r\n421 4.100.999\r\n");
    }

    #[test]
    fn displays_on_one_line() {
        assert_eq!(Reply::new(550, Enhanced(5, 7, 30), "no\nway").to_string(), "550 5.7.30 no / way");
        assert_eq!(Reply::new(250, Enhanced(2, 0, 0), "").to_string(), "250 2.0.0 ");
        assert_eq!(Reply::plain(220, "hi there").to_string(), "220 hi there");
        assert_eq!(Enhanced(4, 4, 7).to_string(), "4.4.7");
    }

    #[test]
    fn parses_what_it_writes() {
        for r in [
            Reply::new(250, Enhanced(2, 0, 0), "ok"),
            Reply::new(550, Enhanced(5, 1, 1), "no such user\nreally"),
            Reply::plain(220, "mx.example ESMTP"),
            Reply::new(451, Enhanced(4, 3, 0), ""),
        ] {
            let wire = r.to_bytes();
            let mut p = ReplyParser::default();
            let mut got = None;
            for line in wire.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                got = p.feed(line.strip_suffix(b"\r").unwrap()).unwrap();
            }
            assert_eq!(got.as_ref(), Some(&r), "{r}");
        }
        // Not UTF-8: kept, replaced; a reply that never ends is refused after 100 lines.
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"550 5.7.1 caf\xe9").unwrap().unwrap().text, "caf\u{fffd}");
        for _ in 0..100 {
            assert_eq!(p.feed(b"250-more"), Ok(None));
        }
        assert!(p.feed(b"250-more").is_err());
        assert!(ReplyParser::default().feed(b"25").is_err());
        assert!(ReplyParser::default().feed(b"250x").is_err());
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
        assert_eq!(Enhanced::parse("4.100.999"), Some(Enhanced(4, 100, 999)));
        for bad in
            ["", "5", "5.", "5.7.", "5..1", ".7.1", "5.7.1.", "5.7.1.2", "52.7.1", "+5.7.1", "5.+7.1", "5.7.x", "6.0.0"]
        {
            assert_eq!(Enhanced::parse(bad), None, "{bad:?}");
        }
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
