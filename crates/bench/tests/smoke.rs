//! CI smoke run of the benchmark: a few messages through an in-process gateway into the
//! bench's sink. Asserts that the tool works and counts right, never a speed.

use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
