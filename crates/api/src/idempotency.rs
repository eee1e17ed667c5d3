//! Idempotency keys: a request repeated with the same key (per API key) within 24 hours gets
//! the first answer again and sends nothing. Answers are appended to a log in the spool
//! directory and synced before the client hears them, so a repeat after a restart is still
//! recognised; the log is compacted when the gateway starts. A message whose answer never
//! reached the log (the gateway stopped between the spool write and the log write) is
//! recognised from its envelope, which carries the key ([`Idempotency::recover`]).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The log's name in the spool directory.
pub const FILE: &str = "api-idempotency.log";

/// How long an answer is remembered.
pub const TTL_SECS: u64 = 24 * 3600;

/// Answers remembered at most (the oldest are forgotten first, early).
const MAX_ENTRIES: usize = 1_000_000;

/// A remembered answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

#[derive(Serialize, Deserialize)]
struct Line {
    /// API key name.
    k: String,
    /// The client's idempotency key.
    i: String,
    /// Unix time of the answer.
    at: u64,
    s: u16,
    b: String,
}

enum Entry {
    /// A request with this key is being served now.
    InFlight,
    Done {
        answer: Answer,
    },
}

struct Inner {
    map: HashMap<(String, String), Entry>,
    /// Keys of done entries in the order they were answered, for expiry and the cap.
    order: VecDeque<(u64, (String, String))>,
    log: Option<std::fs::File>,
}

/// The idempotency table of a gateway.
pub struct Idempotency {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

/// What a request with an idempotency key does.
pub enum Begin {
    /// Serve it; report the answer through the guard.
    New(Guard),
    /// Answered before: this is the answer.
    Replay(Answer),
    /// The same key is being served right now (409).
    InProgress,
}

/// A request being served under an idempotency key; dropped without [`Guard::finish`], the
/// key is free again.
pub struct Guard {
    id: Option<(String, String)>,
    inner: Arc<Mutex<Inner>>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Idempotency {
    /// Opens the log in `spool_dir`: answers younger than a day are kept, the log rewritten
    /// with only those.
    pub fn open(spool_dir: &Path) -> std::io::Result<Idempotency> {
        let path = spool_dir.join(FILE);
        let (cutoff, mut kept) = (now().saturating_sub(TTL_SECS), Vec::new());
        match std::fs::read(&path) {
            Ok(bytes) => {
                // A torn last line (a crash mid-append) does not parse and is dropped: its
                // request was never answered.
                for line in bytes.split(|b| *b == b'\n') {
                    if let Ok(l) = serde_json::from_slice::<Line>(line) {
                        if l.at >= cutoff {
                            kept.push(l);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = path.with_extension("log.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            for l in &kept {
                serde_json::to_writer(&mut f, l)?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let log = std::fs::OpenOptions::new().append(true).open(&path)?;
        let mut inner = Inner { map: HashMap::new(), order: VecDeque::new(), log: Some(log) };
        for l in kept {
            let id = (l.k, l.i);
            inner.order.push_back((l.at, id.clone()));
            inner.map.insert(id, Entry::Done { answer: Answer { status: l.s, body: l.b } });
        }
        Ok(Idempotency { path, inner: Arc::new(Mutex::new(inner)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remembers a stored message's answer that the log may lack (see the module docs).
    pub fn recover(&self, key: &str, idempotency_key: &str, received_unix: u64, answer: Answer) {
        let mut inner = self.inner.lock().unwrap();
        let id = (key.to_string(), idempotency_key.to_string());
        if received_unix + TTL_SECS < now() || inner.map.contains_key(&id) {
            return;
        }
        inner.order.push_back((received_unix, id.clone()));
        inner.map.insert(id, Entry::Done { answer });
    }

    /// Starts a request under `(key, idempotency_key)`.
    pub fn begin(&self, key: &str, idempotency_key: &str) -> Begin {
        let mut inner = self.inner.lock().unwrap();
        let cutoff = now().saturating_sub(TTL_SECS);
        while let Some((at, _)) = inner.order.front() {
            if *at >= cutoff && inner.order.len() <= MAX_ENTRIES {
                break;
            }
            let (_, old) = inner.order.pop_front().expect("a front entry");
            if matches!(inner.map.get(&old), Some(Entry::Done { .. })) {
                inner.map.remove(&old);
            }
        }
        let id = (key.to_string(), idempotency_key.to_string());
        match inner.map.get(&id) {
            Some(Entry::Done { answer, .. }) => Begin::Replay(answer.clone()),
            Some(Entry::InFlight) => Begin::InProgress,
            None => {
                inner.map.insert(id.clone(), Entry::InFlight);
                Begin::New(Guard { id: Some(id), inner: self.inner.clone() })
            }
        }
    }
}

impl Guard {
    /// Records the answer (synced to the log before this returns: off the async threads).
    pub async fn finish(mut self, answer: Answer) -> std::io::Result<()> {
        let id = self.id.take().expect("finished once");
        let inner = self.inner.clone();
        let write = tokio::task::spawn_blocking(move || {
            let at = now();
            let line = Line { k: id.0.clone(), i: id.1.clone(), at, s: answer.status, b: answer.body.clone() };
            let mut text = serde_json::to_vec(&line).expect("serialises");
            text.push(b'\n');
            let mut g = inner.lock().unwrap();
            let res = match g.log.as_mut() {
                Some(f) => f.write_all(&text).and_then(|_| f.sync_data()),
                None => Ok(()),
            };
            g.order.push_back((at, id.clone()));
            g.map.insert(id, Entry::Done { answer });
            res
        });
        write.await.map_err(std::io::Error::other)?
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Ok(mut g) = self.inner.lock() {
                g.map.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_replayed_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = Idempotency::open(dir.path()).unwrap();
        let Begin::New(g) = t.begin("shop", "order-1") else { panic!("new key") };
        assert!(matches!(t.begin("shop", "order-1"), Begin::InProgress));
        assert!(matches!(t.begin("other-key", "order-1"), Begin::New(_)), "scoped by API key");
        g.finish(Answer { status: 202, body: "{\"id\":\"A\"}".into() }).await.unwrap();
        let Begin::Replay(a) = t.begin("shop", "order-1") else { panic!("replayed") };
        assert_eq!(a.status, 202);
        {
            let Begin::New(_dropped) = t.begin("shop", "order-2") else { panic!("new key") };
        }
        assert!(matches!(t.begin("shop", "order-2"), Begin::New(_)), "a dropped guard frees the key");
        drop(t);
        // A torn line at the end is ignored.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(FILE)).unwrap();
        f.write_all(b"{\"k\":\"shop\",\"i\":\"torn").unwrap();
        let t = Idempotency::open(dir.path()).unwrap();
        assert!(matches!(t.begin("shop", "order-1"), Begin::Replay(Answer { status: 202, .. })));
        t.recover("shop", "order-3", now(), Answer { status: 202, body: "{}".into() });
        assert!(matches!(t.begin("shop", "order-3"), Begin::Replay(_)));
    }
}
