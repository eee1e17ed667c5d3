//! The suppression list: per API key, the recipients that bounced for good. The API gives a
//! suppressed recipient the status `suppressed` and does not send to it, until an operator
//! removes it (`mailgate suppression remove`).
//!
//! One JSON file in the spool directory, owned by the running gateway (the CLI goes through
//! the admin endpoint), written atomically; with it the event-log position up to which bounces
//! were read, so that none is missed across a restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file's name in the spool directory.
pub const FILE: &str = "api-suppressions.json";

/// One suppressed recipient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Suppressed {
    /// The API key it is suppressed for.
    pub key: String,
    /// The address, in lower case.
    pub address: String,
    /// The reply that bounced it.
    pub reason: String,
    /// The bounce's class (`invalid_recipient`, `bad_domain`).
    pub class: String,
    /// The message that bounced.
    pub queue_id: String,
    /// Unix time it was added.
    pub at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// The last event read from the event log.
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    entries: Vec<Suppressed>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a suppression file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

struct State {
    seq: u64,
    /// By (key, address).
    entries: BTreeMap<(String, String), Suppressed>,
}

pub struct Suppressions {
    path: PathBuf,
    state: Mutex<State>,
}

impl Suppressions {
    /// Opens `<spool>/api-suppressions.json` (empty when there is none yet).
    pub fn open(spool: &Path) -> Result<Suppressions, SuppressionError> {
        let path = spool.join(FILE);
        let file: File = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| SuppressionError::Format { path: path.clone(), source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => return Err(SuppressionError::Io { path, source }),
        };
        let entries = file.entries.into_iter().map(|e| ((e.key.clone(), e.address.clone()), e)).collect();
        Ok(Suppressions { path, state: Mutex::new(State { seq: file.seq, entries }) })
    }

    /// Whether `address` is suppressed for `key`.
    pub fn contains(&self, key: &str, address: &str) -> bool {
        self.state.lock().unwrap().entries.contains_key(&(key.to_string(), address.to_ascii_lowercase()))
    }

    /// The event-log position bounces were read up to.
    pub fn seq(&self) -> u64 {
        self.state.lock().unwrap().seq
    }

    /// Adds entries (an address already suppressed for its key keeps its first entry) and
    /// moves the position to `seq`; the file is rewritten when an entry was added. Returns
    /// how many were new.
    pub fn add(&self, new: Vec<Suppressed>, seq: u64) -> Result<usize, SuppressionError> {
        let mut st = self.state.lock().unwrap();
        let mut added = 0;
        for mut e in new {
            e.address = e.address.to_ascii_lowercase();
            if let std::collections::btree_map::Entry::Vacant(slot) =
                st.entries.entry((e.key.clone(), e.address.clone()))
            {
                slot.insert(e);
                added += 1;
            }
        }
        st.seq = st.seq.max(seq);
        if added > 0 {
            self.write(&st)?;
        }
        Ok(added)
    }

    /// Removes `address` for `key`; false when it was not suppressed.
    pub fn remove(&self, key: &str, address: &str) -> Result<bool, SuppressionError> {
        let mut st = self.state.lock().unwrap();
        if st.entries.remove(&(key.to_string(), address.to_ascii_lowercase())).is_none() {
            return Ok(false);
        }
        self.write(&st)?;
        Ok(true)
    }

    /// Every entry (for one key, when given), by key and address.
    pub fn list(&self, key: Option<&str>) -> Vec<Suppressed> {
        let st = self.state.lock().unwrap();
        st.entries.values().filter(|e| key.is_none_or(|k| e.key == k)).cloned().collect()
    }

    /// Writes the file: a temporary file, synced, renamed over the old one, directory synced.
    fn write(&self, st: &State) -> Result<(), SuppressionError> {
        let io = |source| SuppressionError::Io { path: self.path.clone(), source };
        let file = File { seq: st.seq, entries: st.entries.values().cloned().collect() };
        let body = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, address: &str) -> Suppressed {
        Suppressed {
            key: key.into(),
            address: address.into(),
            reason: "550 5.1.1 no such user".into(),
            class: "invalid_recipient".into(),
            queue_id: "Q".into(),
            at: 1,
        }
    }

    #[test]
    fn per_key_kept_across_opens_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suppressions::open(dir.path()).unwrap();
        assert_eq!(s.add(vec![entry("shop", "Gone@X.test"), entry("shop", "gone@x.test")], 7).unwrap(), 1);
        assert!(s.contains("shop", "GONE@x.test") && !s.contains("other-key", "gone@x.test"));
        let again = Suppressions::open(dir.path()).unwrap();
        assert_eq!((again.seq(), again.list(None).len()), (7, 1));
        assert!(again.remove("shop", "gone@x.test").unwrap());
        assert!(!again.remove("shop", "gone@x.test").unwrap());
        assert!(Suppressions::open(dir.path()).unwrap().list(Some("shop")).is_empty());
        std::fs::write(dir.path().join(FILE), b"not json").unwrap();
        assert!(matches!(Suppressions::open(dir.path()), Err(SuppressionError::Format { .. })));
    }
}
