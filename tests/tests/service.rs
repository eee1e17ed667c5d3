//! Running as a systemd service: the unit file passes `systemd-analyze verify` and its
//! hardening review; the gateway speaks the readiness protocol (READY only once it answers
//! on its port, RELOADING/READY around SIGHUP, STOPPING on SIGTERM); and with its standard
//! error on the journal, log lines carry journald's priority prefix and no timestamp of ours.
//! (systemd is not PID 1 on these machines: the protocol is checked with our own notify
//! socket, as systemd would set it up.)

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::free_port;
use mailgate_tests::gateway::{binary, repo_root};

/// The unit as shipped, with its program paths pointing at the binary under test.
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(repo_root().join("dist/systemd/mailgate.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/mailgate serve --config /etc/mailgate/mailgate.toml"));
    let path = dir.join("mailgate.service");
    std::fs::write(&path, unit.replace("/usr/bin/mailgate", &binary().display().to_string())).unwrap();
    path
}

#[test]
fn the_unit_file_verifies_cleanly_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze (systemd)");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // An unknown or misspelt key is only a warning to systemd: any output at all fails.
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // systemd's own review of the sandbox: exposure at most 2.0 of 10 ("OK").
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(out.status.success(), "exposure above 2.0:\n{}", String::from_utf8_lossy(&out.stdout));
}

/// The next notification, within 20 s.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("mailgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.gateway.test\"\nallow_root = true\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{port}\"\n\n[spool]\npath = \"{}/spool\"\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// `mailgate serve` on `cfg`, telling `notify` (as systemd's NOTIFY_SOCKET) and writing its
/// log to `stderr`, with `journal` as JOURNAL_STREAM when given.
fn serve(
    cfg: &std::path::Path,
    notify: &std::path::Path,
    journal: Option<String>,
    stderr: Stdio,
) -> std::process::Child {
    let mut c = Command::new(binary());
    c.args(["serve", "--config"]).arg(cfg).env("NOTIFY_SOCKET", notify);
    if let Some(j) = journal {
        c.env("JOURNAL_STREAM", j);
    }
    c.env_remove("MAILGATE_BIN").env_remove("RUST_LOG").stdout(Stdio::null()).stderr(stderr).spawn().unwrap()
}

/// The timestamp our own log lines begin with: `2026-11-29T10:20:45.123456Z`.
fn stamped(line: &[u8]) -> bool {
    line.len() > 11 && line[4] == b'-' && line[7] == b'-' && line[10] == b'T'
}

#[test]
fn ready_means_listening_and_reload_and_stop_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port);
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = serve(&cfg, &notify, None, Stdio::null());
    let ready = next(&sock);
    assert_eq!(ready, format!("READY=1\nSTATUS=accepting mail on 127.0.0.1:{port}\n"));
    // The moment it says so, it answers: no retry, no wait.
    let (mut c, greeting) = Raw::connect_any(port);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("QUIT").starts_with("221"));

    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = next(&sock);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
    assert!(usec > 0);
    assert!(next(&sock).starts_with("READY=1\n"), "READY again after the reload");

    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(next(&sock), "STOPPING=1\nSTATUS=shutting down\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn on_the_journal_lines_carry_the_priority_and_no_timestamp_of_ours() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port);
    let log_path = dir.path().join("journal");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // As systemd sets it for a service whose stderr is the journal's stream.
    let mut child = serve(&cfg, &notify, Some(format!("{}:{}", meta.dev(), meta.ino())), log.into());
    assert!(next(&sock).starts_with("READY=1"));
    // A reload with a broken file logs an error; the running configuration stays.
    std::fs::write(&cfg, "[server\n").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert!(next(&sock).starts_with("RELOADING=1"));
    assert!(next(&sock).starts_with("READY=1"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(next(&sock).starts_with("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    let mut text = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("<6> INFO ")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<3>ERROR ") && l.contains("reload failed")), "{text}");
    for l in &lines {
        let p = l.get(..3).unwrap_or_default();
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&p), "no priority: {l}");
        assert!(!stamped(l[3..].trim_start().as_bytes()), "a timestamp: {l}");
        assert!(!l.contains('\u{1b}'), "colour on the journal: {l}");
    }

    // Without JOURNAL_STREAM naming stderr (a redirected child of a service), the usual format.
    let log_path = dir.path().join("plain");
    let log = std::fs::File::create(&log_path).unwrap();
    let cfg = config(dir.path(), port);
    let mut child = serve(&cfg, &notify, Some("1:2".into()), log.into());
    assert!(next(&sock).starts_with("READY=1"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(stamped(text.lines().next().unwrap_or_default().as_bytes()), "{text}");
}
