//! Hot reload: `mailgate reload` and SIGHUP swap config and plugins for new sessions while a
//! bounded stream of sessions keeps sending; a broken new config leaves the old one running.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

fn send(port: u16, rcpt: &str) -> Result<(), String> {
    let mut c = Raw::connect(port);
    for (cmd, want) in [
        ("EHLO client.test", "250"),
        ("MAIL FROM:<a@sender.test>", "250"),
        (&format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA", "354"),
    ] {
        let r = c.cmd(cmd);
        if !r.starts_with(want) {
            return Err(format!("{cmd}: {r}"));
        }
    }
    let r = c.cmd("Subject: reload\r\n\r\nx\r\n.");
    if !r.starts_with("250") {
        return Err(format!("end of data: {r}"));
    }
    c.cmd("QUIT");
    Ok(())
}

fn header_of(sink: &Sink, rcpt: &str) -> String {
    let m = sink.wait_for_rcpt(rcpt, T);
    m.text().lines().find(|l| l.starts_with("X-Generation:")).unwrap_or("none").to_string()
}

#[test]
fn reload_under_load_with_a_changed_plugin_and_a_broken_config() {
    let sink = Sink::start();
    let admin = free_port();
    let plugin = |v: &str| {
        Gateway::plugin(
            "add-header",
            "stamp",
            "stages = [\"data\"]",
            &format!("name = \"X-Generation\"\nvalue = \"{v}\""),
        )
    };
    let mut gw = Gateway::with_sink(sink.port(), &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}", plugin("v1")));
    // A bounded stream of sessions, before, during and after the reload: it runs until the
    // reload has returned and then sends five more (at most 20 000 sessions or a minute).
    let port = gw.port;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s2, sent2) = (stop.clone(), sent.clone());
    let load = std::thread::spawn(move || {
        let (mut results, mut after, started) = (vec![], 0, Instant::now());
        while results.len() < 20_000 && after < 5 && started.elapsed() < Duration::from_secs(60) {
            if s2.load(Ordering::Relaxed) {
                after += 1;
            }
            results.push(send(port, &format!("load{}@remote.test", results.len())));
            sent2.fetch_add(1, Ordering::Relaxed);
        }
        results
    });
    // Some sessions before the reload.
    assert!(wait_for(T, || (sent.load(Ordering::Relaxed) >= 20).then_some(())).is_some());
    let cfg = gw.edit_config(|c| c.replace("value = \"v1\"", "value = \"v2\""));
    let out = Command::new(binary()).args(["reload", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded; plugins: stamp@"));
    stop.store(true, Ordering::Relaxed);
    let results = load.join().unwrap();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "no session failed during the reload: {:?}",
        results.iter().find(|r| r.is_err())
    );
    let n = results.len();
    assert_eq!(header_of(&sink, "load0@remote.test"), "X-Generation: v1");
    assert_eq!(header_of(&sink, &format!("load{}@remote.test", n - 1)), "X-Generation: v2");
    sink.wait_for(n, T);

    // A broken config: the reload says why and the running one stays.
    let cfg = gw.edit_config(|c| c.replace("add-header.wasm", "missing-plugin.wasm"));
    let out = Command::new(binary()).args(["reload", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing-plugin.wasm: no such file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    send(gw.port, "after-broken@remote.test").unwrap();
    assert_eq!(header_of(&sink, "after-broken@remote.test"), "X-Generation: v2");

    // SIGHUP reloads too.
    gw.edit_config(|c| c.replace("missing-plugin.wasm", "add-header.wasm").replace("value = \"v2\"", "value = \"v3\""));
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("plugins=stamp@", T));
    let mut tries = 0;
    wait_for(T, || {
        tries += 1;
        let r = format!("hup{tries}@remote.test");
        send(gw.port, &r).ok()?;
        (header_of(&sink, &r) == "X-Generation: v3").then_some(())
    })
    .expect("SIGHUP applied");
}

/// A reload applies `[delivery]` (a new EHLO name, on a fresh connection) and names the
/// changed settings it cannot apply without a restart.
#[test]
fn reload_applies_delivery_settings_and_names_what_needs_a_restart() {
    let sink = Sink::start();
    let admin = free_port();
    let mut gw = Gateway::with_sink(
        sink.port(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[delivery]\nhelo_name = \"first.gateway.test\"\nidle_timeout = \"1h\"\n\n[dns]\ntimeout = \"5s\"\n"),
    );
    send(gw.port, "one@remote.test").unwrap();
    sink.wait_for_rcpt("one@remote.test", T);
    let cfg = gw.edit_config(|c| {
        c.replace("first.gateway.test", "second.gateway.test").replace("timeout = \"5s\"", "timeout = \"3s\"")
    });
    let out = Command::new(binary()).args(["reload", "--config"]).arg(&cfg).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("needing a restart to take effect: dns"), "{said}");
    send(gw.port, "two@remote.test").unwrap();
    sink.wait_for_rcpt("two@remote.test", T);
    assert_eq!(sink.helos(), ["first.gateway.test", "second.gateway.test"]);
}
