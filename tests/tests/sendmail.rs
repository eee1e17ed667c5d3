//! `mailgate sendmail`: a message on stdin, submitted over the gateway's local socket, exit 0
//! only once queued — read at a real sink. Recipients from the command line and with `-t` from
//! the headers (Bcc removed), From/Date/Message-ID completed, the local user named, sendmail's
//! dot convention, the binary called as `sendmail`, and the sysexits codes for a refused
//! recipient and a gateway that is not running.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(20);

fn sendmail(program: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("MAILGATE_BIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn gateway(sink: &Sink, extra: &str) -> (Gateway, String) {
    let gw = Gateway::start(&format!(
        "[submission]\nsocket = \"{{dir}}/run/submit.sock\"\n\n{extra}\n[routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        sink.port()
    ));
    let cfg = gw.path("mailgate.toml").display().to_string();
    (gw, cfg)
}

#[test]
fn sendmail_t_submits_to_the_headers_recipients_and_completes_the_header() {
    let sink = Sink::start();
    let (gw, cfg) = gateway(&sink, "");
    let msg = b"To: Ann <ann@remote.test>\nCc: bob@remote.test\nBcc: secret@remote.test\nSubject: nightly report\n\nall good\n.\nstill the body with -i\n";
    let out =
        sendmail(&binary(), &["sendmail", "-C", &cfg, "-f", "cron@app.test", "-F", "Cron Daemon", "-t", "-i"], msg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Exit 0 means queued: the message is there now, not later.
    assert!(gw.log().contains("message accepted"), "{}", gw.log());
    let m = sink.wait_for(1, T).remove(0);
    assert_eq!(m.from, "cron@app.test");
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["ann@remote.test", "bob@remote.test", "secret@remote.test"]);
    let t = m.text();
    assert!(!t.contains("secret@remote.test"), "Bcc left in: {t}");
    assert!(t.contains("From: \"Cron Daemon\" <cron@app.test>\r\n"), "{t}");
    assert!(t.contains("\r\nDate: "), "{t}");
    assert!(t.contains("\r\nMessage-ID: <"), "{t}");
    assert!(t.contains("all good\r\n.\r\nstill the body with -i\r\n"), "{t}");
    // The local user is the authenticated identity: logged and in Received.
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    assert!(gw.log().contains(&format!("client=local:{}", user.trim())), "{}", gw.log());
    assert!(t.contains("with ESMTPA"), "{t}");
}

/// Called as `sendmail` (a symlink), recipients as arguments, and a lone dot ends the message
/// as in sendmail without -i.
#[test]
fn called_as_sendmail_with_recipients_as_arguments() {
    let sink = Sink::start();
    let (_gw, cfg) = gateway(&sink, "");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(binary(), &link).unwrap();
    let out =
        sendmail(&link, &["-C", &cfg, "-oi", "-fapp@app.test", "x@remote.test,y@remote.test"], b"Subject: s\n\nbody\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sendmail(&link, &["-C", &cfg, "-fapp@app.test", "z@remote.test"], b"Subject: dot\n\nbefore\n.\nafter\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = sink.wait_for(2, T);
    assert!(got.iter().any(|m| m.rcpts == ["x@remote.test", "y@remote.test"]), "{got:?}");
    let dot = got.iter().find(|m| m.rcpts == ["z@remote.test"]).unwrap().text();
    assert!(dot.contains("before\r\n") && !dot.contains("after"), "{dot}");
}

/// A recipient the gateway refuses fails the whole submission (nothing queued) with 67; a
/// gateway that is not running is 75 (try again later); no recipient is a usage error.
#[test]
fn refusals_and_a_stopped_gateway_have_their_exit_codes() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("users");
    std::fs::write(&table, "known@corp.test\n").unwrap();
    let (mut gw, cfg) =
        gateway(&sink, &format!("[verify.domains]\n\"corp.test\" = {{ table = \"{}\" }}\n", table.display()));
    let out =
        sendmail(&binary(), &["sendmail", "-C", &cfg, "known@corp.test", "nobody@corp.test"], b"Subject: s\n\nb\n");
    assert_eq!(out.status.code(), Some(67), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody@corp.test"));
    assert!(!gw.log().contains("message accepted"), "nothing is queued: {}", gw.log());
    let out = sendmail(&binary(), &["sendmail", "-C", &cfg], b"Subject: s\n\nb\n");
    assert_eq!(out.status.code(), Some(64));
    gw.stop();
    let out = sendmail(&binary(), &["sendmail", "-C", &cfg, "known@corp.test"], b"Subject: s\n\nb\n");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sink.received().is_empty());
}
