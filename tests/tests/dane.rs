//! DANE for SMTP (RFC 7672) on the way out, against real parts: Knot DNS serves a zone it
//! signed itself (one TLSA record altered after signing: a bogus signature), the gateway's
//! resolver validates it from the zone's key (`dns.trust_anchor`), and TLS sinks on loopback
//! addresses are the MX hosts, all on the gateway's `mx_port`.
//!
//! - DANE-EE `3 1 1` matching a self-signed certificate's key: delivered over TLS (no CA
//!   would have vouched for it).
//! - DANE-TA `2 0 1` naming the CA the server sends in its chain: delivered; the same chain
//!   under an MX name the certificate does not carry: deferred.
//! - A `3 1 1` that matches nothing: deferred, never sent in plaintext.
//! - A TLSA record whose signature does not verify: deferred, the host not even connected to.
//! - Only unusable records (PKIX-EE `1 1 1`): TLS required; a host without STARTTLS: deferred.
//! - A secure MX host without TLSA records: delivered as before (plaintext where no TLS).

use std::net::IpAddr;
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::binary;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::pki::Pki;
use mailgate_tests::signed_zone::SignedZone;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};
use std::process::Command;

const T: Duration = Duration::from_secs(30);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn tlsa_records_decide_how_mail_leaves() {
    let pki = Pki::new();
    let ee = pki.dane_server(&["mx-ee.dane.test"], false);
    let ta = pki.dane_server(&["mx-ta.dane.test"], true);
    let wrong = pki.dane_server(&["mx-wrong.dane.test"], false);
    let bogus = pki.dane_server(&["mx-bogus.dane.test"], false);
    let (ee_spki, bogus_spki) = (sha256(&ee.spki), sha256(&bogus.spki));
    let sink_ee = Sink::start_at(ip("127.0.0.1"), 0, Some(ee.config));
    let port = sink_ee.port();
    let sink_ta = Sink::start_at(ip("127.0.0.2"), port, Some(ta.config));
    let sink_wrong = Sink::start_at(ip("127.0.0.3"), port, Some(wrong.config));
    let sink_bogus = Sink::start_at(ip("127.0.0.4"), port, Some(bogus.config));
    let sink_plain = Sink::start_at(ip("127.0.0.5"), port, None);

    let tlsa = |host: &str, rdata: String| format!("_{port}._tcp.{host} TLSA {rdata}");
    let mut records = vec![];
    for (domain, host, addr) in [
        ("ee", "mx-ee", "127.0.0.1"),
        ("ta", "mx-ta", "127.0.0.2"),
        ("tawrong", "mx-tawrong", "127.0.0.2"),
        ("wrong", "mx-wrong", "127.0.0.3"),
        ("bogus", "mx-bogus", "127.0.0.4"),
        ("plain", "mx-plain", "127.0.0.5"),
        ("unusable", "mx-unusable", "127.0.0.5"),
    ] {
        records.push(format!("{domain} MX 10 {host}"));
        records.push(format!("{host} A {addr}"));
    }
    records.push(tlsa("mx-ee", format!("3 1 1 {ee_spki}")));
    records.push(tlsa("mx-ta", format!("2 0 1 {}", sha256(&pki.ca_der()))));
    records.push(tlsa("mx-tawrong", format!("2 0 1 {}", sha256(&pki.ca_der()))));
    records.push(tlsa("mx-wrong", format!("3 1 1 {}", "00".repeat(32))));
    records.push(tlsa("mx-wrong", format!("3 0 1 {}", sha256(&ee.cert))));
    records.push(tlsa("mx-bogus", format!("3 1 1 {bogus_spki}")));
    records.push(tlsa("mx-unusable", format!("1 1 1 {ee_spki}")));
    let zone = SignedZone::start("dane.test", &records, &["mx-bogus"]);

    let admin = free_port();
    let mut gw = Gateway::start(&format!(
        "{}\n[delivery]\nmx_port = {port}\ndane = true\n\n[tlsrpt]\nenabled = true\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [queue]\nretry_schedule = [\"1s\"]\n\n[routes]\n\"*\" = {{ type = \"mx\" }}\n",
        zone.config(),
    ));
    for (rcpt, subject) in [
        ("ann@ee.dane.test", "dane-ee"),
        ("carl@ta.dane.test", "dane-ta"),
        ("gus@tawrong.dane.test", "dane-ta, wrong name"),
        ("bob@wrong.dane.test", "no match"),
        ("dan@bogus.dane.test", "bogus"),
        ("eve@plain.dane.test", "no tlsa"),
        ("fay@unusable.dane.test", "unusable"),
    ] {
        Raw::deliver(gw.port, "a@sender.test", &[rcpt], &format!("Subject: {subject}\r\n\r\nx\r\n"));
    }

    let m = sink_ee.wait_for_rcpt("ann@ee.dane.test", T);
    assert!(m.tls, "DANE-EE delivered without TLS");
    assert!(gw.wait_log("DANE: usable TLSA records; TLS must match them domain=ee.dane.test", T), "{}", gw.log());
    let m = sink_ta.wait_for_rcpt("carl@ta.dane.test", T);
    assert!(m.tls, "DANE-TA delivered without TLS");
    let m = sink_plain.wait_for_rcpt("eve@plain.dane.test", T);
    assert!(!m.tls, "the plain sink has no TLS");

    assert!(gw.wait_log("DANE-TA: the chain from the TLSA trust anchor is not valid for this name", T), "{}", gw.log());
    assert!(gw.wait_log("DANE: no TLSA record matches the server's certificate", T), "{}", gw.log());
    assert!(gw.wait_log(&format!("DANE: TLSA lookup for _{port}._tcp.mx-bogus.dane.test. failed"), T), "{}", gw.log());
    assert!(gw.wait_log("TLS required but the server does not offer STARTTLS", T), "{}", gw.log());

    // Let the retries come round once more: still nothing where DANE said no.
    let retries = gw.log().matches("DANE: no TLSA record matches").count();
    let again = wait_for(T, || (gw.log().matches("DANE: no TLSA record matches").count() > retries).then_some(()));
    assert!(again.is_some(), "{}", gw.log());
    assert!(sink_wrong.connections() >= 1, "the host with the wrong record was never tried");
    assert!(sink_wrong.received().is_empty(), "sent despite a TLSA mismatch: {:?}", sink_wrong.received());
    assert_eq!(sink_bogus.connections(), 0, "a host with a bogus TLSA answer was connected to");
    assert!(
        sink_plain.received().iter().all(|m| !m.rcpts.iter().any(|r| r.contains("unusable"))),
        "sent in plaintext although the host publishes TLSA records"
    );
    assert!(sink_ta.received().iter().all(|m| !m.rcpts.iter().any(|r| r.contains("tawrong"))));

    // What the TLS reports (RFC 8460) will say, per host: the TLSA policy and each session.
    let shown = |domain: &str| {
        let out = Command::new(binary())
            .args(["tlsrpt", "show", "--domain", domain, "--config"])
            .arg(gw.path("mailgate.toml"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
        v["reports"][0]["policies"][0].clone()
    };
    let ee_report = shown("ee.dane.test");
    assert_eq!(ee_report["policy"]["policy-type"], "tlsa", "{ee_report}");
    assert_eq!(ee_report["policy"]["policy-string"][0], format!("3 1 1 {ee_spki}"));
    assert_eq!(ee_report["policy"]["mx-host"][0], "mx-ee.dane.test");
    assert_eq!(ee_report["summary"]["total-successful-session-count"], 1);
    for (domain, result) in [
        ("wrong.dane.test", "validation-failure"),
        ("bogus.dane.test", "dnssec-invalid"),
        ("unusable.dane.test", "starttls-not-supported"),
        ("tawrong.dane.test", "certificate-host-mismatch"),
    ] {
        let p = shown(domain);
        assert_eq!(p["failure-details"][0]["result-type"], result, "{domain}: {p}");
        assert_eq!(p["summary"]["total-successful-session-count"], 0, "{domain}: {p}");
    }
    gw.stop();
}

/// A trust anchor file that holds no DNSKEY record, or a broken one, fails `config check`
/// (it would otherwise fail only the start, or trust nothing).
#[test]
fn config_check_reads_the_trust_anchor() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in
        [("empty.keys", "; nothing here\n"), ("broken.keys", "dane.test. 300 IN DNSKEY 257 3 13 !!!notbase64\n")]
    {
        let anchor = dir.path().join(name);
        std::fs::write(&anchor, text).unwrap();
        let cfg = dir.path().join("mailgate.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nhostname = \"mx.gateway.test\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n\
                 [spool]\npath = \"{}\"\n\n[dns]\ntrust_anchor = \"{}\"\n\n[delivery]\ndane = true\n",
                dir.path().join("spool").display(),
                anchor.display()
            ),
        )
        .unwrap();
        let out = Command::new(binary()).args(["config", "check", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("dns.trust_anchor"), "{name}: {err}");
    }
}
