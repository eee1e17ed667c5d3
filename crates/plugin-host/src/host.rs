//! The host side of the imports: what a plugin may call, per store. `dns` and `kv` are denied
//! unless the plugin's config entry grants them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use mailgate_config::{Grant, OnError, Stage};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;

use crate::bindings::mailgate::plugin::{auth, config, data, dns, kv, log, message, metrics, score, types};
use crate::kv::KvStore;

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

/// Largest read a plugin gets in one call.
const MAX_READ: u32 = 1 << 20;

impl types::Host for HostState {}
impl message::Host for HostState {}

impl message::HostMessage for HostState {
    fn header(&mut self, m: Resource<MessageHandle>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.header(&name))
    }
    fn header_all(&mut self, m: Resource<MessageHandle>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&m)?.0.header_values(Some(&name)).into_iter().map(|(_, v)| v).collect())
    }
    fn headers(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.table.get(&m)?.0.header_values(None))
    }
    fn subject(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.subject().map(str::to_string))
    }
    fn from(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.from_address())
    }
    fn text_body(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.text_body())
    }
    fn html_body(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.0.html_body())
    }
    fn raw_size(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&m)?.0.raw().len() as u64)
    }
    fn read(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> wasmtime::Result<Vec<u8>> {
        let raw = self.table.get(&m)?.0.raw();
        let start = (offset.min(raw.len() as u64)) as usize;
        let end = start.saturating_add(len.min(MAX_READ) as usize).min(raw.len());
        Ok(raw[start..end].to_vec())
    }
    fn drop(&mut self, m: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, msg: String) -> wasmtime::Result<()> {
        let msg: String = msg.chars().take(MAX_LOG_LINE).collect();
        let (plugin, sid) = (&self.meta.name, &*self.sid);
        match level {
            log::Level::Trace => tracing::trace!(plugin, sid, "{msg}"),
            log::Level::Debug => tracing::debug!(plugin, sid, "{msg}"),
            log::Level::Info => tracing::info!(plugin, sid, "{msg}"),
            log::Level::Warn => tracing::warn!(plugin, sid, "{msg}"),
            log::Level::Error => tracing::error!(plugin, sid, "{msg}"),
        }
        Ok(())
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.meta.config.get(&key).map(scalar))
    }
    fn get_list(&mut self, key: String) -> wasmtime::Result<Vec<String>> {
        Ok(match self.meta.config.get(&key) {
            None => vec![],
            Some(serde_json::Value::Array(a)) => a.iter().map(scalar).collect(),
            Some(v) => vec![scalar(v)],
        })
    }
    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.meta.config.keys().cloned().collect())
    }
}

fn dns_error(e: hickory_resolver::net::NetError) -> dns::DnsError {
    if e.is_nx_domain() {
        dns::DnsError::Nxdomain
    } else if e.is_no_records_found() {
        // NODATA: the name exists without records of this type.
        dns::DnsError::Nxdomain
    } else if e.to_string().to_lowercase().contains("timed out") || e.to_string().to_lowercase().contains("timeout") {
        dns::DnsError::Timeout
    } else {
        dns::DnsError::Servfail(e.to_string())
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

impl HostState {
    fn resolver(&self) -> Result<TokioResolver, dns::DnsError> {
        if !self.meta.dns {
            tracing::debug!(plugin = %self.meta.name, sid = %self.sid, "dns denied (no grant)");
            return Err(dns::DnsError::Denied);
        }
        self.services.resolver.clone().ok_or_else(|| dns::DnsError::Servfail("no resolver".into()))
    }

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

fn texts(l: &hickory_resolver::lookup::Lookup, f: impl Fn(&RData) -> Option<String>) -> Vec<String> {
    l.answers().iter().filter_map(|r| f(&r.data)).collect()
}

impl HostState {
    /// Runs an async host operation, crediting its wait time back to the plugin's budget.
    async fn waited<F: std::future::Future>(&mut self, f: F) -> F::Output {
        let started = std::time::Instant::now();
        let out = f.await;
        self.host_wait += started.elapsed();
        out
    }
}

impl dns::Host for HostState {
    async fn txt(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited(r.txt_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::TXT(t) => {
                Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<String>())
            }
            _ => None,
        }))
    }
    async fn a(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited(r.ipv4_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        }))
    }
    async fn aaaa(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited(r.ipv6_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        }))
    }
    async fn mx(&mut self, name: String) -> Result<Vec<(u16, String)>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited(r.mx_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_string())),
                _ => None,
            })
            .collect())
    }
    async fn ptr(&mut self, ip: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| dns::DnsError::Servfail("not an IP address".into()))?;
        let l = self.waited(r.reverse_lookup(hickory_resolver::proto::rr::Name::from(ip))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_string()),
            _ => None,
        }))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        Ok(self.kv_key(&key).and_then(|k| self.services.kv.get(&k).map_err(kv::KvError::Backend)))
    }
    fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<u32>) -> wasmtime::Result<Result<(), kv::KvError>> {
        if value.len() > MAX_KV_VALUE && self.meta.kv {
            return Ok(Err(kv::KvError::Backend(format!("value larger than {MAX_KV_VALUE} octets"))));
        }
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        Ok(self.kv_key(&key).and_then(|k| self.services.kv.set(&k, value, ttl).map_err(kv::KvError::Backend)))
    }
    fn incr(&mut self, key: String, delta: i64, ttl: Option<u32>) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let ttl = ttl.map(|s| Duration::from_secs(s.into()));
        Ok(self.kv_key(&key).and_then(|k| self.services.kv.incr(&k, delta, ttl).map_err(kv::KvError::Backend)))
    }
    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), kv::KvError>> {
        Ok(self.kv_key(&key).and_then(|k| self.services.kv.delete(&k).map_err(kv::KvError::Backend)))
    }
}

/// Distinct metric series (name and label values) one plugin may create; the rest are
/// dropped and counted in `mailgate_plugin_metrics_dropped_total`, so a plugin cannot grow
/// the gateway's memory through metrics.
pub const MAX_SERIES: usize = 200;
/// Label pairs per observation (more are ignored), and the length of each key and value.
const MAX_LABELS: usize = 8;
const MAX_LABEL_LEN: usize = 64;
/// Largest kv value and key, in octets.
pub const MAX_KV_VALUE: usize = 64 << 10;
pub const MAX_KV_KEY: usize = 512;
/// Longest log line a plugin may write, in characters (the rest is cut).
pub const MAX_LOG_LINE: usize = 4096;
/// Longest data-table key looked up (longer keys are absent).
pub const MAX_DATA_KEY: usize = 1024;

fn metric_labels(plugin: &str, labels: Vec<(String, String)>) -> Vec<::metrics::Label> {
    let cut = |s: String| s.chars().take(MAX_LABEL_LEN).collect::<String>();
    let mut v: Vec<::metrics::Label> =
        labels.into_iter().take(MAX_LABELS).map(|(k, v)| ::metrics::Label::new(cut(k), cut(v))).collect();
    v.push(::metrics::Label::new("plugin", plugin.to_string()));
    v
}

impl HostState {
    /// Whether this series may be recorded: known already, or new and under the cap.
    fn series_allowed(&self, name: &str, labels: &[::metrics::Label]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        for l in labels {
            l.key().hash(&mut h);
            l.value().hash(&mut h);
        }
        let key = h.finish();
        let mut series = self.meta.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.contains(&key) {
            return true;
        }
        if series.len() < MAX_SERIES {
            series.insert(key);
            return true;
        }
        drop(series);
        ::metrics::counter!("mailgate_plugin_metrics_dropped_total", "plugin" => self.meta.name.clone()).increment(1);
        false
    }
}

fn metric_name(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).take(64).collect();
    format!("mailgate_plugin_{clean}")
}

impl metrics::Host for HostState {
    fn counter(&mut self, name: String, value: u64, labels: Vec<(String, String)>) -> wasmtime::Result<()> {
        let (name, labels) = (metric_name(&name), metric_labels(&self.meta.name, labels));
        if self.series_allowed(&name, &labels) {
            ::metrics::counter!(name, labels).increment(value);
        }
        Ok(())
    }
    fn histogram(&mut self, name: String, value: f64, labels: Vec<(String, String)>) -> wasmtime::Result<()> {
        let (name, labels) = (metric_name(&name), metric_labels(&self.meta.name, labels));
        if self.series_allowed(&name, &labels) {
            ::metrics::histogram!(name, labels).record(value);
        }
        Ok(())
    }
}

impl data::Host for HostState {
    fn lookup(
        &mut self,
        table: String,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<String>>, data::DataError>> {
        let Some(t) = self.meta.tables.get(&table) else {
            tracing::debug!(plugin = %self.meta.name, sid = %self.sid, %table, "data table denied (not granted)");
            return Ok(Err(data::DataError::Denied));
        };
        Ok(Ok(keys
            .iter()
            .enumerate()
            .map(
                |(i, k)| {
                    if i < crate::data::MAX_KEYS && k.len() <= MAX_DATA_KEY {
                        t.get(k).map(str::to_string)
                    } else {
                        None
                    }
                },
            )
            .collect()))
    }
}

impl score::Host for HostState {
    fn add(&mut self, points: f64, rule: String) -> wasmtime::Result<()> {
        if points.is_finite() {
            let rule: String = rule.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            tracing::debug!(plugin = %self.meta.name, sid = %self.sid, %rule, points, "score");
            self.score.lock().expect("score lock").add(rule, points);
        }
        Ok(())
    }
    fn total(&mut self) -> wasmtime::Result<f64> {
        Ok(self.score.lock().expect("score lock").total())
    }
    fn rules(&mut self) -> wasmtime::Result<Vec<(String, f64)>> {
        Ok(self.score.lock().expect("score lock").rules())
    }
}

fn status(s: mailgate_auth::Status) -> types::AuthStatus {
    use mailgate_auth::Status as S;
    match s {
        S::Pass => types::AuthStatus::Pass,
        S::Fail => types::AuthStatus::Fail,
        S::SoftFail => types::AuthStatus::Softfail,
        S::Neutral => types::AuthStatus::Neutral,
        S::None => types::AuthStatus::None,
        S::TempError => types::AuthStatus::Temperror,
        S::PermError => types::AuthStatus::Permerror,
    }
}

fn spf_result(s: &mailgate_auth::Spf) -> types::SpfResult {
    types::SpfResult { status: status(s.status), domain: s.domain.clone(), helo: s.helo }
}

impl auth::Host for HostState {
    async fn spf(&mut self) -> Option<types::SpfResult> {
        let a = self.auth.clone()?;
        self.waited(async { a.lock().await.spf().await.map(spf_result) }).await
    }
    async fn spf_helo(&mut self) -> Option<types::SpfResult> {
        let a = self.auth.clone()?;
        self.waited(async { a.lock().await.spf_helo().await.map(spf_result) }).await
    }
    async fn dkim(&mut self) -> Vec<types::DkimResult> {
        let Some(a) = self.auth.clone() else { return vec![] };
        self.waited(async {
            let mut a = a.lock().await;
            let Some(m) = a.message().await else { return vec![] };
            m.dkim
                .iter()
                .map(|d| types::DkimResult {
                    status: status(d.status),
                    domain: d.domain.clone(),
                    selector: d.selector.clone(),
                })
                .collect()
        })
        .await
    }
    async fn dmarc(&mut self) -> Option<types::DmarcResult> {
        let a = self.auth.clone()?;
        self.waited(async {
            let mut a = a.lock().await;
            let d = a.message().await?.dmarc.as_ref()?;
            Some(types::DmarcResult {
                status: status(d.status),
                domain: d.domain.clone(),
                policy: match d.policy {
                    mailgate_auth::Policy::None => types::DmarcPolicy::None,
                    mailgate_auth::Policy::Quarantine => types::DmarcPolicy::Quarantine,
                    mailgate_auth::Policy::Reject => types::DmarcPolicy::Reject,
                },
            })
        })
        .await
    }
    async fn arc(&mut self) -> Option<types::ArcResult> {
        let a = self.auth.clone()?;
        self.waited(async {
            let mut a = a.lock().await;
            let r = &a.message().await?.arc;
            Some(types::ArcResult { status: status(r.status), instances: r.instances, sealer: r.sealer.clone() })
        })
        .await
    }
    async fn iprev(&mut self) -> Option<types::IprevResult> {
        let a = self.auth.clone()?;
        self.waited(async {
            let mut a = a.lock().await;
            let r = a.iprev().await;
            Some(types::IprevResult { status: status(r.status), hostname: r.hostname.clone() })
        })
        .await
    }
}
