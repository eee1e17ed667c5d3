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

/// How many records a [`TxtCache`] holds at most.
pub const TXT_CACHE_ENTRIES: usize = 10_000;

/// The memory a [`TxtCache`] may take (a 2048-bit DKIM key record is ~0.5 KiB: some 30 000
/// of them; a DMARC policy less).
pub const TXT_CACHE_BYTES: usize = 16 << 20;

/// What a DKIM key kept by mail-auth itself is charged: its size cannot be seen from outside
/// (a key is kept as published; only the record's size bounds it, and a TXT answer can be
/// 64 KiB). The keys the gateway fetches itself ([`crate::keys`]) are charged what they are.
const UNSEEN_KEY_BYTES: usize = 64 << 10;

/// What one entry costs besides its key and value's own octets: the map's slot, the
/// allocations' headers, the expiry.
const ENTRY_OVERHEAD: usize = 96;

/// mail-auth's parsed TXT records.
pub type TxtCache = TtlCache<Txt>;

/// The memory a value holds, roughly (its heap octets and its own size).
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for std::sync::Arc<[Vec<u8>]> {
    fn weight(&self) -> usize {
        self.iter().map(|v| v.len() + size_of::<Vec<u8>>()).sum()
    }
}

impl Weigh for Txt {
    fn weight(&self) -> usize {
        match self {
            Txt::DomainKey(_) => UNSEEN_KEY_BYTES,
            Txt::Dmarc(d) => {
                let uris = d.rua.iter().chain(&d.ruf);
                size_of::<mail_auth::dmarc::Dmarc>() + uris.map(|u| u.uri.len() + size_of_val(u)).sum::<usize>()
            }
            // Small records, rare here (SPF is ours, MTA-STS and TLS-RPT are looked up
            // elsewhere): what their fields print as is near enough.
            Txt::Spf(v) => format!("{v:?}").len(),
            Txt::SpfMacro(v) => format!("{v:?}").len(),
            Txt::DomainKeyReport(v) => format!("{v:?}").len(),
            Txt::Atps(v) => format!("{v:?}").len(),
            Txt::MtaSts(v) => format!("{v:?}").len(),
            Txt::TlsRpt(v) => format!("{v:?}").len(),
            Txt::Error(e) => format!("{e:?}").len(),
        }
    }
}

/// Values by the name looked up, each with the end of its TTL, bounded in count and bytes.
pub struct TtlCache<V> {
    entries: Mutex<Entries<V>>,
    /// The most entries kept.
    capacity: usize,
    /// The most memory kept (keys, values as [`Weigh`]ed, overhead). A full cache first forgets
    /// what has expired, then arbitrary entries down to nine tenths of both bounds (one sweep
    /// pays for a tenth of the capacity in inserts); an entry larger than an eighth of the
    /// budget is not kept at all.
    budget: usize,
}

struct Entries<V> {
    map: HashMap<Box<str>, Entry<V>>,
    /// The sum of the entries' weights.
    bytes: usize,
}

struct Entry<V> {
    value: V,
    until: Instant,
    /// What the entry was charged (kept: the value's weight is not recomputed on removal).
    weight: usize,
}

impl<V> Entries<V> {
    fn remove<Q>(&mut self, name: &Q) -> Option<Entry<V>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.map.remove(name)?;
        self.bytes -= e.weight;
        Some(e)
    }
}

impl<V: Clone + Weigh> TtlCache<V> {
    pub fn new(capacity: usize, budget: usize) -> TtlCache<V> {
        TtlCache { entries: Mutex::new(Entries { map: HashMap::new(), bytes: 0 }), capacity: capacity.max(1), budget }
    }

    /// How many records are held (expired ones included until they are asked for or swept).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the entries are charged, in octets.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value kept for `name`, while its TTL lasts (an expired one is forgotten).
    pub fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.lock();
        match entries.map.get(name) {
            Some(e) if Instant::now() < e.until => Some(e.value.clone()),
            Some(_) => {
                entries.remove(name);
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
        self.lock().remove(name).map(|e| e.value)
    }

    /// Keeps `value` for `key` until `valid_until` (a TTL of 0 is not kept), charged its
    /// [`Weigh::weight`].
    pub fn insert(&self, key: Box<str>, value: V, valid_until: Instant) {
        let weight = value.weight();
        self.insert_weighing(key, value, valid_until, weight)
    }

    /// [`insert`](Self::insert) for a value whose memory the caller knows better (`weight`:
    /// the value's octets).
    pub fn insert_weighing(&self, key: Box<str>, value: V, valid_until: Instant, weight: usize) {
        let now = Instant::now();
        let weight = weight + key.len() + ENTRY_OVERHEAD;
        let mut entries = self.lock();
        entries.remove(&key);
        if valid_until <= now || weight > self.budget / 8 {
            return; // a TTL of 0, or a value too large to be worth its place
        }
        if entries.map.len() >= self.capacity || entries.bytes + weight > self.budget {
            entries.map.retain(|_, e| now < e.until);
            entries.bytes = entries.map.values().map(|e| e.weight).sum();
            let keep = self.capacity - self.capacity.div_ceil(10);
            let keep_bytes = self.budget - self.budget / 10 - weight;
            if entries.map.len() > keep || entries.bytes > keep_bytes {
                let (mut n, mut bytes) = (entries.map.len(), entries.bytes);
                let mut victims = vec![];
                for (k, e) in &entries.map {
                    if n <= keep && bytes <= keep_bytes {
                        break;
                    }
                    victims.push(k.clone());
                    n -= 1;
                    bytes -= e.weight;
                }
                for v in victims {
                    entries.remove(&v);
                }
            }
        }
        entries.bytes += weight;
        entries.map.insert(key, Entry { value, until: valid_until, weight });
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
        let c = TxtCache::new(10, 1 << 20);
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
        let c = TxtCache::new(100, 1 << 20);
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
        let c = TxtCache::new(10, 1 << 20);
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

    #[test]
    fn memory_is_bounded_whatever_the_values_weigh() {
        let until = Instant::now() + Duration::from_secs(300);
        let c: TtlCache<Arc<[Vec<u8>]>> = TtlCache::new(100_000, 1 << 20);
        let mut kept = 0;
        for i in 0..5_000 {
            // 1 to 8 000 octets, so that entries of every size come and go.
            let size = 1 + (i * 7919) % 8_000;
            c.insert(format!("n{i}.example.").into(), Arc::from(vec![vec![b'x'; size]]), until);
            assert!(c.bytes() <= 1 << 20, "{} octets after {i}", c.bytes());
            kept = kept.max(c.len());
        }
        assert!(kept > 200, "the budget is used ({kept} entries at most)");
        // What the cache says it holds is what its entries were charged.
        let charged: usize = (0..5_000)
            .filter_map(|i| c.get(format!("n{i}.example.").as_str()).map(|v| (i, v)))
            .map(|(i, v)| v.weight() + format!("n{i}.example.").len() + ENTRY_OVERHEAD)
            .sum();
        assert_eq!(charged, c.bytes());
        // An entry over an eighth of the budget is not kept, and takes the old value's place
        // with it (the old one is stale).
        c.insert("n4999.example.".into(), Arc::from(vec![vec![b'x'; (1 << 20) / 8]]), until);
        assert!(c.get("n4999.example.").is_none());
        // Removing gives the octets back.
        let before = c.bytes();
        let some = (0..5_000).map(|i| format!("n{i}.example.")).find(|n| c.get(n.as_str()).is_some()).unwrap();
        let w = c.get(some.as_str()).unwrap().weight() + some.len() + ENTRY_OVERHEAD;
        c.remove(some.as_str());
        assert_eq!(c.bytes(), before - w);
    }

    #[test]
    fn a_key_kept_by_mail_auth_is_charged_as_the_largest_a_record_can_be() {
        let (_, record) = crate::keygen(crate::KeyKind::Ed25519).unwrap();
        let key = || Arc::new(mail_auth::common::verify::DomainKey::parse(record.as_bytes()).unwrap());
        let c = TxtCache::new(1_000, 1 << 20);
        let until = Instant::now() + Duration::from_secs(300);
        for i in 0..100 {
            c.insert(format!("s{i}._domainkey.example.").into(), Txt::DomainKey(key()), until);
        }
        assert!(c.len() <= (1 << 20) / UNSEEN_KEY_BYTES, "{} keys of unknown size kept", c.len());
        // Charged what the caller knows it is, many more fit.
        let c = TxtCache::new(1_000, 1 << 20);
        for i in 0..100 {
            let txt = Txt::DomainKey(key());
            c.insert_weighing(format!("s{i}._domainkey.example.").into(), txt, until, record.len());
        }
        assert_eq!(c.len(), 100);
    }
}
