//! Idle outbound connections kept for reuse, per (address, host name, TLS policy). A
//! connection idle for `delivery.idle_timeout` is closed politely (QUIT) by the sweeper, and
//! one the peer closed is dropped, so nothing lingers in CLOSE-WAIT.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{Conn, Peer};
use crate::tls::PolicyKind;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: Peer,
    /// The name we verified (or would verify) the certificate against.
    pub host: String,
    pub policy: PolicyKind,
    /// LMTP rather than SMTP.
    pub lmtp: bool,
    /// Who the connection is logged in as: a session of one smarthost account is never
    /// lent to a route with another.
    pub user: Option<String>,
    /// The source pool it was made from (any of its addresses will do for reuse).
    pub sources: Option<String>,
}

/// Most idle connections kept per key; more are closed.
const MAX_IDLE_PER_KEY: usize = 64;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Conn, Instant)>>>,
}

impl Pool {
    /// An idle connection for `key` that has not idled longer than `max_idle`; the expired
    /// ones met on the way are closed with QUIT.
    pub fn take(&self, key: &Key, max_idle: Duration) -> Option<Conn> {
        let mut expired = vec![];
        let found = {
            let mut idle = self.idle.lock().unwrap();
            let list = idle.get_mut(key)?;
            let mut found = None;
            while let Some((conn, since)) = list.pop() {
                if since.elapsed() < max_idle {
                    found = Some(conn);
                    break;
                }
                expired.push(conn);
            }
            found
        };
        quit_all(expired);
        found
    }

    pub fn put(&self, key: Key, conn: Conn) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((conn, Instant::now()));
        }
    }

    /// Takes out the connections idle for `max_idle` or longer (closed with QUIT) and those
    /// the peer closed or that have unexpected data waiting (dropped). Returns how many went.
    pub fn sweep(&self, max_idle: Duration) -> usize {
        let (mut expired, mut dead) = (vec![], 0);
        {
            let mut idle = self.idle.lock().unwrap();
            for list in idle.values_mut() {
                let mut keep = Vec::with_capacity(list.len());
                for (mut conn, since) in list.drain(..) {
                    if !conn.idle_and_open() {
                        dead += 1;
                    } else if since.elapsed() >= max_idle {
                        expired.push(conn);
                    } else {
                        keep.push((conn, since));
                    }
                }
                *list = keep;
            }
            idle.retain(|_, list| !list.is_empty());
        }
        let n = expired.len() + dead;
        quit_all(expired);
        n
    }
}

/// Says QUIT on each connection (each in its own task, bounded by a short deadline) and drops it.
fn quit_all(conns: Vec<Conn>) {
    if conns.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    for conn in conns {
        rt.spawn(conn.quit(Duration::from_secs(5)));
    }
}
