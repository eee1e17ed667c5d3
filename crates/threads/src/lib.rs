//! The gateway's background threads: the spool's and the event log's writers and the plugin
//! engine's epoch ticker — one thread each, serving every session. This crate owns how they
//! are made and scheduled; it knows nothing of what they do.
//!
//! Each runs under Linux's `SCHED_BATCH` policy (same share of the CPU as any thread, same
//! nice level). What it changes is waking: a thread of that policy, woken while the CPU is
//! busy, does not preempt the thread that runs there; it runs when that one blocks or its
//! slice ends — at once on an idle CPU. A writer woken for every record otherwise preempted a
//! runtime worker in the middle of a session twice a group commit (for the record, and again
//! when the disk answered), and each such switch cost the worker its caches: with the edge-MX
//! pipeline, persistent sessions, 4.5 context switches a message, 2.9 of them workers
//! preempted. Left to wait for a worker to yield, the writer also finds more records waiting,
//! so a busy gateway commits larger groups with fewer syncs — the group commit adapts to the
//! load without a fixed delay (BENCHMARKS.md, session 27).

use std::io;
use std::thread::JoinHandle;

/// Spawns the background thread `name` running `f`, under `SCHED_BATCH` where the system
/// allows it (a refusal is logged; the thread runs all the same). A process started under
/// another policy than the default (an operator's `CPUSchedulingPolicy=`, say) keeps it: a
/// batch writer under real-time workers would wait for all of them.
pub fn spawn<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let owned = name.to_string();
    std::thread::Builder::new().name(owned.clone()).spawn(move || {
        if let Err(e) = batch_policy() {
            tracing::debug!(thread = %owned, "SCHED_BATCH refused, thread kept at the default policy: {e}");
        }
        f()
    })
}

/// Puts the calling thread under `SCHED_BATCH` if it runs under the default policy.
#[cfg(target_os = "linux")]
fn batch_policy() -> io::Result<()> {
    // SAFETY: no arguments besides the calling thread (pid 0; on Linux a policy is per thread).
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 as above.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_policy() -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's policy, as the kernel reports it.
    fn policy() -> i32 {
        // SAFETY: no arguments besides the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn background_threads_run_under_sched_batch_and_the_caller_does_not() {
        let before = policy();
        let (inside, name) = super::spawn("bg-test", || (policy(), std::thread::current().name().map(str::to_string)))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(inside, libc::SCHED_BATCH);
        assert_eq!(name.as_deref(), Some("bg-test"));
        // Only the new thread: the one that spawned it keeps its policy.
        assert_eq!(policy(), before);
        assert_ne!(before, libc::SCHED_BATCH);
    }

    #[test]
    fn a_policy_other_than_the_default_is_kept() {
        // A thread of its own under SCHED_IDLE (any thread may lower itself), as if the
        // operator had started the gateway so: what it spawns inherits that, and keeps it.
        let inside = std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a valid sched_param; pid 0 is this thread only.
            assert_eq!(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }, 0);
            super::spawn("bg-idle", policy).unwrap().join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(inside, libc::SCHED_IDLE);
    }
}
