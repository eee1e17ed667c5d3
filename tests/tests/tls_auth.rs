//! STARTTLS, implicit TLS and SMTP AUTH inbound, with real clients: Python smtplib, swaks,
//! openssl s_client. Certificates are made at test time with rcgen; credentials are checked by
//! the auth-static plugin against a hash made by `mailgate hash-password`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailgate_tests::clients::{python, swaks, Raw};
use mailgate_tests::free_port;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery";

/// Writes a self-signed certificate for mx.gateway.test; returns (dir, cert, key).
fn certificate() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["mx.gateway.test".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (dir, cert, key)
}

fn hash(password: &str) -> String {
    let mut child =
        Command::new(binary()).arg("hash-password").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Rig {
    gw: Gateway,
    sink: Sink,
    submission: u16,
    submissions: u16,
    _certs: tempfile::TempDir,
}

/// A gateway with an mx listener (no trusted networks: relaying needs AUTH), a submission and a
/// submissions listener, TLS, and auth-static knowing alice.
fn rig(extra: &str) -> Rig {
    let auth = Gateway::plugin(
        "auth-static",
        "auth-static",
        "stages = [\"auth\"]\ncpu_budget = \"5s\"\nmemory_limit = 67108864",
        &format!("users = [\"alice:{}\"]", hash(PASSWORD)),
    );
    rig_auth(extra, &auth)
}

/// [`rig`] with this auth plugin block.
fn rig_with(auth: &str) -> Rig {
    rig_auth("", auth)
}

fn rig_auth(extra: &str, auth: &str) -> Rig {
    let sink = Sink::start();
    let (certs, cert, key) = certificate();
    let (submission, submissions) = (free_port(), free_port());
    let gw = Gateway::with_sink(
        sink.port(),
        &format!(
            "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n{extra}\n\n\
             [[listener]]\nname = \"submission\"\naddress = \"127.0.0.1:{submission}\"\nrole = \"submission\"\n\n\
             [[listener]]\nname = \"submissions\"\naddress = \"127.0.0.1:{submissions}\"\nrole = \"submissions\"\n{auth}",
            cert.display(),
            key.display()
        ),
    );
    Rig { gw, sink, submission, submissions, _certs: certs }
}

const PY_PRELUDE: &str = r#"
import os, smtplib, ssl, socket
port = int(os.environ["PORT"])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
msg = b"Subject: over tls\r\n\r\nhello\r\n"
"#;

#[test]
fn submission_with_starttls_and_login_relays_and_traces_it() {
    let r = rig("");
    let script = format!(
        r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.ehlo("py.test")
assert c.has_extn("starttls") and not c.has_extn("auth"), "no AUTH before TLS"
c.starttls(context=ctx); c.ehlo("py.test")
assert c.has_extn("auth") and c.has_extn("requiretls") and not c.has_extn("starttls")
assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
code, _ = c.login("alice", "{PASSWORD}"); assert code == 235
c.sendmail("alice@example.test", ["friend@remote.test"], msg)
c.sendmail("alice@example.test", ["strict@remote.test"], msg, mail_options=["REQUIRETLS"]); c.quit(); print("sent")
"#
    );
    let (ok, out) = python(r.submission, &script);
    assert!(ok, "{out}");
    let m = r.sink.wait_for_rcpt("friend@remote.test", T);
    let t = m.text();
    assert!(t.contains("with ESMTPSA (TLSv1.3 TLS_AES_"), "IANA cipher names: {t}");
    assert!(t.contains("; authenticated as alice)"), "{t}");
    // The message had neither Date nor Message-ID: as a submission agent, the gateway adds them.
    assert!(t.contains("\r\nSubject: over tls\r\nDate: ") && t.contains("\r\nMessage-ID: <"), "{t}");
    assert!(!r.gw.log().contains(PASSWORD), "the password never reaches the log");
    assert!(r.gw.log().contains("authenticated user=alice"));
    // REQUIRETLS is taken over TLS, kept with the message, and honoured: the next hop here
    // offers no TLS, so the message never leaves in plaintext — it fails at once with 5.7.30
    // (RFC 8689), no days of retries.
    assert!(r.gw.wait_log("550 5.7.30 REQUIRETLS: the next hop does not offer STARTTLS", T), "{}", r.gw.log());
    assert!(r.sink.received().iter().all(|m| !m.rcpts.contains(&"strict@remote.test".to_string())));
    assert!(
        r.gw.log().lines().any(|l| l.contains("message accepted") && l.contains("requiretls=true")),
        "{}",
        r.gw.log()
    );
}

#[test]
fn requiretls_is_refused_without_tls_and_ipv6_listeners_work() {
    let sink = Sink::start();
    let port6 = free_port();
    let gw = Gateway::with_sink(sink.port(), &format!("[[listener]]\nname = \"v6\"\naddress = \"[::1]:{port6}\"\n"));
    let (ok, out) = python(
        port6,
        r#"
import os, smtplib
c = smtplib.SMTP("::1", int(os.environ["PORT"])); c.ehlo("client.test")
c.sendmail("a@sender.test", ["v6@remote.test"], b"Subject: v6\r\n\r\nhi\r\n"); c.quit()
"#,
    );
    assert!(ok, "{out}");
    let m = sink.wait_for_rcpt("v6@remote.test", T);
    assert!(m.text().contains("from client.test ([IPv6:::1])"), "{}", m.text());
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@sender.test> REQUIRETLS").starts_with("530 5.7.10"));
}

#[test]
fn auth_before_tls_is_refused_and_submission_needs_auth() {
    let r = rig("");
    let mut c = Raw::connect(r.submission);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAHg=").starts_with("538 5.7.11"));
    assert!(c.cmd("MAIL FROM:<alice@example.test>").starts_with("530 5.7.0"));
    // After TLS without AUTH: still refused at MAIL.
    let script = format!(
        r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.starttls(context=ctx); c.ehlo("py.test")
code, text = c.mail("alice@example.test"); print(code, text.decode())
assert code == 530 and text.startswith(b"5.7.0 Authentication required"), (code, text)
"#
    );
    let (ok, out) = python(r.submission, &script);
    assert!(ok, "{out}");
}

#[test]
fn bad_passwords_then_the_brute_force_limit() {
    let r = rig("[limits]\nmax_auth_failures = 3\n");
    let script = format!(
        r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.starttls(context=ctx); c.ehlo("py.test")
def plain(c, user, password):
    # One mechanism per attempt (login() would try PLAIN and then LOGIN).
    c.user, c.password = user, password
    return c.auth("PLAIN", c.auth_plain)
for i in range(2):
    try:
        plain(c, "alice", "wrong"); raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535 and e.smtp_error.startswith(b"5.7.8"), e
# A user name that would write a line of its own into the log, and drive a terminal.
try:
    plain(c, "mallory\r\n1999-01-01T00:00:00Z  INFO forged: authentication succeeded \x1b[2J", "{PASSWORD}")
    raise SystemExit("unknown user accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
# The third failure closed the connection with 421; a new one is refused at once.
c2 = smtplib.SMTP("127.0.0.1", port); c2.starttls(context=ctx); c2.ehlo("py.test")
try:
    plain(c2, "alice", "{PASSWORD}"); raise SystemExit("not limited")
except smtplib.SMTPResponseException as e:
    assert e.smtp_code == 421 and b"4.7.0" in e.smtp_error, e
print("limited")
"#
    );
    let (ok, out) = python(r.submission, &script);
    assert!(ok, "{out}\n{}", r.gw.log());
    // The client's user name is in the log, its line ends and escape escaped: no line of its
    // making, no escape sequence.
    let log = r.gw.log();
    assert!(
        log.contains(r"user=mallory\r\n1999-01-01T00:00:00Z  INFO forged: authentication succeeded \u{1b}[2J"),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("1999-01-01")) && !log.contains('\u{1b}'), "{log}");
}

/// PLAIN with an authorization identity (RFC 4616): alice's password does not make her bob
/// unless auth-static's `act_for` says so; then the session is bob's.
#[test]
fn plain_authzid_needs_permission_to_act_for_someone_else() {
    let script = format!(
        r#"{PY_PRELUDE}
import base64, sys
c = smtplib.SMTP("127.0.0.1", port); c.starttls(context=ctx); c.ehlo("py.test")
code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"bob\0alice\0{PASSWORD}").decode())
print(code, text.decode())
if code == 235:
    c.sendmail("bob@example.test", ["as-bob@remote.test"], msg)
# authzid equal to the user is no request to act for anyone.
c2 = smtplib.SMTP("127.0.0.1", port); c2.starttls(context=ctx); c2.ehlo("py.test")
code2, _ = c2.docmd("AUTH", "PLAIN " + base64.b64encode(b"alice\0alice\0{PASSWORD}").decode())
assert code2 == 235, code2
"#
    );
    let r = rig("");
    let (ok, out) = python(r.submission, &script);
    assert!(ok && out.starts_with("535 5.7.8"), "{out}\n{}", r.gw.log());
    // Allowed by the plugin's config: authenticated as bob.
    let act = Gateway::plugin(
        "auth-static",
        "auth-static",
        "stages = [\"auth\"]\ncpu_budget = \"5s\"\nmemory_limit = 67108864",
        &format!("users = [\"alice:{}\"]\nact_for = [\"alice:bob\"]", hash(PASSWORD)),
    );
    let r = rig_with(&act);
    let (ok, out) = python(r.submission, &script);
    assert!(ok && out.starts_with("235"), "{out}\n{}", r.gw.log());
    let t = r.sink.wait_for_rcpt("as-bob@remote.test", T).text();
    assert!(t.contains("; authenticated as bob)"), "{t}");
    assert!(r.gw.log().contains("authenticated user=bob authenticated_by=alice"), "{}", r.gw.log());
}

#[test]
fn command_pipelined_after_starttls_is_not_executed() {
    let r = rig("");
    let script = format!(
        r#"{PY_PRELUDE}
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
def reply(f):
    out = b""
    while True:
        l = f.readline(); out += l
        if l[3:4] != b"-": return out
reply(f); s.sendall(b"EHLO py.test\r\n"); reply(f)
# The injection: a command in the same packet as STARTTLS.
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
assert reply(f).startswith(b"220")
t = ctx.wrap_socket(s, server_hostname="mx.gateway.test"); tf = t.makefile("rb")
t.sendall(b"EHLO py.test\r\n"); e = reply(tf); assert b"STARTTLS" not in e, e
t.sendall(b"RCPT TO:<x@example.test>\r\n"); r = reply(tf)
assert r.startswith(b"503 5.5.1"), r   # no MAIL was executed
print("ok")
"#
    );
    let (ok, out) = python(r.submission, &script);
    assert!(ok, "{out}");
    assert!(r.gw.wait_log("discarded plaintext pipelined after STARTTLS", T));
}

#[test]
fn implicit_tls_on_the_submissions_listener() {
    let r = rig("");
    let script = format!(
        r#"{PY_PRELUDE}
c = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx); c.ehlo("py.test")
assert c.has_extn("auth") and not c.has_extn("starttls")
c.login("alice", "{PASSWORD}")
c.sendmail("alice@example.test", ["implicit@remote.test"], msg); c.quit(); print("ok")
"#
    );
    let (ok, out) = python(r.submissions, &script);
    assert!(ok, "{out}");
    r.sink.wait_for_rcpt("implicit@remote.test", T);
}

#[test]
fn relay_needs_auth_on_the_mx_listener() {
    let r = rig("");
    let script = format!(
        r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.starttls(context=ctx); c.ehlo("py.test")
c.mail("alice@example.test"); code, text = c.rcpt("other@remote.test")
assert code == 550 and text.startswith(b"5.7.1"), (code, text)
c.rset(); c.login("alice", "{PASSWORD}")
c.mail("alice@example.test"); code, _ = c.rcpt("other@remote.test"); assert code == 250
code, _ = c.data(msg); assert code == 250; c.quit(); print("ok")
"#
    );
    let (ok, out) = python(r.gw.port, &script);
    assert!(ok, "{out}");
    r.sink.wait_for_rcpt("other@remote.test", T);
}

#[test]
fn swaks_with_tls_and_auth() {
    let r = rig("");
    let out = swaks(
        r.submission,
        &[
            "-tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            PASSWORD,
            "--from",
            "alice@example.test",
            "--to",
            "swaks@remote.test",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("235 2.7.0 Authentication successful"), "{text}");
    r.sink.wait_for_rcpt("swaks@remote.test", T);
    let out = swaks(
        r.submission,
        &["-tls", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "nope", "--to", "x@remote.test"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"));
}

#[test]
fn openssl_s_client_starttls_handshake() {
    let r = rig("");
    let mut child = Command::new("openssl")
        // An IP address as SNI, as many clients send: rustls ignores it, and we do not log it.
        .args(["s_client", "-starttls", "smtp", "-brief", "-ign_eof", "-servername", "127.0.0.1"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", r.gw.port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    std::thread::sleep(Duration::from_millis(700));
    child.stdin.as_mut().unwrap().write_all(b"EHLO s-client.test\r\nQUIT\r\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("Protocol version: TLSv1.3"), "{all}");
    assert!(all.contains("250-AUTH PLAIN LOGIN") || all.contains("AUTH PLAIN LOGIN"), "{all}");
    assert!(all.contains("221 2.0.0"), "{all}");
    assert!(!r.gw.log().contains("Illegal SNI"), "an operator's log at info: {}", r.gw.log());
}

#[test]
fn starttls_forgets_what_plugins_remembered_and_the_score() {
    let (_certs, cert, key) = certificate();
    let memo = Gateway::plugin("memo", "memo", "stages = [\"helo\", \"mail_from\"]", "");
    let gw =
        Gateway::with_sink(1, &format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n{memo}", cert.display(), key.display()));
    let (ok, out) = python(
        gw.port,
        &format!(
            r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.ehlo("before-tls")
print(c.docmd("MAIL", "FROM:<a@sender.test>"))
c.docmd("RSET"); c.starttls(context=ctx); c.ehlo("after-tls")
print(c.docmd("MAIL", "FROM:<a@sender.test>"))
"#
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "(451, b'4.7.1 memo: plain, helos [before-tls], score 1, earlier sessions 0, conn helo before-tls,"
        ),
        "{out}"
    );
    // A new instance and a new score: nothing from before TLS.
    assert!(
        out.contains("(451, b'4.7.1 memo: tls, helos [after-tls], score 1, earlier sessions 0, conn helo after-tls,"),
        "{out}\n{}",
        gw.log()
    );
}

#[test]
fn plugins_see_the_authenticated_user_once_auth_succeeded() {
    let memo = Gateway::plugin("memo", "memo", "stages = [\"helo\", \"mail_from\"]", "");
    let r = rig(&memo);
    let (ok, out) = python(
        r.submission,
        &format!(
            r#"{PY_PRELUDE}
c = smtplib.SMTP("127.0.0.1", port); c.starttls(context=ctx); c.ehlo("py.test")
code, _ = c.login("alice", "{PASSWORD}"); assert code == 235
print(c.docmd("MAIL", "FROM:<alice@example.test>"))
"#
        ),
    );
    assert!(ok, "{out}");
    // The facts a plugin fetched at HELO (no user yet) are not the ones it gets after AUTH.
    assert!(out.contains("conn helo py.test, user alice, session "), "{out}\n{}", r.gw.log());
}
