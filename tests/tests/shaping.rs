//! Per-destination shaping (`[shaping]`) against real sinks that count connections open at
//! once, the messages each connection carried, and when each arrived.
//!
//! - A burst of 500 messages to one domain of a class with 3 connections and 20 messages per
//!   connection: both caps hold, and mail to another domain, sent while the burst is going
//!   out, arrives long before the burst has drained.
//! - 100 messages to a domain limited to 20 messages/s (burst 5): never more than 25 in a
//!   second.
//! - A next hop that answers `421` at the greeting: after `backoff_after` connection failures
//!   in a row the destination is paused — no more connections during the pause, its mail
//!   deferred with `4.4.5` until the pause ends — and `mailgate status` shows it.
//! - `[shaping.hosts]`: two domains whose MX is one host share that host's one connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_tests::clients::Raw;
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(60);

/// `n` messages to `rcpt` over one SMTP session.
fn burst(port: u16, rcpt: &str, n: usize) {
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for i in 0..n {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {i}\r\n\r\nmessage {i}\r\n").as_bytes());
        let r = c.cmd(".");
        assert!(r.starts_with("250"), "{i}: {r}");
    }
    c.cmd("QUIT");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_burst_to_one_domain_keeps_its_caps_and_does_not_slow_another() {
    let bulk = Sink::start_at(ip("127.0.0.1"), 0, None);
    let port = bulk.port();
    let other = Sink::start_at(ip("127.0.0.2"), port, None);
    let shared = Sink::start_at(ip("127.0.0.3"), port, None);
    let paced = Sink::start_at(ip("127.0.0.4"), port, None);
    let mut records = vec![];
    for (d, a) in [("bulk.test", "127.0.0.1"), ("other.test", "127.0.0.2"), ("paced.test", "127.0.0.4")] {
        records.push(format!("--mx-host={d},mx.{d},10"));
        records.push(format!("--host-record=mx.{d},{a}"));
    }
    for d in ["one.test", "two.test"] {
        records.push(format!("--mx-host={d},mx.shared.test,10"));
    }
    records.push("--host-record=mx.shared.test,127.0.0.3".into());
    let dns = Dns::start(&records.iter().map(String::as_str).collect::<Vec<_>>());
    let gw = Gateway::start(&format!(
        "{}\n[delivery]\nmx_port = {port}\n\n[queue]\nretry_schedule = [\"1s\"]\n\n\
         [shaping.classes.bulk]\nmax_connections = 3\nmax_messages_per_connection = 20\n\n\
         [shaping.classes.paced]\nmax_connections = 10\nrate = \"20/s\"\nburst = 5\n\n\
         [shaping.classes.onehost]\nmax_connections = 1\n\n\
         [shaping.domains]\n\"bulk.test\" = \"bulk\"\n\"paced.test\" = \"paced\"\n\n\
         [shaping.hosts]\n\"*.shared.test\" = \"onehost\"\n\n\
         [routes]\n\"*\" = {{ type = \"mx\" }}\n",
        dns.config(),
    ));

    // The other domain's mail goes in while the burst is being delivered (100 of it through).
    let sent_other = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            bulk.wait_for(100, T);
            let at = Instant::now();
            for i in 0..5 {
                Raw::deliver(gw.port, "a@sender.test", &[&format!("u{i}@other.test")], "Subject: other\r\n\r\nx\r\n");
            }
            at
        });
        // 25 sessions of 20 at once: the spool's group commit takes them in faster than the
        // class lets them out.
        let sessions: Vec<_> = (0..25).map(|_| s.spawn(|| burst(gw.port, "many@bulk.test", 20))).collect();
        for t in sessions {
            t.join().unwrap();
        }
        sender.join().unwrap()
    });
    let others = other.wait_for(5, T);
    let other_done = others.iter().map(|m| m.at).max().unwrap();
    let all = bulk.wait_for(500, T);
    let last = all.iter().map(|m| m.at).max().unwrap();

    // The caps held.
    assert!(bulk.max_open() <= 3, "{} connections at once", bulk.max_open());
    let mut per_conn: HashMap<usize, usize> = HashMap::new();
    for m in &all {
        *per_conn.entry(m.connection).or_default() += 1;
    }
    assert!(per_conn.values().all(|n| *n <= 20), "messages per connection: {per_conn:?}");
    assert!(per_conn.len() >= 25, "{} connections for 500 messages", per_conn.len());
    // The other domain was not held back: its mail was through long before the burst.
    assert!(
        other_done + Duration::from_secs(1) < last,
        "other.test done {:?} after it was sent; bulk drained {:?} after",
        other_done - sent_other,
        last - sent_other
    );
    assert!(other_done - sent_other < Duration::from_secs(2), "other.test took {:?}", other_done - sent_other);

    // A rate: 100 messages at 20/s after a burst of 5 — no second of sending holds more than
    // 25, the sends span at least 4.75 s (ten connections would take them in well under one).
    // The sink sees arrivals, which the loaded test machine delays unevenly after the send:
    // sends 1.02 s apart can arrive 0.99 s apart, and the first arrival also waits for its
    // connection to be opened (seen: 100 arrivals in 4.698 s). Arrivals are counted in windows
    // of 0.9 s and the span is checked against 4.65 s: both allow 100 ms of such jitter and
    // still hold at most 25 (23 if arrivals were sends) and far more than unpaced sending.
    std::thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| burst(gw.port, "many@paced.test", 10));
        }
    });
    let mut times: Vec<Instant> = paced.wait_for(100, T).iter().map(|m| m.at).collect();
    times.sort();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_millis(900)).count();
        assert!(in_window <= 25, "{in_window} messages within 0.9 s");
    }
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(4650), "100 messages in {span:?}");

    // Two domains on one MX host share its one connection.
    for i in 0..6 {
        let d = if i % 2 == 0 { "one.test" } else { "two.test" };
        Raw::deliver(gw.port, "a@sender.test", &[&format!("u{i}@{d}")], "Subject: shared\r\n\r\nx\r\n");
    }
    shared.wait_for(6, T);
    assert_eq!(shared.max_open(), 1, "the host's connections at once");
}

/// A next hop that greets with `421` and hangs up, counting connections.
fn refusing_host() -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"421 4.3.2 too busy, come back later\r\n");
            let mut buf = [0u8; 512];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
        }
    });
    (port, n)
}

#[test]
fn a_run_of_421s_pauses_the_destination() {
    let (port, connections) = refusing_host();
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[queue]\nretry_schedule = [\"1s\"]\n\n\
         [shaping.default]\nbackoff_after = 3\nbackoff = \"1h\"\n\n\
         [routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {port} }}\n",
    ));
    Raw::deliver(gw.port, "a@sender.test", &["x@busy.test"], "Subject: busy\r\n\r\nx\r\n");
    assert!(gw.wait_log("destination paused after connection failures in a row", T), "{}", gw.log());
    let at_pause = connections.load(Ordering::SeqCst);
    assert_eq!(at_pause, 3, "connections before the pause");
    // The message's next try waits for the pause to end (not the 1 s schedule); another
    // message for the paused destination is deferred at once, without a connection.
    assert!(gw.wait_log("451 4.4.5 destination paused for", T), "{}", gw.log());
    Raw::deliver(gw.port, "a@sender.test", &["y@busy.test"], "Subject: busy too\r\n\r\nx\r\n");
    let deferrals = |g: &Gateway| g.log().matches("451 4.4.5 destination paused for").count();
    assert!(wait_for(T, || (deferrals(&gw) >= 2).then_some(())).is_some(), "{}", gw.log());
    assert_eq!(connections.load(Ordering::SeqCst), at_pause, "connected while paused");
    let out = Command::new(binary())
        .args(["queue", "list", "--json", "--config"])
        .arg(gw.path("mailgate.toml"))
        .output()
        .unwrap();
    let queue: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(queue.len(), 2, "{queue:?}");
    for m in &queue {
        let next = m["next_attempt"].as_u64().unwrap();
        assert!(
            next > now_ms + 3_500_000,
            "next try in {} s, not at the pause's end: {m}",
            next.saturating_sub(now_ms) / 1000
        );
    }

    let out =
        Command::new(binary()).args(["status", "--json", "--config"]).arg(gw.path("mailgate.toml")).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    let paused = status["shaping"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == format!("dest:smarthost:127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(paused["paused_for"].as_u64().unwrap() > 3500, "{paused}");
    assert_eq!(paused["class"], "default");
}

/// An on-route plugin (route-by-domain) picks a shaping class and a source pool per domain;
/// an API key created with `--pool` sends from its pool; a plugin naming a pool the operator
/// did not configure fails (and is logged), it does not make the gateway invent one.
#[test]
fn plugins_and_api_keys_pick_pools_and_shaping_classes() {
    use mailgate_tests::http::{create_key, post_json, with_api};
    let sink = Sink::start();
    let plugin = Gateway::plugin(
        "route-by-domain",
        "router",
        "stages = [\"route\"]\non_error = \"tempfail\"",
        "pools = [\"blue.test=blue\", \"bad.test=nosuch\"]\nshaping = [\"slow.test=single\"]",
    );
    let (gw, url) = with_api(
        &sink,
        &format!(
            "\n[[pool]]\nname = \"blue\"\nsources = [{{ address = \"127.0.0.2\", helo = \"blue.pool.test\" }}]\n\n\
             [[pool]]\nname = \"green\"\nsources = [{{ address = \"127.0.0.3\", helo = \"green.pool.test\" }}]\n\n\
             [shaping.classes.single]\nmax_connections = 1\n{plugin}"
        ),
    );
    // The plugin's class: six messages sent at once leave over one connection at a time.
    std::thread::scope(|s| {
        for i in 0..6 {
            let port = gw.port;
            s.spawn(move || burst(port, &format!("u{i}@slow.test"), 1));
        }
    });
    sink.wait_for(6, T);
    assert_eq!(sink.max_open(), 1, "connections at once to the plugin's single-connection class");

    let peer_of = |rcpt: &str| {
        let m = sink.wait_for_rcpt(rcpt, T);
        let n = m.connection - 1;
        (sink.peers()[n].to_string(), sink.helos()[n].clone())
    };
    // The plugin's pool.
    Raw::deliver(gw.port, "a@sender.test", &["a@blue.test"], "Subject: blue\r\n\r\nx\r\n");
    assert_eq!(peer_of("a@blue.test"), ("127.0.0.2".to_string(), "blue.pool.test".to_string()));
    // The API key's pool.
    let key = create_key(&gw, "green-key", &["--pool", "green"]);
    let r = post_json(
        &url,
        &key,
        &serde_json::json!({"from": "app@sender.test", "to": ["x@api.test"], "subject": "s", "text": "t"}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(peer_of("x@api.test"), ("127.0.0.3".to_string(), "green.pool.test".to_string()));
    // A key for a pool that does not exist is refused when it is made.
    let out = Command::new(binary())
        .args(["api-key", "create", "--name", "nopool", "--pool", "nosuch", "--config"])
        .arg(gw.path("mailgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no [[pool]] named \"nosuch\""));
    // A plugin naming an unknown pool fails (tempfail): logged, nothing sent.
    Raw::deliver(gw.port, "a@sender.test", &["b@bad.test"], "Subject: bad\r\n\r\nx\r\n");
    assert!(gw.wait_log("on-route named pool \"nosuch\"", T), "{}", gw.log());
    assert!(sink.received().iter().all(|m| !m.rcpts.contains(&"b@bad.test".to_string())));
}
