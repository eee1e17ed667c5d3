//! `[auth]` (the Authentication-Results header and the checks it always carries) and
//! `[[dkim_sign]]` (which outgoing mail the gateway signs, with which key).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A check the header should always carry, computed even when no plugin asks for it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthCheck {
    Spf,
    /// DKIM, DMARC and ARC (computed together: DMARC needs DKIM).
    Dkim,
    Dmarc,
    Arc,
    Iprev,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// authserv-id of our Authentication-Results field; default: `server.hostname`.
    pub authserv_id: Option<String>,
    /// Add an Authentication-Results field to every accepted message.
    pub header: bool,
    /// Checks run for every message even when no plugin asks (by default only what plugins
    /// ask for is computed, and the header shows that).
    pub always: Vec<AuthCheck>,
    /// Upper bound for one check, whatever the DNS retries add up to; past it: temperror
    /// (RFC 7208 §4.6.4 asks for at least 20 s for SPF).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Refuse (550 5.7.1) a message with several From fields or From addresses in several
    /// domains: DMARC cannot judge it (RFC 7489 §6.6.1), so it would slip past the policy.
    pub refuse_ambiguous_from: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            authserv_id: None,
            header: true,
            always: vec![],
            timeout: Duration::from_secs(20),
            refuse_ambiguous_from: true,
        }
    }
}

/// Who gets their mail signed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SignFor {
    /// Clients that authenticated (SMTP AUTH).
    #[default]
    Authenticated,
    /// Authenticated clients and clients of `relay.trusted_networks`.
    Trusted,
    /// Everyone (e.g. a listener that only internal systems reach).
    Any,
}

/// One signing identity: mail whose header From is in `domain` (or a subdomain) is signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSign {
    pub domain: String,
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8, 2048 bits or more) or Ed25519 (PKCS#8), as
    /// `mailgate dkim keygen` writes them.
    pub key: PathBuf,
    /// Header fields to sign (RFC 6376 §5.4.1 recommendations by default).
    #[serde(default = "default_signed_headers")]
    pub headers: Vec<String>,
    /// Sign only mail received on these listeners; empty: every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
    #[serde(default)]
    pub sign_for: SignFor,
    /// When non-empty, only these authenticated users' mail is signed.
    #[serde(default)]
    pub users: Vec<String>,
}

impl DkimSign {
    /// Whether this identity signs a message whose header From is in `from_domain`, received
    /// on `listener` from a client authenticated as `user` (if any) or trusted by network.
    pub fn applies(&self, from_domain: &str, listener: &str, user: Option<&str>, trusted: bool) -> bool {
        let (from, own) = (from_domain.to_ascii_lowercase(), self.domain.to_ascii_lowercase());
        let domain_ok = from == own || from.ends_with(&format!(".{own}"));
        let listener_ok = self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener);
        let who_ok = match self.sign_for {
            SignFor::Any => true,
            SignFor::Trusted => user.is_some() || trusted,
            SignFor::Authenticated => user.is_some(),
        };
        let user_ok = self.users.is_empty() || user.is_some_and(|u| self.users.iter().any(|x| x == u));
        domain_ok && listener_ok && who_ok && user_ok
    }
}

fn default_signed_headers() -> Vec<String> {
    [
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    .map(String::from)
    .to_vec()
}

/// `[arc_seal]`: seal every accepted message with an ARC set (RFC 8617) under this identity,
/// so the next hop can rely on our authentication results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcSeal {
    pub domain: String,
    pub selector: String,
    /// PEM RSA private key (ARC defines no Ed25519 algorithm).
    pub key: PathBuf,
    #[serde(default = "default_signed_headers")]
    pub headers: Vec<String>,
}
