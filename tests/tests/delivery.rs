//! Outbound delivery through the real gateway: smarthost and MX routes (with a real DNS server
//! on loopback), retries, DSNs, per-recipient results, opportunistic STARTTLS.

use std::time::Duration;

use mailgate_tests::clients::{python, swaks, Raw};
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(20);

fn send(port: u16, from: &str, rcpts: &[&str], subject: &str) {
    let rcpts: Vec<String> = rcpts.iter().map(|r| format!("\"{r}\"")).collect();
    let script = format!(
        r#"
import os, smtplib
from email.message import EmailMessage
m = EmailMessage(); m["Subject"] = "{subject}"; m["From"] = "{from}"; m.set_content("hello from smtplib\n")
c = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"])); c.ehlo("py.test")
refused = c.send_message(m, from_addr="{from}", to_addrs=[{}]); c.quit()
print("refused", refused)
"#,
        rcpts.join(",")
    );
    let (ok, out) = python(port, &script);
    assert!(ok, "{out}");
}

#[test]
fn smarthost_delivery_with_python_smtplib() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "");
    send(gw.port, "a@sender.test", &["one@remote.test", "two@other.test"], "to the smarthost");
    let m = sink.wait_for(1, T);
    assert_eq!(m[0].from, "a@sender.test");
    // Different domains, same smarthost: one transaction.
    assert_eq!(m[0].rcpts.len(), 2, "{:?}", m[0].rcpts);
    assert!(m[0].text().contains("Subject: to the smarthost"));
    assert!(m[0].text().starts_with("Received: from py.test ([127.0.0.1])"));
}

#[test]
fn temporary_failure_is_retried_until_delivered() {
    let sink = Sink::start();
    sink.set_rcpt_reply("later@remote.test", "451 4.3.0 try again later");
    let gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");
    send(gw.port, "a@sender.test", &["later@remote.test"], "retry me");
    assert!(mailgate_tests::wait_for(T, || (sink.rcpt_attempts("later@remote.test") >= 2).then_some(())).is_some());
    assert!(sink.received().is_empty());
    sink.clear_rcpt_reply("later@remote.test");
    let m = sink.wait_for_rcpt("later@remote.test", T);
    assert!(m.text().contains("Subject: retry me"));
    assert!(gw.wait_log("message deferred", T));
    assert!(gw.wait_log("message finished", T));
}

#[test]
fn permanent_failure_bounces_a_dsn_with_the_original_headers() {
    let sink = Sink::start();
    sink.set_rcpt_reply("nobody@remote.test", "550 5.1.1 no such user here");
    let gw = Gateway::with_sink(sink.port(), "");
    send(gw.port, "author@sender.test", &["nobody@remote.test"], "doomed message");
    // The DSN goes back to the sender (via the same smarthost), from the null sender.
    let dsn = sink.wait_for_rcpt("author@sender.test", T);
    assert_eq!(dsn.from, "", "DSNs come from <>");
    let t = dsn.text();
    assert!(t.contains("Content-Type: multipart/report; report-type=delivery-status"), "{t}");
    assert!(t.contains("Final-Recipient: rfc822; nobody@remote.test"), "{t}");
    assert!(t.contains("Action: failed\r\nStatus: 5.1.1"), "{t}");
    assert!(t.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"), "{t}");
    // Why, classified: in words for the sender, as a class for programs.
    assert!(
        t.contains("<nobody@remote.test>: the recipient address does not exist (550 5.1.1 no such user here)"),
        "{t}"
    );
    assert!(t.contains("X-Mailgate-Class: invalid_recipient\r\n"), "{t}");
    assert!(t.contains("Content-Type: text/rfc822-headers"), "{t}");
    assert!(t.contains("Subject: doomed message"), "original headers are attached: {t}");
    assert!(!t.contains("hello from smtplib"), "not the body");
}

/// A null-sender message (a bounce) that fails cannot be returned: the postmaster gets the
/// report (a double bounce); a double bounce that fails too is dropped, never reported again.
#[test]
fn a_failed_null_sender_message_goes_to_the_postmaster_once() {
    let sink = Sink::start();
    sink.set_rcpt_reply("nobody@remote.test", "550 5.1.1 no such user");
    // The postmaster is `postmaster@` the first accepted domain, relayed to the sink here.
    let gw = Gateway::with_sink(sink.port(), "[relay]\naccept_domains = [\"remote.test\", \"example.test\"]\n");
    let out = swaks(gw.port, &["--from", "<>", "--to", "nobody@remote.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report = sink.wait_for_rcpt("postmaster@remote.test", T);
    assert_eq!(report.from, "", "a double bounce is sent from <>");
    let t = report.text();
    assert!(
        t.contains("To: <postmaster@remote.test>") && t.contains("Final-Recipient: rfc822; nobody@remote.test"),
        "{t}"
    );
    // The postmaster's mailbox fails as well: that double bounce is dropped, nothing loops.
    sink.set_rcpt_reply("postmaster@remote.test", "550 5.1.1 no postmaster here");
    let out = swaks(gw.port, &["--from", "<>", "--to", "nobody@remote.test"]);
    assert!(out.status.success());
    assert!(gw.wait_log("a double bounce to the postmaster failed: dropped", T), "{}", gw.log());
    assert_eq!(sink.received().len(), 1, "{}", gw.log());
    assert_eq!(
        sink.rcpt_attempts("postmaster@remote.test"),
        2,
        "the failed double bounce was tried once, not reported"
    );
}

#[test]
fn mixed_per_recipient_results() {
    let sink = Sink::start();
    sink.set_rcpt_reply("bad@remote.test", "550 5.1.1 unknown");
    sink.set_rcpt_reply("slow@remote.test", "450 4.2.1 mailbox busy");
    let gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");
    send(gw.port, "s@sender.test", &["good@remote.test", "bad@remote.test", "slow@remote.test"], "mixed");
    // good is delivered at once, bad bounces, slow is retried.
    let first = sink.wait_for_rcpt("good@remote.test", T);
    assert_eq!(first.rcpts, vec!["good@remote.test"]);
    let dsn = sink.wait_for_rcpt("s@sender.test", T);
    assert!(dsn.text().contains("Final-Recipient: rfc822; bad@remote.test"));
    assert!(!dsn.text().contains("Final-Recipient: rfc822; slow@remote.test"));
    assert!(mailgate_tests::wait_for(T, || (sink.rcpt_attempts("slow@remote.test") >= 2).then_some(())).is_some());
    sink.clear_rcpt_reply("slow@remote.test");
    let m = sink.wait_for_rcpt("slow@remote.test", T);
    assert_eq!(m.rcpts, vec!["slow@remote.test"], "only the pending recipient is retried");
    assert_eq!(sink.rcpt_attempts("good@remote.test"), 1, "the delivered recipient is not sent again");
    assert_eq!(sink.rcpt_attempts("bad@remote.test"), 1);
}

/// RFC 3030: a next hop that offers CHUNKING and PIPELINING gets a small message as one write —
/// `MAIL`, the `RCPT`s and `BDAT <size> LAST` with the content as stored, lines that start with a
/// dot unstuffed — and each recipient's result as with DATA: refused recipients bounce, a refused
/// message is retried, a transaction nobody took leaves the connection usable. A large message
/// still goes by DATA, after the recipients' replies.
#[test]
fn chunking_next_hops_get_small_messages_by_bdat() {
    let sink = Sink::start();
    sink.set_chunking(true);
    sink.set_rcpt_reply("bad@remote.test", "550 5.1.1 unknown");
    let gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");

    // Dot-stuffed on the way in (".leading", ".", ".."), as stored on the way out.
    let content = b"Subject: dots\r\nFrom: a@sender.test\r\n\r\n..leading\r\n..\r\n...\r\nend\r\n";
    let r = Raw::transaction(gw.port, "a@sender.test", "good@remote.test", content);
    assert!(r.starts_with("250"), "{r}");
    let m = sink.wait_for_rcpt("good@remote.test", T);
    assert!(m.bdat, "a CHUNKING next hop gets BDAT");
    assert!(m.text().starts_with("Received: "), "{}", m.text());
    assert!(
        m.text().ends_with("Subject: dots\r\nFrom: a@sender.test\r\n\r\n.leading\r\n.\r\n..\r\nend\r\n"),
        "{:?}",
        m.text()
    );

    // One recipient refused: the other gets the message, the refused one a bounce (by BDAT too).
    send(gw.port, "s@sender.test", &["fine@remote.test", "bad@remote.test"], "mixed");
    let m = sink.wait_for_rcpt("fine@remote.test", T);
    assert_eq!((m.rcpts.clone(), m.bdat), (vec!["fine@remote.test".to_string()], true));
    let dsn = sink.wait_for_rcpt("s@sender.test", T);
    assert!(dsn.bdat && dsn.text().contains("Final-Recipient: rfc822; bad@remote.test"), "{}", dsn.text());
    assert_eq!(sink.rcpt_attempts("bad@remote.test"), 1, "a refused recipient is not retried");

    // Every recipient refused: the content went out and was dropped; the next message is fine.
    send(gw.port, "t@sender.test", &["bad@remote.test"], "nobody");
    sink.wait_for_rcpt("t@sender.test", T);
    send(gw.port, "a@sender.test", &["after@remote.test"], "after");
    assert!(sink.wait_for_rcpt("after@remote.test", T).bdat);

    // The message refused for now (the reply to BDAT LAST): retried, then delivered.
    sink.set_data_reply(Some("451 4.3.0 not now"));
    let ends = sink.data_ends();
    send(gw.port, "a@sender.test", &["later@remote.test"], "later");
    assert!(mailgate_tests::wait_for(T, || (sink.data_ends() >= ends + 2).then_some(())).is_some());
    sink.set_data_reply(None);
    assert!(sink.wait_for_rcpt("later@remote.test", T).bdat);
    assert_eq!(sink.rcpt_attempts("fine@remote.test"), 1, "delivered recipients are not sent again");

    // A message larger than one write: DATA.
    let mut big = b"Subject: big\r\nFrom: a@sender.test\r\n\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("..line {i:04} of a message too large to go in the same write\r\n").as_bytes());
    }
    let r = Raw::transaction(gw.port, "a@sender.test", "big@remote.test", &big);
    assert!(r.starts_with("250"), "{r}");
    let m = sink.wait_for_rcpt("big@remote.test", T);
    assert!(!m.bdat, "a large message goes by DATA");
    assert!(m.text().ends_with(".line 1999 of a message too large to go in the same write\r\n"));
}

#[test]
fn mx_routing_through_a_real_dns_server() {
    let sink = Sink::start();
    let dns = Dns::start(&[
        "--mx-host=mxd.test,mail.mxd.test,10",
        "--mx-host=mxd.test,backup.mxd.test,20",
        "--host-record=mail.mxd.test,127.0.0.1",
        "--host-record=backup.mxd.test,127.0.0.2",
        "--host-record=nomx.test,127.0.0.1",
        "--mx-host=nullmx.test,.,0",
    ]);
    let gw = Gateway::start(&format!(
        "{}\n[delivery]\nmx_port = {}\n\n[queue]\nretry_schedule = [\"1s\"]\n\n[routes]\n\"*\" = {{ type = \"mx\", tls = \"none\" }}\n",
        dns.config(),
        sink.port()
    ));
    send(gw.port, "a@sender.test", &["user@mxd.test"], "by mx");
    let m = sink.wait_for_rcpt("user@mxd.test", T);
    assert!(m.text().contains("Subject: by mx"));
    // No MX: the domain's own address (RFC 5321 §5.1).
    send(gw.port, "a@sender.test", &["user@nomx.test"], "implicit mx");
    sink.wait_for_rcpt("user@nomx.test", T);
    // Null MX and a domain that does not exist: bounced at once (the DSN to sender.test,
    // which itself does not exist, is then dropped as undeliverable).
    send(gw.port, "a@sender.test", &["user@nullmx.test", "user@nothing.test"], "nowhere");
    assert!(gw.wait_log("556 5.1.10", T), "{}", gw.log());
    assert!(gw.wait_log("550 5.1.2 recipient domain nothing.test does not exist", T), "{}", gw.log());
}

#[test]
fn opportunistic_starttls_with_a_self_signed_certificate() {
    let sink = Sink::start_with(true);
    let gw = Gateway::start(&format!(
        "[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"opportunistic\" }}\n",
        sink.port()
    ));
    send(gw.port, "a@sender.test", &["tls@remote.test"], "encrypted");
    let m = sink.wait_for_rcpt("tls@remote.test", T);
    assert!(m.tls, "delivered inside STARTTLS");
}

#[test]
fn required_tls_defers_when_the_certificate_is_not_trusted() {
    let sink = Sink::start_with(true);
    let gw = Gateway::start(&format!(
        "[queue]\nretry_schedule = [\"1h\"]\n\n[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"required\" }}\n",
        sink.port()
    ));
    send(gw.port, "a@sender.test", &["strict@remote.test"], "must be verified");
    assert!(gw.wait_log("451 4.7.5 TLS required but handshake failed", T), "{}", gw.log());
    assert!(sink.received().is_empty());
}

/// Session resumption never widens what a policy accepts: two ports of one server share their
/// session-ticket keys, one with a certificate our CA signed, one self-signed. After a verified
/// session to the first, the second must still be refused (a client cache keyed by the server
/// name alone resumes there without any certificate).
#[test]
fn a_verified_session_is_not_resumed_on_another_port_with_a_bad_certificate() {
    let pki = mailgate_tests::pki::Pki::new();
    let (good_sink, bad_sink) = (Sink::start_tls(pki.server(true)), Sink::start_tls(pki.server(false)));
    let ca_file = pki.ca_file();
    let route = |port: u16| {
        format!(
            "{{ type = \"smarthost\", host = \"127.0.0.1\", port = {port}, tls = \"required\", ca_file = \"{}\" }}",
            ca_file.display()
        )
    };
    let gw = Gateway::start(&format!(
        "[queue]\nretry_schedule = [\"1h\"]\n\n[routes]\n\"good.test\" = {}\n\"bad.test\" = {}\n",
        route(good_sink.port()),
        route(bad_sink.port())
    ));
    send(gw.port, "a@sender.test", &["x@good.test"], "verified");
    assert!(good_sink.wait_for_rcpt("x@good.test", T).tls);
    send(gw.port, "a@sender.test", &["y@bad.test"], "must not go");
    assert!(gw.wait_log("451 4.7.5 TLS required but handshake failed", T), "{}", gw.log());
    assert!(bad_sink.received().is_empty(), "delivered to a server with an untrusted certificate");
}

/// An idle pooled connection is closed at `delivery.idle_timeout`, with QUIT.
#[test]
fn idle_connections_are_closed_with_quit() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "[delivery]\nidle_timeout = \"1s\"\n");
    send(gw.port, "a@sender.test", &["r@remote.test"], "then idle");
    sink.wait_for_rcpt("r@remote.test", T);
    assert_eq!(sink.quits(), 0, "kept for reuse first");
    let quit = mailgate_tests::wait_for(T, || (sink.quits() == 1).then_some(()));
    assert!(quit.is_some(), "no QUIT after the idle timeout; log:\n{}", gw.log());
}

#[test]
fn connections_are_reused_for_queued_messages() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "[delivery]\nidle_timeout = \"30s\"\n");
    for i in 0..3 {
        send(gw.port, "a@sender.test", &[&format!("r{i}@remote.test")], "reuse");
        sink.wait_for(i + 1, T);
    }
    assert_eq!(sink.connections(), 1, "one connection carried all three messages");
}

/// RFC 6531 §3.4 and RFC 6533: a message sent with SMTPUTF8 whose addresses and header fields
/// are all ASCII is relayed to a next hop without SMTPUTF8; one to a UTF-8 address cannot be,
/// and its DSN is a global one naming the recipient with the `utf-8` address type; in a message
/// to both, only the UTF-8 address fails.
#[test]
fn smtputf8_only_when_needed_and_global_dsns() {
    use mailgate_tests::clients::Raw;
    let sink = Sink::start();
    sink.set_smtputf8(false);
    let gw = Gateway::with_sink(sink.port(), "");
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for (rcpt, subject) in [("plain@remote.test", "ascii"), ("ünï@remote.test", "utf8")] {
        assert!(c.cmd("MAIL FROM:<a@sender.test> SMTPUTF8 BODY=8BITMIME").starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {subject}\r\n\r\nbody: grüße\r\n.\r\n").as_bytes());
        assert!(c.reply().starts_with("250"));
    }
    let m = sink.wait_for_rcpt("plain@remote.test", T);
    assert!(m.text().contains("Subject: ascii"));
    let dsn = sink.wait_for_rcpt("a@sender.test", T).text();
    assert!(dsn.contains("report-type=global-delivery-status"), "{dsn}");
    assert!(dsn.contains("Content-Type: message/global-delivery-status"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: utf-8; ünï@remote.test"), "{dsn}");
    assert!(dsn.contains("Status: 5.6.7"), "{dsn}");

    // One message to both: the ASCII recipient is not held hostage by the UTF-8 one.
    assert!(c.cmd("MAIL FROM:<b@sender.test> SMTPUTF8 BODY=8BITMIME").starts_with("250"));
    assert!(c.cmd("RCPT TO:<plain2@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<ünï2@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send("Subject: both\r\n\r\nbody: grüße\r\n.\r\n".as_bytes());
    assert!(c.reply().starts_with("250"));
    let m = sink.wait_for_rcpt("plain2@remote.test", T);
    assert_eq!(m.rcpts, ["plain2@remote.test"]);
    let dsn = sink.wait_for_rcpt("b@sender.test", T).text();
    assert!(dsn.contains("Final-Recipient: utf-8; ünï2@remote.test") && dsn.contains("Status: 5.6.7"), "{dsn}");
    assert!(!dsn.contains("Final-Recipient: rfc822; plain2@remote.test"), "{dsn}");
}

/// A message that stays deferred past `queue.max_age` fails with our 4.4.7 (delivery time
/// expired, RFC 3463), and the DSN's Diagnostic-Code is the next hop's last reply in its own
/// words, not our decision dressed as the remote's.
#[test]
fn expiry_is_reported_as_4_4_7_with_the_remote_reply_as_diagnostic() {
    let sink = Sink::start();
    sink.set_rcpt_reply("slow@remote.test", "451 4.3.0 not today");
    let gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\nmax_age = \"2s\"\n");
    send(gw.port, "a@sender.test", &["slow@remote.test"], "will expire");
    let dsn = sink.wait_for_rcpt("a@sender.test", T).text();
    assert!(dsn.contains("Final-Recipient: rfc822; slow@remote.test\r\nAction: failed\r\nStatus: 4.4.7\r\n"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 451 4.3.0 not today\r\n"), "{dsn}");
    assert!(dsn.contains("delivery time expired"), "{dsn}");
    assert!(dsn.contains("X-Mailgate-Class: expired\r\n"), "{dsn}");
}
