//! Bounces that come back later (issue part 5): API messages leave with a VERP return path; a
//! report that a remote system sends to it later (by SMTP, from Python's smtplib) becomes a
//! `bounced` event of the message and recipient instead of a new message; forged return paths
//! are refused at RCPT; hard bounces put the recipient on the key's suppression list, which the
//! API honours (`suppressed`) and `mailgate suppression list|remove` shows and edits.

use std::process::Command;
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::http::{create_key, get, post_json, with_api};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(20);

/// Sends `body` from `<>` to `rcpt` with Python's smtplib; the reply to the end of data.
fn bounce_by_smtp(port: u16, rcpt: &str, body: &str) -> String {
    let script = r#"
import os, smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.ehlo("mx.remote.test")
s.mail("")
code, msg = s.rcpt(os.environ["RCPT"])
assert code == 250, (code, msg)
code, msg = s.data(sys.stdin.buffer.read())
print(code, msg.decode())
s.quit()
"#;
    let port = port.to_string();
    let out = mailgate_tests::clients::debian_python(script, &[("PORT", &port), ("RCPT", rcpt)], body.as_bytes());
    String::from_utf8_lossy(&out).trim().to_string()
}

/// A report as Postfix sends one for `rcpt`.
fn report(rcpt: &str, status: &str, diagnostic: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.remote.test (Mail Delivery System)\r\nTo: whoever\r\n\
Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"\r\n\r\n\
--B1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n\
--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n\
Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\nRemote-MTA: dns; inner.remote.test\r\n\
Diagnostic-Code: smtp; {diagnostic}\r\n\r\n--B1--\r\n"
    )
}

fn cli(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(gw.path("mailgate.toml"))
        .env_remove("MAILGATE_BIN")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn suppressed(gw: &Gateway, key: &str) -> Vec<String> {
    let (ok, out) = cli(gw, &["suppression", "list", "--key", key, "--json"]);
    assert!(ok, "{out}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    v.iter().map(|e| e["address"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn verp_bounces_become_events_and_hard_bounces_are_suppressed() {
    let sink = Sink::start();
    sink.set_rcpt_reply("gone@remote.test", "550 5.1.1 No such user");
    let admin = free_port();
    let (gw, url) = with_api(
        &sink,
        &format!("\n[bounces]\nverp_domain = \"bounces.gateway.test\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    let key = create_key(&gw, "shop", &[]);
    let msg = serde_json::json!({
        "from": "app@shop.test", "to": ["user@remote.test", "gone@remote.test"],
        "subject": "receipt", "text": "thanks", "metadata": {"order": "7"},
    });
    let r = post_json(&url, &key, &msg);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();

    // It left with a VERP return path naming it; the immediate hard bounce is an event, and
    // no DSN is written to that return path (it would only come back).
    let out = sink.wait_for_rcpt("user@remote.test", T);
    let verp = out.from.clone();
    assert!(verp.starts_with(&format!("bounces+{id}-")) && verp.ends_with("@bounces.gateway.test"), "{verp}");
    assert!(gw.wait_log("reported as events, no DSN", T), "{}", gw.log());

    // A forged return path (right id, wrong tag) is refused at RCPT.
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO mx.remote.test");
    c.cmd("MAIL FROM:<>");
    let forged = format!("RCPT TO:<bounces+{id}-0000000000@bounces.gateway.test>");
    assert!(c.cmd(&forged).starts_with("550 5.1.1"), "{forged}");
    c.cmd("QUIT");

    // An automatic reply to the return path is read and dropped; the real report later is an
    // event of the message and its recipient, with the remote reply and a class.
    let vacation = "From: user@remote.test\r\nAuto-Submitted: auto-replied\r\nSubject: away\r\n\r\nI am away.\r\n";
    assert!(bounce_by_smtp(gw.port, &verp, vacation).starts_with("250 "));
    let got = bounce_by_smtp(gw.port, &verp, &report("user@remote.test", "5.1.1", "550 5.1.1 mailbox unknown"));
    assert!(got.starts_with("250 ") && got.contains("(1 recipients)"), "{got}");
    let status = get(&format!("{url}/{id}"), &key).json();
    let bounced: Vec<&serde_json::Value> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "bounced" && e["recipient"] == "user@remote.test")
        .collect();
    assert_eq!(bounced.len(), 1, "{status}");
    assert_eq!(bounced[0]["reply"], "550 5.1.1 mailbox unknown");
    assert_eq!(bounced[0]["class"], "invalid_recipient");
    assert_eq!(bounced[0]["remote_host"], "inner.remote.test");
    assert_eq!(bounced[0]["metadata"]["order"], "7");
    assert_eq!(bounced[0]["detail"], "reported later by mx.remote.test");
    // Nothing was queued for the bounce domain.
    assert!(sink.received().iter().all(|m| !m.rcpts.iter().any(|r| r.contains("bounces.gateway.test"))));

    // Both hard-bounced recipients are suppressed for this key.
    let both = wait_for(T, || {
        let s = suppressed(&gw, "shop");
        (s.len() == 2).then_some(s)
    });
    assert_eq!(both, Some(vec!["gone@remote.test".to_string(), "user@remote.test".to_string()]), "{}", gw.log());
    let again = serde_json::json!({"from": "app@shop.test", "to": ["GONE@remote.test", "new@remote.test"], "subject": "s", "text": "t"});
    let r = post_json(&url, &key, &again);
    assert_eq!(r.status, 202, "{}", r.body);
    let states: Vec<(String, String)> = r.json()["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["email"].as_str().unwrap().to_string(), x["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, [("GONE@remote.test".into(), "suppressed".into()), ("new@remote.test".into(), "queued".into())]);
    let only = serde_json::json!({"from": "app@shop.test", "to": ["user@remote.test"], "subject": "s", "text": "t"});
    let r = post_json(&url, &key, &only);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["recipients"][0]["status"], "suppressed", "{}", r.body);
    // Per key: another key still sends to it.
    let other = create_key(&gw, "other", &[]);
    assert_eq!(post_json(&url, &other, &only).status, 202);

    // An operator lifts it.
    let (ok, out) = cli(&gw, &["suppression", "remove", "--key", "shop", "user@remote.test"]);
    assert!(ok && out.contains("no longer suppressed"), "{out}");
    let (ok, out) = cli(&gw, &["suppression", "remove", "--key", "shop", "user@remote.test"]);
    assert!(!ok && out.contains("not suppressed"), "{out}");
    assert_eq!(suppressed(&gw, "shop"), ["gone@remote.test"]);
    assert_eq!(post_json(&url, &key, &only).status, 202);
}
