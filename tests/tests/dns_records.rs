//! `mailgate dns records` and `mailgate dns check` against zones served on loopback: the
//! records the command prints for a configuration (a certificate, two DKIM keys, a pool of two
//! sending addresses) are served by dnsmasq as printed, the MTA-STS policy it prints by
//! Python's HTTPS server on port 443 of the policy host with a CA-signed certificate — and the
//! check finds everything right. Then a zone with one thing wrong of every kind: the MX
//! elsewhere, SPF not covering a pool address, another DKIM key, no DMARC, a PTR that is not
//! forward-confirmed, an MTA-STS policy naming neither the MX nor the gateway, a TLSA of
//! another key — and the check
//! names each, with exit status 1.
//!
//! The sending addresses are documentation ones (192.0.2.0/24): nothing is sent from them, and
//! the resolver answers every reverse query under 127.in-addr.arpa with `localhost` itself
//! (RFC 6761), so loopback ones could not be checked. Only DNS and the policy fetch run, on
//! loopback.

use std::path::Path;
use std::process::Command;

use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::binary;
use mailgate_tests::pki::Pki;
use mailgate_tests::policy_server::PolicyServer;

fn mailgate(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary()).args(args).env_remove("MAILGATE_BIN").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// The printed zone as dnsmasq options (and the policy file from its comment lines).
fn serve_as_printed(printed: &str) -> (Vec<String>, String) {
    let mut opts = vec![];
    let mut policy = String::new();
    for l in printed.lines() {
        if let Some(p) = l.strip_prefix(";   ") {
            policy.push_str(p);
            policy.push_str("\r\n");
            continue;
        }
        if l.starts_with(';') || l.trim().is_empty() {
            continue;
        }
        let mut f = l.split_whitespace();
        let name = f.next().unwrap().trim_end_matches('.');
        assert_eq!(f.next(), Some("IN"), "{l}");
        let kind = f.next().unwrap();
        let rest: Vec<&str> = f.collect();
        match kind {
            "MX" => opts.push(format!("--mx-host={name},{},{}", rest[1].trim_end_matches('.'), rest[0])),
            "A" => opts.push(format!("--host-record={name},{}", rest[0])),
            "PTR" => opts.push(format!("--ptr-record={name},{}", rest[0].trim_end_matches('.'))),
            "TXT" => {
                // The character-strings of the value, without quotes and parentheses, commas
                // between them (dnsmasq's separator).
                let strings: Vec<&str> = l.split('"').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, s)| s).collect();
                opts.push(format!("--txt-record={name},{}", strings.join(",")));
            }
            "TLSA" => opts.push(format!(
                "--dns-rr={name},52,{:02x}{:02x}{:02x}{}",
                rest[0].parse::<u8>().unwrap(),
                rest[1].parse::<u8>().unwrap(),
                rest[2].parse::<u8>().unwrap(),
                rest[3]
            )),
            other => panic!("unexpected record type {other}: {l}"),
        }
    }
    (opts, policy)
}

fn config(dir: &Path, dns: &Dns, cert: &Path, key: &Path) -> String {
    let cfg = dir.join("mailgate.toml");
    let keys = [("s1", "ed25519"), ("s2", "rsa")].map(|(sel, alg)| {
        let path = dir.join(format!("{sel}.pem"));
        if !path.exists() {
            let p = path.display().to_string();
            let (ok, said) =
                mailgate(&["dkim", "keygen", "--domain", "d.test", "--selector", sel, "--algorithm", alg, "--out", &p]);
            assert!(ok, "{said}");
        }
        path.display().to_string()
    });
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.d.test\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[pool]]\nname = \"out\"\nsources = [{{ address = \"192.0.2.10\", helo = \"out1.d.test\" }}, {{ address = \"192.0.2.11\", helo = \"out2.d.test\" }}]\n\n\
             [[dkim_sign]]\ndomain = \"d.test\"\nselector = \"s1\"\nkey = \"{}\"\n\n\
             [[dkim_sign]]\ndomain = \"d.test\"\nselector = \"s2\"\nkey = \"{}\"\n\n{}",
            cert.display(),
            key.display(),
            keys[0],
            keys[1],
            dns.config()
        ),
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn the_printed_records_pass_the_check_and_each_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.files_for("mx.d.test");
    let (sts_cert, sts_key) = pki.files_for("mta-sts.d.test");
    let ca = pki.ca_file().display().to_string();

    // What to publish, derived from the configuration (any resolver will do for this).
    let placeholder = Dns::start(&[]);
    let cfg = config(dir.path(), &placeholder, &cert, &key);
    let (ok, printed) = mailgate(&["dns", "records", "--domain", "d.test", "--ip", "192.0.2.4", "--config", &cfg]);
    assert!(ok, "{printed}");
    for needle in [
        "d.test.                                  IN MX    10 mx.d.test.",
        "\"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 ip4:192.0.2.4 -all\"",
        "s1._domainkey.d.test.",
        "\"v=DKIM1; k=ed25519; p=",
        "\"v=DKIM1; k=rsa; p=",
        "_dmarc.d.test.",
        ";   mx: mx.d.test",
        "_mta-sts.d.test.",
        "_smtp._tls.d.test.",
        "11.2.0.192.in-addr.arpa.                 IN PTR   out2.d.test.",
        "_25._tcp.mx.d.test.                      IN TLSA  3 1 1 ",
    ] {
        assert!(printed.contains(needle), "{needle} missing:\n{printed}");
    }
    drop(placeholder);

    // Served exactly as printed: every check passes.
    let (mut opts, policy) = serve_as_printed(&printed);
    opts.push("--host-record=mta-sts.d.test,127.0.0.5".into());
    let dns = Dns::start(&opts.iter().map(String::as_str).collect::<Vec<_>>());
    let cfg = config(dir.path(), &dns, &cert, &key);
    let _sts = PolicyServer::start("127.0.0.5", &sts_cert, &sts_key, &[("mta-sts.d.test", &policy)]);
    let (ok, said) =
        mailgate(&["dns", "check", "--domain", "d.test", "--ip", "192.0.2.4", "--config", &cfg, "--ca-file", &ca]);
    assert!(ok, "{said}");
    assert!(!said.contains("FAIL") && !said.contains("WARN"), "{said}");
    assert!(said.contains("d.test: 0 problem(s), 0 warning(s)"), "{said}");
    for what in ["MX", "A/AAAA", "SPF", "DKIM", "DMARC", "PTR", "MTA-STS", "TLS-RPT", "TLSA"] {
        assert!(said.lines().any(|l| l.starts_with(&format!("ok   {what} "))), "{what}:\n{said}");
    }
    assert_eq!(said.lines().filter(|l| l.starts_with("ok   SPF")).count(), 3, "{said}");
    assert_eq!(said.lines().filter(|l| l.starts_with("ok   PTR")).count(), 3, "{said}");
    drop(dns);

    // One wrong thing of each kind.
    let other = dir.path().join("other.pem");
    let (ok, said) = mailgate(&[
        "dkim",
        "keygen",
        "--domain",
        "d.test",
        "--selector",
        "s1",
        "--algorithm",
        "ed25519",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let other_txt: String = said.split('"').nth(1).unwrap().to_string();
    let wrong: Vec<String> = opts
        .iter()
        .filter_map(|o| {
            if o.starts_with("--mx-host=") {
                Some("--mx-host=d.test,other.d.test,10".to_string())
            } else if o.starts_with("--txt-record=d.test,v=spf1") {
                Some("--txt-record=d.test,v=spf1 ip4:192.0.2.10 ip4:192.0.2.4 -all".to_string())
            } else if o.starts_with("--txt-record=s1._domainkey.d.test,") {
                Some(format!("--txt-record=s1._domainkey.d.test,{other_txt}"))
            } else if o.starts_with("--txt-record=_dmarc.") || o.starts_with("--host-record=mta-sts.") {
                None
            } else if o.starts_with("--host-record=out2.d.test,") {
                Some("--host-record=out2.d.test,192.0.2.99".to_string())
            } else if o.starts_with("--dns-rr=_25._tcp.") {
                Some(format!("--dns-rr=_25._tcp.mx.d.test,52,030101{}", "ab".repeat(32)))
            } else {
                Some(o.clone())
            }
        })
        .chain([
            "--host-record=mta-sts.d.test,127.0.0.6".to_string(),
            "--host-record=other.d.test,192.0.2.77".to_string(),
        ])
        .collect();
    let dns = Dns::start(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    let cfg = config(dir.path(), &dns, &cert, &key);
    let wrong_policy = policy.replace("mx: mx.d.test", "mx: mail.d.test");
    let _sts = PolicyServer::start("127.0.0.6", &sts_cert, &sts_key, &[("mta-sts.d.test", &wrong_policy)]);
    let (ok, said) =
        mailgate(&["dns", "check", "--domain", "d.test", "--ip", "192.0.2.4", "--config", &cfg, "--ca-file", &ca]);
    assert!(!ok, "{said}");
    for needle in [
        "FAIL MX       no MX of d.test is this gateway (mx.d.test); they are other.d.test",
        "FAIL SPF      d.test's SPF gives fail for the sending address 192.0.2.11; add ip4:192.0.2.11",
        "FAIL DKIM     s1._domainkey.d.test holds another key than",
        "ok   DKIM     s2._domainkey.d.test holds the key of",
        "FAIL DMARC    _dmarc.d.test is absent; publish: \"v=DMARC1; p=none; rua=mailto:postmaster@d.test\"",
        "FAIL PTR      192.0.2.11 → out2.d.test but that name does not resolve back to 192.0.2.11",
        "ok   PTR      192.0.2.10 ↔ out1.d.test (the EHLO name)",
        "FAIL MTA-STS  the MX other.d.test is not in the policy (mx: mail.d.test)",
        "FAIL MTA-STS  this gateway (mx.d.test) is not in the policy (mx: mail.d.test)",
        "FAIL TLSA     no record at _25._tcp.mx.d.test matches the certificate",
        "d.test: 8 problem(s), 0 warning(s)",
    ] {
        assert!(said.contains(needle), "{needle} missing:\n{said}");
    }
}
