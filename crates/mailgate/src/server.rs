//! Listeners, connection limits, startup and shutdown of a gateway.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mailgate_cleanup::Cleanup;
use mailgate_config::{Config, Listener};
use tokio_rustls::TlsAcceptor;

use crate::tls::CertStore;
use mailgate_delivery::Delivery;
use mailgate_queue::Queue;
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{LocalSpool, Spool};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::plugins::PluginHooks;
use crate::session::Session;
use mailgate_plugin_host::{KvStore, MemoryKv, Plugins};

/// One loaded configuration with its plugins. A reload makes a new one; sessions keep the
/// one they started with, so nothing in flight changes under them.
pub struct Generation {
    pub config: Arc<Config>,
    /// The loaded plugins (`None` when the config has no `[[plugin]]`).
    pub plugins: Option<Arc<Plugins>>,
    /// Runs SPF/DKIM/DMARC/ARC/iprev for this generation's sessions.
    pub auth: Arc<mailgate_auth::Authenticator>,
    /// The cleanup stage every message of this generation passes (with its signing keys).
    pub cleanup: Arc<Cleanup>,
    /// Recipient verification at RCPT (its tables are read with the generation).
    pub verify: Arc<mailgate_verify::Verifier>,
}

impl Generation {
    /// Loads what a configuration needs besides its plugins (the DKIM and ARC keys); an
    /// unreadable key fails the start or the reload, naming it.
    fn new(
        config: Arc<Config>,
        plugins: Option<Arc<Plugins>>,
        resolver: &hickory_resolver::TokioResolver,
    ) -> anyhow::Result<Generation> {
        let auth =
            Arc::new(mailgate_auth::Authenticator::new(resolver.clone(), &config.server.hostname, config.auth.timeout));
        let signing = mailgate_cleanup::Signing::load(&config, auth.clone())?;
        let maps = mailgate_cleanup::Maps::load(&config).map_err(|e| anyhow::anyhow!("address maps: {e}"))?;
        let cleanup = Arc::new(Cleanup::new(config.clone(), signing, maps));
        let verify = Arc::new(mailgate_verify::Verifier::new(&config).map_err(|e| anyhow::anyhow!("verify: {e}"))?);
        Ok(Generation { config, plugins, auth, cleanup, verify })
    }
}

/// What every session of a gateway shares.
pub struct Shared {
    /// The configuration new sessions start with.
    current: RwLock<Arc<Generation>>,
    /// Where the configuration is read from on reload (`None`: the embedded default).
    config_file: Option<PathBuf>,
    /// The resolver and kv store plugins of every generation share.
    resolver: hickory_resolver::TokioResolver,
    kv: Arc<dyn KvStore>,
    pub spool: Arc<dyn Spool>,
    /// Message content in memory (`limits.content_memory`; set at start, a reload keeps it).
    pub budget: Arc<mailgate_message::Budget>,
    pub queue: Queue,
    /// The delivery agent the queue uses; recipient callouts share its connections.
    pub delivery: Arc<Delivery>,
    /// Sessions open now: the 421 limits and load shedding.
    slots: Arc<crate::slots::Slots>,
    /// The server certificate (None: no TLS configured) and the acceptor built on it.
    pub certs: Option<Arc<CertStore>>,
    pub acceptor: Option<TlsAcceptor>,
    /// Failed AUTH attempts by client (an IPv4 address, an IPv6 /64), with the start of the
    /// counting window.
    pub auth_failures: Mutex<HashMap<IpAddr, (usize, std::time::Instant)>>,
    /// The event log (`None`: events are off).
    pub events: Option<Arc<mailgate_events::EventLog>>,
    /// The `[[webhook]]` receivers with their cursors (set once at start).
    pub webhooks: std::sync::OnceLock<Vec<mailgate_webhooks::Running>>,
    /// The sending API's keys (`None`: no `[[api]]` listener); a reload reads them again.
    pub api_keys: Option<Arc<mailgate_api::Keys>>,
    /// API messages' VERP return paths (`None`: no `bounces.verp_domain`; set at start).
    pub verp: Option<Arc<mailgate_bounces::Verp>>,
    /// Per-key suppressed recipients (`None`: no API, or `bounces.suppress` off).
    pub suppressions: Option<Arc<mailgate_bounces::Suppressions>>,
    /// Source of session ids (unique within this process run, prefixed by the start time).
    next_session: AtomicU64,
    start_tag: u64,
}

/// Pending connections each SMTP listener queues before they are accepted (the kernel caps it
/// at `net.core.somaxconn`). Large enough for a burst of a thousand clients to land at once —
/// `slow_clients.rs` checks that even then a good client is not locked out (see `slots.rs`).
const LISTEN_BACKLOG: u32 = 1024;

/// A running gateway.
pub struct Gateway {
    pub shared: Arc<Shared>,
    /// The bound address of each listener, in config order (useful with port 0).
    pub local_addrs: Vec<SocketAddr>,
    /// The `[[api]]` listeners, in config order.
    pub apis: Vec<mailgate_api::Listening>,
    stop: watch::Sender<bool>,
    spool: Arc<LocalSpool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Opens the spool (queueing again what it holds), starts the queue, binds the listeners.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        Self::start_from(config, None).await
    }

    /// Like [`Gateway::start`], remembering the file a reload reads again.
    pub async fn start_from(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<Gateway> {
        Self::start_with(config, config_file, None).await
    }

    /// Like [`Gateway::start_from`], with `drop_privileges` run once everything that may need
    /// root is done — SMTP listeners and the local socket bound, spool, keys, certificates and
    /// plugins loaded — and before any message is received or delivered. (The API and admin
    /// listeners are bound after it.)
    pub async fn start_with(
        config: Config,
        config_file: Option<PathBuf>,
        drop_privileges: Option<Box<dyn FnOnce() -> anyhow::Result<()> + Send>>,
    ) -> anyhow::Result<Gateway> {
        let config = Arc::new(config);
        // The metrics recorder before anything can record: plugins keep the handles of their
        // series from their first call on, and recovered messages are routed before the admin
        // endpoint starts.
        if config.admin.listen.is_some() {
            crate::admin::recorder();
        }
        // Bound first — port 25 may need root, which is given up before anything is served —
        // but listening only once everything is ready: until then a client is refused, not
        // left waiting in a backlog nobody accepts from.
        let mut bound = vec![];
        for l in &config.listeners {
            let fail = |e: std::io::Error| anyhow::anyhow!("listener {} on {}: {e}", l.name, l.address);
            let sock = match l.address {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(fail)?;
            sock.set_reuseaddr(true).map_err(fail)?;
            sock.bind(l.address).map_err(fail)?;
            bound.push((sock, l.clone()));
        }
        let local = match &config.submission.socket {
            Some(path) => Some(crate::local::bind(path, config.submission.socket_mode)?),
            None => None,
        };

        let (spool, recovered) = LocalSpool::open(&config.spool.path, config.spool.segment_size)
            .map_err(|e| anyhow::anyhow!("spool {}: {e}", config.spool.path.display()))?;
        let delivery = Delivery::new(&config)?;
        let resolver = delivery.resolver().inner().clone();
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new(1_000_000));
        let plugins = load_plugins(&config, &resolver, &kv).await?;
        let certs = CertStore::load(&config.tls).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        let acceptor = certs.as_ref().map(|c| c.acceptor());
        let api_keys = match config.apis.is_empty() {
            true => None,
            false => Some(Arc::new(mailgate_api::Keys::open(&config.spool.path)?)),
        };
        let verp = match &config.bounces.verp_domain {
            Some(d) => Some(Arc::new(
                mailgate_bounces::Verp::open(&config.spool.path, d, &config.bounces.verp_prefix)
                    .map_err(|e| anyhow::anyhow!("VERP key in {}: {e}", config.spool.path.display()))?,
            )),
            None => None,
        };
        let suppressions = match api_keys.is_some() && config.bounces.suppress {
            true => Some(Arc::new(mailgate_bounces::Suppressions::open(&config.spool.path)?)),
            false => None,
        };
        let hooks = plugins
            .as_ref()
            .map(|p| Arc::new(PluginHooks::new(p.queue(), config.clone())) as Arc<dyn mailgate_queue::Hooks>);
        let generation = Generation::new(config.clone(), plugins, &resolver)?;
        let events = match config.events_on() {
            false => None,
            true => {
                let dir = config.spool.path.join("events");
                let log = mailgate_events::EventLog::open(&dir)
                    .map_err(|e| anyhow::anyhow!("events {}: {e}", dir.display()))?;
                Some(Arc::new(log))
            }
        };
        if let Some(drop_privileges) = drop_privileges {
            drop_privileges()?;
        }
        let queue = Queue::start(
            spool.clone(),
            delivery.clone(),
            config.clone(),
            recovered,
            hooks,
            generation.cleanup.clone(),
            events.clone(),
        );
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(generation)),
            config_file,
            resolver,
            kv,
            certs,
            acceptor,
            auth_failures: Mutex::new(HashMap::new()),
            spool: spool.clone(),
            queue,
            delivery,
            slots: Arc::new(crate::slots::Slots::default()),
            budget: mailgate_message::Budget::new(config.limits.content_memory),
            api_keys,
            verp,
            suppressions,
            events,
            webhooks: std::sync::OnceLock::new(),
            next_session: AtomicU64::new(0),
            start_tag: mailgate_message::date::now_unix() % 100_000,
        });
        if let Some(addr) = config.admin.listen {
            crate::admin::start(addr, shared.clone(), config.admin.token.clone()).await?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut local_addrs = vec![];
        let mut tasks = vec![];
        if let Some(listener) = local {
            tasks.push(crate::local::serve(listener, shared.clone(), stop_rx.clone()));
        }
        for (sock, l) in bound {
            let listener = sock
                .listen(LISTEN_BACKLOG)
                .map_err(|e| anyhow::anyhow!("listener {} on {}: {e}", l.name, l.address))?;
            let addr = listener.local_addr()?;
            tracing::info!(listener = %l.name, %addr, "listening");
            local_addrs.push(addr);
            tasks.push(tokio::spawn(accept_loop(listener, l, shared.clone(), stop_rx.clone())));
        }
        if let Some(log) = &shared.events {
            let dir = config.spool.path.join("webhooks");
            let running = mailgate_webhooks::start(&config.webhooks, log.clone(), &dir, stop_rx.clone())?;
            let _ = shared.webhooks.set(running);
            if let Some(list) = &shared.suppressions {
                tasks.push(tokio::spawn(crate::bounces::feed(log.clone(), list.clone(), stop_rx.clone())));
            }
        }
        tasks.extend(crate::tlsrpt::start(&shared));
        let apis = crate::api::start(&shared, stop_rx).await?;
        Ok(Gateway { shared, local_addrs, apis, stop, spool, tasks })
    }

    /// Loads the configuration file again with its plugins and certificate. Only when all of
    /// it loads are new sessions (and the queue) switched to it; sessions in flight finish on
    /// the generation they started with. Listeners, the spool and the resolver stay as they
    /// are (changing them needs a restart).
    pub(crate) async fn reload(&self) -> Result<String, String> {
        self.shared.reload().await
    }

    /// Stops accepting, lets sessions finish for up to `grace`, then syncs the spool.
    pub async fn shutdown(self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        let busy = |g: &Gateway| g.shared.slots.open() > 0 || g.apis.iter().any(|a| a.in_flight() > 0);
        while busy(&self) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Deliveries in flight finish and write their results before the spool closes.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.shared.queue.shutdown(left.max(std::time::Duration::from_secs(5))).await;
        if let Some(reports) = self.shared.delivery.reports() {
            if let Err(e) = reports.flush() {
                tracing::warn!("TLS report counts not written: {e}");
            }
        }
        self.spool.close();
        tracing::info!("gateway stopped");
    }
}

impl Shared {
    /// A new session id: unique within this process run, prefixed by the start time.
    pub(crate) fn next_sid(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{:05}{:06}", self.start_tag, n)
    }

    /// The table of open sessions (admission and load shedding).
    pub(crate) fn slots(&self) -> &Arc<crate::slots::Slots> {
        &self.slots
    }

    /// The generation new sessions start with.
    pub fn current(&self) -> Arc<Generation> {
        self.current.read().unwrap().clone()
    }

    /// See [`Gateway::reload`].
    pub(crate) async fn reload(&self) -> Result<String, String> {
        let result = self.reload_inner().await;
        if let Err(e) = &result {
            tracing::error!("reload failed, the running configuration stays: {e}");
        }
        result
    }

    async fn reload_inner(&self) -> Result<String, String> {
        let shared = self;
        let config = Arc::new(Config::load(shared.config_file.as_deref()).map_err(|e| e.to_string())?);
        let plugins = load_plugins(&config, &shared.resolver, &shared.kv).await.map_err(|e| format!("{e:#}"))?;
        if let Some(certs) = &shared.certs {
            certs.reload(&config.tls)?;
        }
        if let Some(keys) = &shared.api_keys {
            keys.load().map_err(|e| e.to_string())?;
        }
        let hooks = plugins
            .as_ref()
            .map(|p| Arc::new(PluginHooks::new(p.queue(), config.clone())) as Arc<dyn mailgate_queue::Hooks>);
        let names = plugins.as_ref().map(|p| p.describe()).unwrap_or_default();
        let generation = Generation::new(config.clone(), plugins, &shared.resolver).map_err(|e| format!("{e:#}"))?;
        let restart = restart_keys(&shared.current().config, &config);
        shared.queue.reconfigure(config, hooks, generation.cleanup.clone());
        *shared.current.write().unwrap() = Arc::new(generation);
        let summary = names.iter().map(|(n, h)| format!("{n}@{h}")).collect::<Vec<_>>().join(", ");
        tracing::info!(plugins = %summary, "configuration reloaded");
        let mut answer = format!("reloaded; plugins: {}", if summary.is_empty() { "none" } else { &summary });
        if !restart.is_empty() {
            let keys = restart.join(", ");
            tracing::warn!(%keys, "reloaded, but these changed settings take effect only after a restart");
            answer += &format!("; changed but needing a restart to take effect: {keys}");
        }
        Ok(answer)
    }
}

/// The settings a reload cannot apply because they were used once, at start (sockets bound,
/// the resolver, the spool, tasks started), that differ between `old` and `new`. Everything
/// else — plugins, routes, maps, tables, limits, [delivery], the queue's schedule and
/// per-destination limit, TLS certificates, API keys — takes effect on reload.
fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    let pairs = [
        ("listener", json(&old.listeners), json(&new.listeners)),
        ("api", json(&old.apis), json(&new.apis)),
        ("admin", json(&old.admin), json(&new.admin)),
        ("spool", json(&old.spool), json(&new.spool)),
        ("dns", json(&old.dns), json(&new.dns)),
        ("events", json(&old.events), json(&new.events)),
        ("webhook", json(&old.webhooks), json(&new.webhooks)),
        ("bounces", json(&old.bounces), json(&new.bounces)),
        (
            "submission.socket",
            json(&(&old.submission.socket, old.submission.socket_mode)),
            json(&(&new.submission.socket, new.submission.socket_mode)),
        ),
        ("limits.content_memory", json(&old.limits.content_memory), json(&new.limits.content_memory)),
        ("queue.max_concurrent", json(&old.queue.max_concurrent), json(&new.queue.max_concurrent)),
    ];
    pairs.into_iter().filter(|(_, a, b)| a != b).map(|(k, _, _)| k).collect()
}

/// Counts an accepted message and hands it to the queue. The queue keeps the content for its
/// first attempt while the memory budget has room to spare; when it is tight (slow next hops),
/// the queue reads it back from the spool instead, so waiting deliveries never keep new mail out.
pub(crate) fn queue_accepted(shared: &Shared, a: mailgate_cleanup::Accepted) {
    let env = a.envelope;
    let result = if env.quarantine.is_some() { "quarantined" } else { "accepted" };
    metrics::counter!("mailgate_messages_total", "result" => result).increment(1);
    metrics::counter!("mailgate_recipients_total", "class" => "2xx").increment(env.recipients.len() as u64);
    metrics::counter!("mailgate_message_bytes_total").increment(a.data.len() as u64);
    match a.hold {
        Some(hold) if shared.budget.used() <= shared.budget.limit() / 2 => shared.queue.enqueue_held(env, a.data, hold),
        _ => shared.queue.enqueue(env, None),
    }
}

/// Records events (when they are on), on disk before this returns; a failure is logged, and
/// the mail goes on.
pub(crate) async fn record(shared: &Shared, events: Vec<mailgate_events::Event>) {
    if let Some(log) = &shared.events {
        if let Err(e) = log.append(events).await {
            tracing::error!("events not recorded: {e}");
        }
    }
}

/// Logs and counts a message accepted and then dropped by policy (the sender heard 250/202).
pub(crate) fn dropped(id: &str, why: mailgate_cleanup::Dropped) {
    match why {
        mailgate_cleanup::Dropped::Discarded => tracing::info!(queue_id = %id, "message discarded by policy"),
        mailgate_cleanup::Dropped::NoRecipients => {
            tracing::info!(queue_id = %id, "plugins removed every recipient: message dropped")
        }
    }
    metrics::counter!("mailgate_messages_total", "result" => "discarded").increment(1);
}

/// Counts a message refused after its content arrived and, when the refusal is permanent,
/// records its `rejected` event.
pub(crate) async fn refused(
    shared: &Shared,
    id: &str,
    sender: &str,
    api: Option<&mailgate_spool::ApiMeta>,
    reply: &mailgate_smtp::Reply,
    source: &str,
) {
    let result = if reply.is_transient() { "tempfail" } else { "refused" };
    metrics::counter!("mailgate_messages_total", "result" => result).increment(1);
    if shared.events.is_some() && reply.is_permanent() {
        let mut ev = mailgate_events::Event::new(mailgate_events::Kind::Rejected, id, sender, api);
        ev.reply = Some(reply.to_string());
        ev.source = Some(source.into());
        record(shared, vec![ev]).await;
    }
}

/// The events of a message that reached the spool: received, and quarantined if it was.
pub(crate) fn reception(env: &mailgate_spool::Envelope, source: &str) -> Vec<mailgate_events::Event> {
    use mailgate_events::{Event, Kind};
    let mut received = Event::about(Kind::Received, env);
    received.source = Some(source.into());
    let mut out = vec![received];
    if let Some(why) = &env.quarantine {
        let mut q = Event::about(Kind::Quarantined, env);
        q.detail = Some(why.clone());
        out.push(q);
    }
    out
}

/// Compiles the plugins of a configuration (off the async threads: compiling is CPU work).
async fn load_plugins(
    config: &Arc<Config>,
    resolver: &hickory_resolver::TokioResolver,
    kv: &Arc<dyn KvStore>,
) -> anyhow::Result<Option<Arc<Plugins>>> {
    if config.plugins.is_empty() {
        return Ok(None);
    }
    let (cfg, resolver, kv) = (config.clone(), resolver.clone(), kv.clone());
    Ok(Some(tokio::task::spawn_blocking(move || Plugins::load(&cfg, Some(resolver), kv)).await??))
}

async fn accept_loop(listener: TcpListener, conf: Listener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let name: Arc<str> = conf.name.as_str().into();
    // A listener bound to one address answers on it: the local address of each connection is
    // known without a getsockname(2) (only a wildcard listener has to ask).
    let bound = listener.local_addr().ok().filter(|a| !a.ip().is_unspecified()).map(canonical);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // One canonical form of the peer for everything after this point (SPF, iprev, DNSBL,
        // limits, trusted networks, Received:, plugins, logs): an IPv4 client on a dual-stack
        // `[::]` listener arrives as `::ffff:a.b.c.d` and must be treated as the IPv4 client it is.
        let peer = canonical(peer);
        let shared = shared.clone();
        let name = name.clone();
        let stop = stop.clone();
        let (role, pipeline) = (conf.role, conf.pipeline.clone());
        tokio::spawn(async move {
            let Some(admitted) = admit(&shared, |b| drop(stream.try_write(b)), peer.ip(), &name) else { return };
            let sid = shared.next_sid();
            let span = tracing::info_span!("session", sid = %sid, client = %peer);
            let local = bound.or_else(|| stream.local_addr().ok().map(canonical)).unwrap_or(peer);
            let slot = admitted.slot.clone();
            let conn = crate::session::Accepted { sid, peer, local, listener: name, role, pipeline, slot, user: None };
            // Boxed: a session's future is ~13 KiB, and tokio moves a spawned future several
            // times before it first runs (a memcpy each, at every new connection).
            Box::pin(Session::new(conn, stream, shared.clone(), stop).run().instrument(span)).await;
        });
    }
}

/// The address with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) turned into the IPv4
/// address it carries; every other address as it is.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Applies the session limits; a refused client gets `421 4.7.0` and the connection closes.
pub(crate) fn admit(
    shared: &Arc<Shared>,
    refuse: impl FnOnce(&[u8]),
    ip: IpAddr,
    listener: &Arc<str>,
) -> Option<crate::slots::Admitted> {
    let generation = shared.current();
    let config = &generation.config;
    match shared.slots().admit(ip, &config.limits, config.timeouts.shed_idle, listener) {
        Ok(a) => {
            metrics::counter!("mailgate_sessions_total", "listener" => listener.to_string()).increment(1);
            Some(a)
        }
        Err(refusal) => {
            // One small write into an empty socket buffer: it does not block.
            refuse(&Reply::new(421, Enhanced(4, 7, 0), refusal.text()).to_bytes());
            None
        }
    }
}
