//! `mailgate sendmail`: the sendmail command line for cron, scripts and applications that
//! shell out. It reads a message on stdin and submits it by SMTP over the running gateway's
//! local socket (`submission.socket`), where the kernel vouches for the user; it exits 0 only
//! once the gateway has queued it (the 250 after the data), and otherwise with a sysexits code
//! (64 usage, 65 bad message, 67 recipient refused, 69 refused, 75 try again later).
//!
//! Differences from sendmail: nothing is queued on this side (the gateway down is exit 75, the
//! caller retries); the submission is all or nothing (one refused recipient refuses it); no
//! `-bs`, `-bp` or other modes; `-o` options other than `-oi` are ignored.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use mailgate_config::Config;
use mailgate_smtp::{Extensions, Reply, ReplyParser};

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_TEMPFAIL: u8 = 75;

/// Where the config is when `-C` does not say.
pub(crate) const SYSTEM_CONFIG: &str = "/etc/mailgate/mailgate.toml";

const USAGE: &str = "usage: mailgate sendmail [-C config] [-f sender] [-F full name] [-t] [-i] \
[-N never|success,failure,delay] [-R full|hdrs] [-V envid] [recipient ...]";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
struct Args {
    config: Option<PathBuf>,
    sender: Option<String>,
    full_name: Option<String>,
    /// `-t`: recipients from To, Cc and Bcc too (Bcc is then removed).
    from_headers: bool,
    /// `-i`/`-oi`: a line with a single dot does not end the message.
    ignore_dots: bool,
    notify: Option<String>,
    ret: Option<String>,
    envid: Option<String>,
    recipients: Vec<String>,
}

/// Why the command line could not be used.
#[derive(Debug, PartialEq)]
struct Usage(String);

fn parse_args(argv: &[String]) -> Result<Args, Usage> {
    let mut a = Args::default();
    let mut i = 0;
    // An option's value: the rest of the word (`-fuser@x`) or the next word (`-f user@x`).
    let value = |i: &mut usize, rest: &str, flag: &str| -> Result<String, Usage> {
        if !rest.is_empty() {
            return Ok(rest.to_string());
        }
        *i += 1;
        argv.get(*i).cloned().ok_or_else(|| Usage(format!("-{flag} needs a value")))
    };
    while i < argv.len() {
        let arg = &argv[i];
        if arg == "--" {
            a.recipients.extend(argv[i + 1..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            a.recipients.push(arg.clone());
            i += 1;
            continue;
        }
        let (flag, rest) = arg[1..].split_at(arg[1..].chars().next().map_or(0, char::len_utf8));
        match flag {
            "C" => a.config = Some(PathBuf::from(value(&mut i, rest, flag)?)),
            "f" | "r" => a.sender = Some(value(&mut i, rest, flag)?),
            "F" => a.full_name = Some(value(&mut i, rest, flag)?),
            "N" => a.notify = Some(value(&mut i, rest, flag)?),
            "R" => a.ret = Some(value(&mut i, rest, flag)?),
            "V" => a.envid = Some(value(&mut i, rest, flag)?),
            "t" if rest.is_empty() => a.from_headers = true,
            "i" if rest.is_empty() => a.ignore_dots = true,
            "o" if rest == "i" => a.ignore_dots = true,
            "o" => {} // sendmail's other -oX options have no meaning here
            "v" | "m" if rest.is_empty() => {}
            "b" if rest == "m" => {}
            "b" => return Err(Usage(format!("-b{rest}: only -bm (the default) is supported"))),
            "-" if rest == "config" => a.config = Some(PathBuf::from(value(&mut i, "", "-config")?)),
            "-" if rest == "help" => return Err(Usage(String::new())),
            _ => return Err(Usage(format!("unknown option {arg}"))),
        }
        i += 1;
    }
    // Recipients given as "a@x, b@y" in one word, as mail programs do.
    a.recipients = a
        .recipients
        .iter()
        .flat_map(|r| r.split(','))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    Ok(a)
}

/// Runs the command; `argv` is what follows `sendmail`.
pub fn main(argv: &[String]) -> ExitCode {
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(Usage(why)) => {
            if !why.is_empty() {
                eprintln!("sendmail: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if why.is_empty() { 0 } else { EX_USAGE });
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            eprintln!("sendmail: {why}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn run(args: Args) -> Result<(), Failure> {
    let file = args.config.clone().or_else(|| Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.is_file()));
    let config = Config::load(file.as_deref()).map_err(|e| (EX_SOFTWARE, format!("configuration: {e}")))?;
    let Some(socket) = config.submission.socket.clone() else {
        return Err((EX_UNAVAILABLE, "the gateway has no local submission socket (submission.socket)".into()));
    };
    let sender = match &args.sender {
        Some(s) => s.trim_start_matches('<').trim_end_matches('>').to_string(),
        None => format!("{}@{}", login_name(), config.server.hostname),
    };
    let limit = config.limits.max_message_size as usize;
    let raw = read_message(std::io::stdin().lock(), args.ignore_dots, limit)?;
    let (message, from_headers) = prepare(&raw, &sender, args.full_name.as_deref(), args.from_headers);
    let mut rcpts = args.recipients.clone();
    rcpts.extend(from_headers);
    rcpts.dedup();
    if rcpts.is_empty() {
        return Err((EX_USAGE, "no recipients (give them as arguments, or -t)".into()));
    }
    submit(&socket, &sender, &rcpts, &message, &args)
}

/// The message from `input`: lines ended by LF (a CR before it is dropped) become CRLF; with
/// `ignore_dots` false a line of one dot ends it. More than `limit` octets is refused.
fn read_message(input: impl Read, ignore_dots: bool, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    let mut reader = BufReader::new(input.take(limit as u64 + 1));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| (EX_DATAERR, format!("reading the message: {e}")))?;
        if n == 0 {
            break;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if !ignore_dots && line == b"." {
            break;
        }
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
        if out.len() > limit {
            return Err((EX_DATAERR, format!("message larger than the gateway takes ({limit} octets)")));
        }
    }
    Ok(out)
}

/// The message as submitted: `From:` added from the sender when missing; with `-t`, the
/// addresses of To, Cc and Bcc, and Bcc removed.
fn prepare(raw: &[u8], sender: &str, full_name: Option<&str>, from_headers: bool) -> (Vec<u8>, Vec<String>) {
    let end = find_header_end(raw);
    let (header, body) = raw.split_at(end);
    let mut rcpts = vec![];
    if from_headers {
        if let Some(m) = mail_parser::MessageParser::new().parse_headers(header) {
            for list in [m.to(), m.cc(), m.bcc()].into_iter().flatten() {
                rcpts.extend(list.iter().filter_map(|a| a.address()).map(str::to_string));
            }
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 128);
    if !has_field(header, "from") && !sender.is_empty() {
        match full_name {
            Some(n) => {
                out.extend_from_slice(format!("From: \"{}\" <{sender}>\r\n", n.replace(['"', '\\'], "")).as_bytes())
            }
            None => out.extend_from_slice(format!("From: <{sender}>\r\n").as_bytes()),
        }
    }
    // Bcc goes only with -t (sendmail removes it there; without -t it is the caller's).
    let mut skipping = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = from_headers && field_is(line, "bcc");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    (out, rcpts)
}

/// Where the header section ends: after the empty line, or at the end when there is none.
fn find_header_end(m: &[u8]) -> usize {
    if m.starts_with(b"\r\n") {
        return 0;
    }
    m.windows(4).position(|w| w == b"\r\n\r\n").map_or(m.len(), |i| i + 2)
}

fn field_is(line: &[u8], name: &str) -> bool {
    line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name.as_bytes()) && line[name.len()] == b':'
}

fn has_field(header: &[u8], name: &str) -> bool {
    header.split(|b| *b == b'\n').any(|l| field_is(l, name))
}

fn login_name() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    crate::local::user_name(uid).unwrap_or_else(|| format!("uid{uid}"))
}

/// One SMTP conversation on the gateway's socket.
struct Smtp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Smtp {
    fn reply(&mut self) -> Result<Reply, Failure> {
        let mut parser = ReplyParser::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .r
                .read_until(b'\n', &mut line)
                .map_err(|e| (EX_TEMPFAIL, format!("reading from the gateway: {e}")))?;
            if n == 0 {
                return Err((EX_TEMPFAIL, "the gateway closed the connection".into()));
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            match parser.feed(&line) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err((EX_TEMPFAIL, format!("the gateway's reply: {e}"))),
            }
        }
    }

    fn send(&mut self, b: &[u8]) -> Result<(), Failure> {
        self.w.write_all(b).map_err(|e| (EX_TEMPFAIL, format!("writing to the gateway: {e}")))
    }

    fn cmd(&mut self, line: &str) -> Result<Reply, Failure> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }
}

/// The exit code a refusal means.
fn refused(r: &Reply, what: &str, rcpt: bool) -> Failure {
    let code = match (r.is_permanent(), rcpt) {
        (false, _) => EX_TEMPFAIL,
        (true, true) => EX_NOUSER,
        (true, false) => EX_UNAVAILABLE,
    };
    (code, format!("{what}: {r}"))
}

fn submit(socket: &Path, sender: &str, rcpts: &[String], message: &[u8], args: &Args) -> Result<(), Failure> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| (EX_TEMPFAIL, format!("the gateway at {}: {e} (is it running?)", socket.display())))?;
    let limit = Some(Duration::from_secs(300));
    let _ = stream.set_read_timeout(limit);
    let _ = stream.set_write_timeout(limit);
    let w = stream.try_clone().map_err(|e| (EX_SOFTWARE, e.to_string()))?;
    let mut s = Smtp { r: BufReader::new(stream), w };
    let greet = s.reply()?;
    if greet.code != 220 {
        return Err(refused(&greet, "the gateway", false));
    }
    let ehlo = s.cmd("EHLO localhost")?;
    if ehlo.code != 250 {
        return Err(refused(&ehlo, "EHLO", false));
    }
    let ext = Extensions::from_reply(&ehlo);
    let utf8 = !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
    let mut mail = format!("MAIL FROM:<{sender}>");
    if !message.is_ascii() && ext.eightbitmime {
        mail += " BODY=8BITMIME";
    }
    if utf8 {
        mail += " SMTPUTF8";
    }
    if let Some(r) = &args.ret {
        mail += &format!(" RET={}", r.to_ascii_uppercase());
    }
    if let Some(id) = &args.envid {
        mail += &format!(" ENVID={}", mailgate_smtp::xtext_encode(id));
    }
    let r = s.cmd(&mail)?;
    if !r.is_positive() {
        return Err(refused(&r, &format!("sender <{sender}>"), false));
    }
    for rcpt in rcpts {
        let mut cmd = format!("RCPT TO:<{rcpt}>");
        if let Some(n) = &args.notify {
            cmd += &format!(" NOTIFY={}", n.to_ascii_uppercase());
        }
        let r = s.cmd(&cmd)?;
        if !r.is_positive() {
            let _ = s.cmd("RSET");
            let _ = s.cmd("QUIT");
            return Err(refused(&r, &format!("recipient <{rcpt}>"), true));
        }
    }
    let r = s.cmd("DATA")?;
    if r.code != 354 {
        return Err(refused(&r, "DATA", false));
    }
    let mut stuffed = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.first() == Some(&b'.') {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    stuffed.extend_from_slice(b".\r\n");
    s.send(&stuffed)?;
    let r = s.reply()?;
    let _ = s.cmd("QUIT");
    if r.code != 250 {
        return Err(refused(&r, "the message", false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn reads_sendmail_options() {
        let a =
            parse_args(&words("-oi -fme@x.test -F Full -t -odb -C /etc/m.toml a@x.test,b@x.test c@x.test")).unwrap();
        assert_eq!(a.sender.as_deref(), Some("me@x.test"));
        assert_eq!(a.full_name.as_deref(), Some("Full"));
        assert!(a.ignore_dots && a.from_headers);
        assert_eq!(a.config, Some(PathBuf::from("/etc/m.toml")));
        assert_eq!(a.recipients, ["a@x.test", "b@x.test", "c@x.test"]);
        let b = parse_args(&words("-f me@x.test -i -- -odd@x.test")).unwrap();
        assert_eq!(b.sender.as_deref(), Some("me@x.test"));
        assert_eq!(b.recipients, ["-odd@x.test"]);
        assert!(parse_args(&words("-bs")).is_err());
        assert!(parse_args(&words("-q")).is_err());
        assert!(parse_args(&words("-f")).is_err());
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_told_otherwise() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        assert_eq!(read_message(&input[..], false, 1000).unwrap(), b"Subject: x\r\n\r\nline\r\n");
        assert_eq!(read_message(&input[..], true, 1000).unwrap(), b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
        assert_eq!(read_message(&b"a\r\nb"[..], true, 1000).unwrap(), b"a\r\nb\r\n");
        assert_eq!(read_message(&[b'x'; 50][..], true, 10).unwrap_err().0, EX_DATAERR);
    }

    #[test]
    fn takes_recipients_from_headers_and_drops_bcc() {
        let raw = b"To: A <a@x.test>, b@x.test\r\nBcc: hidden@x.test,\r\n  also@x.test\r\nSubject: s\r\n\r\nBcc: body@x.test\r\n";
        let (m, rcpts) = prepare(raw, "me@x.test", Some("Me \"Q\""), true);
        assert_eq!(rcpts, ["a@x.test", "b@x.test", "hidden@x.test", "also@x.test"]);
        let t = String::from_utf8(m).unwrap();
        assert_eq!(
            t,
            "From: \"Me Q\" <me@x.test>\r\nTo: A <a@x.test>, b@x.test\r\nSubject: s\r\n\r\nBcc: body@x.test\r\n"
        );
        let (m, rcpts) = prepare(b"From: x@y.test\r\nBcc: h@x.test\r\n\r\nbody\r\n", "me@x.test", None, false);
        assert!(rcpts.is_empty());
        assert_eq!(m, b"From: x@y.test\r\nBcc: h@x.test\r\n\r\nbody\r\n");
    }
}
