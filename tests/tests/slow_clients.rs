//! Slow and idle clients must not lock good ones out. A thousand connections from many
//! loopback addresses (127.1.0.0/16) either sit idle or trickle bytes, and reconnect when
//! closed; meanwhile a normal client sends 100 messages, each on a new connection, and every
//! one must be accepted (its latency percentiles are printed). Also: a command line has a total
//! time limit however it trickles in, DATA has a minimum rate, sessions are limited per /24,
//! and refusals are logged at a bounded rate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;
use mailgate_tests::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKERS: usize = 1000;
const MESSAGES: usize = 100;

/// A connection from `source` to the gateway.
async fn connect_from(source: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source, 0))?;
    s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Reads until a line ending in CRLF (or EOF); returns what was read.
async fn read_reply(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = vec![0u8; 512];
    let mut out = Vec::new();
    while !out.ends_with(b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One hostile client: idle (connects and says nothing), trickling a command line, or
/// trickling DATA content; reconnects when closed, until `stop`.
async fn attacker(i: usize, port: u16, stop: Arc<AtomicBool>, greeted: Arc<AtomicUsize>) {
    let source = IpAddr::from([127, 1, (i / 100) as u8, (i % 100 + 1) as u8]);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect_from(source, port).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !read_reply(&mut s).await.starts_with("220") {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        greeted.fetch_add(1, Ordering::Relaxed);
        if i % 3 == 2 {
            let _ =
                s.write_all(b"EHLO slow.test\r\nMAIL FROM:<a@slow.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n").await;
        }
        // Idle ones wait for the server to close; tricklers send a byte a second.
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            if !i.is_multiple_of(3) && s.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
    }
}

/// Sends `byte` every half second (at most 40 times) until the server says something;
/// returns what it said and how long that took.
async fn trickle(s: &mut tokio::net::TcpStream, byte: u8) -> (String, Duration) {
    let t = Instant::now();
    for _ in 0..40 {
        if s.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            return (String::from_utf8_lossy(&buf[..n]).into_owned(), t.elapsed());
        }
    }
    (String::new(), t.elapsed())
}

/// One message on a new connection from 127.0.0.1; the final reply.
fn send_one(port: u16, n: usize) -> String {
    let mut c = Raw::connect(port);
    c.cmd("EHLO good.test");
    c.cmd("MAIL FROM:<good@sender.test>");
    c.cmd("RCPT TO:<u@remote.test>");
    c.cmd("DATA");
    c.send(format!("Subject: good {n}\r\n\r\nhello\r\n").as_bytes());
    c.cmd(".")
}

#[test]
fn a_thousand_slow_clients_do_not_lock_a_good_one_out() {
    let sink = Sink::start();
    let gw = Gateway::with_sink(sink.port(), "[timeouts]\nshed_idle = \"2s\"\ndata_grace = \"3s\"\n");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let greeted = Arc::new(AtomicUsize::new(0));
    for i in 0..ATTACKERS {
        rt.spawn(attacker(i, gw.port, stop.clone(), greeted.clone()));
    }
    let filled = wait_for(Duration::from_secs(60), || (greeted.load(Ordering::Relaxed) >= ATTACKERS).then_some(()));
    assert!(filled.is_some(), "only {} attackers got in", greeted.load(Ordering::Relaxed));
    // Let them all stall past shed_idle, as a real slot-holding attack does.
    std::thread::sleep(Duration::from_millis(2500));

    let mut latencies = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0..MESSAGES {
        assert!(Instant::now() < deadline, "out of time after {n} messages");
        let t = Instant::now();
        let r = send_one(gw.port, n);
        latencies.push(t.elapsed());
        assert!(r.starts_with("250"), "message {n}: {r}");
    }
    stop.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(5));
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let shed = gw.log().matches("closed: closed to make room for another client").count();
    eprintln!(
        "slow clients: {MESSAGES} messages accepted among {ATTACKERS} slow/idle connections ({} greetings, \
         {shed} sessions shed): p50 {:?}, p99 {:?}, max {:?}",
        greeted.load(Ordering::Relaxed),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );
    let got = sink.wait_for(MESSAGES, Duration::from_secs(30));
    assert_eq!(got.len(), MESSAGES);
}

#[test]
fn when_the_slots_are_full_the_session_stalled_longest_makes_room() {
    let gw = Gateway::with_sink(1, "[limits]\nmax_sessions = 10\n[timeouts]\nshed_idle = \"1s\"\n");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Ten idle sessions fill every slot; the first one connects a while before the rest.
        let mut idle = vec![];
        for i in 0..10u8 {
            let mut s = connect_from(IpAddr::from([127, 3, 0, i + 1]), gw.port).await.unwrap();
            assert!(read_reply(&mut s).await.starts_with("220"));
            idle.push(s);
            if i == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // A newcomer gets in, and the session idle longest (the first) is told why it goes.
        let mut s = connect_from(IpAddr::from([127, 0, 0, 1]), gw.port).await.unwrap();
        assert!(read_reply(&mut s).await.starts_with("220"), "{}", gw.log());
        assert_eq!(read_reply(&mut idle[0]).await, "421 4.7.0 Closing idle connection, the server is busy\r\n");
    });
}

#[test]
fn a_trickled_command_line_and_a_trickled_data_transfer_are_cut_off() {
    let gw = Gateway::with_sink(1, "[timeouts]\ncommand = \"3s\"\ndata_grace = \"2s\"\n");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // One byte a half second, never a whole line: each read is quick, the line is not.
        let mut s = connect_from(IpAddr::from([127, 0, 0, 1]), gw.port).await.unwrap();
        read_reply(&mut s).await;
        let (closed, took) = trickle(&mut s, b'N').await;
        assert!(closed.starts_with("421 4.4.2"), "{closed:?}");
        assert!(took < Duration::from_secs(8), "{took:?}");

        // DATA at a byte a half second: under 500 octets/s once the grace is over.
        let mut s = connect_from(IpAddr::from([127, 0, 0, 1]), gw.port).await.unwrap();
        read_reply(&mut s).await;
        s.write_all(b"EHLO slow.test\r\nMAIL FROM:<a@slow.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
            .await
            .unwrap();
        let mut seen = String::new();
        while !seen.contains("354") {
            seen.push_str(&read_reply(&mut s).await);
        }
        let (closed, took) = trickle(&mut s, b'x').await;
        assert_eq!(closed, "421 4.4.2 Data transfer too slow, closing connection\r\n");
        assert!(took < Duration::from_secs(8), "{took:?}");
    });
}

#[test]
fn sessions_per_network_and_refusals_logged_at_a_bounded_rate() {
    let gw = Gateway::with_sink(1, "[limits]\nmax_sessions_per_net = 3\n");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut held = vec![];
        for host in 1..=3u8 {
            let mut s = connect_from(IpAddr::from([127, 2, 0, host]), gw.port).await.unwrap();
            assert!(read_reply(&mut s).await.starts_with("220"));
            held.push(s);
        }
        // The /24 is full: another address of it is refused, fifty times over; another /24 is not.
        for i in 0..50u8 {
            let mut s = connect_from(IpAddr::from([127, 2, 0, 10 + i]), gw.port).await.unwrap();
            let r = read_reply(&mut s).await;
            assert_eq!(r, "421 4.7.0 Too many connections from your network, try again later\r\n");
        }
        let mut s = connect_from(IpAddr::from([127, 2, 1, 1]), gw.port).await.unwrap();
        assert!(read_reply(&mut s).await.starts_with("220"));
    });
    // The refusals took well under a few seconds: one line, maybe two or three.
    let lines = gw.log().lines().filter(|l| l.contains("connection refused")).count();
    assert!((1..=3).contains(&lines), "{lines} refusal lines for 50 refusals");
}
