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
