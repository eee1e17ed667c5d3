//! The durable spool: where an accepted message lives from the moment before its `250` until
//! its last recipient is done.
//!
//! [`Spool`] is the contract the session and the queue use. [`LocalSpool`] is the embedded
//! default: an append-only log of records in segment files under one directory, written by one
//! thread that group-commits — every record that arrives while an `fdatasync` runs is written
//! and synced together in the next one, so many sessions share each sync.
//!
//! This crate owns the on-disk format and durability. It must not know SMTP, routing or
//! delivery: an [`Envelope`] is data it stores, not something it interprets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod envelope;
mod local;
mod record;

pub use envelope::{ApiMeta, DsnRet, Envelope, Notify, QueueId, RcptStatus, Recipient, RouteChoice};
pub use local::{defer_wakes_on_this_thread, pay_owed_wakes, LocalSpool};

/// Where a message's content is stored; opaque outside the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataRef {
    /// Segment number holding the record.
    pub segment: u64,
    /// Offset of the content within that segment.
    pub offset: u64,
    /// Content length in octets.
    pub len: u64,
}

/// A spool failure. Each maps to the SMTP reply the client gets when it happens at accept time.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool writer has stopped")]
    Closed,
    #[error("no message {0} in the spool")]
    NotFound(QueueId),
}

impl SpoolError {
    /// The reply for a client whose message could not be stored: transient, try again.
    pub fn smtp_reply(&self) -> (u16, &'static str, &'static str) {
        (451, "4.3.0", "Temporary local problem storing the message, try again later")
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The spool contract, shaped for a backend shared by several nodes as well as for the local
/// segment log: the calls that wait for storage are async; `update` and `complete` hand a
/// record over to be committed with the next batch (losing one in a crash means a retry,
/// never a lost message), so callers never wait for them.
pub trait Spool: Send + Sync + 'static {
    /// Stores a new message. Resolves only after envelope and content are durable (written and
    /// fsynced); only then may the client hear `250`. The content is shared, not copied: the
    /// caller may hand the same bytes to the queue afterwards.
    fn store<'a>(&'a self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, Result<(), SpoolError>>;

    /// Records a new state of a stored message (recipient results, next attempt), and ends the
    /// caller's claim on it.
    fn update(&self, env: &Envelope);

    /// The message is finished (every recipient delivered or bounced): its space may be reused.
    fn complete(&self, id: &QueueId);

    /// Reads a stored message's content back.
    fn read<'a>(&'a self, id: &'a QueueId) -> BoxFuture<'a, Result<Vec<u8>, SpoolError>>;

    /// Makes a new queue id, unique within this spool across restarts.
    fn new_id(&self) -> QueueId;

    /// Claims up to `n` messages due at `now_ms` (Unix milliseconds) that no one holds, for
    /// `lease`: until then no other claim returns them. Held and quarantined messages are
    /// never due. With several nodes on one shared spool, this is how they share the work.
    fn claim_due<'a>(
        &'a self,
        now_ms: u64,
        n: usize,
        lease: std::time::Duration,
    ) -> BoxFuture<'a, Result<Vec<Envelope>, SpoolError>>;

    /// Gives a claim back without a new state: the message is due again for the next claim.
    fn release<'a>(&'a self, id: &'a QueueId) -> BoxFuture<'a, Result<(), SpoolError>>;
}
