//! Inbound SMTP through the real gateway binary, with real clients.

use std::time::Duration;

use mailgate_tests::clients::{python, swaks, Raw};
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

fn gateway_with_sink(sink: &Sink, extra: &str) -> Gateway {
    let extra = if extra.contains("[queue]") {
        extra.to_string()
    } else {
        format!("[queue]\nretry_schedule = [\"1s\"]\n{extra}")
    };
    Gateway::with_sink(sink.port(), &extra)
}

#[test]
fn swaks_to_a_local_domain_lands_in_the_maildir_with_received() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let out = swaks(gw.port, &["--to", "Someone@example.test", "--from", "a@sender.test", "--h-Subject", "hi there"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    let files = mailgate_tests::wait_for(Duration::from_secs(10), || {
        let f = Gateway::maildir_files(&gw.path("mail"), "someone");
        (!f.is_empty()).then_some(f)
    })
    .expect("delivered to the maildir");
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    // LF line ends, as maildir readers expect (CRLF stays on the wire).
    assert!(msg.starts_with("Return-Path: <a@sender.test>\nDelivered-To: Someone@example.test\nReceived: from client.test ([127.0.0.1])\n\tby mx.gateway.test with ESMTP id "), "{msg}");
    assert!(!msg.contains('\r'), "{msg:?}");
    assert!(msg.contains("for <Someone@example.test>;"), "{msg}");
    assert!(msg.contains("Subject: hi there"));
}

#[test]
fn pipelined_transaction_in_one_packet() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    let ehlo = c.cmd("EHLO client.test");
    for kw in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 26214400", "CHUNKING", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(kw), "{kw} missing from {ehlo}");
    }
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@remote.test>\r\nRCPT TO:<y@remote.test>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Sender OK");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK");
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: pipelined\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert!(c.reply().starts_with("221 2.0.0"));
    let m = sink.wait_for_rcpt("x@remote.test", Duration::from_secs(10));
    assert_eq!(m.rcpts, vec!["x@remote.test", "y@remote.test"], "one transaction carries both");
    assert!(m.text().ends_with("Subject: pipelined\r\n\r\n.leading dot\r\nbody\r\n"), "{}", m.text());
}

#[test]
fn python_smtplib_bdat_and_utf8() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    // BDAT in two chunks, then an SMTPUTF8 message with 8-bit content via smtplib.
    let script = r#"
import os, smtplib, socket
port = int(os.environ["PORT"])
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode(); lines.append(l)
        if l[3:4] != "-": return "".join(lines)
reply()
s.sendall(b"EHLO py.test\r\n"); assert "CHUNKING" in reply()
s.sendall(b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<bdat@remote.test>\r\n"); reply(); reply()
part1 = b"Subject: chunked\r\n\r\nfirst "; part2 = b"second\r\n"
s.sendall(b"BDAT %d\r\n" % len(part1) + part1); r = reply(); assert r.startswith("250 2.0.0"), r
s.sendall(b"BDAT %d LAST\r\n" % len(part2) + part2); r = reply(); assert r.startswith("250 2.0.0 Ok: queued"), r
s.sendall(b"QUIT\r\n"); reply()
c = smtplib.SMTP("127.0.0.1", port); c.ehlo("py.test")
assert c.has_extn("smtputf8") and c.has_extn("8bitmime")
body = "Subject: grüße\r\n\r\nMötley Crüe\r\n".encode()
c.sendmail("jürgen@sender.test", ["ünï@remote.test"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
c.quit(); print("ok")
"#;
    let (ok, out) = python(gw.port, script);
    assert!(ok, "{out}");
    let m = sink.wait_for_rcpt("bdat@remote.test", Duration::from_secs(10));
    assert!(m.text().ends_with("Subject: chunked\r\n\r\nfirst second\r\n"), "{}", m.text());
    let m = sink.wait_for_rcpt("ünï@remote.test", Duration::from_secs(10));
    assert_eq!(m.from, "jürgen@sender.test");
    assert!(m.text().contains("Mötley Crüe"));
    assert!(m.text().contains("with UTF8SMTP id"));
}

#[test]
fn utf8_address_without_smtputf8_is_refused() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<jürgen@sender.test>").starts_with("553 5.6.7"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<ünï@example.test>").starts_with("553 5.6.7"));
}

#[test]
fn size_limits() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "[limits]\nmax_message_size = 2000\n");
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").contains("SIZE 2000"));
    assert!(c.cmd("MAIL FROM:<a@sender.test> SIZE=5000").starts_with("552 5.3.4"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    c.cmd("RCPT TO:<big@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body);
    assert!(c.reply().starts_with("552 5.3.4"));
    // The session goes on.
    assert!(c.cmd("NOOP").starts_with("250 2.0.0"));
}

#[test]
fn recipient_limit_gives_452_for_the_101st() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@sender.test>");
    let mut pipelined = String::new();
    for i in 0..101 {
        pipelined.push_str(&format!("RCPT TO:<r{i}@example.test>\r\n"));
    }
    c.send(pipelined.as_bytes());
    for i in 0..100 {
        assert!(c.reply().starts_with("250 2.1.5"), "rcpt {i}");
    }
    assert_eq!(c.reply(), "452 4.5.3 Too many recipients");
}

#[test]
fn bare_lf_is_rejected_in_commands_and_data() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.send(b"NOOP\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    c.send(b"NO\rOP\r\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    // The smuggling shape: "\n.\n" followed by a second transaction inside DATA.
    c.cmd("MAIL FROM:<a@sender.test>");
    c.cmd("RCPT TO:<victim@remote.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<smuggled@remote.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("550 5.5.2"), "{r}");
    // Nothing from that DATA was taken as commands, and nothing was queued.
    assert!(c.cmd("NOOP").starts_with("250"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.received().is_empty(), "nothing delivered");
    assert_eq!(sink.rcpt_attempts("smuggled@remote.test"), 0);
    // A bare CR in content too.
    c.cmd("MAIL FROM:<a@sender.test>");
    c.cmd("RCPT TO:<victim@remote.test>");
    c.cmd("DATA");
    c.send(b"Subject: cr\r\n\r\nhello\r.\r\nworld\r\n.\r\n");
    assert!(c.reply().starts_with("550 5.5.2"));
}

#[test]
fn long_lines_are_refused() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    let long_cmd = format!("MAIL FROM:<{}@sender.test>", "a".repeat(600));
    assert!(c.cmd(&long_cmd).starts_with("500 5.5.2 Line too long"));
    c.cmd("MAIL FROM:<a@sender.test>");
    c.cmd("RCPT TO:<x@example.test>");
    c.cmd("DATA");
    let line = "x".repeat(1001);
    c.send(format!("Subject: long\r\n\r\n{line}\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("550 5.6.0"));
    // 998 octets + CRLF is fine.
    c.cmd("MAIL FROM:<a@sender.test>");
    c.cmd("RCPT TO:<x@example.test>");
    c.cmd("DATA");
    c.send(format!("Subject: ok\r\n\r\n{}\r\n.\r\n", "y".repeat(998)).as_bytes());
    assert!(c.reply().starts_with("250 2.0.0"));
}

#[test]
fn relay_is_denied_to_untrusted_clients() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n");
    let out = swaks(gw.port, &["--to", "victim@elsewhere.test", "--from", "spammer@sender.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("550 5.7.1 Relaying denied"), "{text}");
    // Our own domain is still accepted.
    let out = swaks(gw.port, &["--to", "user@example.test", "--from", "a@sender.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sequence_errors_and_other_verbs_have_enhanced_codes() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("503 5.5.1"));
    assert!(c.cmd("EHLO bad_host!").starts_with("501 5.5.4"));
    c.cmd("EHLO client.test");
    assert!(c.cmd("RCPT TO:<x@example.test>").starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").starts_with("503 5.5.1"));
    assert!(c.cmd("VRFY someone").starts_with("252 2.5.2"));
    assert!(c.cmd("HELP").starts_with("214-2.0.0"));
    assert!(c.cmd("FOO").starts_with("500 5.5.2"));
    assert!(c.cmd("MAIL FROM:<a@sender.test> BODY=BINARYMIME").starts_with("555 5.5.4"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250 2.1.0"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").starts_with("554 5.5.1"));
    assert!(c.cmd("RSET").starts_with("250 2.0.0"));
    // BDAT without a transaction still consumes its octets.
    c.send(b"BDAT 6\r\nQUIT\r\n");
    assert!(c.reply().starts_with("503 5.5.1"));
    assert!(c.cmd("NOOP").starts_with("250 2.0.0"));
    assert!(c.cmd("QUIT").starts_with("221 2.0.0"));
}

#[test]
fn per_ip_session_limit_gives_421() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "[limits]\nmax_sessions_per_ip = 2\n");
    // The harness's readiness probe may still hold a slot for a moment: wait until two
    // sessions are admitted.
    let (_a, _b) = mailgate_tests::wait_for(Duration::from_secs(5), || {
        let (a, ga) = Raw::connect_any(gw.port);
        let (b, gb) = Raw::connect_any(gw.port);
        (ga.starts_with("220") && gb.starts_with("220")).then_some((a, b))
    })
    .expect("two sessions admitted");
    let s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut &s, &mut buf).unwrap();
    assert!(buf.starts_with("421 4.7.0"), "{buf}");
    drop((_a, _b));
    // Slots are released when sessions end.
    let ok = mailgate_tests::wait_for(Duration::from_secs(5), || {
        let s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 3];
        std::io::Read::read_exact(&mut &s, &mut b).ok()?;
        (&b == b"220").then_some(())
    });
    assert!(ok.is_some());
}

#[test]
fn command_timeout_closes_with_421() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "[timeouts]\ncommand = \"1s\"\n");
    let mut c = Raw::connect(gw.port);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.reply().starts_with("421 4.4.2"));
}

#[test]
fn a_looping_message_is_refused() {
    let sink = Sink::start();
    let gw = gateway_with_sink(&sink, "");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@sender.test>");
    c.cmd("RCPT TO:<loop@remote.test>");
    c.cmd("DATA");
    let hops: String = (0..50)
        .map(|i| format!("Received: from hop{i}.test by hop{}.test; Sun, 22 Nov 2026 00:00:00 +0000\r\n", i + 1))
        .collect();
    // 50 from earlier hops plus ours: one too many.
    c.send(format!("{hops}Subject: loop\r\n\r\nx\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("554 5.4.6"));
    assert!(c.cmd("NOOP").starts_with("250"));
}
