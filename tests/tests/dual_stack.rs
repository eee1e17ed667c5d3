//! IPv4 clients on a dual-stack `[::]` listener. The kernel hands them over as IPv4-mapped IPv6
//! addresses (`::ffff:127.0.0.1`); the gateway must treat them as the IPv4 clients they are in
//! every place the client address matters: SPF (`ip4`, `a`, `mx`, `ptr`, `%{i}`), iprev, DNSBL
//! look-ups, greylist and rate-limit keys, per-IP session limits, trusted networks,
//! `Received:`, the plugins' connection info and the logs. Each check here fails when the
//! mapped form leaks through: the limits and kv keys are compared across an IPv4 listener and
//! a dual-stack one of the same gateway, so the two forms would count separately.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(15);

/// Waits until the dual-stack listener accepts: the harness waits for the first listener
/// only, and the second is bound a moment later.
fn ready(port: u16) {
    let up = wait_for(T, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "nothing listens on {port}");
}

/// A second listener on `[::]` (all addresses, both families) at a fresh port.
fn dual_stack_listener() -> (String, u16) {
    let port = free_port();
    (format!("\n[[listener]]\nname = \"dual\"\naddress = \"[::]:{port}\"\n"), port)
}

/// Sends one message over a raw connection; returns the reply to the end of data.
fn send(port: u16, from: &str, to: &str, subject: &str) -> String {
    Raw::transaction(port, from, to, format!("From: <{from}>\r\nSubject: {subject}\r\n\r\nhello\r\n").as_bytes())
}

/// Sends one message with Python's smtplib from the client address `source` (a loopback
/// address other than 127.0.0.1, whose PTR the resolver may take from /etc/hosts).
fn send_from(source: &str, port: u16, from: &str, to: &str, subject: &str) -> String {
    let script = format!(
        "import os, smtplib\ns = smtplib.SMTP('127.0.0.1', int(os.environ['PORT']), timeout=20, source_address=({source:?}, 0))\n\
         try:\n    s.sendmail({from:?}, [{to:?}], 'From: <{from}>\\r\\nSubject: {subject}\\r\\n\\r\\nhello\\r\\n')\n    print('OK')\n\
         except smtplib.SMTPRecipientsRefused as e:\n    c, t = list(e.recipients.values())[0]; print(c, t.decode())\n\
         except smtplib.SMTPResponseException as e:\n    print(e.smtp_code, e.smtp_error.decode())\n"
    );
    let (ok, out) = mailgate_tests::clients::python(port, &script);
    assert!(ok, "{out}");
    out.trim().to_string()
}

#[test]
fn spf_iprev_received_and_logs_see_the_ipv4_address() {
    let dns = Dns::start(&[
        "--txt-record=ip4.test,v=spf1 ip4:127.0.0.2 -all",
        "--txt-record=one.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=a.test,v=spf1 a -all",
        "--host-record=a.test,127.0.0.2",
        "--txt-record=mx.test,v=spf1 mx -all",
        "--mx-host=mx.test,mail.mx.test,10",
        "--host-record=mail.mx.test,127.0.0.2",
        "--txt-record=macro.test,v=spf1 exists:%{i}.ok.macro.test -all",
        "--host-record=127.0.0.2.ok.macro.test,127.0.0.3",
        // No `ptr` record: the resolver answers loopback PTRs itself ("localhost", RFC 6761),
        // so no DNS server here can give a loopback client a name. `ptr` and iprev take the
        // same address as `ip4`, `a` and `%{i}` below; iprev's `policy.iprev` shows which.
    ]);
    let spf = Gateway::plugin(
        "spf",
        "spf",
        "stages = [\"mail_from\"]",
        "stage = \"mail_from\"\nfail = \"reject\"\nsoftfail = \"reject\"\nneutral = \"reject\"\npermerror = \"reject\"",
    );
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(
        1,
        &format!(
            "{listener}\n[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n{}\n\
             [auth]\nalways = [\"spf\", \"iprev\"]\ntimeout = \"3s\"\n[log]\nformat = \"json\"\n{spf}",
            dns.config()
        ),
    );
    ready(dual);
    for (domain, ip) in [
        ("ip4.test", "127.0.0.2"),
        ("a.test", "127.0.0.2"),
        ("mx.test", "127.0.0.2"),
        ("macro.test", "127.0.0.2"),
        ("one.test", "127.0.0.1"),
    ] {
        let got = send_from(ip, dual, &format!("s@{domain}"), "u@example.test", domain);
        assert_eq!(got, "OK", "{domain}\n{}", gw.log());
        let text = wait_for(T, || {
            Gateway::maildir_files(&gw.path("mail"), "u")
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                .find(|t| t.contains(&format!("Subject: {domain}\n")))
        })
        .unwrap_or_else(|| panic!("{domain} was not delivered; log:\n{}", gw.log()));
        assert!(text.contains(&format!("spf=pass smtp.mailfrom={domain}")), "{domain}: {text}");
        // iprev looks up the IPv4 address (a mapped one would be looked up in ip6.arpa).
        assert!(text.contains(&format!("policy.iprev={ip}")), "{text}");
        assert!(text.contains(&format!("[{ip}])")), "Received: names the IPv4 client: {text}");
        assert!(!text.contains("ffff"), "a mapped address in the message: {text}");
    }
    let log = gw.log();
    assert!(log.contains("\"client\":\"127.0.0.2:"), "the session span names the IPv4 client: {log}");
    assert!(!log.contains("ffff"), "a mapped address in the log: {log}");
}

#[test]
fn limits_and_plugin_keys_count_one_client_once_across_both_listeners() {
    let sink = Sink::start();
    let untrusted = "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n";
    let ratelimit = Gateway::plugin(
        "ratelimit",
        "ratelimit",
        "stages = [\"mail_from\"]\ngrants = [\"kv\"]",
        "by = \"ip\"\nlimit = 2\nwindow = 60",
    );
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(sink.port(), &format!("{listener}\n{untrusted}\n{ratelimit}"));
    ready(dual);
    // The rate limit: one MAIL on each listener, then the third is over the limit of two.
    for port in [gw.port, dual] {
        let mut c = Raw::connect(port);
        c.cmd("EHLO client.test");
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    }
    let mut c = Raw::connect(dual);
    c.cmd("EHLO client.test");
    let r = c.cmd("MAIL FROM:<a@sender.test>");
    assert!(r.starts_with("450 4.7.1 Rate limit exceeded"), "{r}");

    // Greylisting: the triplet first seen on the dual-stack listener is known on the IPv4 one.
    let grey = Gateway::plugin("greylist", "greylist", "stages = [\"rcpt\"]\ngrants = [\"kv\"]", "delay = 1");
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(sink.port(), &format!("{listener}\n{untrusted}\n{grey}"));
    ready(dual);
    let rcpt = |port: u16| {
        let mut c = Raw::connect(port);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<a@sender.test>");
        c.cmd("RCPT TO:<u@example.test>")
    };
    assert!(rcpt(dual).starts_with("451 4.7.1 Greylisted"));
    // The delay is the plugin's own (one second): waiting it out is the behaviour under test.
    std::thread::sleep(Duration::from_millis(2200));
    let r = rcpt(gw.port);
    assert!(r.starts_with("250"), "the IPv4 listener saw another client: {r}");

    // The per-IP session limit: one session on the IPv4 listener fills this client's quota.
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(sink.port(), &format!("{listener}\n[limits]\nmax_sessions_per_ip = 1\n"));
    ready(dual);
    // The readiness probe's session may still hold the slot for a moment: wait for a 220.
    let held = wait_for(T, || {
        let (c, greeting) = Raw::connect_any(gw.port);
        greeting.starts_with("220").then_some(c)
    })
    .expect("a session on the IPv4 listener");
    let (_c, greeting) = Raw::connect_any(dual);
    assert!(greeting.starts_with("421 4.7.0 Too many connections from your address"), "{greeting}");
    drop(held);

    // Trusted networks (loopback by default): the IPv4 client may relay on the dual listener.
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(sink.port(), &listener);
    ready(dual);
    let got = send(dual, "a@sender.test", "u@remote.test", "relayed");
    assert!(got.starts_with("250"), "{got}\n{}", gw.log());
    let text = sink.wait_for_rcpt("u@remote.test", T).text();
    assert!(text.contains("[127.0.0.1]") && !text.contains("ffff"), "{text}");
}

#[test]
fn dnsbl_looks_up_the_ipv4_address_and_plugins_see_it() {
    // 127.0.0.1 reversed in the listing zone: found only when the look-up uses the IPv4 form.
    let dns = Dns::start(&["--host-record=1.0.0.127.bl.test,127.0.0.2"]);
    let dnsbl = Gateway::plugin(
        "dnsbl",
        "dnsbl",
        "stages = [\"connect\"]\ngrants = [\"dns\"]",
        "zones = [\"bl.test=1.0\"]\nstage = \"connect\"",
    );
    let (listener, dual) = dual_stack_listener();
    let gw = Gateway::with_sink(
        1,
        &format!(
            "{listener}\n[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n{}\n{dnsbl}",
            dns.config()
        ),
    );
    ready(dual);
    let (_c, greeting) = Raw::connect_any(dual);
    // The reply text carries the plugin's `connection-info.client-ip` as it received it.
    assert!(greeting.starts_with("554 5.7.1 127.0.0.1 is listed (bl.test=1)"), "{greeting}\n{}", gw.log());
}
