//! Idle outbound connections kept for reuse, per (address, host name, TLS policy).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::tls::PolicyKind;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    /// The name we verified (or would verify) the certificate against.
    pub host: String,
    pub policy: PolicyKind,
}

/// Most idle connections kept per key; more are closed.
const MAX_IDLE_PER_KEY: usize = 64;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Conn, Instant)>>>,
}

impl Pool {
    /// An idle connection for `key` that has not idled longer than `max_idle`.
    pub fn take(&self, key: &Key, max_idle: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < max_idle {
                return Some(conn);
            }
            // Expired: dropped here (the server sees the connection close).
        }
        None
    }

    pub fn put(&self, key: Key, conn: Conn) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(key).or_default();
        list.retain(|(_, since)| since.elapsed() < Duration::from_secs(300));
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((conn, Instant::now()));
        }
    }
}
