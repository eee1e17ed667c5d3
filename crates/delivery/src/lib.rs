//! Outbound delivery: given a message, its recipients for one route, and the route, get it to
//! the next hop and say what happened to each recipient.
//!
//! This crate owns the SMTP client (EHLO, PIPELINING, STARTTLS with rustls, per-recipient
//! replies), LMTP (RFC 2033) by TCP or unix socket, SMTP AUTH to a smarthost, recipient
//! callouts, MX resolution with hickory-resolver (A/AAAA fallback, null MX), MTA-STS policies
//! of recipient domains (which MX hosts, verified TLS), DANE (TLSA records of MX hosts from
//! DNSSEC-signed zones), reuse of idle connections per host,
//! and the `maildir` and `discard` routes. It must not know the queue,
//! retries, DSNs or the spool: one call is one attempt.

mod client;
mod dane;
mod maildir;
mod mx;
mod pool;
mod source;
mod sts;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{ClientAuth, Config, Route, TlsPolicy};
use mailgate_smtp::{Enhanced, Reply};

use client::Hop;
pub use client::{Conn, Peer};
pub use dane::{read_trust_anchor, AnchorError};
pub use mx::Resolver;

/// Whether the message waives the recipient domain's TLS policies (`TLS-Required: No`, RFC
/// 8689 §5): never for a message that came with REQUIRETLS, which wins.
fn tls_policies_waived(msg: &Outbound<'_>) -> bool {
    !msg.requiretls && mailgate_message::fields::tls_required_no(msg.data)
}

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
    /// No next hop got as far as a transaction (refused, timed out, 421 greeting, 4xx EHLO,
    /// TLS): what traffic shaping counts towards pausing a destination.
    pub connection_level: bool,
    /// Not worth trying again before then (ms since the epoch): a paused destination or host.
    pub not_before_ms: Option<u64>,
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
        RcptOutcome {
            status,
            reply,
            remote_host: host.map(str::to_string),
            handoff: Handoff::default(),
            connection_level: false,
            not_before_ms: None,
        }
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

    /// The same outcome, not to be retried for `wait`.
    pub fn not_before(mut self, wait: Duration) -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.not_before_ms = Some((now + wait).as_millis() as u64);
        self
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
    /// REQUIRETLS (RFC 8689): relayed only over verified TLS to a hop that takes REQUIRETLS
    /// (passed on in MAIL FROM); a hop that cannot honour it fails the recipients (5.7.30).
    pub requiretls: bool,
    /// The destination's `max_messages_per_connection`: a connection that has carried this
    /// many is closed rather than kept for reuse.
    pub max_per_connection: Option<u32>,
}

/// Client-side settings taken from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub helo_name: String,
    pub mx_port: u16,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub idle_timeout: Duration,
    pub mta_sts: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub downgrade_8bit: mailgate_config::Downgrade8bit,
    pub dane: bool,
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
            mta_sts: c.delivery.mta_sts,
            ca_file: c.delivery.ca_file.clone(),
            downgrade_8bit: c.delivery.downgrade_8bit,
            dane: c.delivery.dane,
        }
    }
}

/// The delivery agent; share it behind an `Arc`.
pub struct Delivery {
    /// Replaced by a reload; each attempt reads them once at its start.
    settings: std::sync::RwLock<Arc<Settings>>,
    resolver: Resolver,
    tls: tls::Connectors,
    pool: pool::Pool,
    /// The `[[pool]]`s of source addresses, by name (replaced by a reload).
    sources: std::sync::RwLock<std::collections::HashMap<String, Arc<source::Rotation>>>,
    /// MTA-STS policies of recipient domains, kept under the spool directory.
    sts: sts::Sts,
    /// DANE's validating resolver (used when `delivery.dane` is on; `[dns]` needs a restart).
    dane: dane::Dane,
    /// TLS sessions under recipient domains' policies, counted for their reports
    /// (`tlsrpt.enabled`).
    reports: Option<Arc<mailgate_tlsrpt::Reports>>,
    /// Traffic shaping: the queue's destinations and the next-hop hosts `[shaping.hosts]`
    /// names (the latter applied here, per connection).
    shaper: Arc<mailgate_shaping::Shaper>,
}

fn rotations(cfg: &Config) -> std::collections::HashMap<String, Arc<source::Rotation>> {
    cfg.pools.iter().map(|p| (p.name.clone(), Arc::new(source::Rotation::new(p)))).collect()
}

/// A candidate host of an SMTP or LMTP attempt, with its addresses.
struct Target {
    host: String,
    addrs: Vec<Peer>,
    /// Its own TLS policy (DANE's), instead of the plan's.
    policy: Option<tls::Policy>,
    /// The recipient domain's policy its sessions are reported under (TLS-RPT).
    report: Option<Arc<mailgate_tlsrpt::PolicyRef>>,
    /// Check the certificate after an opportunistic handshake, for the report (MTA-STS
    /// `testing`).
    audit: bool,
}

impl Delivery {
    /// The delivery agent; inside a tokio runtime it also starts the sweeper that closes idle
    /// pooled connections at `delivery.idle_timeout` (it ends when the agent is dropped).
    pub fn new(cfg: &Config) -> std::io::Result<Arc<Delivery>> {
        let d = Arc::new(Delivery {
            settings: std::sync::RwLock::new(Arc::new(Settings::from_config(cfg))),
            resolver: Resolver::new(&cfg.dns)?,
            tls: tls::Connectors::new(),
            pool: pool::Pool::default(),
            sources: std::sync::RwLock::new(rotations(cfg)),
            sts: sts::Sts::new(Some(cfg.spool.path.join("mta-sts"))),
            dane: dane::Dane::new(&cfg.dns)?,
            shaper: Arc::new(mailgate_shaping::Shaper::new(cfg)),
            reports: match cfg.tlsrpt.enabled {
                true => Some(Arc::new(
                    mailgate_tlsrpt::Reports::open(&cfg.spool.path.join("tlsrpt")).map_err(std::io::Error::other)?,
                )),
                false => None,
            },
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&d);
            let every = (d.settings().idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(d) = weak.upgrade() else { return };
                    let n = d.pool.sweep(d.settings().idle_timeout);
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

    /// The limiters of destinations and hosts.
    pub fn shaper(&self) -> &Arc<mailgate_shaping::Shaper> {
        &self.shaper
    }

    /// The TLS report counts, when `tlsrpt.enabled`.
    pub fn reports(&self) -> Option<&Arc<mailgate_tlsrpt::Reports>> {
        self.reports.as_ref()
    }

    /// Counts a session (or a host not even tried) under `policy` for its domain's report.
    fn report(
        &self,
        policy: &mailgate_tlsrpt::PolicyRef,
        host: &str,
        ip: Option<std::net::IpAddr>,
        local: Option<std::net::IpAddr>,
        problem: Option<&client::TlsProblem>,
    ) {
        if let Some(r) = &self.reports {
            r.record(
                policy,
                problem.map(|p| mailgate_tlsrpt::Failure {
                    result: p.result,
                    receiving_mx: Some(host.to_string()),
                    receiving_ip: ip,
                    sending_ip: p.local.or(local),
                    detail: Some(p.detail.clone()),
                }),
            );
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's `[delivery]`: attempts that start from now on use it. When the EHLO name
    /// changes, idle connections (which greeted with the old one) are closed. The resolver's
    /// `[dns]` is kept: it needs a restart.
    pub fn reconfigure(&self, cfg: &Config) {
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = rotations(cfg);
        self.shaper.reconfigure(cfg);
        let new = Settings::from_config(cfg);
        let old = self.settings();
        if *old == new {
            return;
        }
        let helo_changed = old.helo_name != new.helo_name;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        if helo_changed {
            let closed = self.pool.sweep(Duration::ZERO);
            tracing::info!(closed, "delivery: new EHLO name; idle connections closed");
        }
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
            _ => match self.plan(route, domain, tls_policies_waived(msg)).await {
                Ok(plan) => match self.over(&plan, Work::Deliver(msg)).await {
                    Ok(Done::Delivered(out)) => out,
                    Ok(Done::Probed(_)) => unreachable!("a delivery answers with outcomes"),
                    Err(o) => all(o),
                },
                Err(o) => all(o),
            },
        }
    }

    /// A recipient callout: asks the route's next hop whether it would take `rcpt`
    /// (`MAIL FROM:<>`, `RCPT TO`, `RSET` on a pooled connection), without sending anything.
    pub async fn probe(&self, route: &Route, domain: &str, rcpt: &str) -> Probe {
        if matches!(route, Route::Maildir { .. } | Route::Discard) {
            return Probe::Unavailable(Reply::new(451, Enhanced(4, 3, 5), "the route has no next hop to ask"));
        }
        let result = match self.plan(route, domain, false).await {
            Ok(plan) => self.over(&plan, Work::Probe(rcpt)).await,
            Err(o) => Err(o),
        };
        match result {
            Ok(Done::Probed(r)) if r.is_positive() => Probe::Exists,
            Ok(Done::Probed(r)) if r.is_permanent() => Probe::Unknown(r),
            Ok(Done::Probed(r)) => Probe::Unavailable(r),
            Ok(Done::Delivered(_)) => unreachable!("a probe answers with a reply"),
            Err(o) => Probe::Unavailable(o.reply),
        }
    }

    /// Where an SMTP or LMTP route goes, and how to talk there.
    /// `waived`: the message says `TLS-Required: No` (the domain's MTA-STS policy is not
    /// applied).
    async fn plan<'r>(&self, route: &'r Route, domain: &str, waived: bool) -> Result<Plan<'r>, RcptOutcome> {
        let policy = |tls, ca: Option<&std::path::Path>, port| {
            self.tls.policy(tls, ca, port).map_err(|e| {
                RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 7, 5), format!("TLS setup: {e}")), None)
            })
        };
        let tcp = |host: &str, addrs: Vec<SocketAddr>| Target {
            host: host.to_string(),
            addrs: addrs.into_iter().map(Peer::Tcp).collect(),
            policy: None,
            report: None,
            audit: false,
        };
        let mut plan = match route {
            Route::Smarthost { host, port, tls, ca_file, auth, .. } => Plan {
                targets: vec![tcp(host, self.resolver.addresses(host, *port).await?)],
                policy: policy(*tls, ca_file.as_deref(), *port)?,
                auth: auth.as_ref(),
                lmtp: false,
                sources: None,
            },
            Route::Lmtp { socket: Some(path), .. } => Plan {
                targets: vec![Target {
                    host: path.display().to_string(),
                    addrs: vec![Peer::Unix(path.clone())],
                    policy: None,
                    report: None,
                    audit: false,
                }],
                policy: policy(TlsPolicy::None, None, 0)?,
                auth: None,
                lmtp: true,
                sources: None,
            },
            Route::Lmtp { host, port, tls, ca_file, .. } => {
                let host = host.as_deref().unwrap_or("localhost");
                Plan {
                    targets: vec![tcp(host, self.resolver.addresses(host, *port).await?)],
                    policy: policy(*tls, ca_file.as_deref(), *port)?,
                    auth: None,
                    lmtp: true,
                    sources: None,
                }
            }
            Route::Mx { tls, .. } => 'mx: {
                let settings = self.settings();
                let port = settings.mx_port;
                if settings.dane && *tls != TlsPolicy::None && !waived && !domain.starts_with('[') {
                    if let Some(targets) = self.dane_targets(*tls, domain, port).await? {
                        break 'mx Plan {
                            targets,
                            policy: policy(*tls, None, port)?,
                            auth: None,
                            lmtp: false,
                            sources: None,
                        };
                    }
                }
                let mut hosts = self.resolver.mx_hosts(domain).await?;
                let (tls, ca, sts) = self.mta_sts(&settings, *tls, domain, &mut hosts, waived).await?;
                let mut targets = vec![];
                let mut last_err = None;
                for host in hosts {
                    match self.resolver.addresses(&host, settings.mx_port).await {
                        Ok(addrs) => targets.push(Target {
                            report: sts.as_ref().map(|(p, _)| p.clone()),
                            audit: sts.as_ref().is_some_and(|(_, audit)| *audit),
                            ..tcp(&host, addrs)
                        }),
                        Err(o) => last_err = Some(o),
                    }
                }
                if targets.is_empty() {
                    return Err(last_err.unwrap_or_else(|| {
                        RcptOutcome::new(
                            Status::Deferred,
                            Reply::new(451, Enhanced(4, 4, 4), "no usable MX host"),
                            None,
                        )
                    }));
                }
                Plan { targets, policy: policy(tls, ca.as_deref(), port)?, auth: None, lmtp: false, sources: None }
            }
            Route::Maildir { .. } | Route::Discard => unreachable!("callers handle the routes without a next hop"),
        };
        if let Some(name) = route.pool() {
            let found = self.sources.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
            match found {
                Some(r) => plan.sources = Some(r),
                None => {
                    return Err(RcptOutcome::new(
                        Status::Deferred,
                        Reply::new(451, Enhanced(4, 3, 5), format!("no source pool {name:?}")),
                        None,
                    ))
                }
            }
        }
        Ok(plan)
    }

    /// DANE for an MX route (RFC 7672): when the MX answer is DNSSEC-secure and any of its
    /// hosts has TLSA records (or a TLSA lookup that failed), the targets, each with its own
    /// TLS policy — verified against its records, TLS without authentication when none is
    /// usable, the route's when it has none; a host whose lookup failed is not used. `None`:
    /// DANE does not apply here (MTA-STS may). DANE wins over MTA-STS (RFC 8461 §2).
    async fn dane_targets(&self, tls: TlsPolicy, domain: &str, port: u16) -> Result<Option<Vec<Target>>, RcptOutcome> {
        let decision =
            |d: &'static str| metrics::counter!("mailgate_dane_decisions_total", "decision" => d).increment(1);
        let (hosts, mx_secure) = self.dane.mx_hosts(domain).await?;
        if !mx_secure {
            decision("insecure");
            return Ok(None);
        }
        let mut found = vec![];
        let mut last_err = None;
        for host in hosts {
            match self.dane.host(&host, port, true).await {
                Ok((addrs, state)) => found.push((host, addrs, state)),
                Err(o) => last_err = Some(o),
            }
        }
        if found.iter().all(|(_, _, state)| matches!(state, dane::HostTlsa::None)) {
            decision("no_tlsa");
            return Ok(None);
        }
        decision("dane");
        let route_policy = self.tls.policy(tls, None, port).map_err(|e| {
            RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 7, 5), format!("TLS setup: {e}")), None)
        })?;
        let mut targets = vec![];
        for (host, addrs, state) in found {
            let report = Arc::new(mailgate_tlsrpt::PolicyRef {
                domain: domain.to_string(),
                kind: mailgate_tlsrpt::Kind::Tlsa,
                strings: match &state {
                    dane::HostTlsa::Usable(r) => r.iter().map(dane::Tlsa::presentation).collect(),
                    _ => vec![],
                },
                mx: vec![host.clone()],
            });
            let policy = match state {
                dane::HostTlsa::Usable(records) => {
                    tracing::info!(%domain, %host, records = records.len(), "DANE: usable TLSA records; TLS must match them");
                    self.tls.dane(records, domain)
                }
                dane::HostTlsa::Unusable if tls == TlsPolicy::Opportunistic => {
                    tracing::info!(%domain, %host, "DANE: no usable TLSA record; TLS required, not authenticated");
                    self.tls.encrypt()
                }
                dane::HostTlsa::Unusable | dane::HostTlsa::None => route_policy.clone(),
                dane::HostTlsa::Failed(o, bogus) => {
                    tracing::warn!(%domain, %host, "host skipped: {}", o.reply);
                    metrics::counter!("mailgate_dane_decisions_total", "decision" => "tlsa_failed").increment(1);
                    let result = if bogus {
                        mailgate_tlsrpt::ResultType::DnssecInvalid
                    } else {
                        mailgate_tlsrpt::ResultType::TlsaInvalid
                    };
                    let problem = client::TlsProblem::new(result, o.reply.text.to_string());
                    self.report(&report, &host, None, None, Some(&problem));
                    last_err = Some(o);
                    continue;
                }
            };
            targets.push(Target {
                host,
                addrs: addrs.into_iter().map(Peer::Tcp).collect(),
                policy: Some(policy),
                report: Some(report),
                audit: false,
            });
        }
        if targets.is_empty() {
            return Err(last_err.unwrap_or_else(|| {
                RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 4), "no usable MX host"), None)
            }));
        }
        Ok(Some(targets))
    }

    /// Applies the recipient domain's MTA-STS policy to an MX route (RFC 8461 §5): `enforce`
    /// keeps the MX hosts it names and requires TLS verified for them (with `delivery.ca_file`
    /// besides the public roots), and defers when no host is left; `testing` only logs what
    /// enforcement would skip. A route with `tls = "none"` is the operator's explicit choice
    /// and is left alone; a message with `TLS-Required: No` (`waived`) is delivered as if the
    /// domain had no policy (RFC 8689 §5). Returns the TLS policy and extra CA file to use.
    async fn mta_sts(
        &self,
        settings: &Settings,
        tls: TlsPolicy,
        domain: &str,
        hosts: &mut Vec<String>,
        waived: bool,
    ) -> Result<(TlsPolicy, Option<std::path::PathBuf>, Option<StsReport>), RcptOutcome> {
        if !settings.mta_sts || tls == TlsPolicy::None || domain.starts_with('[') {
            return Ok((tls, None, None));
        }
        let decision =
            |d: &'static str| metrics::counter!("mailgate_mta_sts_decisions_total", "decision" => d).increment(1);
        if waived {
            // RFC 8689 §5: delivered even where the policy would stop it; TLS still tried.
            decision("waived");
            tracing::info!(%domain, "MTA-STS not applied: the message says TLS-Required: No");
            return Ok((tls, None, None));
        }
        let Some(p) = self.sts.policy(&self.resolver, domain, settings.ca_file.as_deref()).await else {
            decision("none");
            return Ok((tls, None, None));
        };
        let report = Arc::new(mailgate_tlsrpt::PolicyRef {
            domain: domain.to_string(),
            kind: mailgate_tlsrpt::Kind::Sts,
            strings: p.render().lines().map(str::to_string).collect(),
            mx: p.mx.clone(),
        });
        match p.mode {
            mailgate_mtasts::Mode::Enforce => {
                let skipped: Vec<String> = hosts.iter().filter(|h| !p.matches(h)).cloned().collect();
                hosts.retain(|h| p.matches(h));
                if !skipped.is_empty() {
                    tracing::info!(%domain, skipped = %skipped.join(" "), "MTA-STS: MX hosts not in the policy skipped");
                    for h in &skipped {
                        let problem = client::TlsProblem::new(
                            mailgate_tlsrpt::ResultType::ValidationFailure,
                            "MX host not in the MTA-STS policy",
                        );
                        self.report(&report, h, None, None, Some(&problem));
                    }
                }
                if hosts.is_empty() {
                    decision("no_matching_mx");
                    return Err(RcptOutcome::new(
                        Status::Deferred,
                        Reply::new(
                            451,
                            Enhanced(4, 7, 5),
                            format!("MTA-STS: no MX host of {domain} matches its policy (mx: {})", p.mx.join(", ")),
                        ),
                        None,
                    ));
                }
                decision("enforce");
                Ok((TlsPolicy::Required, settings.ca_file.clone(), Some((report, false))))
            }
            mailgate_mtasts::Mode::Testing => {
                decision("testing");
                for h in hosts.iter().filter(|h| !p.matches(h)) {
                    tracing::info!(%domain, host = %h, "MTA-STS testing: the MX host is not in the policy (delivered anyway)");
                    let problem = client::TlsProblem::new(
                        mailgate_tlsrpt::ResultType::ValidationFailure,
                        "MX host not in the MTA-STS policy",
                    );
                    self.report(&report, h, None, None, Some(&problem));
                }
                Ok((tls, None, Some((report, true))))
            }
            mailgate_mtasts::Mode::None => {
                decision("none");
                Ok((tls, None, None))
            }
        }
    }

    /// Tries the targets in order until one takes the work (any reply to it counts); `Err` is
    /// the last host's failure when none did.
    async fn over(&self, plan: &Plan<'_>, work: Work<'_>) -> Result<Done, RcptOutcome> {
        let mut last =
            RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 1), "no host reachable"), None);
        let requiretls = matches!(work, Work::Deliver(m) if m.requiretls);
        for t in &plan.targets {
            let audit = match t.audit && self.reports.is_some() {
                true => self.tls.audit(self.settings().ca_file.as_deref()).ok(),
                false => None,
            };
            let hop = Hop {
                policy: t.policy.as_ref().unwrap_or(&plan.policy),
                auth: plan.auth,
                lmtp: plan.lmtp,
                requiretls,
                sources: plan.sources.as_deref(),
                audit: audit.as_ref(),
            };
            for addr in &t.addrs {
                match self.attempt(&t.host, addr, hop, &work, t.report.as_deref()).await {
                    Ok(done) => return Ok(done),
                    Err(o) => {
                        tracing::info!(queue_id = work.id(), host = %t.host, %addr, "attempt failed: {}", o.reply);
                        last = o;
                    }
                }
            }
        }
        last.connection_level = true;
        Err(last)
    }

    /// One host: a pooled connection when there is one (falling back to a fresh one if it has
    /// gone stale), then the work. `Err` means "try the next host".
    async fn attempt(
        &self,
        host: &str,
        addr: &Peer,
        hop: Hop<'_>,
        work: &Work<'_>,
        report: Option<&mailgate_tlsrpt::PolicyRef>,
    ) -> Result<Done, RcptOutcome> {
        // The host's own limits (`[shaping.hosts]`), across every destination it serves.
        let limiter = self.shaper.host(host);
        let _room = match &limiter {
            None => None,
            Some(l) => {
                if let Some(left) = l.paused() {
                    return Err(RcptOutcome::new(
                        Status::Deferred,
                        Reply::new(
                            451,
                            Enhanced(4, 4, 5),
                            format!("next hop {host} paused for {}s after connection failures", left.as_secs().max(1)),
                        ),
                        Some(host),
                    )
                    .not_before(left));
                }
                let room = match l.try_room() {
                    Some(p) => p,
                    None => l.room().await.ok_or_else(|| {
                        RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 5), "shutting down"), None)
                    })?,
                };
                let wait = l.token();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Some(room)
            }
        };
        let max = match (work.max_per_connection(), limiter.as_ref().and_then(|l| l.max_messages_per_connection())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = self.attempt_once(host, addr, hop, work, report, max).await;
        if let Some(l) = &limiter {
            l.record(result.is_err());
        }
        result
    }

    /// A connection that may serve another transaction goes back to the pool, unless it has
    /// carried `max` messages: then it is closed politely, before the attempt ends (and gives
    /// back its room), so that the next one's connection never overlaps it.
    async fn release(&self, key: pool::Key, conn: Conn, max: Option<u32>) {
        if !conn.reusable() {
            return;
        }
        if max.is_some_and(|m| conn.messages >= m) {
            let limit = self.settings().command_timeout.min(Duration::from_secs(10));
            conn.quit(limit).await;
        } else {
            self.pool.put(key, conn);
        }
    }

    async fn attempt_once(
        &self,
        host: &str,
        addr: &Peer,
        hop: Hop<'_>,
        work: &Work<'_>,
        report: Option<&mailgate_tlsrpt::PolicyRef>,
        max: Option<u32>,
    ) -> Result<Done, RcptOutcome> {
        let key = pool::Key {
            addr: addr.clone(),
            host: host.to_string(),
            policy: hop.policy.kind,
            lmtp: hop.lmtp,
            user: hop.auth.map(|a| a.username.clone()),
            sources: hop.sources.map(|s| s.name.clone()),
        };
        let settings = self.settings();
        if let Some(mut conn) = self.pool.take(&key, settings.idle_timeout) {
            match work.run(&mut conn, &settings).await {
                Ok(out) => {
                    self.release(key, conn, max).await;
                    return Ok(out);
                }
                Err(client::TxError::Stale) => {} // closed while idle: open a fresh one
                Err(client::TxError::Host(o)) => return Err(o),
            }
        }
        let ip = match addr {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix(_) => None,
        };
        let mut conn = match Conn::open(host, addr, hop, &settings).await {
            Ok(c) => {
                if let Some(policy) = report {
                    self.report(policy, host, ip, c.local_ip, c.tls_problem.as_ref());
                }
                c
            }
            Err(refused) => {
                // Only a session that failed at TLS counts (a host that could not be reached
                // made no TLS session to report on).
                if let (Some(policy), Some(problem)) = (report, &refused.tls) {
                    self.report(policy, host, ip, None, Some(problem));
                }
                return Err(refused.outcome);
            }
        };
        match work.run(&mut conn, &settings).await {
            Ok(out) => {
                self.release(key, conn, max).await;
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

/// The MTA-STS policy a delivery is reported under, and whether certificates are checked
/// after the fact (`testing` mode).
type StsReport = (Arc<mailgate_tlsrpt::PolicyRef>, bool);

/// What a recipient callout found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The next hop takes the recipient.
    Exists,
    /// It refused it permanently (its reply).
    Unknown(Reply),
    /// No answer to rely on: down, unreachable, or a temporary refusal.
    Unavailable(Reply),
}

/// Where an SMTP or LMTP route goes: candidate hosts in order, the TLS policy, credentials.
struct Plan<'r> {
    targets: Vec<Target>,
    policy: tls::Policy,
    auth: Option<&'r ClientAuth>,
    lmtp: bool,
    /// The route's source pool.
    sources: Option<Arc<source::Rotation>>,
}

/// What a connection is used for.
enum Work<'m> {
    Deliver(&'m Outbound<'m>),
    Probe(&'m str),
}

enum Done {
    Delivered(Vec<RcptOutcome>),
    Probed(Reply),
}

impl Work<'_> {
    fn max_per_connection(&self) -> Option<u32> {
        match self {
            Work::Deliver(m) => m.max_per_connection,
            Work::Probe(_) => None,
        }
    }

    fn id(&self) -> &str {
        match self {
            Work::Deliver(m) => m.id,
            Work::Probe(_) => "callout",
        }
    }

    async fn run(&self, conn: &mut Conn, s: &Settings) -> Result<Done, client::TxError> {
        match self {
            Work::Deliver(msg) => conn.transaction(msg, s).await.map(Done::Delivered),
            Work::Probe(rcpt) => conn.probe(rcpt, s).await.map(Done::Probed),
        }
    }
}
