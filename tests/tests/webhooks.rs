//! Webhooks end to end: a receiver written with Python's `http.server` checks each POST's
//! Standard Webhooks signature with `hmac` and collects the events. While it is down the
//! events wait; the gateway is killed with SIGKILL between the delivery and the webhook send;
//! after the restart every event still arrives, signed, each id once at least.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailgate_tests::http::{create_key, post_json, with_api};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

const RECEIVER: &str = r#"
import os, sys, json, hmac, hashlib, base64, time, http.server
key = base64.b64decode(os.environ['SECRET'][len('whsec_'):])
out = open(os.environ['OUT'], 'a')
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['content-length']))
        if os.path.exists(os.environ['FAIL']):
            out.write(json.dumps({"refused": True}) + "\n"); out.flush()
            self.send_response(503); self.end_headers(); return
        mid, ts = self.headers['webhook-id'], self.headers['webhook-timestamp']
        want = base64.b64encode(hmac.new(key, (mid + '.' + ts + '.').encode() + body, hashlib.sha256).digest()).decode()
        sigs = [s.split(',', 1)[1] for s in self.headers['webhook-signature'].split(' ')]
        ok = want in sigs and abs(time.time() - int(ts)) < 300
        out.write(json.dumps({"ok": ok, "id": mid, "body": json.loads(body)}) + "\n"); out.flush()
        self.send_response(204 if ok else 401); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"#;

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver's log: one JSON object per POST.
fn posts(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Starts the receiver on a fresh port: it, its port, and the path of its log. While the file
/// `fail` exists it answers 503.
fn receiver(dir: &std::path::Path, fail: &std::path::Path) -> (Receiver, u16, std::path::PathBuf) {
    let out = dir.join("posts.jsonl");
    let port = free_port();
    let r = Receiver(
        Command::new("python3")
            .arg("-c")
            .arg(RECEIVER)
            .env("SECRET", SECRET)
            .env("OUT", &out)
            .env("FAIL", fail)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    assert!(wait_for(T, || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_some());
    (r, port, out)
}

/// The signed events the receiver accepted about message `id`.
fn events_of(out: &std::path::Path, id: &str) -> Vec<serde_json::Value> {
    posts(out)
        .into_iter()
        .filter(|p| p["ok"] == true)
        .flat_map(|p| p["body"]["data"]["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["queue_id"] == id)
        .collect()
}

/// A recipient deferred, then delivered, with a delay notice to the sender in between: the
/// receiver gets `deferred`, `delay_notice` and `delivered` for it, in that order.
#[test]
fn deferred_a_delay_notice_then_delivered_reach_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let (_receiver, port, out) = receiver(dir.path(), &dir.path().join("never"));
    let sink = Sink::start();
    sink.set_rcpt_reply("later@remote.test", "451 4.2.1 mailbox busy");
    let (gw, url) = with_api(
        &sink,
        &format!(
            "\n[[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nsecret = \"{SECRET}\"\n\
             events = [\"deferred\", \"delay_notice\", \"delivered\"]\n\n[queue]\nretry_schedule = [\"1s\"]\ndelay_warning = \"1s\"\n"
        ),
    );
    let key = create_key(&gw, "shop", &[]);
    let r =
        post_json(&url, &key, &serde_json::json!({"from": "a@shop.test", "to": ["later@remote.test"], "text": "t"}));
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let noticed = wait_for(T, || events_of(&out, &id).iter().any(|e| e["kind"] == "delay_notice").then_some(()));
    assert!(noticed.is_some(), "{:?}\n{}", posts(&out), gw.log());
    sink.clear_rcpt_reply("later@remote.test");
    let got = wait_for(T, || {
        let ev = events_of(&out, &id);
        ev.iter().any(|e| e["kind"] == "delivered").then_some(ev)
    })
    .unwrap_or_else(|| panic!("not delivered: {:?}\n{}", posts(&out), gw.log()));
    let kinds: Vec<&str> = got.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let first = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(first("deferred") < first("delay_notice") && first("delay_notice") < first("delivered"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "delay_notice").count(), 1, "{kinds:?}");
    let d = got.iter().find(|e| e["kind"] == "deferred").unwrap();
    assert_eq!(d["reply"], "451 4.2.1 mailbox busy");
    assert_eq!(d["class"], "mailbox_full", "x.2.1: mailbox disabled, not accepting messages");
    assert!(d["next_attempt"].as_u64().is_some(), "{d}");
}

#[test]
fn events_reach_a_receiver_signed_even_after_it_was_down_and_the_gateway_killed() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let (_receiver, port, out) = receiver(dir.path(), &fail);
    let secret = SECRET;
    let sink = Sink::start();
    sink.set_rcpt_reply("gone@remote.test", "550 5.1.1 No such user");
    let (mut gw, url) = with_api(
        &sink,
        &format!(
            "\n[[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nsecret = \"{secret}\"\n\
             events = [\"received\", \"delivered\", \"bounced\"]\n"
        ),
    );
    let key = create_key(&gw, "shop", &[]);
    let r = post_json(
        &url,
        &key,
        &serde_json::json!({"from": "a@shop.test", "to": ["ok@remote.test", "gone@remote.test"], "text": "t",
            "metadata": {"order": "7"}}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    sink.wait_for_rcpt("ok@remote.test", T);
    // The receiver is down: the gateway tries, is refused, and waits.
    assert!(wait_for(T, || posts(&out).iter().any(|p| p["refused"] == true).then_some(())).is_some(), "{}", gw.log());
    // Killed before any event got through; the receiver comes back; the gateway restarts.
    gw.kill9();
    std::fs::remove_file(&fail).unwrap();
    gw.start_again();
    let got = wait_for(T, || {
        // (The DSN to the sender is a message of its own, with events of its own.)
        let events = events_of(&out, &id);
        let kinds: HashSet<String> = events.iter().map(|e| e["kind"].as_str().unwrap_or("").to_string()).collect();
        (["received", "delivered", "bounced"].iter().all(|k| kinds.contains(*k))).then_some(events)
    })
    .unwrap_or_else(|| panic!("events did not arrive: {:?}\n{}", posts(&out), gw.log()));
    assert!(posts(&out).iter().all(|p| p["refused"] == true || p["ok"] == true), "every signature verifies");
    for e in &got {
        assert_eq!(e["metadata"]["order"], "7", "metadata echoed");
        assert!(
            ["received", "delivered", "bounced"].contains(&e["kind"].as_str().unwrap()),
            "only the kinds asked for"
        );
    }
    let bounced = got.iter().find(|e| e["kind"] == "bounced").unwrap();
    assert_eq!(
        (bounced["recipient"].as_str(), bounced["class"].as_str()),
        (Some("gone@remote.test"), Some("invalid_recipient"))
    );
    // A kill -9 just after a delivery, before the spool recorded it as done, repeats the
    // delivery after the restart (at-least-once): every delivery the sink saw has its events,
    // each with its own id, and nothing else. (The receiver de-duplicates resent events by id.)
    let deliveries = || sink.received().iter().filter(|m| m.rcpts.iter().any(|r| r == "ok@remote.test")).count();
    let settled = wait_for(T, || {
        let mut seen = HashSet::new();
        let events: Vec<serde_json::Value> = events_of(&out, &id)
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or("").to_string()))
            .collect();
        let n = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
        (n("delivered") == deliveries() && n("bounced") == deliveries()).then_some(events)
    })
    .unwrap_or_else(|| panic!("events and deliveries differ: {:?}\n{}", events_of(&out, &id), gw.log()));
    let n = |k: &str| settled.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(n("received"), 1, "{settled:?}");
    assert!((1..=2).contains(&deliveries()), "{settled:?}");
    assert_eq!(settled.len(), 1 + 2 * deliveries(), "three events a delivery, each id distinct: {settled:?}");
}
