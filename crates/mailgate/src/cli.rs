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
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Ask the running gateway (its admin endpoint, from the same config) to reload.
    Reload {
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

/// argon2id with the crate's (OWASP-recommended) parameters and a random 16-octet salt.
fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// `POST /reload` to the admin endpoint named by the config file (read leniently: the new
/// file may be the broken one, and the gateway is the one to say so).
fn reload(file: Option<&std::path::Path>) -> Result<String, String> {
    use std::io::{Read, Write};
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        None => mailgate_config::DEFAULT_TOML.to_string(),
    };
    let table = toml::from_str::<toml::Table>(&text).unwrap_or_default();
    let admin = table.get("admin").and_then(|a| a.as_table());
    let get = |k: &str| admin.and_then(|a| a.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let listen: Option<std::net::SocketAddr> = get("listen").and_then(|l| l.parse().ok());
    let token = get("token");
    let addr = listen.ok_or("the config has no [admin] listen address to reach the gateway")?;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120))).ok();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "POST /reload HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.trim().to_string())
    } else {
        Err(body.trim().to_string())
    }
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
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Config { cmd: ConfigCmd::Default } => {
            print!("{}", mailgate_config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::Config { cmd: ConfigCmd::Check { config } } => match Config::load(config.as_deref()) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Reload { config } => match reload(config.as_deref()) {
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
            let _ = tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).try_init();
            let run =
                crate::plugin_cli::TestRun { wasm, eml, from, rcpts: rcpt, helo, client_ip, config, grants: grant };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
            match rt.block_on(crate::plugin_cli::test(run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("plugin test: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            init_logs(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    let gw = Gateway::start_from(cfg, file).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: shutting down"); break }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = gw.reload().await;
            }
        }
    }
    gw.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
}
