//! The command line: config check exit codes and messages.

use std::process::Command;

use mailgate_tests::gateway::binary;

#[test]
fn config_check_accepts_the_default_and_names_bad_keys() {
    let out = Command::new(binary()).args(["config", "check"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\n[limits]\nmax_recipents = 3\n")
        .unwrap();
    let out = Command::new(binary()).args(["config", "check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_recipents"), "{err}");
    let out =
        Command::new(binary()).args(["config", "check"]).env("MAILGATE_LIMITS__MAX_SESSIONS", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("limits.max_sessions"));
}
