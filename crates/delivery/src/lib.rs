//! Outbound delivery: given a message, its recipients for one route, and the route, get it to
//! the next hop and say what happened to each recipient.
//!
//! This crate owns the SMTP client (EHLO, PIPELINING, STARTTLS with rustls, per-recipient
//! replies), MX resolution with hickory-resolver (A/AAAA fallback, null MX), reuse of idle
//! connections per host, and the `maildir` and `discard` routes. It must not know the queue,
//! retries, DSNs or the spool: one call is one attempt.

mod client;
mod maildir;
mod mx;
mod pool;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Config, Route};
use mailgate_smtp::{Enhanced, Reply};

pub use client::Conn;
pub use mx::Resolver;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Delivered,
    /// Try again later.
    Deferred,
    /// Permanent failure: bounce.
    Failed,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    pub status: Status,
    /// The remote server's reply, or our own when no server answered (e.g. `451 4.4.1
    /// connection refused`).
    pub reply: Reply,
    /// The host that answered, when one did (for the DSN's Remote-MTA).
    pub remote_host: Option<String>,
    /// Who reports a success from here on (RFC 3461 §5.2): decides a success DSN's action.
    pub handoff: Handoff,
}

/// Where a delivered message went, for the DSN that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// Into its final place (a maildir, a discard route): `Action: delivered`.
    Final,
    /// To a next hop that does not do DSN: we say `Action: relayed`, nobody reports more.
    #[default]
    Relayed,
    /// To a next hop that advertised DSN and got the parameters: it reports, we don't.
    RelayedWithDsn,
}

impl RcptOutcome {
    pub fn new(status: Status, reply: Reply, host: Option<&str>) -> Self {
        RcptOutcome { status, reply, remote_host: host.map(str::to_string), handoff: Handoff::default() }
    }

    /// The outcome a remote reply means: 2xx/3xx delivered, 4xx deferred, 5xx failed.
    pub fn of(reply: Reply, host: Option<&str>) -> Self {
        let status = if reply.is_positive() {
            Status::Delivered
        } else if reply.is_permanent() {
            Status::Failed
        } else {
            Status::Deferred
        };
        RcptOutcome::new(status, reply, host)
    }

    /// The same outcome, handed off as `h`.
    pub fn handed(mut self, h: Handoff) -> Self {
        self.handoff = h;
        self
    }
}

/// One message to deliver on one route.
pub struct Outbound<'a> {
    /// Queue id, for logs and maildir file names.
    pub id: &'a str,
    /// Reverse path, empty for `<>`.
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The whole message, CRLF line ends, not dot-stuffed.
    pub data: &'a [u8],
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// RET= and ENVID= of the DSN extension (RFC 3461), passed on to a next hop that
    /// advertises DSN.
    pub dsn_ret: Option<mailgate_smtp::Ret>,
    pub envid: Option<&'a str>,
    /// NOTIFY= and ORCPT= per recipient, in `recipients` order (empty: none for any).
    pub rcpt_params: &'a [mailgate_smtp::RcptParams],
}

/// Client-side settings taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub helo_name: String,
    pub mx_port: u16,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            helo_name: c.helo_name().to_string(),
            mx_port: c.delivery.mx_port,
            connect_timeout: c.delivery.connect_timeout,
            command_timeout: c.delivery.command_timeout,
            data_timeout: c.delivery.data_timeout,
            idle_timeout: c.delivery.idle_timeout,
        }
    }
}

/// The delivery agent; share it behind an `Arc`.
pub struct Delivery {
    settings: Settings,
    resolver: Resolver,
    tls: tls::Connectors,
    pool: pool::Pool,
}

/// Where an SMTP attempt goes: candidate hosts in order, each with its addresses.
struct Target {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Delivery {
    /// The delivery agent; inside a tokio runtime it also starts the sweeper that closes idle
    /// pooled connections at `delivery.idle_timeout` (it ends when the agent is dropped).
    pub fn new(cfg: &Config) -> std::io::Result<Arc<Delivery>> {
        let d = Arc::new(Delivery {
            settings: Settings::from_config(cfg),
            resolver: Resolver::new(&cfg.dns)?,
            tls: tls::Connectors::new(),
            pool: pool::Pool::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&d);
            let every = (d.settings.idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(d) = weak.upgrade() else { return };
                    let n = d.pool.sweep(d.settings.idle_timeout);
                    if n > 0 {
                        tracing::debug!(closed = n, "idle outbound connections closed");
                    }
                }
            });
        }
        Ok(d)
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Makes one delivery attempt of `msg` to all its recipients over `route`; `domain` is the
    /// recipients' domain (for MX). Returns one outcome per recipient, in order.
    pub async fn deliver(&self, route: &Route, domain: &str, msg: &Outbound<'_>) -> Vec<RcptOutcome> {
        let all = |o: RcptOutcome| vec![o; msg.recipients.len()];
        match route {
            Route::Discard => {
                all(RcptOutcome::new(Status::Delivered, Reply::new(250, Enhanced(2, 0, 0), "discarded by route"), None)
                    .handed(Handoff::Final))
            }
            Route::Maildir { path } => maildir::deliver(path, msg).await,
            Route::Smarthost { host, port, tls, ca_file } => {
                let addrs = match self.resolver.addresses(host, *port).await {
                    Ok(a) => a,
                    Err(o) => return all(o),
                };
                let policy = match self.tls.policy(*tls, ca_file.as_deref(), *port) {
                    Ok(p) => p,
                    Err(e) => {
                        return all(RcptOutcome::new(
                            Status::Deferred,
                            Reply::new(451, Enhanced(4, 7, 5), format!("TLS setup: {e}")),
                            None,
                        ))
                    }
                };
                self.smtp(vec![Target { host: host.clone(), addrs }], &policy, msg).await
            }
            Route::Mx { tls } => {
                let hosts = match self.resolver.mx_hosts(domain).await {
                    Ok(h) => h,
                    Err(o) => return all(o),
                };
                let mut targets = vec![];
                let mut last_err = None;
                for host in hosts {
                    match self.resolver.addresses(&host, self.settings.mx_port).await {
                        Ok(addrs) => targets.push(Target { host, addrs }),
                        Err(o) => last_err = Some(o),
                    }
                }
                if targets.is_empty() {
                    return all(last_err.unwrap_or_else(|| {
                        RcptOutcome::new(
                            Status::Deferred,
                            Reply::new(451, Enhanced(4, 4, 4), "no usable MX host"),
                            None,
                        )
                    }));
                }
                let policy = match self.tls.policy(*tls, None, self.settings.mx_port) {
                    Ok(p) => p,
                    Err(e) => {
                        return all(RcptOutcome::new(
                            Status::Deferred,
                            Reply::new(451, Enhanced(4, 7, 5), format!("TLS setup: {e}")),
                            None,
                        ))
                    }
                };
                self.smtp(targets, &policy, msg).await
            }
        }
    }

    /// Tries the targets in order until one takes the transaction (any reply to it counts).
    async fn smtp(&self, targets: Vec<Target>, policy: &tls::Policy, msg: &Outbound<'_>) -> Vec<RcptOutcome> {
        let mut last =
            RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 1), "no host reachable"), None);
        for t in &targets {
            for addr in &t.addrs {
                match self.attempt(&t.host, *addr, policy, msg).await {
                    Ok(outcomes) => return outcomes,
                    Err(o) => {
                        tracing::info!(queue_id = msg.id, host = %t.host, %addr, "delivery attempt failed: {}", o.reply);
                        last = o;
                    }
                }
            }
        }
        vec![last; msg.recipients.len()]
    }

    /// One host: a pooled connection when there is one (falling back to a fresh one if it has
    /// gone stale), then the transaction. `Err` means "try the next host".
    async fn attempt(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: &tls::Policy,
        msg: &Outbound<'_>,
    ) -> Result<Vec<RcptOutcome>, RcptOutcome> {
        let key = pool::Key { addr, host: host.to_string(), policy: policy.kind };
        if let Some(mut conn) = self.pool.take(&key, self.settings.idle_timeout) {
            match conn.transaction(msg, &self.settings).await {
                Ok(out) => {
                    if conn.reusable() {
                        self.pool.put(key, conn);
                    }
                    return Ok(out);
                }
                Err(client::TxError::Stale) => {} // closed while idle: open a fresh one
                Err(client::TxError::Host(o)) => return Err(o),
            }
        }
        let mut conn = Conn::open(host, addr, policy, &self.settings).await?;
        match conn.transaction(msg, &self.settings).await {
            Ok(out) => {
                if conn.reusable() {
                    self.pool.put(key, conn);
                }
                Ok(out)
            }
            Err(client::TxError::Stale) => Err(RcptOutcome::new(
                Status::Deferred,
                Reply::new(451, Enhanced(4, 4, 2), "connection lost"),
                Some(host),
            )),
            Err(client::TxError::Host(o)) => Err(o),
        }
    }
}
