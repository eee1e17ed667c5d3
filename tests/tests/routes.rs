//! The delivery routes an edge gateway needs in front of a mail store: LMTP (RFC 2033) to
//! Dovecot's real `dovecot-lmtpd`, by unix socket and by TCP, with a reply per recipient after
//! the data; and an authenticated smarthost (SMTP AUTH PLAIN and LOGIN, only over verified TLS)
//! at a sink that requires AUTH.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::dovecot::Dovecot;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::pki::Pki;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(30);

/// MAIL, the RCPTs (each must be accepted here) and the data, on one connection.
fn send(port: u16, from: &str, rcpts: &[&str], subject: &str) {
    Raw::deliver(port, from, rcpts, &format!("From: <{from}>\r\nSubject: {subject}\r\n\r\nhello\r\n"));
}

/// A gateway that accepts `corp.test` and hands it to `route`; everything else (the DSNs) goes
/// to `sink`.
fn gateway(route: &str, sink: &Sink) -> Gateway {
    Gateway::start(&format!(
        "[relay]\naccept_domains = [\"corp.test\"]\n\n[queue]\nretry_schedule = [\"1s\"]\n\n[routes]\n\"corp.test\" = {route}\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        sink.port()
    ))
}

/// Over the unix socket: each recipient gets its own outcome. Two are saved, an unknown one is
/// refused at RCPT (Dovecot's 550 5.1.1, bounced to the sender), and one whose mailbox cannot
/// be written fails after the data with a temporary error: it alone is retried, and the two
/// saved are never delivered twice.
#[test]
fn lmtp_by_unix_socket_gives_each_recipient_its_own_outcome() {
    let dovecot = Dovecot::start(&["alice", "bob"], &["carol"]);
    let sink = Sink::start();
    let gw = gateway(&format!("{{ type = \"lmtp\", socket = \"{}\" }}", dovecot.socket.display()), &sink);
    send(
        gw.port,
        "sender@out.test",
        &["alice@corp.test", "bob@corp.test", "carol@corp.test", "nobody@corp.test"],
        "to lmtp",
    );
    let a = dovecot.wait_inbox("alice", 1, T);
    assert!(a[0].contains("Subject: to lmtp"), "{}", a[0]);
    assert!(a[0].contains("Received: from client.test"), "{}", a[0]);
    dovecot.wait_inbox("bob", 1, T);
    let dsn = sink.wait_for_rcpt("sender@out.test", T);
    let t = dsn.text();
    assert!(t.contains("Final-Recipient: rfc822; nobody@corp.test"), "{t}");
    assert!(t.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{t}");
    assert!(!t.contains("carol@corp.test"), "carol's failure is temporary: {t}");
    // carol is tried again (Dovecot logs each attempt) and alice and bob are not.
    let retried = mailgate_tests::wait_for(T, || {
        (dovecot.log().matches("rcpt carol@corp.test").count() + dovecot.log().matches("lmtp(carol)").count() >= 2)
            .then_some(())
    });
    assert!(retried.is_some(), "carol was not retried; gateway log:\n{}\ndovecot log:\n{}", gw.log(), dovecot.log());
    assert!(gw.log().contains("rcpt=carol@corp.test status=Deferred"), "{}", gw.log());
    assert_eq!(dovecot.inbox("alice").len(), 1, "delivered twice");
    assert_eq!(dovecot.inbox("bob").len(), 1, "delivered twice");
}

/// Over TCP, and a success DSN says `delivered`: the agent put it in the mailbox.
#[test]
fn lmtp_by_tcp_delivers_and_a_success_is_final() {
    let dovecot = Dovecot::start(&["alice"], &[]);
    let sink = Sink::start();
    let gw = gateway(&format!("{{ type = \"lmtp\", host = \"127.0.0.1\", port = {} }}", dovecot.port), &sink);
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@out.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@corp.test> NOTIFY=SUCCESS").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: over tcp\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = dovecot.wait_inbox("alice", 1, T);
    assert!(m[0].contains("Subject: over tcp"));
    let dsn = sink.wait_for_rcpt("sender@out.test", T).text();
    assert!(dsn.contains("Action: delivered"), "{dsn}");
    assert!(dsn.contains("Remote-MTA: dns; 127.0.0.1"), "{dsn}");
}

fn auth_route(port: u16, pki: &Pki, auth: &str) -> String {
    format!(
        "{{ type = \"smarthost\", host = \"127.0.0.1\", port = {port}, tls = \"required\", ca_file = \"{}\", auth = {auth} }}",
        pki.ca_file().display()
    )
}

/// PLAIN (the default when offered) with the password from a file, LOGIN when configured with
/// the password from the environment; both only after STARTTLS with a verified certificate.
#[test]
fn authenticated_smarthost_with_plain_and_login() {
    let pki = Pki::new();
    // Two relays: a connection logged in once is reused for the same account, whatever the
    // mechanism, so each mechanism gets its own server.
    let (relay, relay2) = (Sink::start_tls(pki.server(true)), Sink::start_tls(pki.server(true)));
    relay.require_auth("relay-user", "s3cret pass");
    relay2.require_auth("relay-user", "s3cret pass");
    let dsns = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret pass\n").unwrap();
    let plain = auth_route(
        relay.port(),
        &pki,
        &format!("{{ username = \"relay-user\", password_file = \"{}\" }}", pw.display()),
    );
    let login = auth_route(
        relay2.port(),
        &pki,
        "{ username = \"relay-user\", password_env = \"SMARTHOST_PW_FOR_TEST\", mechanism = \"login\" }",
    );
    // The environment variable reaches the gateway through the test process.
    // SAFETY: set before the gateway process is spawned; no other thread reads it.
    unsafe { std::env::set_var("SMARTHOST_PW_FOR_TEST", "s3cret pass") };
    let gw = Gateway::start(&format!(
        "[relay]\naccept_domains = [\"plain.test\", \"login.test\"]\n\n[routes]\n\"plain.test\" = {plain}\n\"login.test\" = {login}\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        dsns.port()
    ));
    send(gw.port, "a@out.test", &["x@plain.test"], "plain");
    let m = relay.wait_for_rcpt("x@plain.test", T);
    assert!(m.tls);
    send(gw.port, "a@out.test", &["y@login.test"], "login");
    relay2.wait_for_rcpt("y@login.test", T);
    assert_eq!(relay.logins(), [("PLAIN".into(), "relay-user".into(), true)]);
    assert_eq!(relay2.logins(), [("LOGIN".into(), "relay-user".into(), true)]);
    assert_eq!(relay.auth_failures() + relay2.auth_failures(), 0);
    assert!(!gw.log().contains("s3cret"), "the password was logged");
}

/// Wrong credentials defer (the operator fixes the password; the mail waits, it does not
/// bounce), the reply is logged without the password, and nothing is delivered.
#[test]
fn refused_smarthost_credentials_defer_the_mail() {
    let pki = Pki::new();
    let relay = Sink::start_tls(pki.server(true));
    relay.require_auth("relay-user", "right");
    let dsns = Sink::start();
    let route = auth_route(relay.port(), &pki, "{ username = \"relay-user\", password = \"wrong-password\" }");
    let gw = Gateway::start(&format!(
        "[relay]\naccept_domains = [\"plain.test\"]\n\n[queue]\nretry_schedule = [\"1s\"]\n\n[routes]\n\"plain.test\" = {route}\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        dsns.port()
    ));
    send(gw.port, "a@out.test", &["x@plain.test"], "plain");
    assert!(mailgate_tests::wait_for(T, || (relay.auth_failures() >= 2).then_some(())).is_some(), "{}", gw.log());
    assert!(gw.log().contains("refused AUTH PLAIN as relay-user: 535 5.7.8"), "{}", gw.log());
    assert!(gw.log().contains("status=Deferred"), "{}", gw.log());
    assert!(!gw.log().contains("wrong-password"), "the password was logged");
    assert!(relay.received().is_empty());
    assert!(dsns.received().is_empty(), "a credentials problem must not bounce");
}

/// A route that would send credentials without verified TLS is refused by `config check`,
/// and so is an LMTP route without a place to go.
#[test]
fn auth_without_required_tls_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mailgate.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n[routes]\n\"a.test\" = { type = \"smarthost\", host = \"relay.test\", auth = { username = \"u\", password = \"p\" } }\n\"b.test\" = { type = \"lmtp\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(mailgate_tests::gateway::binary())
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("routes.a.test: auth needs tls = \"required\""), "{err}");
    assert!(err.contains("routes.b.test: lmtp needs either host"), "{err}");
    assert!(!err.contains("\"p\""), "{err}");
}

/// REQUIRETLS (RFC 8689) leaves only over verified TLS to a hop that takes it, and is passed
/// on in MAIL FROM; a verified hop without REQUIRETLS fails the recipient at once with 5.7.30
/// and a DSN — itself sent with REQUIRETLS over verified TLS, quoting only the header section
/// even though the sender asked for RET=FULL (RFC 8689 §4.4).
#[test]
fn requiretls_is_passed_on_or_fails_promptly() {
    let pki = Pki::new();
    let (with, without) = (Sink::start_tls(pki.server(true)), Sink::start_tls(pki.server(true)));
    with.set_requiretls(true);
    let dsns = Sink::start_tls(pki.server(true));
    dsns.set_requiretls(true);
    let (cert, key) = pki.server_files();
    let route = |port: u16| {
        format!(
            "{{ type = \"smarthost\", host = \"127.0.0.1\", port = {port}, tls = \"required\", ca_file = \"{}\" }}",
            pki.ca_file().display()
        )
    };
    let gw = Gateway::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[queue]\nretry_schedule = [\"1h\"]\n\n[routes]\n\"with.test\" = {}\n\"without.test\" = {}\n\"out.test\" = {}\n",
        cert.display(),
        key.display(),
        route(with.port()),
        route(without.port()),
        route(dsns.port())
    ));
    let script = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
c = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"])); c.ehlo("py.test"); c.starttls(context=ctx); c.ehlo("py.test")
for rcpt in ["a@with.test", "b@without.test"]:
    c.sendmail("sender@out.test", [rcpt], b"Subject: secret\r\n\r\nhello\r\n", mail_options=["REQUIRETLS", "RET=FULL"])
c.quit(); print("sent")
"#;
    let (ok, out) = mailgate_tests::clients::python(gw.port, script);
    assert!(ok, "{out}");
    let m = with.wait_for_rcpt("a@with.test", T);
    assert!(m.tls);
    assert!(with.mail_args().iter().any(|a| a.contains(" REQUIRETLS")), "{:?}", with.mail_args());
    let report = dsns.wait_for_rcpt("sender@out.test", T);
    let dsn = report.text();
    assert!(dsn.contains("Final-Recipient: rfc822; b@without.test\r\nAction: failed\r\nStatus: 5.7.30"), "{dsn}");
    assert!(
        report.tls && dsns.mail_args().iter().any(|a| a.starts_with("<>") && a.contains(" REQUIRETLS")),
        "{:?}",
        dsns.mail_args()
    );
    assert!(dsn.contains("Content-Type: text/rfc822-headers") && !dsn.contains("hello"), "{dsn}");
    assert!(without.received().is_empty());
}

/// A `[[pool]]` of source addresses on loopback aliases: new connections leave from each in
/// turn with its own EHLO name, and an address that cannot be bound is skipped and logged.
#[test]
fn source_pools_pick_the_address_and_ehlo_name() {
    let sink = Sink::start();
    let gw = Gateway::start(&format!(
        r#"[delivery]
idle_timeout = "0s"

[[pool]]
name = "outbound"
sources = [
  {{ address = "127.0.0.2", helo = "two.pool.test" }},
  {{ address = "192.0.2.55", helo = "not-ours.pool.test" }},
  {{ address = "127.0.0.3", helo = "three.pool.test" }},
]

[routes]
"*" = {{ type = "smarthost", host = "127.0.0.1", port = {}, tls = "none", pool = "outbound" }}
"#,
        sink.port()
    ));
    for i in 0..3 {
        send(gw.port, "a@out.test", &[&format!("r{i}@remote.test")], "pooled");
        sink.wait_for(i + 1, T);
    }
    let peers: Vec<String> = sink.peers().iter().map(|p| p.to_string()).collect();
    assert!(peers.contains(&"127.0.0.2".to_string()) && peers.contains(&"127.0.0.3".to_string()), "{peers:?}");
    assert!(peers.iter().all(|p| p == "127.0.0.2" || p == "127.0.0.3"), "{peers:?}");
    let helos = sink.helos();
    for (p, h) in peers.iter().zip(&helos) {
        let want = if p == "127.0.0.2" { "two.pool.test" } else { "three.pool.test" };
        assert_eq!(h, want, "{peers:?} {helos:?}");
    }
    assert!(gw.log().contains("source address could not be bound, skipped"), "{}", gw.log());
}
