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
