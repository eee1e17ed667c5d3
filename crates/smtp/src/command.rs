//! SMTP command parsing (RFC 5321 §4.1 with SIZE, 8BITMIME, SMTPUTF8, CHUNKING, STARTTLS, AUTH).
//! A parse error is the reply the client gets.

use crate::address::{Address, AddressError};
use crate::reply::{Enhanced, Reply};

/// The BODY= parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// Parameters of MAIL FROM that the gateway understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE= declared by the client (RFC 1870), checked against the limit at MAIL time.
    pub size: Option<u64>,
    pub body: Body,
    /// SMTPUTF8 (RFC 6531): addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689), recognised for a later TLS issue; refused unless advertised.
    pub requiretls: bool,
    /// RET= (RFC 3461 §4.3): what a failure DSN returns of the message.
    pub ret: Option<Ret>,
    /// ENVID= (RFC 3461 §4.4), decoded from xtext: the sender's id for this transaction.
    pub envid: Option<String>,
}

/// RET= of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Hdrs,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1): when the sender wants a DSN; all false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// Parameters of RCPT TO: the DSN extension's (RFC 3461); any other is refused with 555.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// ORCPT= (RFC 3461 §4.2): the address type and the original address, decoded from xtext.
    pub orcpt: Option<(String, String)>,
}

/// Decodes xtext (RFC 3461 §4): `+XX` is the octet XX; other octets are `!`..`~` but `+`, `=`.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if (b'!'..=b'~').contains(&c) && c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext (for passing DSN parameters on).
pub fn xtext_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'!'..=b'~' if c != b'+' && c != b'=' => (c as char).to_string(),
            _ => format!("+{c:02X}"),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `from: None` is the null reverse path `<>`.
    Mail {
        from: Option<Address>,
        params: MailParams,
    },
    /// `to: None` is `<Postmaster>` without a domain (RFC 5321 §4.1.1.3): ours, whoever asks.
    Rcpt {
        to: Option<Address>,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

fn err(code: u16, e: Enhanced, text: &'static str) -> Reply {
    Reply::new(code, e, text)
}

fn address_reply(e: AddressError) -> Reply {
    match e {
        AddressError::Syntax => err(501, Enhanced(5, 1, 3), "Bad address syntax"),
        AddressError::TooLong => err(501, Enhanced(5, 1, 3), "Address too long"),
    }
}

impl Command {
    /// Parses one command line (without CRLF).
    pub fn parse(line: &[u8]) -> Result<Command, Reply> {
        let line = std::str::from_utf8(line).map_err(|_| err(500, Enhanced(5, 5, 2), "Command is not valid UTF-8"))?;
        if line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(err(500, Enhanced(5, 5, 2), "Control characters in command"));
        }
        let (verb, rest) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let upper = verb.to_ascii_uppercase();
        let no_args = |c: Command| {
            if rest.trim().is_empty() {
                Ok(c)
            } else {
                Err(err(501, Enhanced(5, 5, 4), "No parameters allowed"))
            }
        };
        match upper.as_str() {
            "EHLO" | "HELO" => {
                let host = rest.trim();
                if host.is_empty() || host.contains(' ') {
                    return Err(err(501, Enhanced(5, 5, 4), "Syntax: EHLO hostname"));
                }
                Ok(if upper == "EHLO" { Command::Ehlo(host.into()) } else { Command::Helo(host.into()) })
            }
            "MAIL" => parse_mail(rest),
            "RCPT" => parse_rcpt(rest),
            "DATA" => no_args(Command::Data),
            "BDAT" => parse_bdat(rest),
            "RSET" => no_args(Command::Rset),
            "NOOP" => Ok(Command::Noop),
            "QUIT" => no_args(Command::Quit),
            "VRFY" => Ok(Command::Vrfy(rest.trim().into())),
            "EXPN" => Ok(Command::Expn(rest.trim().into())),
            "HELP" => Ok(Command::Help),
            "STARTTLS" => no_args(Command::StartTls),
            "AUTH" => {
                let mut it = rest.split(' ').filter(|s| !s.is_empty());
                let mechanism = it.next().ok_or_else(|| err(501, Enhanced(5, 5, 4), "Syntax: AUTH mechanism"))?;
                let initial = it.next().map(str::to_string);
                if it.next().is_some() {
                    return Err(err(501, Enhanced(5, 5, 4), "Syntax: AUTH mechanism [initial-response]"));
                }
                Ok(Command::Auth { mechanism: mechanism.to_ascii_uppercase(), initial })
            }
            _ => Err(err(500, Enhanced(5, 5, 2), "Command unrecognized")),
        }
    }
}

/// Splits `FROM:<path> params` after the keyword; tolerates one space after the colon
/// (common in the wild; Postfix accepts it too).
fn split_path<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), Reply> {
    let syntax = || {
        err(
            501,
            Enhanced(5, 5, 4),
            if keyword == "FROM:" { "Syntax: MAIL FROM:<address>" } else { "Syntax: RCPT TO:<address>" },
        )
    };
    // Compare bytes: slicing the str could split a UTF-8 character (found by fuzzing).
    if !rest.as_bytes().get(..keyword.len()).is_some_and(|p| p.eq_ignore_ascii_case(keyword.as_bytes())) {
        return Err(syntax());
    }
    let rest = rest[keyword.len()..].trim_start_matches(' ');
    if !rest.starts_with('<') {
        return Err(syntax());
    }
    // The path ends at the first '>' that is not inside a quoted local part.
    let b = rest.as_bytes();
    let (mut i, mut quoted) = (1, false);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => break,
            _ => {}
        }
        i += 1;
    }
    if i >= b.len() {
        return Err(syntax());
    }
    let (path, params) = rest.split_at(i + 1);
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(syntax());
    }
    Ok((path, params.trim()))
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, "FROM:")?;
    let from = if path == "<>" { None } else { Some(Address::parse_path(path).map_err(address_reply)?) };
    let mut p = MailParams::default();
    let mut seen: Vec<String> = vec![];
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = key.to_ascii_uppercase();
        // RFC 5321 §4.1.1.11 / RFC 1869: a parameter may appear once.
        if seen.contains(&key) {
            return Err(err(501, Enhanced(5, 5, 4), "Duplicate MAIL parameter"));
        }
        seen.push(key.clone());
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => p.size = Some(v.parse().map_err(|_| err(501, Enhanced(5, 5, 4), "Bad SIZE value"))?),
            ("BODY", Some(v)) => {
                p.body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => Body::BinaryMime,
                    _ => return Err(err(501, Enhanced(5, 5, 4), "Bad BODY value")),
                }
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("REQUIRETLS", None) => p.requiretls = true,
            ("RET", Some(v)) => {
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(err(501, Enhanced(5, 5, 4), "Bad RET value")),
                })
            }
            ("ENVID", Some(v)) => {
                // RFC 3461 §4.4: at most 100 characters, printable ASCII once decoded.
                let id = xtext_decode(v).filter(|id| v.len() <= 100 && id.bytes().all(|c| (0x20..0x7f).contains(&c)));
                p.envid = Some(id.ok_or_else(|| err(501, Enhanced(5, 5, 4), "Bad ENVID value"))?);
            }
            _ => return Err(err(555, Enhanced(5, 5, 4), "Unsupported MAIL parameter")),
        }
    }
    if let Some(a) = &from {
        if a.is_utf8() && !p.smtputf8 {
            return Err(err(553, Enhanced(5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
        }
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, "TO:")?;
    // RFC 5321 §4.1.1.3: <Postmaster> without a domain must be accepted; it means ours.
    let to = if path.eq_ignore_ascii_case("<postmaster>") {
        None
    } else {
        Some(Address::parse_path(path).map_err(address_reply)?)
    };
    let mut p = RcptParams::default();
    let mut seen: Vec<String> = vec![];
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = param.split_once('=').map_or((param, None), |(k, v)| (k, Some(v)));
        let key = key.to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(err(501, Enhanced(5, 5, 4), "Duplicate RCPT parameter"));
        }
        seen.push(key.clone());
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let v = v.to_ascii_uppercase();
                let mut n = Notify::default();
                let bad = || err(501, Enhanced(5, 5, 4), "Bad NOTIFY value");
                if v != "NEVER" {
                    for word in v.split(',') {
                        match word {
                            "SUCCESS" if !n.success => n.success = true,
                            "FAILURE" if !n.failure => n.failure = true,
                            "DELAY" if !n.delay => n.delay = true,
                            _ => return Err(bad()),
                        }
                    }
                }
                p.notify = Some(n);
            }
            ("ORCPT", Some(v)) => {
                let bad = || err(501, Enhanced(5, 5, 4), "Bad ORCPT value");
                let (kind, addr) = v.split_once(';').ok_or_else(bad)?;
                // No control characters (an address has none): the value is written into
                // DSNs' fields, where a CR LF would begin a field of the client's making.
                let addr = xtext_decode(addr)
                    .filter(|a| !a.is_empty() && v.len() <= 500 && !a.chars().any(char::is_control))
                    .ok_or_else(bad)?;
                if kind.is_empty() || !kind.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                    return Err(bad());
                }
                p.orcpt = Some((kind.to_ascii_lowercase(), addr));
            }
            _ => return Err(err(555, Enhanced(5, 5, 4), "Unsupported RCPT parameter")),
        }
    }
    Ok(Command::Rcpt { to, params: p })
}

fn parse_bdat(rest: &str) -> Result<Command, Reply> {
    let syntax = || err(501, Enhanced(5, 5, 4), "Syntax: BDAT size [LAST]");
    let mut it = rest.split(' ').filter(|s| !s.is_empty());
    let size: u64 = it.next().ok_or_else(syntax)?.parse().map_err(|_| syntax())?;
    let last = match it.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(syntax()),
    };
    if it.next().is_some() {
        return Err(syntax());
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, Reply> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn parses_commands() {
        assert_eq!(p("ehlo client.example").unwrap(), Command::Ehlo("client.example".into()));
        assert_eq!(p("DATA").unwrap(), Command::Data);
        assert_eq!(p("BDAT 100 LAST").unwrap(), Command::Bdat { size: 100, last: true });
        assert_eq!(p("bdat 0").unwrap(), Command::Bdat { size: 0, last: false });
        assert!(matches!(p("MAIL FROM:<>").unwrap(), Command::Mail { from: None, .. }));
        let Command::Mail { from, params } = p("MAIL FROM: <a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap()
        else {
            panic!()
        };
        assert_eq!(from.unwrap().as_str(), "a@b.example");
        assert_eq!(
            params,
            MailParams { size: Some(1000), body: Body::EightBitMime, smtputf8: true, ..MailParams::default() }
        );
        let Command::Mail { params, .. } = p("MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2B1").unwrap() else {
            panic!()
        };
        assert_eq!((params.ret, params.envid.as_deref()), (Some(Ret::Hdrs), Some("QQ+1")));
        let Command::Rcpt { params, .. } =
            p("RCPT TO:<x@b.example> NOTIFY=SUCCESS,failure ORCPT=rfc822;x+2Bt@b.example").unwrap()
        else {
            panic!()
        };
        assert_eq!(params.notify, Some(Notify { success: true, failure: true, delay: false }));
        assert_eq!(params.orcpt, Some(("rfc822".into(), "x+t@b.example".into())));
        let Command::Rcpt { params, .. } = p("RCPT TO:<x@b.example> NOTIFY=NEVER").unwrap() else { panic!() };
        assert_eq!(params.notify, Some(Notify::default()));
        for bad in [
            "RCPT TO:<x@b.example> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<x@b.example> NOTIFY=SOMETIMES",
            "RCPT TO:<x@b.example> NOTIFY=FAILURE,FAILURE",
            "RCPT TO:<x@b.example> ORCPT=x@b.example",
            "RCPT TO:<x@b.example> ORCPT=rfc822;a+ZZ",
            "RCPT TO:<x@b.example> ORCPT=rfc822;a+0D+0AX-Injected:+20yes",
            "RCPT TO:<x@b.example> ORCPT=rfc822;a+0Ab",
            "RCPT TO:<x@b.example> ORCPT=rfc822;a+00b",
            "RCPT TO:<x@b.example> ORCPT=rfc822;a+7Fb",
            "RCPT TO:<x@b.example> ORCPT=utf-8;a+C2+85b",
            "MAIL FROM:<a@b.example> RET=ALL",
            "MAIL FROM:<a@b.example> ENVID=a=b",
        ] {
            assert_eq!(p(bad).unwrap_err().code, 501, "{bad}");
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode(&xtext_encode("ünï+=")).as_deref(), Some("ünï+="));
        let Command::Rcpt { to, .. } = p("RCPT TO:<\"x>y\"@b.example>").unwrap() else { panic!() };
        assert_eq!(to.unwrap().domain(), "b.example");
        assert!(matches!(p("RCPT TO:<Postmaster>").unwrap(), Command::Rcpt { to: None, .. }));
        assert!(matches!(p("RCPT TO:<postmaster@b.example>").unwrap(), Command::Rcpt { to: Some(_), .. }));
        assert_eq!(
            p("AUTH plain AGFiYwBkZWY=").unwrap(),
            Command::Auth { mechanism: "PLAIN".into(), initial: Some("AGFiYwBkZWY=".into()) }
        );
    }

    #[test]
    fn refuses_with_the_right_reply() {
        let code = |s: &str| p(s).unwrap_err().code;
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("MAIL FROM:a@b"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> FOO=1"), 555);
        assert_eq!(code("MAIL FROM:<ü@b.example>"), 553);
        assert_eq!(code("RCPT TO:<a@b.example> FOO=BAR"), 555);
        assert_eq!(code("RCPT TO:<Postmaster> FOO=BAR"), 555);
        // A parameter given twice, in any case, with the same or another value.
        for dup in ["SIZE=1 SIZE=2", "BODY=7BIT BODY=8BITMIME", "SMTPUTF8 smtputf8", "size=1 SIZE=1"] {
            let r = p(&format!("MAIL FROM:<a@b.example> {dup}")).unwrap_err();
            assert_eq!((r.code, r.enhanced), (501, Some(Enhanced(5, 5, 4))), "{dup}");
        }
        assert_eq!(code("BDAT x"), 501);
        assert_eq!(code("DATA x"), 501);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("NOOP \u{1}"), 500);
        assert!(Command::parse(b"\xff\xfe").is_err());
        assert_eq!(code("MAIL FROM\u{1bb}@@b.c>"), 501, "multi-byte char at the keyword boundary");
    }
}
