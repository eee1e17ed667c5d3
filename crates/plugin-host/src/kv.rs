//! The key-value capability behind a trait, so a shared backend (PostgreSQL, later) can replace
//! the in-memory one. Keys are namespaced per plugin by the host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A key-value backend. Errors are strings the plugin sees as `kv-error::backend`.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), String>;
    /// Adds `delta` to an integer value (missing = 0); the TTL applies only when it creates.
    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String>;
    fn delete(&self, key: &str) -> Result<(), String>;
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

    fn room(&self, m: &mut HashMap<String, (Vec<u8>, Option<Instant>)>, key: &str) -> Result<(), String> {
        if m.len() < self.max_keys || m.contains_key(key) {
            return Ok(());
        }
        let now = Instant::now();
        m.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        if m.len() >= self.max_keys {
            return Err("kv store is full".into());
        }
        Ok(())
    }
}

fn live(v: &(Vec<u8>, Option<Instant>)) -> bool {
    v.1.is_none_or(|e| e > Instant::now())
}

impl KvStore for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map.lock().unwrap().get(key).filter(|v| live(v)).map(|v| v.0.clone()))
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), String> {
        let mut m = self.map.lock().unwrap();
        self.room(&mut m, key)?;
        m.insert(key.to_string(), (value, ttl.map(|t| Instant::now() + t)));
        Ok(())
    }

    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        let mut m = self.map.lock().unwrap();
        self.room(&mut m, key)?;
        let cur = m.get(key).filter(|v| live(v)).cloned();
        let (n, exp) = match cur {
            Some((v, exp)) => {
                let s = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or("value is not an integer")?;
                (s.saturating_add(delta), exp)
            }
            None => (delta, ttl.map(|t| Instant::now() + t)),
        };
        m.insert(key.to_string(), (n.to_string().into_bytes(), exp));
        Ok(n)
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_set_get_expire() {
        let kv = MemoryKv::new(2);
        assert_eq!(kv.incr("a", 2, None).unwrap(), 2);
        assert_eq!(kv.incr("a", 3, None).unwrap(), 5);
        kv.set("b", b"x".to_vec(), Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("b").unwrap(), None);
        // Full, but the expired key is swept to make room.
        kv.set("c", b"y".to_vec(), None).unwrap();
        assert!(kv.set("d", b"z".to_vec(), None).is_err());
        assert!(kv.incr("c", 1, None).is_err());
    }
}
