//! A request's `text` and `html`, decoded from the JSON string as the request wrote it straight
//! into a body part's text: one pass that undoes the escapes, makes every line end CRLF,
//! refuses control characters and sees whether the part can go `7bit`. Reading the string
//! with serde_json, then converting its line ends, then checking it took three passes and two
//! copies of the largest thing in a request.

/// Why a body text cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadText {
    /// A control character other than tab, form feed and line ends (C0, DEL, C1).
    Control(char),
    /// An escape that is no character: half a surrogate pair (`\uD800` to `\uDFFF`) without
    /// its other half.
    BadEscape,
}

/// The longest line a `7bit` body part gets (RFC 5322 §2.1.1's "SHOULD").
pub(crate) const MAX_7BIT_LINE: usize = 78;

/// Decodes `raw`, a JSON string's contents between its quotes as serde_json found them (its
/// syntax checked: only valid escapes, no raw control characters), into text whose every
/// line end — CR, LF or CRLF, whether escaped (`\r`, `\n`) or `\u` encoded — is one CRLF;
/// and says whether that text can go as it is (`7bit`, RFC 2045 §2.7): ASCII only, no line
/// longer than [`MAX_7BIT_LINE`] octets, none ending in a blank (which transports may strip).
/// Otherwise mail-builder picks quoted-printable or base64: it would for lines of 76 to 78
/// octets too, which mail programs write as they are (Python's `email` does) and which need no
/// encoding.
pub(crate) fn body_text(raw: &str) -> Result<(String, bool), BadText> {
    let b = raw.as_bytes();
    // JSON has no raw C0 octets in a string: DEL and C1 (0xC2 0x80 to 0x9F) are the control
    // characters written as they are. The first is found once; one written as an escape
    // before it is the one named.
    let written = written_control(b);
    let mut text = Text { out: String::with_capacity(b.len() + b.len() / 32 + 2), plain: true, line: 0, last: 0 };
    // A CR waits for what follows: with an LF it is one line end.
    let mut cr = false;
    let mut at = 0;
    loop {
        let escape = memchr::memchr(b'\\', &b[at..]).map_or(b.len(), |i| at + i);
        if escape > at {
            let run = &raw[at..escape];
            if std::mem::take(&mut cr) {
                text.end_line();
            }
            text.push_str(run);
        }
        if escape == b.len() {
            break;
        }
        let (c, len) = unescape(b, escape)?;
        at = escape + len;
        match c {
            '\n' => {
                cr = false;
                text.end_line();
            }
            '\r' => {
                if cr {
                    text.end_line();
                }
                cr = true;
            }
            c => {
                if std::mem::take(&mut cr) {
                    text.end_line();
                }
                if c != '\t' && c != '\x0c' && c.is_control() {
                    return Err(BadText::Control(written.filter(|&(at, _)| at < escape).map_or(c, |(_, w)| w)));
                }
                text.push_str(c.encode_utf8(&mut [0; 4]));
            }
        }
    }
    if let Some((_, c)) = written {
        return Err(BadText::Control(c));
    }
    if cr {
        text.end_line();
    }
    text.plain &= line_ok(text.line, text.last);
    Ok((text.out, text.plain))
}

/// The first DEL or C1 character written as it is, and where.
fn written_control(b: &[u8]) -> Option<(usize, char)> {
    memchr::memchr2_iter(0x7f, 0xc2, b).find_map(|at| match (b[at], b.get(at + 1)) {
        (0x7f, _) => Some((at, '\x7f')),
        (_, Some(&n @ 0x80..=0x9f)) => Some((at, char::from(n))),
        _ => None,
    })
}

/// The text so far, and what its current line says about `7bit`.
struct Text {
    out: String,
    /// ASCII so far, and every line ended so far short enough and not ending in a blank.
    plain: bool,
    /// Octets of the current line.
    line: usize,
    /// Its last octet (0 while it is empty).
    last: u8,
}

impl Text {
    fn push_str(&mut self, s: &str) {
        self.plain &= s.is_ascii();
        self.out.push_str(s);
        self.line += s.len();
        self.last = *s.as_bytes().last().unwrap_or(&self.last);
    }

    fn end_line(&mut self) {
        self.plain &= line_ok(self.line, self.last);
        self.out.push_str("\r\n");
        (self.line, self.last) = (0, 0);
    }
}

fn line_ok(len: usize, last: u8) -> bool {
    len <= MAX_7BIT_LINE && !matches!(last, b' ' | b'\t')
}

/// The character of the escape at `b[at]` (a backslash) and the escape's length.
fn unescape(b: &[u8], at: usize) -> Result<(char, usize), BadText> {
    let simple = match b.get(at + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\x08',
        Some(b'f') => '\x0c',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        _ => {
            let unit = hex4(b, at + 2).ok_or(BadText::BadEscape)?;
            return match unit {
                0xd800..=0xdbff => {
                    // The low half must follow as an escape of its own.
                    let low = (b.get(at + 6..at + 8) == Some(b"\\u")).then(|| hex4(b, at + 8)).flatten();
                    match low {
                        Some(low @ 0xdc00..=0xdfff) => {
                            let c = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                            Ok((char::from_u32(c).ok_or(BadText::BadEscape)?, 12))
                        }
                        _ => Err(BadText::BadEscape),
                    }
                }
                0xdc00..=0xdfff => Err(BadText::BadEscape),
                unit => Ok((char::from_u32(u32::from(unit)).ok_or(BadText::BadEscape)?, 6)),
            };
        }
    };
    Ok((simple, 2))
}

/// The four hex digits at `b[at..]` (serde_json has checked them; `None` if not).
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok().filter(|_| digits.bytes().all(|d| d.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the API did before this pass: serde_json's string, then every CR, LF or CRLF made
    /// one CRLF, and whether the text can go `7bit` (the control characters checked apart).
    fn reference(s: &str) -> (String, bool) {
        let b = s.as_bytes();
        let mut out = String::new();
        let (mut from, mut plain) = (0, s.is_ascii());
        let line_ok = |line: &[u8]| line.len() <= MAX_7BIT_LINE && !matches!(line.last(), Some(b' ' | b'\t'));
        for at in memchr::memchr2_iter(b'\r', b'\n', b) {
            if at < from {
                continue;
            }
            plain &= line_ok(&b[from..at]);
            out.push_str(&s[from..at]);
            out.push_str("\r\n");
            from = at + 1 + usize::from(b[at] == b'\r' && b.get(at + 1) == Some(&b'\n'));
        }
        plain &= line_ok(&b[from..]);
        out.push_str(&s[from..]);
        (out, plain)
    }

    /// A small deterministic generator (xorshift), so that a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// `c` as a `\u` escape (a pair of them above the BMP), hex digits in either case.
    fn u_escape(c: char, upper: bool) -> String {
        let mut units = [0u16; 2];
        c.encode_utf16(&mut units)
            .iter()
            .map(|u| if upper { format!("\\u{u:04X}") } else { format!("\\u{u:04x}") })
            .collect()
    }

    /// A JSON string's inside, written in every way JSON allows: plain ASCII, raw UTF-8 (with
    /// DEL and C1 among it), the two-character escapes, `\u` escapes of anything (line ends,
    /// controls, surrogate pairs) and now and then half a pair; lines around 78 octets, blanks
    /// before line ends, CR and LF in every order.
    fn written(rng: &mut Rng) -> String {
        let mut out = String::new();
        for _ in 0..rng.below(40) {
            match rng.below(16) {
                0..=3 => {
                    let n = [1, 5, 70, 76, 77, 78, 79, 80][rng.below(8)];
                    out.extend((0..n).map(|i| (b'a' + (i % 26) as u8) as char));
                }
                4 => out.push_str(["\\n", "\\r", "\\r\\n", "\\n\\r", "\\r\\r"][rng.below(5)]),
                5 => out.push_str(["\\\"", "\\\\", "\\/", "/", "\\b", "\\f", "\\t"][rng.below(7)]),
                6 => out.push_str([" ", "\\t", "  "][rng.below(3)]),
                7 => out.push(['é', 'ü', '\u{a0}', '\u{7f}', '\u{85}', '\u{9f}', '中', '😀', 'İ'][rng.below(9)]),
                8..=9 => {
                    let c = match rng.below(6) {
                        0 => char::from(rng.below(0x20) as u8),
                        1 => ['\n', '\r', '\t', '\x0c', '\x7f', '\u{85}', '"', '\\'][rng.below(8)],
                        2 => char::from_u32(0x80 + rng.below(0x80) as u32).unwrap(),
                        3 => char::from_u32(0x100 + rng.below(0xd700) as u32).unwrap(),
                        4 => char::from_u32(0x10000 + rng.below(0xfffff) as u32).unwrap(),
                        _ => char::from(0x20 + rng.below(0x5f) as u8),
                    };
                    out.push_str(&u_escape(c, rng.below(2) == 0));
                }
                10 if rng.below(8) == 0 => {
                    // Half a pair: a high half alone or before something else, a low half.
                    out.push_str(
                        ["\\ud800", "\\uDBFF\\n", "\\udc00", "\\uD83D\\u0041", "\\ud83d\\ud83d"][rng.below(5)],
                    );
                }
                _ => out.push_str(["x", "word ", "."][rng.below(3)]),
            }
        }
        out
    }

    /// The one pass gives what serde_json's string, the control check and the line-end pass
    /// gave, over 20 000 strings written every way JSON allows.
    #[test]
    fn decodes_as_serde_json_then_the_line_end_pass() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = [0usize; 4];
        for _ in 0..20_000 {
            let raw = written(&mut rng);
            let got = body_text(&raw);
            let want = match serde_json::from_str::<String>(&format!("\"{raw}\"")) {
                Err(_) => Err(BadText::BadEscape),
                Ok(s) => match crate::request::first_control(&s, *b"\t\r\n\x0c") {
                    Some(c) => Err(BadText::Control(c)),
                    None => Ok(reference(&s)),
                },
            };
            match &want {
                // A text with half a pair is refused; with a control character before it, for
                // that character (serde_json, reading the whole string first, saw the half
                // pair first).
                Err(BadText::BadEscape) => assert!(got.is_err(), "{raw:?}: {got:?}"),
                _ => assert_eq!(got, want, "{raw:?}"),
            }
            seen[match &want {
                Err(BadText::BadEscape) => 0,
                Err(BadText::Control(_)) => 1,
                Ok((_, true)) => 2,
                Ok((_, false)) => 3,
            }] += 1;
        }
        // Every outcome was met often enough to mean something.
        assert!(seen.iter().all(|&n| n > 300), "{seen:?}");
    }

    #[test]
    fn the_first_control_character_is_named() {
        for (raw, c) in [
            ("a\\u0000", '\0'),
            ("a\\bb\\u0001", '\x08'),
            ("\u{85}\\u0001", '\u{85}'),
            ("ok\\r\\n\\f\\t\\u007F", '\x7f'),
            ("\\u009f", '\u{9f}'),
        ] {
            assert_eq!(body_text(raw), Err(BadText::Control(c)), "{raw:?}");
        }
        assert_eq!(body_text("\\ud83d\\ude00"), Ok(("😀".to_string(), false)));
        assert_eq!(body_text("a\\u000d\\u000Ab"), Ok(("a\r\nb".to_string(), true)));
    }
}
