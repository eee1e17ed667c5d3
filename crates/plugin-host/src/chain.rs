//! The plugin chain: at each stage, the plugins configured for it are asked in order.
//! `next` asks the next one; `accept` ends the stage; a replying verdict ends it with that
//! reply. A plugin that traps, runs out of its CPU budget or memory, or answers something
//! invalid costs only its own verdict: it becomes its `on_error` (tempfail or skip), is logged
//! with plugin, stage and session, and its instance is dropped (a fresh one serves the next
//! call).

use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::TokioResolver;
use mailgate_config::{Config, OnError, Stage};
use mailgate_smtp::{Enhanced, Reply};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Store, StoreLimitsBuilder};

use crate::bindings::types::{self, ConnectionInfo, Envelope, Verdict};
use crate::bindings::Filter;
use crate::data::Scoreboard;
use crate::engine::{LoadedPlugin, PluginEngine};
use crate::host::{HostState, MessageHandle, ParsedMessage, Services, SharedAuth};
use crate::kv::KvStore;
use crate::PluginError;

/// The loaded plugins of a gateway (one config generation).
pub struct Plugins {
    engine: PluginEngine,
    loaded: Vec<LoadedPlugin>,
    /// Pipelines by name: indexes into `loaded`, in the order they are asked.
    pipelines: std::collections::HashMap<String, Arc<[usize]>>,
    services: Arc<Services>,
}

/// The chain's answer at a verdict stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every plugin said `next` (or none runs here): the gateway's own rules decide.
    Next,
    /// A plugin accepted: stop asking; the gateway's own rules still apply.
    Accept,
    /// Send this reply (4xx/5xx) and refuse the command.
    Reply(Reply),
    /// Send this reply and close the connection.
    Disconnect(Reply),
}

/// The chain's answer for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum DataDecision {
    Continue,
    Reply(Reply),
    Disconnect(Reply),
    /// Keep the message in quarantine, do not deliver; the client hears 250.
    Quarantine(String),
    /// Say 250 and drop the message.
    Discard,
}

/// The chain's routing answer for one recipient.
#[derive(Debug, Clone)]
pub enum RouteDecision {
    /// Use the configured route.
    Default,
    Route(types::Route),
    /// Fail the recipient with this reply (5xx: bounce, 4xx: retry).
    Reply(Reply),
}

/// An instantiated plugin within a session (or the queue).
struct Slot {
    store: Store<HostState>,
    filter: Filter,
}

/// What a stage passes to the plugins.
enum Call<'a> {
    Connect,
    Helo(&'a str),
    Auth(&'a types::AuthRequest),
    MailFrom(&'a Envelope),
    Rcpt(&'a Envelope, &'a str),
}

impl Call<'_> {
    fn stage(&self) -> Stage {
        match self {
            Call::Connect => Stage::Connect,
            Call::Helo(_) => Stage::Helo,
            Call::Auth(_) => Stage::Auth,
            Call::MailFrom(_) => Stage::MailFrom,
            Call::Rcpt(..) => Stage::Rcpt,
        }
    }
}

fn policy_failure() -> Reply {
    Reply::new(451, Enhanced(4, 3, 0), "Temporary policy failure, try again later")
}

/// Checks a plugin's reply: the class must match the verdict, the enhanced code must parse and
/// agree, and the text must be one sane line.
fn checked_reply(r: &types::Reply, classes: &[u8]) -> Result<Reply, String> {
    let class = (r.code / 100) as u8;
    if !classes.contains(&class) || !(400..600).contains(&r.code) {
        return Err(format!("reply code {} is not allowed for this verdict", r.code));
    }
    let enhanced = if r.enhanced.is_empty() {
        Enhanced(class, 0, 0)
    } else {
        let e = Enhanced::parse(&r.enhanced).ok_or_else(|| format!("bad enhanced code {:?}", r.enhanced))?;
        if e.0 != class {
            return Err(format!("enhanced code {} does not match reply code {}", r.enhanced, r.code));
        }
        e
    };
    let text: String = r.text.chars().filter(|c| !c.is_control()).take(400).collect();
    Ok(Reply::new(r.code, enhanced, if text.is_empty() { "Refused by policy".to_string() } else { text }))
}

fn describe(e: wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return match t {
            wasmtime::Trap::Interrupt => "CPU budget exceeded (interrupted)".into(),
            other => format!("trap: {other}"),
        };
    }
    format!("{e:#}")
}

impl Plugins {
    /// Compiles every `[[plugin]]` of the config. `slots` bounds live instances.
    pub fn load(
        cfg: &Config,
        resolver: Option<TokioResolver>,
        kv: Arc<dyn KvStore>,
    ) -> Result<Arc<Plugins>, PluginError> {
        let max_mem = cfg.plugins.iter().map(|p| p.memory_limit).max().unwrap_or(1 << 20);
        let n = cfg.plugins.len().max(1);
        // Every session's instances, the queue's pool, and room for a reload's overlap.
        let slots = (cfg.limits.max_sessions.saturating_mul(n) + n * QUEUE_POOL + 16).min(100_000) as u32;
        let engine = PluginEngine::new(slots, max_mem)?;
        let mut loaded = vec![];
        for p in &cfg.plugins {
            let t = Instant::now();
            let lp = engine.load(cfg, p)?;
            tracing::info!(plugin = %p.name, hash = %lp.meta.hash, compile_ms = t.elapsed().as_millis() as u64, "plugin loaded");
            loaded.push(lp);
        }
        let mut names: Vec<String> = cfg.pipelines.keys().cloned().collect();
        names.push(mailgate_config::DEFAULT_PIPELINE.to_string());
        let pipelines = names
            .into_iter()
            .map(|name| {
                let order: Vec<usize> =
                    cfg.pipeline(&name).iter().filter_map(|p| loaded.iter().position(|l| &l.meta.name == p)).collect();
                (name, Arc::from(order))
            })
            .collect();
        Ok(Arc::new(Plugins { engine, loaded, pipelines, services: Arc::new(Services { resolver, kv }) }))
    }

    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// (name, fingerprint) of each plugin, in chain order.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.loaded.iter().map(|p| (p.meta.name.clone(), p.meta.hash.clone())).collect()
    }

    /// Whether a plugin of `pipeline` runs at `stage` (e.g. AUTH is offered only when one
    /// checks it).
    pub fn has_stage(&self, pipeline: &str, stage: Stage) -> bool {
        self.pipeline(pipeline).iter().any(|&i| self.runs_at(i, stage))
    }

    /// A pipeline's plugin order (`default` for an unknown name; config check prevents that).
    fn pipeline(&self, name: &str) -> Arc<[usize]> {
        self.pipelines
            .get(name)
            .or_else(|| self.pipelines.get(mailgate_config::DEFAULT_PIPELINE))
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn runs_at(&self, i: usize, stage: Stage) -> bool {
        self.loaded[i].meta.stages.contains(&stage)
    }

    /// A chain for one SMTP session: instances are created on first use and live as long as
    /// the session, so a plugin may keep per-session state.
    pub fn session(self: &Arc<Self>, sid: &str, pipeline: &str) -> SessionChain {
        SessionChain { inner: Chain::new(self.clone(), sid, self.pipeline(pipeline)) }
    }

    /// The queue's stages (route, delivery result), on a pool of instances.
    pub fn queue(self: &Arc<Self>) -> QueueChain {
        QueueChain {
            plugins: self.clone(),
            idle: std::sync::Mutex::new(Vec::new()),
            running: tokio::sync::Semaphore::new(QUEUE_POOL),
        }
    }
}

/// Instances of every plugin for one user (a session or the queue).
struct Chain {
    plugins: Arc<Plugins>,
    /// One slot per loaded plugin; only those of the pipelines used get instances.
    slots: Vec<Option<Slot>>,
    /// The pipeline asked now.
    order: Arc<[usize]>,
    sid: Arc<str>,
    /// The session's spam score, shared with every instance's host state.
    score: Arc<std::sync::Mutex<Scoreboard>>,
    /// The session's authentication results, handed to every instance (none in the queue).
    auth: Option<SharedAuth>,
}

impl Chain {
    fn new(plugins: Arc<Plugins>, sid: &str, order: Arc<[usize]>) -> Chain {
        let n = plugins.loaded.len();
        Chain {
            plugins,
            slots: (0..n).map(|_| None).collect(),
            order,
            sid: sid.into(),
            score: Default::default(),
            auth: None,
        }
    }

    async fn slot(&mut self, i: usize) -> Result<&mut Slot, String> {
        if self.slots[i].is_none() {
            let lp = &self.plugins.loaded[i];
            let state = HostState {
                meta: lp.meta.clone(),
                services: self.plugins.services.clone(),
                table: ResourceTable::new(),
                limits: StoreLimitsBuilder::new().memory_size(lp.meta.memory_limit).trap_on_grow_failure(false).build(),
                sid: self.sid.clone(),
                host_wait: std::time::Duration::ZERO,
                score: self.score.clone(),
                auth: self.auth.clone(),
            };
            let mut store = Store::new(&self.plugins.engine.engine, state);
            store.limiter(|s| &mut s.limits);
            // At the deadline: time spent waiting on the host (DNS) is given back; otherwise the
            // plugin has used its CPU budget and is interrupted.
            store.epoch_deadline_callback(|mut ctx| {
                let waited = std::mem::take(&mut ctx.data_mut().host_wait);
                let credit = waited.as_nanos().div_ceil(crate::engine::TICK.as_nanos()) as u64;
                if credit > 0 {
                    Ok(wasmtime::UpdateDeadline::Continue(credit))
                } else {
                    Err(wasmtime::Trap::Interrupt.into())
                }
            });
            store.set_epoch_deadline(lp.meta.budget_ticks);
            let filter =
                lp.pre.instantiate_async(&mut store).await.map_err(|e| format!("instantiate: {}", describe(e)))?;
            store.set_epoch_deadline(lp.meta.budget_ticks);
            match filter.call_init(&mut store).await {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => return Err(format!("init refused: {msg}")),
                Err(e) => return Err(format!("init: {}", describe(e))),
            }
            self.slots[i] = Some(Slot { store, filter });
        }
        let slot = self.slots[i].as_mut().expect("just filled");
        slot.store.data_mut().host_wait = std::time::Duration::ZERO;
        slot.store.set_epoch_deadline(self.plugins.loaded[i].meta.budget_ticks);
        Ok(slot)
    }

    /// Logs a plugin failure and drops its instance; returns its on-error policy.
    fn failed(&mut self, i: usize, stage: Stage, msg: &str) -> OnError {
        let meta = &self.plugins.loaded[i].meta;
        tracing::error!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, on_error = ?meta.on_error, "plugin failed: {msg}");
        ::metrics::counter!("mailgate_plugin_failures_total", "plugin" => meta.name.clone(), "stage" => stage.name())
            .increment(1);
        self.slots[i] = None;
        meta.on_error
    }

    /// A shadow plugin's answer: logged and counted, never enforced; a failure only logged.
    /// `Ok(None)`: it said nothing (next, no changes) — decided by the answer's type by the
    /// caller; `Ok(Some(d))`: what it would have done, for the log.
    fn shadow(&mut self, i: usize, stage: Stage, answer: &Result<Option<String>, String>) {
        let meta = &self.plugins.loaded[i].meta;
        match answer {
            Ok(None) => {}
            Ok(Some(d)) => {
                tracing::info!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, decision = %d, "shadow verdict (not enforced)");
                ::metrics::counter!("mailgate_plugin_shadow_verdicts_total", "plugin" => meta.name.clone(), "stage" => stage.name()).increment(1);
            }
            Err(msg) => {
                tracing::warn!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, "shadow plugin failed (not enforced): {msg}");
                self.slots[i] = None;
            }
        }
    }

    fn observe(&self, i: usize, stage: Stage, started: Instant) {
        let meta = &self.plugins.loaded[i].meta;
        ::metrics::histogram!("mailgate_plugin_call_seconds", "plugin" => meta.name.clone(), "stage" => stage.name())
            .record(started.elapsed().as_secs_f64());
    }

    async fn call_verdict(&mut self, i: usize, conn: &ConnectionInfo, call: &Call<'_>) -> Result<Verdict, String> {
        let started = Instant::now();
        let slot = self.slot(i).await?;
        let (f, s) = (&slot.filter, &mut slot.store);
        let r = match call {
            Call::Connect => f.call_on_connect(s, conn).await,
            Call::Helo(h) => f.call_on_helo(s, conn, h).await,
            Call::Auth(a) => f.call_on_auth(s, conn, a).await,
            Call::MailFrom(e) => f.call_on_mail_from(s, conn, e).await,
            Call::Rcpt(e, r) => f.call_on_rcpt(s, conn, e, r).await,
        };
        self.observe(i, call.stage(), started);
        r.map_err(describe)
    }

    async fn verdict_stage(&mut self, conn: &ConnectionInfo, call: Call<'_>) -> Decision {
        let stage = call.stage();
        for i in self.order.clone().iter().copied() {
            if !self.plugins.runs_at(i, stage) {
                continue;
            }
            let answer = self.call_verdict(i, conn, &call).await.and_then(|v| match v {
                Verdict::Next => Ok(Decision::Next),
                Verdict::Accept => Ok(Decision::Accept),
                Verdict::Reject(r) => checked_reply(&r, &[5]).map(Decision::Reply),
                Verdict::Tempfail(r) => checked_reply(&r, &[4]).map(Decision::Reply),
                Verdict::Disconnect(r) => checked_reply(&r, &[4, 5]).map(Decision::Disconnect),
                Verdict::Quarantine(_) | Verdict::Discard => Err("quarantine/discard are only for on-data".into()),
            });
            let name = &self.plugins.loaded[i].meta.name;
            if self.plugins.loaded[i].meta.shadow {
                let said = answer.map(|d| (d != Decision::Next).then(|| format!("{d:?}")));
                self.shadow(i, stage, &said);
                continue;
            }
            match answer {
                Ok(Decision::Next) => continue,
                Ok(d) => {
                    tracing::info!(plugin = %name, stage = stage.name(), sid = %self.sid, decision = ?d, "plugin verdict");
                    ::metrics::counter!("mailgate_plugin_verdicts_total", "plugin" => name.clone(), "stage" => stage.name(), "verdict" => verdict_name(&d)).increment(1);
                    return d;
                }
                Err(msg) => match self.failed(i, stage, &msg) {
                    OnError::Tempfail => return Decision::Reply(policy_failure()),
                    OnError::Skip => continue,
                },
            }
        }
        Decision::Next
    }
}

fn verdict_name(d: &Decision) -> &'static str {
    match d {
        Decision::Next => "next",
        Decision::Accept => "accept",
        Decision::Reply(r) if r.is_transient() => "tempfail",
        Decision::Reply(_) => "reject",
        Decision::Disconnect(_) => "disconnect",
    }
}

/// The plugin chain of one SMTP session.
pub struct SessionChain {
    inner: Chain,
}

impl SessionChain {
    /// Switches to another pipeline (the transaction's, chosen by its first recipient).
    pub fn use_pipeline(&mut self, name: &str) {
        self.inner.order = self.inner.plugins.pipeline(name);
    }

    /// Gives the plugins the session's authentication results (before the first hook).
    pub fn set_auth(&mut self, auth: SharedAuth) {
        self.inner.auth = Some(auth);
    }

    fn outside_transaction(&self) {
        self.inner.score.lock().expect("score lock").end_transaction();
    }

    pub async fn on_connect(&mut self, conn: &ConnectionInfo) -> Decision {
        self.outside_transaction();
        self.inner.verdict_stage(conn, Call::Connect).await
    }
    pub async fn on_helo(&mut self, conn: &ConnectionInfo, helo: &str) -> Decision {
        self.outside_transaction();
        self.inner.verdict_stage(conn, Call::Helo(helo)).await
    }
    pub async fn on_auth(&mut self, conn: &ConnectionInfo, req: &types::AuthRequest) -> Decision {
        self.outside_transaction();
        self.inner.verdict_stage(conn, Call::Auth(req)).await
    }
    pub async fn on_mail_from(&mut self, conn: &ConnectionInfo, env: &Envelope) -> Decision {
        self.inner.score.lock().expect("score lock").begin_transaction();
        self.inner.verdict_stage(conn, Call::MailFrom(env)).await
    }
    pub async fn on_rcpt(&mut self, conn: &ConnectionInfo, env: &Envelope, rcpt: &str) -> Decision {
        self.inner.verdict_stage(conn, Call::Rcpt(env, rcpt)).await
    }

    /// Asks the data-stage plugins about a complete message. Modifications of every plugin
    /// that did not fail are collected in chain order; the caller applies them before the
    /// message is spooled.
    pub async fn on_data(
        &mut self,
        conn: &ConnectionInfo,
        env: &Envelope,
        raw: Arc<Vec<u8>>,
    ) -> (DataDecision, Vec<types::Modification>) {
        let chain = &mut self.inner;
        let msg = ParsedMessage::new(raw);
        let mut mods = vec![];
        for i in chain.order.clone().iter().copied() {
            if !chain.plugins.runs_at(i, Stage::Data) {
                continue;
            }
            let started = Instant::now();
            let answer = match chain.slot(i).await {
                Ok(slot) => {
                    let res = slot.store.data_mut().table.push(MessageHandle(msg.clone()));
                    match res {
                        Ok(handle) => {
                            let borrow = Resource::<MessageHandle>::new_borrow(handle.rep());
                            let r = slot.filter.call_on_data(&mut slot.store, conn, env, borrow).await;
                            let _ = slot.store.data_mut().table.delete(handle);
                            r.map_err(describe)
                        }
                        Err(e) => Err(format!("resource table: {e}")),
                    }
                }
                Err(e) => Err(e),
            };
            chain.observe(i, Stage::Data, started);
            let decided = answer.and_then(|dr| {
                let accepted = matches!(dr.verdict, Verdict::Accept);
                let d = match dr.verdict {
                    Verdict::Next | Verdict::Accept => DataDecision::Continue,
                    Verdict::Reject(r) => DataDecision::Reply(checked_reply(&r, &[5])?),
                    Verdict::Tempfail(r) => DataDecision::Reply(checked_reply(&r, &[4])?),
                    Verdict::Disconnect(r) => DataDecision::Disconnect(checked_reply(&r, &[4, 5])?),
                    Verdict::Quarantine(reason) => DataDecision::Quarantine(reason.chars().take(200).collect()),
                    Verdict::Discard => DataDecision::Discard,
                };
                // A route outside the plugin's grant is its failure, not a route.
                for m in &dr.modifications {
                    if let types::Modification::SetRoute(r) = m {
                        chain.plugins.loaded[i].meta.routes.check(r)?;
                    }
                }
                Ok((d, accepted, dr.modifications))
            });
            let name = chain.plugins.loaded[i].meta.name.clone();
            if chain.plugins.loaded[i].meta.shadow {
                // Neither its verdict nor its modifications take effect.
                let said = decided.map(|(d, _, _)| (d != DataDecision::Continue).then(|| format!("{d:?}")));
                chain.shadow(i, Stage::Data, &said);
                continue;
            }
            match decided {
                Ok((d, accepted, m)) => {
                    mods.extend(m);
                    if d != DataDecision::Continue {
                        tracing::info!(plugin = %name, stage = "data", sid = %chain.sid, decision = ?d, "plugin verdict");
                        return (d, mods);
                    }
                    if accepted {
                        break;
                    }
                }
                Err(msg) => match chain.failed(i, Stage::Data, &msg) {
                    OnError::Tempfail => return (DataDecision::Reply(policy_failure()), vec![]),
                    OnError::Skip => continue,
                },
            }
        }
        (DataDecision::Continue, mods)
    }
}

/// Queue chains: at most this many run at once (more deliveries wait for one), and each is
/// kept for reuse, so its instances are made once, not per call.
pub(crate) const QUEUE_POOL: usize = 4;

/// The queue's plugin chains: a pool, so routing and results for different messages run in
/// parallel — no lock is held across a plugin call or its DNS waits. A queue-stage plugin
/// keeps no state from one call to the next that it can count on.
pub struct QueueChain {
    plugins: Arc<Plugins>,
    idle: std::sync::Mutex<Vec<Chain>>,
    /// One permit per chain that may run at once.
    running: tokio::sync::Semaphore,
}

/// A chain taken from the pool; it goes back when dropped (a plugin that failed in it has
/// already lost its instance; the others are kept).
struct Pooled<'a> {
    pool: &'a QueueChain,
    chain: Option<Chain>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Chain;
    fn deref(&self) -> &Chain {
        self.chain.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Chain {
        self.chain.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(chain) = self.chain.take() else { return };
        self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(chain);
    }
}

impl QueueChain {
    /// An idle chain (or a new one, while fewer than [`QUEUE_POOL`] exist) set to `pipeline`,
    /// with a clean score.
    async fn take(&self, pipeline: &str) -> Pooled<'_> {
        let permit = self.running.acquire().await.expect("the pool's semaphore is never closed");
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let order = self.plugins.pipeline(pipeline);
        let mut chain = idle.unwrap_or_else(|| Chain::new(self.plugins.clone(), "queue", order.clone()));
        chain.order = order;
        chain.score.lock().expect("score lock").clear();
        Pooled { pool: self, chain: Some(chain), _permit: permit }
    }

    /// Lets on-route plugins pick the route of one recipient.
    pub async fn on_route(&self, pipeline: &str, env: &Envelope, rcpt: &str) -> RouteDecision {
        let mut chain = self.take(pipeline).await;
        let mut decision = RouteDecision::Default;
        for i in chain.order.clone().iter().copied() {
            if !chain.plugins.runs_at(i, Stage::Route) {
                continue;
            }
            let started = Instant::now();
            let answer = match chain.slot(i).await {
                Ok(slot) => slot.filter.call_on_route(&mut slot.store, env, rcpt).await.map_err(describe),
                Err(e) => Err(e),
            };
            chain.observe(i, Stage::Route, started);
            let step = answer.and_then(|rr| {
                // A route outside the plugin's grant is its failure, not a route.
                if let Some(r) = &rr.route {
                    chain.plugins.loaded[i].meta.routes.check(r)?;
                }
                let route = rr.route.map(RouteDecision::Route);
                match rr.verdict {
                    Verdict::Next => Ok((route, false)),
                    Verdict::Accept => Ok((route, true)),
                    Verdict::Reject(r) => Ok((Some(RouteDecision::Reply(checked_reply(&r, &[5])?)), true)),
                    Verdict::Tempfail(r) => Ok((Some(RouteDecision::Reply(checked_reply(&r, &[4])?)), true)),
                    _ => Err("only next/accept/reject/tempfail are valid at on-route".to_string()),
                }
            });
            if chain.plugins.loaded[i].meta.shadow {
                let said = step.map(|(d, _)| d.map(|d| format!("{d:?}")));
                chain.shadow(i, Stage::Route, &said);
                continue;
            }
            match step {
                Ok((d, stop)) => {
                    if let Some(d) = d {
                        decision = d;
                    }
                    if stop {
                        break;
                    }
                }
                Err(msg) => {
                    if chain.failed(i, Stage::Route, &msg) == OnError::Tempfail {
                        return RouteDecision::Reply(policy_failure());
                    }
                }
            }
        }
        decision
    }

    /// Tells on-delivery-result plugins about one recipient's attempt.
    pub async fn on_delivery_result(&self, pipeline: &str, res: &types::DeliveryResult) {
        let mut chain = self.take(pipeline).await;
        for i in chain.order.clone().iter().copied() {
            if !chain.plugins.runs_at(i, Stage::DeliveryResult) {
                continue;
            }
            let started = Instant::now();
            let r = match chain.slot(i).await {
                Ok(slot) => slot.filter.call_on_delivery_result(&mut slot.store, res).await.map_err(describe),
                Err(e) => Err(e),
            };
            chain.observe(i, Stage::DeliveryResult, started);
            if let Err(msg) = r {
                chain.failed(i, Stage::DeliveryResult, &msg);
            }
        }
    }
}
