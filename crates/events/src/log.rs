//! The event log: JSON lines in segments named by their first sequence number, one writer
//! thread that appends what arrives together and syncs once (group commit), and readers that
//! page by cursor. A torn last line (a crash mid-write) is cut off when the log is opened: its
//! events were never reported as appended.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use crate::Event;

/// A segment is closed and a new one begun past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The oldest segments are deleted while the log is larger than this.
const MAX_BYTES: u64 = 1 << 30;
/// At most this many appends share one sync.
const GROUP: usize = 512;

/// Every this many events a segment notes where its line begins (readers seek there).
const MARK_EVERY: u64 = 1024;

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    /// Time of its first event (Unix ms): where a message's events can begin.
    first_at: u64,
    path: PathBuf,
    /// (seq, byte offset of its line) for every `MARK_EVERY`th event, in order: a reader of
    /// events after a cursor seeks instead of parsing the segment from its start. Known for
    /// the segments written since the log was opened and the one it was opened at.
    marks: Vec<(u64, u64)>,
}

/// The sequence number of a line as the writer puts it (`{"seq":N,…`), without parsing the
/// rest.
fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// `BufRead::read_until(b'\n')` with the memchr crate's vectorised search (std's is a word
/// at a time): a follower reads every line of the log.
fn read_line(r: &mut impl std::io::BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let start = out.len();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (n, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        out.extend_from_slice(&avail[..n]);
        r.consume(n);
        if done {
            break;
        }
    }
    Ok(out.len() - start)
}

/// The marks of a segment's text.
fn marks_of(text: &[u8]) -> Vec<(u64, u64)> {
    let mut marks = vec![];
    let mut offset = 0u64;
    for line in text.split(|b| *b == b'\n') {
        if let Some(seq) = seq_of(line).filter(|s| s % MARK_EVERY == 0) {
            marks.push((seq, offset));
        }
        offset += line.len() as u64 + 1;
    }
    marks
}

struct Append {
    events: Vec<Event>,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
}

/// The durable event log of a gateway.
pub struct EventLog {
    tx: mpsc::Sender<Append>,
    /// The last sequence number on disk (synced): readers never see past it.
    durable: Arc<AtomicU64>,
    segments: Arc<RwLock<Vec<Segment>>>,
    /// Tells followers that `durable` moved.
    moved: tokio::sync::watch::Receiver<u64>,
    /// Where the last [`EventLog::since_kinds`] stopped: a follower's next read (its cursor
    /// that read's last event) starts there, not at the mark before it — which re-read up to
    /// `MARK_EVERY` lines at every commit of the log, a few thousand instructions a message.
    resume: std::sync::Mutex<Option<Resume>>,
}

/// The place after an event's line in a segment: fixed once the event is durable (a segment
/// only grows, and a failed write cuts back only what was not durable).
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The segment's first sequence number.
    segment: u64,
    /// The event.
    seq: u64,
    /// The byte offset after its line.
    offset: u64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.jsonl"))
}

fn first_at(path: &Path) -> u64 {
    let Ok(f) = File::open(path) else { return 0 };
    let mut line = String::new();
    let _ = BufReader::new(f).read_line(&mut line);
    serde_json::from_str::<Event>(&line).map_or(0, |e| e.at)
}

impl EventLog {
    /// Opens (or creates) the log in `dir` and starts its writer.
    pub fn open(dir: &Path) -> std::io::Result<EventLog> {
        std::fs::create_dir_all(dir)?;
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first_seq = name.strip_suffix(".jsonl")?.parse().ok()?;
                Some(Segment { first_seq, first_at: first_at(&e.path()), path: e.path(), marks: vec![] })
            })
            .collect();
        segments.sort_by_key(|s| s.first_seq);
        let mut last = 0;
        if let Some(s) = segments.last() {
            // Cut a torn last line, then find the last sequence number.
            let bytes = std::fs::read(&s.path)?;
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if keep < bytes.len() {
                tracing::warn!(segment = %s.path.display(), "event log: a torn last line was cut off");
                File::options().write(true).open(&s.path)?.set_len(keep as u64)?;
            }
            let text = &bytes[..keep];
            let marks = marks_of(text);
            last = text
                .split(|b| *b == b'\n')
                .rev()
                .find_map(|l| serde_json::from_slice::<Event>(l).ok())
                .map_or(s.first_seq.saturating_sub(1), |e| e.seq);
            if let Some(s) = segments.last_mut() {
                s.marks = marks;
            }
        }
        if segments.is_empty() {
            let path = segment_path(dir, 1);
            File::create(&path)?;
            segments.push(Segment { first_seq: 1, first_at: 0, path, marks: vec![] });
        }
        let current = segments.last().expect("one at least").path.clone();
        let file = File::options().append(true).open(&current)?;
        let size = file.metadata()?.len();
        let durable = Arc::new(AtomicU64::new(last));
        let segments = Arc::new(RwLock::new(segments));
        let (tx, rx) = mpsc::channel();
        let (moved_tx, moved) = tokio::sync::watch::channel(last);
        let writer = Writer {
            dir: dir.to_path_buf(),
            file,
            size,
            next: last + 1,
            durable: durable.clone(),
            segments: segments.clone(),
            moved: moved_tx,
        };
        std::thread::Builder::new().name("event-log".into()).spawn(move || writer.run(rx))?;
        Ok(EventLog { tx, durable, segments, moved, resume: Default::default() })
    }

    /// Appends events; returns once they are on disk (synced), with their sequence numbers
    /// assigned in the order given.
    pub async fn append(&self, events: Vec<Event>) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Append { events, done }).map_err(|_| std::io::Error::other("event log writer stopped"))?;
        rx.await.map_err(|_| std::io::Error::other("event log writer stopped"))?
    }

    /// The last sequence number on disk.
    pub fn last(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// A receiver told whenever events were appended (for followers).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.clone()
    }

    /// The segments that may hold events after `cursor`, each with the byte offset to start
    /// reading at (the first one's last mark at or before the cursor; 0 for the others).
    fn after(&self, cursor: u64) -> Vec<(Segment, u64)> {
        let segments = self.segments.read().unwrap();
        let start = segments.partition_point(|s| s.first_seq <= cursor.saturating_add(1)).saturating_sub(1);
        segments[start..]
            .iter()
            .map(|s| {
                let from =
                    s.marks.iter().take_while(|(seq, _)| *seq <= cursor.saturating_add(1)).last().map_or(0, |m| m.1);
                (s.clone(), from)
            })
            .collect()
    }

    /// Up to `limit` events after `cursor` (0: from the oldest kept), in order.
    pub fn since(&self, cursor: u64, limit: usize) -> std::io::Result<Vec<Event>> {
        let durable = self.last();
        let mut out = vec![];
        for (s, from) in self.after(cursor) {
            if out.len() >= limit {
                break;
            }
            scan_from(&s.path, from, cursor, None, |e| {
                if e.seq <= durable {
                    out.push(e);
                }
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Like [`EventLog::since`], but only events of `kinds`, recognised on the line before it
    /// is parsed: a follower that wants few kinds does not parse every event. At most `limit`
    /// events are looked at; the second value is the last one looked at (the next cursor).
    pub fn since_kinds(&self, cursor: u64, limit: usize, kinds: &[crate::Kind]) -> std::io::Result<(Vec<Event>, u64)> {
        let durable = self.last();
        let needles: Vec<String> = kinds.iter().map(|k| format!("\"kind\":\"{}\"", k.name())).collect();
        let finders: Vec<memchr::memmem::Finder> = needles.iter().map(memchr::memmem::Finder::new).collect();
        let (mut out, mut last, mut looked) = (vec![], cursor, 0usize);
        // One buffer for every line read (a follower reads every event of the log).
        let mut line = Vec::with_capacity(1024);
        let mut segments = self.after(cursor);
        let resume = *self.resume.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(r), Some((s, from))) = (resume, segments.first_mut()) {
            if r.seq == cursor && r.segment == s.first_seq {
                *from = (*from).max(r.offset);
            }
        }
        let mut stop = None;
        for (s, from) in segments {
            if looked >= limit {
                break;
            }
            let file = match File::open(&s.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut reader = BufReader::new(file);
            std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(from))?;
            let mut offset = from;
            loop {
                line.clear();
                let n = read_line(&mut reader, &mut line)?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                let Some(seq) = seq_of(&line) else { break };
                if seq <= cursor {
                    continue;
                }
                if seq > durable || looked >= limit {
                    break;
                }
                (last, looked) = (seq, looked + 1);
                stop = Some(Resume { segment: s.first_seq, seq, offset });
                if finders.iter().any(|f| f.find(&line).is_some()) {
                    match serde_json::from_slice::<Event>(&line) {
                        Ok(e) if kinds.contains(&e.kind) => out.push(e),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        if stop.is_some() {
            *self.resume.lock().unwrap_or_else(|e| e.into_inner()) = stop;
        }
        Ok((out, last))
    }

    /// Every event about message `queue_id` that the log still has. Its queue id says when it
    /// was received, so segments that ended before are not read.
    pub fn for_message(&self, queue_id: &str, limit: usize) -> std::io::Result<Vec<Event>> {
        let received_ms = u64::from_str_radix(queue_id, 16).map_or(0, |us| us / 1000);
        let durable = self.last();
        let segments = self.segments.read().unwrap().clone();
        let start = segments.partition_point(|s| s.first_at <= received_ms).saturating_sub(1);
        let mut out = vec![];
        for s in &segments[start..] {
            // Only lines that name the message are parsed: the log may hold a gigabyte of
            // other messages' events after it.
            scan_from(&s.path, 0, 0, Some(queue_id.as_bytes()), |e| {
                if e.queue_id == queue_id && e.seq <= durable {
                    out.push(e);
                }
                out.len() < limit
            })?;
        }
        Ok(out)
    }
}

/// Reads a segment's events in order from byte `offset` (a line's start) until `f` says stop,
/// passing over events up to `after`, and lines without `needle`, without parsing them; a line
/// that does not parse (being written right now) ends the segment.
fn scan_from(
    path: &Path,
    offset: u64,
    after: u64,
    needle: Option<&[u8]>,
    mut f: impl FnMut(Event) -> bool,
) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(f) => f,
        // Deleted by retention while we looked: nothing there any more.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let finder = needle.map(memchr::memmem::Finder::new);
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if seq_of(&line).is_some_and(|s| s <= after) {
            continue;
        }
        if finder.as_ref().is_some_and(|f| f.find(&line).is_none()) {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Event>(&line) else { break };
        if e.seq <= after {
            continue;
        }
        if !f(e) {
            break;
        }
    }
    Ok(())
}

struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
    next: u64,
    durable: Arc<AtomicU64>,
    segments: Arc<RwLock<Vec<Segment>>>,
    moved: tokio::sync::watch::Sender<u64>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(a) => group.push(a),
                    Err(_) => break,
                }
            }
            let result = self.write(&mut group);
            if let Err(e) = &result {
                tracing::error!("event log write failed: {e}");
            }
            for a in group {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                let _ = a.done.send(r);
            }
        }
    }

    fn write(&mut self, group: &mut [Append]) -> std::io::Result<()> {
        if self.size >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(group.len() * 256);
        let first = self.next;
        let mut marks = vec![];
        for a in group.iter_mut() {
            for e in a.events.iter_mut() {
                e.seq = self.next;
                e.id = event_id(self.next);
                if e.seq % MARK_EVERY == 0 {
                    marks.push((e.seq, self.size + buf.len() as u64));
                }
                self.next += 1;
                e.write_json(&mut buf);
                buf.push(b'\n');
            }
        }
        if self.size == 0 {
            if let Some(s) = self.segments.write().unwrap().last_mut() {
                s.first_at = group.first().and_then(|a| a.events.first()).map_or(0, |e| e.at);
            }
        }
        let written = self.file.write_all(&buf).and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Nothing of this group counts: the numbers are given out again.
            self.next = first;
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += buf.len() as u64;
        if !marks.is_empty() {
            if let Some(s) = self.segments.write().unwrap().last_mut() {
                s.marks.extend(marks);
            }
        }
        let last = self.next - 1;
        self.durable.store(last, Ordering::Release);
        let _ = self.moved.send(last);
        metrics::counter!("mailgate_events_total").increment(last + 1 - first);
        Ok(())
    }

    /// Starts a new segment, and deletes the oldest while the log is over its size.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = segment_path(&self.dir, self.next);
        self.file = File::options().create(true).append(true).open(&path)?;
        self.size = 0;
        let mut segs = self.segments.write().unwrap();
        segs.push(Segment { first_seq: self.next, first_at: 0, path, marks: vec![] });
        let total: u64 = segs.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum();
        let mut over = total.saturating_sub(MAX_BYTES);
        while over > 0 && segs.len() > 1 {
            let old = segs.remove(0);
            let len = std::fs::metadata(&old.path).map_or(0, |m| m.len());
            let _ = std::fs::remove_file(&old.path);
            tracing::info!(segment = %old.path.display(), "event log: oldest segment deleted (size limit)");
            over = over.saturating_sub(len.max(1));
        }
        Ok(())
    }
}

/// `ev` and the sequence number in at least 12 digits (`format!("ev{:012}")`, written without
/// the formatting machinery: every event gets one).
fn event_id(seq: u64) -> String {
    let mut digits = [b'0'; 20];
    let at = crate::json::decimal(seq, &mut digits);
    let from = at.min(digits.len() - 12);
    let mut id = String::with_capacity(2 + digits.len() - from);
    id.push_str("ev");
    id.extend(digits[from..].iter().map(|d| char::from(*d)));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_zero_padded_to_twelve_digits() {
        let mut seqs = vec![0, 1, 9, 10, 999_999_999_999, 1_000_000_000_000, u64::MAX];
        seqs.extend((0..64).map(|b| 1u64 << b));
        seqs.extend((0..10_000).map(|i| i * 7_777_777_777));
        for seq in seqs {
            assert_eq!(event_id(seq), format!("ev{seq:012}"));
        }
    }
    use crate::{Event, Kind};

    /// Lines as `read_until` gives them, across a small buffer's refills, with and without a
    /// last line end.
    #[test]
    fn read_line_is_read_until() {
        for text in [&b""[..], b"\n", b"a", b"ab\ncd\n\nlong line of text\nend", b"x\n\n\n"] {
            for cap in [1, 2, 3, 64] {
                let (mut a, mut b) = (std::io::BufReader::with_capacity(cap, text), std::io::BufReader::new(text));
                let (mut la, mut lb) = (vec![], vec![]);
                loop {
                    let (na, nb) = (read_line(&mut a, &mut la).unwrap(), b.read_until(b'\n', &mut lb).unwrap());
                    assert_eq!((na, &la), (nb, &lb), "{text:?} cap {cap}");
                    if na == 0 {
                        break;
                    }
                    la.clear();
                    lb.clear();
                }
            }
        }
    }

    fn ev(q: &str) -> Event {
        let env = mailgate_spool::Envelope::new(q.into(), "a@b.test".into(), vec![]);
        Event::about(Kind::Received, &env)
    }

    #[tokio::test]
    async fn appends_pages_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.append(vec![ev("0000000000000001"), ev("0000000000000002")]).await.unwrap();
        log.append(vec![ev("0000000000000001")]).await.unwrap();
        assert_eq!(log.last(), 3);
        let page = log.since(0, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(log.since(2, 10).unwrap().len(), 1);
        assert_eq!(log.for_message("0000000000000001", 10).unwrap().len(), 2);
        assert_ne!(page[0].id, page[1].id);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut f = File::options().append(true).open(&seg).unwrap();
        f.write_all(b"{\"seq\":4,\"torn").unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.last(), 3);
        log.append(vec![ev("0000000000000003")]).await.unwrap();
        let all = log.since(0, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4], "the torn line is gone");
    }

    /// Readers after a cursor seek to the segment's marks: the same pages as a scan from the
    /// start, for every cursor, before and after the log is opened again.
    #[tokio::test]
    async fn pages_after_any_cursor_with_marks() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let n = 3 * MARK_EVERY + 17;
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            log.append(chunk.iter().map(|i| ev(&format!("{i:016X}"))).collect()).await.unwrap();
        }
        assert_eq!(log.segments.read().unwrap()[0].marks.len(), 3);
        let check = |log: &EventLog| {
            for cursor in [0, 1, MARK_EVERY - 2, MARK_EVERY - 1, MARK_EVERY, MARK_EVERY + 1, 2 * MARK_EVERY, n - 1, n] {
                let page = log.since(cursor, 5).unwrap();
                let want: Vec<u64> = (cursor + 1..=n).take(5).collect();
                assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), want, "after {cursor}");
            }
        };
        check(&log);
        drop(log);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.segments.read().unwrap()[0].marks.len(), 3, "rebuilt when opened");
        check(&log);
        // Only some kinds: looked at in bounded steps, the cursor moving over the rest.
        let mut env = mailgate_spool::Envelope::new("00000000000000AA".into(), "a@b.test".into(), vec![]);
        env.sender = "x@b.test".into();
        log.append(vec![Event::about(Kind::Bounced, &env), ev("00000000000000AB")]).await.unwrap();
        let (mut cursor, mut found) = (0, vec![]);
        loop {
            let (page, last) = log.since_kinds(cursor, 1000, &[Kind::Bounced]).unwrap();
            found.extend(page);
            if last == cursor {
                break;
            }
            cursor = last;
        }
        assert_eq!(cursor, n + 2);
        assert_eq!(found.iter().map(|e| (e.seq, e.kind)).collect::<Vec<_>>(), [(n + 1, Kind::Bounced)]);
    }

    /// A follower reading after every commit starts where it stopped (the resume point, not
    /// the mark before it) and sees every event of its kind once, across marks, with other
    /// cursors reading in between (which move the point elsewhere: then the mark serves).
    #[tokio::test]
    async fn a_follower_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let mut env = mailgate_spool::Envelope::new("00000000000000AA".into(), "a@b.test".into(), vec![]);
        env.sender = "x@b.test".into();
        let (mut cursor, mut found, mut bounced) = (0, vec![], vec![]);
        for round in 0..(2 * MARK_EVERY / 3) {
            let mut events = vec![ev(&format!("{round:016X}")), ev("0000000000000001")];
            if round % 5 == 0 {
                events.insert(round as usize % 2, Event::about(Kind::Bounced, &env));
                bounced.push(log.last() + 1 + round % 2);
            }
            log.append(events).await.unwrap();
            if round % 7 == 3 {
                // Another reader, from elsewhere.
                let (_, last) = log.since_kinds(round / 2, 10, &[Kind::Bounced]).unwrap();
                assert!(last > round / 2);
            }
            let (page, last) = log.since_kinds(cursor, 1000, &[Kind::Bounced]).unwrap();
            assert_eq!(last, log.last(), "round {round}");
            found.extend(page.iter().map(|e| e.seq));
            cursor = last;
        }
        assert_eq!(found, bounced);
        assert!(log.last() > MARK_EVERY, "past a mark");
    }
}
