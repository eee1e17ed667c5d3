//! The command line: config check exit codes and messages.

use std::process::Command;

use mailgate_tests::gateway::{binary, repo_root};

#[test]
fn config_check_accepts_the_default_and_names_bad_keys() {
    // The embedded default names plugins relative to the working directory.
    let out = Command::new(binary()).args(["config", "check"]).current_dir(repo_root()).output().unwrap();
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

#[test]
fn plugin_check_and_test() {
    let dist = repo_root().join("plugins/dist");
    let out = Command::new(binary()).args(["plugin", "check"]).arg(dist.join("rcpt-allow.wasm")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    // Not a component: exit 1 and say why.
    let out = Command::new(binary()).args(["plugin", "check"]).arg(repo_root().join("Cargo.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid component"));
    // A whole simulated transaction.
    let eml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        eml.path(),
        "From: a@sender.test
Subject: t

body
",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["plugin", "test"])
        .arg(dist.join("rcpt-allow.wasm"))
        .arg("--eml")
        .arg(eml.path())
        .args(["--rcpt", "ok@example.test", "--rcpt", "no@other.test", "--config", "domains = [\"example.test\"]"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("rcpt <ok@example.test>: next"), "{text}");
    assert!(text.contains("rcpt <no@other.test>: reply 550 5.1.1"), "{text}");
    let out = Command::new(binary())
        .args(["plugin", "test"])
        .arg(dist.join("add-header.wasm"))
        .args(["--rcpt", "x@example.test"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("modification: AddHeader { name: \"X-Mailgate-Plugin\", value: \"add-header\" }"), "{text}");
    // The message took the gateway's path: our Received: first, the plugin's field applied.
    let stored = text.split("stored header section (after cleanup):\n").nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(stored.starts_with("Received: from "), "{text}");
    assert!(stored.contains("\r\nX-Mailgate-Plugin: add-header"), "{text}");
}

/// A plugin that refuses its own config fails `config check` (its init is run there, with the
/// error named), and `plugin test` exits non-zero both for a refused init and for a plugin
/// that traps during the transaction.
#[test]
fn plugin_failures_fail_config_check_and_plugin_test() {
    let dist = repo_root().join("plugins/dist");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n[[plugin]]\nname = \"fixed\"\npath = \"{}\"\n[plugin.config]\nverdict = \"bogus\"\n",
            dist.join("verdict.wasm").display()
        ),
    )
    .unwrap();
    let out = Command::new(binary()).args(["config", "check", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("plugin fixed: init failed") && err.contains("unknown verdict \"bogus\""), "{err}");
    let test = |wasm: &str, config: &str| {
        Command::new(binary())
            .args(["plugin", "test"])
            .arg(dist.join(wasm))
            .args(["--rcpt", "x@example.test", "--config", config])
            .output()
            .unwrap()
    };
    let out = test("verdict.wasm", "verdict = \"bogus\"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not start with this config"));
    let out = test("misbehave.wasm", "mode = \"trap\"\nstage = \"rcpt\"");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the plugin failed 1 time"));
    // The same plugin at a stage it is fine at passes.
    let out = test("verdict.wasm", "verdict = \"accept\"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
