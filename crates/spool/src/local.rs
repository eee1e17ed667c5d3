//! The local-disk spool: segment files `NNNNNNNNNNNNNNNN.log` in one directory, appended to by
//! one writer thread that group-commits, and deleted oldest-first once nothing in them is live.
//!
//! Ordering is the invariant that makes recovery simple: a record about a message is always in
//! the same or a later segment than the message's store record, and segments are deleted only
//! from the oldest end. A long-deferred message that pins an old segment is relocated (its store
//! record written again at the head) so the space behind it can be freed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::record::{self, Kind};
use crate::{BoxFuture, DataRef, Envelope, QueueId, Spool, SpoolError};

/// Largest batch the writer gathers before it syncs.
const MAX_BATCH: usize = 8 << 20;
/// Sealed segments kept before the oldest one's live messages are relocated.
const COMPACT_AFTER: usize = 4;
/// How far ahead of its records a segment's file is written with zeros. A sync after an
/// append that grew the file must write the inode as well (the size is needed to read the
/// data back): on ext4 without a journal a second write and wait, with a journal a journal
/// commit, on every group commit. Records written over zeros already on disk change no
/// metadata, so their `fdatasync` writes the data and flushes, nothing else — one growth a
/// mebibyte instead of one a commit (PostgreSQL zero-fills its WAL segments for the same
/// reason). Recovery reads zeros after the last record as the end of a segment.
const ZERO_AHEAD: u64 = 1 << 20;
/// Zeros written at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

type Ack = tokio::sync::oneshot::Sender<Result<(), WriteFailed>>;

/// A batch the writer could not write (or sync): every waiter of the batch gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{1}")]
struct WriteFailed(std::io::ErrorKind, Arc<str>);

impl From<WriteFailed> for SpoolError {
    fn from(e: WriteFailed) -> SpoolError {
        SpoolError::Io(std::io::Error::new(e.0, e.1.to_string()))
    }
}

/// One record for the writer.
struct Req {
    kind: Kind,
    id: QueueId,
    /// The encoded record.
    bytes: Vec<u8>,
    /// Offset of the content inside `bytes`, and its length (store records).
    data_rel: usize,
    data_len: usize,
    /// Envelope JSON (store and update records), kept for relocation.
    meta: Vec<u8>,
    /// Content written right after `bytes`, shared with the caller instead of copied (new
    /// messages); `None` when `bytes` is the whole record.
    data: Option<Arc<Vec<u8>>>,
    /// Who waits for the sync; `None` for records that ride along with the next one.
    ack: Option<Ack>,
}

/// What the index and the writer share.
struct Shared {
    /// Where each live message's content is.
    index: Mutex<HashMap<QueueId, DataRef>>,
    /// Open read handles per segment.
    files: Mutex<HashMap<u64, Arc<File>>>,
    dir: PathBuf,
}

/// A live message as [`Spool::claim_due`] sees it: its latest envelope, and until when it is
/// claimed (Unix ms; 0: free).
struct Claimable {
    env: Envelope,
    leased_until: u64,
}

/// The local-disk [`Spool`]. Cheap to share behind an `Arc`.
pub struct LocalSpool {
    /// Every live message's latest envelope and claim, for `claim_due`.
    claims: Mutex<BTreeMap<QueueId, Claimable>>,
    /// Where records wait for the writer.
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
    /// Last id issued; ids are microseconds since the epoch, made strictly increasing.
    last_id: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Writes every slice in order, in as few vectored writes as the kernel takes.
fn write_all_slices(f: &mut File, slices: &[&[u8]]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    // IOV_MAX on Linux.
    const MAX_IOV: usize = 1024;
    let mut io: Vec<IoSlice<'_>> = slices.iter().filter(|s| !s.is_empty()).map(|s| IoSlice::new(s)).collect();
    let mut rest = &mut io[..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_IOV);
        let wrote = f.write_vectored(&rest[..n])?;
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, wrote);
    }
    Ok(())
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.log"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unpin(pins: &mut BTreeMap<u64, usize>, seg: u64) {
    if let Some(n) = pins.get_mut(&seg) {
        *n = n.saturating_sub(1);
    }
}

/// A live message as the writer tracks it.
struct Live {
    /// Segment of its store record (holds the content).
    home: u64,
    /// Segment of its latest envelope.
    meta_seg: u64,
    meta: Vec<u8>,
}

struct Writer {
    shared: Arc<Shared>,
    active: File,
    active_seg: u64,
    /// Where the next record goes: the records' end.
    active_len: u64,
    /// The active file's length: records, then zeros ([`ZERO_AHEAD`]).
    active_end: u64,
    segment_size: u64,
    live: HashMap<QueueId, Live>,
    /// Live references per segment (every existing segment has an entry, maybe 0).
    pins: BTreeMap<u64, usize>,
    /// A write failed: refuse batches until a fresh segment is open.
    poisoned: bool,
}

impl LocalSpool {
    /// Opens (creating if needed) the spool in `dir`, and returns it with every message that
    /// was stored and not finished, in the order they were stored.
    pub fn open(dir: &Path, segment_size: u64) -> Result<(Arc<LocalSpool>, Vec<Envelope>), SpoolError> {
        fs::create_dir_all(dir)?;
        let dir = fs::canonicalize(dir)?;
        let mut segs: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        segs.sort_unstable();

        let mut live: HashMap<QueueId, Live> = HashMap::new();
        let mut order: Vec<QueueId> = vec![];
        let mut index = HashMap::new();
        let mut damaged = vec![];
        // Highest queue id seen, so new ids stay unique even if the clock went back.
        let mut max_id = 0u64;
        for &seg in &segs {
            let buf = fs::read(seg_path(&dir, seg))?;
            let mut at = 0;
            while let Some(r) = record::decode(&buf, at)? {
                at += r.len;
                match r.kind {
                    Kind::Store => {
                        let env: Envelope = match serde_json::from_slice(r.meta) {
                            Ok(e) => e,
                            Err(e) => {
                                tracing::error!(segment = seg, "unreadable envelope in spool: {e}");
                                continue;
                            }
                        };
                        if !live.contains_key(&env.id) {
                            order.push(env.id.clone());
                        }
                        max_id = max_id.max(u64::from_str_radix(&env.id, 16).unwrap_or(0));
                        index.insert(
                            env.id.clone(),
                            DataRef { segment: seg, offset: r.data_offset as u64, len: r.data_len as u64 },
                        );
                        live.insert(env.id, Live { home: seg, meta_seg: seg, meta: r.meta.to_vec() });
                    }
                    Kind::Update => {
                        let Ok(env) = serde_json::from_slice::<Envelope>(r.meta) else { continue };
                        if let Some(l) = live.get_mut(&env.id) {
                            l.meta_seg = seg;
                            l.meta = r.meta.to_vec();
                        }
                    }
                    Kind::Done => {
                        let id = String::from_utf8_lossy(r.meta).into_owned();
                        live.remove(&id);
                        index.remove(&id);
                    }
                }
            }
            // Zeros after the last record are the part written ahead ([`ZERO_AHEAD`]).
            if at < buf.len() && buf[at..].iter().any(|&b| b != 0) {
                if Some(&seg) == segs.last() {
                    tracing::warn!(
                        segment = seg,
                        offset = at,
                        "spool segment ends in a torn tail (never acknowledged); cut off"
                    );
                    // Cut off (and the cut synced) before a new segment follows it: sealed
                    // behind that one, a torn tail would read as damage at every later start,
                    // and the segment would be kept for ever.
                    let cut = OpenOptions::new().write(true).open(seg_path(&dir, seg));
                    cut.and_then(|f| f.set_len(at as u64).and_then(|_| f.sync_all()))?;
                } else {
                    // Not the tail of the log: records after this point may matter. Keep the
                    // file for an operator instead of ever reclaiming it.
                    tracing::error!(
                        segment = seg,
                        offset = at,
                        "corrupt record inside a sealed spool segment; segment kept"
                    );
                    damaged.push(seg);
                }
            }
        }
        let recovered: Vec<Envelope> =
            order.iter().filter_map(|id| live.get(id)).filter_map(|l| serde_json::from_slice(&l.meta).ok()).collect();

        let mut pins: BTreeMap<u64, usize> = segs.iter().map(|s| (*s, 0)).collect();
        for l in live.values() {
            *pins.entry(l.home).or_default() += 1;
            *pins.entry(l.meta_seg).or_default() += 1;
        }
        for seg in damaged {
            *pins.entry(seg).or_default() += 1;
        }
        // Always start a fresh segment: never append behind a torn tail.
        let active_seg = segs.last().map_or(1, |s| s + 1);
        // Written at its position (not appended): the zeros ahead of the records are overwritten.
        let active = OpenOptions::new().create_new(true).write(true).open(seg_path(&dir, active_seg))?;
        sync_dir(&dir)?;
        pins.insert(active_seg, 0);

        let shared = Arc::new(Shared { index: Mutex::new(index), files: Mutex::new(HashMap::new()), dir: dir.clone() });
        let mut writer = Writer {
            shared: shared.clone(),
            active,
            active_seg,
            active_len: 0,
            active_end: 0,
            segment_size,
            live,
            pins,
            poisoned: false,
        };
        writer.collect_garbage();
        let inbox = Arc::new(Inbox::default());
        let rx = inbox.clone();
        let handle = std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(rx))?;
        let claims = recovered.iter().map(|e| (e.id.clone(), Claimable { env: e.clone(), leased_until: 0 })).collect();
        let spool = Arc::new(LocalSpool {
            claims: Mutex::new(claims),
            inbox,
            shared,
            last_id: AtomicU64::new(max_id),
            writer: Mutex::new(Some(handle)),
        });
        Ok((spool, recovered))
    }

    fn send(&self, req: Req) -> Result<(), SpoolError> {
        self.inbox.send(req)
    }

    /// Hands a record that needs no sync of its own (an update, a done) to the writer now: it
    /// is written (to the page cache, which a killed process does not lose) with the next
    /// batch — when the writer is idle, as soon as the worker that hands it over runs out of
    /// work (or a later record finds the wake owed for a millisecond) — so that a delivery's
    /// result reaches the file within moments of the delivery, and a crash right after it
    /// does not send it again. It is fsynced with the next store's sync (or at close).
    fn prompt(&self, req: Req) {
        if self.send(req).is_err() {
            tracing::warn!("spool is closed: a late update or done record was not written");
        }
    }

    /// Flushes and stops the writer (also done on drop).
    pub fn close(&self) {
        self.inbox.close();
        if let Some(h) = self.writer.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    /// Whether the writer sleeps for want of records (for tests).
    #[doc(hidden)]
    pub fn writer_waiting(&self) -> bool {
        self.inbox.st.lock().unwrap_or_else(|e| e.into_inner()).waiting
    }

    /// Whether a thread owes the writer its wake (for tests).
    #[doc(hidden)]
    pub fn writer_wake_owed(&self) -> bool {
        self.inbox.owed_since.load(Ordering::Acquire) != 0
    }

    /// Number of segment files on disk (for tests and the status command).
    pub fn segment_count(&self) -> usize {
        fs::read_dir(&self.shared.dir).map(|d| d.filter(|e| e.is_ok()).count()).unwrap_or(0)
    }
}

impl Drop for LocalSpool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Spool for LocalSpool {
    fn store<'a>(&'a self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(async move {
            // Claimed by whoever stores it: the queue that takes it next.
            let claim = Claimable { env: env.clone(), leased_until: u64::MAX };
            self.claims.lock().unwrap().insert(env.id.clone(), claim);
            let meta = serde_json::to_vec(env).expect("envelope serializes");
            let bytes = record::head(Kind::Store, &meta, &data);
            let (ack, wait) = tokio::sync::oneshot::channel();
            self.send(Req {
                kind: Kind::Store,
                id: env.id.clone(),
                data_rel: bytes.len(),
                bytes,
                data_len: data.len(),
                meta,
                data: Some(data),
                ack: Some(ack),
            })?;
            let stored = match wait.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(SpoolError::Closed),
            };
            if stored.is_err() {
                self.claims.lock().unwrap().remove(&env.id);
            }
            stored
        })
    }

    fn update(&self, env: &Envelope) {
        if let Some(c) = self.claims.lock().unwrap().get_mut(&env.id) {
            *c = Claimable { env: env.clone(), leased_until: 0 };
        }
        let meta = serde_json::to_vec(env).expect("envelope serializes");
        let mut bytes = Vec::new();
        record::encode(&mut bytes, Kind::Update, &meta, &[]);
        self.prompt(Req {
            kind: Kind::Update,
            id: env.id.clone(),
            bytes,
            data_rel: 0,
            data_len: 0,
            meta,
            data: None,
            ack: None,
        });
    }

    fn complete(&self, id: &QueueId) {
        self.claims.lock().unwrap().remove(id);
        let mut bytes = Vec::new();
        record::encode(&mut bytes, Kind::Done, id.as_bytes(), &[]);
        self.prompt(Req {
            kind: Kind::Done,
            id: id.clone(),
            bytes,
            data_rel: 0,
            data_len: 0,
            meta: vec![],
            data: None,
            ack: None,
        });
    }

    fn read<'a>(&'a self, id: &'a QueueId) -> BoxFuture<'a, Result<Vec<u8>, SpoolError>> {
        let (shared, id) = (self.shared.clone(), id.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || shared.read_message(&id)).await.map_err(|_| SpoolError::Closed)?
        })
    }

    fn claim_due<'a>(
        &'a self,
        now_ms: u64,
        n: usize,
        lease: std::time::Duration,
    ) -> BoxFuture<'a, Result<Vec<Envelope>, SpoolError>> {
        let until = now_ms.saturating_add(lease.as_millis() as u64);
        let mut claims = self.claims.lock().unwrap();
        let due = claims
            .values_mut()
            .filter(|c| c.env.next_attempt <= now_ms && c.leased_until <= now_ms)
            .filter(|c| !c.env.held && c.env.quarantine.is_none())
            .take(n)
            .map(|c| {
                c.leased_until = until;
                c.env.clone()
            })
            .collect();
        Box::pin(std::future::ready(Ok(due)))
    }

    fn release<'a>(&'a self, id: &'a QueueId) -> BoxFuture<'a, Result<(), SpoolError>> {
        let r = match self.claims.lock().unwrap().get_mut(id) {
            Some(c) => {
                c.leased_until = 0;
                Ok(())
            }
            None => Err(SpoolError::NotFound(id.clone())),
        };
        Box::pin(std::future::ready(r))
    }

    fn new_id(&self) -> QueueId {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_id.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return hex16(next),
                Err(seen) => last = seen,
            }
        }
    }
}

/// `n` as 16 upper-case hex digits (a queue id; `format!` took ~900 instructions a message).
fn hex16(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits: Vec<u8> = (0..16).rev().map(|i| HEX[(n >> (i * 4)) as usize & 15]).collect();
    String::from_utf8(digits).unwrap_or_default()
}

impl LocalSpool {
    /// Reads a stored message's content, on this thread (tests, tools).
    pub fn read_blocking(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        self.shared.read_message(id)
    }
}

impl Shared {
    fn read_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        // A relocation may move the content between the index lookup and the read: retry once.
        for _ in 0..2 {
            let r = *self.index.lock().unwrap().get(id).ok_or_else(|| SpoolError::NotFound(id.clone()))?;
            match self.read_at(r) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SpoolError::NotFound(id.clone()))
    }
}

impl Shared {
    fn file(&self, seg: u64) -> std::io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(&seg) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(seg_path(&self.dir, seg))?);
        files.insert(seg, f.clone());
        Ok(f)
    }

    fn read_at(&self, r: DataRef) -> std::io::Result<Vec<u8>> {
        let f = self.file(r.segment)?;
        let mut buf = vec![0; r.len as usize];
        f.read_exact_at(&mut buf, r.offset)?;
        Ok(buf)
    }
}

impl Writer {
    fn run(mut self, rx: Arc<Inbox>) {
        loop {
            let Some(batch) = rx.take() else { break };
            let _ = self.commit(batch, false);
            self.maybe_rotate();
        }
        let _ = self.active.sync_data();
    }

    /// Writes a batch with one sync, then applies it to the in-memory state and acknowledges
    /// it. Nothing is applied unless the write (and, when `sync` or a record waits for it, the
    /// sync) succeeded: a failed batch leaves every old segment pinned. After a failure the
    /// writer is poisoned until a fresh segment is open, so nothing is ever appended behind a
    /// partial record.
    fn commit(&mut self, batch: Vec<Req>, sync: bool) -> Result<(), WriteFailed> {
        if self.poisoned {
            self.rotate();
        }
        let seg = self.active_seg;
        let mut offsets = Vec::with_capacity(batch.len());
        let mut need_sync = sync;
        // The batch is written as it is, record after record, in vectored writes: no copy of
        // the content into a batch buffer.
        let mut slices: Vec<&[u8]> = Vec::with_capacity(batch.len() * 2);
        let mut written = 0u64;
        for r in &batch {
            offsets.push(self.active_len + written);
            slices.push(&r.bytes);
            written += r.bytes.len() as u64;
            if let Some(d) = &r.data {
                slices.push(d);
                written += d.len() as u64;
            }
            need_sync |= r.ack.is_some();
        }
        let res = if self.poisoned {
            Err(WriteFailed(std::io::ErrorKind::Other, "spool writer cannot open a new segment".into()))
        } else {
            let started = std::time::Instant::now();
            let r = write_all_slices(&mut self.active, &slices).and_then(|_| {
                self.zero_ahead(self.active_len + written);
                if need_sync {
                    self.active.sync_data()
                } else {
                    Ok(())
                }
            });
            if need_sync {
                metrics::histogram!("mailgate_spool_fsync_seconds").record(started.elapsed().as_secs_f64());
                metrics::counter!("mailgate_spool_commits_total").increment(1);
            }
            metrics::counter!("mailgate_spool_bytes_total").increment(written);
            r.map_err(|e| WriteFailed(e.kind(), e.to_string().into()))
        };
        drop(slices);
        if let Err(WriteFailed(_, e)) = &res {
            tracing::error!("spool write failed: {e}; the batch is refused and a new segment will be started");
            self.poisoned = true;
        } else {
            self.active_len += written;
        }
        let mut index = self.shared.index.lock().unwrap();
        for (r, offset) in batch.into_iter().zip(offsets) {
            if res.is_ok() {
                match r.kind {
                    Kind::Store => {
                        index.insert(
                            r.id.clone(),
                            DataRef { segment: seg, offset: offset + r.data_rel as u64, len: r.data_len as u64 },
                        );
                        *self.pins.entry(seg).or_default() += 2;
                        if let Some(old) = self.live.insert(r.id, Live { home: seg, meta_seg: seg, meta: r.meta }) {
                            unpin(&mut self.pins, old.home);
                            unpin(&mut self.pins, old.meta_seg);
                        }
                    }
                    Kind::Update => {
                        if let Some(l) = self.live.get_mut(&r.id) {
                            let old = std::mem::replace(&mut l.meta_seg, seg);
                            l.meta = r.meta;
                            *self.pins.entry(seg).or_default() += 1;
                            unpin(&mut self.pins, old);
                        }
                    }
                    Kind::Done => {
                        if let Some(l) = self.live.remove(&r.id) {
                            unpin(&mut self.pins, l.home);
                            unpin(&mut self.pins, l.meta_seg);
                        }
                        index.remove(&r.id);
                    }
                }
            }
            if let Some(a) = r.ack {
                let _ = a.send(res.clone());
            }
        }
        res
    }

    /// Writes zeros past `end` (the records' end) when the file is not that long yet: up to
    /// the next multiple of [`ZERO_AHEAD`] (of the segment size, when that is smaller).
    /// Before the batch's sync, which then writes them. A failure is only a growth the next
    /// sync pays for again (the records are written already, in place).
    fn zero_ahead(&mut self, end: u64) {
        if end < self.active_end {
            return;
        }
        let step = ZERO_AHEAD.min(self.segment_size).max(ZEROS.len() as u64);
        let target = (end / step + 1) * step;
        let mut at = end;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            if let Err(e) = self.active.write_all_at(&ZEROS[..n], at) {
                tracing::debug!("spool segment not extended with zeros: {e}");
                return;
            }
            at += n as u64;
        }
        self.active_end = target;
    }

    /// Opens the next segment; clears the poisoned state when that works.
    fn rotate(&mut self) {
        let next = self.active_seg + 1;
        let file = OpenOptions::new().create_new(true).write(true).open(seg_path(&self.shared.dir, next));
        match file.and_then(|f| sync_dir(&self.shared.dir).map(|_| f)) {
            Ok(f) => {
                if !self.poisoned {
                    let _ = self.active.sync_data();
                }
                self.active = f;
                self.active_seg = next;
                self.active_len = 0;
                self.active_end = 0;
                self.pins.insert(next, 0);
                self.poisoned = false;
            }
            Err(e) => tracing::error!("cannot start spool segment {next}: {e}"),
        }
    }

    fn maybe_rotate(&mut self) {
        if self.active_len < self.segment_size && !self.poisoned {
            return;
        }
        self.rotate();
        self.compact();
        self.collect_garbage();
    }

    /// Relocates the live messages of the oldest segment to the active one when too many
    /// sealed segments pile up behind it.
    fn compact(&mut self) {
        if self.pins.len() <= COMPACT_AFTER + 1 {
            return;
        }
        let Some((&oldest, &n)) = self.pins.first_key_value() else { return };
        if n == 0 {
            return;
        }
        let movers: Vec<QueueId> = self
            .live
            .iter()
            .filter(|(_, l)| l.home == oldest || l.meta_seg == oldest)
            .map(|(id, _)| id.clone())
            .collect();
        let mut batch = vec![];
        for id in movers {
            let l = &self.live[&id];
            let Some(r) = self.shared.index.lock().unwrap().get(&id).copied() else { continue };
            match self.shared.read_at(r) {
                Ok(data) => {
                    let mut bytes = Vec::new();
                    let data_rel = record::encode(&mut bytes, Kind::Store, &l.meta, &data);
                    batch.push(Req {
                        kind: Kind::Store,
                        id,
                        bytes,
                        data_rel,
                        data_len: data.len(),
                        meta: l.meta.clone(),
                        data: None,
                        ack: None,
                    });
                }
                Err(e) => tracing::error!(queue_id = %id, "cannot relocate message: {e}"),
            }
        }
        let moved = batch.len();
        // Synced before the old segment may go; on failure nothing moved and it stays pinned.
        match self.commit(batch, true) {
            Ok(()) => {
                tracing::info!(segment = oldest, moved, "relocated live messages out of the oldest spool segment")
            }
            Err(e) => tracing::error!(segment = oldest, "relocation failed, segment kept: {e}"),
        }
    }

    /// Deletes segments from the oldest end while nothing live is in them. The records that
    /// freed them (done, update, relocation) are synced first.
    fn collect_garbage(&mut self) {
        if self.poisoned {
            return;
        }
        let deletable = self.pins.first_key_value().is_some_and(|(&seg, &n)| n == 0 && seg != self.active_seg);
        if deletable && self.active.sync_data().is_err() {
            return;
        }
        let mut deleted = false;
        while let Some((&seg, &n)) = self.pins.first_key_value() {
            if n > 0 || seg == self.active_seg {
                break;
            }
            if let Err(e) = fs::remove_file(seg_path(&self.shared.dir, seg)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!("cannot delete spool segment {seg}: {e}");
                    break;
                }
            }
            self.shared.files.lock().unwrap().remove(&seg);
            self.pins.remove(&seg);
            deleted = true;
        }
        if deleted {
            let _ = sync_dir(&self.shared.dir);
        }
    }
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn queue_ids_are_sixteen_upper_hex_digits() {
        for n in [0, 1, 0xABCDEF, 0x1234_5678_9ABC_DEF0, u64::MAX] {
            assert_eq!(super::hex16(n), format!("{n:016X}"));
        }
    }
}

/// The writer's inbox. A record handed over by a thread that runs many sessions (a runtime
/// worker: [`defer_wakes_on_this_thread`]) does not wake a sleeping writer at once: woken,
/// the writer would preempt that thread in the middle of a session's work (and commit one
/// or two records). The wake is *owed*, and paid when the thread runs out of work
/// ([`pay_owed_wakes`], from the runtime's park hook) — by then more records wait, and the
/// writer preempts nothing. A wake owed longer than [`OWED_WAKE_MAX`] is paid by the next
/// record handed over from any thread, so a runtime that never idles still commits.
/// Other threads (tests, tools, blocking tasks) wake the writer at once, as does everything
/// while nothing marked the thread. BENCHMARKS.md, session 27, has what this bought and
/// why a scheduling policy could not do it.
#[derive(Default)]
struct Inbox {
    st: Mutex<InboxState>,
    ready: std::sync::Condvar,
    /// Since when (µs after `epoch`) a wake is owed; 0 when none is.
    owed_since: AtomicU64,
    /// The clock of `owed_since`.
    epoch: std::sync::OnceLock<std::time::Instant>,
}

#[derive(Default)]
struct InboxState {
    reqs: std::collections::VecDeque<Req>,
    /// The spool is closing: the writer ends once the records are written.
    closed: bool,
    /// The writer sleeps for want of records: a new one must wake it.
    waiting: bool,
}

/// Longest a wake may stay owed before a later record pays it.
const OWED_WAKE_MAX: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    /// Whether this thread's records owe their wakes (a runtime worker, marked by the runtime).
    static DEFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The inboxes this thread owes a wake.
    static OWED: std::cell::RefCell<Vec<Arc<Inbox>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// From now on, records this thread hands to a spool owe the writer's wake instead of waking
/// it; the thread must call [`pay_owed_wakes`] whenever it runs out of work (tokio's
/// `on_thread_park`, which is also where it should be marked: only workers park).
pub fn defer_wakes_on_this_thread() {
    DEFER.set(true);
}

/// Wakes the writers this thread owes a wake.
pub fn pay_owed_wakes() {
    let owed = OWED.with(|o| std::mem::take(&mut *o.borrow_mut()));
    for inbox in owed {
        inbox.pay();
    }
}

impl Inbox {
    fn now_us(&self) -> u64 {
        let epoch = self.epoch.get_or_init(std::time::Instant::now);
        // Never 0 (which means "none owed").
        epoch.elapsed().as_micros() as u64 + 1
    }

    fn send(self: &Arc<Self>, req: Req) -> Result<(), SpoolError> {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return Err(SpoolError::Closed);
        }
        st.reqs.push_back(req);
        if !st.waiting {
            return Ok(());
        }
        let since = self.owed_since.load(Ordering::Acquire);
        if since != 0 && self.now_us().saturating_sub(since) > OWED_WAKE_MAX.as_micros() as u64 {
            // Owed too long (its thread has not run out of work): paid here.
            self.wake(&mut st);
        } else if DEFER.get() {
            if since == 0 {
                self.owed_since.store(self.now_us(), Ordering::Release);
                OWED.with(|o| o.borrow_mut().push(self.clone()));
            }
        } else {
            self.wake(&mut st);
        }
        Ok(())
    }

    /// Wakes the waiting writer (the state's lock held).
    fn wake(&self, st: &mut InboxState) {
        st.waiting = false;
        self.owed_since.store(0, Ordering::Release);
        self.ready.notify_one();
    }

    /// Pays an owed wake, unless it was paid already.
    fn pay(&self) {
        if self.owed_since.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.waiting {
            self.wake(&mut st);
        }
    }

    fn close(&self) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.wake(&mut st);
    }

    /// The next batch, waiting for one; `None` once closed and drained.
    fn take(&self) -> Option<Vec<Req>> {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        while st.reqs.is_empty() && !st.closed {
            st.waiting = true;
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.waiting = false;
        self.owed_since.store(0, Ordering::Release);
        if st.reqs.is_empty() {
            return None;
        }
        let (mut size, mut batch) = (0, Vec::new());
        while size < MAX_BATCH {
            let Some(r) = st.reqs.pop_front() else { break };
            size += r.bytes.len();
            batch.push(r);
        }
        Some(batch)
    }
}
