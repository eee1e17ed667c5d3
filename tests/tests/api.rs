//! The HTTP sending API end to end, with clients nobody here wrote: curl and Python's urllib
//! submit JSON and raw messages; the messages reach the sink with correct MIME (checked by
//! Python's `email` package) and DKIM-signed (verified by dkimpy against dnsmasq); every kind of
//! bad request gets its status and a JSON error while the server goes on serving; idempotent
//! repeats send once, also across a restart; the pipeline's refusals come back as 422 with the
//! SMTP reply.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::http::{create_key, curl, get, post_json, with_api};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(20);

/// A gateway relaying to `sink` with an `[[api]]` listener; it and the API's URL.
fn gateway(sink: &Sink, extra: &str) -> (Gateway, String) {
    with_api(sink, extra)
}

/// Debian's Python on a script; its stdout, trimmed.
fn py(script: &str, env: &[(&str, &str)], stdin: &[u8]) -> String {
    String::from_utf8_lossy(&mailgate_tests::clients::debian_python(script, env, stdin)).trim().to_string()
}

/// `mailgate dkim keygen`: the key file and its TXT record value.
fn keygen(dir: &Path, domain: &str, selector: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let out = Command::new(binary())
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", "ed25519", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    (key, text.split('"').skip(1).step_by(2).collect())
}

/// Reads a message with Python's `email` package (the modern policy, which reports defects)
/// and prints what the test compares.
const PY_EMAIL: &str = r#"
import sys, json, email, email.policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
body = m.get_body(preferencelist=('plain',))
html = m.get_body(preferencelist=('html',))
atts = [(a.get_filename(), a.get_content_type(), a.get_content()) for a in m.iter_attachments()]
print(json.dumps({
  "defects": [str(d) for p in m.walk() for d in p.defects],
  "subject": m["subject"], "from": str(m["from"]), "to": str(m["to"]), "cc": str(m["cc"]),
  "bcc": m["bcc"], "x": m["x-campaign"], "type": m.get_content_type(),
  "text": body.get_content().replace('\r\n', '\n') if body else None,
  "html": html.get_content().replace('\r\n', '\n') if html else None,
  "attachments": [[n, t, c.decode('latin-1') if isinstance(c, bytes) else c] for n, t, c in atts],
  "mid": m["message-id"], "date": m["date"],
}))
"#;

#[test]
fn json_and_raw_messages_arrive_well_formed_and_signed() {
    let sink = Sink::start();
    let keydir = tempfile::tempdir().unwrap();
    let (dkim_key, record) = keygen(keydir.path(), "shop.test", "api1");
    let dns = Dns::start(&[&format!("--txt-record=api1._domainkey.shop.test,{record}")]);
    let (gw, url) = gateway(
        &sink,
        &format!(
            "{}\n[[dkim_sign]]\ndomain = \"shop.test\"\nselector = \"api1\"\nkey = \"{}\"\nsign_for = \"authenticated\"\n",
            dns.config(),
            dkim_key.display()
        ),
    );
    let key = create_key(&gw, "shop", &["--allow-from", "shop.test"]);
    let body = serde_json::json!({
        "from": {"email": "noreply@shop.test", "name": "Shöp Ünïcode"},
        "to": ["Ann <ann@remote.test>", {"email": "bob@remote.test"}],
        "cc": "carol@remote.test",
        "bcc": ["dave@remote.test"],
        "subject": "Your receipt — №42, ünïcode and a long subject that mail-builder has to fold over more than one line",
        "text": "Thank you.\nLine two with ünïcode.\n",
        "html": "<p>Thank you.</p>",
        "headers": {"X-Campaign": "receipts"},
        "attachments": [{"filename": "receipt.txt", "content_type": "text/plain", "content_base64": "cmVjZWlwdCA0Mgo="}],
        "tags": ["receipt"],
        "metadata": {"order": "42"}
    });
    let r = post_json(&url, &key, &body);
    assert_eq!(r.status, 202, "{r:?}\n{}", gw.log());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    let rcpts: Vec<(&str, &str)> = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["email"].as_str().unwrap(), x["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rcpts,
        [
            ("ann@remote.test", "queued"),
            ("bob@remote.test", "queued"),
            ("carol@remote.test", "queued"),
            ("dave@remote.test", "queued")
        ]
    );
    let m = sink.wait_for_rcpt("dave@remote.test", T);
    assert_eq!(m.from, "noreply@shop.test");
    assert_eq!(m.rcpts.len(), 4, "one message, four recipients: {:?}", m.rcpts);
    let text = m.text();
    assert!(text.contains(&format!("with HTTP id {id}")) || text.contains(&id), "Received names the queue id: {text}");
    let parsed: serde_json::Value = serde_json::from_str(&py(PY_EMAIL, &[], &m.data)).unwrap();
    assert_eq!(parsed["defects"], serde_json::json!([]), "{text}");
    assert_eq!(parsed["subject"], body["subject"]);
    assert!(
        parsed["from"].as_str().unwrap().contains("Shöp Ünïcode")
            && parsed["from"].as_str().unwrap().contains("noreply@shop.test")
    );
    assert!(parsed["to"].as_str().unwrap().contains("Ann <ann@remote.test>"), "{parsed}");
    assert_eq!(parsed["cc"], "carol@remote.test");
    assert_eq!(parsed["bcc"], serde_json::Value::Null, "no Bcc field");
    assert!(!text.contains("dave@"), "the Bcc recipient is not in the content");
    assert_eq!(parsed["x"], "receipts");
    assert_eq!(parsed["text"], "Thank you.\nLine two with ünïcode.\n");
    assert_eq!(parsed["html"].as_str().unwrap().trim_end(), "<p>Thank you.</p>");
    assert_eq!(parsed["attachments"], serde_json::json!([["receipt.txt", "text/plain", "receipt 42\n"]]));
    assert!(parsed["mid"].as_str().unwrap().ends_with("@mx.gateway.test>") && parsed["date"].is_string());
    let dkim = py(
        "import os, sys, dkim, dns.resolver\nr = dns.resolver.Resolver(configure=False)\n\
         r.nameservers = ['127.0.0.1']; r.port = int(os.environ['DNSPORT'])\n\
         def txt(name, timeout=5):\n    a = r.resolve(name.decode().rstrip('.'), 'TXT')\n    return b''.join(b''.join(x.strings) for x in a)\n\
         print('pass' if dkim.verify(sys.stdin.buffer.read(), dnsfunc=txt) else 'fail')\n",
        &[("DNSPORT", &dns.port.to_string())],
        &m.data,
    );
    assert_eq!(dkim, "pass", "dkimpy verifies the gateway's signature:\n{text}");

    // A raw message by Python's urllib, LF line ends, envelope from the query.
    let raw = "From: Shop <noreply@shop.test>\nTo: someone@remote.test\nSubject: raw\n\nraw body\n.\nend\n";
    let out = py(
        "import os, sys, urllib.request\n\
         req = urllib.request.Request(os.environ['URL'] + '?from=bounces@shop.test&to=raw1@remote.test,raw2@remote.test',\n\
             data=sys.stdin.buffer.read(), method='POST',\n\
             headers={'Authorization': 'Bearer ' + os.environ['KEY'], 'Content-Type': 'message/rfc822'})\n\
         r = urllib.request.urlopen(req, timeout=30)\nprint(r.status, r.read().decode())\n",
        &[("URL", &url), ("KEY", &key)],
        raw.as_bytes(),
    );
    assert!(out.starts_with("202 "), "{out}");
    let m = sink.wait_for_rcpt("raw2@remote.test", T);
    assert_eq!(m.from, "bounces@shop.test");
    // CRLF, the lone dot kept, and the Date and Message-ID it lacked added (RFC 6409 §8.3).
    let id = serde_json::from_str::<serde_json::Value>(out.split_once(' ').unwrap().1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = m.text();
    assert!(t.contains("Subject: raw\r\nDate: "), "{t:?}");
    assert!(t.ends_with(&format!("\r\nMessage-ID: <{id}@mx.gateway.test>\r\n\r\nraw body\r\n.\r\nend\r\n")), "{t:?}");
    drop(gw);
}

#[test]
fn https_listener_serves_with_the_gateway_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, keyf) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&keyf, ck.key_pair.serialize_pem()).unwrap();
    let sink = Sink::start();
    let (gw, url) =
        gateway(&sink, &format!("tls = true\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), keyf.display()));
    let key = create_key(&gw, "app", &[]);
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    let https = format!("https://localhost:{port}/api/v1/messages");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let body =
        serde_json::json!({"from": "app@any.test", "to": "tls@remote.test", "subject": "over TLS", "text": "hi"})
            .to_string();
    let r = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-X",
        "POST",
        &https,
        "-H",
        &format!("Authorization: Bearer {key}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let m = sink.wait_for_rcpt("tls@remote.test", T);
    assert!(m.text().contains("with HTTP") && m.text().contains("TLSv1.3"), "{}", m.text());
    // Plain HTTP on the TLS port is not served.
    let plain = Command::new("curl").args(["-sS", "--max-time", "10", &url]).output().unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("202"));
}

#[test]
fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let sink = Sink::start();
    let (gw, url) = gateway(&sink, "");
    let key = create_key(&gw, "shop", &["--allow-from", "shop.test"]);
    let limited = create_key(&gw, "slow", &["--rate", "2/min"]);
    let good = serde_json::json!({"from": "a@shop.test", "to": "x@remote.test", "subject": "s", "text": "t"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    // Authentication and authorisation.
    let r = curl(&["-X", "POST", &url, "-H", "Content-Type: application/json", "--data-binary", &good.to_string()]);
    assert_eq!((r.status, r.header("www-authenticate").as_deref()), (401, Some("Bearer")), "{r:?}");
    assert_eq!(post_json(&url, "mg_not-a-key", &good).status, 401);
    assert_eq!(post_json(&url, "Basic abc", &good).status, 401);
    let r = post_json(&url, &key, &with("from", "a@other.test".into()));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("forbidden_sender")), "{r:?}");
    // Malformed input, each naming its field.
    let auth = format!("Authorization: Bearer {key}");
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "{\"from\": ",
    ]);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("malformed_json")), "{r:?}");
    let r = curl(&["-X", "POST", &url, "-H", &auth, "-H", "Content-Type: text/plain", "--data-binary", "hello"]);
    assert_eq!(r.status, 415, "{r:?}");
    // A member given twice: readers disagree about which counts, so neither does.
    for (body, pointer) in [
        (r#"{"from": "a@shop.test", "to": "x@remote.test", "text": "t", "to": "y@remote.test"}"#, "/to"),
        (
            r#"{"from": "a@shop.test", "to": "x@remote.test", "text": "t", "metadata": {"k": "1", "\u006b": "2"}}"#,
            "/metadata/k",
        ),
    ] {
        let r = curl(&["-X", "POST", &url, "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", body]);
        assert_eq!((r.status, r.pointer().as_str()), (400, pointer), "{body}: {r:?}");
        assert!(r.json()["error"]["message"].as_str().unwrap_or_default().contains("more than once"), "{r:?}");
    }
    // A raw message's tags (the query's) are held to the JSON tags' rules.
    let raw = "From: a@shop.test\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nbody\r\n";
    let long = "t".repeat(129);
    let many = vec!["tag=t"; 21].join("&");
    for query in ["tag=a%0D%0Ab", "tag=", &format!("tag={long}"), &many] {
        let r = curl(&[
            "-X",
            "POST",
            &format!("{url}?{query}"),
            "-H",
            &auth,
            "-H",
            "Content-Type: message/rfc822",
            "--data-binary",
            raw,
        ]);
        assert_eq!((r.status, r.pointer().as_str()), (400, "?tag"), "{query}: {r:?}");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("from");
    assert_eq!(post_json(&url, &key, &missing).pointer(), "/from");
    assert_eq!(post_json(&url, &key, &with("to", serde_json::json!([]))).pointer(), "/to");
    assert_eq!(
        post_json(&url, &key, &with("to", serde_json::json!(["x@remote.test", "not an address"]))).pointer(),
        "/to/1"
    );
    for bad in ["s\r\nBcc: victim@remote.test", "s\nX-Injected: 1", "s\rX: 1", "s\u{0}"] {
        let r = post_json(&url, &key, &with("subject", bad.into()));
        assert_eq!((r.status, r.pointer()), (400, "/subject".to_string()), "{bad:?}: {r:?}");
        let r = post_json(&url, &key, &with("headers", serde_json::json!({"X-Note": bad})));
        assert_eq!((r.status, r.pointer()), (400, "/headers/X-Note".to_string()), "{bad:?}: {r:?}");
    }
    let r = post_json(&url, &key, &with("headers", serde_json::json!({"Bad\r\nName": "v"})));
    assert_eq!(r.status, 400, "{r:?}");
    let r = post_json(
        &url,
        &key,
        &with("attachments", serde_json::json!([{"filename": "a.bin", "content_base64": "not*base64"}])),
    );
    assert_eq!(r.pointer(), "/attachments/0/content_base64", "{r:?}");
    let many: Vec<String> = (0..10_000).map(|i| format!("r{i}@remote.test")).collect();
    let r = post_json(&url, &key, &with("to", many.into()));
    assert_eq!((r.status, r.pointer()), (400, "/to".to_string()), "{r:?}");
    // A body of many small values is refused while it is read, not built into a tree many
    // times its size; so are a million recipients.
    let zeros = format!("[{}0]", "0,".repeat(1_000_000));
    let r = post_json(&url, &key, &with("metadata", serde_json::from_str(&zeros).unwrap()));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("too_many_values")), "{r:?}");
    let million: Vec<String> = (0..1_000_000).map(|i| format!("r{i}@remote.test")).collect();
    let r = post_json(&url, &key, &with("to", million.into()));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("too_many_values")), "{r:?}");
    // 100 MB: refused from its Content-Length, and also when it comes chunked, without one.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all(b"{\"from\":\"a@shop.test\",\"to\":\"x@remote.test\",\"text\":\"").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}").unwrap();
    }
    let file = format!("@{}", big.display());
    let r = curl(&["-X", "POST", &url, "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &file]);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (413, Some("too_large")), "{r:?}");
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &file,
    ]);
    assert_eq!(r.status, 413, "{r:?}");
    // Wrong method, wrong path.
    assert_eq!(curl(&[&url]).status, 405);
    assert_eq!(curl(&[&url.replace("messages", "nothing")]).status, 404);
    // The rate: two a minute, then 429 with the time to wait.
    for _ in 0..2 {
        let r = post_json(&url, &limited, &good);
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = post_json(&url, &limited, &good);
    let wait: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(r.status == 429 && (1..=30).contains(&wait), "{r:?}");
    // After all that the server still serves, and only the accepted messages were sent.
    let r = post_json(&url, &key, &good);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(sink.wait_for(3, T).len(), 3);
    // A revoked key stops working without a reload.
    let out = Command::new(binary())
        .args(["api-key", "revoke", "shop", "--config"])
        .arg(gw.path("mailgate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(wait_for(T, || (post_json(&url, &key, &good).status == 401).then_some(())).is_some());
    let list =
        Command::new(binary()).args(["api-key", "list", "--config"]).arg(gw.path("mailgate.toml")).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("revoked") && list.contains("slow") && !list.contains(&key), "{list}");
    assert!(
        !std::fs::read_to_string(gw.path("spool/api-keys.json")).unwrap().contains(&key[3..]),
        "only hashes stored"
    );
}

#[test]
fn idempotent_repeats_send_once_even_across_a_restart() {
    let sink = Sink::start();
    let (mut gw, url) = gateway(&sink, "");
    let key = create_key(&gw, "shop", &[]);
    let body = serde_json::json!({"from": "a@shop.test", "to": "once@remote.test", "text": "t", "idempotency_key": "order-42"});
    let first = post_json(&url, &key, &body);
    assert_eq!(first.status, 202, "{first:?}");
    let again = post_json(&url, &key, &body);
    assert_eq!((again.status, &again.body), (202, &first.body));
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    // The same key from the header, on a raw message: also the first answer.
    let r = curl(&[
        "-X",
        "POST",
        &format!("{url}?from=a@shop.test&to=once@remote.test"),
        "-H",
        &format!("Authorization: Bearer {key}"),
        "-H",
        "Content-Type: message/rfc822",
        "-H",
        "Idempotency-Key: order-42",
        "--data-binary",
        "Subject: x\r\n\r\ny\r\n",
    ]);
    assert_eq!(r.body, first.body);
    gw.restart();
    let port: u16 = url.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(wait_for(T, || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_some());
    let after = post_json(&url, &key, &body);
    assert_eq!((after.status, &after.body), (202, &first.body), "remembered across a restart");
    let other = post_json(
        &url,
        &key,
        &serde_json::json!({"from": "a@shop.test", "to": "once@remote.test", "text": "t", "idempotency_key": "order-43"}),
    );
    assert_ne!(other.json()["id"], first.json()["id"]);
    assert_eq!(sink.wait_for(2, T).len(), 2);
    assert!(
        wait_for(Duration::from_secs(2), || (sink.received().len() > 2).then_some(())).is_none(),
        "two sends, not more"
    );
}

/// rcpt-allow taking recipients at remote.test only (API clients are not trusted).
fn rcpt_allow() -> String {
    Gateway::plugin(
        "rcpt-allow",
        "rcpt-allow",
        "stages = [\"rcpt\"]",
        "domains = [\"remote.test\"]\ncheck_trusted = true",
    )
}

#[test]
fn pipeline_refusals_come_back_with_the_smtp_reply() {
    let sink = Sink::start();
    let (gw, url) = gateway(&sink, &rcpt_allow());
    let key = create_key(&gw, "shop", &[]);
    let r = post_json(
        &url,
        &key,
        &serde_json::json!({"from": "a@shop.test", "to": ["ok@remote.test", "x@elsewhere.test"], "text": "t"}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let v = r.json();
    assert_eq!(v["recipients"][0]["status"], "queued");
    assert_eq!(v["recipients"][1]["status"], "refused");
    assert_eq!(v["recipients"][1]["smtp"]["code"], 550);
    let m = sink.wait_for_rcpt("ok@remote.test", T);
    assert_eq!(m.rcpts, ["ok@remote.test"]);
    let r = post_json(&url, &key, &serde_json::json!({"from": "a@shop.test", "to": "x@elsewhere.test", "text": "t"}));
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["error"]["recipients"][0]["smtp"]["enhanced"], "5.1.1");
    drop(gw);

    // A gateway whose verdict plugin answers `verdict` with `reply` (code, enhanced, text) at
    // `stage`, and its answer to one message.
    let answer = |stage: &str, verdict: &str, (code, enhanced, text): (u16, &str, &str)| {
        let config = format!(
            "stage = \"{stage}\"\nverdict = \"{verdict}\"\ncode = {code}\nenhanced = \"{enhanced}\"\ntext = \"{text}\""
        );
        let (gw, url) =
            gateway(&sink, &Gateway::plugin("verdict", "verdict", &format!("stages = [\"{stage}\"]"), &config));
        let key = create_key(&gw, "shop", &[]);
        let r = post_json(&url, &key, &serde_json::json!({"from": "a@shop.test", "to": "y@remote.test", "text": "t"}));
        (gw, r)
    };
    let (gw, r) = answer("data", "reject", (554, "5.7.1", "content refused"));
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(
        r.json()["error"]["smtp"],
        serde_json::json!({"code": 554, "enhanced": "5.7.1", "text": "content refused"})
    );
    assert!(gw.log().contains("message refused"), "{}", gw.log());
    drop(gw);

    // Every recipient refused for now is a refusal for now: 503, to be tried again.
    let (_gw, r) = answer("rcpt", "tempfail", (450, "4.2.0", "try later"));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("deferred")), "{r:?}");
    assert_eq!(r.json()["error"]["recipients"][0]["smtp"]["code"], 450);
    assert!(r.header("retry-after").is_some(), "{r:?}");
}

#[test]
fn every_recipient_gets_a_receipt_in_the_events() {
    let sink = Sink::start();
    sink.set_rcpt_reply("bad@remote.test", "550 5.1.1 No such user here");
    sink.set_rcpt_reply("later@remote.test", "451 4.2.0 Try again later");
    let admin = free_port();
    let (mut gw, url) = gateway(&sink, &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    let key = create_key(&gw, "shop", &[]);
    let other = create_key(&gw, "other", &[]);
    let r = post_json(
        &url,
        &key,
        &serde_json::json!({"from": "a@shop.test", "to": ["ok@remote.test", "bad@remote.test", "later@remote.test"],
            "text": "t", "tags": ["welcome"], "metadata": {"user": "17"}}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let events_url = url.replace("messages", "events");
    // The first attempt: delivered, bounced, deferred.
    let first = wait_for(T, || {
        let v = get(&format!("{events_url}?since=0"), &key).json();
        (v["events"].as_array()?.iter().filter(|e| e["kind"] == "deferred").count() == 1).then_some(v)
    })
    .unwrap_or_else(|| panic!("no deferral seen:\n{}", gw.log()));
    sink.clear_rcpt_reply("later@remote.test");
    let kinds = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["kind"].as_str().unwrap().to_string(), e["recipient"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    let k = kinds(&first);
    assert_eq!(k[0], ("received".to_string(), String::new()), "{k:?}");
    for want in [("delivered", "ok@remote.test"), ("bounced", "bad@remote.test"), ("deferred", "later@remote.test")] {
        assert!(k.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {k:?}");
    }
    let evs = first["events"].as_array().unwrap();
    for e in evs {
        assert_eq!((e["queue_id"].as_str(), e["api_key"].as_str()), (Some(id.as_str()), Some("shop")));
        assert_eq!(
            (&e["tags"], &e["metadata"]),
            (&serde_json::json!(["welcome"]), &serde_json::json!({"user": "17"})),
            "echoed in every event"
        );
    }
    let bounced = evs.iter().find(|e| e["kind"] == "bounced").unwrap();
    assert_eq!(bounced["class"], "invalid_recipient");
    assert!(bounced["reply"].as_str().unwrap().starts_with("550 5.1.1"), "{bounced}");
    let delivered = evs.iter().find(|e| e["kind"] == "delivered").unwrap();
    assert!(
        delivered["reply"].as_str().unwrap().starts_with("250") && delivered["remote_host"].is_string(),
        "{delivered}"
    );
    let deferred = evs.iter().find(|e| e["kind"] == "deferred").unwrap();
    assert!(deferred["next_attempt"].as_u64().unwrap() > deferred["at"].as_u64().unwrap());
    // The retry delivers the deferred recipient; the message's receipt says so.
    let next = first["next"].as_u64().unwrap();
    let later = wait_for(T, || {
        let v = get(&format!("{events_url}?since={next}"), &key).json();
        v["events"].as_array()?.iter().any(|e| e["kind"] == "delivered").then_some(v)
    })
    .unwrap_or_else(|| panic!("no retry delivery:\n{}", gw.log()));
    // (A retry that came before the sink was told to accept is one more deferral.)
    let k = kinds(&later);
    assert!(k.iter().all(|(_, r)| r == "later@remote.test") && k.last().unwrap().0 == "delivered", "{k:?}");
    let msg_url = format!("{url}/{id}");
    let m = wait_for(T, || {
        let v = get(&msg_url, &key).json();
        (v["state"] == "finished").then_some(v)
    })
    .expect("the message is finished");
    let states: Vec<(&str, &str)> = m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["email"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("ok@remote.test", "delivered"), ("bad@remote.test", "bounced"), ("later@remote.test", "delivered")]
    );
    // Another key sees neither the message nor its events.
    assert_eq!(get(&msg_url, &other).status, 404);
    assert_eq!(get(&format!("{events_url}?since=0"), &other).json()["events"], serde_json::json!([]));
    // kill -9: every event is still there afterwards, and new ones follow them.
    let before = get(&format!("{events_url}?since=0&limit=1000"), &key).json()["events"].as_array().unwrap().len();
    gw.kill9();
    gw.start_again();
    let port: u16 = url.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(wait_for(T, || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_some());
    let after = get(&format!("{events_url}?since=0&limit=1000"), &key).json();
    assert_eq!(after["events"].as_array().unwrap().len(), before, "{after}");
    let r = post_json(&url, &key, &serde_json::json!({"from": "a@shop.test", "to": "ok@remote.test", "text": "t"}));
    assert_eq!(r.status, 202);
    let seqs = wait_for(T, || {
        let v = get(&format!("{events_url}?since=0&limit=1000"), &key).json();
        let s: Vec<u64> = v["events"].as_array()?.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        (s.len() >= before + 2).then_some(s)
    })
    .unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The operator's view: `mailgate events tail --json` through the admin endpoint.
    let out = Command::new(binary())
        .args(["events", "tail", "--json", "--config"])
        .arg(gw.path("mailgate.toml"))
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && lines.lines().count() >= before + 2, "{lines}");
    assert!(lines.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

/// `POST /api/v1/messages/batch` with `body` as it is (a batch may hold what `json!` cannot
/// write, such as a member given twice).
fn post_batch(url: &str, key: &str, body: &str) -> mailgate_tests::http::Resp {
    batch_request(url, key, &["Content-Type: application/json"], body)
}

/// `POST /api/v1/messages/batch` with these request header fields.
fn batch_request(url: &str, key: &str, fields: &[&str], body: &str) -> mailgate_tests::http::Resp {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let (auth, data, url) =
        (format!("Authorization: Bearer {key}"), format!("@{}", file.path().display()), format!("{url}/batch"));
    let mut args = vec!["-X", "POST", &url, "-H", &auth];
    for f in fields {
        args.extend(["-H", f]);
    }
    args.extend(["--data-binary", &data]);
    curl(&args)
}

#[test]
fn batches_answer_each_message_as_a_request_of_its_own() {
    let sink = Sink::start();
    let (gw, url) = gateway(&sink, &rcpt_allow());
    let key = create_key(&gw, "shop", &["--allow-from", "shop.test"]);
    let msg = |to: &str, extra: &str| {
        format!(r#"{{"from": "a@shop.test", "to": {to}, "subject": "s", "text": "hello"{extra}}}"#)
    };
    let batch = [
        msg(r#"["one@remote.test", "x@elsewhere.test"]"#, ""),
        msg("5", ""),
        r#"{"from": "a@other.test", "to": "two@remote.test", "text": "t"}"#.to_string(),
        msg(r#""y@elsewhere.test""#, ""),
        msg(r#""three@remote.test""#, r#", "idempotency_key": "order-7""#),
        msg(r#""four@remote.test""#, r#", "idempotency_key": "order-7""#),
        msg(r#""five@remote.test""#, r#", "subject": "again""#),
        r#"{"from": "a@shop.test", "to": "six@remote.test", "subject": "a\r\nBcc: evil@remote.test", "text": "t"}"#
            .to_string(),
    ];
    let r = post_batch(&url, &key, &format!("[{}]", batch.join(",")));
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [202, 400, 403, 422, 202, 400, 400, 400], "{v:#}");
    let pointer = |i: usize| results[i]["error"]["pointer"].as_str().unwrap_or("<none>").to_string();
    assert_eq!(results[0]["recipients"][1]["smtp"]["code"], 550, "{v:#}");
    assert_eq!(pointer(1), "/1/to");
    assert_eq!(results[2]["error"]["code"], "forbidden_sender");
    assert_eq!(results[3]["error"]["recipients"][0]["smtp"]["enhanced"], "5.1.1");
    assert_eq!(
        (pointer(5), pointer(6), pointer(7)),
        ("/5/idempotency_key".into(), "/6/subject".into(), "/7/subject".into())
    );
    // The accepted ones, and only they, are sent, each a message of its own.
    let got = sink.wait_for(2, T);
    let mut rcpts: Vec<_> = got.iter().map(|m| m.rcpts.join(",")).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["one@remote.test", "three@remote.test"]);
    assert_ne!(results[0]["id"], results[4]["id"]);
    // A message's idempotency key works across requests, single or batch.
    let again = post_batch(&url, &key, &format!("[{}]", batch[4]));
    assert_eq!(again.status, 200, "{again:?}");
    let first = &again.json()["results"][0];
    assert_eq!((first["id"].clone(), first["replayed"].clone()), (results[4]["id"].clone(), true.into()));

    // What concerns the request as a whole is its status, and nothing is sent.
    let one = msg(r#""seven@remote.test""#, "");
    let whole = |body: &str, k: &str| post_batch(&url, k, body);
    let r = whole(&one, &key);
    assert_eq!((r.status, r.pointer()), (400, String::new()), "an object, not an array: {r:?}");
    assert_eq!(whole("[]", &key).status, 400);
    let many = format!("[{}]", vec![one.as_str(); 501].join(","));
    let r = whole(&many, &key);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("at most 500"), "{r:?}");
    assert_eq!(whole("[{\"from\": ", &key).json()["error"]["code"], "malformed_json");
    assert_eq!(whole(&format!("[{one}]"), "mg_not-a-key").status, 401);
    let r = batch_request(&url, &key, &["Content-Type: message/rfc822"], "x");
    assert_eq!(r.status, 415, "{r:?}");
    let fields = ["Content-Type: application/json", "Idempotency-Key: k"];
    let r = batch_request(&url, &key, &fields, &format!("[{one}]"));
    assert_eq!((r.status, r.pointer()), (400, "Idempotency-Key".to_string()), "{r:?}");
    // Every message counts against the key's rate, and a batch takes all it needs or none.
    let slow = create_key(&gw, "slow", &["--allow-from", "shop.test", "--rate", "3/min"]);
    let r = whole(&format!("[{}]", [one.as_str(); 4].join(",")), &slow);
    assert_eq!((r.status, r.header("retry-after")), (429, None), "more than the rate ever allows: {r:?}");
    let r = whole(&format!("[{}]", [one.as_str(); 3].join(",")), &slow);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["results"].as_array().unwrap().iter().all(|m| m["status"] == 202), "{r:?}");
    let r = whole(&format!("[{one}]"), &slow);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(sink.wait_for(5, T).len(), 5, "the three of the batch that fit the rate");
    assert!(
        wait_for(Duration::from_secs(2), || (sink.received().len() > 5).then_some(())).is_none(),
        "nothing else was sent"
    );
}

/// A listener passes on at most `max_connections` messages at once, batches included, and
/// the plugin engine has instances for all of them besides the SMTP sessions': concurrent
/// batches on a gateway with room for one SMTP session all get through their pipeline, with
/// many connections (each batch passing eight messages on at once) and with few (a batch
/// cannot make its listener take more than its connections would).
#[test]
fn concurrent_batches_have_plugin_instances_for_every_message() {
    for connections in [32, 4] {
        let sink = Sink::start();
        let plugin = Gateway::plugin("rcpt-allow", "rcpt-allow", "stages = [\"rcpt\"]", "domains = [\"remote.test\"]");
        let extra = format!("max_connections = {connections}\n[limits]\nmax_sessions = 1\n{plugin}");
        let (gw, url) = gateway(&sink, &extra);
        let key = create_key(&gw, "shop", &[]);
        let batch: Vec<String> =
            (0..20).map(|i| format!(r#"{{"from": "a@shop.test", "to": "r{i}@remote.test", "text": "t"}}"#)).collect();
        let batch = format!("[{}]", batch.join(","));
        let answers: Vec<_> = std::thread::scope(|s| {
            let sends: Vec<_> = (0..6).map(|_| s.spawn(|| post_batch(&url, &key, &batch))).collect();
            sends.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for r in &answers {
            assert_eq!(r.status, 200, "{r:?}");
            let statuses: Vec<_> =
                r.json()["results"].as_array().unwrap().iter().map(|m| m["status"].clone()).collect();
            assert!(statuses.iter().all(|s| s == 202), "{connections} connections: {statuses:?}\n{}", gw.log());
        }
        assert_eq!(sink.wait_for(120, T).len(), 120);
        assert!(!gw.log().contains("plugin failed"), "{}", gw.log());
    }
}

/// A batch's messages are counted against the content memory budget as they are held: those
/// that fit are sent, the rest get `503` with `Retry-After`, and nothing stays counted once
/// the sent ones are delivered (the next batch fits whole).
#[test]
fn a_batch_beyond_the_memory_budget_sends_what_fits_and_keeps_nothing() {
    let sink = Sink::start();
    let (gw, url) = gateway(&sink, "[limits]\ncontent_memory = 400000");
    let key = create_key(&gw, "shop", &[]);
    // 40 KB of UTF-8 text each: base64 in the built message, ~55 KB; eight do not fit.
    let message = |i: usize| serde_json::json!({"from": "a@shop.test", "to": format!("r{i}@remote.test"), "text": "é".repeat(20_000)});
    let batch = |n: usize| serde_json::Value::from((0..n).map(message).collect::<Vec<_>>()).to_string();
    let r = post_batch(&url, &key, &batch(8));
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    let sent = results.iter().take_while(|m| m["status"] == 202).count();
    // The body (~330 KB) is not counted once read: only the built messages are, and seven
    // of ~55 KB fit in 400 KB (capacity may round one away).
    assert!((5..8).contains(&sent), "all but the last one or two fit: {v:#}");
    for m in &results[sent..] {
        assert_eq!((m["status"].as_u64(), m["error"]["code"].as_str()), (Some(503), Some("unavailable")), "{v:#}");
        assert!(m["retry_after"].as_u64().is_some(), "{v:#}");
    }
    assert_eq!(sink.wait_for(sent, T).len(), sent);
    // Once those are delivered, their memory is free again: a batch that fits goes whole.
    let counted = || {
        let r = post_batch(&url, &key, &batch(4));
        let all = r.json()["results"].as_array().is_some_and(|m| m.iter().all(|m| m["status"] == 202));
        all.then_some(())
    };
    assert!(wait_for(T, counted).is_some(), "the budget was given back\n{}", gw.log());
}

/// A client that gives up while its message is in the pipeline does not stop it half-way
/// (hyper drops a request's future when its client goes away): the message is delivered, and a
/// repeat with its idempotency key gets the answer the client missed and sends nothing.
#[test]
fn a_client_that_gives_up_mid_request_does_not_stop_its_message() {
    let sink = Sink::start();
    // misbehave spins at on-data until its 1.5 s budget ends; `skip` then lets the message on.
    let slow = Gateway::plugin(
        "misbehave",
        "misbehave",
        "stages = [\"data\"]\non_error = \"skip\"\ncpu_budget = \"1500ms\"",
        "mode = \"loop\"\nstage = \"data\"",
    );
    let (gw, url) = gateway(&sink, &slow);
    let key = create_key(&gw, "shop", &[]);
    let body =
        serde_json::json!({"from": "a@shop.test", "to": "late@remote.test", "text": "t", "idempotency_key": "late-1"});
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "0.3", "-X", "POST", &url, "-H", &format!("Authorization: Bearer {key}")])
        .args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl gave up before the answer: {out:?}");
    let m = sink.wait_for_rcpt("late@remote.test", T);
    assert_eq!(m.rcpts, ["late@remote.test"], "{}", gw.log());
    let again = post_json(&url, &key, &body);
    assert_eq!((again.status, again.header("idempotent-replayed").as_deref()), (202, Some("true")), "{again:?}");
    assert!(wait_for(Duration::from_secs(2), || (sink.received().len() > 1).then_some(())).is_none(), "sent once");
}
