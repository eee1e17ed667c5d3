//! Idempotency keys: a request repeated with the same key (per API key) within 24 hours gets
//! the first answer again and sends nothing. Answers are appended to a log in the spool
//! directory and synced before the client hears them, so a repeat after a restart is still
//! recognised; the log is compacted when the gateway starts. A message whose answer never
//! reached the log (the gateway stopped between the spool write and the log write) is
//! recognised from its envelope, which carries the key ([`Idempotency::recover`]). A log
//! older than a day is renamed to `…log.old` (replacing the one before, whose answers are all
//! older than a day by then) and a new one started, so the files hold at most two days of
//! answers however long the gateway runs.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The log's name in the spool directory, and the previous day's.
pub const FILE: &str = "api-idempotency.log";
const OLD_FILE: &str = "api-idempotency.log.old";

/// How long an answer is remembered.
pub const TTL_SECS: u64 = 24 * 3600;

/// Answers remembered at most, and their octets at most (the oldest are forgotten first,
/// early): a key that sends many requests with large answers (a receipt per recipient) cannot
/// make the table grow without end within the day.
const MAX_ENTRIES: usize = 1_000_000;
const MAX_BYTES: usize = 256 << 20;

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
    /// Octets of the done entries (keys and answers), and their cap ([`MAX_BYTES`]).
    bytes: usize,
    max_bytes: usize,
    log: Option<std::fs::File>,
    /// Where the log is, and when (Unix time) it was started: a day later it is rotated.
    path: PathBuf,
    log_started: u64,
}

/// What a done entry counts against [`MAX_BYTES`].
fn entry_bytes(id: &(String, String), answer: &Answer) -> usize {
    id.0.len() + id.1.len() + answer.body.len() + 64
}

impl Inner {
    /// Moves a log older than a day aside and starts a new one (see the module docs).
    fn rotate_if_old(&mut self, now: u64) -> std::io::Result<()> {
        if now < self.log_started + TTL_SECS || self.log.is_none() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::rename(&self.path, dir.join(OLD_FILE))?;
        self.log = Some(std::fs::OpenOptions::new().append(true).create(true).open(&self.path)?);
        // The new file's name must survive a crash with the answers written into it.
        std::fs::File::open(dir)?.sync_all()?;
        self.log_started = now;
        Ok(())
    }

    fn remember(&mut self, at: u64, id: (String, String), answer: Answer) {
        self.bytes += entry_bytes(&id, &answer);
        self.order.push_back((at, id.clone()));
        if let Some(Entry::Done { answer }) = self.map.insert(id.clone(), Entry::Done { answer }) {
            // Remembered twice (recovered, then logged): counted once.
            self.bytes = self.bytes.saturating_sub(entry_bytes(&id, &answer));
        }
    }

    /// Forgets answers older than a day, and the oldest beyond the caps.
    fn expire(&mut self, cutoff: u64) {
        while let Some((at, _)) = self.order.front() {
            if *at >= cutoff && self.order.len() <= MAX_ENTRIES && self.bytes <= self.max_bytes {
                break;
            }
            let (_, old) = self.order.pop_front().expect("a front entry");
            if let Some(Entry::Done { answer }) = self.map.get(&old) {
                self.bytes = self.bytes.saturating_sub(entry_bytes(&old, answer));
                self.map.remove(&old);
            }
        }
    }
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
        // The previous day's log first, then the current one: answers in the order given.
        for file in [spool_dir.join(OLD_FILE), path.clone()] {
            match std::fs::read(&file) {
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
        // Everything the old log still had is in the new one now.
        match std::fs::remove_file(spool_dir.join(OLD_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let log = std::fs::OpenOptions::new().append(true).open(&path)?;
        let mut inner = Inner {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes: MAX_BYTES,
            log: Some(log),
            path: path.clone(),
            log_started: now(),
        };
        for l in kept {
            inner.remember(l.at, (l.k, l.i), Answer { status: l.s, body: l.b });
        }
        inner.expire(cutoff);
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
        inner.remember(received_unix, id, answer);
    }

    /// Starts a request under `(key, idempotency_key)`.
    pub fn begin(&self, key: &str, idempotency_key: &str) -> Begin {
        let mut inner = self.inner.lock().unwrap();
        inner.expire(now().saturating_sub(TTL_SECS));
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
            let res = g.rotate_if_old(at).and_then(|()| match g.log.as_mut() {
                Some(f) => f.write_all(&text).and_then(|_| f.sync_data()),
                None => Ok(()),
            });
            g.remember(at, id, answer);
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

    /// A day-old log is moved aside at the next answer; after a restart the answers of both
    /// files are known, and the old file is gone once its answers are in the new log.
    #[tokio::test]
    async fn the_log_is_rotated_daily_and_both_days_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let t = Idempotency::open(dir.path()).unwrap();
        let Begin::New(g) = t.begin("shop", "before") else { panic!() };
        g.finish(Answer { status: 202, body: "1".into() }).await.unwrap();
        t.inner.lock().unwrap().log_started -= TTL_SECS;
        let Begin::New(g) = t.begin("shop", "after") else { panic!() };
        g.finish(Answer { status: 202, body: "2".into() }).await.unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        assert!(read(OLD_FILE).contains("before") && !read(OLD_FILE).contains("after"), "{}", read(OLD_FILE));
        assert!(read(FILE).contains("after") && !read(FILE).contains("before"), "{}", read(FILE));
        drop(t);
        let t = Idempotency::open(dir.path()).unwrap();
        assert!(matches!(t.begin("shop", "before"), Begin::Replay(_)));
        assert!(matches!(t.begin("shop", "after"), Begin::Replay(_)));
        assert!(!dir.path().join(OLD_FILE).exists() && read(FILE).contains("before"));
    }

    /// Large answers are forgotten oldest first once their octets pass the cap; the newest
    /// stay, and the count of octets follows what is kept.
    #[tokio::test]
    async fn answers_are_capped_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let t = Idempotency::open(dir.path()).unwrap();
        t.inner.lock().unwrap().max_bytes = 10_000;
        let body = "x".repeat(1_000);
        for i in 0..50 {
            let Begin::New(g) = t.begin("shop", &format!("k{i}")) else { panic!("new key {i}") };
            g.finish(Answer { status: 202, body: body.clone() }).await.unwrap();
        }
        // The cap is applied when the next request begins.
        assert!(matches!(t.begin("shop", "k49"), Begin::Replay(_)), "the newest is kept");
        assert!(matches!(t.begin("shop", "k0"), Begin::New(_)), "the oldest is forgotten");
        let g = t.inner.lock().unwrap();
        let kept = g.map.values().filter(|e| matches!(e, Entry::Done { .. })).count();
        assert!((8..=10).contains(&kept), "{kept} kept");
        assert!(g.bytes <= 10_000 && g.bytes >= kept * 1_000, "{} octets for {kept}", g.bytes);
    }
}
