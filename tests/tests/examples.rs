//! Every example configuration (`config/examples/*.toml`) and the Debian package's own
//! (`dist/mailgate.toml`) passes `mailgate config check`: its plugins compiled and initialised
//! with their settings, and the certificates, DKIM keys, tables and spam model it names made
//! as an operator would make them (a CA-signed certificate, `mailgate dkim keygen`,
//! `mailgate spam train`). The deployment paths (/etc/mailgate, /var/lib/mailgate, …) are
//! moved into a temporary directory and the plugins' into the ones built from source.

use std::path::{Path, PathBuf};
use std::process::Command;

use mailgate_tests::gateway::{binary, repo_root};
use mailgate_tests::pki::Pki;

/// The deployment directories an example may name, moved under `root`.
const MOVED: [&str; 5] =
    ["/etc/mailgate/", "/var/lib/mailgate/", "/var/spool/mailgate", "/run/mailgate/", "/run/dovecot/"];

fn mailgate(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).env_remove("MAILGATE_BIN").output().unwrap()
}

/// Makes the file an example names at `path` (already moved), by what it is.
fn make(path: &Path, pki: &Pki, corpus: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let text = path.display().to_string();
    if text.contains("/dkim/") {
        let algorithm = if name.contains("ed25519") { "ed25519" } else { "rsa" };
        let out = mailgate(&[
            "dkim",
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            "s",
            "--algorithm",
            algorithm,
            "--out",
            &text,
        ]);
        assert!(out.status.success(), "dkim keygen: {}", String::from_utf8_lossy(&out.stderr));
    } else if text.contains("/tls/") {
        let (cert, key) = pki.server_files();
        let from = if name.contains("key") {
            key
        } else if name.contains("ca") {
            pki.ca_file()
        } else {
            cert
        };
        std::fs::copy(from, path).unwrap();
    } else if name.ends_with(".tsv") {
        let spam = corpus.join("spam").display().to_string();
        let ham = corpus.join("ham").display().to_string();
        let out = mailgate(&["spam", "train", "--spam", &spam, "--ham", &ham, "--out", &text, "--min-count", "1"]);
        assert!(out.status.success(), "spam train: {}", String::from_utf8_lossy(&out.stderr));
    } else if name == "aliases" {
        std::fs::write(path, "# address<TAB>addresses\nsales@example.org\tann@example.org, bob@example.org\n").unwrap();
    } else {
        // A recipient table.
        std::fs::write(path, "# one address per line\nann@example.net\n@hosted.example\n").unwrap();
    }
}

/// Quoted absolute paths under the deployment directories in `text`.
fn named_files(text: &str) -> Vec<String> {
    let mut files = vec![];
    for (i, _) in text.match_indices('"') {
        let rest = &text[i + 1..];
        let Some(end) = rest.find('"') else { continue };
        let s = &rest[..end];
        if ["/etc/mailgate/", "/var/lib/mailgate/"].iter().any(|d| s.starts_with(d)) && !files.contains(&s.to_string())
        {
            files.push(s.to_string());
        }
    }
    files
}

fn corpus(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    for (kind, subject, body) in [
        ("spam", "WIN CASH NOW", "cheap pills casino winner claim prize"),
        ("ham", "Minutes", "the meeting notes are attached"),
    ] {
        std::fs::create_dir_all(c.join(kind)).unwrap();
        for n in 0..3 {
            std::fs::write(
                c.join(kind).join(format!("{n}.eml")),
                format!("From: a@example.net\r\nSubject: {subject}\r\n\r\n{body} {n}\r\n"),
            )
            .unwrap();
        }
    }
    c
}

fn check(example: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let original = std::fs::read_to_string(example).unwrap();
    let pki = Pki::new();
    let corpus = corpus(dir.path());
    for file in named_files(&original) {
        make(&PathBuf::from(format!("{root}{file}")), &pki, &corpus);
    }
    let mut text = original.replace("/usr/lib/mailgate/plugins/", &format!("{}/plugins/dist/", repo_root().display()));
    for d in MOVED {
        text = text.replace(&format!("\"{d}"), &format!("\"{root}{d}"));
    }
    let cfg = dir.path().join("mailgate.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = mailgate(&["config", "check", "--config", &cfg.display().to_string()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("configuration OK"), "{}:\n{said}", example.display());
}

#[test]
fn every_example_configuration_passes_config_check() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("config/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    let names: Vec<String> = examples.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["edge-mx.toml", "multi-domain.toml", "outbound-relay.toml", "transactional.toml"]);
    for e in &examples {
        check(e);
    }
}

#[test]
fn the_packaged_configuration_passes_config_check() {
    check(&repo_root().join("dist/mailgate.toml"));
}
