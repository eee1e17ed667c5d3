//! Test harness for end-to-end tests: the real gateway binary as a child process, a real SMTP
//! sink, a real DNS server (dnsmasq) on loopback, and real clients (swaks, Python smtplib).
//! Everything listens on 127.0.0.1 with ports picked at run time.

pub mod clients;
pub mod dns;
pub mod dovecot;
pub mod gateway;
pub mod http;
pub mod pki;
pub mod policy_server;
pub mod postfix_sink;
pub mod signed_zone;
pub mod sink;
pub mod zone;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released), never one this test process was given
/// before (two calls of one test — a gateway's listener and a `[::]` listener, say — got the
/// same number once and the gateway failed to bind the second), and below the kernel's
/// ephemeral range: binding port 0 handed out an ephemeral port, which the test's own outgoing
/// connections (clients, DNS, deliveries) could take before the gateway bound it ("Address
/// already in use", one run in five of the SPF suite). No outgoing connection is given a port
/// from below the range.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    // Ports 10 000 up to the ephemeral range's start (32 768 unless the machine says otherwise);
    // processes running at once start their search at different random places.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 12_000)
        .unwrap_or(32_768);
    let span = u64::from(low - 10_000);
    let mut next = std::collections::hash_map::RandomState::new().build_hasher().finish() % span;
    for _ in 0..span {
        next = (next + 1) % span;
        let port = 10_000 + next as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A free UDP+TCP port for the DNS server.
pub fn free_udp_port() -> u16 {
    loop {
        let p = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Polls `f` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
