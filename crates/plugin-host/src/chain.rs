//! The plugin chain: at each stage, the plugins configured for it are asked in order.
//! `next` asks the next one; `accept` ends the stage; a replying verdict ends it with that
//! reply. A plugin that traps, runs out of its CPU budget or memory, or answers something
//! invalid costs only its own verdict: it becomes its `on_error` (tempfail or skip), is logged
//! with plugin, stage and session, and its instance is dropped (a fresh one serves the next
//! call).

use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::TokioResolver;
use mailgate_config::{Config, Stage};
use mailgate_smtp::Reply;

use crate::bindings::types::{self, ConnectionInfo, Envelope, Verdict};
use crate::engine::{LoadedPlugin, PluginEngine};
use crate::failure::{checked_reply, policy_failure, Failure};
use crate::host::{ParsedMessage, PluginMeta, Services, SharedAuth};
use crate::kv::KvStore;
use crate::runner::{Answer, Call, Chain, Said, Step, Tempfail};
use crate::PluginError;

/// The loaded plugins of a gateway (one config generation).
pub struct Plugins {
    pub(crate) engine: PluginEngine,
    pub(crate) loaded: Vec<LoadedPlugin>,
    /// Pipelines by name: indexes into `loaded`, in the order they are asked.
    pipelines: std::collections::HashMap<String, Arc<[usize]>>,
    pub(crate) services: Services,
    /// Instances that served a session and may serve another.
    pub(crate) idle: crate::runner::IdleInstances,
    /// The `[[pool]]` and `[shaping.classes]` names an on-route answer may pick.
    pools: std::collections::HashSet<String>,
    classes: std::collections::HashSet<String>,
    /// The last version given out (`conn-version`, `envelope-ref`): every change of any
    /// session's connection facts or of an envelope takes the next, so an instance that
    /// served an earlier session or message never mistakes its facts for the new one's.
    pub(crate) versions: std::sync::atomic::AtomicU64,
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

/// The chain's whole on-route answer: the route, and the source pool and shaping class the
/// last plugins that named one picked.
#[derive(Debug, Clone)]
pub struct Routed {
    pub decision: RouteDecision,
    pub pool: Option<String>,
    pub shaping: Option<String>,
}

/// What one plugin's on-route answer changes.
#[derive(Debug)]
struct RouteEffect {
    decision: Option<RouteDecision>,
    pool: Option<String>,
    shaping: Option<String>,
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
        // Every SMTP session's instances, every API submission's (each listener passes at most
        // `max_connections` messages on at once, batches included), the queue's pool, and
        // room for a reload's overlap. A slot too few would fail a plugin under load.
        let api: usize = cfg.apis.iter().map(|a| a.max_connections).fold(0, usize::saturating_add);
        let users = cfg.limits.max_sessions.saturating_add(api);
        let slots = (users.saturating_mul(n).saturating_add(n * QUEUE_POOL + 16)).min(100_000) as u32;
        let mut sources = Vec::with_capacity(cfg.plugins.len());
        let mut each = crate::engine::Footprint::MIN;
        for p in &cfg.plugins {
            let bytes = std::fs::read(&p.path)
                .map_err(|e| PluginError::Load { plugin: p.name.clone(), msg: format!("{}: {e}", p.path.display()) })?;
            // A file that does not parse fails to compile below, with the compiler's reason.
            if let Ok(f) = crate::engine::Footprint::of(&bytes) {
                each = each.max(f);
            }
            sources.push(bytes);
        }
        let engine = PluginEngine::new(slots, each, max_mem)?;
        let mut loaded = vec![];
        for (p, bytes) in cfg.plugins.iter().zip(&sources) {
            let t = Instant::now();
            let lp = engine.load(cfg, p, bytes)?;
            tracing::info!(plugin = %p.name, hash = %lp.meta.hash, compile_ms = t.elapsed().as_millis() as u64, fiber = lp.on_fiber(), "plugin loaded");
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
        Ok(Arc::new(Plugins {
            engine,
            loaded,
            pipelines,
            services: Services { resolver: resolver.map(Arc::new), kv },
            idle: crate::runner::IdleInstances::new(cfg.plugins.len(), cfg.limits.max_sessions),
            pools: cfg.pools.iter().map(|p| p.name.clone()).collect(),
            classes: cfg.shaping.classes.keys().cloned().collect(),
            versions: Default::default(),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// (name, idle instances) of each plugin: instances that served a session and wait for
    /// another.
    pub fn idle_instances(&self) -> Vec<(String, usize)> {
        self.loaded.iter().map(|p| p.meta.name.clone()).zip(self.idle.counts()).collect()
    }

    /// The stages each plugin (by name) is configured for but said it has no code at, so is
    /// not called at.
    pub fn unused_stages(&self) -> Vec<(String, Vec<Stage>)> {
        self.loaded
            .iter()
            .map(|p| {
                let unused = p.meta.stages.iter().copied().filter(|s| p.meta.unused.contains(*s)).collect();
                (p.meta.name.clone(), unused)
            })
            .collect()
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
    pub(crate) fn pipeline(&self, name: &str) -> Arc<[usize]> {
        self.pipelines
            .get(name)
            .or_else(|| self.pipelines.get(mailgate_config::DEFAULT_PIPELINE))
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    pub(crate) fn runs_at(&self, i: usize, stage: Stage) -> bool {
        self.loaded[i].meta.stage_bits & stage.bit() != 0
    }

    /// A chain for one SMTP session: instances are created on first use and live as long as
    /// the session, so a plugin may keep per-session state.
    pub fn session(self: &Arc<Self>, sid: &str, pipeline: &str) -> SessionChain {
        SessionChain { chain: Chain::new(self.clone(), sid, self.pipeline(pipeline)) }
    }

    /// Runs every plugin's `init` with its config (an instance each, as a first session
    /// would): (plugin, why) for each that fails or refuses. `config check` and `plugin test`
    /// use it, so a plugin that rejects its own config is found before it answers 451 to mail.
    pub async fn check_init(self: &Arc<Self>) -> Vec<(String, String)> {
        let all: Arc<[usize]> = (0..self.loaded.len()).collect();
        Chain::new(self.clone(), "init-check", all).check_init().await
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

/// The name of a verdict for the counters and what it means at a verdict stage.
fn verdict_step(v: Verdict, stage: Stage) -> Result<Step<Decision>, Failure> {
    let (d, verdict) = match v {
        Verdict::Next => return Ok(Step::next()),
        Verdict::Accept => (Decision::Accept, "accept"),
        Verdict::Reject(r) => (Decision::Reply(checked_reply(&r, &[5])?), "reject"),
        Verdict::Tempfail(r) => (Decision::Reply(checked_reply(&r, &[4])?), "tempfail"),
        Verdict::Disconnect(r) => (Decision::Disconnect(checked_reply(&r, &[4, 5])?), "disconnect"),
        Verdict::Quarantine(_) => return Err(Failure::Verdict { stage, verdict: "quarantine" }),
        Verdict::Discard => return Err(Failure::Verdict { stage, verdict: "discard" }),
    };
    let said = Said { verdict, detail: format!("{d:?}") };
    Ok(Step { effect: Some(d), said: Some(said), stop: true })
}

/// An answer of another hook than the one called: the host's own mistake, refused as the
/// plugin's failure rather than trusted.
fn mismatch(stage: Stage) -> Failure {
    Failure::Verdict { stage, verdict: "of another hook" }
}

/// The plugin chain of one SMTP session.
pub struct SessionChain {
    chain: Chain,
}

impl SessionChain {
    /// The session has ended (or STARTTLS begins a new one): instances of plugins that can
    /// forget it go back to wait for a later session. A chain dropped without this only
    /// drops its instances.
    pub async fn end(mut self) {
        self.chain.end_session().await;
    }

    /// Plugin failures in this session so far.
    pub fn failures(&self) -> usize {
        self.chain.failures
    }

    /// Switches to another pipeline (the transaction's, chosen by its first recipient).
    pub fn use_pipeline(&mut self, name: &str) {
        self.chain.order = self.chain.plugins().pipeline(name);
    }

    /// Gives the plugins the session's authentication results (before the first hook).
    pub fn set_auth(&mut self, auth: SharedAuth) {
        self.chain.auth = Some(auth);
    }

    /// A verdict stage: the last enforced verdict that was not `next` decides.
    async fn verdict(&mut self, call: Call<'_>) -> Decision {
        let stage = call.stage();
        let ran = self
            .chain
            .run(&call, |_, a| match a {
                Answer::Verdict(v) => verdict_step(v, stage),
                _ => Err(mismatch(stage)),
            })
            .await;
        match ran {
            Ok(mut d) => d.pop().unwrap_or(Decision::Next),
            Err(Tempfail) => Decision::Reply(policy_failure()),
        }
    }

    pub async fn on_connect(&mut self, conn: &ConnectionInfo) -> Decision {
        self.chain.score().end_transaction();
        self.verdict(Call::Connect(conn)).await
    }
    pub async fn on_helo(&mut self, conn: &ConnectionInfo, helo: &str) -> Decision {
        self.chain.score().end_transaction();
        self.verdict(Call::Helo(conn, helo)).await
    }
    pub async fn on_auth(&mut self, conn: &ConnectionInfo, req: &types::AuthRequest) -> Decision {
        self.chain.score().end_transaction();
        self.verdict(Call::Auth(conn, req)).await
    }
    /// A new transaction with envelope `env` (its recipients are usually none yet): the
    /// envelope on-mail-from and every later on-rcpt of it see.
    pub async fn on_mail_from(&mut self, conn: &ConnectionInfo, env: Envelope) -> Decision {
        self.chain.score().begin_transaction();
        self.chain.begin_envelope(env);
        self.verdict(Call::MailFrom(conn)).await
    }
    /// A recipient of the transaction begun by `on_mail_from`; its plugins see the envelope
    /// with the recipients added by [`SessionChain::add_recipient`] so far.
    pub async fn on_rcpt(&mut self, conn: &ConnectionInfo, rcpt: &str) -> Decision {
        self.verdict(Call::Rcpt(conn, rcpt)).await
    }
    /// The recipient was accepted: later hooks of the transaction see it in the envelope.
    pub fn add_recipient(&mut self, rcpt: &str) {
        self.chain.add_recipient(rcpt);
    }

    /// Asks the data-stage plugins about a complete message. Modifications of every enforced
    /// plugin that did not fail are collected in chain order; the caller applies them before
    /// the message is spooled.
    pub async fn on_data(
        &mut self,
        conn: &ConnectionInfo,
        env: &Arc<Envelope>,
        raw: Arc<Vec<u8>>,
    ) -> (DataDecision, Vec<types::Modification>) {
        let msg = ParsedMessage::new(raw);
        let ran = self
            .chain
            .run(&Call::Data(conn, env, &msg), |meta, a| match a {
                Answer::Data(dr) => data_step(meta, dr),
                _ => Err(mismatch(Stage::Data)),
            })
            .await;
        match ran {
            Err(Tempfail) => (DataDecision::Reply(policy_failure()), vec![]),
            Ok(effects) => {
                let mut decision = DataDecision::Continue;
                let mut mods = vec![];
                for (d, m) in effects {
                    mods.extend(m);
                    decision = d;
                }
                (decision, mods)
            }
        }
    }
}

/// Modifications one on-data answer may carry (header edits, recipients, a body, a route).
pub const MAX_MODIFICATIONS: usize = 1000;

/// What one on-data answer means: its verdict, and its modifications (refused whole when it
/// names a route outside its grant, or has more than [`MAX_MODIFICATIONS`]).
fn data_step(
    meta: &PluginMeta,
    dr: types::DataResult,
) -> Result<Step<(DataDecision, Vec<types::Modification>)>, Failure> {
    if dr.modifications.len() > MAX_MODIFICATIONS {
        return Err(Failure::TooManyModifications { count: dr.modifications.len(), max: MAX_MODIFICATIONS });
    }
    let (d, verdict) = match dr.verdict {
        Verdict::Next => (DataDecision::Continue, None),
        Verdict::Accept => (DataDecision::Continue, Some("accept")),
        Verdict::Reject(r) => (DataDecision::Reply(checked_reply(&r, &[5])?), Some("reject")),
        Verdict::Tempfail(r) => (DataDecision::Reply(checked_reply(&r, &[4])?), Some("tempfail")),
        Verdict::Disconnect(r) => (DataDecision::Disconnect(checked_reply(&r, &[4, 5])?), Some("disconnect")),
        Verdict::Quarantine(reason) => {
            (DataDecision::Quarantine(reason.chars().take(200).collect()), Some("quarantine"))
        }
        Verdict::Discard => (DataDecision::Discard, Some("discard")),
    };
    for m in &dr.modifications {
        if let types::Modification::SetRoute(r) = m {
            meta.routes.check(r)?;
        }
    }
    // An accept ends the stage like a verdict does, and is reported (logged and counted) like
    // one; a plugin that only edited the message said nothing.
    let stop = verdict.is_some();
    let said = verdict.map(|verdict| Said { verdict, detail: format!("{d:?}") });
    let effect = (stop || !dr.modifications.is_empty()).then_some((d, dr.modifications));
    Ok(Step { effect, said, stop })
}

/// What one on-route answer means: a route and/or a verdict, a pool, a shaping class.
fn route_step(plugins: &Plugins, meta: &PluginMeta, rr: types::RouteResult) -> Result<Step<RouteEffect>, Failure> {
    if let Some(r) = &rr.route {
        meta.routes.check(r)?;
    }
    for (what, name, known) in [("pool", &rr.pool, &plugins.pools), ("shaping class", &rr.shaping, &plugins.classes)] {
        if let Some(n) = name.as_ref().filter(|n| !known.contains(*n)) {
            return Err(Failure::Unknown { what, name: n.clone() });
        }
    }
    let (pool, shaping) = (rr.pool, rr.shaping);
    let route = rr.route.map(RouteDecision::Route);
    let accepted = matches!(rr.verdict, Verdict::Accept);
    let (effect, stop) = match rr.verdict {
        Verdict::Next => (route, false),
        Verdict::Accept => (route, true),
        Verdict::Reject(r) => (Some(RouteDecision::Reply(checked_reply(&r, &[5])?)), true),
        Verdict::Tempfail(r) => (Some(RouteDecision::Reply(checked_reply(&r, &[4])?)), true),
        Verdict::Disconnect(_) => return Err(Failure::Verdict { stage: Stage::Route, verdict: "disconnect" }),
        Verdict::Quarantine(_) => return Err(Failure::Verdict { stage: Stage::Route, verdict: "quarantine" }),
        Verdict::Discard => return Err(Failure::Verdict { stage: Stage::Route, verdict: "discard" }),
    };
    let said = match &effect {
        Some(d) => Some(Said {
            verdict: match d {
                RouteDecision::Reply(r) if r.is_transient() => "tempfail",
                RouteDecision::Reply(_) => "reject",
                _ => "route",
            },
            detail: format!("{d:?}"),
        }),
        None if accepted => Some(Said { verdict: "accept", detail: "accept (the configured route)".into() }),
        None => None,
    };
    let effect = (effect.is_some() || pool.is_some() || shaping.is_some()).then_some(RouteEffect {
        decision: effect,
        pool,
        shaping,
    });
    Ok(Step { effect, said, stop })
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

impl Pooled<'_> {
    fn chain(&mut self) -> &mut Chain {
        self.chain.get_or_insert_with(|| Chain::new(self.pool.plugins.clone(), "queue", Arc::from(Vec::new())))
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
        chain.score().clear();
        Pooled { pool: self, chain: Some(chain), _permit: permit }
    }

    /// Lets on-route plugins pick the route of one recipient: the last enforced answer that
    /// named a route or a verdict decides.
    /// `env` is shared so that the recipients of one message, asked one after another, cost
    /// no copy or comparison of their envelope.
    pub async fn on_route(&self, pipeline: &str, env: &Arc<Envelope>, rcpt: &str) -> Routed {
        let mut pooled = self.take(pipeline).await;
        let plugins = self.plugins.clone();
        let ran = pooled
            .chain()
            .run(&Call::Route(env, rcpt), |meta, a| match a {
                Answer::Route(rr) => route_step(&plugins, meta, rr),
                _ => Err(mismatch(Stage::Route)),
            })
            .await;
        let mut routed = Routed { decision: RouteDecision::Default, pool: None, shaping: None };
        match ran {
            Ok(effects) => {
                for e in effects {
                    if let Some(d) = e.decision {
                        routed.decision = d;
                    }
                    routed.pool = e.pool.or(routed.pool);
                    routed.shaping = e.shaping.or(routed.shaping);
                }
            }
            Err(Tempfail) => routed.decision = RouteDecision::Reply(policy_failure()),
        }
        routed
    }

    /// Tells on-delivery-result plugins about one recipient's attempt.
    pub async fn on_delivery_result(&self, pipeline: &str, res: &types::DeliveryResult) {
        let mut pooled = self.take(pipeline).await;
        let _told = pooled
            .chain()
            .run::<()>(&Call::DeliveryResult(res), |_, a| match a {
                Answer::Told => Ok(Step::next()),
                _ => Err(mismatch(Stage::DeliveryResult)),
            })
            .await;
    }
}
