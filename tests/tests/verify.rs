//! Recipient verification at RCPT (no backscatter): a reloadable recipient table, and callouts
//! to the domain's next hop — Dovecot's real LMTP server, and an SMTP sink that counts what it
//! is asked — with the positive and negative cache, `451 4.4.3` (never 550) when the backend is
//! down, and the cache hits in `/metrics`.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::http::curl;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

/// The RCPT reply for `rcpt` in a fresh transaction of a fresh session.
fn rcpt(port: u16, rcpt: &str) -> String {
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@out.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    c.cmd("QUIT");
    r
}

/// The sum of a counter's series whose labels contain `needle`.
fn metric(admin: u16, name: &str, needle: &str) -> f64 {
    let body = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]).body;
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_recipient_table_refuses_unknown_addresses_and_is_read_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("corp-users");
    std::fs::write(&table, "# corp.test mailboxes\nalice@corp.test\tok\n@open.test\n").unwrap();
    let gw = Gateway::start(&format!(
        "[relay]\naccept_domains = [\"corp.test\", \"open.test\", \"free.test\"]\nrecipient_delimiter = \"+\"\n\n[limits]\nmax_errors = 3\n\n[verify.domains]\n\"corp.test\" = {{ table = \"{t}\" }}\n\"open.test\" = {{ table = \"{t}\" }}\n\n[routes]\n\"*\" = {{ type = \"discard\" }}\n",
        t = table.display()
    ));
    assert!(rcpt(gw.port, "alice@corp.test").starts_with("250"));
    assert!(rcpt(gw.port, "Alice+news@Corp.Test").starts_with("250"), "extension and case");
    let r = rcpt(gw.port, "bob@corp.test");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(rcpt(gw.port, "anyone@open.test").starts_with("250"), "catch-all");
    assert!(rcpt(gw.port, "anyone@free.test").starts_with("250"), "a domain without verification");
    assert!(rcpt(gw.port, "PostMaster@corp.test").starts_with("250"), "RFC 5321 §4.5.1: always taken");
    // A dictionary attack ends at limits.max_errors.
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@out.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<guess1@corp.test>").starts_with("550"));
    assert!(c.cmd("RCPT TO:<guess2@corp.test>").starts_with("550"));
    assert!(c.cmd("RCPT TO:<guess3@corp.test>").starts_with("550"));
    let last = c.reply();
    assert!(last.starts_with("421 4.7.0"), "{last}");
    // The table is read again on reload.
    std::fs::write(&table, "alice@corp.test\nbob@corp.test\n").unwrap();
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("configuration reloaded", T), "{}", gw.log());
    assert!(rcpt(gw.port, "bob@corp.test").starts_with("250"));
}

/// Callouts to Dovecot over the LMTP route: Dovecot's own 550 for a user it does not have
/// becomes our 550 5.1.1, the answer is cached (a second ask is a cache hit), and the pooled
/// connection the callout used then carries a real delivery.
#[test]
fn callouts_to_dovecot_over_lmtp() {
    let dovecot = Dovecot::start(&["alice"], &[]);
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "[relay]\naccept_domains = [\"corp.test\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[verify.domains]\n\"corp.test\" = {{ callout = true }}\n\n[routes]\n\"corp.test\" = {{ type = \"lmtp\", socket = \"{}\" }}\n",
        dovecot.socket.display()
    ));
    let r = rcpt(gw.port, "nobody@corp.test");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(gw.log().contains("User doesn't exist"), "Dovecot's reply is logged: {}", gw.log());
    assert_eq!(metric(admin, "mailgate_verify_cache_total", "hit"), 0.0);
    assert!(rcpt(gw.port, "nobody@corp.test").starts_with("550 5.1.1"));
    assert_eq!(metric(admin, "mailgate_verify_cache_total", "hit"), 1.0);
    assert_eq!(metric(admin, "mailgate_verify_total", "result=\"unknown\""), 1.0, "asked once");
    // alice exists, and her message is delivered on the connection the callout left pooled.
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@out.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<alice@corp.test>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: verified\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = dovecot.wait_inbox("alice", 1, T);
    assert!(m[0].contains("Subject: verified"));
}

/// Callouts to an SMTP next hop: each answer is asked for once while cached (the sink counts
/// the RCPTs), a negative answer is asked for again once it expires, a backend that answers 4xx
/// or is down gives 451 4.4.3 and never 550, and a cached "exists" still holds while it is down.
#[test]
fn callouts_are_cached_and_a_down_backend_never_refuses() {
    let sink = Sink::start();
    sink.set_rcpt_reply("gone@corp.test", "550 5.1.1 no such user");
    sink.set_rcpt_reply("busy@corp.test", "451 4.3.0 try later");
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "[relay]\naccept_domains = [\"corp.test\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[verify]\nnegative_ttl = \"2s\"\ntimeout = \"5s\"\n\n[verify.domains]\n\"corp.test\" = {{ callout = true }}\n\n[routes]\n\"corp.test\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        sink.port()
    ));
    for _ in 0..3 {
        assert!(rcpt(gw.port, "known@corp.test").starts_with("250"));
        assert!(rcpt(gw.port, "gone@corp.test").starts_with("550 5.1.1"));
    }
    assert_eq!(sink.rcpt_attempts("known@corp.test"), 1, "cached");
    assert_eq!(sink.rcpt_attempts("gone@corp.test"), 1, "cached");
    assert_eq!(metric(admin, "mailgate_verify_cache_total", "hit"), 4.0);
    assert!(sink.received().is_empty(), "a callout sends nothing");
    // The negative answer expires and is asked for again.
    let again = wait_for(T, || {
        assert!(rcpt(gw.port, "gone@corp.test").starts_with("550 5.1.1"));
        (sink.rcpt_attempts("gone@corp.test") == 2).then_some(())
    });
    assert!(again.is_some());
    // A temporary refusal is not an answer: 451, and not cached.
    for n in 1..=2 {
        let r = rcpt(gw.port, "busy@corp.test");
        assert!(r.starts_with("451 4.4.3"), "{r}");
        assert_eq!(sink.rcpt_attempts("busy@corp.test"), n);
    }
    // The backend goes away: new addresses get 451, the cached one is still known.
    drop(sink);
    let r = rcpt(gw.port, "new@corp.test");
    assert!(r.starts_with("451 4.4.3"), "{r}");
    assert!(rcpt(gw.port, "known@corp.test").starts_with("250"));
    assert!(metric(admin, "mailgate_verify_total", "result=\"unavailable\"") >= 3.0);
}
