//! Recipient verification at RCPT: does the domain have this address? An edge gateway must
//! refuse unknown recipients in the session (550) rather than accept and bounce them later
//! (backscatter), and must never refuse one because its backend is down (451).
//!
//! This crate owns the recipient tables, the callout cache and the bound on callouts in
//! flight; it asks the delivery crate to probe a next hop. It must not know the SMTP session,
//! plugins or the queue: it answers a question, the session turns the answer into a reply.

mod cache;
mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mailgate_config::{canonical_domain, Config, Verify};
use mailgate_delivery::{Delivery, Probe};
use tokio::sync::Semaphore;

pub use table::{Table, TableError};

/// What verification found for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The domain has no verification configured: accept as before.
    Unchecked,
    Known,
    /// The domain does not have the address: `550 5.1.1`.
    Unknown,
    /// No answer to rely on (backend down, slow, or temporarily refusing): `451 4.4.3`.
    Unavailable(String),
}

/// How one domain's recipients are checked.
enum Check {
    Table(Table),
    Callout,
}

/// The verifier of one configuration generation (a reload loads the tables again and starts
/// with an empty cache).
pub struct Verifier {
    checks: BTreeMap<String, Check>,
    settings: Verify,
    delimiter: String,
    cache: Mutex<cache::Cache>,
    /// Permits for callouts in flight, across every session.
    inflight: Arc<Semaphore>,
}

impl Verifier {
    /// Loads the tables the config names; an unreadable one fails the start or the reload.
    pub fn new(config: &Config) -> Result<Verifier, TableError> {
        let mut checks = BTreeMap::new();
        for (domain, v) in &config.verify.domains {
            let check = match &v.table {
                Some(path) => Check::Table(Table::load(path)?),
                None => Check::Callout,
            };
            checks.insert(domain.clone(), check);
        }
        Ok(Verifier {
            checks,
            settings: config.verify.clone(),
            delimiter: config.relay.recipient_delimiter.clone(),
            cache: Mutex::new(cache::Cache::new(config.verify.cache_size)),
            inflight: Arc::new(Semaphore::new(config.verify.max_concurrent.max(1))),
        })
    }

    /// Whether any domain is verified at all (the session skips the call otherwise).
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Checks `address` (`local@domain`) by its domain's table or a callout over `config`'s
    /// route for the domain.
    pub async fn check(&self, config: &Config, delivery: &Delivery, address: &str) -> Verdict {
        let Some((_, domain)) = address.rsplit_once('@') else { return Verdict::Unchecked };
        let domain = canonical_domain(domain);
        let mut d = domain.as_str();
        let check = loop {
            if let Some(c) = self.checks.get(d) {
                break c;
            }
            match d.split_once('.') {
                Some((_, parent)) => d = parent,
                None => return Verdict::Unchecked,
            }
        };
        let verdict = match check {
            Check::Table(t) if t.has(address, &self.delimiter) => Verdict::Known,
            Check::Table(_) => Verdict::Unknown,
            Check::Callout => return self.callout(config, delivery, address, &domain).await,
        };
        count("table", &verdict);
        verdict
    }

    async fn callout(&self, config: &Config, delivery: &Delivery, address: &str, domain: &str) -> Verdict {
        let key = address.to_lowercase();
        if let Some(exists) = self.cache.lock().unwrap().get(&key, Instant::now()) {
            metrics::counter!("mailgate_verify_cache_total", "result" => "hit").increment(1);
            return if exists { Verdict::Known } else { Verdict::Unknown };
        }
        metrics::counter!("mailgate_verify_cache_total", "result" => "miss").increment(1);
        let Some(route) = config.route_for(domain) else {
            return Verdict::Unavailable("no route to ask".into());
        };
        let limit = self.settings.timeout;
        let asked = tokio::time::timeout(limit, async {
            let _permit = self.inflight.acquire().await;
            delivery.probe(route, domain, address).await
        })
        .await;
        let verdict = match asked {
            Ok(Probe::Exists) => Verdict::Known,
            Ok(Probe::Unknown(r)) => {
                tracing::info!(rcpt = %address, reply = %r, "callout: recipient unknown");
                Verdict::Unknown
            }
            Ok(Probe::Unavailable(r)) => Verdict::Unavailable(r.to_string()),
            Err(_) => Verdict::Unavailable(format!("no answer within {}s", limit.as_secs_f32())),
        };
        let ttl = match verdict {
            Verdict::Known => Some(self.settings.positive_ttl),
            Verdict::Unknown => Some(self.settings.negative_ttl),
            _ => None,
        };
        if let Some(ttl) = ttl {
            self.cache.lock().unwrap().put(key, verdict == Verdict::Known, ttl, Instant::now());
        }
        if let Verdict::Unavailable(why) = &verdict {
            tracing::warn!(rcpt = %address, "callout: no answer to rely on: {why}");
        }
        count("callout", &verdict);
        verdict
    }
}

fn count(source: &'static str, v: &Verdict) {
    let result = match v {
        Verdict::Known => "known",
        Verdict::Unknown => "unknown",
        Verdict::Unavailable(_) => "unavailable",
        Verdict::Unchecked => return,
    };
    metrics::counter!("mailgate_verify_total", "source" => source, "result" => result).increment(1);
}
