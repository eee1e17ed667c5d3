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

/// In-process store with expiry; bounded so a plugin cannot grow it without limit.
pub struct MemoryKv {
    map: Mutex<HashMap<String, Entry>>,
    /// Most keys kept; beyond it expired keys are swept and then writes fail.
    max_keys: usize,
}

impl MemoryKv {
    pub fn new(max_keys: usize) -> MemoryKv {
        MemoryKv { map: Mutex::new(HashMap::new()), max_keys }
    }

    fn room(&self, m: &mut HashMap<String, (Vec<u8>, Option<Instant>)>, key: &str) -> Result<(), KvError> {
        if m.len() < self.max_keys || m.contains_key(key) {
            return Ok(());
        }
        let now = Instant::now();
        m.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        if m.len() >= self.max_keys {
            return Err(KvError::Full);
        }
        Ok(())
    }
}

fn live(v: &(Vec<u8>, Option<Instant>)) -> bool {
    v.1.is_none_or(|e| e > Instant::now())
}

impl MemoryKv {
    fn get_now(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.lock().unwrap().get(key).filter(|v| live(v)).map(|v| v.0.clone()))
    }

    fn set_now(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut m = self.map.lock().unwrap();
        self.room(&mut m, key)?;
        m.insert(key.to_string(), (value, ttl.map(|t| Instant::now() + t)));
        Ok(())
    }

    fn incr_now(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut m = self.map.lock().unwrap();
        self.room(&mut m, key)?;
        let cur = m.get(key).filter(|v| live(v)).cloned();
        let (n, exp) = match cur {
            Some((v, exp)) => {
                let s = std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok()).ok_or(KvError::NotInteger)?;
                (s.saturating_add(delta), exp)
            }
            None => (delta, ttl.map(|t| Instant::now() + t)),
        };
        m.insert(key.to_string(), (n.to_string().into_bytes(), exp));
        Ok(n)
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
        self.map.lock().unwrap().remove(key);
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
}
