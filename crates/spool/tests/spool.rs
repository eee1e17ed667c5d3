use mailgate_spool::{Envelope, LocalSpool, RcptStatus, Spool};
use std::sync::Arc;

fn env(spool: &LocalSpool, rcpts: &[&str]) -> Envelope {
    let mut e = Envelope::new(spool.new_id(), "a@b.example".into(), rcpts.iter().map(|r| r.to_string()).collect());
    e.received_at = 1;
    e
}

#[tokio::test]
async fn stores_recovers_and_forgets_completed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let (spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
        assert!(rec.is_empty());
        a = env(&spool, &["x@y.example", "z@y.example"]);
        b = env(&spool, &["q@y.example"]);
        assert!(a.id < b.id);
        spool.store(&a, Arc::new(b"message A\r\n".to_vec())).await.unwrap();
        spool.store(&b, Arc::new(b"message B\r\n".to_vec())).await.unwrap();
        assert_eq!(spool.read_blocking(&a.id).unwrap(), b"message A\r\n");
        let mut a2 = a.clone();
        a2.recipients[0].status = RcptStatus::Delivered;
        a2.attempts = 1;
        spool.update(&a2);
        spool.complete(&b.id);
    }
    let (spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].id, a.id);
    assert_eq!(rec[0].attempts, 1);
    assert_eq!(rec[0].recipients[0].status, RcptStatus::Delivered);
    assert_eq!(spool.read_blocking(&a.id).unwrap(), b"message A\r\n");
    assert!(spool.read_blocking(&b.id).is_err());
}

#[tokio::test]
async fn concurrent_stores_share_syncs_and_segments_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = LocalSpool::open(dir.path(), 64 << 10).unwrap();
    let body = vec![b'x'; 4000];
    let mut ids = vec![];
    for _wave in 0..20 {
        let mut tasks = vec![];
        for _ in 0..10 {
            let s = spool.clone();
            let e = env(&s, &["r@y.example"]);
            ids.push(e.id.clone());
            let body = body.clone();
            tasks.push(tokio::spawn(async move { s.store(&e, Arc::new(body)).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    // Rotation happened: segments are numbered in order, and compaction may already have
    // deleted the oldest (how many remain depends on how the waves were batched).
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter_map(|f| f.file_name().to_str()?.strip_suffix(".log")?.parse::<u64>().ok())
        .max()
        .unwrap();
    assert!(newest > 5, "rotation happened: newest segment {newest}");
    // One message stays deferred; the others finish. Old segments go, the live one is relocated.
    for id in &ids[1..] {
        spool.complete(id);
    }
    // Push more traffic through so the writer rotates and compacts.
    for _ in 0..100 {
        let e = env(&spool, &["r@y.example"]);
        spool.store(&e, Arc::new(body.clone())).await.unwrap();
        spool.complete(&e.id);
    }
    assert_eq!(spool.read_blocking(&ids[0]).unwrap(), body);
    assert!(spool.segment_count() <= 7, "segments reclaimed: {}", spool.segment_count());
    drop(spool);
    let (spool, rec) = LocalSpool::open(dir.path(), 64 << 10).unwrap();
    assert_eq!(rec.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![ids[0].clone()]);
    assert_eq!(spool.read_blocking(&ids[0]).unwrap(), body);
}

#[tokio::test]
async fn torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a;
    {
        let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
        a = env(&spool, &["x@y.example"]);
        spool.store(&a, Arc::new(b"hello\r\n".to_vec())).await.unwrap();
    }
    // Simulate a crash in the middle of an unacknowledged write.
    let seg = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0x4D, 0x47, 0x53, 0x50, 1, 9, 9]).unwrap();
    let (spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(spool.read_blocking(&a.id).unwrap(), b"hello\r\n");
    // The torn tail was cut off: once its message is done, the segment — sealed behind the
    // next one now — goes at a later start, like any other, instead of reading as damage.
    spool.complete(&a.id);
    drop(spool);
    drop(LocalSpool::open(dir.path(), 1 << 20).unwrap());
    let (_spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    assert!(rec.is_empty());
    assert!(!seg.exists(), "the segment with the torn tail was kept");
}

/// A segment is written ahead of its records with zeros (so that a sync changes no metadata):
/// the zeros are where its records end, not damage — a sealed segment whose messages are all
/// finished is deleted at the next start like any other — and a record longer than the part
/// written ahead reads back whole.
#[tokio::test]
async fn zeros_after_the_records_end_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let a;
    {
        let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
        a = env(&spool, &["x@y.example"]);
        spool.store(&a, Arc::new(b"first\r\n".to_vec())).await.unwrap();
    }
    let first = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let bytes = std::fs::read(&first).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(bytes.len() >= end + (64 << 10), "{} octets of records, {} in the file", end, bytes.len());
    let big: Vec<u8> = (0..3u32 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let b;
    {
        let (spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()]);
        b = env(&spool, &["z@y.example"]);
        spool.store(&b, Arc::new(big.clone())).await.unwrap();
        spool.complete(&a.id);
    }
    let (spool, rec) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![b.id.clone()]);
    assert!(spool.read_blocking(&b.id).unwrap() == big, "the large message did not read back whole");
    assert!(!first.exists(), "a finished segment ending in zeros was kept as damaged");
}

#[tokio::test]
async fn claims_share_due_messages_and_leases_expire() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(60);
    let ids = |v: Vec<Envelope>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let (a, b, c);
    {
        let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
        a = env(&spool, &["x@y.example"]);
        b = env(&spool, &["x@y.example"]);
        c = env(&spool, &["x@y.example"]);
        for e in [&a, &b, &c] {
            spool.store(e, Arc::new(b"m\r\n".to_vec())).await.unwrap();
        }
        // Whoever stored them holds them.
        assert!(spool.claim_due(1000, 10, lease).await.unwrap().is_empty());
        spool.release(&a.id).await.unwrap();
        assert_eq!(ids(spool.claim_due(1000, 10, lease).await.unwrap()), vec![a.id.clone()]);
        // Claimed: no one else gets it until the lease is over.
        assert!(spool.claim_due(2000, 10, lease).await.unwrap().is_empty());
        assert_eq!(ids(spool.claim_due(1000 + 60_000, 10, lease).await.unwrap()), vec![a.id.clone()]);
        // A new state ends the claim; the message is due at its next attempt.
        let mut later = b.clone();
        later.next_attempt = 500_000;
        spool.update(&later);
        // (At 400 000 `a`'s lease is over: it is due again, `b` is not yet.)
        let long = Duration::from_secs(10_000);
        assert_eq!(ids(spool.claim_due(400_000, 10, long).await.unwrap()), vec![a.id.clone()]);
        assert_eq!(ids(spool.claim_due(500_000, 10, lease).await.unwrap()), vec![b.id.clone()]);
        // Held messages are never due; finished ones are gone.
        let mut held = c.clone();
        held.held = true;
        spool.update(&held);
        spool.complete(&a.id);
        assert!(spool.claim_due(u64::MAX - 1, 10, lease).await.unwrap().iter().all(|e| e.id == b.id));
        assert!(spool.release(&a.id).await.is_err());
        spool.close();
    }
    // After a restart nothing is claimed: every due message is there for the first claim, `n` at
    // a time.
    let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(ids(spool.claim_due(500_000, 1, lease).await.unwrap()), vec![b.id.clone()]);
    assert!(spool.claim_due(500_000, 1, lease).await.unwrap().is_empty());
    assert_eq!(spool.read(&b.id).await.unwrap(), b"m\r\n");
}

/// A runtime worker hands a record over without waking the writer (woken, it would preempt the
/// worker mid-session): the wake is owed until the thread runs out of work and pays it in its
/// park hook — and the record is then stored.
#[test]
fn a_worker_owes_the_writer_its_wake_until_it_parks() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(mailgate_spool::pay_owed_wakes)
        .build()
        .unwrap();
    // The writer must be asleep for the wake to matter (it is, soon after open).
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spool.writer_waiting() {
        assert!(std::time::Instant::now() < limit, "the writer never waited");
        std::thread::yield_now();
    }
    let e = env(&spool, &["x@y.example"]);
    rt.block_on(async {
        mailgate_spool::defer_wakes_on_this_thread();
        let mut store = spool.store(&e, Arc::new(b"message\r\n".to_vec()));
        // The first poll hands the record over: nothing wakes the writer yet.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(store.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert!(spool.writer_wake_owed());
        assert!(spool.writer_waiting());
        // Waiting for the sync parks the thread, whose hook pays the wake.
        tokio::time::timeout(std::time::Duration::from_secs(10), store).await.expect("stored").unwrap();
    });
    assert!(!spool.writer_wake_owed());
    assert_eq!(spool.read_blocking(&e.id).unwrap(), b"message\r\n");
}

/// A thread not marked (a test, a tool, a blocking task) wakes the writer at once.
#[tokio::test]
async fn an_unmarked_thread_wakes_the_writer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    let e = env(&spool, &["x@y.example"]);
    spool.store(&e, Arc::new(b"m\r\n".to_vec())).await.unwrap();
    assert!(!spool.writer_wake_owed());
}

/// A wake owed by a thread that never runs out of work is paid by the next record handed over
/// once it has been owed for more than a millisecond.
#[test]
fn a_wake_owed_too_long_is_paid_by_the_next_record() {
    use std::task::{Context, Waker};
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spool.writer_waiting() {
        assert!(std::time::Instant::now() < limit, "the writer never waited");
        std::thread::yield_now();
    }
    // This thread is marked and never parks (no runtime): only the next record can pay.
    mailgate_spool::defer_wakes_on_this_thread();
    let mut cx = Context::from_waker(Waker::noop());
    let (a, b) = (env(&spool, &["x@y.example"]), env(&spool, &["z@y.example"]));
    let mut first = spool.store(&a, Arc::new(b"A\r\n".to_vec()));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    assert!(spool.writer_wake_owed());
    let owed_at = std::time::Instant::now();
    while owed_at.elapsed() <= std::time::Duration::from_millis(2) {
        std::thread::yield_now();
    }
    let mut second = spool.store(&b, Arc::new(b"B\r\n".to_vec()));
    // Both are written without this thread doing anything more.
    let (mut done_a, mut done_b) = (false, false);
    while !(done_a && done_b) {
        assert!(std::time::Instant::now() < limit, "the owed wake was never paid");
        done_a = done_a || first.as_mut().poll(&mut cx).is_ready();
        done_b = done_b || second.as_mut().poll(&mut cx).is_ready();
        std::thread::yield_now();
    }
    assert_eq!(spool.read_blocking(&a.id).unwrap(), b"A\r\n");
    assert_eq!(spool.read_blocking(&b.id).unwrap(), b"B\r\n");
}
