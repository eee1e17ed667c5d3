//! TLS reporting (RFC 8460) against real parts: dnsmasq serves MX, `_mta-sts` and `_smtp._tls`
//! records, Python's HTTPS server the MTA-STS policies and takes HTTPS reports, a TLS sink
//! whose certificate is valid for one MX name only is every MX host, and a maildir route
//! takes the mailed reports.
//!
//! - `enforce`, certificate valid: a successful session in good.test's report.
//! - `testing`, certificate not valid for the MX: delivered, and a `certificate-host-mismatch`
//!   failure in testing.test's report (the check `enforce` would have made, made after the
//!   handshake).
//! - `enforce`, MX not in the policy: a `validation-failure` naming the MX host.
//! - The counts survive a restart; `mailgate tlsrpt show` previews them.
//! - `mailgate tlsrpt send`: good.test's report is POSTed gzip'd to its `https:` rua,
//!   testing.test's is mailed (multipart/report, `application/tlsrpt+gzip`) to its `mailto:`
//!   rua, bad.test (no `_smtp._tls` record) gets nothing and its counts are dropped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailgate_tests::clients::{debian_python, Raw};
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::pki::Pki;
use mailgate_tests::policy_server::PolicyServer;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

fn cli(cfg: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary()).args(args).arg("--config").arg(cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"))
}

fn report<'a>(shown: &'a serde_json::Value, domain: &str) -> &'a serde_json::Value {
    shown["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policies"][0]["policy"]["policy-domain"] == domain)
        .unwrap_or_else(|| panic!("no report for {domain}: {shown}"))
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[test]
fn sessions_under_policies_are_counted_kept_and_reported_by_mail_and_https() {
    let pki = Pki::new();
    let sink = Sink::start_tls(pki.server_named(&["mx.good.test"], true));
    let mut records = vec![];
    for d in ["good.test", "testing.test", "bad.test"] {
        records.push(format!("--mx-host={d},mx.{d},10"));
        records.push(format!("--host-record=mx.{d},127.0.0.1"));
        records.push(format!("--txt-record=_mta-sts.{d},v=STSv1; id=1"));
        records.push(format!("--host-record=mta-sts.{d},127.0.0.5"));
    }
    records.push("--txt-record=_smtp._tls.good.test,v=TLSRPTv1; rua=https://rua.reports.test/tlsrpt".into());
    records.push("--txt-record=_smtp._tls.testing.test,v=TLSRPTv1; rua=mailto:tls@reports.test".into());
    records.push("--host-record=rua.reports.test,127.0.0.5".into());
    let dns = Dns::start(&records.iter().map(String::as_str).collect::<Vec<_>>());
    let (cert, key) =
        pki.files_for_all(&["mta-sts.good.test", "mta-sts.testing.test", "mta-sts.bad.test", "rua.reports.test"]);
    let uploads = tempfile::tempdir().unwrap();
    let (good, testing, bad) =
        (policy("enforce", "mx.good.test"), policy("testing", "mx.testing.test"), policy("enforce", "mx.other.test"));
    let _server = PolicyServer::start_receiving(
        "127.0.0.5",
        &cert,
        &key,
        &[("mta-sts.good.test", &good), ("mta-sts.testing.test", &testing), ("mta-sts.bad.test", &bad)],
        Some(uploads.path()),
    );
    let mailboxes = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mut gw = Gateway::start(&format!(
        "{}\n[delivery]\nmx_port = {}\nca_file = \"{}\"\n\n[tlsrpt]\nenabled = true\norganization = \"Gateway Org\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[queue]\nretry_schedule = [\"1s\"]\n\n\
         [routes]\n\"reports.test\" = {{ type = \"maildir\", path = \"{}\" }}\n\"*\" = {{ type = \"mx\" }}\n",
        dns.config(),
        sink.port(),
        pki.ca_file().display(),
        mailboxes.path().display(),
    ));
    let cfg = gw.path("mailgate.toml");

    Raw::deliver(gw.port, "a@sender.test", &["ann@good.test"], "Subject: enforced\r\n\r\nx\r\n");
    Raw::deliver(gw.port, "a@sender.test", &["tom@testing.test"], "Subject: testing\r\n\r\nx\r\n");
    Raw::deliver(gw.port, "a@sender.test", &["bob@bad.test"], "Subject: no mx\r\n\r\nx\r\n");
    assert!(sink.wait_for_rcpt("ann@good.test", T).tls);
    assert!(sink.wait_for_rcpt("tom@testing.test", T).tls, "testing mode still uses TLS");
    assert!(gw.wait_log("MTA-STS: no MX host of bad.test matches its policy", T), "{}", gw.log());

    let shown = cli(&cfg, &["tlsrpt", "show"]);
    let r = report(&shown, "good.test");
    assert_eq!(r["organization-name"], "Gateway Org");
    assert_eq!(r["policies"][0]["policy"]["policy-type"], "sts");
    assert_eq!(r["policies"][0]["policy"]["mx-host"][0], "mx.good.test");
    assert_eq!(r["policies"][0]["summary"]["total-successful-session-count"], 1);
    assert_eq!(r["policies"][0]["summary"]["total-failure-session-count"], 0);
    let r = report(&shown, "testing.test");
    let f = &r["policies"][0]["failure-details"][0];
    assert_eq!(f["result-type"], "certificate-host-mismatch", "{r}");
    assert_eq!(f["receiving-mx-hostname"], "mx.testing.test");
    assert_eq!(f["receiving-ip"], "127.0.0.1");
    assert_eq!(f["sending-mta-ip"], "127.0.0.1");
    let r = report(&shown, "bad.test");
    let f = &r["policies"][0]["failure-details"][0];
    assert_eq!(f["result-type"], "validation-failure", "{r}");
    assert_eq!(f["receiving-mx-hostname"], "mx.bad.test");
    let one = cli(&cfg, &["tlsrpt", "show", "--domain", "good.test"]);
    assert_eq!(one["reports"].as_array().unwrap().len(), 1, "{one}");

    // Kept across a restart.
    gw.restart();
    let shown = cli(&cfg, &["tlsrpt", "show"]);
    assert_eq!(report(&shown, "good.test")["policies"][0]["summary"]["total-successful-session-count"], 1);
    assert_eq!(report(&shown, "testing.test")["policies"][0]["summary"]["total-failure-session-count"], 1);

    let sent = cli(&cfg, &["tlsrpt", "send"]);
    let by_domain = |d: &str| {
        sent["sent"].as_array().unwrap().iter().find(|s| s["domain"] == d).cloned().unwrap_or_else(|| panic!("{sent}"))
    };
    assert_eq!(by_domain("good.test")["rua"][0][1], "posted", "{sent}");
    assert!(by_domain("testing.test")["rua"][0][1].as_str().unwrap().starts_with("queued "), "{sent}");
    assert!(by_domain("bad.test")["rua"].as_array().unwrap().is_empty() && by_domain("bad.test")["done"] == true);

    // The HTTPS report: gzip'd RFC 8460 JSON.
    let kind = std::fs::read_to_string(uploads.path().join("0.type")).unwrap();
    assert_eq!(kind, "application/tlsrpt+gzip");
    let json = debian_python(
        "import sys, gzip; sys.stdout.write(gzip.decompress(sys.stdin.buffer.read()).decode())",
        &[],
        &std::fs::read(uploads.path().join("0.body")).unwrap(),
    );
    let posted: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(posted["policies"][0]["policy"]["policy-domain"], "good.test");
    assert_eq!(posted["policies"][0]["summary"]["total-successful-session-count"], 1);

    // The mailed report: through the queue into the maildir, read with Python's email package.
    let file = wait_for(T, || Gateway::maildir_files(mailboxes.path(), "tls").into_iter().next())
        .expect("the mailed report arrives");
    let out = debian_python(
        r#"
import sys, email, gzip, json
m = email.message_from_binary_file(sys.stdin.buffer)
assert m.get_content_type() == "multipart/report", m.get_content_type()
assert m.get_param("report-type") == "tlsrpt"
assert m["TLS-Report-Domain"] == "testing.test", m["TLS-Report-Domain"]
parts = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
assert len(parts) == 1
r = json.loads(gzip.decompress(parts[0].get_payload(decode=True)))
print(r["policies"][0]["failure-details"][0]["result-type"])
"#,
        &[],
        &std::fs::read(&file).unwrap(),
    );
    assert_eq!(String::from_utf8_lossy(&out).trim(), "certificate-host-mismatch");

    // Sent reports are gone from the counts.
    let shown = cli(&cfg, &["tlsrpt", "show"]);
    let domains: Vec<&str> = shown["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["policies"][0]["policy"]["policy-domain"].as_str())
        .collect();
    assert!(!domains.contains(&"good.test") && !domains.contains(&"testing.test"), "{shown}");
}
