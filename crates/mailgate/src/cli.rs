//! The `mailgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailgate_config::{Config, LogFormat};

use crate::Gateway;

#[derive(Parser)]
#[command(name = "mailgate", version, about = "SMTP edge gateway with WebAssembly policy plugins")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the embedded default config when --config is not given).
    Serve {
        /// The config file (default: the embedded one); commands find the gateway by its
        /// admin.listen.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The queue of the running gateway (through its admin endpoint).
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Listeners, plugins (with fingerprints) and a queue summary of the running gateway.
    Status {
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running gateway (its admin endpoint, from the same config) to reload.
    Reload {
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Read a password from stdin and print its argon2id hash (for auth-static's `users`).
    HashPassword,
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        cmd: DkimCmd,
    },
    /// The DNS records a deployment needs, from its configuration and keys; and a check of
    /// what is published.
    Dns {
        #[command(subcommand)]
        cmd: DnsCmd,
    },
    /// Quarantined messages of the running gateway (through its admin endpoint).
    Quarantine {
        #[command(subcommand)]
        cmd: QuarantineCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// The spam plugin's model: train it from a corpus, measure the plugin on held-out mail.
    Spam {
        #[command(subcommand)]
        cmd: SpamCmd,
    },
    /// The event log of the running gateway (through its admin endpoint).
    Events {
        #[command(subcommand)]
        cmd: EventsCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Recipients the sending API does not send to any more for a key, because they bounced
    /// for good (through the admin endpoint).
    Suppression {
        #[command(subcommand)]
        cmd: SuppressionCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Submit a message read on stdin, as sendmail does (`mailgate sendmail -f S -t -i R…`;
    /// also when the binary is called `sendmail`), over the gateway's local socket.
    Sendmail {
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// TLS reports (RFC 8460) of the running gateway: preview a day's (today's so far), or
    /// send a day's now (through its admin endpoint).
    Tlsrpt {
        #[command(subcommand)]
        cmd: TlsrptCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Keys of the HTTP sending API (kept as hashes in the spool directory).
    ApiKey {
        #[command(subcommand)]
        cmd: ApiKeyCmd,
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

impl Cmd {
    /// The `--config` of a command that reaches the running gateway (or its spool).
    fn admin_config(&mut self) -> Option<&mut Option<PathBuf>> {
        match self {
            Cmd::Queue { config, .. }
            | Cmd::Status { config, .. }
            | Cmd::Reload { config }
            | Cmd::Quarantine { config, .. }
            | Cmd::Events { config, .. }
            | Cmd::Suppression { config, .. }
            | Cmd::ApiKey { config, .. }
            | Cmd::Tlsrpt { config, .. } => Some(config),
            _ => None,
        }
    }
}

#[derive(Subcommand)]
enum TlsrptCmd {
    /// The reports as they stand (RFC 8460 JSON).
    Show {
        /// Only this recipient domain's.
        #[arg(long)]
        domain: Option<String>,
        /// A UTC day (YYYY-MM-DD); default today.
        #[arg(long)]
        day: Option<String>,
    },
    /// Send a day's reports now to the domains that ask for them (they are sent by
    /// themselves after each UTC day).
    Send {
        /// A UTC day (YYYY-MM-DD); default today.
        #[arg(long)]
        day: Option<String>,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Print events after a cursor; with --follow, keep printing new ones.
    Tail {
        /// The cursor (an event's seq) to start after; 0: the oldest kept.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing new events as they come.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// The suppressed recipients (of one key, with --key).
    List {
        #[arg(long)]
        key: Option<String>,
    },
    /// Let the key send to the address again.
    Remove {
        #[arg(long)]
        key: String,
        address: String,
    },
}

#[derive(Subcommand)]
enum ApiKeyCmd {
    /// Make a key and print it (only this once).
    Create {
        #[arg(long)]
        name: String,
        /// A sender domain the key may use (repeatable; none: any domain).
        #[arg(long = "allow-from")]
        allow_from: Vec<String>,
        /// Messages per minute: N, N/min, N/s or N/h (none: no limit).
        #[arg(long, value_parser = crate::api_cli::parse_rate)]
        rate: Option<u32>,
        /// The `[[pool]]` of source addresses the key's mail leaves from (none: the route's).
        #[arg(long)]
        pool: Option<String>,
    },
    /// The keys (names, prefixes, senders, rates, state).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working within a second.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Write a new private key (PEM, mode 0600) and print the DNS TXT record to publish.
    Keygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// rsa (2048 bits) or ed25519.
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Where to write the key.
        #[arg(long, short)]
        out: PathBuf,
    },
}

/// What both `dns` commands work from.
#[derive(clap::Args)]
struct DnsTarget {
    #[arg(long)]
    domain: String,
    /// The gateway's public addresses (A/AAAA of its name; mail leaves from them too,
    /// besides the [[pool]] sources). Repeatable.
    #[arg(long = "ip")]
    ips: Vec<std::net::IpAddr>,
    /// The config file (default: the embedded one).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Print every record the domain needs, as zone-file lines saying what each is for: MX,
    /// SPF, DKIM, DMARC, MTA-STS (and the policy to serve), TLS-RPT, PTR, TLSA.
    Records {
        #[command(flatten)]
        target: DnsTarget,
    },
    /// Look the records up through the configured resolver and report what is missing or
    /// wrong, with the fix; exit 1 when something is.
    Check {
        #[command(flatten)]
        target: DnsTarget,
        /// More trust anchors (PEM) for fetching the MTA-STS policy, e.g. a private CA.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// Quarantined messages with their reasons.
    List,
    /// One message: envelope, reason and header.
    Show { id: String },
    /// Release it: it is queued for delivery as if accepted now.
    Release { id: String },
    /// Delete it without delivery and without a DSN.
    Delete { id: String },
}

#[derive(Subcommand)]
enum SpamCmd {
    /// Build a model (a data table for the spam plugin's `data.model`) from directories of
    /// messages, one message per file (an mbox `From ` first line is skipped).
    Train {
        /// A directory of spam messages (repeatable).
        #[arg(long, required = true)]
        spam: Vec<PathBuf>,
        /// A directory of ham messages (repeatable).
        #[arg(long, required = true)]
        ham: Vec<PathBuf>,
        /// Where to write the model.
        #[arg(long, short)]
        out: PathBuf,
        /// Keep tokens seen in at least this many messages.
        #[arg(long, default_value_t = 2)]
        min_count: u32,
    },
    /// Run the spam plugin over labelled messages and print precision, recall, F1 and cost.
    Eval {
        /// The spam plugin component.
        #[arg(long, default_value = "plugins/dist/spam.wasm")]
        wasm: PathBuf,
        /// The model that `spam train` wrote.
        #[arg(long)]
        model: PathBuf,
        /// The plugin's config table as TOML text, e.g. 'quarantine_at = 5.0'.
        #[arg(long)]
        config: Option<String>,
        #[arg(long, required = true)]
        spam: Vec<PathBuf>,
        #[arg(long, required = true)]
        ham: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Queued messages, one line each, with why they wait.
    List {
        /// Only messages with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// active, deferred or held.
        #[arg(long)]
        state: Option<String>,
    },
    /// One message: envelope, state, each recipient's last reply.
    Show { id: String },
    /// Try now (one message, or --all).
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Drop without a DSN.
    Remove { id: String },
    /// Fail the pending recipients now, with a DSN to the sender.
    Bounce { id: String },
    /// Keep it queued without trying until released (survives restarts).
    Hold { id: String },
    /// Let a held message be tried again.
    Release { id: String },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Say whether a file is a component satisfying the mailgate:plugin/filter world.
    Check { wasm: PathBuf },
    /// Run one plugin through a simulated transaction (no network) and print each stage.
    Test {
        wasm: PathBuf,
        /// The message (an .eml file; LF line ends are made CRLF).
        #[arg(long)]
        eml: Option<PathBuf>,
        #[arg(long, default_value = "sender@example.test")]
        from: String,
        #[arg(long, required = true)]
        rcpt: Vec<String>,
        #[arg(long, default_value = "client.example.test")]
        helo: String,
        #[arg(long, default_value = "192.0.2.10")]
        client_ip: String,
        /// The plugin's config table as TOML, e.g. 'domains = ["example.test"]'.
        #[arg(long)]
        config: Option<String>,
        /// Capabilities to grant: dns, kv.
        #[arg(long, value_parser = parse_grant)]
        grant: Vec<mailgate_config::Grant>,
    },
}

/// Reads what the config names besides itself — address maps and recipient tables — as a
/// start would, so a loop or a bad table line fails the check.
fn tables(cfg: Config) -> Result<Config, mailgate_config::ConfigError> {
    let mut errs = vec![];
    if let Err(e) = mailgate_cleanup::Maps::load(&cfg) {
        errs.push(format!("address maps: {e}"));
    }
    if let Err(e) = mailgate_verify::Verifier::new(&cfg) {
        errs.push(format!("verify: {e}"));
    }
    if let Some(path) = &cfg.dns.trust_anchor {
        if let Err(e) = mailgate_delivery::read_trust_anchor(path) {
            errs.push(e.to_string());
        }
    }
    // Each plugin is compiled and its init run with its config, as the gateway will.
    if !cfg.plugins.is_empty() {
        let kv = std::sync::Arc::new(mailgate_plugin_host::MemoryKv::new(10_000));
        match mailgate_plugin_host::Plugins::load(&cfg, None, kv) {
            Err(e) => errs.push(format!("plugins: {e}")),
            Ok(plugins) => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                for (name, why) in rt.block_on(plugins.check_init()) {
                    errs.push(format!("plugin {name}: init failed: {why}"));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(cfg)
    } else {
        Err(mailgate_config::ConfigError::Invalid(errs))
    }
}

/// argon2id with the crate's (OWASP-recommended) parameters and a random 16-octet salt.
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Prints an admin API answer: the JSON with `--json`, otherwise its human form.
fn print_result(r: Result<String, String>, json: bool) -> ExitCode {
    match r {
        Ok(body) => {
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) if json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
                Ok(v) => print!("{}", crate::cli_output::human(&v)),
                Err(_) => println!("{body}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// `mailgate events tail`: pages through the admin endpoint's `/events`; following, asks again
/// every second when nothing new came.
fn events_tail(config: Option<&std::path::Path>, mut since: u64, follow: bool, json: bool) -> ExitCode {
    loop {
        let page = match admin_request(config, "GET", &format!("/events?since={since}&limit=1000")) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("mailgate events: {e}");
                return ExitCode::from(1);
            }
        };
        let v: serde_json::Value = serde_json::from_str(&page).unwrap_or_default();
        let events = v["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            if json {
                println!("{e}");
            } else {
                println!(
                    "{:>8}  {}  {:<11} {}  {}  {}",
                    e["seq"],
                    e["at"],
                    e["kind"].as_str().unwrap_or(""),
                    e["queue_id"].as_str().unwrap_or(""),
                    e["recipient"].as_str().unwrap_or(e["sender"].as_str().unwrap_or("")),
                    e["reply"].as_str().or(e["detail"].as_str()).unwrap_or("")
                );
            }
        }
        since = v["next"].as_u64().unwrap_or(since);
        if events.is_empty() {
            if !follow {
                return ExitCode::SUCCESS;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// A request to the admin endpoint named by the config file (read leniently: for a reload
/// the new file may be the broken one, and the gateway is the one to say so).
fn admin_request(file: Option<&std::path::Path>, method: &str, path: &str) -> Result<String, String> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        None => mailgate_config::DEFAULT_TOML.to_string(),
    };
    let table = toml::from_str::<toml::Table>(&text).unwrap_or_default();
    let admin = table.get("admin").and_then(|a| a.as_table());
    let get = |k: &str| admin.and_then(|a| a.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let listen: Option<std::net::SocketAddr> = get("listen").and_then(|l| l.parse().ok());
    let addr = listen.ok_or("the config has no [admin] listen address to reach the gateway")?;
    // reqwest's TLS is built without a crypto provider (the workspace's is ring); plain HTTP
    // needs none, but the client is only built with one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}{path}");
    let mut req = match method {
        "POST" => client.post(&url),
        _ => client.get(&url),
    };
    if let Some(t) = get("token") {
        req = req.bearer_auth(t);
    }
    let resp = req.send().map_err(|e| format!("{addr}: {e}"))?;
    let ok = resp.status().is_success();
    let body = resp.text().map_err(|e| format!("{addr}: {e}"))?;
    if ok {
        Ok(body.trim().to_string())
    } else {
        Err(body.trim().to_string())
    }
}

/// Percent-encodes a query value (every octet but the unreserved ones, RFC 3986 §2.3).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_grant(s: &str) -> Result<mailgate_config::Grant, String> {
    match s {
        "dns" => Ok(mailgate_config::Grant::Dns),
        "kv" => Ok(mailgate_config::Grant::Kv),
        _ => Err(format!("unknown grant {s:?} (dns, kv)")),
    }
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Load and validate a config; exit 1 with the errors.
    Check {
        /// The config file (default: /etc/mailgate/mailgate.toml when it exists, else the
        /// embedded one); commands find the gateway by its admin.listen.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

fn init_logs(cfg: &Config) {
    // rustls warns about every client that sends an IP address as SNI (many do): not an
    // operator's concern at the default level, so its handshake module says only errors
    // unless the level names rustls itself.
    let level = match cfg.log.level.contains("rustls") {
        true => cfg.log.level.clone(),
        false => format!("{},rustls::msgs::handshake=error", cfg.log.level),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => b.json().try_init(),
        // Under systemd: journald's priority prefix, its timestamps rather than ours.
        LogFormat::Text if crate::service::stderr_is_journal() => b
            .fmt_fields(crate::logfmt::text_fields())
            .with_ansi(false)
            .event_format(crate::service::Journald(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .try_init(),
        LogFormat::Text => b.fmt_fields(crate::logfmt::text_fields()).try_init(),
    };
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    // sendmail's command line is its own (`-oi`, `-fsender`): read before clap sees it.
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let called = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    if called == "sendmail" {
        return crate::sendmail::main(&argv[1..]);
    }
    if argv.get(1).map(String::as_str) == Some("sendmail") {
        return crate::sendmail::main(&argv[2..]);
    }
    let mut cli = Cli::parse();
    // The commands that talk to a running gateway find it by the system's config when none
    // is named (as `sendmail` does): on a packaged system that is the one it runs with.
    if let Some(slot @ None) = cli.cmd.admin_config() {
        *slot = Some(PathBuf::from(crate::sendmail::SYSTEM_CONFIG)).filter(|p| p.is_file());
    }
    match cli.cmd {
        Cmd::Sendmail { args } => crate::sendmail::main(&args),
        Cmd::Config { cmd: ConfigCmd::Default } => {
            print!("{}", mailgate_config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::Config { cmd: ConfigCmd::Check { config } } => match Config::load(config.as_deref()).and_then(tables) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Queue { cmd, config, json } => {
            let (method, path) = match &cmd {
                QueueCmd::List { domain, state } => {
                    let mut q = vec![];
                    if let Some(d) = domain {
                        q.push(format!("domain={d}"));
                    }
                    if let Some(s) = state {
                        q.push(format!("state={s}"));
                    }
                    ("GET", format!("/queue?{}", q.join("&")))
                }
                QueueCmd::Show { id } => ("GET", format!("/queue/{id}")),
                QueueCmd::Retry { all: true, .. } => ("POST", "/queue/retry-all".to_string()),
                QueueCmd::Retry { id: Some(id), .. } => ("POST", format!("/queue/{id}/retry")),
                QueueCmd::Retry { .. } => {
                    eprintln!("queue retry: give an ID or --all");
                    return ExitCode::from(2);
                }
                QueueCmd::Remove { id } => ("POST", format!("/queue/{id}/remove")),
                QueueCmd::Bounce { id } => ("POST", format!("/queue/{id}/bounce")),
                QueueCmd::Hold { id } => ("POST", format!("/queue/{id}/hold")),
                QueueCmd::Release { id } => ("POST", format!("/queue/{id}/release")),
            };
            print_result(admin_request(config.as_deref(), method, &path), json)
        }
        Cmd::Status { config, json } => print_result(admin_request(config.as_deref(), "GET", "/status"), json),
        Cmd::Reload { config } => match admin_request(config.as_deref(), "POST", "/reload") {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mailgate reload: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::HashPassword => {
            // From stdin, never argv: the password stays out of `ps` and shell history.
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim_end_matches(['\r', '\n']).is_empty() {
                eprintln!("hash-password: give the password on stdin");
                return ExitCode::from(1);
            }
            match hash_password(line.trim_end_matches(['\r', '\n'])) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hash-password: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Plugin { cmd: PluginCmd::Check { wasm } } => match crate::plugin_cli::check(&wasm) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: does not satisfy the plugin world: {e}", wasm.display());
                ExitCode::from(1)
            }
        },
        Cmd::Plugin { cmd: PluginCmd::Test { wasm, eml, from, rcpt, helo, client_ip, config, grant } } => {
            let _ = tracing_subscriber::fmt()
                .fmt_fields(crate::logfmt::text_fields())
                .with_env_filter("warn")
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .try_init();
            let run =
                crate::plugin_cli::TestRun { wasm, eml, from, rcpts: rcpt, helo, client_ip, config, grants: grant };
            let rt = runtime().expect("runtime");
            match rt.block_on(crate::plugin_cli::test(run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("plugin test: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Dns { cmd: DnsCmd::Records { target: t } } => {
            crate::dns_cli::records_command(t.config.as_deref(), &t.domain, &t.ips)
        }
        Cmd::Dns { cmd: DnsCmd::Check { target: t, ca_file } } => {
            crate::dns_cli::check_command(t.config.as_deref(), &t.domain, &t.ips, ca_file.as_deref())
        }
        Cmd::Dkim { cmd: DkimCmd::Keygen { domain, selector, algorithm, out } } => {
            match dkim_keygen(&domain, &selector, &algorithm, &out) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dkim keygen: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Quarantine { cmd, config, json } => {
            let (method, path) = match &cmd {
                QuarantineCmd::List => ("GET", "/quarantine".to_string()),
                QuarantineCmd::Show { id } => ("GET", format!("/quarantine/{id}")),
                QuarantineCmd::Release { id } => ("POST", format!("/quarantine/{id}/release")),
                QuarantineCmd::Delete { id } => ("POST", format!("/quarantine/{id}/delete")),
            };
            print_result(admin_request(config.as_deref(), method, &path), json)
        }
        Cmd::Spam { cmd: SpamCmd::Train { spam, ham, out, min_count } } => {
            match crate::spam_cli::train(&spam, &ham, &out, min_count) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("spam train: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Spam { cmd: SpamCmd::Eval { wasm, model, config, spam, ham } } => {
            let _ = tracing_subscriber::fmt()
                .fmt_fields(crate::logfmt::text_fields())
                .with_env_filter("warn")
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .try_init();
            let rt = runtime().expect("runtime");
            match rt.block_on(crate::spam_cli::eval(crate::spam_cli::EvalRun { wasm, model, config, spam, ham })) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("spam eval: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Suppression { cmd: SuppressionCmd::List { key }, config, json } => {
            let path = match &key {
                Some(k) => format!("/suppressions?key={}", query_escape(k)),
                None => "/suppressions".to_string(),
            };
            match admin_request(config.as_deref(), "GET", &path) {
                Ok(body) if json => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Ok(body) => {
                    let items: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
                    for e in &items {
                        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                        println!("{}  {}  {}  {}  {}", s("key"), s("address"), s("class"), s("queue_id"), s("reason"));
                    }
                    println!("{} suppressed", items.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailgate suppression: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Suppression { cmd: SuppressionCmd::Remove { key, address }, config, json } => {
            let path = format!("/suppressions/remove?key={}&address={}", query_escape(&key), query_escape(&address));
            print_result(admin_request(config.as_deref(), "POST", &path), json)
        }
        Cmd::Tlsrpt { cmd: TlsrptCmd::Show { domain, day }, config } => {
            let mut q = vec![];
            if let Some(d) = domain {
                q.push(format!("domain={}", query_escape(&d)));
            }
            if let Some(d) = day {
                q.push(format!("day={}", query_escape(&d)));
            }
            print_result(admin_request(config.as_deref(), "GET", &format!("/tlsrpt?{}", q.join("&"))), true)
        }
        Cmd::Tlsrpt { cmd: TlsrptCmd::Send { day }, config } => {
            let q = day.map(|d| format!("day={}", query_escape(&d))).unwrap_or_default();
            print_result(admin_request(config.as_deref(), "POST", &format!("/tlsrpt/send?{q}")), true)
        }
        Cmd::Events { cmd: EventsCmd::Tail { since, follow, json }, config } => {
            events_tail(config.as_deref(), since, follow, json)
        }
        Cmd::ApiKey { cmd: ApiKeyCmd::Create { name, allow_from, rate, pool }, config } => {
            crate::api_cli::create(config.as_deref(), &name, allow_from, rate, pool)
        }
        Cmd::ApiKey { cmd: ApiKeyCmd::List { json }, config } => crate::api_cli::list(config.as_deref(), json),
        Cmd::ApiKey { cmd: ApiKeyCmd::Revoke { name }, config } => crate::api_cli::revoke(config.as_deref(), &name),
        Cmd::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            init_logs(&cfg);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("mailgate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn serve(cfg: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let privileges = cfg.clone();
    let drop = Box::new(move || {
        crate::privileges::drop_after_start(&privileges).map_err(|e| {
            tracing::error!("{e}");
            anyhow::Error::from(e)
        })
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let gw = Gateway::start_with(cfg, file, Some(drop)).await?;
    crate::service::ready(&gw);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: shutting down"); break }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                crate::service::reloading();
                let _ = gw.reload().await;
                crate::service::ready(&gw);
            }
        }
    }
    crate::service::stopping();
    gw.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
}

/// Writes a key (mode 0600, never over an existing file) and returns what to publish.
fn dkim_keygen(domain: &str, selector: &str, algorithm: &str, out: &std::path::Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let kind = match algorithm {
        "rsa" | "rsa2048" => mailgate_auth::KeyKind::Rsa2048,
        "ed25519" => mailgate_auth::KeyKind::Ed25519,
        other => return Err(format!("--algorithm {other:?}: rsa or ed25519")),
    };
    let (pem, txt) = mailgate_auth::keygen(kind).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", out.display()))?;
    // A TXT character-string holds at most 255 octets: split long records.
    let strings: Vec<String> = mailgate_auth::txt_strings(&txt).iter().map(|c| format!("\"{c}\"")).collect();
    Ok(format!(
        "wrote {} ({algorithm})\npublish this DNS record:\n{selector}._domainkey.{domain}. IN TXT ( {} )\n",
        out.display(),
        strings.join(" ")
    ))
}

/// The gateway's runtime. Plugins that wait for no host function run on its worker threads'
/// own stacks (no fiber: `crates/plugin-host/src/exports.rs`), each call with up to wasmtime's
/// 512 KiB of wasm stack plus the host functions it calls: the workers get twice tokio's 2 MiB
/// default so that a plugin's deepest call, on top of the session's own frames, stays far from
/// the end (address space only; the pages a thread never touches cost nothing).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(4 << 20)
        // A worker that hands the spool a record owes the writer its wake until it runs out of
        // work (only workers park, so that is where they are marked): woken at once, the
        // writer would preempt the session's thread (`crates/spool/src/local.rs`, `Inbox`).
        .on_thread_park(|| {
            mailgate_spool::defer_wakes_on_this_thread();
            mailgate_spool::pay_owed_wakes();
        })
        .build()
}
