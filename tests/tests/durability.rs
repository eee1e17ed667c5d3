//! Nothing acknowledged is lost: kill -9 after `250`, restarts with a non-empty queue.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::free_port;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(30);

fn send_raw(port: u16, rcpt: &str, subject: &str) -> String {
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.test");
    c.send(format!("MAIL FROM:<a@sender.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes());
    c.reply();
    c.reply();
    c.reply();
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    r[24..].to_string()
}

#[test]
fn kill_9_right_after_250_then_restart_delivers_everything() {
    // Nothing listens on the next hop yet: every message must stay queued.
    let sink_port = free_port();
    let mut gw = Gateway::with_sink(sink_port, "[queue]\nretry_schedule = [\"1s\"]\n");
    let mut ids = vec![];
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let port = gw.port;
            std::thread::spawn(move || send_raw(port, &format!("k{i}@remote.test"), &format!("kill test {i}")))
        })
        .collect();
    for h in handles {
        ids.push(h.join().unwrap());
    }
    gw.kill9();
    let sink = Sink::start_on(sink_port, false);
    gw.start_again();
    let got = sink.wait_for(10, T);
    for i in 0..10 {
        let n = got.iter().filter(|m| m.rcpts == vec![format!("k{i}@remote.test")]).count();
        assert_eq!(n, 1, "k{i} delivered exactly once");
    }
    assert!(gw.wait_log("queued again from the spool", T));
    for id in ids {
        assert!(gw.log().contains(&id), "{id} in the log");
    }
}

#[test]
fn restart_with_a_non_empty_queue() {
    let sink = Sink::start();
    sink.set_rcpt_reply("wait@remote.test", "451 4.3.0 not yet");
    let mut gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"2s\"]\n");
    send_raw(gw.port, "wait@remote.test", "survives restarts");
    assert!(gw.wait_log("message deferred", T));
    gw.stop();
    assert_eq!(sink.received().len(), 0);
    sink.clear_rcpt_reply("wait@remote.test");
    gw.start_again();
    let m = sink.wait_for_rcpt("wait@remote.test", T);
    assert!(m.text().contains("Subject: survives restarts"));
    assert!(gw.wait_log("message finished", T));
    // Finished messages are not recovered again.
    gw.stop();
    gw.start_again();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 1);
}

#[test]
fn sigterm_lets_a_transaction_finish_then_stops_and_keeps_the_queue() {
    let sink_port = free_port();
    let mut gw = Gateway::with_sink(sink_port, "[queue]\nretry_schedule = [\"1s\"]\n");
    let mut c = Raw::connect(gw.port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<late@remote.test>").starts_with("250"));
    gw.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    // The transaction in flight completes; then the session is told to go.
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: during shutdown\r\n\r\nbody\r\n.").starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.cmd("NOOP").starts_with("421 4.3.2"));
    // No new sessions are accepted.
    assert!(mailgate_tests::wait_for(T, || std::net::TcpStream::connect(("127.0.0.1", gw.port))
        .is_err()
        .then_some(()))
    .is_some());
    assert!(gw.wait_log("gateway stopped", T), "{}", gw.log());
    gw.stop();
    // The message stayed in the spool (the next hop was down) and goes out after a restart.
    let sink = Sink::start_on(sink_port, false);
    gw.start_again();
    let m = sink.wait_for_rcpt("late@remote.test", T);
    assert!(m.text().contains("Subject: during shutdown"));
}

/// One message on a new connection; `Some(true)` when it was acknowledged with 250, `None`
/// when the gateway was not there (killed): never panics, the gateway comes and goes.
fn try_send(port: u16, subject: &str) -> Option<bool> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut got = Vec::new();
    let mut replies = |s: &mut std::net::TcpStream, n: usize| -> Option<String> {
        let mut buf = [0u8; 1024];
        while got.iter().filter(|b| **b == b'\n').count() < n {
            let k = s.read(&mut buf).ok().filter(|k| *k > 0)?;
            got.extend_from_slice(&buf[..k]);
        }
        Some(String::from_utf8_lossy(&got).into_owned())
    };
    replies(&mut s, 1)?;
    s.write_all(b"HELO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<d@remote.test>\r\nDATA\r\n").ok()?;
    replies(&mut s, 5)?;
    s.write_all(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\nQUIT\r\n").as_bytes()).ok()?;
    let all = replies(&mut s, 6)?;
    Some(all.lines().nth(5).is_some_and(|l| l.starts_with("250 2.0.0 Ok: queued")))
}

/// kill -9 again and again under load: every acknowledged message is delivered (none lost), and
/// few twice (the done record follows a delivery within one write). `KILL_ROUNDS` and
/// `KILL_SENDERS` set the rounds and the concurrent senders (default 3 and 8; BENCHMARKS.md
/// has 20-round runs).
#[test]
fn kill_9_under_load_loses_nothing_and_rarely_delivers_twice() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let env = |k: &str, default: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, senders) = (env("KILL_ROUNDS", 3), env("KILL_SENDERS", 8));
    // How long the last gateway gets to deliver the backlog of every restart.
    let drain = Duration::from_secs(env("KILL_DRAIN", 90) as u64);
    let sink = Sink::start();
    let mut gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let port = gw.port;
    let senders: Vec<_> = (0..senders)
        .map(|t| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                // Bounded: at most 100,000 tries per sender, and the test stops them.
                for n in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let subject = format!("dup-{t}-{n}");
                    match try_send(port, &subject) {
                        Some(true) => acked.lock().unwrap().push(subject),
                        Some(false) => {}
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(1500));
        gw.kill9();
        gw.start_again();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too little load: {}", acked.len());
    let count = |sink: &Sink| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in sink.received() {
            let text = m.text();
            if let Some(s) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *seen.entry(s.to_string()).or_default() += 1;
            }
        }
        seen
    };
    let all_there = mailgate_tests::wait_for(drain, || {
        let seen = count(&sink);
        acked.iter().all(|s| seen.contains_key(s)).then_some(seen)
    });
    let seen = count(&sink);
    let lost: Vec<&String> = acked.iter().filter(|s| !seen.contains_key(*s)).collect();
    assert!(all_there.is_some(), "{} acknowledged messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    let twice: usize = seen.values().map(|n| n - 1).sum();
    let rate = twice as f64 * 100.0 / acked.len() as f64;
    eprintln!("kill -9 × {rounds}: {} acknowledged, 0 lost, {twice} delivered twice ({rate:.3} %)", acked.len());
    // The target (0.05 %, met by the release build over 20 rounds: BENCHMARKS.md) is too
    // tight a bound for three rounds of a debug build beside the other tests of this file (one
    // such run gave 0.36 %); with the done record waiting for the next group commit, as
    // before, this setup gave several times this bound.
    assert!(rate <= 0.5, "{twice} of {} delivered twice", acked.len());
}

/// SIGTERM while a delivery is in flight: the queue lets it finish and its result reaches the
/// spool before the spool closes, so the restarted gateway has nothing to send again.
#[test]
fn a_delivery_in_flight_at_sigterm_is_recorded_before_the_spool_closes() {
    let sink = Sink::start();
    sink.set_data_delay(Duration::from_secs(2));
    let mut gw = Gateway::with_sink(sink.port(), "[queue]\nretry_schedule = [\"1s\"]\n");
    send_raw(gw.port, "slow@remote.test", "in flight at shutdown");
    assert!(mailgate_tests::wait_for(T, || (sink.data_ends() == 1).then_some(())).is_some(), "{}", gw.log());
    gw.stop();
    assert_eq!(sink.received().len(), 1, "the delivery finished during the shutdown");
    sink.set_data_delay(Duration::ZERO);
    // Recovery runs before the listeners open: once it answers, it has found what to resend.
    gw.start_again();
    let log = gw.log();
    assert!(!log.contains("queued again from the spool"), "the delivered message was queued again:\n{log}");
}
