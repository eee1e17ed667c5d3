//! The queue CLI over the admin API: a message deferred by a 4xx sink is listed, shown,
//! retried after the sink is fixed, and delivered; hold/release, remove and bounce work.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailgate_tests::clients::swaks;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary()).args(args).arg("--config").arg(cfg).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn queue(cfg: &Path) -> Vec<serde_json::Value> {
    let (ok, out) = cli(cfg, &["queue", "list", "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// Sends to `rcpt` and returns the queue id once the first attempt has deferred it.
fn deferred(gw: &Gateway, cfg: &Path, rcpt: &str) -> String {
    assert!(swaks(gw.port, &["--to", rcpt, "--from", "owner@sender.test"]).status.success());
    wait_for(T, || {
        queue(cfg)
            .into_iter()
            .find(|m| m["recipients"][0]["address"] == rcpt && m["state"] == "deferred")
            .map(|m| m["id"].as_str().unwrap().to_string())
    })
    .unwrap_or_else(|| panic!("{rcpt} deferred"))
}

#[test]
fn queue_round_trip_through_the_cli() {
    let sink = Sink::start();
    for r in ["stuck@remote.test", "held@remote.test", "gone@remote.test", "bounced@remote.test"] {
        sink.set_rcpt_reply(r, "451 4.3.0 not today");
    }
    let admin = free_port();
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"s3cret\"\n\n[queue]\nretry_schedule = [\"1h\"]\n"),
    );
    let cfg = gw.path("mailgate.toml");

    let id = deferred(&gw, &cfg, "stuck@remote.test");
    let (ok, out) = cli(&cfg, &["queue", "list", "--domain", "remote.test", "--state", "deferred"]);
    assert!(ok && out.contains(&id) && out.contains("451 4.3.0 not today"), "{out}");
    let (ok, out) = cli(&cfg, &["queue", "show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && shown["id"] == id.as_str() && shown["attempts"] == 1, "{out}");
    assert_eq!(shown["recipients"][0]["class"], "other", "4.3.0 says nothing more specific: {out}");
    // Fixed next hop, retried now instead of in an hour.
    sink.clear_rcpt_reply("stuck@remote.test");
    let (ok, out) = cli(&cfg, &["queue", "retry", &id]);
    assert!(ok, "{out}");
    sink.wait_for_rcpt("stuck@remote.test", T);
    assert!(wait_for(T, || queue(&cfg).iter().all(|m| m["id"] != id.as_str()).then_some(())).is_some());

    // Hold: not tried, not retried; release: tried again.
    let id = deferred(&gw, &cfg, "held@remote.test");
    assert!(cli(&cfg, &["queue", "hold", &id]).0);
    assert!(queue(&cfg).iter().any(|m| m["id"] == id.as_str() && m["state"] == "held" && m["held"] == true));
    let (ok, out) = cli(&cfg, &["queue", "retry", &id]);
    assert!(!ok && out.contains("is held"), "{out}");
    sink.clear_rcpt_reply("held@remote.test");
    assert!(cli(&cfg, &["queue", "release", &id]).0);
    sink.wait_for_rcpt("held@remote.test", T);

    // Remove: gone, never delivered, no DSN.
    let id = deferred(&gw, &cfg, "gone@remote.test");
    assert!(cli(&cfg, &["queue", "remove", &id]).0);
    assert!(queue(&cfg).iter().all(|m| m["id"] != id.as_str()));
    let (ok, _) = cli(&cfg, &["queue", "show", &id]);
    assert!(!ok);

    // Bounce: the sender gets a DSN now.
    let id = deferred(&gw, &cfg, "bounced@remote.test");
    assert!(cli(&cfg, &["queue", "bounce", &id]).0);
    let dsn = sink.wait_for_rcpt("owner@sender.test", T);
    assert!(dsn.text().contains("Final-Recipient: rfc822; bounced@remote.test"), "{}", dsn.text());
    assert!(dsn.text().contains("returned to the sender by the administrator"));
    assert!(sink.received().iter().all(|m| !m.rcpts.contains(&"gone@remote.test".to_string())));

    // Status, and the token is required.
    let (ok, out) = cli(&cfg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && status["listeners"][0]["name"] == "mx", "{out}");
    let (ok, out) = mailgate_tests::clients::python(
        admin,
        r#"
import os, urllib.request, urllib.error
try:
    urllib.request.urlopen("http://127.0.0.1:%s/queue" % os.environ["PORT"]); raise SystemExit("no auth needed")
except urllib.error.HTTPError as e:
    assert e.code == 401, e
"#,
    );
    assert!(ok, "{out}");
}

/// A quarantined message survives a restart, stays out of delivery, and is deleted (no
/// delivery, no DSN) once `queue.quarantine_max_age` has passed.
#[test]
fn quarantine_survives_a_restart_then_expires() {
    let sink = Sink::start();
    let admin = free_port();
    let quarantine = Gateway::plugin(
        "verdict",
        "verdict",
        "stages = [\"data\"]",
        "stage = \"data\"\nverdict = \"quarantine\"\ncode = 250\nenhanced = \"2.0.0\"\ntext = \"held for review\"",
    );
    let mut gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[queue]\nquarantine_max_age = \"6s\"\n{quarantine}"),
    );
    let cfg = gw.path("mailgate.toml");
    assert!(swaks(gw.port, &["--to", "q@remote.test", "--from", "owner@sender.test"]).status.success());
    let listed = |cfg: &Path| {
        let (ok, out) = cli(cfg, &["quarantine", "list", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
    };
    let id = wait_for(T, || listed(&cfg).first().map(|m| m["id"].as_str().unwrap().to_string())).expect("quarantined");
    gw.restart();
    let after = wait_for(T, || std::panic::catch_unwind(|| listed(&cfg)).ok()).unwrap();
    assert!(after.iter().any(|m| m["id"] == id.as_str()), "lost on restart: {after:?}");
    assert!(gw.wait_log("quarantine expired: message deleted", Duration::from_secs(20)), "{}", gw.log());
    assert!(listed(&cfg).is_empty());
    assert!(sink.received().is_empty(), "an expired quarantine was delivered or bounced");
}

/// A message delivered to one recipient and deferred for another is listed with the reason it
/// waits, not the delivered recipient's 250.
#[test]
fn queue_list_shows_why_a_partly_delivered_message_waits() {
    let sink = Sink::start();
    sink.set_rcpt_reply("later@remote.test", "451 4.3.0 try later");
    let admin = free_port();
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[queue]\nretry_schedule = [\"1h\"]\n"),
    );
    let cfg = gw.path("mailgate.toml");
    assert!(swaks(gw.port, &["--to", "now@remote.test,later@remote.test", "--from", "o@sender.test"]).status.success());
    sink.wait_for_rcpt("now@remote.test", T);
    let listed = wait_for(T, || {
        let (ok, out) = cli(&cfg, &["queue", "list"]);
        (ok && out.contains("later@remote.test (pending)")).then_some(out)
    })
    .expect("the message is listed as deferred");
    assert!(listed.contains("451 4.3.0 try later"), "{listed}");
    assert!(!listed.contains("250 2.0.0"), "{listed}");
    // Human output by default, JSON with --json: status and queue show.
    let id = listed.split_whitespace().next().unwrap().to_string();
    let (ok, shown) = cli(&cfg, &["queue", "show", &id]);
    assert!(ok && !shown.contains('{'), "{shown}");
    assert!(shown.contains("  later@remote.test  pending  451 4.3.0 try later  [127.0.0.1]"), "{shown}");
    let (ok, status) = cli(&cfg, &["status"]);
    assert!(ok && !status.contains('{') && status.contains("queue: 1 deferred"), "{status}");
    let (ok, status) = cli(&cfg, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|_| panic!("{status}"));
    assert!(ok && v["queue"]["deferred"] == 1, "{status}");
}
