//! Outbound traffic shaping: for each destination (the queue's unit: an MX domain, a
//! smarthost) and each next-hop host that `[shaping.hosts]` names, a limiter with its class's
//! limits — deliveries (connections) at once, messages per connection, a message rate (a
//! token bucket), and a pause after a run of connection-level failures.
//!
//! This crate owns the limiters and their state. It must not know the queue, SMTP or the
//! spool: the queue asks for room and tokens before an attempt and says how it went; the
//! delivery agent does the same per host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mailgate_config::{Config, Shape, Shaping};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limiters kept before idle ones are forgotten.
const MAX_LIMITERS: usize = 10_000;

/// The class of destinations and hosts without one.
pub const DEFAULT_CLASS: &str = "default";

struct Rules {
    shaping: Shaping,
    /// `queue.max_per_destination`: a class's `max_connections` when unset.
    default_max: usize,
}

impl Rules {
    fn shape(&self, class: &str) -> &Shape {
        self.shaping.classes.get(class).unwrap_or(&self.shaping.default)
    }
}

/// Every limiter of the gateway.
pub struct Shaper {
    rules: RwLock<Arc<Rules>>,
    /// By key: `dest:<destination>` or `host:<name>`.
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
}

/// One destination's or host's limits and state.
pub struct Limiter {
    pub key: String,
    pub class: String,
    shape: Shape,
    max_connections: usize,
    room: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
    /// Connection-level failures in a row.
    failures: AtomicU32,
    /// No attempt until then.
    paused_until: Mutex<Option<Instant>>,
}

struct Bucket {
    /// May go below zero: tokens promised to waiters.
    tokens: f64,
    last: Instant,
}

/// A limiter as `mailgate status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub key: String,
    pub class: String,
    pub in_flight: usize,
    pub max_connections: usize,
    /// Messages per second, when limited.
    pub rate: Option<f64>,
    pub failures_in_a_row: u32,
    /// Seconds left of a pause.
    pub paused_for: Option<u64>,
}

impl Shaper {
    pub fn new(cfg: &Config) -> Shaper {
        Shaper { rules: RwLock::new(Arc::new(Self::rules(cfg))), limiters: Mutex::new(HashMap::new()) }
    }

    fn rules(cfg: &Config) -> Rules {
        Rules { shaping: cfg.shaping.clone(), default_max: cfg.queue.max_per_destination }
    }

    /// A reload's limits: limiters made from now on use them (attempts in flight finish on the
    /// old ones, whose room they hold).
    pub fn reconfigure(&self, cfg: &Config) {
        let new = Self::rules(cfg);
        let mut rules = self.rules.write().unwrap_or_else(|e| e.into_inner());
        if rules.shaping == new.shaping && rules.default_max == new.default_max {
            return;
        }
        *rules = Arc::new(new);
        self.limiters.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn current(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The limiter of a queue destination; `domain`: the recipient domain of an MX delivery
    /// (its class from `[shaping.domains]`), `None` for a smarthost or LMTP destination.
    pub fn destination(&self, dest: &str, domain: Option<&str>) -> Arc<Limiter> {
        let rules = self.current();
        let class = domain.and_then(|d| Shaping::class_of(&rules.shaping.domains, d)).unwrap_or(DEFAULT_CLASS);
        self.limiter(&rules, format!("dest:{dest}"), class)
    }

    /// The limiter of a queue destination in the class `class` (an on-route plugin's pick;
    /// an unknown class has the default limits).
    pub fn destination_in(&self, dest: &str, class: &str) -> Arc<Limiter> {
        let rules = self.current();
        self.limiter(&rules, format!("dest:{dest}"), class)
    }

    /// The limiter of a next-hop host, when `[shaping.hosts]` gives it a class.
    pub fn host(&self, host: &str) -> Option<Arc<Limiter>> {
        let rules = self.current();
        let class = Shaping::class_of(&rules.shaping.hosts, host)?.to_string();
        Some(self.limiter(&rules, format!("host:{}", host.trim_end_matches('.').to_ascii_lowercase()), &class))
    }

    fn limiter(&self, rules: &Rules, key: String, class: &str) -> Arc<Limiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key).filter(|l| l.class == class) {
            return l.clone();
        }
        if map.len() >= MAX_LIMITERS {
            // Forget the idle ones: nobody holds them, nothing in flight, no pause or failures.
            map.retain(|_, l| Arc::strong_count(l) > 1 || !l.idle());
        }
        let shape = rules.shape(class).clone();
        let max_connections = shape.max_connections.unwrap_or(rules.default_max).max(1);
        let l = Arc::new(Limiter {
            key: key.clone(),
            class: class.to_string(),
            max_connections,
            room: Arc::new(Semaphore::new(max_connections)),
            bucket: Mutex::new(Bucket { tokens: f64::from(shape.burst), last: Instant::now() }),
            failures: AtomicU32::new(0),
            paused_until: Mutex::new(None),
            shape,
        });
        map.insert(key, l.clone());
        l
    }

    /// The limiters with something to show: in flight, failing or paused.
    pub fn status(&self) -> Vec<Status> {
        let map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Status> = map.values().filter(|l| !l.idle()).map(|l| l.status()).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

impl Limiter {
    fn in_flight(&self) -> usize {
        self.max_connections - self.room.available_permits().min(self.max_connections)
    }

    fn idle(&self) -> bool {
        self.in_flight() == 0 && self.failures.load(Ordering::Relaxed) == 0 && self.paused().is_none()
    }

    fn status(&self) -> Status {
        Status {
            key: self.key.clone(),
            class: self.class.clone(),
            in_flight: self.in_flight(),
            max_connections: self.max_connections,
            rate: self.shape.rate.map(|r| r.per_second),
            failures_in_a_row: self.failures.load(Ordering::Relaxed),
            paused_for: self.paused().map(|d| d.as_millis().div_ceil(1000) as u64),
        }
    }

    /// A place among its deliveries at once, if one is free now.
    pub fn try_room(&self) -> Option<OwnedSemaphorePermit> {
        self.room.clone().try_acquire_owned().ok()
    }

    /// A place among its deliveries at once, when one is free.
    pub async fn room(&self) -> Option<OwnedSemaphorePermit> {
        metrics::counter!("mailgate_shaping_waits_total", "class" => self.class.clone(), "reason" => "connections")
            .increment(1);
        self.room.clone().acquire_owned().await.ok()
    }

    /// Takes a message's token; returns how long to wait before sending it (zero: now).
    pub fn token(&self) -> Duration {
        let Some(rate) = self.shape.rate else { return Duration::ZERO };
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * rate.per_second;
        b.tokens = (b.tokens + refill).min(f64::from(self.shape.burst));
        b.last = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            return Duration::ZERO;
        }
        metrics::counter!("mailgate_shaping_waits_total", "class" => self.class.clone(), "reason" => "rate")
            .increment(1);
        Duration::from_secs_f64(-b.tokens / rate.per_second)
    }

    /// How much longer the destination is paused, if it is.
    pub fn paused(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Messages one connection may carry, when limited.
    pub fn max_messages_per_connection(&self) -> Option<u32> {
        self.shape.max_messages_per_connection
    }

    /// How an attempt went: `true` when it failed at connection level (no transaction).
    /// Returns the pause it started, if this failure completed a run of `backoff_after`.
    pub fn record(&self, connection_failure: bool) -> Option<Duration> {
        if !connection_failure {
            self.failures.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.shape.backoff_after == 0 || n < self.shape.backoff_after {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.shape.backoff);
        metrics::counter!("mailgate_shaping_pauses_total", "class" => self.class.clone()).increment(1);
        tracing::warn!(limiter = %self.key, class = %self.class, failures = n, pause = ?self.shape.backoff, "destination paused after connection failures in a row");
        Some(self.shape.backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_config::Rate;

    fn config(f: impl FnOnce(&mut Shaping)) -> Config {
        let mut c = Config::default();
        f(&mut c.shaping);
        c
    }

    #[test]
    fn classes_by_domain_and_host_patterns() {
        let c = config(|s| {
            s.classes.insert("slow".into(), Shape { max_connections: Some(2), ..Shape::default() });
            s.classes.insert("big".into(), Shape { max_connections: Some(50), ..Shape::default() });
            s.domains.insert("example.com".into(), "slow".into());
            s.domains.insert("*.example.com".into(), "big".into());
            s.hosts.insert("*.mx.test".into(), "slow".into());
        });
        let sh = Shaper::new(&c);
        assert_eq!(sh.destination("mx:example.com", Some("example.com")).class, "slow");
        assert_eq!(sh.destination("mx:a.example.com", Some("A.Example.com")).class, "big");
        assert_eq!(sh.destination("mx:a.b.example.com", Some("a.b.example.com")).class, "big");
        assert_eq!(sh.destination("mx:other.test", Some("other.test")).class, DEFAULT_CLASS);
        assert_eq!(sh.destination("smarthost:relay:25", None).class, DEFAULT_CLASS);
        assert_eq!(sh.destination("mx:other.test", Some("other.test")).max_connections, 20);
        assert_eq!(sh.host("a.mx.test").unwrap().max_connections, 2);
        assert!(sh.host("mx.test").is_none() && sh.host("elsewhere.test").is_none());
        // The same limiter for the same destination.
        let a = sh.destination("mx:example.com", Some("example.com"));
        assert!(Arc::ptr_eq(&a, &sh.destination("mx:example.com", Some("example.com"))));
    }

    #[tokio::test]
    async fn connections_are_capped() {
        let c = config(|s| s.default.max_connections = Some(2));
        let l = Shaper::new(&c).destination("d", None);
        let (a, b) = (l.try_room().unwrap(), l.try_room().unwrap());
        assert!(l.try_room().is_none());
        assert_eq!(l.status().in_flight, 2);
        drop(a);
        let c = l.room().await.unwrap();
        drop((b, c));
        assert_eq!(l.status().in_flight, 0);
    }

    #[test]
    fn the_bucket_spaces_messages_after_the_burst() {
        let c = config(|s| {
            s.default.rate = Rate::parse("10/s");
            s.default.burst = 3;
        });
        let l = Shaper::new(&c).destination("d", None);
        for _ in 0..3 {
            assert_eq!(l.token(), Duration::ZERO);
        }
        // Then one each 100 ms, promised in order.
        let waits: Vec<Duration> = (0..5).map(|_| l.token()).collect();
        for (i, w) in waits.iter().enumerate() {
            let want = 0.1 * (i + 1) as f64;
            assert!((w.as_secs_f64() - want).abs() < 0.02, "{i}: {w:?}");
        }
        assert_eq!(Rate::parse("600/min").unwrap().per_second, 10.0);
        assert_eq!(Rate::parse("36/h").unwrap().per_second, 0.01);
        for bad in ["", "10", "0/s", "-1/s", "x/s", "10/day", "inf/s"] {
            assert!(Rate::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_run_of_connection_failures_pauses() {
        let c = config(|s| {
            s.default.backoff_after = 3;
            s.default.backoff = Duration::from_secs(30);
        });
        let l = Shaper::new(&c).destination("d", None);
        assert_eq!(l.record(true), None);
        assert_eq!(l.record(true), None);
        assert_eq!(l.record(false), None, "a success ends the run");
        assert_eq!(l.record(true), None);
        assert_eq!(l.record(true), None);
        assert_eq!(l.record(true), Some(Duration::from_secs(30)));
        let left = l.paused().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        assert_eq!(l.status().paused_for, Some(30));
    }

    #[test]
    fn idle_limiters_are_forgotten_at_the_bound() {
        let sh = Shaper::new(&Config::default());
        let held = sh.destination("held", None);
        let _permit = held.try_room().unwrap();
        for i in 0..MAX_LIMITERS + 10 {
            sh.destination(&format!("d{i}"), None);
        }
        let n = sh.limiters.lock().unwrap().len();
        assert!(n <= MAX_LIMITERS, "{n}");
        assert!(sh.limiters.lock().unwrap().contains_key("dest:held"));
    }
}
