//! `/metrics` scraped over HTTP by a real client and parsed as Prometheus text format; the
//! counters move with real traffic.

use std::collections::HashMap;
use std::time::Duration;

use mailgate_tests::clients::{python, swaks};
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

/// Fetches /metrics with Python's urllib and parses the text format strictly enough to fail
/// on malformed lines: `name{labels} value`, with `# HELP`/`# TYPE` comments.
fn scrape(port: u16) -> HashMap<String, f64> {
    let (ok, out) = python(
        port,
        r##"
import os, re, urllib.request
r = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % os.environ["PORT"], timeout=10)
assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r.headers
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$')
for line in r.read().decode().splitlines():
    if not line or line.startswith("#"):
        continue
    m = line_re.match(line)
    assert m, "malformed metrics line: %r" % line
    print("%s%s\t%s" % (m.group(1), m.group(2) or "", m.group(3)))
"##,
    );
    assert!(ok, "{out}");
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

fn sum(m: &HashMap<String, f64>, prefix: &str, needle: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix) && k.contains(needle)).map(|(_, v)| v).sum()
}

#[test]
fn metrics_are_scraped_and_move_with_traffic() {
    let sink = Sink::start();
    let admin = free_port();
    let plugin = Gateway::plugin(
        "verdict",
        "verdict",
        "stages = [\"rcpt\"]",
        "stage = \"rcpt\"\nverdict = \"reject\"\nrcpt = \"blocked@remote.test\"",
    );
    // Verdicts are counted at every stage, on-data and on-route included.
    let at_data =
        Gateway::plugin("verdict", "data-accept", "stages = [\"data\"]", "stage = \"data\"\nverdict = \"accept\"");
    let at_route =
        Gateway::plugin("verdict", "route-accept", "stages = [\"route\"]", "stage = \"route\"\nverdict = \"accept\"");
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{plugin}{at_data}{at_route}"),
    );
    let before = scrape(admin);
    for i in 0..3 {
        let out = swaks(gw.port, &["--to", &format!("m{i}@remote.test"), "--from", "a@sender.test"]);
        assert!(out.status.success());
    }
    let _ = swaks(gw.port, &["--to", "blocked@remote.test", "--from", "a@sender.test"]);
    sink.wait_for(3, Duration::from_secs(20));
    let after = wait_for(Duration::from_secs(10), || {
        let m = scrape(admin);
        (sum(&m, "mailgate_delivery_attempts_total", "result=\"delivered\"") >= 3.0).then_some(m)
    })
    .expect("delivery attempts counted");
    let moved = |name: &str, needle: &str| sum(&after, name, needle) - sum(&before, name, needle);
    assert_eq!(moved("mailgate_sessions_total", "listener=\"mx\""), 4.0);
    assert_eq!(moved("mailgate_messages_total", "result=\"accepted\""), 3.0);
    assert_eq!(moved("mailgate_recipients_total", "class=\"2xx\""), 3.0);
    assert!(moved("mailgate_spool_commits_total", "") >= 1.0);
    assert!(moved("mailgate_spool_fsync_seconds_count", "") >= 1.0);
    assert_eq!(moved("mailgate_plugin_verdicts_total", "verdict=\"reject\""), 1.0);
    assert_eq!(moved("mailgate_plugin_verdicts_total", "stage=\"data\""), 3.0);
    assert_eq!(moved("mailgate_plugin_verdicts_total", "stage=\"route\""), 3.0);
    assert!(sum(&after, "mailgate_plugin_call_seconds_bucket", "stage=\"rcpt\"") > 0.0);
    assert!(after.contains_key("mailgate_sessions_open"));
}

/// Failed and deferred recipients are counted by why (the class of the reply).
#[test]
fn delivery_problems_are_counted_by_class() {
    let sink = Sink::start();
    sink.set_rcpt_reply("gone@remote.test", "550 5.1.1 no such user");
    sink.set_rcpt_reply("full@remote.test", "452 4.2.2 over quota");
    let admin = free_port();
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[queue]\nretry_schedule = [\"1h\"]\n"),
    );
    for to in ["gone@remote.test", "full@remote.test"] {
        assert!(swaks(gw.port, &["--to", to, "--from", "a@sender.test"]).status.success());
    }
    let m = wait_for(Duration::from_secs(20), || {
        let m = scrape(admin);
        (sum(&m, "mailgate_delivery_problems_total", "") >= 2.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("{}", gw.log()));
    let problems = |needle: &str| sum(&m, "mailgate_delivery_problems_total", needle);
    assert_eq!(problems("class=\"invalid_recipient\""), 1.0);
    assert_eq!(problems("class=\"mailbox_full\""), 1.0);
    assert_eq!(problems("result=\"failed\""), 1.0);
    assert_eq!(problems("result=\"deferred\""), 1.0);
}

#[test]
fn json_logs_have_one_line_per_transaction_with_its_outcome() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "[log]\nformat = \"json\"\nlevel = \"info\"\n");
    assert!(swaks(gw.port, &["--to", "j@remote.test", "--from", "a@sender.test"]).status.success());
    sink.wait_for(1, Duration::from_secs(20));
    assert!(gw.wait_log("message finished", Duration::from_secs(10)));
    let lines: Vec<serde_json::Value> = gw
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let accepted: Vec<_> = lines.iter().filter(|v| v["fields"]["message"] == "message accepted").collect();
    assert_eq!(accepted.len(), 1, "{lines:?}");
    let a = accepted[0];
    assert!(a["fields"]["queue_id"].as_str().is_some_and(|s| s.len() == 16));
    assert_eq!(a["fields"]["from"], "a@sender.test");
    assert!(a["span"]["sid"].as_str().is_some(), "the session id names the line: {a}");
}

#[test]
fn a_plugin_cannot_create_metric_series_without_bound() {
    let admin = free_port();
    let memo = Gateway::plugin("memo", "memo", "stages = [\"helo\"]", "");
    let gw = Gateway::with_sink(1, &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{memo}"));
    // 300 distinct HELO names, each a new series for the memo plugin's labelled counter.
    let mut c = mailgate_tests::clients::Raw::connect(gw.port);
    for i in 0..300 {
        assert!(c.cmd(&format!("EHLO client{i}.test")).starts_with("250"));
    }
    let m = wait_for(Duration::from_secs(10), || {
        let m = scrape(admin);
        (sum(&m, "mailgate_plugin_metrics_dropped_total", "plugin=\"memo\"") >= 100.0).then_some(m)
    })
    .expect("dropped observations counted");
    let series = m.keys().filter(|k| k.starts_with("mailgate_plugin_memo_helo{")).count();
    assert_eq!(series, 200, "the cap is 200 series per plugin");
    assert_eq!(sum(&m, "mailgate_plugin_metrics_dropped_total", "plugin=\"memo\""), 100.0);
}

/// The sending API's answers are counted by listener and status: the common one (202) through
/// the handle the listener keeps, the others as they happen; the media type is matched
/// without regard to case and parameters.
#[test]
fn api_answers_are_counted_by_status() {
    use mailgate_tests::http::{create_key, curl, post_json, with_api};
    let sink = Sink::start();
    let admin = free_port();
    let (gw, url) = with_api(&sink, &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    let key = create_key(&gw, "app", &[]);
    let before = scrape(admin);
    let body = serde_json::json!({"from": "app@any.test", "to": "m@remote.test", "subject": "s", "text": "hi"});
    assert_eq!(post_json(&url, &key, &body).status, 202);
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &format!("Authorization: Bearer {key}"),
        "-H",
        "Content-Type: Application/JSON ; charset=utf-8",
        "--data-binary",
        &body.to_string(),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(post_json(&url, "mg_not_a_key", &body).status, 401);
    let r =
        curl(&["-X", "POST", &url, "-H", &format!("Authorization: Bearer {key}"), "-H", "Content-Type: text/plain"]);
    assert_eq!(r.status, 415, "{r:?}");
    sink.wait_for(2, Duration::from_secs(20));
    let after = scrape(admin);
    let moved = |needle: &str| {
        sum(&after, "mailgate_api_requests_total", needle) - sum(&before, "mailgate_api_requests_total", needle)
    };
    assert_eq!(moved("status=\"202\""), 2.0, "{after:?}");
    assert_eq!(moved("status=\"401\""), 1.0);
    assert_eq!(moved("status=\"415\""), 1.0);
    assert_eq!(moved("listener=\"api\""), 4.0);
}

/// The admin endpoint is on loopback, but any local user can connect: a client that never
/// finishes its request header is disconnected (10 s), and clients that hold connections
/// open take at most 64 of the process's file descriptors — the SMTP listener keeps serving
/// while they do, and the endpoint serves again once they are gone.
#[test]
fn admin_connections_are_bounded_and_a_stalled_header_is_cut_off() {
    use std::io::{Read, Write};
    let admin = free_port();
    let gw = Gateway::start(&format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    assert!(!scrape(admin).is_empty());
    let started = std::time::Instant::now();
    let mut stalled: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // SMTP is untouched.
    assert!(swaks(gw.port, &["--quit-after", "EHLO"]).status.success());
    // Every stalled connection is closed by the endpoint (the 36 over the cap once they are
    // accepted, after the first ones went), none kept past its header time.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a 408 answer, then the close
                Err(e) => panic!("the endpoint kept a stalled connection: {e}"),
            }
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(10), "cut off before its time");
    assert!(!scrape(admin).is_empty(), "the endpoint serves again");
}
