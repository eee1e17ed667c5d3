//! The host side of the imports: what a plugin may call, per store. One file per capability
//! (`message`, `dns`, `kv`, `data`, `score`, `auth`, `log`, `config`, `metrics`, `hooks`), in
//! the manner of Spin's host factors: each file owns its capability's per-instance state, builds it from
//! the plugin's configuration (that is its grant check: `dns`, `kv` and `data` hold nothing a
//! plugin could use unless its config entry grants them; `auth` holds nothing in the queue,
//! where there is no client), and implements the imports on that state alone. The store's
//! [`HostState`] is only the sum of them, and the linker projects each interface onto its part.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use mailgate_config::{Grant, OnError, Stage};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{ResourceLimiter, StoreLimits};

use crate::bindings::mailgate::plugin as wit;
use crate::data::Scoreboard;
use crate::kv::KvStore;

mod auth;
mod config;
mod data;
mod dns;
mod hooks;
mod kv;
mod log;
mod message;
mod metrics;
mod score;
mod session;

pub use auth::AuthState;
pub use config::ConfigState;
pub use data::{DataState, MAX_DATA_KEY};
pub use dns::DnsState;
pub use hooks::{HooksState, UnusedHooks};
pub use kv::{KvState, MAX_KV_KEY, MAX_KV_VALUE};
pub use log::{LogState, MAX_LOG_LINE};
pub use message::{MessageHandle, MessageState};
pub use metrics::{MetricsState, MAX_SERIES};
pub use score::ScoreState;
pub use session::SessionState;

pub use mailgate_message::ParsedMessage;

/// A plugin as configured: what the host needs to know at every call, and what each
/// capability's state is built from.
pub struct PluginMeta {
    pub name: String,
    /// The name again, shared cheaply by every instance's log and metric labels.
    pub label: Arc<str>,
    pub dns: bool,
    pub kv: bool,
    /// The plugin's own config table.
    pub config: Arc<BTreeMap<String, serde_json::Value>>,
    pub stages: Vec<Stage>,
    /// `stages` as a set of [`Stage::bit`]s: asked for every plugin at every stage.
    pub stage_bits: u8,
    pub on_error: OnError,
    /// Shadow mode: verdicts are logged and counted, not enforced.
    pub shadow: bool,
    /// CPU budget per call, in epoch ticks.
    pub budget_ticks: u64,
    pub memory_limit: usize,
    /// The data tables granted to this plugin, by name.
    pub tables: Arc<std::collections::HashMap<String, Arc<crate::data::DataTable>>>,
    /// SHA-256-free fingerprint (FNV-1a of the file) for status output and logs.
    pub hash: String,
    /// The smarthosts and maildirs it may choose as a route.
    pub routes: crate::route::RoutePolicy,
    /// The metric series it has created (hashes), shared by all its instances, for the
    /// [`MAX_SERIES`] cap.
    pub series: Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
    /// The hooks it said it has no code for (import `hooks`): not called any more.
    pub unused: Arc<UnusedHooks>,
    /// Its `mailgate_plugin_call_seconds` series per stage, registered at the first call: a
    /// handle records directly, where the macro built and hashed the key at every call (~2 500
    /// instructions a message with five plugins).
    pub call_seconds: [std::sync::OnceLock<::metrics::Histogram>; Stage::ALL.len()],
}

impl PluginMeta {
    /// The histogram of this plugin's calls at `stage`.
    pub fn call_seconds(&self, stage: Stage) -> &::metrics::Histogram {
        self.call_seconds[stage as usize].get_or_init(|| {
            ::metrics::histogram!("mailgate_plugin_call_seconds", "plugin" => self.label.clone(), "stage" => stage.name())
        })
    }
}

impl PluginMeta {
    pub fn from_config(p: &mailgate_config::Plugin, tick: Duration, hash: String) -> PluginMeta {
        let ticks = p.cpu_budget.as_nanos().div_ceil(tick.as_nanos()).max(1) as u64;
        PluginMeta {
            name: p.name.clone(),
            label: Arc::from(p.name.as_str()),
            dns: p.granted(Grant::Dns),
            kv: p.granted(Grant::Kv),
            config: Arc::new(p.config.clone()),
            stages: p.stages.clone(),
            stage_bits: p.stages.iter().fold(0, |bits, s| bits | s.bit()),
            on_error: p.on_error,
            shadow: p.mode == mailgate_config::Mode::Shadow,
            budget_ticks: ticks,
            memory_limit: p.memory_limit as usize,
            tables: Default::default(),
            hash,
            routes: Default::default(),
            series: Default::default(),
            unused: Default::default(),
            call_seconds: Default::default(),
        }
    }
}

/// What all plugins share: the resolver and the kv backend.
pub struct Services {
    pub resolver: Option<Arc<TokioResolver>>,
    pub kv: Arc<dyn KvStore>,
}

/// One session's lazily computed authentication results, shared by the session and its
/// plugins.
pub type SharedAuth = Arc<tokio::sync::Mutex<mailgate_auth::AuthSession>>;

/// Who is calling: the plugin and the session (or "queue"), for log lines.
#[derive(Clone)]
pub struct Caller {
    pub plugin: Arc<str>,
    pub sid: Arc<str>,
}

/// Where an instance runs: what the chain hands to every capability when it makes a store.
pub struct Context<'a> {
    pub meta: &'a PluginMeta,
    pub services: &'a Services,
    pub sid: &'a Arc<str>,
    /// The spam score of the session/transaction, shared by every plugin of the chain.
    pub score: &'a Arc<std::sync::Mutex<Scoreboard>>,
    /// The session's authentication checks (none in the queue).
    pub auth: Option<&'a SharedAuth>,
}

impl Context<'_> {
    fn caller(&self) -> Caller {
        Caller { plugin: self.meta.label.clone(), sid: self.sid.clone() }
    }
}

/// The data of one plugin's store: each capability's own state, and the memory limiter.
pub struct HostState {
    pub message: MessageState,
    pub dns: DnsState,
    pub kv: KvState,
    pub data: DataState,
    pub score: ScoreState,
    pub auth: AuthState,
    pub log: LogState,
    pub config: ConfigState,
    pub metrics: MetricsState,
    pub hooks: HooksState,
    pub session: SessionState,
    pub limits: Limits,
}

/// The store's memory cap (the plugin's `memory_limit`), and how large the instance's memory
/// has grown: an instance grown past what is worth keeping idle is not reused.
pub struct Limits {
    cap: StoreLimits,
    /// The instance's linear memory size in bytes (its largest memory).
    pub memory: usize,
}

impl Limits {
    pub fn new(memory_limit: usize) -> Limits {
        Limits {
            cap: wasmtime::StoreLimitsBuilder::new().memory_size(memory_limit).trap_on_grow_failure(false).build(),
            memory: 0,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.cap.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory = self.memory.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.cap.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.cap.instances()
    }

    fn tables(&self) -> usize {
        self.cap.tables()
    }

    fn memories(&self) -> usize {
        self.cap.memories()
    }
}

impl HostState {
    pub fn new(cx: &Context<'_>, limits: Limits) -> HostState {
        HostState {
            message: MessageState::new(),
            dns: DnsState::new(cx),
            kv: KvState::new(cx),
            data: DataState::new(cx),
            score: ScoreState::new(cx),
            auth: AuthState::new(cx),
            log: LogState::new(cx),
            config: ConfigState::new(cx),
            metrics: MetricsState::new(cx),
            hooks: HooksState::new(cx),
            session: SessionState::default(),
            limits,
        }
    }

    /// Time the capabilities spent waiting (DNS, kv, auth look-ups) since the last call,
    /// given back to the plugin's CPU budget, which is counted in wall-clock epochs.
    pub fn take_waited(&mut self) -> Duration {
        self.dns.waited.take() + self.kv.waited.take() + self.auth.waited.take()
    }
}

/// Adds every import to the linker, each interface projected onto its capability's state.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wit::types::add_to_linker::<HostState, HasSelf<MessageState>>(linker, |s| &mut s.message)?;
    wit::message::add_to_linker::<HostState, HasSelf<MessageState>>(linker, |s| &mut s.message)?;
    wit::dns::add_to_linker::<HostState, HasSelf<DnsState>>(linker, |s| &mut s.dns)?;
    wit::kv::add_to_linker::<HostState, HasSelf<KvState>>(linker, |s| &mut s.kv)?;
    wit::data::add_to_linker::<HostState, HasSelf<DataState>>(linker, |s| &mut s.data)?;
    wit::score::add_to_linker::<HostState, HasSelf<ScoreState>>(linker, |s| &mut s.score)?;
    wit::auth::add_to_linker::<HostState, HasSelf<AuthState>>(linker, |s| &mut s.auth)?;
    wit::log::add_to_linker::<HostState, HasSelf<LogState>>(linker, |s| &mut s.log)?;
    wit::config::add_to_linker::<HostState, HasSelf<ConfigState>>(linker, |s| &mut s.config)?;
    wit::metrics::add_to_linker::<HostState, HasSelf<MetricsState>>(linker, |s| &mut s.metrics)?;
    wit::hooks::add_to_linker::<HostState, HasSelf<HooksState>>(linker, |s| &mut s.hooks)?;
    wit::session::add_to_linker::<HostState, HasSelf<SessionState>>(linker, |s| &mut s.session)?;
    Ok(())
}

/// Time a capability spent waiting in async host calls since the last deadline check.
#[derive(Default)]
pub struct Waited(Duration);

impl Waited {
    /// Runs an async host operation, counting its wait.
    async fn time<F: std::future::Future>(&mut self, f: F) -> F::Output {
        let started = Instant::now();
        let out = f.await;
        self.0 += started.elapsed();
        out
    }

    fn take(&mut self) -> Duration {
        std::mem::take(&mut self.0)
    }
}
