//! The delivery queue: which message is tried when, by which route, and what happens after.
//!
//! It owns scheduling (a timer heap over `next_attempt`), the concurrency limits (in total, and
//! per destination through mailgate-shaping's limiters: room, rate, pauses), grouping a message's recipients by route so one connection carries all
//! recipients for a host, per-recipient results, retries on the configured backoff, expiry, and
//! DSNs to the sender (failures, delays, successes as asked). It must not know SMTP sessions or the wire
//! format: it gets stored envelopes in and hands attempts to `mailgate-delivery`.

mod admin;
pub mod dsn;
mod hooks;

pub use hooks::{resolve, Chosen, Hooks, RouteAnswer};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mailgate_cleanup::{Cleanup, Incoming, Origin, Outcome};
use mailgate_config::{Config, Route};
use mailgate_delivery::{Delivery, Handoff, Outbound, RcptOutcome, Status};
use mailgate_events::{Event, EventLog, Kind};
use mailgate_message::date::now_unix;
use mailgate_smtp::{Enhanced, RcptParams, Reply, Ret};
use mailgate_spool::{DsnRet, Envelope, QueueId, RcptStatus, Spool};
use tokio::sync::{mpsc, Semaphore};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A message the scheduler holds.
struct Entry {
    env: Envelope,
    /// The content while it is still in memory (first attempt); read from the spool otherwise.
    data: Option<Arc<Vec<u8>>>,
    /// That content's share of the memory budget, given back with it.
    hold: Option<mailgate_message::Reservation>,
}

enum Cmd {
    Enqueue(Box<Entry>),
    /// An operator's request, answered with a message or an error.
    Admin(AdminOp, tokio::sync::oneshot::Sender<Result<String, AdminError>>),
}

/// What an operator can do to a queued message.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// Try now (`None`: every deferred message).
    Retry(Option<QueueId>),
    /// Drop it without a DSN.
    Remove(QueueId),
    /// Fail its pending recipients now, with a DSN to the sender.
    Bounce(QueueId),
    /// Keep it, don't try it, until released.
    Hold(QueueId),
    /// Deliver a held message.
    Release(QueueId),
    /// Deliver a quarantined message (as if accepted now).
    ReleaseQuarantined(QueueId),
    /// Delete a quarantined message (no delivery, no DSN).
    DeleteQuarantined(QueueId),
}

/// Why an operator's request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no message {0} in the queue")]
    NotFound(QueueId),
    #[error("no message {0} in quarantine")]
    NotQuarantined(QueueId),
    #[error("{0} is not held")]
    NotHeld(QueueId),
    #[error("{0} is being delivered right now; try again in a moment")]
    Active(QueueId),
    #[error("{0} is held; release it first")]
    Held(QueueId),
    #[error("{0} is in quarantine; use mailgate quarantine")]
    Quarantined(QueueId),
    #[error("the queue has stopped")]
    Stopped,
}

impl AdminError {
    /// The message does not exist in the state asked for (as opposed to: it exists, but is busy).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AdminError::NotFound(_) | AdminError::NotQuarantined(_) | AdminError::NotHeld(_))
    }
}

/// Where a queued message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being delivered now.
    Active,
    /// Waiting for its next attempt.
    Deferred,
    Held,
    /// Kept by a plugin's quarantine verdict until an operator releases or deletes it.
    Quarantined,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Deferred => "deferred",
            State::Held => "held",
            State::Quarantined => "quarantined",
        }
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Cmd>,
    inner: Arc<Inner>,
}

struct Inner {
    spool: Arc<dyn Spool>,
    delivery: Arc<Delivery>,
    /// Routes, retry schedule and limits; replaced by a reload.
    config: RwLock<Arc<Config>>,
    /// All deliveries in flight.
    global: Arc<Semaphore>,
    /// The permits of `global` (what shutdown waits to get back).
    max_in_flight: usize,
    /// Set by shutdown: no new attempt starts.
    stopping: std::sync::atomic::AtomicBool,
    /// Plugins' on-route and on-delivery-result, when any are configured.
    hooks: RwLock<Option<Arc<dyn Hooks>>>,
    /// The cleanup stage DSNs pass through (Received:, signing), of the current configuration.
    cleanup: RwLock<Arc<Cleanup>>,
    /// Every queued message's latest envelope and state, for the admin API.
    view: Mutex<BTreeMap<QueueId, (Envelope, State)>>,
    /// Where delivery outcomes are recorded as events (`None`: events are off).
    events: Option<Arc<EventLog>>,
    /// The `domain` labels of the delivery metrics.
    domain_labels: DomainLabels,
}

/// Recipient domains with a metrics label of their own, at most `max`; the rest are counted
/// as `other`. Senders choose recipient domains (and bounces go to senders' domains), so every
/// new domain as a label would grow the metrics registry, and `/metrics`, without end.
struct DomainLabels {
    known: Mutex<std::collections::HashSet<String>>,
    max: usize,
}

impl DomainLabels {
    fn new(max: usize) -> DomainLabels {
        DomainLabels { known: Default::default(), max }
    }

    /// The label of `domain` (lower case): itself while there is room, else `other`.
    fn label(&self, domain: String) -> String {
        let mut known = self.known.lock().unwrap();
        if known.contains(&domain) || (known.len() < self.max && known.insert(domain.clone())) {
            domain
        } else {
            "other".to_string()
        }
    }
}

impl Inner {
    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }
    fn hooks(&self) -> Option<Arc<dyn Hooks>> {
        self.hooks.read().unwrap().clone()
    }
    fn cleanup(&self) -> Arc<Cleanup> {
        self.cleanup.read().unwrap().clone()
    }
}

impl Queue {
    /// Starts the scheduler with the messages recovered from the spool.
    pub fn start(
        spool: Arc<dyn Spool>,
        delivery: Arc<Delivery>,
        config: Arc<Config>,
        recovered: Vec<Envelope>,
        hooks: Option<Arc<dyn Hooks>>,
        cleanup: Arc<Cleanup>,
        events: Option<Arc<EventLog>>,
    ) -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            spool,
            delivery,
            global: Arc::new(Semaphore::new(config.queue.max_concurrent)),
            max_in_flight: config.queue.max_concurrent,
            stopping: Default::default(),
            config: RwLock::new(config),
            hooks: RwLock::new(hooks),
            cleanup: RwLock::new(cleanup),
            view: Mutex::new(BTreeMap::new()),
            events,
            domain_labels: DomainLabels::new(1000),
        });
        let q = Queue { tx, inner };
        if !recovered.is_empty() {
            tracing::info!(count = recovered.len(), "queued again from the spool");
        }
        for env in recovered {
            q.enqueue(env, None);
        }
        tokio::spawn(q.clone().schedule(rx));
        q
    }

    /// Hands a stored message to the queue. `data` is its content if still in memory.
    pub fn enqueue(&self, env: Envelope, data: Option<Arc<Vec<u8>>>) {
        if let Some(reason) = &env.quarantine {
            tracing::info!(queue_id = %env.id, %reason, "message is quarantined: not delivered");
        }
        let _ = self.tx.send(Cmd::Enqueue(Box::new(Entry { env, data, hold: None })));
    }

    /// Like [`Queue::enqueue`] with the content in memory, counted against the memory budget
    /// by `hold` until the first attempt is over (or the message waits, when it is dropped and
    /// read back from the spool later).
    pub fn enqueue_held(&self, env: Envelope, data: Arc<Vec<u8>>, hold: mailgate_message::Reservation) {
        if let Some(reason) = &env.quarantine {
            tracing::info!(queue_id = %env.id, %reason, "message is quarantined: not delivered");
        }
        let _ = self.tx.send(Cmd::Enqueue(Box::new(Entry { env, data: Some(data), hold: Some(hold) })));
    }

    /// Stops starting deliveries and waits (up to `grace`) for those in flight, so that their
    /// results reach the spool before it closes: a delivery whose done record was lost would
    /// be sent again after the restart.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::Release);
        let all = self.inner.max_in_flight as u32;
        match tokio::time::timeout(grace, self.inner.global.acquire_many(all)).await {
            Ok(_) => tracing::info!("queue stopped: no delivery in flight"),
            Err(_) => tracing::warn!(
                in_flight = all as usize - self.inner.global.available_permits(),
                "queue stopped with deliveries still in flight; they are tried again after the restart"
            ),
        }
    }

    /// Switches to a reloaded configuration (routes, retries), plugin hooks and cleanup stage;
    /// deliveries in flight finish on the old ones.
    pub fn reconfigure(&self, config: Arc<Config>, hooks: Option<Arc<dyn Hooks>>, cleanup: Arc<Cleanup>) {
        // Changed shaping applies to attempts that start from now (the delivery agent's shaper
        // makes its limiters anew; attempts in flight finish on the old ones).
        self.inner.delivery.reconfigure(&config);
        *self.inner.config.write().unwrap() = config;
        *self.inner.hooks.write().unwrap() = hooks;
        *self.inner.cleanup.write().unwrap() = cleanup;
    }

    /// An operator's request (see [`AdminOp`]).
    pub async fn admin(&self, op: AdminOp) -> Result<String, AdminError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Cmd::Admin(op, tx)).map_err(|_| AdminError::Stopped)?;
        rx.await.map_err(|_| AdminError::Stopped)?
    }

    /// Every queued message with its state, in queue-id order.
    pub fn list(&self) -> Vec<(Envelope, State)> {
        self.inner.view.lock().unwrap().values().cloned().collect()
    }

    /// One queued message with its state.
    pub fn find(&self, id: &str) -> Option<(Envelope, State)> {
        self.inner.view.lock().unwrap().get(id).cloned()
    }

    fn quarantine_expired(&self, env: &Envelope) -> bool {
        let age = self.inner.config().queue.quarantine_max_age.as_millis() as u64;
        env.received_at.saturating_add(age) <= now_ms()
    }

    fn set_view(&self, env: &Envelope, state: State) {
        self.inner.view.lock().unwrap().insert(env.id.clone(), (env.clone(), state));
    }

    async fn schedule(self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut heap: BinaryHeap<Reverse<(u64, QueueId)>> = BinaryHeap::new();
        let mut waiting: HashMap<QueueId, Entry> = HashMap::new();
        let mut held: HashMap<QueueId, Entry> = HashMap::new();
        loop {
            let now = now_ms();
            while let Some(Reverse((at, _))) = heap.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, id)) = heap.pop().unwrap();
                if let Some(e) = waiting.remove(&id) {
                    self.dispatch(e);
                } else if held.get(&id).is_some_and(|e| e.env.quarantine.is_some() && self.quarantine_expired(&e.env)) {
                    held.remove(&id);
                    self.forget(&id);
                    tracing::info!(queue_id = %id, "quarantine expired: message deleted");
                }
            }
            let sleep = heap.peek().map(|Reverse((at, _))| Duration::from_millis(at.saturating_sub(now)));
            let cmd = match sleep {
                Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                    Ok(c) => c,
                    Err(_) => continue,
                },
                None => rx.recv().await,
            };
            let e = match cmd {
                None => return,
                Some(Cmd::Admin(op, reply)) => {
                    let _ = reply.send(self.admin_op(op, &mut waiting, &mut held));
                    continue;
                }
                Some(Cmd::Enqueue(e)) => *e,
            };
            if e.env.quarantine.is_some() || e.env.held {
                // Kept until an operator acts: the content stays in the spool, not in memory.
                let mut e = e;
                e.data = None;
                e.hold = None;
                self.set_view(&e.env, if e.env.held { State::Held } else { State::Quarantined });
                if e.env.quarantine.is_some() {
                    let age = self.inner.config().queue.quarantine_max_age.as_millis() as u64;
                    heap.push(Reverse((e.env.received_at.saturating_add(age), e.env.id.clone())));
                }
                held.insert(e.env.id.clone(), e);
            } else if e.env.next_attempt <= now_ms() {
                self.dispatch(e);
            } else {
                self.set_view(&e.env, State::Deferred);
                heap.push(Reverse((e.env.next_attempt, e.env.id.clone())));
                waiting.insert(e.env.id.clone(), e);
            }
            metrics::gauge!("mailgate_queue_depth", "state" => "deferred").set(waiting.len() as f64);
            metrics::gauge!("mailgate_queue_depth", "state" => "held").set(held.len() as f64);
        }
    }

    fn dispatch(&self, e: Entry) {
        self.set_view(&e.env, State::Active);
        let q = self.clone();
        tokio::spawn(async move {
            let Ok(permit) = q.inner.global.clone().acquire_owned().await else { return };
            if q.inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                // Not started: it stays in the spool and is queued again at the next start.
                return;
            }
            metrics::gauge!("mailgate_queue_depth", "state" => "active").increment(1.0);
            // Boxed: an attempt's future is ~10 KiB, and tokio moves a spawned future several
            // times before it first runs (a memcpy each); this task stays small.
            Box::pin(q.attempt(e, permit)).await;
            metrics::gauge!("mailgate_queue_depth", "state" => "active").decrement(1.0);
        });
    }

    /// One attempt for every pending recipient of a message, then its next state. `slot` is
    /// its place among the deliveries in flight (`queue.max_concurrent`).
    async fn attempt(&self, mut e: Entry, slot: tokio::sync::OwnedSemaphorePermit) {
        let inner = &self.inner;
        let (config, hooks) = (inner.config(), inner.hooks());
        // Group pending recipients by destination: one transaction per group.
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; e.env.recipients.len()];
        let pending: Vec<(usize, String)> = e.env.pending().map(|(i, r)| (i, r.address.clone())).collect();
        for (i, rcpt) in pending {
            let domain = rcpt.rsplit_once('@').map(|(_, d)| mailgate_config::canonical_domain(d)).unwrap_or_default();
            let answer = match (&e.env.route, &hooks) {
                (Some(choice), _) => RouteAnswer { choice: Some(choice.clone()), ..RouteAnswer::default() },
                (None, Some(h)) => h.route(&e.env, &rcpt).await,
                (None, None) => RouteAnswer::default(),
            };
            // A source pool: the plugin's, else the API key's, else the route's own.
            let pool = answer.pool.or_else(|| e.env.api.as_ref().and_then(|a| a.pool.clone()));
            let chosen = answer.choice;
            let (route, domain) = match chosen.map(|c| resolve(&c, &config)) {
                None => match config.route_for(&domain) {
                    Some(route) => (route.clone(), domain),
                    None => {
                        outcomes[i] = Some(RcptOutcome::new(
                            Status::Failed,
                            Reply::new(554, Enhanced(5, 4, 4), "no route to the recipient domain"),
                            None,
                        ));
                        continue;
                    }
                },
                Some(Chosen::Route(route, mx_domain)) => (route, mx_domain.unwrap_or(domain)),
                Some(Chosen::Hold) => {
                    outcomes[i] = Some(RcptOutcome::new(
                        Status::Deferred,
                        Reply::new(451, Enhanced(4, 3, 2), "held by policy"),
                        None,
                    ));
                    continue;
                }
                Some(Chosen::Reply(reply)) => {
                    outcomes[i] = Some(RcptOutcome::of(reply, None));
                    continue;
                }
            };
            let mut route = route;
            if let (Some(p), Route::Mx { pool, .. } | Route::Smarthost { pool, .. }) = (&pool, &mut route) {
                *pool = Some(p.clone());
            }
            // Recipients share an attempt only with the same pool and shaping class.
            let mut dest = destination(&route, &domain);
            if let Some(p) = route.pool() {
                dest.push_str(&format!(" pool={p}"));
            }
            if let Some(c) = &answer.shaping {
                dest.push_str(&format!(" class={c}"));
            }
            groups
                .entry(dest)
                .or_insert_with(|| Group { route, domain, idx: vec![], class: answer.shaping })
                .idx
                .push(i);
        }
        // Room at every destination first (its class's `max_connections`), taken in one order
        // (the map's) so that two messages can never wait on each other. A busy destination
        // is waited for without a delivery slot: a burst to one slow destination must not hold
        // the slots other destinations' mail needs. A message read back from the spool is not
        // read until it has room; a first-delivery copy stays in memory meanwhile (it counts
        // against `limits.content_memory`, which bounds such copies; dropping it would cost a
        // spool read for every message to a busy destination).
        // Shaping (`[shaping]`): a paused destination gets no attempt (its recipients are
        // deferred); the others wait for room (`max_connections`) and then for a token of
        // their rate, neither while holding a delivery slot. Local routes are not shaped.
        let shaper = inner.delivery.shaper().clone();
        let mut limiters: BTreeMap<String, Arc<mailgate_shaping::Limiter>> = BTreeMap::new();
        groups.retain(|dest, Group { route, domain, idx, class }| {
            if matches!(route, Route::Maildir { .. } | Route::Discard) {
                return true;
            }
            let l = match class {
                Some(c) => shaper.destination_in(dest, c),
                None => shaper.destination(dest, matches!(route, Route::Mx { .. }).then_some(domain.as_str())),
            };
            if let Some(left) = l.paused() {
                metrics::counter!("mailgate_shaping_paused_deferrals_total", "class" => l.class.clone()).increment(1);
                let why = format!("destination paused for {}s after connection failures", left.as_secs().max(1));
                for i in idx.iter() {
                    let o = RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 5), why.clone()), None);
                    outcomes[*i] = Some(o.not_before(left));
                }
                return false;
            }
            limiters.insert(dest.clone(), l);
            true
        });
        let mut slot = Some(slot);
        let mut room = Vec::with_capacity(limiters.len());
        for l in limiters.values() {
            match l.try_room() {
                Some(p) => room.push(p),
                None => {
                    slot = None;
                    match l.room().await {
                        Some(p) => room.push(p),
                        None => return,
                    }
                }
            }
        }
        let wait = limiters.values().map(|l| l.token()).max().unwrap_or_default();
        if !wait.is_zero() {
            slot = None;
            tokio::time::sleep(wait).await;
        }
        let _slot = match slot {
            Some(s) => s,
            None => {
                let Ok(s) = inner.global.clone().acquire_owned().await else { return };
                if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                    // Not started: it stays in the spool and is queued again at the next start.
                    return;
                }
                s
            }
        };
        let data = match e.data.take() {
            Some(d) => d,
            None => match inner.spool.read(&e.env.id).await {
                Ok(d) => Arc::new(d),
                Err(err) => {
                    tracing::error!(queue_id = %e.env.id, "cannot read message from the spool: {err}; retrying later");
                    e.env.next_attempt = now_ms() + 60_000;
                    self.requeue(e.env);
                    return;
                }
            },
        };
        // One destination (the common case): deliver in this task. Several: in parallel.
        let mut groups: Vec<_> = groups.into_iter().collect();
        if groups.len() == 1 {
            let (dest, Group { route, domain, idx, .. }) = groups.pop().expect("one group");
            let limiter = limiters.get(&dest).cloned();
            let out = self.deliver_group(&e.env, &data, route, domain, &idx, limiter).await;
            for (i, o) in idx.into_iter().zip(out) {
                outcomes[i] = Some(o);
            }
        } else {
            let mut tasks = vec![];
            for (dest, Group { route, domain, idx, .. }) in groups {
                let (q, env, data) = (self.clone(), e.env.clone(), data.clone());
                let limiter = limiters.get(&dest).cloned();
                tasks.push(tokio::spawn(async move {
                    let out = q.deliver_group(&env, &data, route, domain, &idx, limiter).await;
                    (idx, out)
                }));
            }
            for t in tasks {
                match t.await {
                    Ok((idx, out)) => {
                        for (i, o) in idx.into_iter().zip(out) {
                            outcomes[i] = Some(o);
                        }
                    }
                    Err(err) => tracing::error!(queue_id = %e.env.id, "delivery task failed: {err}"),
                }
            }
        }
        self.settle(e.env, outcomes, &data).await;
    }

    /// One attempt for the recipients `idx` of a message that share a destination (whose room
    /// the caller holds, in `limiter`, which hears how it went).
    async fn deliver_group(
        &self,
        env: &Envelope,
        data: &[u8],
        route: Route,
        domain: String,
        idx: &[usize],
        limiter: Option<Arc<mailgate_shaping::Limiter>>,
    ) -> Vec<RcptOutcome> {
        // RFC 8689: a REQUIRETLS message leaves only over verified TLS (an LMTP agent, which
        // delivers into the mailbox, is its last hop and keeps its own TLS setting).
        let mut route = route;
        if let Route::Mx { tls, .. } | Route::Smarthost { tls, .. } = &mut route {
            if env.requiretls {
                *tls = mailgate_config::TlsPolicy::Required;
            }
        }
        let rcpts: Vec<String> = idx.iter().map(|i| env.recipients[*i].address.clone()).collect();
        // The DSN parameters, for a next hop that does DSN (none at all when nobody gave any).
        let rcpt_params: Vec<RcptParams> =
            if idx.iter().any(|i| env.recipients[*i].notify.is_some() || env.recipients[*i].orcpt.is_some()) {
                idx.iter()
                    .map(|i| {
                        let r = &env.recipients[*i];
                        RcptParams {
                            notify: r.notify.map(|n| mailgate_smtp::Notify {
                                success: n.success,
                                failure: n.failure,
                                delay: n.delay,
                            }),
                            orcpt: r.orcpt.clone(),
                        }
                    })
                    .collect()
            } else {
                vec![]
            };
        let msg = Outbound {
            id: &env.id,
            sender: &env.sender,
            recipients: &rcpts,
            data,
            body_8bit: env.body_8bit,
            smtputf8: env.smtputf8,
            dsn_ret: env.ret.map(|r| match r {
                DsnRet::Full => Ret::Full,
                DsnRet::Hdrs => Ret::Hdrs,
            }),
            envid: env.envid.as_deref(),
            rcpt_params: &rcpt_params,
            requiretls: env.requiretls,
            max_per_connection: limiter.as_ref().and_then(|l| l.max_messages_per_connection()),
        };
        let out = self.inner.delivery.deliver(&route, &domain, &msg).await;
        if let Some(l) = limiter {
            // Connection-level only when no next hop got as far as a transaction.
            l.record(out.iter().all(|o| o.status == Status::Deferred && o.connection_level));
        }
        out
    }

    /// Applies the outcomes: logs them, records them as events, bounces permanent failures,
    /// retries or finishes. The events are on disk before the spool hears of the outcome, so a
    /// crash can repeat an event (the delivery is repeated too) but never lose one.
    async fn settle(&self, mut env: Envelope, outcomes: Vec<Option<RcptOutcome>>, data: &[u8]) {
        let inner = &self.inner;
        let (config, hooks) = (inner.config(), inner.hooks());
        env.attempts += 1;
        let sched = &config.queue.retry_schedule;
        let mut delay = sched[(env.attempts as usize - 1).min(sched.len() - 1)].into_inner();
        // When every deferral is a pause (shaping), the next try waits for the earliest end of
        // one rather than waking up only to be deferred again.
        let paused_until = paused_until(&outcomes);
        let now = now_ms();
        if let Some(until) = paused_until.filter(|u| *u > now + delay.as_millis() as u64) {
            delay = Duration::from_millis(until - now);
        }
        let next_at = now + delay.as_millis() as u64;
        let mut failed: Vec<Failed> = vec![];
        // Delivered recipients whose sender asked to hear of it, and the action to report.
        let mut succeeded: Vec<(usize, Reply, dsn::Action)> = vec![];
        // This attempt's reply per recipient (for a delay notice).
        let mut replies: Vec<Option<Reply>> = vec![None; env.recipients.len()];
        let mut events = vec![];
        let mut deferred = vec![];
        for (i, o) in outcomes.into_iter().enumerate() {
            let Some(o) = o else { continue };
            if let Some(h) = &hooks {
                h.delivery_result(&env, &env.recipients[i].address, &o).await;
            }
            let r = &env.recipients[i];
            // The reply as one line, made once for the log, the event and the spool.
            let reply_text = o.reply.to_string();
            tracing::info!(queue_id = %env.id, rcpt = %r.address, status = ?o.status, host = o.remote_host.as_deref().unwrap_or("-"), attempt = env.attempts, "{reply_text}");
            let domain = inner
                .domain_labels
                .label(r.address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default());
            let result = match o.status {
                Status::Delivered => "delivered",
                Status::Deferred => "deferred",
                Status::Failed => "failed",
            };
            metrics::counter!("mailgate_delivery_attempts_total", "result" => result, "domain" => domain).increment(1);
            let class = (o.status != Status::Delivered).then(|| mailgate_events::classify(&reply_text));
            if let Some(c) = class {
                metrics::counter!("mailgate_delivery_problems_total", "result" => result, "class" => c.name())
                    .increment(1);
            }
            if inner.events.is_some() {
                let kind = match o.status {
                    Status::Delivered => Kind::Delivered,
                    Status::Deferred => Kind::Deferred,
                    Status::Failed => Kind::Bounced,
                };
                let mut ev = Event::about(kind, &env).rcpt(&r.address);
                ev.reply = Some(reply_text.clone());
                ev.remote_host = o.remote_host.clone();
                ev.attempt = Some(env.attempts);
                ev.class = class;
                if o.status == Status::Deferred {
                    ev.next_attempt = Some(next_at);
                }
                // A deferral is reported once it is known not to have expired.
                match o.status {
                    Status::Deferred => deferred.push((i, ev)),
                    _ => events.push(ev),
                }
            }
            let r = &mut env.recipients[i];
            r.last_reply = Some(reply_text);
            r.remote_host = o.remote_host;
            replies[i] = Some(o.reply.clone());
            match o.status {
                Status::Delivered => {
                    r.status = RcptStatus::Delivered;
                    // RFC 3461 §5.2: a hop that took the DSN parameters reports from here on.
                    let action = match o.handoff {
                        Handoff::Final => Some(dsn::Action::Delivered),
                        Handoff::Relayed => Some(dsn::Action::Relayed),
                        Handoff::RelayedWithDsn => None,
                    };
                    if let Some(action) = action.filter(|_| r.notify_success()) {
                        succeeded.push((i, o.reply, action));
                    }
                }
                Status::Failed => {
                    r.status = RcptStatus::Failed;
                    failed.push(Failed { i, reply: o.reply, diagnostic: None });
                }
                Status::Deferred => {}
            }
        }
        let age = now_ms().saturating_sub(env.received_at);
        if !env.is_finished() && age >= config.queue.max_age.as_millis() as u64 {
            let expired_from = failed.len();
            // RFC 3463 X.4.7 "delivery time expired" is a persistent transient status: the
            // recipient failed (Action: failed) with 4.4.7, our decision; the Diagnostic-Code
            // is the last reply it had, the remote server's words only when one gave it.
            let days = humantime::format_duration(config.queue.max_age);
            for (i, r) in env.recipients.iter_mut().enumerate() {
                if r.status == RcptStatus::Pending {
                    r.status = RcptStatus::Failed;
                    let reply =
                        Reply::new(451, Enhanced(4, 4, 7), format!("delivery time expired: not delivered in {days}"));
                    let diagnostic = match r.last_reply.clone() {
                        Some(last) => Some((last, r.remote_host.is_some())),
                        None => Some((reply.to_string(), false)),
                    };
                    r.last_reply = Some(reply.to_string());
                    failed.push(Failed { i, reply, diagnostic });
                }
            }
            if inner.events.is_some() {
                for Failed { i, reply, .. } in &failed[expired_from..] {
                    let mut ev = Event::about(Kind::Expired, &env).rcpt(&env.recipients[*i].address);
                    ev.reply = Some(reply.to_string());
                    ev.attempt = Some(env.attempts);
                    ev.class = Some(mailgate_events::BounceClass::Expired);
                    events.push(ev);
                }
            }
        }
        events.extend(
            deferred.into_iter().filter(|(i, _)| env.recipients[*i].status == RcptStatus::Pending).map(|(_, e)| e),
        );
        if let Some(log) = &inner.events {
            if let Err(e) = log.append(events).await {
                tracing::error!(queue_id = %env.id, "delivery events not recorded: {e}");
            }
        }
        if !failed.is_empty() && !self.bounce(&env, &failed, data).await {
            // The DSN could not be stored: keep the recipients and bounce on the next attempt
            // rather than finish the message without telling the sender.
            for f in &failed {
                env.recipients[f.i].status = RcptStatus::Pending;
            }
        }
        if !succeeded.is_empty() {
            let lines = succeeded.iter().map(|(i, reply, action)| line(&env, *i, *action, reply)).collect();
            // A success report that cannot be stored is logged, not retried: the recipients
            // are delivered, and delivering them again to report it would be worse.
            let _ = self.report(&env, dsn::Report::Success, lines, data).await;
        }
        let warn = config.queue.delay_warning;
        if !env.is_finished() && !env.delay_notified && !warn.is_zero() && age >= warn.as_millis() as u64 {
            self.delay_notice(&mut env, &replies, config.queue.max_age, data).await;
        }
        if env.is_finished() {
            self.forget(&env.id);
            tracing::info!(queue_id = %env.id, attempts = env.attempts, "message finished");
            return;
        }
        env.next_attempt = next_at;
        inner.spool.update(&env);
        tracing::info!(queue_id = %env.id, retry_in = %humantime::format_duration(delay), "message deferred");
        self.requeue(env);
    }

    /// Records an operator's action as an event (not waited for: the action is done).
    pub(crate) fn admin_event(&self, kind: Kind, env: &Envelope, detail: &str) {
        if let Some(log) = self.inner.events.clone() {
            let mut ev = Event::about(kind, env);
            ev.detail = Some(detail.to_string());
            tokio::spawn(async move {
                if let Err(e) = log.append(vec![ev]).await {
                    tracing::error!("event not recorded: {e}");
                }
            });
        }
    }

    fn requeue(&self, env: Envelope) {
        let _ = self.tx.send(Cmd::Enqueue(Box::new(Entry { env, data: None, hold: None })));
    }

    /// Writes a DSN to the sender for the failed recipients, passes it through the cleanup
    /// stage (Received:, DKIM signing for our domain) into the spool, and queues it. A
    /// null-sender message (a bounce itself) cannot be returned: its failure goes to the
    /// postmaster instead (a double bounce, as Postfix does), and a double bounce that fails is
    /// dropped. Returns false only when a DSN was due and could not be stored.
    async fn bounce(&self, env: &Envelope, failed: &[Failed], data: &[u8]) -> bool {
        if env.double_bounce {
            tracing::warn!(queue_id = %env.id, "a double bounce to the postmaster failed: dropped, not reported again");
            return true;
        }
        // RFC 3461: only the recipients whose NOTIFY includes FAILURE (or who gave none).
        let failed: Vec<&Failed> = failed.iter().filter(|f| env.recipients[f.i].notify_failure()).collect();
        if failed.is_empty() {
            tracing::info!(queue_id = %env.id, "permanent failure: no DSN (NOTIFY did not ask for one)");
            return true;
        }
        let lines = failed
            .iter()
            .map(|f| {
                let mut l = line(env, f.i, dsn::Action::Failed, &f.reply);
                l.diagnostic = f.diagnostic.as_ref().map(|(text, remote)| match remote {
                    true => dsn::Diagnostic::Smtp(text),
                    false => dsn::Diagnostic::Local(text),
                });
                l
            })
            .collect();
        self.report(env, dsn::Report::Failure, lines, data).await
    }

    /// Sends one delay notice for the message (RFC 3461 DELAY) about its pending recipients
    /// that allow it, and records it in the envelope (stored by the caller) so that there is
    /// no second one. A notice that could not be stored is tried again after the next attempt.
    async fn delay_notice(&self, env: &mut Envelope, replies: &[Option<Reply>], max_age: Duration, data: &[u8]) {
        let pending: Vec<(usize, Reply)> = env
            .pending()
            .filter(|(_, r)| r.notify_delay())
            .map(|(i, r)| {
                let reply = replies[i].clone().unwrap_or_else(|| {
                    Reply::new(
                        451,
                        Enhanced(4, 0, 0),
                        r.last_reply.clone().unwrap_or_else(|| "not yet delivered".into()),
                    )
                });
                (i, reply)
            })
            .collect();
        if pending.is_empty() || env.sender.is_empty() {
            env.delay_notified = true;
            return;
        }
        let until_unix = env.received_at / 1000 + max_age.as_secs();
        let lines = pending.iter().map(|(i, reply)| line(env, *i, dsn::Action::Delayed, reply)).collect();
        if !self.report(env, dsn::Report::Delay { until_unix }, lines, data).await {
            return;
        }
        env.delay_notified = true;
        if let Some(log) = &self.inner.events {
            let events = pending
                .iter()
                .map(|(i, reply)| {
                    let mut ev = Event::about(Kind::DelayNotice, env).rcpt(&env.recipients[*i].address);
                    ev.reply = Some(reply.to_string());
                    ev.attempt = Some(env.attempts);
                    ev
                })
                .collect();
            if let Err(e) = log.append(events).await {
                tracing::error!(queue_id = %env.id, "delay notice events not recorded: {e}");
            }
        }
    }

    /// Writes a DSN of kind `report` to the sender about `lines` (never for `<>`), passes it
    /// through the cleanup stage (Received:, DKIM signing for our domain) into the spool, and
    /// queues it. Returns false only when it was due and could not be stored.
    async fn report(&self, env: &Envelope, report: dsn::Report, lines: Vec<dsn::Line<'_>>, data: &[u8]) -> bool {
        // Only a failure of a null-sender message is reported (to the postmaster).
        let double = env.sender.is_empty();
        if lines.is_empty() || (double && report != dsn::Report::Failure) {
            return true;
        }
        if env.api.as_ref().is_some_and(|a| a.verp) {
            tracing::info!(queue_id = %env.id, "API message with a VERP return path: reported as events, no DSN");
            return true;
        }
        let inner = &self.inner;
        let cleanup = inner.cleanup();
        let to = if double { cleanup.config().postmaster() } else { env.sender.clone() };
        if double {
            tracing::warn!(queue_id = %env.id, postmaster = %to, "permanent failure of a null-sender message: reported to the postmaster");
        }
        let body = dsn::build(&cleanup.config().server.hostname, env, &to, now_unix(), report, &lines, data);
        let mut dsn_env = mailgate_cleanup::envelope(inner.spool.new_id(), String::new(), vec![to.clone()]);
        dsn_env.smtputf8 = !to.is_ascii();
        // RFC 8689 §4.4: a report about a REQUIRETLS message is protected as the message was
        // (and quotes only its header section: see dsn::build).
        dsn_env.requiretls = env.requiretls;
        dsn_env.client = "local DSN".into();
        dsn_env.double_bounce = double;
        let incoming = Incoming { envelope: dsn_env, data: body, hold: None, traced: false };
        match cleanup.submit(&*inner.spool, incoming, &Origin::local(), None).await {
            Ok(Outcome::Kept(a)) => {
                let kind = match report {
                    dsn::Report::Failure => "failure",
                    dsn::Report::Delay { .. } => "delay",
                    dsn::Report::Success => "success",
                };
                tracing::info!(queue_id = %env.id, dsn_id = %a.envelope.id, %to, kind, "DSN queued");
                self.enqueue(a.envelope, Some(a.data));
                true
            }
            Ok(Outcome::Dropped { .. }) => true,
            Err(mailgate_cleanup::Refusal::Spool(e)) => {
                tracing::error!(queue_id = %env.id, "cannot store DSN, will retry: {e}");
                false
            }
            Err(e) => {
                // Only a DSN that outgrew the limits (a huge header section quoted back): the
                // sender cannot be told; say so rather than retry forever.
                tracing::error!(queue_id = %env.id, "DSN refused by cleanup, not sent: {e}");
                true
            }
        }
    }
}

/// Recipient `i` of `env` as a DSN line.
fn line<'a>(env: &'a Envelope, i: usize, action: dsn::Action, reply: &'a Reply) -> dsn::Line<'a> {
    let r = &env.recipients[i];
    dsn::Line {
        recipient: &r.address,
        action,
        reply,
        remote_host: r.remote_host.as_deref(),
        original: r.orcpt.as_ref(),
        diagnostic: None,
    }
}

/// A recipient that failed for good in this pass.
pub(crate) struct Failed {
    pub i: usize,
    /// Our reply for it: its enhanced code is the DSN's Status.
    pub reply: Reply,
    /// The Diagnostic-Code's words and whether a remote server said them, when they are not
    /// `reply` (an expiry reports the last reply the recipient had; an operator's bounce is
    /// our own decision, whoever answered last).
    pub diagnostic: Option<(String, bool)>,
}

/// When every deferred outcome is a pause with an end, the earliest end.
fn paused_until(outcomes: &[Option<RcptOutcome>]) -> Option<u64> {
    let mut ends = vec![];
    for o in outcomes.iter().flatten().filter(|o| o.status == Status::Deferred) {
        ends.push(o.not_before_ms?);
    }
    ends.into_iter().min()
}

/// Recipients that share an attempt (and connection).
struct Group {
    route: Route,
    /// The recipients' domain (for MX).
    domain: String,
    /// Their indexes in the envelope.
    idx: Vec<usize>,
    /// The shaping class an on-route plugin picked for them.
    class: Option<String>,
}

/// Recipients with the same destination share one attempt (and connection).
fn destination(route: &Route, domain: &str) -> String {
    match route {
        Route::Mx { .. } => format!("mx:{domain}"),
        Route::Smarthost { host, port, .. } => format!("smarthost:{host}:{port}"),
        Route::Lmtp { socket: Some(path), .. } => format!("lmtp:{}", path.display()),
        Route::Lmtp { host, port, .. } => format!("lmtp:{}:{port}", host.as_deref().unwrap_or("")),
        Route::Maildir { path } => format!("maildir:{}", path.display()),
        Route::Discard => "discard".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::DomainLabels;

    /// Domains keep their own label up to the cap, in the order first seen, and keep it after;
    /// every later domain is `other`.
    #[test]
    fn domain_labels_are_capped() {
        let labels = DomainLabels::new(3);
        let got: Vec<String> = ["a.test", "b.test", "a.test", "c.test", "d.test", "b.test", "e.test", "c.test"]
            .into_iter()
            .map(|d| labels.label(d.to_string()))
            .collect();
        assert_eq!(got, ["a.test", "b.test", "a.test", "c.test", "other", "b.test", "other", "c.test"]);
    }
}
