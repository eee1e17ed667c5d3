//! Mail authentication through the gateway, cross-checked with dkimpy (Debian python3-dkim),
//! an implementation nobody here wrote: dkimpy-signed mail verifies (RSA and Ed25519) and
//! tampered mail fails; mail the gateway signs (keys from `mailgate dkim keygen`, records as it
//! prints them) verifies in dkimpy; SPF results from pass to temperror/permerror; DMARC reject,
//! quarantine (and the quarantine CLI) and none, aligned and not; an ARC chain sealed by dkimpy
//! for a trusted forwarder. Every record is served by dnsmasq on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;
use mailgate_tests::wait_for;

const T: Duration = Duration::from_secs(15);

/// Runs a Python script with env vars and stdin; returns stdout (panics with stderr on failure).
fn py(script: &str, env: &[(&str, &str)], stdin: &[u8]) -> Vec<u8> {
    mailgate_tests::clients::debian_python(script, env, stdin)
}

/// `mailgate dkim keygen`: the key file and the TXT record value it says to publish.
fn keygen(dir: &Path, domain: &str, selector: &str, alg: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let out = Command::new(binary())
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", alg, "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains(&format!("{selector}._domainkey.{domain}. IN TXT")), "{text}");
    let record: String = text.split('"').skip(1).step_by(2).collect();
    assert!(record.starts_with("v=DKIM1;"), "{text}");
    (key, record)
}

/// A dnsmasq TXT option, the value cut into 255-octet strings (dnsmasq keeps quotes given on
/// its command line, so there are none).
fn txt(name: &str, value: &str) -> String {
    let parts: Vec<String> = value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// Sends with smtplib; "OK" or the refusal's "code text" (at MAIL, RCPT or DATA).
fn send(port: u16, from: &str, rcpt: &str, msg: &[u8]) -> String {
    let out = py(
        "import os, sys, smtplib\nmsg = sys.stdin.buffer.read()\n\
         s = smtplib.SMTP('127.0.0.1', int(os.environ['PORT']), timeout=30)\n\
         try:\n    s.sendmail(os.environ['FROM'], [os.environ['RCPT']], msg)\n    print('OK')\n\
         except smtplib.SMTPRecipientsRefused as e:\n    c, t = list(e.recipients.values())[0]; print(c, t.decode())\n\
         except smtplib.SMTPResponseException as e:\n    print(e.smtp_code, e.smtp_error.decode())\n",
        &[("PORT", &port.to_string()), ("FROM", from), ("RCPT", rcpt)],
        msg,
    );
    String::from_utf8_lossy(&out).trim().to_string()
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: <u@remote.test>\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{subject}@sender>\r\n\r\nHello,\r\nthis is {subject}.\r\n"
    )
    .into_bytes()
}

/// dkimpy signs `msg`: RSA with a PEM key file, Ed25519 with a base64 seed.
fn dkimpy_sign(msg: &[u8], domain: &str, selector: &str, alg: &str, key: &str) -> Vec<u8> {
    py(
        "import os, sys, dkim\nmsg = sys.stdin.buffer.read()\nalg = os.environ['ALG']\n\
         key = open(os.environ['KEY'], 'rb').read() if alg == 'rsa-sha256' else os.environ['KEY'].encode()\n\
         sig = dkim.sign(msg, os.environ['SEL'].encode(), os.environ['DOM'].encode(), key,\n\
             signature_algorithm=alg.encode(), include_headers=[b'From', b'To', b'Subject', b'Date', b'Message-ID'])\n\
         sys.stdout.buffer.write(sig + msg)\n",
        &[("ALG", alg), ("KEY", key), ("SEL", selector), ("DOM", domain)],
        msg,
    )
}

/// Python prelude for dkimpy: `txt`, a DNS function that asks our dnsmasq (port in DNSPORT)
/// through dnspython, since dkimpy's own look-ups only use the system resolver.
const DKIMPY_DNS: &str = "import os, sys, dkim, dns.resolver\nr = dns.resolver.Resolver(configure=False)\n\
    r.nameservers = ['127.0.0.1']; r.port = int(os.environ['DNSPORT'])\n\
    def txt(name, timeout=5):\n    a = r.resolve(name.decode().rstrip('.'), 'TXT')\n    return b''.join(b''.join(x.strings) for x in a)\n";

/// dkimpy's verdict on a message, asking our dnsmasq through dnspython.
fn dkimpy_verify(msg: &[u8], dns_port: u16) -> String {
    let out = py(
        &format!("{DKIMPY_DNS}print('pass' if dkim.verify(sys.stdin.buffer.read(), dnsfunc=txt) else 'fail')\n"),
        &[("DNSPORT", &dns_port.to_string())],
        msg,
    );
    String::from_utf8_lossy(&out).trim().to_string()
}

/// dkimpy's ARC chain validation of a message (cv= of the chain: pass, fail or none).
fn dkimpy_arc_verify(msg: &[u8], dns_port: u16) -> String {
    let out = py(
        &format!(
            "{DKIMPY_DNS}cv, results, comment = dkim.arc_verify(sys.stdin.buffer.read(), dnsfunc=txt)\n\
             print(cv.decode(), comment)\n"
        ),
        &[("DNSPORT", &dns_port.to_string())],
        msg,
    );
    String::from_utf8_lossy(&out).trim().to_string()
}

/// An RSA key made by openssl (PKCS#1 PEM) and its public key for DNS.
fn openssl_rsa(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl").args(["genrsa", "-traditional", "-out"]).arg(&key).arg("2048").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let der = Command::new("openssl").args(["rsa", "-pubout", "-outform", "DER", "-in"]).arg(&key).output().unwrap();
    use base64_free::encode;
    (key, format!("v=DKIM1; k=rsa; p={}", encode(&der.stdout)))
}

/// Base64 without a crate (the tests have no base64 dependency).
mod base64_free {
    pub fn encode(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}

#[test]
fn dkim_cross_checked_with_dkimpy_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    // Keys for dkimpy's signatures: openssl RSA, PyNaCl Ed25519.
    let (rsa_key, rsa_txt) = openssl_rsa(dir.path(), "rsa1");
    let ed = String::from_utf8(py(
        "import base64, nacl.signing\nk = nacl.signing.SigningKey.generate()\n\
         print(base64.b64encode(bytes(k)).decode(), base64.b64encode(bytes(k.verify_key)).decode())\n",
        &[],
        b"",
    ))
    .unwrap();
    let (ed_seed, ed_pub) = ed.trim().split_once(' ').unwrap();
    // Keys for the gateway's signatures, made by `mailgate dkim keygen`.
    let (g_rsa, g_rsa_txt) = keygen(dir.path(), "out-rsa.test", "g1", "rsa");
    let (g_ed, g_ed_txt) = keygen(dir.path(), "out-ed.test", "g2", "ed25519");
    let (seal_key, seal_txt) = keygen(dir.path(), "gw.test", "seal", "rsa");
    let (dsn_key, dsn_txt) = keygen(dir.path(), "gateway.test", "dsn", "ed25519");
    let dns = Dns::start(&[
        &txt("dsn._domainkey.gateway.test", &dsn_txt),
        &txt("rsa1._domainkey.signed.test", &rsa_txt),
        &txt("ed1._domainkey.signed.test", &format!("v=DKIM1; k=ed25519; p={ed_pub}")),
        &txt("g1._domainkey.out-rsa.test", &g_rsa_txt),
        &txt("g2._domainkey.out-ed.test", &g_ed_txt),
        &txt("seal._domainkey.gw.test", &seal_txt),
        "--txt-record=signed.test,v=spf1 -all",
        // Cacheable answers (dnsmasq's default for its own records is a TTL of 0): the second
        // message signed with rsa1 — the tampered one — finds the key in the gateway's cache,
        // which must keep keys and never verdicts.
        "--local-ttl=300",
    ]);
    let sink = Sink::start();
    let extra = format!(
        "{}\n[auth]\nalways = [\"dkim\"]\n\n\
         [[dkim_sign]]\ndomain = \"out-rsa.test\"\nselector = \"g1\"\nkey = \"{}\"\nsign_for = \"trusted\"\n\n\
         [[dkim_sign]]\ndomain = \"out-ed.test\"\nselector = \"g2\"\nkey = \"{}\"\nsign_for = \"trusted\"\n\n\
         [[dkim_sign]]\ndomain = \"gateway.test\"\nselector = \"dsn\"\nkey = \"{}\"\nsign_for = \"trusted\"\n\n\
         [arc_seal]\ndomain = \"gw.test\"\nselector = \"seal\"\nkey = \"{}\"\n{}",
        dns.config(),
        g_rsa.display(),
        g_ed.display(),
        dsn_key.display(),
        seal_key.display(),
        Gateway::plugin("dkim", "dkim", "stages = [\"data\"]", "require = [\"signed.test\"]")
    );
    let gw = Gateway::with_sink(sink.port(), &extra);

    // dkimpy → gateway: both algorithms pass, and a forged Authentication-Results is dropped.
    let mut forged = b"Authentication-Results: mx.gateway.test; dkim=pass header.d=paypal.test\r\n".to_vec();
    forged.extend(message("alice@signed.test", "rsa-signed"));
    let signed = dkimpy_sign(&forged, "signed.test", "rsa1", "rsa-sha256", rsa_key.to_str().unwrap());
    // Added after signing (dkimpy refuses to sign such a header): spaced, commented, quoted, folded.
    let mut signed_plus =
        b"Authentication-Results : (spaced and commented)\r\n \"MX.gateway.test\"; spf=pass smtp.mailfrom=paypal.test\r\n"
            .to_vec();
    signed_plus.extend(signed);
    let signed = signed_plus;
    assert_eq!(send(gw.port, "alice@signed.test", "u@remote.test", &signed), "OK");
    let got = sink.wait_for_rcpt("u@remote.test", T).text();
    assert!(got.contains("dkim=pass header.d=signed.test header.s=rsa1"), "{got}");
    assert!(!got.contains("paypal.test"), "the forged field survived: {got}");
    assert_eq!(got.matches("Authentication-Results: mx.gateway.test").count(), 1, "{got}");

    let signed =
        dkimpy_sign(&message("alice@signed.test", "ed-signed"), "signed.test", "ed1", "ed25519-sha256", ed_seed);
    assert_eq!(send(gw.port, "alice@signed.test", "v@remote.test", &signed), "OK");
    let got = sink.wait_for_rcpt("v@remote.test", T).text();
    assert!(got.contains("dkim=pass header.d=signed.test header.s=ed1"), "{got}");

    // Tampered after signing: the signature fails, and the dkim plugin refuses the domain.
    let signed = dkimpy_sign(
        &message("alice@signed.test", "tampered"),
        "signed.test",
        "rsa1",
        "rsa-sha256",
        rsa_key.to_str().unwrap(),
    );
    let tampered = String::from_utf8(signed).unwrap().replace("this is tampered", "this is changed");
    let reply = send(gw.port, "alice@signed.test", "w@remote.test", tampered.as_bytes());
    assert!(reply.starts_with("550 5.7.20 no valid DKIM signature for signed.test"), "{reply}");
    assert!(gw.wait_log("plugin verdict", T));

    // gateway → dkimpy: both keys from `mailgate dkim keygen`, verified with the records it printed.
    for (from, rcpt, sel) in [("bob@out-rsa.test", "x@remote.test", "g1"), ("carol@out-ed.test", "y@remote.test", "g2")]
    {
        assert_eq!(send(gw.port, from, rcpt, &message(from, "outbound")), "OK");
        let got = sink.wait_for_rcpt(rcpt, T);
        assert!(
            got.text().contains("\nDKIM-Signature:") && got.text().contains(&format!("s={sel};")),
            "{}",
            got.text()
        );
        assert_eq!(dkimpy_verify(&got.data, dns.port), "pass", "{}", got.text());
        // Our ARC set validates in dkimpy: a first instance, so the chain is "pass".
        let arc = dkimpy_arc_verify(&got.data, dns.port);
        assert!(arc.starts_with("pass"), "{arc}\n{}", got.text());
        // And a change in transit breaks it for dkimpy too.
        let changed = got.text().replace("this is outbound", "this is altered");
        assert_eq!(dkimpy_verify(changed.as_bytes(), dns.port), "fail");
    }

    // A chain broken in transit comes back: it is reported as arc=fail with the reason
    // (never neutral or permerror, RFC 8617 §4.4), and it is not sealed again — no new set,
    // let alone an i=1 as if there were no chain.
    assert_eq!(
        send(gw.port, "bob@out-rsa.test", "arc1@remote.test", &message("bob@out-rsa.test", "to be broken")),
        "OK"
    );
    let sealed = sink.wait_for_rcpt("arc1@remote.test", T).text();
    assert_eq!(sealed.matches("ARC-Seal:").count(), 1, "{sealed}");
    let broken = sealed.replace("this is to be broken", "this is broken in transit");
    assert_eq!(send(gw.port, "bob@out-rsa.test", "arc2@remote.test", broken.as_bytes()), "OK");
    let again = sink.wait_for_rcpt("arc2@remote.test", T).text();
    assert_eq!(again.matches("ARC-Seal:").count(), 1, "a failed chain was sealed again: {again}");
    assert!(again.contains("arc=fail ("), "{again}");
    assert!(!again.contains("arc=neutral") && !again.contains("arc=permerror"), "{again}");
    assert!(gw.wait_log("not ARC sealed", T), "{}", gw.log());

    // A DSN the queue writes passes the same cleanup stage: it is traced and signed for our
    // domain (MAILER-DAEMON@mx.gateway.test), and the signature verifies in dkimpy.
    sink.set_rcpt_reply("gone@remote.test", "550 5.1.1 no such user");
    assert_eq!(send(gw.port, "bob@out-rsa.test", "gone@remote.test", &message("bob@out-rsa.test", "bounced")), "OK");
    let dsn = sink.wait_for_rcpt("bob@out-rsa.test", T);
    let text = dsn.text();
    assert!(text.contains("From: Mail Delivery System <MAILER-DAEMON@mx.gateway.test>"), "{text}");
    assert!(text.contains("Received: by mx.gateway.test (mailgate) id "), "{text}");
    assert!(text.contains("d=gateway.test;") && text.contains("s=dsn;"), "{text}");
    assert_eq!(dkimpy_verify(&dsn.data, dns.port), "pass", "{text}");
}

#[test]
fn spf_results_from_pass_to_temperror_and_permerror() {
    let dead = mailgate_tests::free_udp_port();
    let too_many: String = (1..=11).map(|i| format!("a:h{i}.many.test ")).collect();
    let dns = Dns::start(&[
        "--txt-record=pass.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=fail.test,v=spf1 ip4:192.0.2.1 -all",
        "--txt-record=softfail.test,v=spf1 ~all",
        "--txt-record=neutral.test,v=spf1 ?all",
        "--txt-record=none.test,just some text",
        &format!("--txt-record=many.test,v=spf1 {too_many}-all"),
        "--txt-record=broken.test,v=spf1 ip4:not-an-ip -all",
        // A zone whose server never answers: the look-up times out.
        &format!("--server=/slow.test/127.0.0.1#{dead}"),
    ]);
    let spf = Gateway::plugin(
        "spf",
        "spf",
        "stages = [\"mail_from\"]",
        "stage = \"mail_from\"\nfail = \"reject\"\nsoftfail = \"accept\"\ntemperror = \"tempfail\"\npermerror = \"reject\"",
    );
    let gw = Gateway::with_sink(
        1,
        &format!(
            "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n{}\n[auth]\nalways = [\"spf\"]\ntimeout = \"3s\"\n{spf}",
            dns.config()
        ),
    );
    let msg = |d: &str| message(&format!("s@{d}"), d);
    for (domain, reply) in [
        ("fail.test", "550 5.7.23 SPF fail for fail.test"),
        ("many.test", "550 5.7.23 SPF permerror for many.test"),
        ("broken.test", "550 5.7.23 SPF permerror for broken.test"),
        ("slow.test", "451 4.4.3 SPF temperror for slow.test"),
    ] {
        let got = send(gw.port, &format!("s@{domain}"), "u@example.test", &msg(domain));
        assert!(got.starts_with(reply), "{domain}: {got}");
    }
    for (domain, result) in [
        ("pass.test", "pass"),
        ("softfail.test", "softfail"),
        ("neutral.test", "neutral"),
        ("none.test", "none"),
        ("nxdomain.test", "none"),
    ] {
        assert_eq!(send(gw.port, &format!("s@{domain}"), "u@example.test", &msg(domain)), "OK", "{domain}");
        let want = format!("spf={result} smtp.mailfrom={domain}");
        let found = wait_for(T, || {
            Gateway::maildir_files(&gw.path("mail"), "u")
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                .find(|t| t.contains(&want))
        });
        assert!(found.is_some(), "no message with {want}; log:\n{}", gw.log());
    }
}

fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary()).args(args).arg("--config").arg(cfg).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn quarantined(cfg: &Path) -> Vec<serde_json::Value> {
    let (ok, out) = cli(cfg, &["quarantine", "list", "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn dmarc_policies_aligned_and_not_with_quarantine_cli_and_trusted_arc() {
    let dir = tempfile::tempdir().unwrap();
    let (arc_key, arc_txt) = openssl_rsa(dir.path(), "arc1");
    let dns = Dns::start(&[
        "--txt-record=_dmarc.reject.test,v=DMARC1; p=reject",
        "--txt-record=_dmarc.quar.test,v=DMARC1; p=quarantine",
        "--txt-record=_dmarc.none.test,v=DMARC1; p=none",
        "--txt-record=reject.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=other.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=fwd.test,v=spf1 ip4:127.0.0.1 -all",
        &txt("arc1._domainkey.fwd.test", &arc_txt),
    ]);
    let sink = Sink::start();
    let admin = mailgate_tests::free_port();
    let plugins = format!(
        "{}{}",
        Gateway::plugin("arc", "arc", "stages = [\"data\"]", "trusted = [\"fwd.test\"]"),
        Gateway::plugin("dmarc", "dmarc", "stages = [\"data\"]", "")
    );
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("{}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{plugins}", dns.config()),
    );
    let cfg = gw.path("mailgate.toml");

    // p=reject: unaligned (SPF passes for other.test, no DKIM) is refused; aligned passes.
    let reply = send(gw.port, "b@other.test", "a@remote.test", &message("x@reject.test", "unaligned"));
    assert_eq!(reply, "550 5.7.1 Rejected by the DMARC policy of reject.test");
    assert_eq!(send(gw.port, "x@reject.test", "a@remote.test", &message("x@reject.test", "aligned")), "OK");
    let got = sink.wait_for_rcpt("a@remote.test", T).text();
    assert!(got.contains("dmarc=pass header.from=reject.test policy.dmarc=reject"), "{got}");
    assert!(got.contains("spf=pass smtp.mailfrom=reject.test"), "{got}");

    // Two From fields (or From domains): DMARC could not judge the message, so it is refused.
    let mut two = b"From: ceo@reject.test\r\n".to_vec();
    two.extend(message("x@other.test", "two-froms"));
    let reply = send(gw.port, "b@other.test", "a@remote.test", &two);
    assert_eq!(reply, "550 5.7.1 Refused: 2 From header fields (DMARC cannot judge it)");

    // p=none: delivered, marked as failing.
    assert_eq!(send(gw.port, "b@other.test", "n@remote.test", &message("x@none.test", "none")), "OK");
    let got = sink.wait_for_rcpt("n@remote.test", T).text();
    assert!(got.contains("dmarc=fail header.from=none.test policy.dmarc=none"), "{got}");

    // p=quarantine: the client hears 250; the message waits in quarantine for the operator.
    assert_eq!(send(gw.port, "b@other.test", "q@remote.test", &message("x@quar.test", "quarantined")), "OK");
    assert_eq!(send(gw.port, "b@other.test", "d@remote.test", &message("x@quar.test", "deleted")), "OK");
    let q = wait_for(T, || Some(quarantined(&cfg)).filter(|q| q.len() == 2)).expect("two quarantined");
    let id_of = |rcpt: &str| {
        q.iter().find(|m| m["recipients"][0]["address"] == rcpt).unwrap()["id"].as_str().unwrap().to_string()
    };
    let (keep, drop) = (id_of("q@remote.test"), id_of("d@remote.test"));
    let (ok, out) = cli(&cfg, &["quarantine", "list"]);
    assert!(ok && out.contains(&keep) && out.contains("quarantine: DMARC policy of quar.test: quarantine"), "{out}");
    let (ok, out) = cli(&cfg, &["quarantine", "show", &keep, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && shown["header"].as_str().unwrap().contains("Subject: quarantined"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.received().iter().all(|m| !m.rcpts.contains(&"q@remote.test".to_string())), "delivered early");
    assert!(cli(&cfg, &["quarantine", "release", &keep]).0);
    let got = sink.wait_for_rcpt("q@remote.test", T).text();
    assert!(got.contains("dmarc=fail header.from=quar.test policy.dmarc=quarantine"), "{got}");
    assert!(cli(&cfg, &["quarantine", "delete", &drop]).0);
    assert!(quarantined(&cfg).is_empty());
    let (ok, out) = cli(&cfg, &["quarantine", "show", &drop]);
    assert!(!ok && out.contains("no message"), "{out}");

    // A forwarder (fwd.test) sealed an ARC chain with dkimpy: the arc plugin trusts it, so
    // the DMARC failure that forwarding caused is not enforced.
    let mut fwd = b"Authentication-Results: fwd.test; spf=pass smtp.mailfrom=reject.test\r\n".to_vec();
    fwd.extend(message("x@reject.test", "forwarded"));
    let sealed = py(
        "import os, sys, dkim\nmsg = sys.stdin.buffer.read()\nkey = open(os.environ['KEY'], 'rb').read()\n\
         h = dkim.arc_sign(msg, b'arc1', b'fwd.test', key, b'fwd.test', include_headers=[b'From', b'To', b'Subject', b'Date'])\n\
         sys.stdout.buffer.write(b''.join(h) + msg)\n",
        &[("KEY", arc_key.to_str().unwrap())],
        &fwd,
    );
    assert!(String::from_utf8_lossy(&sealed).contains("ARC-Seal: i=1"), "{}", String::from_utf8_lossy(&sealed));
    assert_eq!(send(gw.port, "list@fwd.test", "f@remote.test", &sealed), "OK", "{}", gw.log());
    let got = sink.wait_for_rcpt("f@remote.test", T).text();
    assert!(got.contains("arc=pass") && got.contains("dmarc=fail header.from=reject.test"), "{got}");
    assert!(gw.log().contains("sealed by a trusted ARC forwarder"));
}

/// DMARC's tree walk asks for `_dmarc.<name>.` from the From domain down to the top-level
/// domain; most of those names have no record. The gateway keeps the absences, as long as the
/// zone's SOA lets them be kept, beside the records: with the resolver's own cache turned off
/// (`cache_entries = 0`) and the DNS server gone, a second message from the same domain gets
/// the same DMARC result from what the first one's walk left — without the absences kept, the
/// look-up of `_dmarc.news.org.test.` fails and DMARC is a temperror.
#[test]
fn dmarc_tree_walk_keeps_the_names_without_a_record() {
    let dns = Dns::start(&[
        // Authoritative for `test`: NXDOMAIN answers carry the SOA (negative TTL 300 s).
        "--auth-server=ns.test,lo",
        "--auth-zone=test",
        "--auth-ttl=300",
        "--auth-soa=1,hostmaster.test,1200,120,604800,300",
        "--txt-record=_dmarc.org.test,v=DMARC1; p=reject; sp=quarantine",
        "--txt-record=news.org.test,v=spf1 ip4:127.0.0.0/8 -all",
    ]);
    let sink = Sink::start();
    let extra = format!("{}cache_entries = 0\n\n[auth]\nalways = [\"spf\", \"dmarc\"]\n", dns.config());
    let gw = Gateway::with_sink(sink.port(), &extra);
    let dmarc_of = |rcpt: &str| {
        let got = sink.wait_for_rcpt(rcpt, T).text();
        let ar = auth_results(&got);
        let at = ar.find("dmarc=").unwrap_or_else(|| panic!("no dmarc result: {ar}"));
        ar[at..].split(';').next().unwrap().trim().to_string()
    };
    // The walk: _dmarc.news.org.test. (none), _dmarc.org.test. (the policy), _dmarc.test. (none).
    assert_eq!(send(gw.port, "a@news.org.test", "first@remote.test", &message("a@news.org.test", "first")), "OK");
    let first = dmarc_of("first@remote.test");
    assert!(first.starts_with("dmarc=pass header.from=news.org.test policy.dmarc=quarantine"), "{first}");
    drop(dns);
    assert_eq!(send(gw.port, "a@news.org.test", "second@remote.test", &message("a@news.org.test", "second")), "OK");
    assert_eq!(dmarc_of("second@remote.test"), first, "{}", gw.log());
}

/// The message's Authentication-Results field, unfolded onto one line ("" if none).
fn auth_results(message: &str) -> String {
    let unfolded = message.replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ");
    unfolded.lines().find(|l| l.starts_with("Authentication-Results:")).unwrap_or_default().to_string()
}

/// A DKIM key record is taken up to 4 KiB (an 8192-bit RSA key's is ~1.4 KiB): the names come
/// from the message, and what the gateway keeps of a key must be bounded. A record one note
/// longer than that is a `permerror` naming its size — though the key in it is good — and one
/// just under passes; both arrive over TCP (over 512 octets).
#[test]
fn dkim_key_records_over_4_kib_are_a_permerror() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_txt) = openssl_rsa(dir.path(), "rsa1");
    let key = rsa_txt.strip_prefix("v=DKIM1; k=rsa; ").unwrap();
    let padded = |octets: usize| {
        let head = "v=DKIM1; k=rsa; n=";
        let notes = "x".repeat(octets - head.len() - key.len() - 2);
        let r = format!("{head}{notes}; {key}");
        assert_eq!(r.len(), octets);
        r
    };
    let dns = Dns::start(&[
        &txt("fits._domainkey.signed.test", &padded(4096)),
        &txt("big._domainkey.signed.test", &padded(4097)),
        &txt("huge._domainkey.signed.test", &padded(30_000)),
        "--local-ttl=300",
    ]);
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &format!("{}\n[auth]\nalways = [\"dkim\"]\n", dns.config()));
    for (sel, rcpt, want) in [
        ("fits", "a@remote.test", "dkim=pass"),
        ("big", "b@remote.test", "dkim=permerror"),
        ("huge", "c@remote.test", "dkim=permerror"),
        // Again, from the cache: the refusal is what is kept.
        ("big", "d@remote.test", "dkim=permerror"),
        ("fits", "e@remote.test", "dkim=pass"),
    ] {
        let msg = dkimpy_sign(
            &message("alice@signed.test", sel),
            "signed.test",
            sel,
            "rsa-sha256",
            rsa_key.to_str().unwrap(),
        );
        assert_eq!(send(gw.port, "alice@signed.test", rcpt, &msg), "OK");
        let got = sink.wait_for_rcpt(rcpt, T).text();
        let ar = auth_results(&got);
        assert!(ar.contains(want) && ar.contains(&format!("header.s={sel}")), "{sel}: {ar}");
        if want == "dkim=permerror" {
            let octets = if sel == "big" { 4097 } else { 30_000 };
            let why = format!("DKIM key record of {octets} octets, more than the 4096 taken");
            assert!(ar.contains(&why), "the reason names the size: {ar}");
        }
    }
}

/// A message with more DKIM signatures than a verifier should spend RSA on (RFC 6376 §8.4):
/// the first ten in header order — the latest added — are verified and reported, the rest
/// ignored. Each signature here is good.
#[test]
fn only_the_first_ten_dkim_signatures_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_txt) = openssl_rsa(dir.path(), "rsa1");
    let mut selectors = vec![];
    let mut records = vec![];
    for i in 0..12 {
        selectors.push(format!("s{i}"));
        records.push(txt(&format!("s{i}._domainkey.signed.test"), &rsa_txt));
    }
    let mut args: Vec<&str> = records.iter().map(String::as_str).collect();
    args.push("--local-ttl=300");
    let dns = Dns::start(&args);
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &format!("{}\n[auth]\nalways = [\"dkim\"]\n", dns.config()));
    let mut msg = message("alice@signed.test", "many-signatures");
    for sel in &selectors {
        msg = dkimpy_sign(&msg, "signed.test", sel, "rsa-sha256", rsa_key.to_str().unwrap());
    }
    assert_eq!(send(gw.port, "alice@signed.test", "a@remote.test", &msg), "OK");
    let got = sink.wait_for_rcpt("a@remote.test", T).text();
    let ar = auth_results(&got);
    assert_eq!(ar.matches("dkim=").count(), 10, "{ar}");
    assert_eq!(ar.matches("dkim=pass").count(), 10, "{ar}");
    // The latest ten: s11 down to s2; s1 and s0, at the bottom, are not looked at.
    assert!(ar.contains("header.s=s11") && ar.contains("header.s=s2;"), "{ar}");
    assert!(!ar.contains("header.s=s1;") && !ar.contains("header.s=s0;"), "{ar}");
}

/// An RSA key of its own bits made by openssl, and its DNS record.
fn openssl_rsa_bits(dir: &Path, name: &str, bits: u32) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg(bits.to_string())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let der = Command::new("openssl").args(["rsa", "-pubout", "-outform", "DER", "-in"]).arg(&key).output().unwrap();
    (key, format!("v=DKIM1; k=rsa; p={}", base64_free::encode(&der.stdout)))
}

/// RSA keys are verified up to 4096 bits (RFC 8301 §3.2 lets a verifier stop there): a
/// signature by a 4104-bit key — one octet more of modulus — is a `permerror` naming the size,
/// one by a 4096-bit key beside it in the same message passes.
#[test]
fn rsa_keys_over_4096_bits_are_a_permerror() {
    let dir = tempfile::tempdir().unwrap();
    let (fits, fits_txt) = openssl_rsa_bits(dir.path(), "k4096", 4096);
    let (big, big_txt) = openssl_rsa_bits(dir.path(), "k4104", 4104);
    let dns = Dns::start(&[
        &txt("k4096._domainkey.signed.test", &fits_txt),
        &txt("k4104._domainkey.signed.test", &big_txt),
        "--local-ttl=300",
    ]);
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &format!("{}\n[auth]\nalways = [\"dkim\"]\n", dns.config()));
    let mut msg = message("alice@signed.test", "big-key");
    msg = dkimpy_sign(&msg, "signed.test", "k4096", "rsa-sha256", fits.to_str().unwrap());
    msg = dkimpy_sign(&msg, "signed.test", "k4104", "rsa-sha256", big.to_str().unwrap());
    // dkimpy takes both: the refusal is ours.
    assert_eq!(dkimpy_verify(&msg, dns.port), "pass");
    for rcpt in ["a@remote.test", "b@remote.test"] {
        assert_eq!(send(gw.port, "alice@signed.test", rcpt, &msg), "OK");
        let ar = auth_results(&sink.wait_for_rcpt(rcpt, T).text());
        assert!(ar.contains("dkim=pass header.d=signed.test header.s=k4096"), "{ar}");
        let big = ar.split(';').find(|p| p.contains("header.s=k4104")).unwrap_or_default();
        assert!(
            big.contains("dkim=permerror (") && big.contains("RSA key of 4104 bits, more than the 4096 verified)"),
            "{ar}"
        );
    }
}

/// dkimpy seals `msg` `hops` times over, each hop stamping its Authentication-Results first
/// (arc=pass after the first), all with one key.
fn arc_chain(msg: &[u8], hops: usize, key: &Path, selector: &str) -> Vec<u8> {
    py(
        "import os, sys, dkim\nmsg = sys.stdin.buffer.read()\nkey = open(os.environ['KEY'], 'rb').read()\n\
         for i in range(1, int(os.environ['HOPS']) + 1):\n\
         \x20   srv = b'hop%d.test' % i\n\
         \x20   res = b'arc=pass' if i > 1 else b'spf=pass smtp.mailfrom=fwd.test'\n\
         \x20   msg = b'Authentication-Results: ' + srv + b'; ' + res + b'\\r\\n' + msg\n\
         \x20   h = dkim.arc_sign(msg, os.environ['SEL'].encode(), b'fwd.test', key, srv, include_headers=[b'From', b'To', b'Subject', b'Date'])\n\
         \x20   assert h, i\n\
         \x20   msg = b''.join(h) + msg\n\
         sys.stdout.buffer.write(msg)\n",
        &[("KEY", key.to_str().unwrap()), ("HOPS", &hops.to_string()), ("SEL", selector)],
        msg,
    )
}

/// An ARC chain is validated up to ten sets: every seal is an RSA verification over the sets
/// below it, and a sender can make fifty. Chains of ten and eleven good sets, both valid for
/// dkimpy: ten pass and are sealed once more by the gateway, eleven fail, unvalidated, with
/// the reason, and are not sealed.
#[test]
fn arc_chains_over_ten_sets_fail_unvalidated() {
    let dir = tempfile::tempdir().unwrap();
    let (key, key_txt) = openssl_rsa(dir.path(), "arc1");
    let (seal_key, seal_txt) = keygen(dir.path(), "gw.test", "seal", "rsa");
    let dns = Dns::start(&[
        &txt("arc1._domainkey.fwd.test", &key_txt),
        &txt("seal._domainkey.gw.test", &seal_txt),
        "--local-ttl=300",
    ]);
    let sink = Sink::start();
    let extra = format!(
        "{}\n[auth]\nalways = [\"dkim\"]\n\n[arc_seal]\ndomain = \"gw.test\"\nselector = \"seal\"\nkey = \"{}\"\n",
        dns.config(),
        seal_key.display()
    );
    let gw = Gateway::with_sink(sink.port(), &extra);
    for (hops, rcpt) in [(10, "ten@remote.test"), (11, "eleven@remote.test")] {
        let sealed = arc_chain(&message("alice@fwd.test", &format!("hops{hops}")), hops, &key, "arc1");
        assert!(String::from_utf8_lossy(&sealed).contains(&format!("ARC-Seal: i={hops};")));
        assert!(dkimpy_arc_verify(&sealed, dns.port).starts_with("pass"), "dkimpy validates {hops} sets");
        assert_eq!(send(gw.port, "alice@fwd.test", rcpt, &sealed), "OK");
        let got = sink.wait_for_rcpt(rcpt, T).text();
        let ar = auth_results(&got);
        if hops == 10 {
            assert!(ar.contains("arc=pass smtp.remote-ip=127.0.0.1"), "{ar}");
            assert!(got.contains("ARC-Seal: i=11; a=rsa-sha256; s=seal; d=gw.test; cv=pass;"), "{got}");
        } else {
            assert!(ar.contains("arc=fail (ARC chain of 11 sets, more than the 10 validated)"), "{ar}");
            assert_eq!(got.matches("ARC-Seal:").count(), 11, "not sealed again: {got}");
            assert!(gw.wait_log("ARC chain of 11 sets, more than the 10 validated", T), "{}", gw.log());
        }
    }
}

/// A signature's `h=` may list 100 field names: the library compares each with every name
/// before it and every field, so a long list costs quadratic time (40 000 names: 2.3 s of CPU
/// a message before). dkimpy signs with From and 99 or 100 further names (fields the message
/// does not have, as over-signing lists them): 100 pass; 101 are a DKIM `permerror`, and an
/// ARC chain whose message signature lists 101 fails, both with the reason.
#[test]
fn signatures_listing_over_100_fields_are_not_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (key, key_txt) = openssl_rsa(dir.path(), "k1");
    let dns = Dns::start(&[
        &txt("k1._domainkey.signed.test", &key_txt),
        &txt("k1._domainkey.fwd.test", &key_txt),
        "--local-ttl=300",
    ]);
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &format!("{}\n[auth]\nalways = [\"dkim\"]\n", dns.config()));
    // SIGN=dkim|arc, NAMES: how many names h= lists in all.
    let sign = |how: &str, names: usize, subject: &str| {
        py(
            "import os, sys, dkim\nmsg = sys.stdin.buffer.read()\nkey = open(os.environ['KEY'], 'rb').read()\n\
             names = [b'From'] + [b'X-Over-%d' % i for i in range(int(os.environ['NAMES']) - 1)]\n\
             if os.environ['SIGN'] == 'dkim':\n\
             \x20   h = [dkim.sign(msg, b'k1', b'signed.test', key, include_headers=names)]\n\
             else:\n\
             \x20   msg = b'Authentication-Results: fwd.test; spf=pass smtp.mailfrom=fwd.test\\r\\n' + msg\n\
             \x20   h = dkim.arc_sign(msg, b'k1', b'fwd.test', key, b'fwd.test', include_headers=names)\n\
             sys.stdout.buffer.write(b''.join(h) + msg)\n",
            &[("KEY", key.to_str().unwrap()), ("NAMES", &names.to_string()), ("SIGN", how)],
            &message("alice@signed.test", subject),
        )
    };
    for (how, names, rcpt) in [
        ("dkim", 100, "d100@remote.test"),
        ("dkim", 101, "d101@remote.test"),
        ("arc", 100, "a100@remote.test"),
        ("arc", 101, "a101@remote.test"),
    ] {
        let msg = sign(how, names, &format!("{how}{names}"));
        let head = String::from_utf8_lossy(&msg).to_string();
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains(&format!("x-over-{}", names - 2)) && !head.contains(&format!("x-over-{}:", names - 1)),
            "{head}"
        );
        if how == "dkim" {
            assert_eq!(dkimpy_verify(&msg, dns.port), "pass");
        } else {
            assert!(dkimpy_arc_verify(&msg, dns.port).starts_with("pass"));
        }
        assert_eq!(send(gw.port, "alice@signed.test", rcpt, &msg), "OK");
        let ar = auth_results(&sink.wait_for_rcpt(rcpt, T).text());
        match (how, names) {
            ("dkim", 100) => assert!(ar.contains("dkim=pass header.d=signed.test header.s=k1"), "{ar}"),
            ("dkim", _) => assert!(
                ar.contains("dkim=permerror (h= lists 101 field names, more than the 100 taken) header.d=signed.test header.s=k1"),
                "{ar}"
            ),
            (_, 100) => assert!(ar.contains("arc=pass"), "{ar}"),
            _ => assert!(
                ar.contains("arc=fail (ARC-Message-Signature i=1 lists 101 field names, more than the 100 taken)"),
                "{ar}"
            ),
        }
    }
}
