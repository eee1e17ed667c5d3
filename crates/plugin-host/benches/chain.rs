//! Plugin host costs: instantiation per session per plugin, one hook call, and the whole
//! per-message overhead of a 5-plugin chain on every stage against no plugins.
//!
//! `plugins/build.sh && cargo bench -p mailgate-plugin-host` (a bench binary, not a timed test:
//! it prints numbers and asserts nothing).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_config::{Config, OnError, Plugin, Stage};
use mailgate_plugin_host::bindings::types::{ConnectionInfo, Envelope};
use mailgate_plugin_host::{MemoryKv, Plugins};

fn dist(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist").join(format!("{name}.wasm"))
}

fn entry(name: &str, file: &str, config: &[(&str, serde_json::Value)]) -> Plugin {
    Plugin {
        name: name.into(),
        path: dist(file),
        stages: Stage::ALL.to_vec(),
        on_error: OnError::Tempfail,
        cpu_budget: Duration::from_millis(100),
        memory_limit: 16 << 20,
        grants: vec![],
        allowed_routes: vec![],
        data: Default::default(),
        mode: Default::default(),
        config: config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

fn five() -> Vec<Plugin> {
    vec![
        entry("helo-check", "helo-check", &[("check_trusted", true.into())]),
        entry(
            "rcpt-allow",
            "rcpt-allow",
            &[("domains", serde_json::json!(["example.test"])), ("check_trusted", true.into())],
        ),
        entry("add-header", "add-header", &[]),
        entry("route-by-domain", "route-by-domain", &[("routes", serde_json::json!(["other.test=discard"]))]),
        entry("verdict", "verdict", &[("stage", "auth".into()), ("verdict", "reject".into())]),
    ]
}

fn conn() -> ConnectionInfo {
    ConnectionInfo {
        session_id: "bench".into(),
        client_ip: "192.0.2.1".into(),
        client_port: 40000,
        local_ip: "127.0.0.1".into(),
        local_port: 25,
        listener: "mx".into(),
        tls: None,
        helo: Some("client.example.test".into()),
        authenticated_as: None,
        trusted: false,
    }
}

fn env() -> Envelope {
    Envelope {
        mail_from: "a@sender.test".into(),
        rcpt_to: vec!["u@example.test".into()],
        body_8bit: false,
        smtputf8: false,
        size_hint: None,
    }
}

fn load(plugins: Vec<Plugin>) -> Arc<Plugins> {
    let mut cfg = Config::default();
    cfg.limits.max_sessions = 100;
    cfg.plugins = plugins;
    Plugins::load(&cfg, None, Arc::new(MemoryKv::new(1000))).expect("plugins load (run plugins/build.sh)")
}

/// One message as a session sees it: a new session (instances), every stage once.
async fn message(plugins: &Arc<Plugins>, raw: &Arc<Vec<u8>>) {
    let (c, e) = (conn(), env());
    let mut s = plugins.session("bench", "default");
    s.on_connect(&c).await;
    s.on_helo(&c, "client.example.test").await;
    s.on_mail_from(&c, e.clone()).await;
    s.on_rcpt(&c, "u@example.test").await;
    let _ = s.on_data(&c, &Arc::new(e), raw.clone()).await;
}

/// Messages on one persistent session: connect and EHLO once, then MAIL, RCPT, DATA each.
async fn persistent(plugins: &Arc<Plugins>, raw: &Arc<Vec<u8>>, n: u32) {
    let (c, e) = (conn(), env());
    let mut s = plugins.session("bench", "default");
    s.on_connect(&c).await;
    s.on_helo(&c, "client.example.test").await;
    for _ in 0..n {
        s.on_mail_from(&c, e.clone()).await;
        s.on_rcpt(&c, "u@example.test").await;
        let _ = s.on_data(&c, &Arc::new(e.clone()), raw.clone()).await;
    }
}

fn per(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let raw = Arc::new(format!("From: a@sender.test\r\nSubject: bench\r\n\r\n{}\r\n", "x".repeat(1000)).into_bytes());
    let none = load(vec![]);
    let one = load(vec![entry("verdict", "verdict", &[("stage", "auth".into()), ("verdict", "reject".into())])]);
    let all = load(five());
    const N: u32 = 5000;

    // Warm up.
    for _ in 0..200 {
        message(&all, &raw).await;
    }

    // Instantiate (+ init) per session per plugin: first hook of a fresh session, minus a call.
    let c = conn();
    let t = Instant::now();
    for _ in 0..N {
        let mut s = one.session("bench", "default");
        s.on_connect(&c).await;
    }
    let first = per(t.elapsed(), N);
    let mut s = one.session("bench", "default");
    s.on_connect(&c).await;
    let t = Instant::now();
    for _ in 0..N * 10 {
        s.on_rcpt(&c, "u@example.test").await;
    }
    let call = per(t.elapsed(), N * 10);
    println!("instantiate + init per session per plugin: {:.2} µs", first - call);
    println!("one hook call (on-rcpt, answers next):      {call:.2} µs");

    // Whole message, 5 plugins on every stage vs none; median of 5 rounds.
    let mut rounds = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..N {
            message(&none, &raw).await;
        }
        let base = per(t.elapsed(), N);
        let t = Instant::now();
        for _ in 0..N {
            message(&all, &raw).await;
        }
        rounds.push((per(t.elapsed(), N), base));
    }
    rounds.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (with, base) = rounds[2];
    println!("new session per message (5 instantiations, 25 hook calls):");
    println!("  0 plugins {base:.2} µs, 5 plugins {with:.2} µs: {:.2} µs per plugin per message", (with - base) / 5.0);

    let mut rounds = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..N / 100 {
            persistent(&none, &raw, 100).await;
        }
        let base = per(t.elapsed(), N);
        let t = Instant::now();
        for _ in 0..N / 100 {
            persistent(&all, &raw, 100).await;
        }
        rounds.push((per(t.elapsed(), N), base));
    }
    rounds.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (with, base) = rounds[2];
    println!("persistent sessions, 100 messages each (15 hook calls per message):");
    println!("  0 plugins {base:.2} µs, 5 plugins {with:.2} µs: {:.2} µs per plugin per message", (with - base) / 5.0);
}
