//! Abuse plugins through the gateway with real clients: a DNSBL zone on a real DNS server,
//! greylisting with a short delay, a rate limit.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

/// Loopback clients are trusted by default; these plugins matter for untrusted ones.
const UNTRUSTED: &str = "[relay]\naccept_domains = [\"example.test\"]\ntrusted_networks = []\n";

fn rcpt(port: u16, from: &str, to: &str) -> String {
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.test");
    c.cmd(&format!("MAIL FROM:<{from}>"));
    c.cmd(&format!("RCPT TO:<{to}>"))
}

#[test]
fn a_listed_client_is_refused_and_a_dead_list_never_blocks() {
    let sink = Sink::start();
    // 127.0.0.1 reversed in the listing zone; the other zone lists nothing.
    let dns = Dns::start(&["--host-record=1.0.0.127.bl.test,127.0.0.2"]);
    let dnsbl = |zones: &str| {
        Gateway::plugin(
            "dnsbl",
            "dnsbl",
            "stages = [\"connect\"]\ngrants = [\"dns\"]",
            &format!("zones = [{zones}]\nstage = \"connect\""),
        )
    };
    let gw = Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{}\n{}", dns.config(), dnsbl("\"bl.test=1.0\"")));
    let (_c, greeting) = Raw::connect_any(gw.port);
    assert!(greeting.starts_with("554 5.7.1 127.0.0.1 is listed (bl.test=1)"), "{greeting}");
    let gw =
        Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{}\n{}", dns.config(), dnsbl("\"clean.test=1.0\"")));
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("250"));
    // A DNS server that does not answer: the list is skipped, mail flows.
    let dead = mailgate_tests::free_udp_port();
    let gw = Gateway::with_sink(
        sink.port(),
        &format!(
            "{UNTRUSTED}\n[dns]\nnameservers = [\"127.0.0.1:{dead}\"]\ntimeout = \"1s\"\nattempts = 1\n{}",
            dnsbl("\"bl.test=1.0\"")
        ),
    );
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("250"));
    assert!(gw.wait_log("did not answer", Duration::from_secs(10)));
}

#[test]
fn greylisting_defers_then_accepts_after_the_delay() {
    let sink = Sink::start();
    let grey = Gateway::plugin(
        "greylist",
        "greylist",
        "stages = [\"rcpt\"]\ngrants = [\"kv\"]",
        "delay = 1\nallow = [\"@friend.test\"]",
    );
    let gw = Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{grey}"));
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("451 4.7.1 Greylisted"));
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("451 4.7.1"), "too early");
    // Another triplet is greylisted on its own; an allow-listed sender is not.
    assert!(rcpt(gw.port, "b@sender.test", "u@example.test").starts_with("451"));
    assert!(rcpt(gw.port, "x@friend.test", "u@example.test").starts_with("250"));
    std::thread::sleep(Duration::from_millis(2200));
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("250"));
    assert!(rcpt(gw.port, "a@sender.test", "u@example.test").starts_with("250"), "stays known");
}

#[test]
fn rate_limit_triggers_at_the_configured_count() {
    let sink = Sink::start();
    let limit = Gateway::plugin(
        "ratelimit",
        "ratelimit",
        "stages = [\"mail_from\"]\ngrants = [\"kv\"]",
        "by = \"ip\"\nlimit = 2\nwindow = 60",
    );
    let gw = Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{limit}"));
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    for _ in 0..2 {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
    }
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("450 4.7.1 Rate limit exceeded"));
    // Without the kv grant the plugin is denied and does not limit (it logs why).
    let limit = Gateway::plugin("ratelimit", "ratelimit", "stages = [\"mail_from\"]", "limit = 0");
    let gw = Gateway::with_sink(sink.port(), &format!("{UNTRUSTED}\n{limit}"));
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(gw.wait_log("kv unavailable (KvError::Denied)", Duration::from_secs(10)), "{}", gw.log());
}

/// Words for the generated training corpus: a spam and a ham vocabulary.
const SPAMMY: &[&str] = &[
    "viagra",
    "lottery",
    "winner",
    "cash",
    "bonus",
    "casino",
    "pills",
    "cheap",
    "offer",
    "unsubscribe",
    "mortgage",
    "guaranteed",
    "click",
    "prize",
    "million",
    "refinance",
    "credit",
    "investment",
    "limited",
    "urgent",
];
const HAMMY: &[&str] = &[
    "meeting", "agenda", "patch", "review", "kernel", "compile", "release", "minutes", "thursday", "branch", "merge",
    "config", "deploy", "schedule", "tests", "build", "lunch", "project", "budget", "slides",
];

/// A message whose body draws 12 words from `words`, picked by `seed`.
fn corpus_message(words: &[&str], seed: usize, subject: &str) -> String {
    let body: Vec<&str> = (0..12).map(|i| words[(seed * 7 + i * 3) % words.len()]).collect();
    format!(
        "From sender@somewhere Mon Jan  1 00:00:00 2024\nFrom: Someone <s{seed}@corpus.test>\nSubject: {subject} {}\n\n{}\n",
        body[0],
        body.join(" ")
    )
}

/// Sends one message with smtplib; prints "OK" or the refusal's code.
fn send(port: u16, msg: &str) -> String {
    let script = format!(
        "import os, smtplib\nmsg = {msg:?}\ns = smtplib.SMTP('127.0.0.1', int(os.environ['PORT']), timeout=20)\n\
         try:\n    s.sendmail('sender@somewhere.test', ['u@remote.test'], msg)\n    print('OK')\n\
         except smtplib.SMTPDataError as e:\n    print(e.smtp_code, e.smtp_error.decode())\ns.quit()\n"
    );
    let (ok, out) = mailgate_tests::clients::python(port, &script);
    assert!(ok, "{out}");
    out.trim().to_string()
}

#[test]
fn spam_model_scores_shared_with_dnsbl_decide_and_mark_messages() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, words) in [("spam", SPAMMY), ("ham", HAMMY)] {
        std::fs::create_dir(dir.path().join(kind)).unwrap();
        for i in 0..30 {
            let subject = if kind == "spam" { "WIN" } else { "Re:" };
            std::fs::write(dir.path().join(kind).join(format!("{i}.txt")), corpus_message(words, i, subject)).unwrap();
        }
    }
    let model = dir.path().join("model.tsv");
    let out = std::process::Command::new(mailgate_tests::gateway::binary())
        .args(["spam", "train", "--spam"])
        .arg(dir.path().join("spam"))
        .arg("--ham")
        .arg(dir.path().join("ham"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("trained on 30 spam and 30 ham messages"), "{said}");

    let spam_plugin = Gateway::plugin(
        "spam",
        "spam",
        &format!("stages = [\"data\"]\ndata = {{ model = \"{}\" }}", model.display()),
        "quarantine_at = 3.5\nreject_at = 7.0",
    );
    let spam_msg = "From: Prize Desk <desk@lucky.test>\r\nSubject: WIN cash\r\n\r\ncheap viagra pills lottery winner cash bonus click prize million\r\n";
    // A forged "No" from the sender must not survive.
    let ham_msg = "From: Bob <bob@corp.test>\r\nSubject: Re: agenda\r\nX-Spam-Status: No, forged\r\n\r\nmeeting agenda patch review thursday merge branch tests\r\n";

    // Alone, the model quarantines the spam (the client hears 250) and marks the ham.
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &spam_plugin);
    assert_eq!(send(gw.port, spam_msg), "OK");
    assert!(gw.wait_log("message is quarantined", Duration::from_secs(10)), "{}", gw.log());
    assert_eq!(send(gw.port, ham_msg), "OK");
    let got = sink.wait_for_rcpt("u@remote.test", Duration::from_secs(10)).text();
    assert!(got.contains("X-Spam-Status: No, score=-2.0 required=3.5 tests=BAYES_00=-2.0"), "{got}");
    assert!(got.contains("X-Spam-Score: -2.0"), "{got}");
    assert!(!got.contains("forged"), "the sender's own X-Spam-Status was kept: {got}");
    assert_eq!(sink.received().len(), 1, "the quarantined message was delivered");

    // With dnsbl adding 5 points at connect, the shared total refuses the spam (5 + 5 ≥ 7) and
    // the ham still passes (5 − 2 < 3.5), its header naming both plugins' rules.
    let dns = Dns::start(&["--host-record=1.0.0.127.bl.test,127.0.0.2"]);
    let dnsbl = Gateway::plugin(
        "dnsbl",
        "dnsbl",
        "stages = [\"connect\"]\ngrants = [\"dns\"]",
        "zones = [\"bl.test=5.0\"]\nstage = \"score\"",
    );
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), &format!("{}\n{dnsbl}\n{spam_plugin}", dns.config()));
    assert_eq!(send(gw.port, spam_msg), "550 5.7.1 Message refused as spam (score 10.0)");
    assert_eq!(send(gw.port, ham_msg), "OK");
    // Unfolded: the host folds long fields at spaces.
    let got = sink.wait_for_rcpt("u@remote.test", Duration::from_secs(10)).text().replace("\r\n ", " ");
    assert!(got.contains("X-Spam-Status: No, score=3.0 required=3.5 tests=DNSBL_BL_TEST=5.0, BAYES_00=-2.0"), "{got}");
}
