//! MTA-STS (RFC 8461) on the way out, against real parts: dnsmasq serves the MX and
//! `_mta-sts` records, Python's HTTPS server the policies (port 443, a certificate from the
//! test CA, which `delivery.ca_file` adds to the public roots), and a TLS sink with a
//! certificate for some MX names is the next hop.
//!
//! - `enforce`, the MX in the policy and its certificate valid: delivered over verified TLS;
//!   the policy is kept under the spool directory.
//! - `enforce`, the MX not in the policy: deferred (4.7.5), nothing sent anywhere.
//! - `enforce`, the MX's certificate not valid for its name: deferred, never sent in plaintext.
//! - `testing`, the MX not in the policy: delivered anyway.
//! - `TLS-Required: No` in the message (RFC 8689 §5): delivered where `enforce` would stop it.
//! - After a restart with the policy host gone, the policies kept on disk still apply.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::pki::Pki;
use mailgate_tests::policy_server::PolicyServer;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(30);

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn count(gw: &Gateway, needle: &str) -> usize {
    gw.log().matches(needle).count()
}

#[test]
fn policies_are_fetched_enforced_and_kept_across_restarts() {
    let pki = Pki::new();
    // The next hop for every MX: valid for the MX names of good.test and testing.test only.
    let sink = Sink::start_tls(pki.server_named(&["mx.good.test", "mx.testing.test"], true));
    let mut records = vec![];
    for d in ["good.test", "bad.test", "wrongcert.test", "testing.test"] {
        records.push(format!("--mx-host={d},mx.{d},10"));
        records.push(format!("--host-record=mx.{d},127.0.0.1"));
        records.push(format!("--txt-record=_mta-sts.{d},v=STSv1; id=2026112901"));
        records.push(format!("--host-record=mta-sts.{d},127.0.0.5"));
    }
    let dns = Dns::start(&records.iter().map(String::as_str).collect::<Vec<_>>());
    let (cert, key) =
        pki.files_for_all(&["mta-sts.good.test", "mta-sts.bad.test", "mta-sts.wrongcert.test", "mta-sts.testing.test"]);
    let good = policy("enforce", "mx.good.test");
    let bad = policy("enforce", "mx.elsewhere.test");
    let wrongcert = policy("enforce", "mx.wrongcert.test");
    let testing = policy("testing", "mx.elsewhere.test");
    let server = PolicyServer::start(
        "127.0.0.5",
        &cert,
        &key,
        &[
            ("mta-sts.good.test", &good),
            ("mta-sts.bad.test", &bad),
            ("mta-sts.wrongcert.test", &wrongcert),
            ("mta-sts.testing.test", &testing),
        ],
    );
    let mut gw = Gateway::start(&format!(
        "{}\n[delivery]\nmx_port = {}\nca_file = \"{}\"\n\n[queue]\nretry_schedule = [\"1s\"]\n\n[routes]\n\"*\" = {{ type = \"mx\" }}\n",
        dns.config(),
        sink.port(),
        pki.ca_file().display()
    ));

    Raw::deliver(gw.port, "a@sender.test", &["ann@good.test"], "Subject: enforced\r\n\r\nover verified TLS\r\n");
    let m = sink.wait_for_rcpt("ann@good.test", T);
    assert!(m.tls, "delivered without TLS");
    assert!(gw.wait_log("MTA-STS policy fetched domain=good.test", T), "{}", gw.log());
    let kept = std::fs::read_to_string(gw.path("spool/mta-sts/good.test")).unwrap();
    assert!(kept.contains("x-mailgate-id: 2026112901") && kept.contains("mx: mx.good.test"), "{kept}");

    Raw::deliver(gw.port, "a@sender.test", &["bob@bad.test"], "Subject: no matching mx\r\n\r\nx\r\n");
    assert!(
        gw.wait_log("MTA-STS: no MX host of bad.test matches its policy (mx: mx.elsewhere.test)", T),
        "{}",
        gw.log()
    );

    Raw::deliver(gw.port, "a@sender.test", &["cy@wrongcert.test"], "Subject: wrong cert\r\n\r\nx\r\n");
    assert!(gw.wait_log("TLS required but handshake failed", T), "{}", gw.log());

    Raw::deliver(gw.port, "a@sender.test", &["dee@testing.test"], "Subject: testing\r\n\r\nx\r\n");
    sink.wait_for_rcpt("dee@testing.test", T);
    assert!(gw.log().contains("MTA-STS testing: the MX host is not in the policy"), "{}", gw.log());

    // The sender waives the policy (RFC 8689 §5): delivered where the policy would stop it.
    Raw::deliver(gw.port, "a@sender.test", &["waiver@bad.test"], "TLS-Required: No\r\nSubject: waived\r\n\r\nx\r\n");
    sink.wait_for_rcpt("waiver@bad.test", T);
    assert!(gw.log().contains("MTA-STS not applied: the message says TLS-Required: No"), "{}", gw.log());

    // Retried (every second) and still refused: nothing for bad.test or wrongcert.test ever
    // reached the sink, in plaintext or otherwise.
    assert!(mailgate_tests::wait_for(T, || (count(&gw, "no MX host of bad.test") >= 2).then_some(())).is_some());
    let rcpts: Vec<String> = sink.received().iter().flat_map(|m| m.rcpts.clone()).collect();
    assert!(!rcpts.iter().any(|r| r == "bob@bad.test"), "{rcpts:?}");

    // Restart without the policy host: the kept policies still hold (no fetch is needed while
    // the record's id is unchanged).
    drop(server);
    gw.restart();
    let before = count(&gw, "no MX host of bad.test");
    Raw::deliver(gw.port, "a@sender.test", &["eve@bad.test"], "Subject: after restart\r\n\r\nx\r\n");
    Raw::deliver(gw.port, "a@sender.test", &["fay@good.test"], "Subject: after restart\r\n\r\nx\r\n");
    let m = sink.wait_for_rcpt("fay@good.test", T);
    assert!(m.tls);
    // Attempts after the restart (the new message and the queued one) are refused by the
    // policy from disk; without it they would have gone to the sink by opportunistic TLS.
    let refused_again =
        mailgate_tests::wait_for(T, || (count(&gw, "no MX host of bad.test") >= before + 2).then_some(()));
    assert!(refused_again.is_some(), "{}", gw.log());
    assert!(!gw.log().contains("MTA-STS policy fetch failed"), "{}", gw.log());
    let rcpts: Vec<String> = sink.received().iter().flat_map(|m| m.rcpts.clone()).collect();
    assert!(
        !rcpts.iter().any(|r| ["bob@bad.test", "eve@bad.test", "cy@wrongcert.test"].contains(&r.as_str())),
        "{rcpts:?}"
    );
}
