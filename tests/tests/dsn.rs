//! The DSN extension (RFC 3461) on the way in: `DSN` is advertised; RET, ENVID, NOTIFY and
//! ORCPT are parsed, kept with the message and honoured in the failure DSN — NOTIFY=NEVER
//! sends none, RET=FULL returns the whole message, ENVID and ORCPT come back as
//! Original-Envelope-Id and Original-Recipient. The DSNs are read at a real sink.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(20);

fn send(c: &mut Raw, mail: &str, rcpt: &str, body: &str) {
    assert!(c.cmd(mail).starts_with("250"), "{mail}");
    assert!(c.cmd(rcpt).starts_with("250"), "{rcpt}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: dsn test\r\n\r\n{body}\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("250"));
}

#[test]
fn failure_dsns_honour_notify_ret_envid_and_orcpt() {
    let sink = Sink::start();
    sink.set_rcpt_reply("gone@remote.test", "550 5.1.1 No such user");
    let gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");
    let mut c = Raw::connect(gw.port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("250-DSN\r\n"), "{ehlo}");
    // Refused forms: with the reply RFC 3461 asks for.
    c.cmd("MAIL FROM:<x@remote.test>");
    for bad in ["RCPT TO:<gone@remote.test> NOTIFY=NEVER,FAILURE", "RCPT TO:<gone@remote.test> ORCPT=gone@remote.test"]
    {
        assert!(c.cmd(bad).starts_with("501 5.5.4"), "{bad}");
    }
    c.cmd("RSET");
    send(
        &mut c,
        "MAIL FROM:<full@remote.test> RET=FULL ENVID=T+2B1",
        "RCPT TO:<gone@remote.test> NOTIFY=FAILURE ORCPT=rfc822;alias+40remote.test",
        "the whole body comes back",
    );
    send(&mut c, "MAIL FROM:<never@remote.test>", "RCPT TO:<gone@remote.test> NOTIFY=NEVER", "no dsn for this one");
    send(&mut c, "MAIL FROM:<plain@remote.test> ENVID=P1", "RCPT TO:<gone@remote.test>", "headers only by default");
    let full = sink.wait_for_rcpt("full@remote.test", T).text();
    assert!(full.contains("Original-Envelope-Id: T+1\r\n"), "{full}");
    assert!(full.contains("Original-Recipient: rfc822; alias@remote.test\r\nFinal-Recipient: rfc822; gone@remote.test"));
    assert!(full.contains("Content-Type: message/rfc822\r\n") && full.contains("the whole body comes back"), "{full}");
    let plain = sink.wait_for_rcpt("plain@remote.test", T).text();
    assert!(plain.contains("Original-Envelope-Id: P1\r\n") && plain.contains("text/rfc822-headers"), "{plain}");
    assert!(!plain.contains("headers only by default") && !plain.contains("Original-Recipient"), "{plain}");
    // The NEVER message was tried and failed as the others, and nobody heard of it.
    assert!(gw.wait_log("no DSN (NOTIFY did not ask for one)", T), "{}", gw.log());
    assert!(sink.received().iter().all(|m| !m.rcpts.iter().any(|r| r == "never@remote.test")));
}

/// A next hop that does DSN (Postfix's smtp-sink) gets RET, ENVID, NOTIFY and ORCPT, and we
/// send no success DSN (it reports from there on); a hop that does not (`smtp-sink -N`) gets
/// none of them, and the sender who asked for NOTIFY=SUCCESS gets `Action: relayed` from us.
#[test]
fn dsn_parameters_go_on_to_a_hop_that_does_dsn_and_others_are_reported_relayed() {
    for hop_does_dsn in [true, false] {
        let hop = mailgate_tests::postfix_sink::PostfixSink::start(hop_does_dsn);
        let gw = Gateway::with_sink(hop.port, "[queue]\nretry_schedule = [\"1s\"]\n");
        let mut c = Raw::connect(gw.port);
        c.cmd("EHLO client.test");
        send(
            &mut c,
            "MAIL FROM:<app@remote.test> RET=HDRS ENVID=T+2B1",
            "RCPT TO:<user@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alias+40remote.test",
            "hello",
        );
        let got = hop.wait_for("<user@remote.test>", "Subject: dsn test", T);
        if hop_does_dsn {
            assert!(got.mail_args.ends_with("RET=HDRS ENVID=T+2B1"), "{got:?}");
            assert_eq!(got.rcpt_args, ["<user@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alias@remote.test"]);
            // The message is done, and its hop, not we, owes the sender the success report.
            assert!(gw.wait_log("message finished", T), "{}", gw.log());
            assert!(!gw.log().contains("DSN queued"), "{}", gw.log());
        } else {
            assert!(!got.mail_args.contains("RET=") && !got.mail_args.contains("ENVID="), "{got:?}");
            assert_eq!(got.rcpt_args, ["<user@remote.test>"]);
            let dsn = hop.wait_for("<app@remote.test>", "Action: relayed", T);
            assert_eq!(dsn.mail_args, "<>", "{dsn:?}");
            let t = dsn.text.replace('\r', "");
            assert!(t.contains("Subject: Successful Mail Delivery Report"), "{t}");
            assert!(t.contains("Original-Envelope-Id: T+1\n"), "{t}");
            assert!(
                t.contains("Original-Recipient: rfc822; alias@remote.test\nFinal-Recipient: rfc822; user@remote.test\nAction: relayed\nStatus: 2.0.0"),
                "{t}"
            );
            assert!(t.contains("text/rfc822-headers") && !t.contains("hello"), "{t}");
        }
    }
}

/// NOTIFY=SUCCESS for a maildir recipient: `Action: delivered`. A recipient still deferred
/// after `queue.delay_warning` gets one delay notice (with Will-Retry-Until) unless its NOTIFY
/// leaves DELAY out; the notice is an event.
#[test]
fn success_reports_for_local_delivery_and_one_delay_notice() {
    let sink = Sink::start();
    sink.set_rcpt_reply("slow1@remote.test", "451 4.2.1 mailbox busy");
    sink.set_rcpt_reply("slow2@remote.test", "451 4.2.1 mailbox busy");
    let gw = Gateway::with_sink(
        sink.port(),
        "[queue]\nretry_schedule = [\"1s\"]\ndelay_warning = \"1s\"\n\n[events]\nenabled = true\n",
    );
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    send(&mut c, "MAIL FROM:<app@remote.test> ENVID=local-1", "RCPT TO:<box@example.test> NOTIFY=SUCCESS", "stored");
    let ok = sink.wait_for_rcpt("app@remote.test", T).text();
    assert!(ok.contains("Original-Envelope-Id: local-1\r\n"), "{ok}");
    assert!(ok.contains("Final-Recipient: rfc822; box@example.test\r\nAction: delivered\r\nStatus: 2.0.0"), "{ok}");
    assert_eq!(Gateway::maildir_files(&gw.path("mail"), "box").len(), 1);

    send(&mut c, "MAIL FROM:<waiting@remote.test>", "RCPT TO:<slow1@remote.test>", "one");
    send(&mut c, "MAIL FROM:<quiet@remote.test>", "RCPT TO:<slow2@remote.test> NOTIFY=FAILURE", "two");
    let notice = sink.wait_for_rcpt("waiting@remote.test", T).text();
    assert!(notice.contains("Subject: Delayed Mail (still being retried)"), "{notice}");
    assert!(
        notice.contains("Final-Recipient: rfc822; slow1@remote.test\r\nAction: delayed\r\nStatus: 4.2.1"),
        "{notice}"
    );
    assert!(notice.contains("Will-Retry-Until: "), "{notice}");
    // Two more attempts of both: still one notice, and none for the sender who asked for none.
    let later = mailgate_tests::wait_for(T, || {
        (sink.rcpt_attempts("slow1@remote.test") >= 4 && sink.rcpt_attempts("slow2@remote.test") >= 4).then_some(())
    });
    assert!(later.is_some(), "{}", gw.log());
    let log = gw.log();
    let queued_to = |who: &str| log.lines().filter(|l| l.contains("DSN queued") && l.contains(who)).count();
    assert_eq!((queued_to("waiting@remote.test"), queued_to("quiet@remote.test")), (1, 0), "{log}");
    let events = std::fs::read_dir(gw.path("spool/events"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let notices: Vec<&str> = events.lines().filter(|l| l.contains("\"kind\":\"delay_notice\"")).collect();
    assert_eq!(notices.len(), 1, "{events}");
    assert!(notices[0].contains("\"recipient\":\"slow1@remote.test\""), "{}", notices[0]);
}
