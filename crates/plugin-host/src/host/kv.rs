//! `kv`: the shared key-value store, for plugins granted `kv`. Keys are namespaced per plugin
//! here, so one plugin never reads another's. The backend is async: a shared one (PostgreSQL)
//! answers over the network.

use std::time::Duration;

use super::HostState;
use crate::bindings::mailgate::plugin::kv;

/// Largest kv value and key, in octets.
pub const MAX_KV_VALUE: usize = 64 << 10;
pub const MAX_KV_KEY: usize = 512;

impl HostState {
    /// The grant check and the namespace: the backend key for a plugin granted `kv`.
    fn kv_key(&self, key: &str) -> Result<String, kv::KvError> {
        if !self.meta.kv {
            return Err(kv::KvError::Denied);
        }
        if key.len() > MAX_KV_KEY {
            return Err(kv::KvError::Backend(format!("key longer than {MAX_KV_KEY} octets")));
        }
        Ok(format!("{}\u{0}{key}", self.meta.name))
    }
}

/// The backend's error as the plugin sees it.
fn backend(e: crate::kv::KvError) -> kv::KvError {
    kv::KvError::Backend(e.to_string())
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let k = self.kv_key(&key)?;
        let store = self.services.kv.clone();
        self.waited(store.get(&k)).await.map_err(backend)
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<u32>) -> Result<(), kv::KvError> {
        let k = self.kv_key(&key)?;
        if value.len() > MAX_KV_VALUE {
            return Err(kv::KvError::Backend(format!("value larger than {MAX_KV_VALUE} octets")));
        }
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        let store = self.services.kv.clone();
        self.waited(store.set(&k, value, ttl)).await.map_err(backend)
    }
    async fn incr(&mut self, key: String, delta: i64, ttl: Option<u32>) -> Result<i64, kv::KvError> {
        let k = self.kv_key(&key)?;
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        let store = self.services.kv.clone();
        self.waited(store.incr(&k, delta, ttl)).await.map_err(backend)
    }
    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        let k = self.kv_key(&key)?;
        let store = self.services.kv.clone();
        self.waited(store.delete(&k)).await.map_err(backend)
    }
}
