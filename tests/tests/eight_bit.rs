//! 8-bit content for a next hop without 8BITMIME (RFC 6152), at a sink that does not offer it:
//! an unsigned message is re-encoded — its text parts quoted-printable, the rest base64,
//! multiparts and an embedded message walked into — and arrives 7-bit with every part
//! decoding (Python's `email` package) to exactly what was sent; a message the gateway
//! DKIM-signed is bounced with 5.6.3 instead (re-encoding would break the signature), unless
//! `delivery.downgrade_8bit = "always"`; with `"never"` nothing is re-encoded.

use std::time::Duration;

use mailgate_tests::clients::{debian_python, Raw};
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(30);

/// A multipart message with 8-bit bodies of every kind, and an ASCII header section.
fn message() -> Vec<u8> {
    let mut m = b"From: a@sender.test\r\nTo: u@remote.test\r\nSubject: 8-bit parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    m.extend("Grüße aus Köln — à bientôt\r\nzweite Zeile = mit Gleichheitszeichen \r\n".as_bytes());
    m.extend(b"--outer\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n<p>caf");
    m.extend([0xe9, 0x20, 0xfc, 0x62, 0x65, 0x72]); // "café über" in Latin-1
    m.extend(b"</p>\r\n--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    m.extend((0x80u8..=0xff).chain(b"ascii".iter().copied()));
    m.extend(b"\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m.extend("eingebettet: ÄÖÜ\r\n".as_bytes());
    m.extend(b"--outer--\r\n");
    m
}

/// Each leaf part: its type and a digest of its decoded content (line ends normalised).
const PARTS: &str = r#"
import sys, email, hashlib
m = email.message_from_bytes(sys.stdin.buffer.read())
for p in m.walk():
    if p.is_multipart():
        continue
    body = (p.get_payload(decode=True) or b"").replace(b"\r\n", b"\n")
    print(p.get_content_type(), (p.get("Content-Transfer-Encoding") or "7bit").lower(), hashlib.sha256(body).hexdigest())
"#;

fn parts(raw: &[u8]) -> Vec<(String, String, String)> {
    String::from_utf8(debian_python(PARTS, &[], raw))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn gateway(sink: &Sink, dir: &std::path::Path, extra: &str) -> Gateway {
    let key = dir.join("s1.pem");
    if !key.exists() {
        let out = std::process::Command::new(binary())
            .args(["dkim", "keygen", "--domain", "sender.test", "--selector", "s1", "--algorithm", "ed25519", "--out"])
            .arg(&key)
            .env_remove("MAILGATE_BIN")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    Gateway::with_sink(
        sink.port(),
        &format!("{extra}\n[queue]\nretry_schedule = [\"1h\"]\n").replace("{key}", &key.display().to_string()),
    )
}

const SIGNING: &str =
    "[[dkim_sign]]\ndomain = \"sender.test\"\nselector = \"s1\"\nkey = \"{key}\"\nsign_for = \"any\"\n";

#[test]
fn unsigned_bodies_are_re_encoded_and_decode_to_what_was_sent() {
    let sink = Sink::start();
    sink.set_8bitmime(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sink, dir.path(), "");
    let sent = message();
    assert!(Raw::transaction(gw.port, "a@sender.test", "u@remote.test", &sent).starts_with("250"));
    let got = sink.wait_for_rcpt("u@remote.test", T);
    assert!(got.data.is_ascii(), "8-bit octets reached a 7-bit next hop");
    assert!(gw.log().contains("8-bit content re-encoded for a next hop without 8BITMIME"));
    let before = parts(&sent);
    let after = parts(&got.data);
    assert_eq!(before.len(), 4, "{before:?}");
    assert_eq!(after.len(), before.len(), "{after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&a.0, &a.2), (&b.0, &b.2), "the decoded content of {} changed", b.0);
    }
    let encodings: Vec<&str> = after.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(encodings, ["quoted-printable", "quoted-printable", "base64", "quoted-printable"], "{after:?}");
    // The embedded message is labelled 7bit, not encoded itself (RFC 2046 §5.2.1).
    let text = String::from_utf8_lossy(&got.data);
    assert!(
        text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner"),
        "{text}"
    );
}

#[test]
fn a_signed_message_is_bounced_rather_than_broken_unless_told_otherwise() {
    let sink = Sink::start();
    sink.set_8bitmime(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sink, dir.path(), SIGNING);
    assert!(Raw::transaction(gw.port, "a@sender.test", "u@remote.test", &message()).starts_with("250"));
    let dsn = sink.wait_for_rcpt("a@sender.test", T);
    let dsn = dsn.text();
    assert!(dsn.contains("Status: 5.6.3"), "{dsn}");
    assert!(dsn.contains("is signed (DKIM or ARC): re-encoding it would break the signature"), "{dsn}");
    assert!(!sink.received().iter().any(|m| m.rcpts.iter().any(|r| r == "u@remote.test")));

    // "always": re-encoded all the same (the signature no longer verifies; the operator chose).
    let sink = Sink::start();
    sink.set_8bitmime(false);
    let gw = gateway(&sink, dir.path(), &format!("[delivery]\ndowngrade_8bit = \"always\"\n{SIGNING}"));
    assert!(Raw::transaction(gw.port, "a@sender.test", "u@remote.test", &message()).starts_with("250"));
    let got = sink.wait_for_rcpt("u@remote.test", T);
    assert!(got.data.is_ascii() && got.text().contains("DKIM-Signature:"));

    // "never": nothing is re-encoded, even unsigned.
    let sink = Sink::start();
    sink.set_8bitmime(false);
    let gw = gateway(&sink, dir.path(), "[delivery]\ndowngrade_8bit = \"never\"\n");
    assert!(Raw::transaction(gw.port, "a@sender.test", "u@remote.test", &message()).starts_with("250"));
    let dsn = sink.wait_for_rcpt("a@sender.test", T).text();
    assert!(dsn.contains("Status: 5.6.3") && dsn.contains("downgrade_8bit = \"never\""), "{dsn}");
}
