//! DNS answers kept until their TTL ends, by the name looked up: mail-auth's parsed TXT
//! records — DKIM keys, DMARC policies, ATPS — so that a message from a domain seen a minute
//! ago costs no DNS look-up and no record parse (a DKIM key's base64 alone is ~9 000
//! instructions), and SPF's TXT answers (a look-up through hickory's own cache costs ~15 000
//! instructions; a sender's SPF record with `include:`s is several). Bounded: the names come
//! from the messages (`d=`, `s=`, the From domain, MAIL FROM, macros), so a sender can make
//! up any number.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use mail_auth::{ResolverCache, Txt};

/// How many records a [`TxtCache`] holds at most (a 2048-bit DKIM key record is ~0.5 KiB
/// here: a few MiB at most).
pub const TXT_CACHE_ENTRIES: usize = 10_000;

/// mail-auth's parsed TXT records.
pub type TxtCache = TtlCache<Txt>;

/// Values by the name looked up, each with the end of its TTL.
pub struct TtlCache<V> {
    entries: Mutex<HashMap<Box<str>, (V, Instant)>>,
    /// The most entries kept; a full cache first forgets what has expired, then arbitrary
    /// entries down to nine tenths (one sweep pays for a tenth of the capacity in inserts).
    capacity: usize,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> TtlCache<V> {
        TtlCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// How many records are held (expired ones included until they are asked for or swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (V, Instant)>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value kept for `name`, while its TTL lasts (an expired one is forgotten).
    pub fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.lock();
        match map.get(name) {
            Some((v, until)) if Instant::now() < *until => Some(v.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    pub fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(name).map(|(v, _)| v)
    }

    /// Keeps `value` for `key` until `valid_until` (a TTL of 0 is not kept).
    pub fn insert(&self, key: Box<str>, value: V, valid_until: Instant) {
        let now = Instant::now();
        if valid_until <= now {
            return; // a TTL of 0: not to be kept
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, until)| now < *until);
            let keep = self.capacity - self.capacity.div_ceil(10);
            if map.len() > keep {
                let excess = map.len() - keep;
                let victims: Vec<Box<str>> = map.keys().take(excess).cloned().collect();
                for v in victims {
                    map.remove(&v);
                }
            }
        }
        map.insert(key, (value, valid_until));
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        TtlCache::get(self, name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        TtlCache::remove(self, name)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        TtlCache::insert(self, key, value, valid_until)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::dmarc::Dmarc;

    use super::*;

    fn wait_until(t: Instant) {
        while let Some(left) = t.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            std::thread::sleep(left);
        }
    }

    fn record(p: &str) -> Txt {
        Txt::Dmarc(Arc::new(Dmarc::parse(format!("v=DMARC1; p={p}").as_bytes()).unwrap()))
    }

    fn policy(t: &Txt) -> String {
        match t {
            Txt::Dmarc(d) => format!("{:?}", d.p),
            _ => panic!("not a DMARC record"),
        }
    }

    #[test]
    fn records_are_kept_until_their_ttl_ends() {
        let c = TxtCache::new(10);
        let now = Instant::now();
        c.insert("_dmarc.a.example.".into(), record("reject"), now + Duration::from_secs(300));
        c.insert("_dmarc.b.example.".into(), record("none"), now + Duration::from_millis(30));
        c.insert("_dmarc.c.example.".into(), record("none"), now);
        assert_eq!(c.get("_dmarc.a.example.").map(|t| policy(&t)).as_deref(), Some("Reject"));
        assert!(c.get("_dmarc.c.example.").is_none(), "a TTL of 0 is not kept");
        assert!(c.get("_dmarc.A.example.").is_none(), "names are looked up as given");
        wait_until(now + Duration::from_millis(30));
        assert!(c.get("_dmarc.b.example.").is_none(), "expired");
        assert_eq!(c.len(), 1, "the expired record was forgotten when asked for");
        assert!(c.remove("_dmarc.a.example.").is_some());
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_forgets_but_never_grows_past_its_capacity() {
        let c = TxtCache::new(100);
        let until = Instant::now() + Duration::from_secs(300);
        for i in 0..10_000 {
            c.insert(format!("s{i}._domainkey.example.").into(), record("none"), until);
            assert!(c.len() <= 100, "{} after {i}", c.len());
        }
        // The newest record is always kept, and so is a name inserted again.
        assert!(c.get("s9999._domainkey.example.").is_some());
        c.insert("s9999._domainkey.example.".into(), record("reject"), until);
        assert_eq!(c.get("s9999._domainkey.example.").map(|t| policy(&t)).as_deref(), Some("Reject"));
        // Expired records go first.
        let c = TxtCache::new(10);
        let soon = Instant::now() + Duration::from_millis(20);
        for i in 0..9 {
            c.insert(format!("old{i}.").into(), record("none"), soon);
        }
        c.insert("fresh.".into(), record("none"), until);
        wait_until(soon);
        c.insert("new.".into(), record("none"), until);
        assert_eq!(c.len(), 2, "the nine expired ones were swept, the fresh one kept");
        assert!(c.get("fresh.").is_some() && c.get("new.").is_some());
    }
}
