//! CI smoke run of the benchmark: a few messages through an in-process gateway into the
//! bench's sink. Asserts that the tool works and counts right, never a speed.

use std::process::Command;

/// A free port, never one this process was given before (a released port is handed out again
/// at once, and two listeners of one gateway must not get the same number).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let port =
        std::iter::repeat_with(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .find(|p| !given.contains(p))
            .unwrap();
    given.push(port);
    port
}

#[test]
fn bench_smoke_through_the_gateway_and_the_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_port, sink_port) = (free_port(), free_port());
    let cfg = mailgate_config::Config::from_toml(&format!(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{gw_port}\"\n[spool]\npath = \"{}\"\n[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {sink_port}, tls = \"none\" }}\n",
        dir.path().join("spool").display()
    ))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(mailgate::Gateway::start(cfg)).unwrap();
    let bench = env!("CARGO_BIN_EXE_mailgate-bench");
    let out = Command::new(bench)
        .args(["run", "--target", &format!("127.0.0.1:{gw_port}"), "--sink", &format!("127.0.0.1:{sink_port}")])
        .args([
            "--sessions",
            "4",
            "--count",
            "40",
            "--size",
            "2000",
            "--rcpts",
            "2",
            "--duration",
            "30",
            "--drain",
            "30",
        ])
        .args(["--pid", &std::process::id().to_string(), "--label", "smoke"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["accepted"], 40);
    assert_eq!(v["delivered"], 40);
    assert!(v["p99_us"].as_u64().unwrap() > 0);
    rt.block_on(gw.shutdown(std::time::Duration::from_secs(1)));

    // The ceiling: straight into the sink, open loop at a fixed rate, new connection each.
    let out = Command::new(bench)
        .args(["run", "--sessions", "2", "--count", "20", "--rate", "200", "--new-conn", "--duration", "30"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["delivered"], 20);
}

/// The API mode: keep-alive HTTP/1.1 POSTs of JSON through a real gateway's `[[api]]` listener,
/// every message counted at the sink; a wrong key counts as failures, not as accepted.
#[test]
fn bench_smoke_through_the_sending_api() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (key, _) = mailgate_api::KeyStore::in_spool(&spool).create("bench", vec![], None, None).unwrap();
    let (smtp_port, api_port, sink_port) = (free_port(), free_port(), free_port());
    let cfg = mailgate_config::Config::from_toml(&format!(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{smtp_port}\"\n[[api]]\nname = \"api\"\naddress = \"127.0.0.1:{api_port}\"\n[spool]\npath = \"{}\"\n[relay]\naccept_domains = [\"bench.test\"]\n[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {sink_port}, tls = \"none\" }}\n",
        spool.display()
    ))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(mailgate::Gateway::start(cfg)).unwrap();
    let bench = env!("CARGO_BIN_EXE_mailgate-bench");
    let url = format!("http://127.0.0.1:{api_port}/api/v1/messages");
    let run = |key: &str, count: &str| {
        let out = Command::new(bench)
            .args(["run", "--api", &url, "--key", key, "--sink", &format!("127.0.0.1:{sink_port}")])
            .args(["--sessions", "3", "--count", count, "--rcpts", "2", "--duration", "30", "--drain", "30"])
            .args(["--pid", &std::process::id().to_string(), "--label", "smoke-api"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success(), serde_json::from_str::<serde_json::Value>(text.trim()).unwrap_or_default(), text)
    };
    let (ok, v, text) = run(&key, "30");
    assert!(ok, "{text}");
    assert_eq!(v["accepted"], 30, "{text}");
    assert_eq!(v["failed"], 0, "{text}");
    assert_eq!(v["delivered"], 30, "{text}");
    assert!(v["bench_cpu_us_per_msg"].is_number(), "{text}"); // clock ticks: may be 0 for 30 messages
    let (_, v, text) = run("mg_not-a-key", "5");
    assert_eq!(v["accepted"], 0, "{text}");
    assert_eq!(v["failed"], 5, "{text}");
    rt.block_on(gw.shutdown(std::time::Duration::from_secs(1)));
}
