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
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use eval::check_host;

/// What SPF keeps between checks: parsed records by their text (the same text parses the same
/// way, so there is no TTL to respect; bounded: emptied when full), and the TXT answers by the
/// name looked up, until their TTL ends (a look-up through the resolver's own cache costs
/// ~15 000 instructions, and every check makes one or more).
pub struct RecordCache {
    records: Mutex<HashMap<Box<[u8]>, Parsed>>,
    txt: crate::TtlCache<TxtAnswer>,
}

/// A TXT answer: each record's strings joined (§3.3).
type TxtAnswer = Arc<[Vec<u8>]>;

/// TXT answers kept at most.
const CACHED_ANSWERS: usize = 10_000;

/// The memory the TXT answers may take.
const CACHED_ANSWER_BYTES: usize = 16 << 20;

/// The largest TXT answer kept (its records' octets): a name's whole TXT set is fetched, SPF
/// record or not, and over TCP an answer can be 64 KiB — the names come from MAIL FROM and
/// macros, so a sender could otherwise fill the cache with 10 000 of those. An SPF record is
/// a few hundred octets; a large domain's whole TXT set a few KiB.
const CACHED_ANSWER_OCTETS: usize = 4096;

impl Default for RecordCache {
    fn default() -> RecordCache {
        RecordCache { records: Default::default(), txt: crate::TtlCache::new(CACHED_ANSWERS, CACHED_ANSWER_BYTES) }
    }
}

/// A record's text parsed: `None` for a syntax error (`permerror`).
type Parsed = Option<Arc<record::Record>>;

/// Records kept parsed at most.
const CACHED_RECORDS: usize = 4096;

/// The longest record text kept parsed: a record is whatever TXT record of the name starts
/// with `v=spf1` — up to 64 KiB over TCP, from a name the sender chose — and 4 096 of those,
/// text and parse, would be hundreds of MiB. RFC 7208 §3.4 asks records to fit a 512-octet
/// answer; a longer one is parsed at each check instead.
const CACHED_RECORD_OCTETS: usize = 2048;

impl RecordCache {
    /// The record `txt` parses to (`None`: a syntax error).
    fn parse(&self, txt: &[u8]) -> Option<Arc<record::Record>> {
        let lock = || self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = lock().get(txt) {
            return r.clone();
        }
        // Parsed without the lock: other checks go on meanwhile.
        let r = record::parse(txt).map(Arc::new);
        if txt.len() <= CACHED_RECORD_OCTETS {
            let mut map = lock();
            if map.len() >= CACHED_RECORDS {
                map.clear();
            }
            map.insert(txt.into(), r.clone());
        }
        r
    }

    /// How many records are kept parsed.
    #[cfg(test)]
    fn parsed(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

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
