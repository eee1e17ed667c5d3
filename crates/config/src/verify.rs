//! `[verify]`: recipient verification at RCPT, so that an edge gateway refuses unknown
//! recipients in the session instead of accepting and bouncing later (backscatter).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// How long a callout's "the recipient exists" is believed.
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long a callout's "no such recipient" is believed.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// The longest one callout may take; past it the RCPT gets `451 4.4.3`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Callouts in flight at once, all sessions together: a flood of RCPTs cannot open more
    /// connections to the backend than this.
    pub max_concurrent: usize,
    /// Most callout answers kept; the oldest go first when it is full.
    pub cache_size: usize,
    /// Recipient domain (and its subdomains) → where its recipients are known.
    pub domains: BTreeMap<String, VerifyDomain>,
}

/// Where one domain's recipients are known: a table, or the domain's own next hop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VerifyDomain {
    /// A `key<TAB>value` file (the plugins' data-table format; the value may be left out):
    /// full addresses, or `@domain` for every address of a domain. Read again on reload.
    #[serde(default)]
    pub table: Option<PathBuf>,
    /// Ask the domain's route (`smarthost`, `lmtp` or `mx`) with `MAIL FROM:<>` / `RCPT TO` /
    /// `RSET`, answers cached.
    #[serde(default)]
    pub callout: bool,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            positive_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            max_concurrent: 20,
            cache_size: 100_000,
            domains: BTreeMap::new(),
        }
    }
}

impl Verify {
    /// Where `domain`'s recipients are known: its own entry, else its closest parent's.
    pub fn for_domain(&self, domain: &str) -> Option<&VerifyDomain> {
        crate::by_domain(&self.domains, domain)
    }
}
