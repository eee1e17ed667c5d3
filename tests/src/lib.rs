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
/// before: the kernel hands a released port out again at once, and two calls of one test (a
/// gateway's listener and a `[::]` listener, say) then got the same number and the gateway
/// failed to bind the second.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
