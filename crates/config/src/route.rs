//! Routes: how mail for a recipient domain leaves the gateway.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS policy of an outbound route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS when offered; any certificate is accepted (RFC 7435 opportunistic security).
    #[default]
    Opportunistic,
    /// STARTTLS must succeed with a certificate valid for the host; otherwise the delivery
    /// is deferred.
    Required,
    /// Never STARTTLS.
    None,
}

/// A route, written in TOML as `{ type = "mx" }`, `{ type = "smarthost", host = "h", port = 25 }`,
/// `{ type = "lmtp", socket = "/run/dovecot/lmtp" }`, `{ type = "maildir", path = "var/mail/x" }`
/// or `{ type = "discard" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Route {
    /// Look up MX records of the recipient domain (A/AAAA fallback, RFC 5321 §5.1).
    Mx {
        #[serde(default)]
        tls: TlsPolicy,
        /// The `[[pool]]` of source addresses connections leave from (none: the system's).
        #[serde(default)]
        pool: Option<String>,
    },
    /// Relay everything to one host.
    Smarthost {
        host: String,
        #[serde(default = "default_port")]
        port: u16,
        #[serde(default)]
        tls: TlsPolicy,
        /// PEM file of extra CA certificates trusted when `tls = "required"`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Log in to the smarthost (SMTP AUTH, RFC 4954); only over verified TLS.
        #[serde(default)]
        auth: Option<ClientAuth>,
        /// The `[[pool]]` of source addresses connections leave from (none: the system's).
        #[serde(default)]
        pool: Option<String>,
    },
    /// Hand to a local delivery agent over LMTP (RFC 2033), by TCP (`host`, `port`) or a unix
    /// socket (`socket`): one reply per recipient after the data.
    Lmtp {
        #[serde(default)]
        host: Option<String>,
        #[serde(default = "default_lmtp_port")]
        port: u16,
        #[serde(default)]
        socket: Option<PathBuf>,
        /// STARTTLS to a TCP LMTP server; `none` by default (a local agent on a trusted link).
        #[serde(default = "no_tls")]
        tls: TlsPolicy,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// Write each message into a maildir, one file per recipient.
    Maildir { path: PathBuf },
    /// Accept and drop.
    Discard,
}

/// Credentials for logging in to a smarthost. The password comes from exactly one of
/// `password`, `password_file` (first line) or `password_env`, read at each login so a rotated
/// file is picked up; it is never logged.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `plain` or `login`; unset: PLAIN when the server offers it, else LOGIN.
    #[serde(default)]
    pub mechanism: Option<AuthMechanism>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// Why a smarthost password could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("password_file {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("password_file {0} is empty")]
    Empty(PathBuf),
    #[error("environment variable {0} is not set")]
    Env(String),
}

impl ClientAuth {
    /// The password, from wherever the config says it is.
    pub fn password(&self) -> Result<String, SecretError> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f).map_err(|e| SecretError::File(f.clone(), e))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r').to_string();
            return if line.is_empty() { Err(SecretError::Empty(f.clone())) } else { Ok(line) };
        }
        let var = self.password_env.clone().unwrap_or_default();
        std::env::var(&var).map_err(|_| SecretError::Env(var))
    }

    fn validate(&self) -> Result<(), String> {
        let sources = [self.password.is_some(), self.password_file.is_some(), self.password_env.is_some()];
        if self.username.is_empty() || sources.iter().filter(|s| **s).count() != 1 {
            return Err("auth needs a username and exactly one of password, password_file, password_env".into());
        }
        self.password().map(|_| ()).map_err(|e| format!("auth: {e}"))
    }
}

/// Never prints the password, whichever way it is given.
impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

fn default_port() -> u16 {
    25
}

fn default_lmtp_port() -> u16 {
    24
}

fn no_tls() -> TlsPolicy {
    TlsPolicy::None
}

/// `[[pool]]`: local source addresses for outbound connections, each with the EHLO name that
/// belongs to it (transactional senders keep reputations apart this way).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourcePool {
    pub name: String,
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub address: std::net::IpAddr,
    /// The EHLO name for connections from this address (its PTR name, ideally); default
    /// `delivery.helo_name`.
    #[serde(default)]
    pub helo: Option<String>,
    /// Its share of new connections in the rotation.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Route {
    /// The source pool the route names.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Route::Mx { pool, .. } | Route::Smarthost { pool, .. } => pool.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Route::Smarthost { host, port, .. } if host.is_empty() || *port == 0 => {
                Err("smarthost needs a host and a non-zero port".into())
            }
            Route::Smarthost { auth: Some(a), tls, .. } => {
                if *tls != TlsPolicy::Required {
                    return Err("auth needs tls = \"required\": credentials go only over verified TLS".into());
                }
                a.validate()
            }
            Route::Lmtp { host, socket, port, tls, .. } => match (host, socket) {
                (Some(h), None) if !h.is_empty() && *port != 0 => Ok(()),
                (None, Some(s)) if !s.as_os_str().is_empty() && *tls == TlsPolicy::None => Ok(()),
                _ => Err("lmtp needs either host (and a non-zero port) or socket (and no tls)".into()),
            },
            Route::Maildir { path } if path.as_os_str().is_empty() => Err("maildir needs a path".into()),
            _ => Ok(()),
        }
    }
}
