//! `[[plugin]]` entries: which WebAssembly plugins run, in which order, at which stages, with
//! which sandbox limits and capabilities.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A protocol stage a plugin can hook.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Connect,
    Helo,
    Auth,
    MailFrom,
    Rcpt,
    Data,
    Route,
    DeliveryResult,
}

impl Stage {
    /// This stage's bit in a set of stages (one bit per variant, in declaration order).
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    pub const ALL: [Stage; 8] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Auth,
        Stage::MailFrom,
        Stage::Rcpt,
        Stage::Data,
        Stage::Route,
        Stage::DeliveryResult,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Auth => "auth",
            Stage::MailFrom => "mail_from",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Route => "route",
            Stage::DeliveryResult => "delivery_result",
        }
    }
}

/// What a plugin's failure (trap, timeout, out of memory, invalid answer) turns into.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The client gets `451 4.3.0` (or the transaction is deferred): fail safe.
    #[default]
    Tempfail,
    /// The plugin's verdict is dropped and the chain goes on: fail open.
    Skip,
}

/// Whether a plugin's verdicts count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// A capability beyond log/config/metrics; everything is denied unless granted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Dns,
    Kv,
    /// Routes beyond those the operator configured: the ones in `allowed_routes`.
    Route,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Unique name, for logs, metrics and the kv namespace.
    pub name: String,
    /// The component file (`plugins/dist/<name>.wasm`).
    pub path: PathBuf,
    /// The stages it is called at; by default all of them.
    #[serde(default = "all_stages")]
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub on_error: OnError,
    /// CPU time one hook call may take before it is interrupted.
    #[serde(default = "default_budget", with = "humantime_serde")]
    pub cpu_budget: Duration,
    /// Linear memory cap of one instance, in bytes.
    #[serde(default = "default_memory")]
    pub memory_limit: u64,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// With `grants = ["route"]`: the smarthosts and maildirs this plugin may choose besides
    /// the routes of `[routes]`, as `smarthost:HOST:PORT` or `maildir:PATH`.
    #[serde(default)]
    pub allowed_routes: Vec<String>,
    /// Read-only data tables this plugin may look up (`name = "file.tsv"`), loaded once per
    /// configuration generation and shared by every instance (e.g. the spam model).
    #[serde(default)]
    pub data: BTreeMap<String, PathBuf>,
    /// `enforce` (default) or `shadow`: a shadow plugin runs and its verdicts are logged and
    /// counted, but never enforced (to try a policy on live traffic).
    #[serde(default)]
    pub mode: Mode,
    /// The plugin's own settings, read through its `config` import.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
}

fn all_stages() -> Vec<Stage> {
    Stage::ALL.to_vec()
}
fn default_budget() -> Duration {
    Duration::from_millis(100)
}
fn default_memory() -> u64 {
    32 << 20
}

impl Plugin {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("name {:?}: use letters, digits, - and _", self.name));
        }
        if !self.path.is_file() {
            return Err(format!("path {}: no such file (build plugins with plugins/build.sh)", self.path.display()));
        }
        if self.cpu_budget.is_zero() || self.cpu_budget > Duration::from_secs(10) {
            return Err("cpu_budget: must be between 1ms and 10s".into());
        }
        if !(1 << 20..=4 << 30).contains(&self.memory_limit) {
            return Err("memory_limit: must be between 1 MiB and 4 GiB".into());
        }
        if !self.allowed_routes.is_empty() && !self.granted(Grant::Route) {
            return Err("allowed_routes: needs grants = [\"route\"]".into());
        }
        for r in &self.allowed_routes {
            if parse_allowed_route(r).is_none() {
                return Err(format!("allowed_routes: {r:?} is not smarthost:HOST:PORT or maildir:PATH"));
            }
        }
        for (name, path) in &self.data {
            if !path.is_file() {
                return Err(format!("data.{name}: {}: no such file", path.display()));
            }
        }
        Ok(())
    }

    pub fn granted(&self, g: Grant) -> bool {
        self.grants.contains(&g)
    }
}

/// One `allowed_routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedRoute {
    Smarthost(String, u16),
    Maildir(PathBuf),
}

/// Parses `smarthost:HOST:PORT` or `maildir:PATH`.
pub fn parse_allowed_route(s: &str) -> Option<AllowedRoute> {
    if let Some(rest) = s.strip_prefix("smarthost:") {
        let (host, port) = rest.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        (!host.is_empty()).then(|| AllowedRoute::Smarthost(host.to_ascii_lowercase(), port))
    } else {
        let path = s.strip_prefix("maildir:")?;
        (!path.is_empty()).then(|| AllowedRoute::Maildir(PathBuf::from(path)))
    }
}
