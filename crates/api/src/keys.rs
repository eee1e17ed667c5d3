//! API keys. A key is `mg_` and 43 characters of base64url (256 random bits), shown once when
//! it is made; the keys file keeps only its SHA-256 (a key is random, not a password: a fast
//! hash is the right one, and a lookup costs one hash). The file lives in the spool directory,
//! is written atomically with mode 0600, and the running gateway notices a change within a
//! second (a revoked key stops working without a reload).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The keys file's name in the spool directory.
pub const FILE: &str = "api-keys.json";

/// One key as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKey {
    /// Unique; in logs, events and plugins' `authenticated-as`.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The key's first characters, so that an operator can tell keys apart.
    pub prefix: String,
    /// Sender domains the key may use (envelope and header From); empty: any.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Messages per minute; none: no limit.
    #[serde(default)]
    pub rate_per_min: Option<u32>,
    /// The `[[pool]]` of source addresses the key's mail leaves from; none: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Unix time it was made.
    pub created: u64,
    /// Unix time it was revoked; a revoked key is kept so its name is not reused by mistake.
    #[serde(default)]
    pub revoked: Option<u64>,
}

impl ApiKey {
    /// Whether the key may send as `domain`.
    pub fn allows(&self, domain: &str) -> bool {
        self.allow_from.is_empty() || self.allow_from.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    keys: Vec<ApiKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a keys file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
    #[error("a key named {0:?} exists already")]
    Exists(String),
    #[error("no key named {0:?}")]
    NotFound(String),
    #[error("invalid key name {0:?}: use letters, digits, '.', '_' and '-' (at most 64)")]
    BadName(String),
}

/// The keys file, for the CLI (create, list, revoke).
pub struct KeyStore {
    path: PathBuf,
}

/// A key's SHA-256: what the server looks a bearer token up by.
type Digest = [u8; 32];

fn sha256(key: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref().try_into().expect("SHA-256 has 32 octets")
}

/// The digest as the keys file stores it (lower-case hex).
fn sha256_hex(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in sha256(key) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// A stored hash read back; `None` for one that is not 64 hex digits (no token matches it).
fn digest_of_hex(hex: &str) -> Option<Digest> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KeyStore {
    /// The keys file of the spool at `spool_dir`.
    pub fn in_spool(spool_dir: &Path) -> KeyStore {
        KeyStore { path: spool_dir.join(FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<File, KeyError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| KeyError::Format { path: self.path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(source) => Err(KeyError::Io { path: self.path.clone(), source }),
        }
    }

    /// Writes the file whole: a temporary file (0600), fsync, rename.
    fn write(&self, f: &File) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut out =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(f).expect("keys serialise");
        out.write_all(&text).and_then(|_| out.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// Makes a key; returns the key itself (shown once) and what is stored.
    pub fn create(
        &self,
        name: &str,
        allow_from: Vec<String>,
        rate_per_min: Option<u32>,
        pool: Option<String>,
    ) -> Result<(String, ApiKey), KeyError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
            return Err(KeyError::BadName(name.into()));
        }
        let mut f = self.read()?;
        if f.keys.iter().any(|k| k.name == name) {
            return Err(KeyError::Exists(name.into()));
        }
        let secret: [u8; 32] = rand::random();
        let key = format!("mg_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        let stored = ApiKey {
            name: name.into(),
            hash: sha256_hex(&key),
            prefix: key[..9].to_string(),
            allow_from: allow_from.into_iter().map(|d| d.trim().to_ascii_lowercase()).collect(),
            rate_per_min,
            pool,
            created: unix_now(),
            revoked: None,
        };
        f.keys.push(stored.clone());
        self.write(&f)?;
        Ok((key, stored))
    }

    pub fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        Ok(self.read()?.keys)
    }

    pub fn revoke(&self, name: &str) -> Result<(), KeyError> {
        let mut f = self.read()?;
        let k = f.keys.iter_mut().find(|k| k.name == name).ok_or_else(|| KeyError::NotFound(name.into()))?;
        if k.revoked.is_none() {
            k.revoked = Some(unix_now());
            self.write(&f)?;
        }
        Ok(())
    }
}

/// What identifies a version of the keys file: a change of any means "read it again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), ino: m.ino() })
}

/// How often the file is looked at for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// A token bucket: `rate` messages a minute, bursts up to a minute's worth.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The active keys by their SHA-256 (binary: a token is hashed at every request, and neither
/// hex nor a `String` is needed to look it up), and the version of the file they were read from.
type Active = (Option<Stamp>, HashMap<Digest, Arc<ApiKey>>);

/// The keys as the server uses them: active keys by hash, rate buckets by name.
pub struct Keys {
    path: PathBuf,
    active: RwLock<Active>,
    checked: Mutex<Instant>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Keys {
    /// Reads the keys file (missing: no keys yet); a file that does not parse is an error.
    pub fn open(spool_dir: &Path) -> Result<Keys, KeyError> {
        let store = KeyStore::in_spool(spool_dir);
        let keys = Keys {
            path: store.path.clone(),
            active: RwLock::new((None, HashMap::new())),
            checked: Mutex::new(Instant::now()),
            buckets: Mutex::new(HashMap::new()),
        };
        keys.load()?;
        Ok(keys)
    }

    /// Reads the file again now (at start and on reload).
    pub fn load(&self) -> Result<usize, KeyError> {
        let st = stamp(&self.path);
        let file = KeyStore { path: self.path.clone() }.read()?;
        let map: HashMap<_, _> = file
            .keys
            .into_iter()
            .filter(|k| k.revoked.is_none())
            .filter_map(|k| match digest_of_hex(&k.hash) {
                Some(d) => Some((d, Arc::new(k))),
                None => {
                    tracing::warn!(key = %k.name, "API key ignored: its stored hash is not 64 hex digits");
                    None
                }
            })
            .collect();
        let n = map.len();
        *self.active.write().unwrap() = (st, map);
        Ok(n)
    }

    /// Reads the file again if it changed since it was last read: looked at once a second, or
    /// now when `now` (a key that is not known may have just been made).
    fn refresh(&self, now: bool) {
        {
            let mut at = self.checked.lock().unwrap();
            if !now && at.elapsed() < RECHECK {
                return;
            }
            *at = Instant::now();
        }
        if stamp(&self.path) != self.active.read().unwrap().0 {
            match self.load() {
                Ok(n) => tracing::info!(keys = n, "API keys read again"),
                Err(e) => tracing::error!("API keys file changed but cannot be read, the keys stay as they were: {e}"),
            }
        }
    }

    /// The active key a bearer token names, if any.
    pub fn verify(&self, token: &str) -> Option<Arc<ApiKey>> {
        if !token.starts_with("mg_") || token.len() > 128 {
            return None;
        }
        self.refresh(false);
        let hash = sha256(token);
        let found = self.active.read().unwrap().1.get(&hash).cloned();
        found.or_else(|| {
            // One stat(2): cheap next to the request that brought the token.
            self.refresh(true);
            self.active.read().unwrap().1.get(&hash).cloned()
        })
    }

    /// Takes one message from the key's rate; `Err(seconds)` until one is available.
    pub fn take(&self, key: &ApiKey) -> Result<(), u64> {
        self.take_n(key, 1).map_err(|e| match e {
            OverRate::Wait(s) => s,
            OverRate::Never { .. } => 60,
        })
    }

    /// Takes `n` messages (a batch) from the key's rate at once, or none.
    pub fn take_n(&self, key: &ApiKey, n: usize) -> Result<(), OverRate> {
        let Some(per_min) = key.rate_per_min.filter(|r| *r > 0) else { return Ok(()) };
        let (rate, want) = (f64::from(per_min), n as f64);
        if want > rate {
            return Err(OverRate::Never { per_min });
        }
        let mut buckets = self.buckets.lock().unwrap();
        let now = Instant::now();
        let b = buckets.entry(key.name.clone()).or_insert(Bucket { tokens: rate, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate / 60.0).min(rate);
        b.at = now;
        if b.tokens >= want {
            b.tokens -= want;
            Ok(())
        } else {
            Err(OverRate::Wait(((want - b.tokens) * 60.0 / rate).ceil().max(1.0) as u64))
        }
    }
}

/// Why a key's rate refuses messages now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverRate {
    /// Seconds until there is room.
    Wait(u64),
    /// More at once than the key's rate ever allows (a minute's worth): a batch to split.
    Never { per_min: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hashes_read_back() {
        let h = sha256_hex("mg_x");
        assert_eq!(digest_of_hex(&h), Some(sha256("mg_x")));
        assert_eq!(digest_of_hex(&h.to_ascii_uppercase()), Some(sha256("mg_x")));
        for bad in [String::new(), h[..63].into(), format!("{}g", &h[..63]), format!("{h}0"), format!("+{}", &h[1..])] {
            assert_eq!(digest_of_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::in_spool(dir.path());
        let (key, stored) = store.create("shop", vec!["Shop.Example".into()], Some(2), None).unwrap();
        assert!(key.starts_with("mg_") && key.len() == 46, "{key}");
        assert!(!std::fs::read_to_string(store.path()).unwrap().contains(&key), "only the hash is stored");
        assert!(stored.allows("shop.example") && !stored.allows("other.example"));
        assert!(matches!(store.create("shop", vec![], None, None), Err(KeyError::Exists(_))));
        assert!(matches!(store.create("bad name", vec![], None, None), Err(KeyError::BadName(_))));
        let keys = Keys::open(dir.path()).unwrap();
        let k = keys.verify(&key).expect("the key works");
        assert_eq!(k.name, "shop");
        assert!(keys.verify("mg_wrong").is_none());
        assert!(keys.take(&k).is_ok() && keys.take(&k).is_ok());
        let wait = keys.take(&k).unwrap_err();
        assert_eq!(keys.take_n(&k, 3), Err(OverRate::Never { per_min: 2 }), "more than a minute's worth");
        assert!(matches!(keys.take_n(&k, 2), Err(OverRate::Wait(59..=60))), "a whole minute's worth to wait for");
        assert!((1..=30).contains(&wait), "{wait}");
        store.revoke("shop").unwrap();
        keys.load().unwrap();
        assert!(keys.verify(&key).is_none(), "revoked");
        assert!(matches!(store.revoke("nobody"), Err(KeyError::NotFound(_))));
    }
}
