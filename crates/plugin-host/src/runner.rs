//! The one stage runner. A [`Chain`] holds one user's instances (a session's, or one of the
//! queue's pool) and runs a stage: it asks the stage's plugins in pipeline order, lets the
//! stage read each answer into a [`Step`], keeps the effects of enforced plugins, logs what
//! shadow plugins would have done, and turns a failure into the plugin's `on_error`. Every
//! stage — connect to rcpt, data, route, delivery result — runs through [`Chain::run`].

use std::sync::Arc;
use std::time::Instant;

use mailgate_config::{OnError, Stage};
use wasmtime::component::Resource;
use wasmtime::Store;

use crate::bindings::types::{self, ConnectionInfo, DataResult, Envelope, RouteResult, Verdict};
use crate::chain::Plugins;
use crate::data::Scoreboard;
use crate::engine::LoadedPlugin;
use crate::exports::Exports;
use crate::failure::Failure;
use crate::host::{Context, HostState, Limits, MessageHandle, ParsedMessage, PluginMeta, SharedAuth};

/// An instantiated plugin.
pub(crate) struct Slot {
    store: Store<HostState>,
    /// Its hooks; without `end-session` (world `reusable-filter`) it serves one session only.
    exports: Exports,
    /// Sessions it has served and forgotten, or calls it was lent for: past
    /// [`MAX_USES_PER_INSTANCE`] it is dropped.
    uses: u32,
}

/// Sessions one instance may serve (or calls it may be lent for) before it is made new: bounds
/// whatever a plugin's memory gathers (fragmentation, leaks) over its life.
const MAX_USES_PER_INSTANCE: u32 = 1000;

/// Idle instances kept per plugin for later sessions. Enough for the sessions that come and
/// go at once on a busy MX; each holds a memory slot and its resident pages.
const IDLE_PER_PLUGIN: usize = 128;

/// An instance whose memory grew past this (a large message, say) is dropped rather than kept
/// idle: at most [`IDLE_PER_PLUGIN`] × this stays resident per plugin.
const IDLE_MEMORY_MAX: usize = 2 << 20;

/// An idle instance not taken for this long is dropped (checked whenever the plugin's idle
/// list is used), so the pool shrinks to what the traffic needs after a burst.
const IDLE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Instances that served a session and said they forgot it, or were lent for a call, per
/// plugin, for later sessions and calls. Taken and given back last-in first-out, so the
/// warmest instance serves next.
pub(crate) struct IdleInstances {
    /// Per plugin, oldest first: (since when idle, instance).
    by_plugin: Vec<std::sync::Mutex<Vec<(Instant, Slot)>>>,
    /// How many each plugin keeps: [`IDLE_PER_PLUGIN`], or fewer when sessions are fewer
    /// (the engine's slots are counted for `max_sessions` instances of each plugin).
    cap: usize,
}

impl IdleInstances {
    pub fn new(plugins: usize, max_sessions: usize) -> IdleInstances {
        IdleInstances {
            by_plugin: (0..plugins).map(|_| Default::default()).collect(),
            cap: IDLE_PER_PLUGIN.min(max_sessions),
        }
    }

    /// Plugin `i`'s idle list, its instances idle past [`IDLE_MAX_AGE`] dropped.
    fn list(&self, i: usize) -> std::sync::MutexGuard<'_, Vec<(Instant, Slot)>> {
        let mut list = self.by_plugin[i].lock().unwrap_or_else(|e| e.into_inner());
        let stale = list.iter().take_while(|(since, _)| since.elapsed() > IDLE_MAX_AGE).count();
        if stale > 0 {
            list.drain(..stale);
        }
        list
    }

    fn take(&self, i: usize) -> Option<Slot> {
        self.list(i).pop().map(|(_, slot)| slot)
    }

    fn has_room(&self, i: usize) -> bool {
        self.list(i).len() < self.cap
    }

    /// Keeps `slot` unless the list is full (without looking for stale ones: `take` does).
    fn put(&self, i: usize, slot: Slot) {
        let mut list = self.by_plugin[i].lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < self.cap {
            list.push((Instant::now(), slot));
        }
    }

    /// Idle instances now, per plugin index (for status and tests).
    pub fn counts(&self) -> Vec<usize> {
        (0..self.by_plugin.len()).map(|i| self.list(i).len()).collect()
    }
}

/// What a stage passes to its plugins.
pub(crate) enum Call<'a> {
    Connect(&'a ConnectionInfo),
    Helo(&'a ConnectionInfo, &'a str),
    Auth(&'a ConnectionInfo, &'a types::AuthRequest),
    /// The envelope is the chain's transaction envelope ([`Chain::begin_envelope`]).
    MailFrom(&'a ConnectionInfo),
    /// As `MailFrom`; the recipient asked about.
    Rcpt(&'a ConnectionInfo, &'a str),
    Data(&'a ConnectionInfo, &'a Arc<Envelope>, &'a Arc<ParsedMessage>),
    Route(&'a Arc<Envelope>, &'a str),
    DeliveryResult(&'a types::DeliveryResult),
}

impl Call<'_> {
    pub(crate) fn stage(&self) -> Stage {
        match self {
            Call::Connect(_) => Stage::Connect,
            Call::Helo(..) => Stage::Helo,
            Call::Auth(..) => Stage::Auth,
            Call::MailFrom(..) => Stage::MailFrom,
            Call::Rcpt(..) => Stage::Rcpt,
            Call::Data(..) => Stage::Data,
            Call::Route(..) => Stage::Route,
            Call::DeliveryResult(_) => Stage::DeliveryResult,
        }
    }
}

/// A plugin's answer, as its hook returned it.
pub(crate) enum Answer {
    Verdict(Verdict),
    Data(DataResult),
    Route(RouteResult),
    /// on-delivery-result returns nothing.
    Told,
}

/// One plugin's answer as its stage reads it.
pub(crate) struct Step<E> {
    /// What it changes, if anything; kept only when the plugin is enforced.
    pub effect: Option<E>,
    /// What it said, when that was more than "next" (for the log and counters).
    pub said: Option<Said>,
    /// Whether the stage ends with this plugin.
    pub stop: bool,
}

impl<E> Step<E> {
    /// Nothing to change, nothing said: ask the next plugin.
    pub fn next() -> Step<E> {
        Step { effect: None, said: None, stop: false }
    }
}

/// A verdict worth logging: its counter label and a description.
pub(crate) struct Said {
    pub verdict: &'static str,
    pub detail: String,
}

/// A stage ended by a failing plugin whose `on_error` is tempfail.
pub(crate) struct Tempfail;

/// Instances of every plugin for one user (a session or one of the queue's pool).
pub(crate) struct Chain {
    plugins: Arc<Plugins>,
    /// One slot per loaded plugin; only those of the pipelines used get instances.
    slots: Vec<Option<Slot>>,
    /// The pipeline asked now.
    pub order: Arc<[usize]>,
    pub sid: Arc<str>,
    /// The session's spam score, shared with every instance's host state.
    pub score: Arc<std::sync::Mutex<Scoreboard>>,
    /// The session's authentication results, handed to every instance (none in the queue).
    pub auth: Option<SharedAuth>,
    /// Plugin failures so far (traps, budgets, refused inits, bad answers): `plugin test`
    /// exits non-zero when there were any.
    pub failures: usize,
    /// The connection facts the session hooks see now, and their `conn-version`.
    conn: Option<(Arc<ConnectionInfo>, u64)>,
    /// The envelope the hooks saw last, and its `envelope-ref` version.
    env: Option<(Arc<Envelope>, u64)>,
}

/// `new` is `old` with recipients added at the end, if any: what may keep `old`'s version.
fn extends(old: &Envelope, new: &Envelope) -> bool {
    old.mail_from == new.mail_from
        && old.body_8bit == new.body_8bit
        && old.smtputf8 == new.smtputf8
        && old.size_hint == new.size_hint
        && new.rcpt_to.starts_with(&old.rcpt_to)
}

/// The same connection facts (the generated record has no `PartialEq`).
fn same_conn(a: &ConnectionInfo, b: &ConnectionInfo) -> bool {
    fn tls(t: &Option<types::TlsInfo>) -> Option<(&str, &str)> {
        t.as_ref().map(|t| (t.version.as_str(), t.cipher.as_str()))
    }
    a.session_id == b.session_id
        && a.client_ip == b.client_ip
        && a.client_port == b.client_port
        && a.local_ip == b.local_ip
        && a.local_port == b.local_port
        && a.listener == b.listener
        && tls(&a.tls) == tls(&b.tls)
        && a.helo == b.helo
        && a.authenticated_as == b.authenticated_as
        && a.trusted == b.trusted
}

impl Chain {
    pub fn new(plugins: Arc<Plugins>, sid: &str, order: Arc<[usize]>) -> Chain {
        let n = plugins.loaded.len();
        Chain {
            plugins,
            slots: (0..n).map(|_| None).collect(),
            order,
            sid: sid.into(),
            score: Default::default(),
            auth: None,
            failures: 0,
            conn: None,
            env: None,
        }
    }

    /// The `conn-version` of `conn`: the current one while the facts stay the same, the next
    /// of the process when they change.
    fn conn_version(&mut self, conn: &ConnectionInfo) -> (Arc<ConnectionInfo>, u64) {
        match &self.conn {
            Some((c, v)) if same_conn(c, conn) => (c.clone(), *v),
            _ => {
                let v = self.plugins.versions.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let c = Arc::new(conn.clone());
                self.conn = Some((c.clone(), v));
                (c, v)
            }
        }
    }

    /// A new transaction: `env` (a new version) is what on-mail-from and on-rcpt see, with
    /// the recipients [`Chain::add_recipient`] adds.
    pub fn begin_envelope(&mut self, env: Envelope) {
        let v = self.plugins.versions.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.env = Some((Arc::new(env), v));
    }

    /// A recipient of the transaction was accepted: it is in the envelope of the next hooks,
    /// under the same version (the list only grows). Amortised O(1): no other holder of the
    /// envelope is left after a call.
    pub fn add_recipient(&mut self, rcpt: &str) {
        if let Some((env, _)) = &mut self.env {
            Arc::make_mut(env).rcpt_to.push(rcpt.to_string());
        }
    }

    /// The `envelope-ref` of `env`: the current version while `env` is the envelope of the
    /// last call (the same one: no comparison) or only adds recipients to it, the next of the
    /// process otherwise.
    fn env_version(&mut self, env: &Arc<Envelope>) -> (Arc<Envelope>, u64) {
        let version = match &self.env {
            Some((e, v)) if Arc::ptr_eq(e, env) => return (e.clone(), *v),
            Some((e, v)) if extends(e, env) => *v,
            _ => self.plugins.versions.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        };
        self.env = Some((env.clone(), version));
        (env.clone(), version)
    }

    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    pub fn score(&self) -> std::sync::MutexGuard<'_, Scoreboard> {
        self.score.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one stage. `read` turns each answer into a step; the effects of enforced plugins
    /// come back in chain order, or `Tempfail` when a failing plugin's `on_error` says so.
    pub async fn run<E>(
        &mut self,
        call: &Call<'_>,
        read: impl Fn(&PluginMeta, Answer) -> Result<Step<E>, Failure>,
    ) -> Result<Vec<E>, Tempfail> {
        let stage = call.stage();
        let mut effects = Vec::new();
        // Shared handles, so that a plugin's facts are borrowed while `self` is called.
        let (plugins, order) = (self.plugins.clone(), self.order.clone());
        for &i in order.iter() {
            // Not configured for this stage, or no code of its own there (its answer would be
            // the default: no opinion).
            if !self.plugins.runs_at(i, stage) || self.plugins.loaded[i].meta.unused.contains(stage) {
                continue;
            }
            let started = Instant::now();
            let answer = self.call(i, call).await;
            let meta = &plugins.loaded[i].meta;
            meta.call_seconds(stage).record(started.elapsed().as_secs_f64());
            let step = answer.and_then(|a| read(meta, a));
            // A plugin that keeps nothing between calls gets its instance back after each
            // answer it could read (a failed or invalid one stays, for `failed` to drop).
            if step.is_ok() && meta.unused.keeps_no_state() {
                if let Some(slot) = self.slots[i].take() {
                    self.lend_back(i, slot);
                }
            }
            if meta.shadow {
                // Neither its verdict nor its changes take effect.
                self.shadow(i, meta, stage, step);
                continue;
            }
            match step {
                Ok(step) => {
                    if let Some(said) = &step.said {
                        tracing::info!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, decision = %said.detail, "plugin verdict");
                        ::metrics::counter!("mailgate_plugin_verdicts_total", "plugin" => meta.label.clone(), "stage" => stage.name(), "verdict" => said.verdict).increment(1);
                    }
                    effects.extend(step.effect);
                    if step.stop {
                        break;
                    }
                }
                Err(f) => {
                    self.failed(i, meta, stage, &f);
                    // After delivery there is nothing left to refuse: the others are still told.
                    if meta.on_error == OnError::Tempfail && stage != Stage::DeliveryResult {
                        return Err(Tempfail);
                    }
                }
            }
        }
        Ok(effects)
    }

    /// Calls plugin `i`'s hook for this stage.
    async fn call(&mut self, i: usize, call: &Call<'_>) -> Result<Answer, Failure> {
        let conn = match *call {
            Call::Connect(c)
            | Call::Helo(c, _)
            | Call::Auth(c, _)
            | Call::MailFrom(c)
            | Call::Rcpt(c, _)
            | Call::Data(c, _, _) => Some(self.conn_version(c)),
            Call::Route(..) | Call::DeliveryResult(_) => None,
        };
        let env = match *call {
            Call::MailFrom(_) | Call::Rcpt(..) => self.env.clone(),
            Call::Data(_, e, _) | Call::Route(e, _) => Some(self.env_version(e)),
            _ => None,
        };
        let slot = self.slot(i, call.stage()).await?;
        let (f, s) = (&slot.exports, &mut slot.store);
        // The hook gets versions; the facts and the envelope wait in the store for
        // `session.connection` and `session.get-envelope`.
        let c = match conn {
            Some((info, version)) => {
                s.data_mut().session.conn = Some(info);
                version
            }
            None => 0,
        };
        let e = match env {
            Some((env, version)) => {
                let recipients = u32::try_from(env.rcpt_to.len()).unwrap_or(u32::MAX);
                s.data_mut().session.env = Some(env);
                types::EnvelopeRef { version, recipients }
            }
            None => {
                s.data_mut().session.env = None;
                types::EnvelopeRef { version: 0, recipients: 0 }
            }
        };
        let answer = match *call {
            Call::Connect(_) => f.on_connect(s, c).await.map(Answer::Verdict),
            Call::Helo(_, h) => f.on_helo(s, c, h).await.map(Answer::Verdict),
            Call::Auth(_, a) => f.on_auth(s, c, a).await.map(Answer::Verdict),
            Call::MailFrom(..) => f.on_mail_from(s, c, e).await.map(Answer::Verdict),
            Call::Rcpt(_, r) => f.on_rcpt(s, c, e, r).await.map(Answer::Verdict),
            Call::Data(_, _, msg) => {
                let handle = s.data_mut().message.table.push(MessageHandle(msg.clone()))?;
                let borrow = Resource::<MessageHandle>::new_borrow(handle.rep());
                let r = f.on_data(s, c, e, borrow).await;
                let _ = s.data_mut().message.table.delete(handle);
                r.map(Answer::Data)
            }
            Call::Route(_, r) => f.on_route(s, e, r).await.map(Answer::Route),
            Call::DeliveryResult(res) => f.on_delivery_result(s, res).await.map(|()| Answer::Told),
        };
        // Only the chain keeps the envelope between calls: `add_recipient` then grows it in
        // place.
        s.data_mut().session.env = None;
        s.data_mut().log.end_call();
        answer.map_err(Failure::of)
    }

    /// Plugin `i`'s instance — an idle one that served an earlier session, else a new one —
    /// made on first use, with a fresh CPU budget for this call.
    async fn slot(&mut self, i: usize, stage: Stage) -> Result<&mut Slot, Failure> {
        let slot = match self.slots[i].take() {
            Some(slot) => slot,
            None => {
                let lp = &self.plugins.loaded[i];
                let cx = Context {
                    meta: &lp.meta,
                    services: &self.plugins.services,
                    sid: &self.sid,
                    score: &self.score,
                    auth: self.auth.as_ref(),
                };
                match self.plugins.idle.take(i) {
                    Some(mut slot) => {
                        // Everything the host keeps for an instance is this session's.
                        let mut limits = Limits::new(lp.meta.memory_limit);
                        limits.memory = slot.store.data().limits.memory;
                        *slot.store.data_mut() = HostState::new(&cx, limits);
                        // (An instance lent for a call is not counted: that is every call.)
                        if !lp.meta.unused.keeps_no_state() {
                            ::metrics::counter!("mailgate_plugin_instances_total", "plugin" => lp.meta.label.clone(), "how" => "reused").increment(1);
                        }
                        slot
                    }
                    None => {
                        ::metrics::counter!("mailgate_plugin_instances_total", "plugin" => lp.meta.label.clone(), "how" => "new").increment(1);
                        instantiate(&self.plugins.engine.engine, lp, &cx).await?
                    }
                }
            }
        };
        let slot = self.slots[i].insert(slot);
        let state = slot.store.data_mut();
        state.take_waited();
        state.log.stage = stage;
        slot.store.set_epoch_deadline(self.plugins.loaded[i].meta.budget_ticks);
        Ok(slot)
    }

    /// The session these instances served has ended: each plugin that can forget it is asked
    /// to (`end-session`; not asked when it said it keeps no session state), and the
    /// instances that did wait idle for a later session. The others, and any that failed in
    /// this session (already gone), are dropped.
    pub async fn end_session(&mut self) {
        for i in 0..self.slots.len() {
            let Some(mut slot) = self.slots[i].take() else { continue };
            let meta = &self.plugins.loaded[i].meta;
            let stateless = meta.unused.keeps_no_session_state();
            if (!slot.exports.has_end_session() && !stateless) || !self.keepable(i, &slot) {
                continue;
            }
            let forgot = if stateless {
                Ok(true)
            } else {
                slot.store.data_mut().take_waited();
                slot.store.set_epoch_deadline(meta.budget_ticks);
                slot.exports.end_session(&mut slot.store).await.unwrap_or(Ok(true))
            };
            match forgot {
                Ok(true) => self.put_idle(i, slot),
                Ok(false) => {}
                Err(e) => {
                    let f = Failure::of(e);
                    self.failures += 1;
                    tracing::warn!(plugin = %meta.name, sid = %self.sid, kind = f.kind(), "plugin failed at end-session (instance dropped): {f}");
                    ::metrics::counter!("mailgate_plugin_failures_total", "plugin" => meta.label.clone(), "stage" => "end-session", "kind" => f.kind())
                        .increment(1);
                }
            }
        }
    }

    /// Plugin `i`'s instance has served a session and keeps nothing of it:
    /// it waits idle for the next, holding nothing of the host's for this session (not its
    /// score, nor its authentication state, which holds the message) — unless it has served
    /// long enough, grown too large to keep, or the idle list is full.
    fn put_idle(&self, i: usize, mut slot: Slot) {
        if !self.keepable(i, &slot) {
            return;
        }
        let meta = &self.plugins.loaded[i].meta;
        slot.uses += 1;
        let idle_sid: Arc<str> = Arc::from("idle");
        let cx =
            Context { meta, services: &self.plugins.services, sid: &idle_sid, score: &Default::default(), auth: None };
        let mut limits = Limits::new(meta.memory_limit);
        limits.memory = slot.store.data().limits.memory;
        *slot.store.data_mut() = HostState::new(&cx, limits);
        self.plugins.idle.put(i, slot);
    }

    /// Plugin `i`'s instance was lent for a call and is given back: as [`Chain::put_idle`],
    /// but per call, so only what could hold much is let go (the authentication state, which
    /// holds the message; the message itself left the instance's table after the call): the
    /// rest of the host's state is made new when the instance is next taken.
    fn lend_back(&self, i: usize, mut slot: Slot) {
        if !self.worth_keeping(&slot) {
            return;
        }
        slot.uses += 1;
        slot.store.data_mut().auth.forget();
        self.plugins.idle.put(i, slot);
    }

    /// Whether an instance may wait idle once done: it has not served long enough to be made
    /// new, nor grown too large to keep.
    fn worth_keeping(&self, slot: &Slot) -> bool {
        slot.uses + 1 < MAX_USES_PER_INSTANCE && slot.store.data().limits.memory <= IDLE_MEMORY_MAX
    }

    /// As [`Chain::worth_keeping`], and plugin `i`'s idle list has room.
    fn keepable(&self, i: usize, slot: &Slot) -> bool {
        self.worth_keeping(slot) && self.plugins.idle.has_room(i)
    }

    /// Makes an instance of every plugin, running its `init` with its config as a session's
    /// first call would: (plugin, why) for each that failed or refused.
    pub async fn check_init(&mut self) -> Vec<(String, String)> {
        let mut failed = vec![];
        for i in 0..self.plugins.loaded.len() {
            let stage = self.plugins.loaded[i].meta.stages.first().copied().unwrap_or(Stage::Connect);
            if let Err(f) = self.slot(i, stage).await {
                failed.push((self.plugins.loaded[i].meta.name.clone(), f.to_string()));
            }
        }
        failed
    }

    /// Logs and counts a plugin failure and drops its instance (a fresh one serves the next
    /// call).
    fn failed(&mut self, i: usize, meta: &PluginMeta, stage: Stage, f: &Failure) {
        self.failures += 1;
        tracing::error!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, on_error = ?meta.on_error, kind = f.kind(), "plugin failed: {f}");
        ::metrics::counter!("mailgate_plugin_failures_total", "plugin" => meta.label.clone(), "stage" => stage.name(), "kind" => f.kind())
            .increment(1);
        self.slots[i] = None;
    }

    /// A shadow plugin's answer: logged and counted, never enforced; a failure only logged.
    fn shadow<E>(&mut self, i: usize, meta: &PluginMeta, stage: Stage, step: Result<Step<E>, Failure>) {
        match step {
            Ok(Step { said: None, .. }) => {}
            Ok(Step { said: Some(said), .. }) => {
                tracing::info!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, decision = %said.detail, "shadow verdict (not enforced)");
                ::metrics::counter!("mailgate_plugin_shadow_verdicts_total", "plugin" => meta.label.clone(), "stage" => stage.name()).increment(1);
            }
            Err(f) => {
                tracing::warn!(plugin = %meta.name, stage = stage.name(), sid = %self.sid, kind = f.kind(), "shadow plugin failed (not enforced): {f}");
                self.slots[i] = None;
            }
        }
    }
}

/// A new instance of a plugin, its `init` run. (Not a method: a `&Chain` held across the
/// awaits would make the session's future need `Chain: Sync`, which wasmtime stores are not.)
async fn instantiate(engine: &wasmtime::Engine, lp: &LoadedPlugin, cx: &Context<'_>) -> Result<Slot, Failure> {
    let mut store = Store::new(engine, HostState::new(cx, Limits::new(lp.meta.memory_limit)));
    store.limiter(|s| &mut s.limits);
    // At the deadline: time spent waiting on the host (DNS, kv) is given back; otherwise the
    // plugin has used its CPU budget and is interrupted.
    store.epoch_deadline_callback(|mut ctx| {
        let waited = ctx.data_mut().take_waited();
        let credit = waited.as_nanos().div_ceil(crate::engine::TICK.as_nanos()) as u64;
        if credit > 0 {
            Ok(wasmtime::UpdateDeadline::Continue(credit))
        } else {
            Err(wasmtime::Trap::Interrupt.into())
        }
    });
    store.set_epoch_deadline(lp.meta.budget_ticks);
    let failed = |e: wasmtime::Error| Failure::Instantiate(format!("{e:#}"));
    let exports = Exports::instantiate(lp.pre.instance_pre(), &lp.exports, &mut store).await.map_err(failed)?;
    store.set_epoch_deadline(lp.meta.budget_ticks);
    let init = exports.init(&mut store).await;
    store.data_mut().log.end_call();
    match init {
        Ok(Ok(())) => Ok(Slot { store, exports, uses: 0 }),
        Ok(Err(msg)) => Err(Failure::InitRefused(msg.chars().take(400).collect())),
        Err(e) => Err(Failure::of(e)),
    }
}
