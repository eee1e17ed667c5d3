//! Hostile messages and protocol edges, through the real binary: deep MIME structures are
//! refused before any plugin parses them (the gateway used to abort on a fiber stack
//! overflow), NUL octets are refused or stripped, 8-bit content never reaches a 7-bit next hop,
//! and the small edges of RFC 5321/3030 (Postmaster, AUTH without a checker, EXPN, duplicate
//! parameters, BDAT over the size limit, mailbox names).

use std::path::Path;
use std::time::Duration;

use mailgate_tests::clients::{python, Raw};
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;
use mailgate_tests::wait_for;

const T: Duration = Duration::from_secs(20);
const UNTRUSTED: &str = "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n";

/// `levels` nested parts of `kind`: `rfc822`, `global`, `multipart` or `mix`.
fn deep(kind: &str, levels: usize) -> Vec<u8> {
    let mut m = b"From: <s@sender.test>\r\nSubject: deep\r\n".to_vec();
    let mut closers = vec![];
    for i in 0..levels {
        let multipart = kind == "multipart" || (kind == "mix" && i % 2 == 0);
        if multipart {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n").as_bytes(),
            );
            closers.push(format!("--b{i}--\r\n"));
        } else {
            let sub = if kind == "global" { "global" } else { "rfc822" };
            m.extend_from_slice(format!("Content-Type: message/{sub}\r\n\r\n").as_bytes());
        }
    }
    m.extend_from_slice(b"Subject: inner\r\n\r\nhello\r\n");
    for c in closers.iter().rev() {
        m.extend_from_slice(c.as_bytes());
    }
    m
}

/// Sends one message over a raw connection; returns the final reply (or the refusal).
fn send_raw(port: u16, from: &str, to: &str, content: &[u8]) -> String {
    Raw::transaction(port, from, to, content)
}

#[test]
fn deep_structures_are_refused_before_any_plugin_and_the_gateway_lives_on() {
    let sink = Sink::start();
    // The dkim plugin asks for the parsed message at on-data, as the spam plugin does.
    let dkim = Gateway::plugin("dkim", "dkim", "stages = [\"data\"]", "require = [\"sender.test\"]");
    let gw = Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{dkim}"));
    for kind in ["rfc822", "global", "multipart", "mix"] {
        for levels in [51, 2_000, 5_000, 100_000] {
            let r = send_raw(gw.port, "s@sender.test", "u@example.test", &deep(kind, levels));
            assert!(r.starts_with("554 5.6.0 Message refused: "), "{kind} × {levels}: {r}\n{}", gw.log());
        }
        // At the limit the message reaches the plugin, which parses it (and refuses it for
        // want of a signature): the parse at 50 levels is safe.
        let r = send_raw(gw.port, "s@sender.test", "u@example.test", &deep(kind, 50));
        assert!(r.starts_with("550 5.7.20 no valid DKIM signature for sender.test"), "{kind} × 50: {r}");
    }
    // Still the same process, still answering.
    let r = send_raw(gw.port, "s@other.test", "u@example.test", b"Subject: after\r\n\r\nstill here\r\n");
    assert!(r.starts_with("250"), "{r}\n{}", gw.log());
    assert!(gw.log().contains("message refused: MIME structure nested deeper than 50 levels"));
}

#[test]
fn plugin_test_cli_refuses_a_deep_message_without_aborting() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("deep.eml");
    std::fs::write(&eml, deep("rfc822", 5_000)).unwrap();
    let wasm = mailgate_tests::gateway::repo_root().join("plugins/dist/dkim.wasm");
    let out = std::process::Command::new(binary())
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg("--eml")
        .arg(&eml)
        .args(["--from", "s@sender.test", "--rcpt", "u@example.test"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}: {text}", out.status);
    assert!(text.contains("data: refused before any plugin: 554 5.6.0"), "{text}");
}

#[test]
fn nul_octets_are_refused_in_data_and_bdat_or_stripped() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "");
    let smuggle = b"Subject: nul\r\n\r\nbefore\r\n\0.\r\nMAIL FROM:<evil@x.test>\r\nafter\r\n";
    let r = send_raw(gw.port, "s@sender.test", "u@remote.test", smuggle);
    assert_eq!(r, "550 5.6.0 Message refused: NUL octet in content");
    for body in [&b"Subject: nul\r\n\r\na\0b\r\n"[..], b"Subject: nul\r\n\r\n\0\r\n"] {
        assert!(send_raw(gw.port, "s@sender.test", "u@remote.test", body).starts_with("550 5.6.0"));
    }
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<s@sender.test>");
    c.cmd("RCPT TO:<u@remote.test>");
    c.send(format!("BDAT {} LAST\r\n", smuggle.len()).as_bytes());
    c.send(smuggle);
    assert_eq!(c.reply(), "550 5.6.0 Message refused: NUL octet in content");
    assert!(c.cmd("NOOP").starts_with("250"), "in step after the chunk");

    // Configured to strip: the NUL is gone and the lone dot is an ordinary (stuffed) line.
    let gw = Gateway::with_sink(sink.port(), "[limits]\nnul_bytes = \"strip\"\n");
    assert!(send_raw(gw.port, "s@sender.test", "u@remote.test", smuggle).starts_with("250"));
    let got = sink.wait_for_rcpt("u@remote.test", T);
    assert!(!got.data.contains(&0));
    assert!(got.text().contains("before\r\n.\r\nMAIL FROM:<evil@x.test>\r\nafter\r\n"), "{}", got.text());
    assert_eq!(sink.received().len(), 1, "one message, not two");
}

#[test]
fn eight_bit_content_is_never_sent_to_a_seven_bit_next_hop() {
    let sink = Sink::start();
    sink.set_8bitmime(false);
    let gw = Gateway::with_sink(sink.port(), "");
    let body = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu \u{8a}\r\n".as_bytes();
    assert!(send_raw(gw.port, "s@example.test", "u@remote.test", body).starts_with("250"));
    // The sender hears about it in a DSN (delivered to its maildir), naming the reason.
    let dsn = wait_for(T, || {
        Gateway::maildir_files(&gw.path("mail"), "s").first().map(|f| std::fs::read_to_string(f).unwrap_or_default())
    })
    .unwrap_or_else(|| panic!("no DSN; log:\n{}", gw.log()));
    assert!(dsn.contains("5.6.3"), "{dsn}");
    assert!(sink.received().is_empty(), "8-bit content went to a 7-bit next hop");
    // Plain ASCII still goes.
    assert!(send_raw(gw.port, "s@example.test", "v@remote.test", b"Subject: ascii\r\n\r\nok\r\n").starts_with("250"));
    sink.wait_for_rcpt("v@remote.test", T);
}

#[test]
fn postmaster_expn_auth_and_duplicate_parameters() {
    let gw = Gateway::with_sink(1, UNTRUSTED);
    let mut c = Raw::connect(gw.port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(c.cmd("AUTH PLAIN AGFiYwBkZWY="), "502 5.5.1 AUTH not available");
    assert!(c.cmd("EXPN staff").starts_with("502 5.5.1 EXPN"));
    assert!(c.cmd("VRFY someone").starts_with("252 2.5.2"));
    for dup in ["SIZE=10 SIZE=20", "BODY=7BIT BODY=8BITMIME", "SMTPUTF8 SMTPUTF8"] {
        let r = c.cmd(&format!("MAIL FROM:<s@sender.test> {dup}"));
        assert_eq!(r, "501 5.5.4 Duplicate MAIL parameter", "{dup}");
    }
    // <Postmaster> without a domain: accepted from an untrusted client, delivered to the
    // configured address (postmaster@example.test, the first accepted domain, a maildir).
    assert!(c.cmd("MAIL FROM:<s@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<Postmaster>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<someone@elsewhere.test>").starts_with("550 5.7.1"), "no relay through it");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: to the postmaster\r\n\r\nhello\r\n");
    assert!(c.cmd(".").starts_with("250"));
    let got = wait_for(T, || Gateway::maildir_files(&gw.path("mail"), "postmaster").first().cloned());
    assert!(got.is_some(), "{}", gw.log());

    // AUTH after STARTTLS, still nothing to check credentials: the same 502.
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["mx.gateway.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), ck.key_pair.serialize_pem()).unwrap();
    let d = dir.path().display();
    let gw = Gateway::with_sink(1, &format!("[tls]\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\n"));
    let (ok, out) = python(
        gw.port,
        "import os, smtplib, ssl\nctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         c = smtplib.SMTP('127.0.0.1', int(os.environ['PORT'])); c.ehlo('py.test'); print(c.docmd('AUTH', 'PLAIN AGFiYwBkZWY='))\n\
         c.starttls(context=ctx); c.ehlo('py.test'); assert not c.has_extn('auth')\n\
         print(c.docmd('AUTH', 'PLAIN AGFiYwBkZWY='))\n",
    );
    assert!(ok, "{out}");
    assert_eq!(out.matches("(502, b'5.5.1 AUTH not available')").count(), 2, "{out}");
}

#[test]
fn bdat_is_refused_at_the_chunk_that_crosses_the_size_limit() {
    let gw = Gateway::with_sink(1, "[limits]\nmax_message_size = 1000\n");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<s@sender.test>");
    c.cmd("RCPT TO:<u@example.test>");
    let chunk = |n: usize| "x".repeat(n - 2) + "\r\n";
    c.send(format!("BDAT 600\r\n{}", chunk(600)).as_bytes());
    assert_eq!(c.reply(), "250 2.0.0 600 octets received");
    c.send(format!("BDAT 600\r\n{}", chunk(600)).as_bytes());
    assert_eq!(c.reply(), "552 5.3.4 Message exceeds the size limit", "refused at the crossing chunk");
    // Later chunks are read and refused alike, LAST ends the transaction, nothing is kept.
    c.send(format!("BDAT 600\r\n{}BDAT 10 LAST\r\n{}", chunk(600), chunk(10)).as_bytes());
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").starts_with("250"), "a new transaction may start");
    assert!(Gateway::maildir_files(&gw.path("mail"), "u").is_empty());
}

#[test]
fn local_parts_that_differ_get_their_own_mailboxes() {
    let gw = Gateway::with_sink(1, "");
    let rcpts = ["user%evil.org@example.test", "\"user@evil.org\"@example.test", "user_evil.org@example.test"];
    for r in rcpts {
        assert!(send_raw(gw.port, "s@sender.test", r, b"Subject: box\r\n\r\nhi\r\n").starts_with("250"), "{r}");
    }
    let root = gw.path("mail");
    let boxes = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let got = wait_for(T, || {
        let b = boxes(&root);
        (b.len() == 3 && b.iter().all(|m| Gateway::maildir_files(&root, m).len() == 1)).then_some(b)
    });
    assert_eq!(
        got,
        Some(vec!["user%25evil.org".to_string(), "user%40evil.org".to_string(), "user_evil.org".to_string()]),
        "{:?}",
        boxes(&root)
    );
}

#[test]
fn content_beyond_the_memory_budget_is_refused_for_now() {
    let gw = Gateway::with_sink(1, "[limits]\ncontent_memory = 1048576\n");
    let line = format!("{}\r\n", "x".repeat(998));
    let kib600: String = line.repeat(600);
    // A holds 600 KB of an unfinished message: declared with SIZE, so its share is taken at
    // DATA, before B asks (without SIZE it grows as the data is read, and a loaded machine may
    // read it only after B has taken its share: then A, not B, is the one refused).
    let mut a = Raw::connect(gw.port);
    a.cmd("EHLO a.test");
    assert!(a.cmd("MAIL FROM:<a@sender.test> SIZE=614400").starts_with("250"));
    a.cmd("RCPT TO:<u@example.test>");
    assert!(a.cmd("DATA").starts_with("354"));
    a.send(kib600.as_bytes());
    // B announces 500 KB: the budget (1 MiB) cannot hold both, so B hears 452 before any data.
    let mut b = Raw::connect(gw.port);
    b.cmd("EHLO b.test");
    assert!(b.cmd("MAIL FROM:<b@sender.test> SIZE=500000").starts_with("250"));
    b.cmd("RCPT TO:<u@example.test>");
    let got = wait_for(T, || {
        let r = b.cmd("DATA");
        if r.starts_with("354") {
            b.send(b".\r\n");
            b.reply();
            b.cmd("RSET");
            b.cmd("MAIL FROM:<b@sender.test> SIZE=500000");
            b.cmd("RCPT TO:<u@example.test>");
            None
        } else {
            Some(r)
        }
    });
    assert_eq!(got.as_deref(), Some("452 4.3.1 Insufficient system storage, try again later"));
    // A goes over the budget on its own: refused for now at the end of its data.
    a.send(kib600.as_bytes());
    let r = a.cmd(".");
    assert_eq!(r, "452 4.3.1 Insufficient system storage, try again later");
    // The memory came back: a small message goes through.
    assert!(send_raw(gw.port, "c@sender.test", "u@example.test", b"Subject: small\r\n\r\nok\r\n").starts_with("250"));
}
