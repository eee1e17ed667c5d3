//! Address maps through the real gateway, read at a real sink: virtual aliases (an address to
//! several, a domain to another, a catch-all, from the config and a table), canonical rewriting
//! of the sender and of header fields, the original address kept for the DSN, aliases passing
//! recipient verification, and loops refused by `config check` and by a reload.

use std::process::Command;
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::{binary, Gateway};
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(20);

fn send(port: u16, from: &str, rcpts: &[&str], header: &str) {
    Raw::deliver(port, from, rcpts, &format!("{header}Subject: maps\r\n\r\nhello\r\n"));
}

fn config(sink: &Sink, table: &std::path::Path, users: &std::path::Path) -> String {
    format!(
        r#"[relay]
accept_domains = ["corp.test", "old.test", "catch.test"]
recipient_delimiter = "+"

[aliases]
table = "{table}"

[aliases.map]
"sales@corp.test" = ["ann@corp.test", "bob@corp.test"]
"@old.test" = ["@corp.test"]

[canonical]
headers = true

[canonical.sender]
"root@gw.test" = "ops@corp.test"

[verify.domains]
"corp.test" = {{ table = "{users}" }}

[routes]
"*" = {{ type = "smarthost", host = "127.0.0.1", port = {port}, tls = "none" }}
"#,
        table = table.display(),
        users = users.display(),
        port = sink.port()
    )
}

#[test]
fn aliases_and_canonical_maps_rewrite_the_envelope_and_headers() {
    let sink = Sink::start();
    sink.set_rcpt_reply("bob@corp.test", "550 5.1.1 bob left");
    let dir = tempfile::tempdir().unwrap();
    let (table, users) = (dir.path().join("aliases"), dir.path().join("users"));
    std::fs::write(&table, "# catch-all\n@catch.test\tpostbox@corp.test\n").unwrap();
    // The mailboxes verification knows: the aliases are not among them and still pass.
    std::fs::write(&users, "ann@corp.test\nbob@corp.test\npostbox@corp.test\ncarl@corp.test\n").unwrap();
    let gw = Gateway::start(&config(&sink, &table, &users));
    send(
        gw.port,
        "root@gw.test",
        &["Sales+promo@corp.test", "carl@old.test", "x@catch.test"],
        "From: Root <root@gw.test>\r\nTo: sales@corp.test\r\n",
    );
    let m = sink.wait_for_rcpt("ann@corp.test", T);
    assert_eq!(m.from, "ops@corp.test", "the sender's canonical form");
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["ann@corp.test", "carl@corp.test", "postbox@corp.test"]);
    let t = m.text();
    assert!(t.contains("From: Root <ops@corp.test>\r\n"), "{t}");
    assert!(t.contains("To: sales@corp.test\r\n"), "aliases leave headers alone: {t}");
    // bob's failure is reported under the address the sender used.
    let dsn = sink.wait_for_rcpt("ops@corp.test", T).text();
    assert!(dsn.contains("Original-Recipient: rfc822; Sales+promo@corp.test"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; bob@corp.test"), "{dsn}");
    assert!(gw.log().contains("recipient rewritten"), "{}", gw.log());
    // Not an alias and not a mailbox: refused at RCPT as before.
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@out.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<nobody@corp.test>").starts_with("550 5.1.1"));
}

#[test]
fn alias_loops_are_refused_by_config_check_and_by_reload() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let (table, users) = (dir.path().join("aliases"), dir.path().join("users"));
    std::fs::write(&table, "a@corp.test\tb@corp.test\n").unwrap();
    std::fs::write(&users, "b@corp.test\n").unwrap();
    let gw = Gateway::start(&config(&sink, &table, &users));
    std::fs::write(&table, "a@corp.test\tb@corp.test\nb@corp.test\tc@corp.test, a@corp.test\n").unwrap();
    let out =
        Command::new(binary()).args(["config", "check", "--config"]).arg(gw.path("mailgate.toml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("alias loop: a@corp.test → b@corp.test → a@corp.test"), "{err}");
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("reload failed", T), "{}", gw.log());
    // The running maps stay: a@ still goes to b@.
    send(gw.port, "s@out.test", &["a@corp.test"], "");
    assert_eq!(sink.wait_for(1, T)[0].rcpts, ["b@corp.test"]);
}
