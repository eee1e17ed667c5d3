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
/// `{ type = "maildir", path = "var/mail/x" }` or `{ type = "discard" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Route {
    /// Look up MX records of the recipient domain (A/AAAA fallback, RFC 5321 §5.1).
    Mx {
        #[serde(default)]
        tls: TlsPolicy,
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
    },
    /// Write each message into a maildir, one file per recipient.
    Maildir { path: PathBuf },
    /// Accept and drop.
    Discard,
}

fn default_port() -> u16 {
    25
}

impl Route {
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Route::Smarthost { host, port, .. } if host.is_empty() || *port == 0 => {
                Err("smarthost needs a host and a non-zero port".into())
            }
            Route::Maildir { path } if path.as_os_str().is_empty() => Err("maildir needs a path".into()),
            _ => Ok(()),
        }
    }
}
