//! The session state machine driven in-process: a real gateway (spool, queue, cleanup,
//! plugins) with no socket between it and the client — each session runs over a duplex
//! stream, like Stalwart's `Session<DummyIo>` tests. Every case is a scripted conversation
//! that runs in milliseconds; the end-to-end suite (`tests/`) keeps the real binary and real
//! clients.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::{Accepted, Session};
use crate::server::Gateway;

/// How long any one reply may take before the test fails (a hang is a failure, not a wait).
const T: Duration = Duration::from_secs(20);

struct Rig {
    gateway: Gateway,
    dir: tempfile::TempDir,
    /// Stops the sessions of this rig (the gateway's shutdown signal, as sessions see it).
    stop: watch::Sender<bool>,
    /// The certificate clients trust, when the rig has TLS.
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

fn plugin(name: &str, extra: &str, config: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run plugins/build.sh", path.display());
    format!("\n[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n[plugin.config]\n{config}\n", path.display())
}

async fn rig(extra: &str) -> Rig {
    rig_with(extra, false).await
}

/// A gateway for `example.test` whose mail goes to a maildir, with `extra` TOML.
async fn rig_with(extra: &str, tls: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut cert_der = None;
    let mut tls_toml = String::new();
    if tls {
        let c = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), c.key_pair.serialize_pem()).unwrap();
        tls_toml = format!("[tls]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n");
        cert_der = Some(c.cert.der().clone());
    }
    let toml = format!(
        "[server]\nhostname = \"mx.test\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\n\
         [spool]\npath = \"{d}/spool\"\n\n[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n\n\
         {tls_toml}\n{extra}\n\n[routes]\n\"*\" = {{ type = \"maildir\", path = \"{d}/mail\" }}\n"
    );
    let config = mailgate_config::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let gateway = Gateway::start(config).await.unwrap();
    let (stop, _) = watch::channel(false);
    Rig { gateway, dir, stop, cert: cert_der }
}

impl Rig {
    fn connect(&self) -> Client<DuplexStream> {
        self.connect_from("192.0.2.10".parse().unwrap())
    }

    /// A session from `ip` over an in-memory stream.
    fn connect_from(&self, ip: IpAddr) -> Client<DuplexStream> {
        self.session_from(ip).0
    }

    /// A session over an in-memory stream, and its task (done when the session has ended).
    fn session_from(&self, ip: IpAddr) -> (Client<DuplexStream>, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(256 << 10);
        let shared = self.gateway.shared.clone();
        let generation = shared.current();
        let config = &generation.config;
        let admitted = shared.slots().admit(ip, &config.limits, config.timeouts.shed_idle, "mx").expect("admitted");
        let accepted = Accepted {
            sid: "T1".into(),
            peer: SocketAddr::new(ip, 40000),
            local: "192.0.2.1:25".parse().unwrap(),
            listener: "mx".into(),
            role: mailgate_config::Role::Mx,
            pipeline: mailgate_config::DEFAULT_PIPELINE.into(),
            slot: admitted.slot.clone(),
            user: None,
        };
        let session = Session::new(accepted, server, shared.clone(), self.stop.subscribe());
        let task = tokio::spawn(async move {
            let _admitted = admitted;
            session.run().await;
        });
        (Client { io: client, buf: vec![] }, task)
    }

    /// The messages delivered so far, to every mailbox of the maildir route.
    fn delivered(&self) -> Vec<String> {
        let files = |dir: PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(dir).map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect()).unwrap_or_default()
        };
        let mut v: Vec<String> = files(self.dir.path().join("mail"))
            .into_iter()
            .flat_map(|mbox| files(mbox.join("new")))
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        v.sort();
        v
    }

    /// Waits until `n` messages are delivered; returns them.
    async fn wait_delivered(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let got = self.delivered();
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                assert_eq!(got.len(), n, "messages delivered");
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queued messages right now (stored, not yet finished).
    fn queued(&self) -> usize {
        self.gateway.shared.queue.list().len()
    }
}

/// The client side of a session.
struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, s: &str) {
        self.io.write_all(s.as_bytes()).await.unwrap();
    }

    /// One whole reply: its code and its lines joined by `\n`. Code 0 when the session closed.
    async fn reply(&mut self) -> (u16, String) {
        let mut lines = vec![];
        loop {
            let line = match self.line().await {
                Some(l) => l,
                None => return (0, lines.join("\n")),
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                let code = lines[0][..3].parse().unwrap_or(0);
                return (code, lines.join("\n"));
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf.drain(..i + 2).take(i).collect()).unwrap();
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(T, self.io.read(&mut chunk)).await.expect("a reply in time").unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `cmd` and asserts the reply code; returns the reply text.
    async fn cmd(&mut self, cmd: &str, code: u16) -> String {
        self.send(&format!("{cmd}\r\n")).await;
        self.expect(code).await
    }

    async fn expect(&mut self, code: u16) -> String {
        let (got, text) = self.reply().await;
        assert_eq!(got, code, "{text}");
        text
    }

    async fn greeted(mut self) -> Self {
        self.expect(220).await;
        self
    }

    /// EHLO, MAIL and RCPT for `rcpts`.
    async fn envelope(&mut self, rcpts: &[&str]) {
        self.cmd("EHLO client.test", 250).await;
        self.cmd("MAIL FROM:<a@sender.test>", 250).await;
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), 250).await;
        }
    }

    /// DATA with `body` (CRLF lines, not dot-stuffed here); returns the final reply.
    async fn data(&mut self, body: &str) -> (u16, String) {
        self.cmd("DATA", 354).await;
        self.send(&format!("{body}.\r\n")).await;
        self.reply().await
    }

    /// Whether the session has closed (EOF with nothing more to read).
    async fn closed(&mut self) -> bool {
        self.reply().await.0 == 0
    }
}

const MSG: &str = "From: <a@sender.test>\r\nTo: <u@example.test>\r\nSubject: t\r\n\r\nhello\r\n";

// ---- greeting, EHLO, simple verbs ----

#[tokio::test]
async fn greeting_and_quit() {
    let rig = rig("").await;
    let mut c = rig.connect();
    assert_eq!(c.expect(220).await, "220 mx.test ESMTP mailgate");
    assert!(c.cmd("QUIT", 221).await.contains("mx.test closing connection"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn ehlo_lists_extensions_without_tls_or_auth() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    let ehlo = c.cmd("EHLO client.test", 250).await;
    for ext in ["PIPELINING", "SIZE ", "8BITMIME", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(ext), "{ext} in {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS") && !ehlo.contains("AUTH") && !ehlo.contains("REQUIRETLS"), "{ehlo}");
    assert_eq!(c.cmd("HELO client.test", 250).await, "250 mx.test greets client.test");
}

#[tokio::test]
async fn helo_needs_a_domain() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO not_a domain!", 501).await;
    c.cmd("HELO [192.0.2.1]", 250).await;
}

#[tokio::test]
async fn noop_vrfy_expn_help() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("NOOP", 250).await;
    c.cmd("VRFY u@example.test", 252).await;
    c.cmd("EXPN staff", 502).await;
    assert!(c.cmd("HELP", 214).await.contains("BDAT"));
}

#[tokio::test]
async fn unknown_and_malformed_commands() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("TURN", 500).await;
    c.send("NOOP\n").await;
    assert!(c.expect(500).await.contains("Bare CR or LF"));
    c.cmd(&format!("NOOP {}", "x".repeat(2000)), 500).await;
    c.cmd("NOOP", 250).await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let rig = rig("[limits]\nmax_errors = 3\n").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("BOGUS", 500).await;
    c.cmd("BOGUS", 500).await;
    c.send("BOGUS\r\n").await;
    c.expect(500).await;
    assert!(c.expect(421).await.contains("Too many errors"));
    assert!(c.closed().await);
}

// ---- sequence errors ----

#[tokio::test]
async fn mail_needs_helo() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("MAIL FROM:<a@sender.test>", 503).await;
}

#[tokio::test]
async fn rcpt_needs_mail() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("RCPT TO:<u@example.test>", 503).await;
}

#[tokio::test]
async fn data_needs_mail_and_a_recipient() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("DATA", 503).await;
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
    c.cmd("RCPT TO:<u@elsewhere.test>", 550).await;
    assert!(c.cmd("DATA", 554).await.contains("5.5.1"));
}

#[tokio::test]
async fn second_mail_in_a_transaction() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&[]).await;
    c.cmd("MAIL FROM:<b@sender.test>", 503).await;
}

// ---- RSET in every state ----

#[tokio::test]
async fn rset_before_anything() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("RSET", 250).await;
    c.cmd("EHLO client.test", 250).await;
}

#[tokio::test]
async fn rset_after_mail_ends_the_transaction() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&[]).await;
    c.cmd("RSET", 250).await;
    c.cmd("RCPT TO:<u@example.test>", 503).await;
    // HELO is kept: a new transaction may start at once.
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
}

#[tokio::test]
async fn rset_after_rcpt() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    c.cmd("RSET", 250).await;
    c.cmd("DATA", 503).await;
}

#[tokio::test]
async fn rset_between_bdat_chunks_drops_the_message() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    c.send("BDAT 5\r\nabcde").await;
    c.expect(250).await;
    c.cmd("RSET", 250).await;
    c.send("BDAT 3 LAST\r\nxyz").await;
    c.expect(503).await;
    assert_eq!(rig.queued(), 0);
}

#[tokio::test]
async fn rset_after_a_message() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 250);
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
}

// ---- a message, by DATA and BDAT ----

#[tokio::test]
async fn data_stores_and_delivers_with_our_received_first() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (code, text) = c.data(MSG).await;
    assert_eq!(code, 250, "{text}");
    let id = text.rsplit(' ').next().unwrap().to_string();
    let got = rig.wait_delivered(1).await;
    // The maildir writer adds Return-Path and Delivered-To; our Received: is the first trace.
    let received = got[0].find("Received: ").unwrap();
    assert!(got[0][received..].starts_with("Received: from client.test ([192.0.2.10])"), "{}", got[0]);
    assert!(got[0].contains(&format!("with ESMTP id {id}")), "{}", got[0]);
    assert!(got[0].ends_with("\nhello\n") || got[0].ends_with("\r\nhello\r\n"), "{}", got[0]);
}

#[tokio::test]
async fn data_is_unstuffed() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (code, _) = c.data("Subject: dots\r\n\r\n..leading dot\r\n...\r\n").await;
    assert_eq!(code, 250);
    let got = rig.wait_delivered(1).await;
    assert!(
        got[0].contains("\n.leading dot") && got[0].contains("\n..\n") || got[0].contains("\n..\r\n"),
        "{}",
        got[0]
    );
}

#[tokio::test]
async fn pipelined_transaction_answers_in_order() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\n").await;
    for code in [250, 250, 550, 250, 354] {
        c.expect(code).await;
    }
    c.send(&format!("{MSG}.\r\nQUIT\r\n")).await;
    c.expect(250).await;
    c.expect(221).await;
    let got = rig.wait_delivered(2).await;
    assert!(got.iter().all(|m| m.contains("Subject: t")));
}

#[tokio::test]
async fn two_messages_in_one_session() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 250);
    c.cmd("MAIL FROM:<b@sender.test>", 250).await;
    c.cmd("RCPT TO:<v@example.test>", 250).await;
    assert_eq!(c.data(MSG).await.0, 250);
    rig.wait_delivered(2).await;
}

#[tokio::test]
async fn bdat_in_one_chunk() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    c.send(&format!("BDAT {} LAST\r\n{MSG}", MSG.len())).await;
    assert!(c.expect(250).await.contains("queued as"));
    assert!(rig.wait_delivered(1).await[0].contains("Subject: t"));
}

#[tokio::test]
async fn bdat_in_several_chunks_with_an_empty_last() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (a, b) = MSG.split_at(20);
    c.send(&format!("BDAT {}\r\n{a}", a.len())).await;
    assert_eq!(c.expect(250).await, format!("250 2.0.0 {} octets received", a.len()));
    // The command and its chunk arrive in pieces: the state waits for the rest.
    c.send(&format!("BDAT {}\r\n", b.len())).await;
    c.send(&b[..5]).await;
    c.send(&b[5..]).await;
    c.expect(250).await;
    c.send("BDAT 0 LAST\r\n").await;
    assert!(c.expect(250).await.contains("queued as"));
    assert!(rig.wait_delivered(1).await[0].contains("Subject: t"));
}

#[tokio::test]
async fn bdat_chunk_content_is_not_a_command() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let body = "Subject: x\r\n\r\nQUIT\r\nRSET\r\n";
    c.send(&format!("BDAT {} LAST\r\n{body}NOOP\r\n", body.len())).await;
    c.expect(250).await;
    c.expect(250).await; // the NOOP after the chunk
    assert!(rig.wait_delivered(1).await[0].contains("\nQUIT"));
}

#[tokio::test]
async fn bdat_without_a_transaction_is_read_and_refused() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.send("BDAT 10 LAST\r\n0123456789NOOP\r\n").await;
    c.expect(503).await;
    c.expect(250).await;
}

#[tokio::test]
async fn data_after_bdat_and_rcpt_during_bdat() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    c.send("BDAT 3\r\nabc").await;
    c.expect(250).await;
    assert!(c.cmd("DATA", 503).await.contains("after BDAT"));
    assert!(c.cmd("RCPT TO:<v@example.test>", 503).await.contains("during BDAT"));
}

// ---- recipients and parameters ----

#[tokio::test]
async fn relaying_is_denied_to_other_domains() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&[]).await;
    assert!(c.cmd("RCPT TO:<u@elsewhere.test>", 550).await.contains("5.7.1"));
}

#[tokio::test]
async fn postmaster_without_a_domain_is_accepted() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&[]).await;
    c.cmd("RCPT TO:<Postmaster>", 250).await;
}

#[tokio::test]
async fn recipient_limit() {
    let rig = rig("[limits]\nmax_recipients = 2\n").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["a@example.test", "b@example.test"]).await;
    assert!(c.cmd("RCPT TO:<c@example.test>", 452).await.contains("4.5.3"));
    // A repeated recipient is not a new one.
    c.cmd("RCPT TO:<A@example.test>", 250).await;
}

#[tokio::test]
async fn utf8_recipient_needs_smtputf8() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&[]).await;
    c.cmd("RCPT TO:<jürgen@example.test>", 553).await;
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<a@sender.test> SMTPUTF8", 250).await;
    c.cmd("RCPT TO:<jürgen@example.test>", 250).await;
}

#[tokio::test]
async fn mail_parameters() {
    let rig = rig("[limits]\nmax_message_size = 1000\n").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("HELO client.test", 250).await;
    c.cmd("MAIL FROM:<a@sender.test> SIZE=10", 555).await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("MAIL FROM:<a@sender.test> SIZE=5000", 552).await;
    c.cmd("MAIL FROM:<a@sender.test> BODY=BINARYMIME", 555).await;
    c.cmd("MAIL FROM:<a@sender.test> REQUIRETLS", 530).await;
    c.cmd("MAIL FROM:<a@sender.test> SIZE=10 SIZE=10", 501).await;
    c.cmd("MAIL FROM:<a@sender.test> SIZE=10 BODY=8BITMIME", 250).await;
}

// ---- content limits and the cleanup stage's refusals ----

#[tokio::test]
async fn message_over_the_size_limit() {
    let rig = rig("[limits]\nmax_message_size = 2000\n").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let big = format!("Subject: big\r\n\r\n{}", "0123456789012345678901234567890123456789\r\n".repeat(100));
    let (code, text) = c.data(&big).await;
    assert_eq!(code, 552, "{text}");
    c.cmd("NOOP", 250).await;
    assert_eq!(rig.queued(), 0);
}

#[tokio::test]
async fn bdat_over_the_size_limit_is_refused_at_the_crossing_chunk() {
    let rig = rig("[limits]\nmax_message_size = 2000\n").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let chunk = "0123456789012345678901234567890123456789012345678\r\n".repeat(30);
    c.send(&format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    c.expect(250).await;
    c.send(&format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    c.expect(552).await;
    c.send("BDAT 0 LAST\r\n").await;
    c.expect(552).await;
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
}

#[tokio::test]
async fn a_mail_loop_is_refused() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let hops = "Received: from a by b; Thu, 01 Jan 1970 00:00:00 +0000\r\n".repeat(55);
    let (code, text) = c.data(&format!("{hops}Subject: loop\r\n\r\nx\r\n")).await;
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.4.6"), "{text}");
}

#[tokio::test]
async fn nesting_past_the_limit_is_refused_before_any_parser() {
    let rig = rig("[limits]\nmax_mime_depth = 5\n").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let mut body = String::from("Subject: deep\r\n");
    for i in 0..10 {
        body += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n");
    }
    body += "Content-Type: text/plain\r\n\r\nx\r\n";
    let (code, text) = c.data(&body).await;
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.6.0"), "{text}");
}

#[tokio::test]
async fn ambiguous_from_is_refused() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (code, text) = c.data("From: <a@one.test>\r\nFrom: <b@two.test>\r\nSubject: x\r\n\r\nx\r\n").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("DMARC cannot judge it"), "{text}");
}

#[tokio::test]
async fn forged_authentication_results_are_removed() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let msg = format!("Authentication-Results: mx.test; spf=pass smtp.mailfrom=forged.test\r\n{MSG}");
    assert_eq!(c.data(&msg).await.0, 250);
    let got = rig.wait_delivered(1).await;
    assert!(!got[0].contains("forged.test"), "{}", got[0]);
}

#[tokio::test]
async fn nul_bytes_are_refused() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (code, _) = c.data("Subject: nul\r\n\r\na\0b\r\n").await;
    assert_eq!(code / 100, 5);
}

// ---- STARTTLS and AUTH ----

#[tokio::test]
async fn no_starttls_and_no_auth_without_their_configuration() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("STARTTLS", 502).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 502).await;
}

/// A client that did STARTTLS on `c` and trusts the rig's certificate.
async fn starttls(rig: &Rig, mut c: Client<DuplexStream>) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
    c.cmd("STARTTLS", 220).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rig.cert.clone().expect("a TLS rig")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    let tls = connector.connect(name, c.io).await.unwrap();
    Client { io: tls, buf: vec![] }
}

#[tokio::test]
async fn starttls_forgets_the_plaintext_session_and_its_plugins() {
    let rig = rig_with(&plugin("memo", "stages = [\"helo\", \"mail_from\"]", ""), true).await;
    let mut c = rig.connect().greeted().await;
    assert!(c.cmd("EHLO plain.test", 250).await.contains("STARTTLS"));
    let mut c = starttls(&rig, c).await;
    // HELO is forgotten (RFC 3207 §4.2).
    c.cmd("MAIL FROM:<a@sender.test>", 503).await;
    let ehlo = c.cmd("EHLO tls.test", 250).await;
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("REQUIRETLS"), "{ehlo}");
    // The plugin instance is new: it remembers only the name given over TLS, and its score.
    let memo = c.cmd("MAIL FROM:<a@sender.test>", 451).await;
    assert!(memo.contains("memo: tls, helos [tls.test], score 1, earlier sessions 0"), "{memo}");
}

// ---- plugin instances that serve one session after another ----

/// One session from a fresh client: EHLO `helo`, then what memo says at MAIL FROM; waits until
/// the session has ended (and its instances are given back).
async fn memo_session(rig: &Rig, helo: &str) -> String {
    let (c, task) = rig.session_from("192.0.2.10".parse().unwrap());
    let mut c = c.greeted().await;
    c.cmd(&format!("EHLO {helo}"), 250).await;
    let memo = c.cmd("MAIL FROM:<a@sender.test>", 451).await;
    c.cmd("QUIT", 221).await;
    drop(c);
    tokio::time::timeout(T, task).await.expect("the session ends").unwrap();
    memo
}

#[tokio::test]
async fn a_reusable_instance_serves_the_next_session_and_nothing_of_the_last_reaches_it() {
    let rig = rig(&plugin("memo", "stages = [\"helo\", \"mail_from\"]", "reusable = true")).await;
    let first = memo_session(&rig, "one.test").await;
    assert!(first.contains("helos [one.test], score 1, earlier sessions 0"), "{first}");
    // The same instance (it counts the sessions it served), its HELO names forgotten by the
    // plugin and the score (the host's) new.
    let second = memo_session(&rig, "two.test").await;
    assert!(second.contains("helos [two.test], score 1, earlier sessions 1"), "{second}");
    let third = memo_session(&rig, "three.test").await;
    assert!(third.contains("helos [three.test], score 1, earlier sessions 2"), "{third}");
    // The connection facts it is given are each session's own, though the instance kept the
    // last session's (hooks carry only their version).
    for (memo, helo) in [(&first, "one.test"), (&second, "two.test"), (&third, "three.test")] {
        assert!(memo.contains(&format!("conn helo {helo}, user -, session ")), "{memo}");
    }
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    assert_eq!(plugins.idle_instances(), vec![("memo".to_string(), 1)]);
}

#[tokio::test]
async fn an_instance_that_keeps_no_session_state_is_handed_on_without_end_session() {
    // memo says at init that it keeps nothing (untrue of it, on purpose): the host hands its
    // instance to the next session without calling `end-session`, so memo neither forgets its
    // HELO names nor counts the sessions — while the host's own state (the score) is new.
    let rig = rig(&plugin("memo", "stages = [\"helo\", \"mail_from\"]", "stateless = true")).await;
    let first = memo_session(&rig, "one.test").await;
    assert!(first.contains("helos [one.test], score 1, earlier sessions 0"), "{first}");
    let second = memo_session(&rig, "two.test").await;
    assert!(second.contains("helos [one.test two.test], score 1, earlier sessions 0"), "{second}");
    assert!(second.contains("conn helo two.test,"), "{second}");
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    assert_eq!(plugins.idle_instances(), vec![("memo".to_string(), 1)]);
}

#[tokio::test]
async fn an_instance_that_keeps_no_state_is_lent_to_each_session_one_call_at_a_time() {
    // memo says at init that it keeps nothing between calls (untrue of it, on purpose): two
    // sessions open at once are served by one instance, lent for each call and given back, so
    // each finds the other's HELO name — while what the host gives each call (the score of
    // the session, its connection facts) is the calling session's own.
    let rig = rig(&plugin("memo", "stages = [\"helo\", \"mail_from\"]", "lend = true")).await;
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    let (a, task_a) = rig.session_from("192.0.2.10".parse().unwrap());
    let (b, task_b) = rig.session_from("192.0.2.11".parse().unwrap());
    let (mut a, mut b) = (a.greeted().await, b.greeted().await);
    a.cmd("EHLO one.test", 250).await;
    b.cmd("EHLO two.test", 250).await;
    // Between calls the instance is idle, not held by either session.
    assert_eq!(plugins.idle_instances(), vec![("memo".to_string(), 1)]);
    let memo_a = a.cmd("MAIL FROM:<a@sender.test>", 451).await;
    let memo_b = b.cmd("MAIL FROM:<b@sender.test>", 451).await;
    for (memo, helo) in [(&memo_a, "one.test"), (&memo_b, "two.test")] {
        assert!(memo.contains("helos [one.test two.test], score 1, earlier sessions 0"), "{memo}");
        assert!(memo.contains(&format!("conn helo {helo}, user -, session ")), "{memo}");
    }
    for (mut c, task) in [(a, task_a), (b, task_b)] {
        c.cmd("QUIT", 221).await;
        drop(c);
        tokio::time::timeout(T, task).await.expect("the session ends").unwrap();
    }
    assert_eq!(plugins.idle_instances(), vec![("memo".to_string(), 1)]);
}

#[tokio::test]
async fn a_lent_instance_that_answers_something_invalid_is_dropped_not_given_back() {
    // misbehave, lent per call, answers `next` at HELO (its instance goes back idle) and a
    // reply code no verdict may carry at RCPT (its `on_error` skip applies, and the instance
    // that said it is dropped, as any failing plugin's is).
    let config = "mode = \"bad-code\"\nstage = \"rcpt\"\nlend = true";
    let rig = rig(&plugin("misbehave", "stages = [\"helo\", \"rcpt\"]\non_error = \"skip\"", config)).await;
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO one.test", 250).await;
    assert_eq!(plugins.idle_instances(), vec![("misbehave".to_string(), 1)]);
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
    c.cmd("RCPT TO:<u@example.test>", 250).await;
    assert_eq!(plugins.idle_instances(), vec![("misbehave".to_string(), 0)]);
    // The next call gets a new instance, lent back after its valid answer.
    c.cmd("EHLO two.test", 250).await;
    assert_eq!(plugins.idle_instances(), vec![("misbehave".to_string(), 1)]);
}

/// Sessions one after another, each with memo: every one must find a new instance, and none
/// is left idle.
async fn every_session_gets_a_new_instance(extra: &str, config: &str, helos: &[&str]) {
    let rig = rig(&plugin("memo", &format!("stages = [\"helo\", \"mail_from\"]\n{extra}"), config)).await;
    for helo in helos {
        let memo = memo_session(&rig, helo).await;
        assert!(memo.contains(&format!("helos [{helo}], score 1, earlier sessions 0")), "{memo}");
    }
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    assert_eq!(plugins.idle_instances(), vec![("memo".to_string(), 0)]);
}

#[tokio::test]
async fn an_instance_whose_memory_grew_large_is_not_kept_for_another_session() {
    let config = "reusable = true\ngrow = 3145728";
    every_session_gets_a_new_instance("memory_limit = 16777216", config, &["one.test", "two.test"]).await;
}

#[tokio::test]
async fn a_plugin_that_does_not_say_it_forgot_gets_a_new_instance_every_session() {
    every_session_gets_a_new_instance("", "reusable = false", &["one.test", "two.test", "three.test"]).await;
}

#[tokio::test]
async fn hooks_a_plugin_has_no_code_for_are_not_called_again() {
    use mailgate_config::Stage;
    // memo has code at HELO and MAIL FROM only; configured for every stage.
    let rig = rig(&plugin("memo", "", "")).await;
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    assert_eq!(plugins.unused_stages(), vec![("memo".to_string(), vec![])]);
    let memo = memo_session(&rig, "one.test").await;
    assert!(memo.contains("helos [one.test], score 1"), "{memo}");
    // Connect ran its default (no opinion) and the SDK said so; HELO and MAIL FROM have code.
    assert_eq!(plugins.unused_stages(), vec![("memo".to_string(), vec![Stage::Connect])]);
}

#[tokio::test]
async fn a_plugin_with_code_at_one_stage_is_asked_there_only_and_still_changes_every_message() {
    use mailgate_config::Stage;
    // add-header has code at DATA only; configured for every stage.
    let rig = rig(&plugin("add-header", "", "name = \"X-Seen\"\nvalue = \"yes\"")).await;
    let plugins = rig.gateway.shared.current().plugins.clone().unwrap();
    let mut c = rig.connect().greeted().await;
    for n in 0..2 {
        c.envelope(&["u@example.test"]).await;
        assert_eq!(c.data(MSG).await.0, 250);
        let got = rig.wait_delivered(n + 1).await;
        // Every message still gets the header: the hook with code is always asked.
        assert!(got.iter().all(|m| m.contains("X-Seen: yes")), "{got:?}");
    }
    // The queue's hooks run after delivery; wait for the last one to be learnt.
    let everything_but_data =
        vec![Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::Rcpt, Stage::Route, Stage::DeliveryResult];
    let deadline = tokio::time::Instant::now() + T;
    while plugins.unused_stages()[0].1 != everything_but_data && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // AUTH never came, so it was never asked and is not known.
    assert_eq!(plugins.unused_stages(), vec![("add-header".to_string(), everything_but_data)]);
}

#[tokio::test]
async fn starttls_ends_the_plaintext_session_for_a_reusable_instance_too() {
    let rig = rig_with(&plugin("memo", "stages = [\"helo\", \"mail_from\"]", "reusable = true"), true).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO plain.test", 250).await;
    let mut c = starttls(&rig, c).await;
    c.cmd("EHLO tls.test", 250).await;
    // The plaintext session ended for the instance: it forgot plain.test, and the score is new.
    let memo = c.cmd("MAIL FROM:<a@sender.test>", 451).await;
    assert!(memo.contains("memo: tls, helos [tls.test], score 1, earlier sessions 1"), "{memo}");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let rig = rig_with("", true).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.send("STARTTLS\r\nMAIL FROM:<a@sender.test>\r\n").await;
    // The injected MAIL never runs: the TLS handshake proceeds and the session is clean.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rig.cert.clone().unwrap()).unwrap();
    c.expect(220).await;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("mx.test").unwrap(), c.io)
        .await
        .unwrap();
    let mut c = Client { io: tls, buf: vec![] };
    c.cmd("EHLO client.test", 250).await;
    c.cmd("RCPT TO:<u@example.test>", 503).await;
}

fn auth_rig_toml() -> String {
    let hash = crate::cli::hash_password("secret").unwrap();
    plugin(
        "auth-static",
        "stages = [\"auth\"]\ncpu_budget = \"5s\"\nmemory_limit = 67108864",
        &format!("users = [\"alice:{hash}\"]"),
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn auth_needs_tls() {
    let rig = rig_with(&auth_rig_toml(), true).await;
    let mut c = rig.connect().greeted().await;
    assert!(!c.cmd("EHLO client.test", 250).await.contains("AUTH"));
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0secret")), 538).await;
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let rig = rig_with(&auth_rig_toml(), true).await;
    let c = rig.connect().greeted().await;
    let mut c = {
        let mut c = c;
        c.cmd("EHLO client.test", 250).await;
        starttls(&rig, c).await
    };
    assert!(c.cmd("EHLO client.test", 250).await.contains("AUTH PLAIN LOGIN"));
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0wrong")), 535).await;
    c.cmd("AUTH PLAIN", 334).await;
    c.cmd(&b64("\0alice\0secret"), 235).await;
    c.cmd("AUTH PLAIN", 503).await;
    // Authenticated: relaying is allowed.
    c.cmd("MAIL FROM:<alice@sender.test>", 250).await;
    c.cmd("RCPT TO:<x@elsewhere.test>", 250).await;
}

#[tokio::test]
async fn auth_login_and_cancel() {
    let rig = rig_with(&auth_rig_toml(), true).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    let mut c = starttls(&rig, c).await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("AUTH LOGIN", 334).await;
    c.cmd("*", 501).await;
    c.cmd("AUTH LOGIN", 334).await;
    c.cmd("not base64!", 501).await;
    c.cmd(&format!("AUTH LOGIN {}", b64("alice")), 334).await;
    c.cmd(&b64("secret"), 235).await;
}

#[tokio::test]
async fn auth_unknown_mechanism_and_during_a_transaction() {
    let rig = rig_with(&auth_rig_toml(), true).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    let mut c = starttls(&rig, c).await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("AUTH CRAM-MD5", 504).await;
    c.cmd("MAIL FROM:<a@sender.test>", 250).await;
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0secret")), 503).await;
}

/// Failed AUTH attempts are counted per client across its sessions — an IPv4 address, an
/// IPv6 /64 (one host has the whole network to connect from) — and a client over the limit
/// is told to come back later before it may try again; its neighbours are not.
#[tokio::test]
async fn auth_failures_are_counted_per_client_and_ipv6_network() {
    let rig = rig_with(&format!("[limits]\nmax_auth_failures = 2\n{}", auth_rig_toml()), true).await;
    let tls_session = |ip: &str| {
        let c = rig.connect_from(ip.parse().unwrap());
        async {
            let mut c = c.greeted().await;
            c.cmd("EHLO client.test", 250).await;
            let mut c = starttls(&rig, c).await;
            c.cmd("EHLO client.test", 250).await;
            c
        }
    };
    let wrong = format!("AUTH PLAIN {}", b64("\0alice\0wrong"));
    let mut c = tls_session("2001:db8:1:1::10").await;
    c.cmd(&wrong, 535).await;
    c.cmd(&wrong, 535).await;
    c.expect(421).await;
    // Another address of the same /64: refused before it may try.
    let mut c = tls_session("2001:db8:1:1::99").await;
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0secret")), 421).await;
    // Another /64, and an IPv4 client: each has its own count.
    for ip in ["2001:db8:1:2::10", "192.0.2.77"] {
        let mut c = tls_session(ip).await;
        c.cmd(&wrong, 535).await;
        c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0secret")), 235).await;
    }
    // IPv4 clients are their addresses, not their networks.
    let mut c = tls_session("192.0.2.78").await;
    c.cmd(&wrong, 535).await;
    let mut c = tls_session("192.0.2.77").await;
    c.cmd(&wrong, 535).await;
    c.expect(421).await;
}

// ---- plugin verdicts at each stage ----

fn verdict(stage: &str, verdict: &str) -> String {
    plugin("verdict", "", &format!("stage = \"{stage}\"\nverdict = \"{verdict}\""))
}

#[tokio::test]
async fn refused_at_connect() {
    let rig = rig(&verdict("connect", "reject")).await;
    let mut c = rig.connect();
    assert!(c.expect(550).await.contains("verdict plugin: reject at connect"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn tempfail_at_helo() {
    let rig = rig(&verdict("helo", "tempfail")).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 451).await;
    c.cmd("MAIL FROM:<a@sender.test>", 503).await;
}

#[tokio::test]
async fn refused_at_mail_from_leaves_no_transaction() {
    let rig = rig(&verdict("mail-from", "reject")).await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    c.cmd("MAIL FROM:<a@sender.test>", 550).await;
    c.cmd("RCPT TO:<u@example.test>", 503).await;
}

#[tokio::test]
async fn refused_for_one_recipient() {
    let rig = rig(&plugin("verdict", "", "stage = \"rcpt\"\nverdict = \"reject\"\nrcpt = \"no@example.test\"")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["yes@example.test"]).await;
    c.cmd("RCPT TO:<no@example.test>", 550).await;
    assert_eq!(c.data(MSG).await.0, 250);
    let got = rig.wait_delivered(1).await;
    assert!(got[0].contains("for <yes@example.test>"), "{}", got[0]);
}

#[tokio::test]
async fn refused_at_data_stores_nothing() {
    let rig = rig(&verdict("data", "reject")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 550);
    assert_eq!(rig.queued(), 0);
    c.cmd("NOOP", 250).await;
}

#[tokio::test]
async fn discarded_at_data_looks_accepted_and_stores_nothing() {
    let rig = rig(&verdict("data", "discard")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    let (code, text) = c.data(MSG).await;
    assert_eq!(code, 250);
    assert!(text.contains("queued as"));
    assert_eq!(rig.queued(), 0);
}

#[tokio::test]
async fn quarantined_at_data_is_kept_not_delivered() {
    let rig = rig(&verdict("data", "quarantine")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 250);
    let deadline = tokio::time::Instant::now() + T;
    while !rig.gateway.shared.queue.list().iter().any(|(_, s)| *s == mailgate_queue::State::Quarantined) {
        assert!(tokio::time::Instant::now() < deadline, "not quarantined");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rig.delivered().is_empty());
}

#[tokio::test]
async fn disconnect_at_data() {
    let rig = rig(&verdict("data", "disconnect")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 421);
    assert!(c.closed().await);
}

#[tokio::test]
async fn plugin_header_edit_is_applied_before_signing_and_storing() {
    let rig = rig(&plugin("add-header", "stages = [\"data\"]", "")).await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    assert_eq!(c.data(MSG).await.0, 250);
    assert!(rig.wait_delivered(1).await[0].contains("X-Mailgate-Plugin: add-header"));
}

// ---- shutdown ----

#[tokio::test]
async fn an_idle_session_is_told_at_once_when_the_gateway_stops() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.cmd("EHLO client.test", 250).await;
    rig.stop.send(true).unwrap();
    assert!(c.expect(421).await.contains("4.3.2"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_transaction_in_progress_may_finish_when_the_gateway_stops() {
    let rig = rig("").await;
    let mut c = rig.connect().greeted().await;
    c.envelope(&["u@example.test"]).await;
    c.cmd("DATA", 354).await;
    c.send("Subject: t\r\n\r\nfirst half\r\n").await;
    rig.stop.send(true).unwrap();
    c.send("second half\r\n.\r\n").await;
    c.expect(250).await;
    assert!(c.expect(421).await.contains("4.3.2"));
    assert!(rig.wait_delivered(1).await[0].contains("second half"));
}
