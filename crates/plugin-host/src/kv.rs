//! The key-value backend behind the `kv` capability: an async trait, so a shared backend
//! (PostgreSQL, for several nodes) can replace the in-memory one. Keys arrive namespaced per
//! plugin by the host.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a kv operation failed; the plugin sees it as `kv-error::backend` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("kv store is full")]
    Full,
    #[error("value is not an integer")]
    NotInteger,
    /// The backend could not answer (a shared backend: connection, timeout).
    #[error("kv backend unavailable: {0}")]
    Unavailable(String),
}

/// A key-value backend.
pub trait KvStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>>;
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> BoxFuture<'a, Result<(), KvError>>;
    /// Adds `delta` to an integer value (missing = 0); the TTL applies only when it creates.
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> BoxFuture<'a, Result<i64, KvError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>>;
}

/// A value and when it expires (`None`: never).
type Entry = (Vec<u8>, Option<Instant>);

/// Octets the in-memory store holds at most unless told otherwise (keys and values).
pub const MEMORY_KV_BYTES: usize = 256 << 20;

/// How often a full store may walk its keys for expired ones (a walk visits every key).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What an entry counts against the store's octets: its key, its value and the map's share.
fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + 64
}

struct Inner {
    map: HashMap<String, Entry>,
    /// Sum of [`cost`] over `map`.
    bytes: usize,
    /// When expired keys were last swept.
    swept: Option<Instant>,
}

/// In-process store with expiry; bounded in keys and in octets, so a plugin cannot grow it
/// without limit (nor make every write walk a full store).
pub struct MemoryKv {
    inner: Mutex<Inner>,
    max_keys: usize,
    max_bytes: usize,
}

impl MemoryKv {
    /// A store of at most `max_keys` keys and [`MEMORY_KV_BYTES`] octets.
    pub fn new(max_keys: usize) -> MemoryKv {
        MemoryKv::with_limits(max_keys, MEMORY_KV_BYTES)
    }

    pub fn with_limits(max_keys: usize, max_bytes: usize) -> MemoryKv {
        MemoryKv { inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0, swept: None }), max_keys, max_bytes }
    }

    /// Stores `key`, when it fits (after a sweep of expired keys, at most once a second).
    fn put(&self, i: &mut Inner, key: &str, value: Vec<u8>, exp: Option<Instant>) -> Result<(), KvError> {
        let new = cost(key, &value);
        let fits = |i: &Inner| {
            let old = i.map.get(key).map_or(0, |(v, _)| cost(key, v));
            (i.map.len() < self.max_keys || old > 0) && i.bytes - old + new <= self.max_bytes
        };
        if !fits(i) {
            let now = Instant::now();
            if i.swept.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
                i.swept = Some(now);
                let mut freed = 0;
                i.map.retain(|k, (v, exp)| {
                    let keep = exp.is_none_or(|e| e > now);
                    if !keep {
                        freed += cost(k, v);
                    }
                    keep
                });
                i.bytes -= freed;
            }
            if !fits(i) {
                return Err(KvError::Full);
            }
        }
        if let Some((old, _)) = i.map.insert(key.to_string(), (value, exp)) {
            i.bytes -= cost(key, &old);
        }
        i.bytes += new;
        Ok(())
    }
}

fn live(v: &(Vec<u8>, Option<Instant>)) -> bool {
    v.1.is_none_or(|e| e > Instant::now())
}

impl MemoryKv {
    fn get_now(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.inner.lock().unwrap().map.get(key).filter(|v| live(v)).map(|v| v.0.clone()))
    }

    fn set_now(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut i = self.inner.lock().unwrap();
        self.put(&mut i, key, value, ttl.map(|t| Instant::now() + t))
    }

    fn incr_now(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut i = self.inner.lock().unwrap();
        let cur = i.map.get(key).filter(|v| live(v)).cloned();
        let (n, exp) = match cur {
            Some((v, exp)) => {
                let s = std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok()).ok_or(KvError::NotInteger)?;
                (s.saturating_add(delta), exp)
            }
            None => (delta, ttl.map(|t| Instant::now() + t)),
        };
        self.put(&mut i, key, n.to_string().into_bytes(), exp)?;
        Ok(n)
    }

    fn delete_now(&self, key: &str) {
        let mut i = self.inner.lock().unwrap();
        if let Some((v, _)) = i.map.remove(key) {
            i.bytes -= cost(key, &v);
        }
    }
}

/// In memory every operation completes at once.
impl KvStore for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>> {
        Box::pin(std::future::ready(self.get_now(key)))
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(std::future::ready(self.set_now(key, value, ttl)))
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(std::future::ready(self.incr_now(key, delta, ttl)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        self.delete_now(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn incr_set_get_expire() {
        let kv = MemoryKv::new(2);
        assert_eq!(kv.incr("a", 2, None).await, Ok(2));
        assert_eq!(kv.incr("a", 3, None).await, Ok(5));
        kv.set("b", b"x".to_vec(), Some(Duration::from_millis(1))).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("b").await, Ok(None));
        // Full, but the expired key is swept to make room.
        kv.set("c", b"y".to_vec(), None).await.unwrap();
        assert_eq!(kv.set("d", b"z".to_vec(), None).await, Err(KvError::Full));
        assert_eq!(kv.incr("c", 1, None).await, Err(KvError::NotInteger));
        kv.delete("c").await.unwrap();
        assert_eq!(kv.get("c").await, Ok(None));
    }

    /// Octets are bounded as keys are: values that do not fit are refused, a smaller value
    /// for a key that is there fits, and a deleted key's octets are free again.
    #[tokio::test]
    async fn octets_are_bounded() {
        let kv = MemoryKv::with_limits(100, 1_000);
        let v = vec![b'x'; 100];
        for i in 0..6 {
            kv.set(&format!("k{i}"), v.clone(), None).await.unwrap();
        }
        assert_eq!(kv.set("k6", v.clone(), None).await, Err(KvError::Full), "6 × 166 octets of 1 000");
        assert_eq!(kv.set("k0", vec![b'y'; 4_000], None).await, Err(KvError::Full));
        assert_eq!(kv.get("k0").await, Ok(Some(v.clone())), "a refused write leaves the old value");
        kv.set("k0", b"small".to_vec(), None).await.unwrap();
        // 5 × 166 + 71 = 901: room for 99 octets more.
        assert_eq!(kv.set("k6", vec![b'z'; 34], None).await, Err(KvError::Full));
        kv.set("k6", vec![b'z'; 33], None).await.unwrap();
        assert_eq!(kv.incr("n", 1, None).await, Err(KvError::Full));
        kv.delete("k1").await.unwrap();
        assert_eq!(kv.incr("n", 1, None).await, Ok(1));
        let i = kv.inner.lock().unwrap();
        assert_eq!(i.bytes, i.map.iter().map(|(k, (v, _))| cost(k, v)).sum::<usize>());
    }
}
