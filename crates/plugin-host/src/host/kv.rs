//! `kv`: the shared key-value store, for plugins granted `kv`. Keys are namespaced per plugin
//! here, so one plugin never reads another's. The backend is async: a shared one (PostgreSQL)
//! answers over the network.

use std::sync::Arc;
use std::time::Duration;

use super::{Context, Waited};
use crate::bindings::mailgate::plugin::kv;
use crate::kv::KvStore;

/// Largest kv value and key, in octets.
pub const MAX_KV_VALUE: usize = 64 << 10;
pub const MAX_KV_KEY: usize = 512;

pub struct KvState {
    /// The backend and this plugin's namespace in it; none unless the plugin is granted `kv`.
    store: Option<(Arc<dyn KvStore>, Arc<str>)>,
    /// Time spent waiting for the backend, given back to the CPU budget.
    pub(super) waited: Waited,
}

impl KvState {
    /// The grant check: the backend is there only for a plugin granted `kv`.
    pub(super) fn new(cx: &Context<'_>) -> KvState {
        let store = cx.meta.kv.then(|| (cx.services.kv.clone(), cx.meta.label.clone()));
        KvState { store, waited: Waited::default() }
    }

    /// The backend and the namespaced key.
    fn key(&self, key: &str) -> Result<(Arc<dyn KvStore>, String), kv::KvError> {
        let Some((store, namespace)) = &self.store else { return Err(kv::KvError::Denied) };
        if key.len() > MAX_KV_KEY {
            return Err(kv::KvError::Backend(format!("key longer than {MAX_KV_KEY} octets")));
        }
        Ok((store.clone(), format!("{namespace}\u{0}{key}")))
    }
}

/// The backend's error as the plugin sees it.
fn backend(e: crate::kv::KvError) -> kv::KvError {
    kv::KvError::Backend(e.to_string())
}

impl kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let (store, k) = self.key(&key)?;
        self.waited.time(store.get(&k)).await.map_err(backend)
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<u32>) -> Result<(), kv::KvError> {
        let (store, k) = self.key(&key)?;
        if value.len() > MAX_KV_VALUE {
            return Err(kv::KvError::Backend(format!("value larger than {MAX_KV_VALUE} octets")));
        }
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        self.waited.time(store.set(&k, value, ttl)).await.map_err(backend)
    }
    async fn incr(&mut self, key: String, delta: i64, ttl: Option<u32>) -> Result<i64, kv::KvError> {
        let (store, k) = self.key(&key)?;
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        self.waited.time(store.incr(&k, delta, ttl)).await.map_err(backend)
    }
    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        let (store, k) = self.key(&key)?;
        self.waited.time(store.delete(&k)).await.map_err(backend)
    }
}
