//! Running without root (`[server] user`, `group`, `allow_root`): started as root, the gateway
//! binds port and spool, then drops to the configured user for good and goes on receiving and
//! delivering; started as root with neither a user nor `allow_root`, it refuses to run.

use std::process::{Command, Stdio};
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::binary;
use mailgate_tests::sink::Sink;
use mailgate_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path, port: u16, sink: u16, server: &str) -> std::path::PathBuf {
    let cfg = dir.join("mailgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.gateway.test\"\n{server}\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{port}\"\n\n[spool]\npath = \"{}/spool\"\n\n[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {sink}, tls = \"none\" }}\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// The real and effective uid of a process, from /proc.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|u| u.parse().unwrap()).collect()
}

#[test]
fn root_drops_to_the_configured_user_and_refuses_to_stay_root() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root here: switching users is refused, with the reason.
        let cfg = config(dir.path(), port, sink.port(), "user = \"nobody\"");
        let out = Command::new(binary()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("only root can switch users"));
        return;
    }
    // Root without a user to drop to: refused.
    let cfg = config(dir.path(), port, sink.port(), "");
    let out = Command::new(binary()).args(["serve", "--config"]).arg(&cfg).env_remove("RUST_LOG").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"), "{out:?}");
    // Root with user = "nobody": it listens, drops, and works.
    let cfg = config(dir.path(), port, sink.port(), "user = \"nobody\"");
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dropped = wait_for(T, || {
        let u = uids(child.id());
        (u.iter().all(|x| *x == 65534)).then_some(u)
    });
    assert!(dropped.is_some(), "still {:?}", uids(child.id()));
    let reply = Raw::transaction(port, "a@sender.test", "x@remote.test", b"Subject: unprivileged\r\n\r\nhi\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    let m = sink.wait_for_rcpt("x@remote.test", T);
    assert!(m.text().contains("Subject: unprivileged"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(dir.path().join("spool")).unwrap().uid(), 65534, "the spool was given to the user");
    child.kill().unwrap();
    let _ = child.wait();
}
