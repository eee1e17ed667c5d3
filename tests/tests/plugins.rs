//! The plugin chain end to end: WebAssembly components built from source by plugins/build.sh,
//! run by the real gateway, driven by real clients.

use std::time::{Duration, Instant};

use mailgate_tests::clients::{swaks, Raw};
use mailgate_tests::dns::Dns;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;
use mailgate_tests::wait_for;

const T: Duration = Duration::from_secs(20);

/// A gateway relaying to `sink` with the given `[[plugin]]` blocks.
fn gateway(sink: &Sink, plugins: &str) -> Gateway {
    Gateway::with_sink(sink.port(), &format!("[queue]\nretry_schedule = [\"1s\"]\n{plugins}"))
}

fn verdict(stage: &str, plugin_stage: &str, verdict: &str, code: u16, enhanced: &str) -> String {
    Gateway::plugin(
        "verdict",
        "verdict",
        &format!("stages = [\"{stage}\"]"),
        &format!("stage = \"{plugin_stage}\"\nverdict = \"{verdict}\"\ncode = {code}\nenhanced = \"{enhanced}\"\ntext = \"policy says {verdict}\""),
    )
}

/// Runs a transaction step by step; returns (step name, reply) up to the first non-2xx/3xx,
/// then ("after", the reply to a NOOP — empty when the server closed the connection).
fn session(port: u16, rcpt: &str) -> Vec<(&'static str, String)> {
    let (mut raw, greet) = Raw::connect_any(port);
    let mut out = vec![("connect", greet.clone())];
    if !greet.starts_with('2') {
        out.push(("after", raw.reply()));
        return out;
    }
    let steps: [(&'static str, String); 5] = [
        ("helo", "EHLO client.test".into()),
        ("mail_from", "MAIL FROM:<a@sender.test>".into()),
        ("rcpt", format!("RCPT TO:<{rcpt}>")),
        ("data_cmd", "DATA".into()),
        ("data", "Subject: plugin test\r\n\r\nhello\r\n.".into()),
    ];
    for (name, line) in steps {
        let r = raw.cmd(&line);
        let ok = r.starts_with('2') || r.starts_with('3');
        out.push((name, r));
        if !ok {
            out.push(("after", raw.cmd("NOOP")));
            return out;
        }
    }
    out
}

#[test]
fn every_verdict_at_every_stage_reaches_the_wire() {
    let sink = Sink::start();
    // (gateway stage, verdict plugin stage, verdict, code, enhanced, step that answers)
    let cases = [
        ("connect", "connect", "reject", 554, "5.7.1", "connect"),
        ("connect", "connect", "tempfail", 421, "4.7.0", "connect"),
        ("helo", "helo", "reject", 550, "5.7.1", "helo"),
        ("helo", "helo", "tempfail", 450, "4.7.1", "helo"),
        ("helo", "helo", "disconnect", 421, "4.7.0", "helo"),
        ("mail_from", "mail-from", "reject", 553, "5.7.1", "mail_from"),
        ("mail_from", "mail-from", "tempfail", 451, "4.7.1", "mail_from"),
        ("mail_from", "mail-from", "disconnect", 521, "5.7.1", "mail_from"),
        ("rcpt", "rcpt", "reject", 550, "5.7.1", "rcpt"),
        ("rcpt", "rcpt", "tempfail", 451, "4.7.1", "rcpt"),
        ("rcpt", "rcpt", "disconnect", 421, "4.7.0", "rcpt"),
        ("data", "data", "reject", 554, "5.7.1", "data"),
        ("data", "data", "tempfail", 451, "4.7.1", "data"),
        ("data", "data", "disconnect", 421, "4.7.0", "data"),
    ];
    for (stage, pstage, v, code, enh, step) in cases {
        let gw = gateway(&sink, &verdict(stage, pstage, v, code, enh));
        let steps = session(gw.port, &format!("{v}-{stage}@remote.test"));
        let (name, reply) = steps
            .iter()
            .find(|(_, r)| !(r.starts_with('2') || r.starts_with('3')))
            .cloned()
            .unwrap_or_else(|| panic!("{stage}/{v}: {steps:?}"));
        assert_eq!(name, step, "{stage}/{v}: {steps:?}");
        assert!(reply.starts_with(&format!("{code} {enh} policy says {v}")), "{stage}/{v}: {reply}");
        let after = &steps.last().unwrap().1;
        let closed = after.is_empty();
        let want_closed = v == "disconnect" || stage == "connect";
        assert_eq!(closed, want_closed, "{stage}/{v}: connection closed? {steps:?}");
    }
    assert!(sink.received().is_empty(), "nothing refused was delivered");
}

#[test]
fn accept_next_quarantine_and_discard() {
    let sink = Sink::start();
    // accept at rcpt: the transaction goes on and the message is delivered.
    let gw = gateway(&sink, &verdict("rcpt", "rcpt", "accept", 250, "2.0.0"));
    let steps = session(gw.port, "accepted@remote.test");
    assert!(steps.last().unwrap().1.starts_with("250 2.0.0 Ok: queued as"), "{steps:?}");
    sink.wait_for_rcpt("accepted@remote.test", T);
    // quarantine and discard: the client hears 250, nothing is delivered.
    for v in ["quarantine", "discard"] {
        let gw = gateway(&sink, &verdict("data", "data", v, 250, "2.0.0"));
        let steps = session(gw.port, &format!("{v}@remote.test"));
        assert!(steps.last().unwrap().1.starts_with("250 2.0.0 Ok: queued as"), "{v}: {steps:?}");
        let needle = if v == "quarantine" { "message is quarantined" } else { "message discarded by policy" };
        assert!(gw.wait_log(needle, T), "{}", gw.log());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 1);
}

#[test]
fn stock_plugins_check_helo_and_recipients_and_add_a_header() {
    let sink = Sink::start();
    let plugins = [
        Gateway::plugin("helo-check", "helo-check", "stages = [\"helo\"]", "check_trusted = true"),
        Gateway::plugin(
            "rcpt-allow",
            "rcpt-allow",
            "stages = [\"rcpt\"]",
            "domains = [\"remote.test\"]\ncheck_trusted = true",
        ),
        Gateway::plugin(
            "add-header",
            "add-header",
            "stages = [\"data\"]",
            "name = \"X-Policy\"\nvalue = \"checked by wasm\"",
        ),
    ]
    .concat();
    let gw = gateway(&sink, &plugins);
    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO [10.9.9.9]").starts_with("550 5.7.1"), "IP literal that is not the client");
    assert!(c.cmd("EHLO [127.0.0.1]").starts_with("250"));
    c.cmd("MAIL FROM:<a@sender.test>");
    assert!(c.cmd("RCPT TO:<x@elsewhere.test>").starts_with("550 5.1.1"));
    assert!(c.cmd("RCPT TO:<ok@remote.test>").starts_with("250"));
    c.cmd("DATA");
    c.send(b"Subject: with header\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    let m = sink.wait_for_rcpt("ok@remote.test", T);
    // On top, below our own Received field (the trace block stays whole).
    let t = m.text();
    let at = |needle: &str| t.find(needle).unwrap_or_else(|| panic!("no {needle} in {t}"));
    assert!(at("Received: ") < at("\r\nX-Policy: checked by wasm\r\n"), "{t}");
    assert!(at("\r\nX-Policy: checked by wasm\r\n") < at("Subject: with header"), "{t}");
}

#[test]
fn routing_decision_is_honoured() {
    let sink = Sink::start();
    let other = Sink::start();
    // A smarthost of the plugin's own needs the route grant with it listed.
    let plugins = Gateway::plugin(
        "route-by-domain",
        "router",
        &format!(
            "stages = [\"route\"]\ngrants = [\"route\"]\nallowed_routes = [\"smarthost:127.0.0.1:{}\"]",
            other.port()
        ),
        &format!(
            "routes = [\"routed.test=smarthost:127.0.0.1:{}\", \"gone.test=reject:550 5.1.6 moved away\"]",
            other.port()
        ),
    );
    let gw = gateway(&sink, &plugins);
    let out = swaks(gw.port, &["--to", "x@routed.test,y@plain.test,z@gone.test", "--from", "a@sender.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let m = other.wait_for_rcpt("x@routed.test", T);
    assert_eq!(m.rcpts, vec!["x@routed.test"]);
    sink.wait_for_rcpt("y@plain.test", T);
    // The rejected route bounces: the DSN goes to the sender through the default route.
    let dsn = sink.wait_for_rcpt("a@sender.test", T);
    assert!(dsn.text().contains("550 5.1.6 moved away"), "{}", dsn.text());
}

#[test]
fn a_plugin_cannot_route_outside_the_configured_routes() {
    let sink = Sink::start();
    // An unconfigured smarthost: it must never see a connection.
    let trap = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil");
    let plugins = Gateway::plugin(
        "route-by-domain",
        "router",
        "stages = [\"route\"]\non_error = \"tempfail\"",
        &format!(
            "routes = [\"files.test=maildir:{}\", \"net.test=smarthost:127.0.0.1:{}\", \"fine.test=mx:fine.test\"]",
            evil.display(),
            trap.port()
        ),
    );
    let gw = gateway(&sink, &plugins);
    let out = swaks(gw.port, &["--to", "x@files.test,y@net.test", "--from", "a@sender.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let refused = |what: &str| {
        let log = gw.log();
        log.lines().any(|l| l.contains(what) && l.contains("is not configured for this plugin"))
    };
    assert!(
        wait_for(T, || (refused("maildir:") && refused("smarthost:127.0.0.1")).then_some(())).is_some(),
        "{}",
        gw.log()
    );
    assert!(!evil.exists(), "a file was written at a path no operator configured");
    assert_eq!(trap.connections(), 0, "a connection was made to a host no operator configured");
}

#[test]
fn misbehaving_plugins_cost_only_their_own_verdict() {
    let sink = Sink::start();
    for (mode, on_error, want, kind) in [
        ("loop", "tempfail", "451 4.3.0", "budget"),
        ("trap", "tempfail", "451 4.3.0", "trap"),
        ("oom", "tempfail", "451 4.3.0", "trap"),
        // Unbounded recursion ends at wasmtime's stack limit, a trap, whether the plugin runs on
        // a fiber or (like misbehave, which waits for nothing) on the session's own stack.
        ("recurse", "tempfail", "451 4.3.0", "trap"),
        ("recurse", "skip", "250 2.1.5", "trap"),
        ("bad-code", "tempfail", "451 4.3.0", "invalid_answer"),
        ("loop", "skip", "250 2.1.5", "budget"),
        ("trap", "skip", "250 2.1.5", "trap"),
    ] {
        let plugin = Gateway::plugin(
            "misbehave",
            "misbehave",
            &format!("stages = [\"rcpt\"]\non_error = \"{on_error}\"\ncpu_budget = \"50ms\"\nmemory_limit = 4194304"),
            &format!("mode = \"{mode}\"\nstage = \"rcpt\""),
        );
        let gw = gateway(&sink, &plugin);
        let port = gw.port;
        // Other sessions keep being served while the plugin spins.
        let bystander = std::thread::spawn(move || {
            let started = Instant::now();
            let mut c = Raw::connect(port);
            for _ in 0..20 {
                assert!(c.cmd("NOOP").starts_with("250"));
            }
            started.elapsed()
        });
        let mut c = Raw::connect(gw.port);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<a@sender.test>");
        let started = Instant::now();
        let r = c.cmd(&format!("RCPT TO:<{mode}@remote.test>"));
        let took = started.elapsed();
        assert!(r.starts_with(want), "{mode}/{on_error}: {r}");
        assert!(took < Duration::from_secs(5), "{mode}: answered within the budget (took {took:?})");
        // The session survives and works on.
        assert!(c.cmd("NOOP").starts_with("250"), "{mode}: session alive");
        assert!(bystander.join().unwrap() < Duration::from_secs(5));
        assert!(gw.wait_log("plugin failed", T), "{}", gw.log());
        let log = gw.log();
        let line = log.lines().find(|l| l.contains("plugin failed")).unwrap();
        assert!(
            line.contains("plugin=misbehave") && line.contains("stage=\"rcpt\"") && line.contains("sid="),
            "{line}"
        );
        assert!(line.contains(&format!("kind=\"{kind}\"")), "{mode}: failure kind {kind}: {line}");
        if mode == "recurse" {
            assert!(line.contains("call stack exhausted"), "stopped by the stack limit: {line}");
        }
        // The plugin's own line is tagged with its stage too (host.wit promises it).
        let own = log.lines().find(|l| l.contains(&format!("misbehave: {mode} at rcpt"))).unwrap();
        assert!(own.contains("plugin=\"misbehave\"") && own.contains("stage=\"rcpt\""), "{own}");
    }
}

/// An on-data answer of more modifications than any plugin needs is an invalid answer, not
/// applied (each could cost a pass over the message); within that limit, the recipients a
/// plugin adds stop at `limits.max_recipients`.
#[test]
fn a_flood_of_modifications_is_refused_and_added_recipients_are_bounded() {
    let sink = Sink::start();
    let flood = |count: u32, on_error: &str| {
        Gateway::plugin(
            "misbehave",
            "misbehave",
            &format!("stages = [\"data\"]\non_error = \"{on_error}\"\nmemory_limit = 67108864"),
            &format!("mode = \"flood\"\ncount = {count}"),
        )
    };
    // Each gateway lives until the test ends: the accepted message is still to be delivered.
    let mut gateways = vec![];
    for (on_error, want) in [("tempfail", "451 4.3.0"), ("skip", "250 2.0.0")] {
        let gw = gateway(&sink, &flood(20_000, on_error));
        let steps = session(gw.port, &format!("{on_error}@remote.test"));
        let data = &steps.iter().find(|(step, _)| *step == "data").unwrap().1;
        assert!(data.starts_with(want), "{on_error}: {steps:?}");
        assert!(gw.wait_log("plugin failed", T), "{}", gw.log());
        let log = gw.log();
        let line = log.lines().find(|l| l.contains("plugin failed")).unwrap();
        assert!(line.contains("kind=\"invalid_answer\"") && line.contains("20000 modifications"), "{line}");
        gateways.push(gw);
    }
    let skipped = sink.wait_for_rcpt("skip@remote.test", T);
    assert_eq!(skipped.rcpts, ["skip@remote.test"]);
    assert!(!skipped.text().contains("X-Flood"), "nothing of the refused answer applied");
    // 400: 200 recipients and 200 fields asked; the message has 100 recipients (1 + 99).
    let gw = gateway(&sink, &flood(400, "tempfail"));
    let steps = session(gw.port, "within@remote.test");
    assert!(steps.iter().any(|(step, r)| *step == "data" && r.starts_with("250 2.0.0")), "{steps:?}");
    assert!(gw.wait_log("over=101", T), "{}", gw.log());
    let flooded = || -> usize {
        sink.received().iter().map(|m| m.rcpts.iter().filter(|r| r.ends_with("@flood.test")).count()).sum()
    };
    assert_eq!(wait_for(T, || (flooded() >= 99).then_some(flooded())), Some(99));
    let copy = sink.wait_for_rcpt("within@remote.test", T);
    assert_eq!(copy.text().matches("X-Flood: ").count(), 200, "the fields were applied");
}

/// A plugin that logs in a loop writes at most 200 lines a call; the lines it could not write
/// are counted in one line at the end of the call, and the next call may write again.
#[test]
fn a_chattering_plugin_is_cut_off_per_call() {
    let sink = Sink::start();
    let plugin = Gateway::plugin(
        "misbehave",
        "misbehave",
        "stages = [\"rcpt\"]",
        "mode = \"chatter\"\nstage = \"rcpt\"\ncount = 10000",
    );
    let gw = gateway(&sink, &plugin);
    for i in 0..2 {
        let steps = session(gw.port, &format!("c{i}@remote.test"));
        assert!(steps.iter().any(|(step, r)| *step == "rcpt" && r.starts_with("250")), "{steps:?}");
    }
    // Its own "chatter at rcpt" line and lines 0 to 198: 200; 9 801 dropped, each call.
    let dropped = || gw.log().matches("dropped=9801").count();
    assert_eq!(wait_for(T, || (dropped() >= 2).then_some(dropped())), Some(2), "{}", gw.log());
    let log = gw.log();
    assert_eq!(log.matches("misbehave: chatter line 198 ").count(), 2, "{log}");
    assert!(!log.contains("misbehave: chatter line 199 "), "{log}");
}

#[test]
fn dns_is_denied_without_a_grant() {
    let sink = Sink::start();
    let dns = Dns::start(&["--txt-record=probe.test,\"hello from dns\""]);
    let probe = |grant: &str| {
        Gateway::plugin("dns-probe", "dns-probe", &format!("stages = [\"rcpt\"]\n{grant}"), "name = \"probe.test\"")
    };
    let gw = gateway(&sink, &format!("{}\n{}", dns.config(), probe("")));
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@sender.test>");
    let r = c.cmd("RCPT TO:<x@remote.test>");
    assert!(r.starts_with("550 5.7.1 dns-denied"), "{r}");
    // Granted: the lookup goes through the gateway's resolver to the real DNS server.
    let gw = gateway(&sink, &format!("{}\n{}", dns.config(), probe("grants = [\"dns\"]")));
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@sender.test>");
    assert!(c.cmd("RCPT TO:<x@remote.test>").starts_with("250"));
    assert!(gw.wait_log("hello from dns", T), "{}", gw.log());
}

#[test]
fn shadow_mode_logs_and_counts_but_does_not_enforce() {
    let sink = Sink::start();
    let plugin = Gateway::plugin(
        "verdict",
        "would-reject",
        "stages = [\"rcpt\"]\nmode = \"shadow\"",
        "stage = \"rcpt\"\nverdict = \"reject\"\ncode = 550\nenhanced = \"5.7.1\"\ntext = \"policy says reject\"",
    );
    let gw = gateway(&sink, &plugin);
    let steps = session(gw.port, "shadowed@remote.test");
    assert!(steps.last().unwrap().1.starts_with("250 2.0.0 Ok: queued as"), "{steps:?}");
    sink.wait_for_rcpt("shadowed@remote.test", T);
    assert!(gw.wait_log("shadow verdict (not enforced)", T), "{}", gw.log());
    let line = gw.log().lines().find(|l| l.contains("shadow verdict")).unwrap().to_string();
    assert!(line.contains("plugin=would-reject") && line.contains("550"), "{line}");
}

#[test]
fn per_domain_pipelines_split_mixed_recipients() {
    let sink = Sink::start();
    let plugins = [
        Gateway::plugin("add-header", "hdr-a", "stages = [\"data\"]", "name = \"X-Pipeline\"\nvalue = \"a\""),
        Gateway::plugin("add-header", "hdr-b", "stages = [\"data\"]", "name = \"X-Pipeline\"\nvalue = \"b\""),
    ]
    .concat();
    let gw = gateway(
        &sink,
        &format!("{plugins}\n[pipelines]\npa = [\"hdr-a\"]\npb = [\"hdr-b\"]\n\n[domain_pipelines]\n\"a.test\" = \"pa\"\n\"b.test\" = \"pb\"\n"),
    );
    let script = r#"
import os, smtplib
c = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"])); c.ehlo("py.test")
msg = b"Subject: split\r\n\r\nhello\r\n"
refused = c.sendmail("s@sender.test", ["x@a.test", "y@b.test", "z@a.test"], msg)
assert list(refused) == ["y@b.test"] and refused["y@b.test"][0] == 452, refused
assert refused["y@b.test"][1].startswith(b"4.5.3"), refused
assert c.sendmail("s@sender.test", list(refused), msg) == {}
c.quit(); print("ok")
"#;
    let (ok, out) = mailgate_tests::clients::python(gw.port, script);
    assert!(ok, "{out}");
    let a = sink.wait_for_rcpt("x@a.test", T);
    assert_eq!(a.rcpts, vec!["x@a.test", "z@a.test"]);
    assert!(a.text().contains("X-Pipeline: a\r\n") && !a.text().contains("X-Pipeline: b"), "{}", a.text());
    let b = sink.wait_for_rcpt("y@b.test", T);
    assert!(b.text().contains("X-Pipeline: b\r\n") && !b.text().contains("X-Pipeline: a"), "{}", b.text());
    // A domain in no list takes the listener's pipeline: `default`, every plugin in order.
    let c = {
        let (ok, out) = mailgate_tests::clients::python(
            gw.port,
            r#"
import os, smtplib
c = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"])); c.sendmail("s@sender.test", ["w@other.test"], b"Subject: d\r\n\r\nx\r\n"); c.quit()
"#,
        );
        assert!(ok, "{out}");
        sink.wait_for_rcpt("w@other.test", T)
    };
    assert!(c.text().contains("X-Pipeline: a\r\nX-Pipeline: b\r\n"), "{}", c.text());
}

/// The instance pool holds every plugin of every session up to `max_sessions` at once. A
/// plugin component is three core module instances (the plugin's module, and the shim and
/// fix-up modules `wit-component` adds), where the pool once counted two: a busy gateway ran
/// out of core instances at two thirds of its sessions, and the rest got the plugins' on_error
/// answer (a 421 greeting) instead of their checks.
#[test]
fn every_session_up_to_the_limit_runs_every_plugin() {
    const SESSIONS: usize = 40;
    let sink = Sink::start();
    let plugins: String = (1..=5)
        .map(|i| {
            Gateway::plugin(
                "verdict",
                &format!("v{i}"),
                "stages = [\"connect\"]",
                "stage = \"connect\"\nverdict = \"next\"",
            )
        })
        .collect();
    let limits = format!(
        "[limits]\nmax_sessions = {SESSIONS}\nmax_sessions_per_ip = {SESSIONS}\nmax_sessions_per_net = {SESSIONS}\n"
    );
    let gw = gateway(&sink, &format!("{limits}{plugins}"));
    // Every session stays open while the next connects: all their instances are live at once.
    let mut open = vec![];
    for i in 0..SESSIONS {
        let (raw, greet) = Raw::connect_any(gw.port);
        assert!(greet.starts_with("220"), "session {i} of {SESSIONS}: {greet}\n{}", gw.log());
        open.push(raw);
    }
    for raw in &mut open {
        assert!(raw.cmd("NOOP").starts_with("250"));
    }
    assert!(!gw.log().contains("plugin failed"), "{}", gw.log());
}

/// What the memo plugin (`show_envelope`) says of an envelope: see its `describe`.
fn envelope_line(from: &str, rcpts: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rcpts.iter().flat_map(|r| r.bytes().chain([b'\n'])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let (first, last) = (rcpts.first().map_or("-", |r| r.as_str()), rcpts.last().map_or("-", |r| r.as_str()));
    format!("from {from}, {n} recipients ({n}), first {first}, last {last}, fnv {h:016x}", n = rcpts.len())
}

#[test]
fn plugins_read_the_envelope_of_the_hook_as_it_grows() {
    let sink = Sink::start();
    // One reusable instance serves both sessions: what it kept of the first must not pass
    // for the second's envelope.
    let memo = Gateway::plugin(
        "memo",
        "memo",
        "stages = [\"rcpt\", \"data\", \"route\"]",
        "show_envelope = true\nreusable = true",
    );
    let gw = gateway(&sink, &format!("[limits]\nmax_recipients = 200\n{memo}"));
    let show = |c: &mut Raw| c.cmd("RCPT TO:<show@remote.test>");

    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert_eq!(show(&mut c), format!("451 4.7.1 memo: {}", envelope_line("a@sender.test", &[])));
    let x = ["x@remote.test".to_string(), "y@remote.test".to_string()];
    assert!(c.cmd("RCPT TO:<x@remote.test>").starts_with("250"));
    assert_eq!(show(&mut c), format!("451 4.7.1 memo: {}", envelope_line("a@sender.test", &x[..1])));
    // A new transaction is a new envelope, though it starts as the last one grew: the
    // plugin reads it at some recipients and not at others, and what it fetched is kept
    // (only the recipients added since are fetched).
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<b@other.test>").starts_with("250"));
    let mut rcpts = vec![];
    for i in 0..150 {
        let r = format!("r{i}@remote.test");
        assert!(c.cmd(&format!("RCPT TO:<{r}>")).starts_with("250"), "{r}");
        rcpts.push(r);
        if [1, 2, 40, 149, 150].contains(&rcpts.len()) {
            assert_eq!(show(&mut c), format!("451 4.7.1 memo: {}", envelope_line("b@other.test", &rcpts)));
        }
    }
    // The message's envelope at DATA, and in the queue at routing (every recipient of the
    // spooled message, asked about one after another).
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<y@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<route-show@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: envelope\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    let m = sink.wait_for_rcpt("y@remote.test", T);
    let three = [x[0].clone(), x[1].clone(), "route-show@remote.test".to_string()];
    let line = format!("X-Memo-Envelope: {}\r\n", envelope_line("a@sender.test", &three));
    // The gateway folds the long field: read it unfolded.
    let unfolded = m.text().replace("\r\n ", " ");
    assert!(unfolded.contains(&line), "{line}\n{}", m.text());
    let routed = format!("550 5.7.1 memo: {}", envelope_line("a@sender.test", &three));
    assert!(wait_for(T, || gw.log().contains(&routed).then_some(())).is_some(), "{routed}\n{}", gw.log());
    c.cmd("QUIT");

    let mut c = Raw::connect(gw.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<c@third.test>").starts_with("250"));
    let z: Vec<String> = (1..=3).map(|i| format!("z{i}@remote.test")).collect();
    for r in &z {
        assert!(c.cmd(&format!("RCPT TO:<{r}>")).starts_with("250"));
    }
    assert_eq!(show(&mut c), format!("451 4.7.1 memo: {}", envelope_line("c@third.test", &z)));
    // A second message through the queue: its own envelope at routing, not the first's.
    assert!(c.cmd("RCPT TO:<route-show@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: envelope 2\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    let four: Vec<String> = z.iter().cloned().chain(["route-show@remote.test".to_string()]).collect();
    let routed = format!("550 5.7.1 memo: {}", envelope_line("c@third.test", &four));
    assert!(wait_for(T, || gw.log().contains(&routed).then_some(())).is_some(), "{routed}\n{}", gw.log());
}
