//! MTA-STS for MX deliveries (RFC 8461 §5): the recipient domain's policy, discovered through
//! its `_mta-sts` TXT record, fetched with mailgate-mtasts and kept in memory and on disk under
//! the spool directory (`mta-sts/<domain>`, so a restart does not forget it: §5.1), fetched
//! again when the record's id changes or `max_age` runs out. A policy that cannot be fetched
//! again while a cached one is valid keeps the cached one (an attacker who blocks the fetch
//! must not turn enforcement off). What a policy means for an attempt is decided in `plan`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::rr::RData;
use mailgate_mtasts::Policy;

use crate::mx::Resolver;

/// How long a failed fetch is not tried again (a domain whose policy host is down is not
/// asked on every delivery attempt).
const RETRY_FETCH: Duration = Duration::from_secs(300);

/// Cached policies at most in memory (the oldest-fetched is dropped first).
const MAX_CACHED: usize = 10_000;

/// The memory the cached policies may take: a policy body may be 64 KiB, ~10 000 `mx:`
/// patterns, and the domains are the recipients' (and, for DSNs, the senders').
const MAX_CACHED_BYTES: usize = 16 << 20;

/// Domains whose failed fetch is remembered at most (past that the ones older than
/// [`RETRY_FETCH`] are forgotten, then arbitrary ones down to nine tenths).
const MAX_FAILED: usize = 10_000;

#[derive(Clone)]
struct Entry {
    policy: Policy,
    id: String,
    /// When it was fetched (wall clock: it is written to disk).
    fetched: SystemTime,
}

impl Entry {
    /// What the entry holds in memory, roughly.
    fn weight(&self, domain: &str) -> usize {
        let mx: usize = self.policy.mx.iter().map(|m| m.len() + size_of::<String>()).sum();
        domain.len() + self.id.len() + mx + size_of::<Entry>() + 64
    }

    fn valid(&self) -> bool {
        let age = SystemTime::now().duration_since(self.fetched).unwrap_or_default();
        age < Duration::from_secs(self.policy.max_age)
    }
}

/// The policies of recipient domains.
pub struct Sts {
    /// Where policies are kept across restarts (`None`: memory only).
    dir: Option<PathBuf>,
    cache: Mutex<Cached>,
    /// Domains whose last fetch failed, and when.
    failed: Mutex<HashMap<String, Instant>>,
    /// Policies kept on disk at most ([`MAX_ON_DISK`]; tests make it small).
    max_on_disk: usize,
}

/// The policies in memory, bounded in count and bytes.
#[derive(Default)]
struct Cached {
    map: HashMap<String, Entry>,
    /// The entries' weights together.
    bytes: usize,
}

impl Cached {
    /// Keeps `e` for `domain`, dropping the oldest-fetched policies while over a bound.
    fn insert(&mut self, domain: &str, e: Entry) {
        if let Some(old) = self.map.remove(domain) {
            self.bytes -= old.weight(domain);
        }
        let weight = e.weight(domain);
        while !self.map.is_empty() && (self.map.len() >= MAX_CACHED || self.bytes + weight > MAX_CACHED_BYTES) {
            let Some(oldest) = self.map.iter().min_by_key(|(_, e)| e.fetched).map(|(d, _)| d.clone()) else { break };
            if let Some(gone) = self.map.remove(&oldest) {
                self.bytes -= gone.weight(&oldest);
            }
        }
        self.bytes += weight;
        self.map.insert(domain.to_string(), e);
    }
}

impl Sts {
    pub fn new(dir: Option<PathBuf>) -> Sts {
        Sts { dir, cache: Mutex::new(Cached::default()), failed: Mutex::new(HashMap::new()), max_on_disk: MAX_ON_DISK }
    }

    /// The policy to apply to a delivery to `domain` now, if it has one. A fetch trusts the
    /// public roots and the certificates of `extra_ca` (`delivery.ca_file`).
    pub async fn policy(&self, resolver: &Resolver, domain: &str, extra_ca: Option<&Path>) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let id = record_id(resolver, &domain).await;
        let cached = self.cached(&domain);
        match (&cached, &id) {
            // The record still names the policy we hold.
            (Some(e), Some(id)) if e.valid() && e.id == *id => return Some(e.policy.clone()),
            // No record (or an unusable one): a valid cached policy stays in force (§5.1; a
            // removed record is not a withdrawn policy until max_age).
            (Some(e), None) if e.valid() => return Some(e.policy.clone()),
            (_, None) => return None,
            _ => {}
        }
        let id = id.expect("matched above");
        let recently_failed = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domain)
            .is_some_and(|t| t.elapsed() < RETRY_FETCH);
        if !recently_failed {
            match self.fetch(resolver, &domain, extra_ca).await {
                Ok(policy) => {
                    metrics::counter!("mailgate_mta_sts_fetches_total", "result" => "ok").increment(1);
                    tracing::info!(%domain, %id, mode = policy.mode.as_str(), mx = %policy.mx.join(" "), "MTA-STS policy fetched");
                    let e = Entry { policy: policy.clone(), id, fetched: SystemTime::now() };
                    self.store(&domain, e);
                    self.failed.lock().unwrap_or_else(|e| e.into_inner()).remove(&domain);
                    return Some(policy);
                }
                Err(err) => {
                    metrics::counter!("mailgate_mta_sts_fetches_total", "result" => "error").increment(1);
                    tracing::warn!(%domain, "MTA-STS policy fetch failed: {err}");
                    let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                    if failed.len() >= MAX_FAILED {
                        failed.retain(|_, t| t.elapsed() < RETRY_FETCH);
                        let excess = failed.len().saturating_sub(MAX_FAILED - MAX_FAILED / 10);
                        let victims: Vec<String> = failed.keys().take(excess).cloned().collect();
                        for v in victims {
                            failed.remove(&v);
                        }
                    }
                    failed.insert(domain.clone(), Instant::now());
                }
            }
        }
        // The new policy could not be had: the one we hold, while it is valid (§5.1).
        cached.filter(Entry::valid).map(|e| e.policy)
    }

    async fn fetch(
        &self,
        resolver: &Resolver,
        domain: &str,
        extra_ca: Option<&Path>,
    ) -> Result<Policy, mailgate_mtasts::MtaStsError> {
        let host = mailgate_mtasts::policy_host(domain);
        let addrs: Vec<std::net::SocketAddr> = resolver
            .inner()
            .lookup_ip(format!("{host}."))
            .await
            .map(|l| l.iter().map(|ip| std::net::SocketAddr::new(ip, 443)).collect())
            .unwrap_or_default();
        let roots = mailgate_mtasts::roots(extra_ca)?;
        mailgate_mtasts::fetch(domain, &addrs, roots).await
    }

    fn cached(&self, domain: &str) -> Option<Entry> {
        if let Some(e) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).map.get(domain) {
            return Some(e.clone());
        }
        let e = self.load(domain)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(domain, e.clone());
        Some(e)
    }

    fn store(&self, domain: &str, e: Entry) {
        if let Some(path) = self.path(domain) {
            let secs = e.fetched.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let text = format!("x-mailgate-id: {}\r\nx-mailgate-fetched: {secs}\r\n{}", e.id, e.policy.render());
            let tmp = temporary(&path);
            let dir = path.parent().unwrap_or(Path::new("."));
            if !path.exists() {
                make_room(dir, self.max_on_disk);
            }
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&tmp, text))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(err) = written {
                tracing::warn!(%domain, "MTA-STS policy not kept on disk ({}): {err}", path.display());
            }
        }
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(domain, e);
    }

    /// A policy kept on disk by an earlier run.
    fn load(&self, domain: &str) -> Option<Entry> {
        let text = std::fs::read_to_string(self.path(domain)?).ok()?;
        let mut id = None;
        let mut fetched = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("x-mailgate-id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("x-mailgate-fetched:") {
                fetched = v.trim().parse::<u64>().ok().map(|s| UNIX_EPOCH + Duration::from_secs(s));
            }
        }
        let policy = Policy::parse(&text).ok()?;
        Some(Entry { policy, id: id?, fetched: fetched? })
    }

    /// `<dir>/<domain>` for a domain that is a plain host name (A-labels), else none.
    fn path(&self, domain: &str) -> Option<PathBuf> {
        let ok = !domain.is_empty()
            && !domain.starts_with('.')
            && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        self.dir.as_ref().filter(|_| ok).map(|d| d.join(domain))
    }
}

/// Policies kept on disk at most: past that, the least recently written go first (down to
/// nine tenths). The domains are the recipients' — and for DSNs the senders' — so their
/// number is not the operator's to choose.
const MAX_ON_DISK: usize = 10_000;

/// Where a policy is written before it is renamed into place: a name of its own (a `_`, which
/// no domain file has, and a number no other write has), so that two writes — of
/// `bank.example` and `bank.test`, or of one domain twice — never share a file.
fn temporary(path: &Path) -> PathBuf {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("._{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Removes the least recently written policies of `dir` while it holds `max` or more (left-over
/// temporary files count, and go first).
fn make_room(dir: &Path, max: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let m = e.metadata().ok()?;
            m.is_file().then(|| (m.modified().unwrap_or(UNIX_EPOCH), e.path()))
        })
        .collect();
    if files.len() < max {
        return;
    }
    files.sort();
    let excess = files.len() - (max - max / 10);
    tracing::warn!(dir = %dir.display(), "{} MTA-STS policies on disk: the {excess} least recently written removed", files.len());
    for (_, path) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

/// The `id` of the domain's one `v=STSv1` TXT record (none when there is none, or several:
/// §3.1 says to treat that as no policy record).
async fn record_id(resolver: &Resolver, domain: &str) -> Option<String> {
    let lookup = resolver.inner().txt_lookup(format!("_mta-sts.{domain}.")).await.ok()?;
    let records: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
            _ => None,
        })
        .filter(|t| t.to_ascii_lowercase().starts_with("v=stsv1"))
        .collect();
    match records.as_slice() {
        [one] => mailgate_mtasts::record_id(one).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_kept_on_disk_is_read_back_and_odd_names_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let sts = Sts::new(Some(dir.path().join("mta-sts")));
        let policy = Policy::parse("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n").unwrap();
        let fetched = UNIX_EPOCH + Duration::from_secs(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs());
        sts.store("example.com", Entry { policy: policy.clone(), id: "abc1".into(), fetched });
        let again = Sts::new(Some(dir.path().join("mta-sts")));
        let e = again.cached("example.com").expect("read back from disk");
        assert_eq!((e.policy.clone(), e.id.as_str(), e.fetched), (policy.clone(), "abc1", fetched));
        assert!(e.valid() && again.cached("other.example").is_none());
        for odd in ["../evil", "a/b", ".hidden", "UPPER.example"] {
            assert!(again.path(odd).is_none(), "{odd}");
        }
        // An expired one is not valid.
        let old = Entry { policy, id: "x".into(), fetched: UNIX_EPOCH };
        assert!(!old.valid());
    }

    #[test]
    fn policies_in_memory_are_bounded_in_count_and_bytes() {
        let sts = Sts::new(None);
        let now = SystemTime::now();
        // Policies as large as a 64 KiB body allows: ~8 000 patterns each.
        let big: String = (0..8_000).map(|i| format!("mx: m{i}.example.net\n")).collect();
        let big = Policy::parse(&format!("version: STSv1\nmode: enforce\nmax_age: 86400\n{big}")).unwrap();
        let small = Policy::parse("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n").unwrap();
        for i in 0..200u64 {
            let policy = if i % 2 == 0 { big.clone() } else { small.clone() };
            let fetched = now - Duration::from_secs(1_000 - i);
            sts.store(&format!("d{i}.example"), Entry { policy, id: "1".into(), fetched });
            let c = sts.cache.lock().unwrap();
            let weights: usize = c.map.iter().map(|(d, e)| e.weight(d)).sum();
            assert_eq!(weights, c.bytes);
            assert!(c.bytes <= MAX_CACHED_BYTES, "{} octets after {i}", c.bytes);
        }
        // The newest is kept; the first, the oldest-fetched, went.
        assert!(sts.cached("d199.example").is_some());
        assert!(sts.cached("d0.example").is_none());
    }

    #[test]
    fn writes_never_share_a_temporary_file() {
        let a = temporary(Path::new("/s/mta-sts/bank.example"));
        let b = temporary(Path::new("/s/mta-sts/bank.test"));
        let again = temporary(Path::new("/s/mta-sts/bank.example"));
        assert!(a != b && a != again && b != again, "{a:?} {b:?} {again:?}");
        for t in [&a, &b, &again] {
            assert_eq!(t.parent(), Some(Path::new("/s/mta-sts")));
            // No domain's file can be named so (Sts::path allows no `_`).
            assert!(t.file_name().unwrap().to_string_lossy().contains("._"), "{t:?}");
        }
    }

    #[test]
    fn the_policies_on_disk_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sts = Sts { max_on_disk: 50, ..Sts::new(Some(dir.path().join("mta-sts"))) };
        let policy = Policy::parse("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n").unwrap();
        for i in 0..200 {
            let e = Entry { policy: policy.clone(), id: format!("{i}"), fetched: SystemTime::now() };
            sts.store(&format!("d{i}.example"), e);
        }
        let n = std::fs::read_dir(dir.path().join("mta-sts")).unwrap().count();
        assert!((45..=50).contains(&n), "{n} files");
        // The newest is there, and no temporary file was left.
        assert!(dir.path().join("mta-sts").join("d199.example").exists());
        let names: Vec<String> = std::fs::read_dir(dir.path().join("mta-sts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.starts_with('d') && n.ends_with(".example")), "{names:?}");
    }
}
