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
