//! The gateway's configuration: one typed model, read with figment from a TOML file plus
//! `MAILGATE_*` environment overrides (`__` separates nesting: `MAILGATE_LIMITS__MAX_RECIPIENTS`).
//! Unknown keys and bad values are errors that name the key.
//!
//! This crate owns the shape, defaults and validation of the config. It must not know how the
//! values are used: no sockets, no spool, no SMTP.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod auth;
mod maps;
mod plugin;
mod route;
mod shaping;
mod verify;
pub use auth::{ArcSeal, Auth, AuthCheck, DkimSign, SignFor};
pub use maps::{Aliases, Canonical};
pub use plugin::{parse_allowed_route, AllowedRoute, Grant, Mode, OnError, Plugin, Stage};
pub use route::{AuthMechanism, ClientAuth, Route, SecretError, Source, SourcePool, TlsPolicy};
pub use shaping::{Rate, Shape, Shaping};
pub use verify::{Verify, VerifyDomain};

/// The embedded default configuration (`config/mailgate.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../../config/mailgate.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    /// `[[listener]]` tables: where SMTP is accepted.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    pub tls: Tls,
    pub timeouts: Timeouts,
    pub relay: Relay,
    pub spool: Spool,
    pub queue: Queue,
    pub delivery: Delivery,
    pub dns: Dns,
    /// Route per recipient domain (lower case); `"*"` is the default route.
    pub routes: BTreeMap<String, Route>,
    pub admin: Admin,
    /// `[[plugin]]` tables: every plugin, in the order the plugins are asked.
    #[serde(rename = "plugin")]
    pub plugins: Vec<Plugin>,
    /// Named pipelines: an ordered list of plugin names each. `default` is every `[[plugin]]`
    /// in order unless defined here.
    pub pipelines: BTreeMap<String, Vec<String>>,
    /// Recipient domain (or parent domain) → pipeline. The first accepted RCPT's domain picks
    /// the transaction's pipeline; a later RCPT for another pipeline gets 452 4.5.3.
    pub domain_pipelines: BTreeMap<String, String>,
    pub log: Log,
    /// Mail authentication: the Authentication-Results header and its checks.
    pub auth: Auth,
    /// `[[dkim_sign]]` tables: the signing identities, first match wins.
    pub dkim_sign: Vec<DkimSign>,
    /// `[arc_seal]`: ARC-seal every accepted message (none: no sealing).
    pub arc_seal: Option<ArcSeal>,
    /// `[[api]]` tables: where the HTTP sending API is served (none: no API).
    #[serde(rename = "api")]
    pub apis: Vec<ApiListener>,
    pub events: Events,
    /// TLS reports (RFC 8460) to recipient domains that ask for them.
    pub tlsrpt: TlsRpt,
    /// How fast mail may leave for each destination.
    pub shaping: Shaping,
    /// `[[webhook]]` tables: receivers of the events (they turn events on).
    #[serde(rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    pub bounces: Bounces,
    pub submission: Submission,
    /// Recipient verification at RCPT (tables and callouts).
    pub verify: Verify,
    /// Virtual aliases, applied in cleanup after the canonical maps.
    pub aliases: Aliases,
    /// Canonical rewriting of sender and recipients, applied in cleanup.
    pub canonical: Canonical,
    /// `[[pool]]` tables: source addresses for outbound connections, picked by routes.
    #[serde(rename = "pool")]
    pub pools: Vec<SourcePool>,
}

/// What the gateway completes in messages from authenticated clients (SMTP AUTH or an API
/// key), as a message submission agent may (RFC 6409 §8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Submission {
    /// Add `Date:` when the message has none (§8.3).
    pub add_date: bool,
    /// Add `Message-ID:` (`<queue id>@<hostname>`) when the message has none (§8.3).
    pub add_message_id: bool,
    /// A unix socket where local programs submit by SMTP (`mailgate sendmail`); the peer's
    /// uid is its authenticated identity. `None`: no local submission.
    pub socket: Option<PathBuf>,
    /// Permissions of the socket: who on this host may submit (0666: everyone, as with
    /// sendmail; narrow it with a group).
    pub socket_mode: u32,
}

impl Default for Submission {
    fn default() -> Self {
        Submission { add_date: true, add_message_id: true, socket: None, socket_mode: 0o666 }
    }
}

/// Bounces that come back later for API messages, and the suppression list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounces {
    /// The domain of API messages' VERP return path (`<prefix>+<queue id>-<tag>@<domain>`),
    /// whose MX must be this gateway: bounces to it become events, not messages. None: API
    /// messages leave with the sender's address as return path.
    pub verp_domain: Option<String>,
    /// The return path's local-part prefix.
    pub verp_prefix: String,
    /// Suppress, per API key, recipients that bounced as unknown mailboxes or domains.
    pub suppress: bool,
}

impl Default for Bounces {
    fn default() -> Self {
        Bounces { verp_domain: None, verp_prefix: "bounces".into(), suppress: true }
    }
}

/// A receiver of events: POSTed in batches, signed as Standard Webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A name for logs, metrics and its cursor file (letters, digits, '-', '_').
    pub name: String,
    pub url: String,
    /// The event kinds it wants (`delivered`, `bounced`, …); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// The signing secret: `whsec_` and base64 (as Standard Webhooks tools make them), or text.
    pub secret: String,
    /// Events per POST at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Time for the receiver to answer one POST.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_batch() -> usize {
    100
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The event kinds a webhook may ask for.
pub const EVENT_KINDS: &[&str] = &[
    "received",
    "rejected",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "delay_notice",
    "quarantined",
    "released",
    "removed",
];

/// The event log (`<spool>/events/`): every message's and recipient's changes of state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Record events even without an `[[api]]` listener (with one, they are always recorded).
    pub enabled: bool,
}

/// TLS reporting (RFC 8460): the results of TLS sessions made under recipient domains'
/// MTA-STS and DANE policies, counted per domain and day (`<spool>/tlsrpt/`), and sent after
/// each UTC day to the domains whose `_smtp._tls` TXT record asks (mail or HTTPS).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRpt {
    /// Count and send (a restart is needed to turn it on or off).
    pub enabled: bool,
    /// The reports' `organization-name`; default `server.hostname`.
    pub organization: Option<String>,
    /// The reports' `contact-info`; default the postmaster address.
    pub contact: Option<String>,
    /// The From address of report messages; default the postmaster address.
    pub from: Option<String>,
}

impl Config {
    /// Whether events are recorded.
    pub fn events_on(&self) -> bool {
        self.events.enabled || !self.apis.is_empty() || !self.webhooks.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Our host name: in the greeting, EHLO reply, `Received:` and DSNs.
    pub hostname: String,
    /// Where `RCPT TO:<Postmaster>` (no domain, RFC 5321 §4.1.1.3) goes, an address delivered
    /// by the routes like any other. Unset: `postmaster@` the first `relay.accept_domains`
    /// entry (or the hostname).
    pub postmaster: Option<String>,
    /// The user the gateway runs as once its listeners are bound and its spool is open
    /// (started as root, it drops to this user for good; the spool is given to it).
    pub user: Option<String>,
    /// That user's group (default: the user's primary group).
    pub group: Option<String>,
    /// Stay root after start-up. Without `user` and without this, a gateway started as root
    /// refuses to run: an edge gateway parsing untrusted mail should not hold root.
    pub allow_root: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// A name for logs and (later) pipelines.
    pub name: String,
    pub address: SocketAddr,
    /// What the listener is for: `mx` (STARTTLS offered, AUTH optional), `submission`
    /// (STARTTLS before AUTH, AUTH before MAIL) or `submissions` (implicit TLS, then AUTH).
    #[serde(default)]
    pub role: Role,
    /// The pipeline for this listener's sessions (and recipients of no listed domain).
    #[serde(default = "default_pipeline")]
    pub pipeline: String,
}

fn default_pipeline() -> String {
    DEFAULT_PIPELINE.to_string()
}

/// The pipeline every listener uses unless it names another.
pub const DEFAULT_PIPELINE: &str = "default";

/// An HTTP listener of the sending API (`POST /api/v1/messages`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiListener {
    /// A name for logs; plugins see it as the listener.
    pub name: String,
    pub address: SocketAddr,
    /// Serve HTTPS with the `[tls]` certificate (plain HTTP otherwise: loopback or a proxy).
    #[serde(default)]
    pub tls: bool,
    /// The pipeline API messages pass: on-mail-from, on-rcpt per recipient, on-data.
    #[serde(default = "default_pipeline")]
    pub pipeline: String,
    /// Largest request body in octets. Unset: room for a message of `limits.max_message_size`
    /// sent base64-encoded in JSON (4/3 of it, plus 64 KiB).
    #[serde(default)]
    pub body_limit: Option<u64>,
    /// Time for one request, from its first octet to the answer's head (a slow or stalled
    /// client loses its request, not the server's capacity).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_api_connections")]
    pub max_connections: usize,
}

impl ApiListener {
    /// The body limit in effect (see [`ApiListener::body_limit`]).
    pub fn body_limit(&self, limits: &Limits) -> u64 {
        self.body_limit.unwrap_or(limits.max_message_size / 3 * 4 + (64 << 10))
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_api_connections() -> usize {
    512
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Mx,
    Submission,
    Submissions,
}

/// The server certificate for STARTTLS and implicit TLS (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Handshake time limit.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
    pub command_line: usize,
    /// Longest message line including CRLF (RFC 5321 §4.5.3.1.6).
    pub text_line: usize,
    /// Recipients per transaction; the next one gets 452 4.5.3.
    pub max_recipients: usize,
    /// Largest message in octets (advertised as SIZE; beyond it 552 5.3.4).
    pub max_message_size: u64,
    /// Concurrent SMTP sessions in total; beyond it 421 4.7.0.
    pub max_sessions: usize,
    /// Concurrent SMTP sessions from one client IP; beyond it 421 4.7.0.
    pub max_sessions_per_ip: usize,
    /// Concurrent SMTP sessions from one client network (IPv4 /24, IPv6 /64): a botnet slice
    /// or one provider's pool cannot take every slot; beyond it 421 4.7.0.
    pub max_sessions_per_net: usize,
    /// Percentage of `max_sessions` from which a new client makes room: the session stalled
    /// the longest (no command completed, no content for `timeouts.shed_idle`) is closed with
    /// 421 4.7.0, so slow or idle clients cannot lock good ones out.
    pub shed_at_percent: usize,
    /// Octets of message content held in memory at once, over every session and the queue's
    /// first-delivery copies. Beyond it a new DATA/BDAT gets 452 4.3.1 and the queue reads
    /// content back from the spool instead of keeping it.
    pub content_memory: usize,
    /// Slowest DATA/BDAT transfer tolerated, in octets per second, after `timeouts.data_grace`
    /// (Postfix's smtpd_min_data_rate); slower: 421 4.4.2.
    pub min_data_rate: u64,
    /// Bad commands in one session before it is closed with 421.
    pub max_errors: usize,
    /// Failed AUTH attempts from one client — an IPv4 address, an IPv6 /64 — per 10 minutes
    /// before 421 4.7.0.
    pub max_auth_failures: usize,
    /// Deepest MIME nesting (multiparts and embedded messages) the gateway will parse; a
    /// deeper message is refused with 554 5.6.0 before any plugin sees it.
    pub max_mime_depth: usize,
    /// Most MIME parts in one message (embedded messages' parts included); beyond: 554 5.6.0.
    pub max_mime_parts: usize,
    /// Most fields in the message's own header section; beyond: 554 5.6.0.
    pub max_header_fields: usize,
    /// Largest header section of the message, in octets; beyond: 554 5.6.0.
    pub max_header_size: usize,
    /// What to do with NUL octets in content: `refuse` (550 5.6.0, the default) or `strip`.
    /// A next hop that drops NULs could read `<CRLF>NUL.<CRLF>` as the end of data.
    pub nul_bytes: NulBytes,
}

/// See [`Limits::nul_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NulBytes {
    #[default]
    Refuse,
    Strip,
}

/// Server timeouts, RFC 5321 §4.5.3.2 (the minimums it recommends are the defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Waiting for the next command: for the whole command line, however it trickles in.
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    /// Waiting for each block of DATA/BDAT content.
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    /// Time a transfer gets before `limits.min_data_rate` applies.
    #[serde(with = "humantime_serde")]
    pub data_grace: Duration,
    /// How long a session must have made no progress before load shedding may close it.
    #[serde(with = "humantime_serde")]
    pub shed_idle: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Domains we take mail for from anyone (local or relay domains). Anything else only from
    /// trusted networks; otherwise 550 5.7.1.
    pub accept_domains: Vec<String>,
    /// Clients that may relay to any domain.
    pub trusted_networks: Vec<IpNet>,
    /// The separator of address extensions: with `"+"`, `user+tag@d` is also looked up as
    /// `user@d` (recipient verification). Empty: off.
    pub recipient_delimiter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spool {
    /// Directory of the spool (created if missing).
    pub path: PathBuf,
    /// Size at which the spool's active log segment is sealed and a new one started.
    pub segment_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Delay before each retry; the last one repeats until `max_age`.
    pub retry_schedule: Vec<humantime_serde::Serde<Duration>>,
    /// Age after which a message that still cannot be delivered is bounced.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// After this long still undelivered, the sender gets one delay notice for the recipients
    /// whose NOTIFY allows it (RFC 3461 DELAY); `0s` sends none.
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// Deliveries in flight at once, all destinations together.
    pub max_concurrent: usize,
    /// Deliveries in flight at once to one destination (next-hop domain or host).
    pub max_per_destination: usize,
    /// How long a quarantined message is kept for an operator before it is deleted (no DSN:
    /// the sender was told 250 and a quarantine is a local decision).
    #[serde(with = "humantime_serde")]
    pub quarantine_max_age: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Name we give in EHLO; defaults to `server.hostname`.
    pub helo_name: Option<String>,
    /// Port for MX deliveries (25; tests point it at a sink on another port).
    pub mx_port: u16,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout for each reply of the next hop (RFC 5321 §4.5.3.2 asks for minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Timeout for the reply to the final dot.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long an idle outbound connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// MTA-STS (RFC 8461) for MX routes: a recipient domain's `enforce` policy limits delivery
    /// to the MX hosts it names, over TLS verified for their names, never in plaintext.
    pub mta_sts: bool,
    /// More trust anchors (PEM) for verified TLS to MX hosts and for MTA-STS policy fetches,
    /// besides the public roots (a private PKI).
    pub ca_file: Option<PathBuf>,
    /// 8-bit content for a next hop without 8BITMIME: re-encoded (quoted-printable, base64)
    /// unless signed, always, or never (then bounced with 5.6.3).
    pub downgrade_8bit: Downgrade8bit,
    /// DANE for SMTP (RFC 7672) on MX routes: an MX host whose DNSSEC-signed zone publishes
    /// TLSA records for it gets TLS verified against them, never plaintext. Off by default:
    /// it needs name servers that pass DNSSEC records (`[dns]`), which the gateway validates
    /// itself from `dns.trust_anchor`.
    pub dane: bool,
}

/// When 8-bit bodies are re-encoded for a 7-bit next hop (RFC 6152).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Downgrade8bit {
    /// Unless the message carries a DKIM or ARC signature (re-encoding would break it: such a
    /// message is bounced rather than delivered with a broken signature).
    #[default]
    Unsigned,
    Always,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers to ask (ip:port); empty means the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub attempts: usize,
    /// DNSSEC trust anchors for DANE's validation: a file of DNSKEY records (a private signed
    /// zone's key, say); none: the root zone's keys, built in.
    pub trust_anchor: Option<PathBuf>,
    /// Answers the resolver keeps (hickory counts answers, not bytes, and a 64 KiB answer of
    /// small records takes ~0.8 MiB parsed: the names come from senders, so this bounds the
    /// memory a sender can make the cache hold — 256 × 0.8 MiB at worst). The answers the
    /// checks use most (SPF's TXT, DKIM keys, DMARC policies) have byte-bounded caches of
    /// their own; a larger cache belongs in a local caching resolver.
    pub cache_entries: u64,
}

/// The operator's HTTP endpoint: Prometheus metrics at `/metrics` (more with the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Loopback address to serve on; absent: no admin endpoint.
    pub listen: Option<SocketAddr>,
    /// When set, `POST /reload` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `mailgate=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Tls {
    fn default() -> Self {
        Tls { cert: None, key: None, handshake_timeout: Duration::from_secs(30) }
    }
}
impl Default for Server {
    fn default() -> Self {
        Server { hostname: "localhost".into(), postmaster: None, user: None, group: None, allow_root: false }
    }
}
impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_line: 512,
            text_line: 1000,
            max_recipients: 100,
            max_message_size: 25 << 20,
            max_sessions: 1000,
            max_sessions_per_ip: 50,
            max_sessions_per_net: 200,
            shed_at_percent: 90,
            min_data_rate: 500,
            content_memory: 512 << 20,
            max_errors: 20,
            max_auth_failures: 5,
            max_mime_depth: 50,
            max_mime_parts: 5000,
            max_header_fields: 1000,
            max_header_size: 512 << 10,
            nul_bytes: NulBytes::Refuse,
        }
    }
}
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            data_block: Duration::from_secs(180),
            data_grace: Duration::from_secs(30),
            shed_idle: Duration::from_secs(10),
        }
    }
}
impl Default for Relay {
    fn default() -> Self {
        Relay {
            accept_domains: vec![],
            trusted_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            recipient_delimiter: String::new(),
        }
    }
}
impl Default for Spool {
    fn default() -> Self {
        Spool { path: "var/spool".into(), segment_size: 64 << 20 }
    }
}
impl Default for Queue {
    fn default() -> Self {
        // Like Postfix: start at 5 minutes, double, cap at about an hour; bounce after 5 days.
        let schedule = [300, 600, 1200, 2400, 4000].map(|s| humantime_serde::Serde::from(Duration::from_secs(s)));
        Queue {
            retry_schedule: schedule.to_vec(),
            max_age: Duration::from_secs(5 * 86400),
            delay_warning: Duration::from_secs(4 * 3600),
            max_concurrent: 200,
            max_per_destination: 20,
            quarantine_max_age: Duration::from_secs(30 * 86400),
        }
    }
}
impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            helo_name: None,
            mx_port: 25,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(10),
            mta_sts: true,
            ca_file: None,
            dane: false,
            downgrade_8bit: Downgrade8bit::Unsigned,
        }
    }
}
impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: vec![],
            timeout: Duration::from_secs(5),
            attempts: 2,
            trust_anchor: None,
            cache_entries: 256,
        }
    }
}
impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Text, level: "info".into() }
    }
}

/// A configuration that could not be loaded; the text names the key and the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads `file` (or the embedded default when `None`) with `MAILGATE_*` overrides, then
    /// validates it.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env = Env::prefixed("MAILGATE_").split("__");
        Self::load_with(file, env)
    }

    /// Like [`Config::load`] without the environment: for tests that run many gateways.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    fn load_with(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let base = Figment::from(Serialized::defaults(Config::default()));
        let fig = match file {
            Some(f) => {
                if !f.exists() {
                    return Err(ConfigError::Invalid(vec![format!("config file {} does not exist", f.display())]));
                }
                base.merge(Toml::file_exact(f))
            }
            None => base.merge(Toml::string(DEFAULT_TOML)),
        };
        Self::extract(fig.merge(env))
    }

    fn extract(fig: Figment) -> Result<Config, ConfigError> {
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        cfg.canonical_domains();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes every domain the lookups compare with in one form (see [`canonical_domain`]),
    /// so that `müller.example` in the config matches `xn--mller-kva.example` in a command.
    fn canonical_domains(&mut self) {
        fn keys<T>(t: &mut BTreeMap<String, T>) {
            *t = std::mem::take(t).into_iter().map(|(k, v)| (canonical_domain(&k), v)).collect();
        }
        keys(&mut self.routes);
        keys(&mut self.domain_pipelines);
        keys(&mut self.verify.domains);
        for map in [&mut self.shaping.domains, &mut self.shaping.hosts] {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| match k.strip_prefix("*.") {
                    Some(rest) => (format!("*.{}", canonical_domain(rest)), v),
                    None => (canonical_domain(&k), v),
                })
                .collect();
        }
        for d in &mut self.relay.accept_domains {
            *d = match d.strip_prefix('.') {
                Some(rest) => format!(".{}", canonical_domain(rest)),
                None => canonical_domain(d),
            };
        }
    }

    /// Checks what serde cannot: cross-field rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = vec![];
        if self.listeners.is_empty() {
            errs.push("listener: at least one [[listener]] is required".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                errs.push(format!("listener.name: duplicate listener name {:?}", l.name));
            }
            if l.role != Role::Mx && (self.tls.cert.is_none() || self.tls.key.is_none()) {
                errs.push(format!("listener {}: role {:?} needs [tls] cert and key", l.name, l.role).to_lowercase());
            }
        }
        for (key, f) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("delivery.ca_file", &self.delivery.ca_file),
            ("dns.trust_anchor", &self.dns.trust_anchor),
        ] {
            if let Some(f) = f {
                if !f.is_file() {
                    errs.push(format!("{key}: {}: no such file", f.display()));
                }
            }
        }
        if self.admin.listen.is_some_and(|a| !a.ip().is_loopback()) {
            errs.push("admin.listen: must be a loopback address (the endpoint has no authentication yet)".into());
        }
        for (i, d) in self.dkim_sign.iter().enumerate() {
            if !d.key.is_file() {
                errs.push(format!("dkim_sign[{i}].key: {}: no such file", d.key.display()));
            }
            if d.domain.is_empty() || d.selector.is_empty() || !d.headers.iter().any(|h| h.eq_ignore_ascii_case("from"))
            {
                errs.push(format!("dkim_sign[{i}]: domain and selector are required, and headers must include From"));
            }
        }
        if let Some(a) = &self.arc_seal {
            if !a.key.is_file() {
                errs.push(format!("arc_seal.key: {}: no such file", a.key.display()));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            errs.push("tls: cert and key go together".into());
        }
        if self.limits.command_line < 512 {
            errs.push("limits.command_line: must be at least 512 (RFC 5321)".into());
        }
        if self.limits.text_line < 1000 {
            errs.push("limits.text_line: must be at least 1000 (RFC 5321)".into());
        }
        for (key, v) in [
            ("limits.max_recipients", self.limits.max_recipients),
            ("limits.max_sessions", self.limits.max_sessions),
            ("limits.max_sessions_per_ip", self.limits.max_sessions_per_ip),
            ("queue.max_concurrent", self.queue.max_concurrent),
            ("queue.max_per_destination", self.queue.max_per_destination),
        ] {
            if v == 0 {
                errs.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.queue.retry_schedule.is_empty() {
            errs.push("queue.retry_schedule: needs at least one delay".into());
        }
        let mut pool_names = std::collections::HashSet::new();
        for p in &self.pools {
            if p.name.is_empty() || !pool_names.insert(&p.name) {
                errs.push(format!("pool.name: {:?} is empty or used twice", p.name));
            }
            if p.sources.is_empty() || p.sources.iter().any(|s| s.weight == 0) {
                errs.push(format!("pool {}: needs sources, each with a weight above 0", p.name));
            }
        }
        for (domain, route) in &self.routes {
            if let Some(p) = route.pool().filter(|p| !self.pools.iter().any(|x| x.name == *p)) {
                errs.push(format!("routes.{domain}: no [[pool]] named {p:?}"));
            }
            if domain != "*" && !domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
                errs.push(format!("routes.{domain}: not a domain name or \"*\""));
            }
            if let Err(e) = route.validate() {
                errs.push(format!("routes.{domain}: {e}"));
            }
        }
        let mut plugin_names = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if !plugin_names.insert(&p.name) {
                errs.push(format!("plugin[{i}].name: duplicate plugin name {:?}", p.name));
            }
            if let Err(e) = p.validate() {
                errs.push(format!("plugin[{i}] ({}).{e}", p.name));
            }
        }
        let known = |name: &str| name == DEFAULT_PIPELINE || self.pipelines.contains_key(name);
        for (name, list) in &self.pipelines {
            let mut seen = std::collections::HashSet::new();
            for p in list {
                if !self.plugins.iter().any(|x| &x.name == p) {
                    errs.push(format!("pipelines.{name}: unknown plugin {p:?}"));
                }
                if !seen.insert(p) {
                    errs.push(format!("pipelines.{name}: plugin {p:?} listed twice"));
                }
            }
        }
        for l in &self.listeners {
            if !known(&l.pipeline) {
                errs.push(format!("listener {}: unknown pipeline {:?}", l.name, l.pipeline));
            }
        }
        let prefix_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
        if self.bounces.verp_prefix.is_empty() || !self.bounces.verp_prefix.chars().all(prefix_ok) {
            errs.push("bounces.verp_prefix: letters, digits, '-', '_', '.' only, not empty".into());
        }
        if let Some(d) = &self.bounces.verp_domain {
            if d.is_empty() || d.contains(['@', ' ']) {
                errs.push(format!("bounces.verp_domain: {d:?} is not a domain"));
            }
            if !self.events_on() {
                errs.push("bounces.verp_domain: needs events (an [[api]] listener or [events] enabled)".into());
            }
        }
        let mut hooks = std::collections::HashSet::new();
        for w in &self.webhooks {
            let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if w.name.is_empty() || !w.name.chars().all(ok) || !hooks.insert(&w.name) {
                errs.push(format!("webhook.name: {:?} is empty, has other characters than letters, digits, '-', '_', or is used twice", w.name));
            }
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                errs.push(format!("webhook {}: url must be http:// or https://", w.name));
            }
            if let Some(k) = w.events.iter().find(|k| !EVENT_KINDS.contains(&k.as_str())) {
                errs.push(format!("webhook {}: unknown event kind {k:?} (one of {})", w.name, EVENT_KINDS.join(", ")));
            }
            if w.secret.len() < 16 || w.batch_size == 0 || w.timeout.is_zero() {
                errs.push(format!(
                    "webhook {}: secret needs 16 characters at least; batch_size and timeout above 0",
                    w.name
                ));
            }
        }
        for a in &self.apis {
            if !names.insert(&a.name) {
                errs.push(format!("api.name: duplicate listener name {:?}", a.name));
            }
            if !known(&a.pipeline) {
                errs.push(format!("api {}: unknown pipeline {:?}", a.name, a.pipeline));
            }
            if a.tls && (self.tls.cert.is_none() || self.tls.key.is_none()) {
                errs.push(format!("api {}: tls = true needs [tls] cert and key", a.name));
            }
            if a.max_connections == 0 || a.request_timeout.is_zero() || a.body_limit == Some(0) {
                errs.push(format!("api {}: max_connections, request_timeout and body_limit must be above 0", a.name));
            }
        }
        for (domain, v) in &self.verify.domains {
            if v.table.is_some() == v.callout {
                errs.push(format!("verify.domains.{domain}: give either table or callout = true"));
            }
            if v.callout
                && !matches!(
                    self.route_for(domain),
                    Some(Route::Smarthost { .. } | Route::Lmtp { .. } | Route::Mx { .. })
                )
            {
                errs.push(format!("verify.domains.{domain}: callout needs a smarthost, lmtp or mx route to ask"));
            }
            if let Some(t) = v.table.as_ref().filter(|t| !t.is_file()) {
                errs.push(format!("verify.domains.{domain}: table {}: no such file", t.display()));
            }
        }
        for (key, t) in [
            ("aliases.table", &self.aliases.table),
            ("canonical.sender_table", &self.canonical.sender_table),
            ("canonical.recipient_table", &self.canonical.recipient_table),
        ] {
            if let Some(t) = t.as_ref().filter(|t| !t.is_file()) {
                errs.push(format!("{key}: {}: no such file", t.display()));
            }
        }
        if self.verify.max_concurrent == 0 || self.verify.timeout.is_zero() {
            errs.push("verify: max_concurrent and timeout must be above 0".into());
        }
        if self.relay.recipient_delimiter.contains(['@', ' ']) {
            errs.push("relay.recipient_delimiter: must not contain '@' or spaces".into());
        }
        for (domain, p) in &self.domain_pipelines {
            if !known(p) {
                errs.push(format!("domain_pipelines.{domain}: unknown pipeline {p:?}"));
            }
        }
        errs.extend(self.shaping.errors());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// The route for a recipient domain: exact match, then each parent domain, then `"*"`.
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        by_domain(&self.routes, domain).or_else(|| self.routes.get("*"))
    }

    /// The plugin names of a pipeline, in order.
    pub fn pipeline(&self, name: &str) -> Vec<String> {
        match self.pipelines.get(name) {
            Some(list) => list.clone(),
            None => self.plugins.iter().map(|p| p.name.clone()).collect(),
        }
    }

    /// The pipeline a recipient domain selects (exact, then parent domains), if any.
    pub fn pipeline_for_domain(&self, domain: &str) -> Option<&str> {
        by_domain(&self.domain_pipelines, domain).map(String::as_str)
    }

    /// Whether mail for `domain` is taken from any client.
    pub fn accepts_domain(&self, domain: &str) -> bool {
        let domain = canonical_domain(domain);
        self.relay.accept_domains.contains(&domain)
    }

    /// Whether `ip` may relay to any domain.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.relay.trusted_networks.iter().any(|n| n.contains(&ip))
    }

    /// The address `<Postmaster>` stands for (see [`Server::postmaster`]).
    pub fn postmaster(&self) -> String {
        match &self.server.postmaster {
            Some(a) => a.clone(),
            None => format!(
                "postmaster@{}",
                self.relay.accept_domains.first().map_or(self.server.hostname.as_str(), |d| d.trim_start_matches('.'))
            ),
        }
    }

    pub fn helo_name(&self) -> &str {
        self.delivery.helo_name.as_deref().unwrap_or(&self.server.hostname)
    }
}

/// Looks a domain up in a per-domain table: exact match, then each parent domain.
/// A domain in the one form every lookup uses: no trailing dot, lower case, and an
/// internationalised domain as its A-labels (`müller.example` → `xn--mller-kva.example`,
/// UTS #46). A name that does not convert is only lower-cased (it then matches nothing else).
pub fn canonical_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.');
    if d.is_ascii() && !d.split('.').any(|l| l.len() > 4 && l[..4].eq_ignore_ascii_case("xn--")) {
        return d.to_ascii_lowercase();
    }
    idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_lowercase())
}

fn by_domain<'a, T>(table: &'a BTreeMap<String, T>, domain: &str) -> Option<&'a T> {
    if table.is_empty() {
        // The common case (no per-domain entries), asked several times a message.
        return None;
    }
    let domain = canonical_domain(domain);
    let mut d = domain.as_str();
    loop {
        if let Some(v) = table.get(d) {
            return Some(v);
        }
        d = d.split_once('.')?.1;
    }
}

#[cfg(test)]
mod tests;
