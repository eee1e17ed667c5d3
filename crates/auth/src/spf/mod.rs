//! SPF (RFC 7208), evaluated by our own code over the gateway's resolver: `check_host()` with
//! the record syntax checked in full before evaluation, macros, the limits of §4.6.4 (10
//! look-up terms, 2 void look-ups, 10 MX and PTR names) and the explanation (`exp=`).
//!
//! Why not mail-auth's: run through the RFC 7208 test suite it passed about 71 % — it
//! evaluated records with syntax errors, rejected valid ones and had no void-lookup limit.

mod dns;
mod eval;
mod macros;
mod record;

use std::net::IpAddr;

pub use eval::check_host;

/// The result of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfVerdict,
    /// The domain checked (of MAIL FROM, or the HELO name).
    pub domain: String,
    /// The sender's explanation of a `fail` (`exp=`), macros expanded; for the 550 text.
    pub explanation: Option<String>,
}

/// RFC 7208 §2.6 results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfVerdict {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

/// The identity checked and where it came from.
pub struct Identity<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// MAIL FROM, or "" for the null sender (then `postmaster@<helo>` is checked, §2.4).
    pub sender: &'a str,
    /// Our host name (`%{r}`).
    pub receiver: &'a str,
}
