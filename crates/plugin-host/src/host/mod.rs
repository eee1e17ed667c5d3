//! The host side of the imports: what a plugin may call, per store. One file per capability
//! (`message`, `dns`, `kv`, `data`, `score`, `auth`, `log`, `config`, `metrics`), each with its
//! own limits and its own grant check: `dns`, `kv` and `data` are denied unless the plugin's
//! config entry grants them; `auth` answers only in a session (the queue has no client).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mailgate_config::{Grant, OnError, Stage};
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;

use crate::bindings::mailgate::plugin::types;
use crate::kv::KvStore;

mod auth;
mod config;
mod data;
mod dns;
mod kv;
mod log;
mod message;
mod metrics;
mod score;

pub use data::MAX_DATA_KEY;
pub use kv::{MAX_KV_KEY, MAX_KV_VALUE};
pub use log::MAX_LOG_LINE;
pub use metrics::MAX_SERIES;

/// A plugin as configured: what the host needs to know at every call.
pub struct PluginMeta {
    pub name: String,
    pub dns: bool,
    pub kv: bool,
    /// The plugin's own config table.
    pub config: BTreeMap<String, serde_json::Value>,
    pub stages: Vec<Stage>,
    pub on_error: OnError,
    /// Shadow mode: verdicts are logged and counted, not enforced.
    pub shadow: bool,
    /// CPU budget per call, in epoch ticks.
    pub budget_ticks: u64,
    pub memory_limit: usize,
    /// The data tables granted to this plugin, by name.
    pub tables: std::collections::HashMap<String, Arc<crate::data::DataTable>>,
    /// SHA-256-free fingerprint (FNV-1a of the file) for status output and logs.
    pub hash: String,
    /// The smarthosts and maildirs it may choose as a route.
    pub routes: crate::route::RoutePolicy,
    /// The metric series it has created (hashes), for the [`MAX_SERIES`] cap.
    pub series: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl PluginMeta {
    pub fn from_config(p: &mailgate_config::Plugin, tick: Duration, hash: String) -> PluginMeta {
        let ticks = p.cpu_budget.as_nanos().div_ceil(tick.as_nanos()).max(1) as u64;
        PluginMeta {
            name: p.name.clone(),
            dns: p.granted(Grant::Dns),
            kv: p.granted(Grant::Kv),
            config: p.config.clone(),
            stages: p.stages.clone(),
            on_error: p.on_error,
            shadow: p.mode == mailgate_config::Mode::Shadow,
            budget_ticks: ticks,
            memory_limit: p.memory_limit as usize,
            tables: Default::default(),
            hash,
            routes: Default::default(),
            series: Default::default(),
        }
    }
}

/// What all plugins share: the resolver and the kv backend.
pub struct Services {
    pub resolver: Option<TokioResolver>,
    pub kv: Arc<dyn KvStore>,
}

/// The data of one plugin's store.
pub struct HostState {
    pub meta: Arc<PluginMeta>,
    pub services: Arc<Services>,
    /// Resources handed to the guest (the message during on-data).
    pub table: ResourceTable,
    pub limits: StoreLimits,
    /// Session id (or "queue"), for the plugin's log lines.
    pub sid: Arc<str>,
    /// Time spent waiting in async host calls (DNS) since the last deadline check: the CPU
    /// budget is counted in wall-clock epochs, so waiting must not use it up.
    pub host_wait: Duration,
    /// The spam score of the session/transaction, shared by every plugin of the chain.
    pub score: Arc<std::sync::Mutex<crate::data::Scoreboard>>,
    /// The session's authentication checks (none in the queue, where there is no client).
    pub auth: Option<SharedAuth>,
}

/// One session's lazily computed authentication results, shared by the session and its
/// plugins.
pub type SharedAuth = Arc<tokio::sync::Mutex<mailgate_auth::AuthSession>>;

pub use mailgate_message::ParsedMessage;

/// The guest's handle type for `message` (see `with:` in the bindgen).
pub struct MessageHandle(pub Arc<ParsedMessage>);

impl types::Host for HostState {}

impl HostState {
    /// Runs an async host operation, crediting its wait time back to the plugin's budget.
    async fn waited<F: std::future::Future>(&mut self, f: F) -> F::Output {
        let started = std::time::Instant::now();
        let out = f.await;
        self.host_wait += started.elapsed();
        out
    }
}
