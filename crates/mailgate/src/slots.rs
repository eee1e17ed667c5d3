//! Session slots: who may connect, and who makes room when the slots run out.
//!
//! A new connection is counted in total, per client IP and per client network (IPv4 /24,
//! IPv6 /64). Over a limit it is refused with `421 4.7.0`. Before the total limit is reached
//! (`limits.shed_at_percent`), each new connection makes room: the session that has made no
//! progress for the longest time (no command completed, no content received), if that is at
//! least `timeouts.shed_idle`, is told to close with `421 4.7.0`. So a thousand trickling or
//! idle connections cannot lock good clients out; they only take turns being closed. At the
//! total limit itself a newcomer still gets in when a stalled session is closed for it.
//!
//! A client whose own session was shed (its address; for IPv6 its /64) does not get to shed
//! another for `10 × shed_idle`: it gets in only while a slot is free. Otherwise a crowd of
//! slow clients that reconnect at once would, one shed triggering the next, keep every slot
//! younger than `shed_idle`, and a good client would find nobody to replace. (The memory of
//! shed clients is bounded; the oldest is forgotten first.)
//! Refusals are counted in metrics and logged at most once a second.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailgate_config::Limits;

/// The network a client address belongs to for `max_sessions_per_net`.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// What a session shares with the slot table: when it last made progress, and the signal
/// that asks it to make room.
#[derive(Debug)]
pub struct Slot {
    /// Milliseconds since the table's epoch at the last progress.
    progress: AtomicU64,
    /// Notified when this session is chosen to close for load.
    pub shed: tokio::sync::Notify,
    epoch: Instant,
    /// Whom to remember as shed when this session is chosen (see [`offender`]).
    client: IpAddr,
}

impl Slot {
    /// The session completed a command or received content.
    pub fn progressed(&self) {
        self.progress.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn stalled_for(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.progress.load(Ordering::Relaxed))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
    PerNet,
}

impl Refusal {
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Total => "Too many connections, try again later",
            Refusal::PerIp => "Too many connections from your address, try again later",
            Refusal::PerNet => "Too many connections from your network, try again later",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerIp => "ip",
            Refusal::PerNet => "net",
        }
    }
}

/// How many shed clients are remembered at most (a few MB at worst).
const SHED_MEMORY: usize = 65_536;

/// The key a shed client is remembered by: its address, or its /64 for IPv6 (where one host
/// has a whole network to connect from). Failed AUTH attempts are counted by the same key.
pub(crate) fn offender(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => network(ip),
    }
}

#[derive(Default)]
struct Table {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_net: HashMap<IpAddr, usize>,
    live: HashMap<u64, Arc<Slot>>,
    next: u64,
    /// Clients recently shed, with when (ms since the epoch); `shed_order` is the same in
    /// the order they were shed, for forgetting the oldest first.
    shed: HashMap<IpAddr, u64>,
    shed_order: VecDeque<(IpAddr, u64)>,
}

impl Table {
    /// Whether `ip` had a session shed within the last `window_ms`; forgets what is older.
    fn recently_shed(&mut self, ip: IpAddr, now_ms: u64, window_ms: u64) -> bool {
        while let Some(&(old, at)) = self.shed_order.front() {
            if now_ms.saturating_sub(at) < window_ms && self.shed_order.len() <= SHED_MEMORY {
                break;
            }
            self.shed_order.pop_front();
            if self.shed.get(&old) == Some(&at) {
                self.shed.remove(&old);
            }
        }
        self.shed.get(&offender(ip)).is_some_and(|&at| now_ms.saturating_sub(at) < window_ms)
    }

    fn remember_shed(&mut self, ip: IpAddr, now_ms: u64) {
        let key = offender(ip);
        self.shed.insert(key, now_ms);
        self.shed_order.push_back((key, now_ms));
    }
}

/// The slot table of a gateway.
pub struct Slots {
    table: Mutex<Table>,
    epoch: Instant,
    /// When the last refusal line was logged, and the refusals left out since (at most one
    /// line a second).
    quiet: Mutex<(Option<Instant>, u64)>,
}

impl Default for Slots {
    fn default() -> Self {
        let epoch = Instant::now();
        Slots { table: Mutex::new(Table::default()), epoch, quiet: Mutex::new((None, 0)) }
    }
}

/// A session's place in the table; dropping it frees the slot.
pub struct Admitted {
    slots: Arc<Slots>,
    id: u64,
    ip: IpAddr,
    pub slot: Arc<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut guard = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut *guard;
        t.total -= 1;
        t.live.remove(&self.id);
        for (map, key) in [(&mut t.per_ip, self.ip), (&mut t.per_net, network(self.ip))] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        metrics::gauge!("mailgate_sessions_open").decrement(1.0);
    }
}

impl Slots {
    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Admits a connection from `ip`, or says why not. Above the shedding mark, the session
    /// stalled the longest (at least `shed_idle`) is asked to close.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        shed_idle: Duration,
        listener: &str,
    ) -> Result<Admitted, Refusal> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let net = network(ip);
        let mut refusal = if t.total >= limits.max_sessions {
            Some(Refusal::Total)
        } else if t.per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_sessions_per_ip {
            Some(Refusal::PerIp)
        } else if t.per_net.get(&net).copied().unwrap_or(0) >= limits.max_sessions_per_net {
            Some(Refusal::PerNet)
        } else {
            None
        };
        // Make room for the next one once the slots are nearly full (the refused one too:
        // the next try of a good client then finds a free slot) — unless this client was
        // itself just shed.
        let mark = limits.max_sessions.saturating_mul(limits.shed_at_percent) / 100;
        let idle_ms = shed_idle.as_millis() as u64;
        if t.total + 1 > mark && !t.recently_shed(ip, now_ms, idle_ms.saturating_mul(10)) {
            let victim = t
                .live
                .values()
                .filter(|s| s.stalled_for(now_ms) >= idle_ms)
                .max_by_key(|s| s.stalled_for(now_ms))
                .cloned();
            if let Some(v) = victim {
                // Marked as progressing so that it is not chosen twice while it closes.
                v.progress.store(now_ms, Ordering::Relaxed);
                v.shed.notify_one();
                t.remember_shed(v.client, now_ms);
                metrics::counter!("mailgate_sessions_shed_total", "listener" => listener.to_string()).increment(1);
                // The room made is this client's: it gets in now (one over the limit until the
                // stalled session has closed), not on its next try.
                if refusal == Some(Refusal::Total) {
                    refusal = None;
                }
            }
        }
        if let Some(r) = refusal {
            drop(t);
            metrics::counter!("mailgate_sessions_refused_total", "listener" => listener.to_string(), "reason" => r.label())
                .increment(1);
            self.log_refusal(ip, r);
            return Err(r);
        }
        t.total += 1;
        *t.per_ip.entry(ip).or_default() += 1;
        *t.per_net.entry(net).or_default() += 1;
        let id = t.next;
        t.next += 1;
        let slot = Arc::new(Slot {
            progress: AtomicU64::new(now_ms),
            shed: tokio::sync::Notify::new(),
            epoch: self.epoch,
            client: ip,
        });
        t.live.insert(id, slot.clone());
        drop(t);
        metrics::gauge!("mailgate_sessions_open").increment(1.0);
        Ok(Admitted { slots: self.clone(), id, ip, slot })
    }

    /// One WARN line a second at most, counting the ones left out.
    fn log_refusal(&self, ip: IpAddr, r: Refusal) {
        let mut q = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        if q.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(client = %ip, reason = r.label(), suppressed = q.1, "connection refused: {}", r.text());
            *q = (Some(Instant::now()), 0);
        } else {
            q.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, ip: usize, net: usize) -> Limits {
        Limits { max_sessions: total, max_sessions_per_ip: ip, max_sessions_per_net: net, ..Limits::default() }
    }

    #[test]
    fn networks() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(network("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn limits_per_ip_net_and_total() {
        let s = Arc::new(Slots::default());
        let l = limits(4, 2, 3);
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        let a = s.admit(ip("10.0.0.1"), &l, Duration::from_secs(60), "t").unwrap();
        let _b = s.admit(ip("10.0.0.1"), &l, Duration::from_secs(60), "t").unwrap();
        assert_eq!(s.admit(ip("10.0.0.1"), &l, Duration::from_secs(60), "t").err(), Some(Refusal::PerIp));
        let _c = s.admit(ip("10.0.0.2"), &l, Duration::from_secs(60), "t").unwrap();
        assert_eq!(s.admit(ip("10.0.0.3"), &l, Duration::from_secs(60), "t").err(), Some(Refusal::PerNet));
        let _d = s.admit(ip("10.0.1.1"), &l, Duration::from_secs(60), "t").unwrap();
        assert_eq!(s.admit(ip("10.0.2.1"), &l, Duration::from_secs(60), "t").err(), Some(Refusal::Total));
        drop(a);
        assert_eq!(s.open(), 3);
        assert!(s.admit(ip("10.0.2.1"), &l, Duration::from_secs(60), "t").is_ok());
    }

    #[test]
    fn the_longest_stalled_session_is_asked_to_make_room() {
        let s = Arc::new(Slots::default());
        let l = Limits { shed_at_percent: 50, ..limits(4, 10, 10) };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = s.admit(ip, &l, Duration::ZERO, "t").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = s.admit(ip, &l, Duration::ZERO, "t").unwrap();
        b.slot.progressed();
        // The third passes the mark (2 of 4): `a` stalled longest and is told to go.
        let _c = s.admit(ip, &l, Duration::ZERO, "t").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), a.slot.shed.notified()).await.expect("a was shed");
            let not_b = tokio::time::timeout(Duration::from_millis(20), b.slot.shed.notified()).await;
            assert!(not_b.is_err(), "b was not");
        });
        // With a long idle threshold nobody qualifies.
        let s = Arc::new(Slots::default());
        let a = s.admit(ip, &l, Duration::from_secs(60), "t").unwrap();
        let _b = s.admit(ip, &l, Duration::from_secs(60), "t").unwrap();
        let _c = s.admit(ip, &l, Duration::from_secs(60), "t").unwrap();
        rt.block_on(async {
            assert!(tokio::time::timeout(Duration::from_millis(20), a.slot.shed.notified()).await.is_err());
        });
    }

    #[test]
    fn a_client_just_shed_does_not_shed_another() {
        let s = Arc::new(Slots::default());
        let l = Limits { shed_at_percent: 100, ..limits(2, 10, 10) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        let a = s.admit(ip("10.0.0.1"), &l, Duration::from_millis(1), "t").unwrap();
        std::thread::sleep(Duration::from_millis(3));
        let b = s.admit(ip("10.0.0.2"), &l, Duration::from_millis(1), "t").unwrap();
        std::thread::sleep(Duration::from_millis(3));
        // A newcomer at the limit replaces `a`, stalled longest.
        let _c = s.admit(ip("10.0.0.3"), &l, Duration::from_millis(1), "t").unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), a.slot.shed.notified()).await.expect("a was shed");
        });
        drop(a);
        std::thread::sleep(Duration::from_millis(5));
        // `a` comes back at once: the slots are full, `b` is stalled, but `a` may not take its place.
        assert_eq!(s.admit(ip("10.0.0.1"), &l, Duration::from_millis(1), "t").err(), Some(Refusal::Total));
        rt.block_on(async {
            assert!(tokio::time::timeout(Duration::from_millis(20), b.slot.shed.notified()).await.is_err());
        });
        // Another newcomer still may; and for IPv6 the whole /64 of a shed client waits.
        let _d = s.admit(ip("10.0.0.4"), &l, Duration::from_millis(1), "t").unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), b.slot.shed.notified()).await.expect("b was shed");
        });
        drop(b);
        let s = Arc::new(Slots::default());
        let e = s.admit(ip("2001:db8::1"), &l, Duration::from_millis(1), "t").unwrap();
        std::thread::sleep(Duration::from_millis(3));
        let _f = s.admit(ip("10.0.0.5"), &l, Duration::from_millis(1), "t").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let _g = s.admit(ip("10.0.0.6"), &l, Duration::from_millis(1), "t").unwrap();
        drop(e);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.admit(ip("2001:db8::2"), &l, Duration::from_millis(1), "t").err(), Some(Refusal::Total));
        // Once the memory has lapsed (10 × shed_idle), it is a newcomer again.
        std::thread::sleep(Duration::from_millis(15));
        assert!(s.admit(ip("2001:db8::2"), &l, Duration::from_millis(1), "t").is_ok());
    }
}
