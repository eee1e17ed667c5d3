//! Real SMTP clients: swaks (Debian package) and Python's smtplib, plus a raw socket client
//! for byte-exact cases (pipelining in one packet, bare LF, BDAT).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs swaks against `127.0.0.1:port` with extra arguments; returns its output.
pub fn swaks(port: u16, args: &[&str]) -> Output {
    Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(args)
        .output()
        .expect("swaks is installed (apt-get install swaks)")
}

/// Runs a Python 3 script with `PORT` in its environment; returns (exit ok, stdout+stderr).
pub fn python(port: u16, script: &str) -> (bool, String) {
    let out = Command::new("python3").arg("-c").arg(script).env("PORT", port.to_string()).output().expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs a script with Debian's Python (`/usr/bin/python3`, which has dkimpy and the other
/// python3-* packages whatever `python3` is first on PATH) with env vars and stdin; returns its
/// stdout, and panics with its stderr when it fails.
pub fn debian_python(script: &str, env: &[(&str, &str)], stdin: &[u8]) -> Vec<u8> {
    use std::process::Stdio;
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's python3, with python3-dkim)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A raw client: sends bytes exactly as given and reads replies.
pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and checks for a `220` greeting.
    pub fn connect(port: u16) -> Raw {
        let (r, greet) = Raw::connect_any(port);
        assert!(greet.starts_with("220"), "greeting: {greet}");
        r
    }

    /// Connects and returns whatever greeting (or refusal) the server sent.
    pub fn connect_any(port: u16) -> (Raw, String) {
        Raw::connect_to(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Connects to `addr` and returns whatever greeting (or refusal) the server sent.
    pub fn connect_to(addr: std::net::SocketAddr) -> (Raw, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = Raw { s, buf: vec![] };
        let greet = r.reply();
        (r, greet)
    }

    /// Sends bytes; a closed connection is not an error (the next reply reads as empty).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// Reads one complete (possibly multi-line) reply; empty string on EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                out.push_str(&line);
                if line.len() < 4 || line.as_bytes()[3] == b' ' {
                    return out.trim_end().to_string();
                }
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return out,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a command line (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// One message to several recipients on a new connection, every step required to
    /// succeed (the test fails naming the step otherwise). `content` is CRLF lines without the
    /// final dot.
    pub fn deliver(port: u16, from: &str, rcpts: &[&str], content: &str) {
        let mut c = Raw::connect(port);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
        for r in rcpts {
            let reply = c.cmd(&format!("RCPT TO:<{r}>"));
            assert!(reply.starts_with("250"), "{r}: {reply}");
        }
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(content.as_bytes());
        let r = c.cmd(".");
        assert!(r.starts_with("250"), "{r}");
        c.cmd("QUIT");
    }

    /// One whole transaction on a new connection: EHLO, MAIL, RCPT, DATA with `content`
    /// (CRLF lines, without the final dot). The reply to the end of data, or the refusal that
    /// ended the transaction earlier.
    pub fn transaction(port: u16, from: &str, to: &str, content: &[u8]) -> String {
        let mut c = Raw::connect(port);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        for line in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>")] {
            let r = c.cmd(&line);
            if !r.starts_with("250") {
                return r;
            }
        }
        let r = c.cmd("DATA");
        if !r.starts_with("354") {
            return r;
        }
        c.send(content);
        c.cmd(".")
    }
}
