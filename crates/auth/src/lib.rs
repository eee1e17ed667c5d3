//! Mail authentication for mailgate: SPF (MAIL FROM and HELO) by our own RFC 7208 evaluator
//! ([`spf`]); DKIM verification, DMARC, ARC chain validation and iprev through `mail-auth`; all
//! over the gateway's own hickory resolver;
//! the `Authentication-Results:` header (RFC 8601); DKIM signing, ARC sealing and key
//! generation.
//!
//! [`AuthSession`] computes each check lazily, once per session (iprev), transaction (SPF) or
//! message (DKIM, DMARC, ARC), when someone first asks and the data for it exists — a plugin through
//! the host's `auth` import, or the gateway for the header's `always` checks.
//!
//! This crate must not know SMTP sessions, the spool or the plugin ABI: it takes an IP, names
//! and raw message bytes, and gives plain results that the plugin host maps to WIT.

mod cache;
mod header;
mod keys;
mod policies;
mod results;
mod seal;
mod session;
mod sign;
pub mod spf;

pub use cache::{TtlCache, TxtCache, Weigh, TXT_CACHE_BYTES, TXT_CACHE_ENTRIES};
pub use header::{ambiguous_from, authentication_results, strip_ours};
pub use keys::KEY_RECORD_OCTETS;
pub use results::{Arc as ArcResult, Dkim, Dmarc, Iprev, MessageResults, Policy, Spf, Status};
pub use seal::Sealer;
pub use session::{AuthSession, Authenticator, DKIM_SIGNATURES};
pub use sign::{keygen, public_record, record_matches, txt_strings, KeyKind, Signer};

/// An error of this crate (loading keys, signing), with what failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Key(String),
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    /// The message's ARC chain did not pass: it is not sealed again (RFC 8617 §5.1.2).
    #[error("ARC chain did not pass ({0}): not sealed again")]
    ChainFailed(String),
}
