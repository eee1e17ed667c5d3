//! The HTTP sending API: application developers submit messages as JSON (built here into
//! correct MIME with mail-builder) or as a raw RFC 5322 message, authenticated by API keys,
//! and get a receipt per recipient.
//!
//! This crate owns the HTTP side: the listener loop (TLS, connection limit, timeouts), the
//! routes, request validation with errors that name the field (a JSON pointer), API keys (only
//! their hashes are stored), per-key rates and sender domains, and idempotency. It must not
//! know the plugin chain, the cleanup stage, the spool or the queue: a validated [`Submission`]
//! goes through the [`Gate`] the gateway implements, the same path SMTP mail takes, and the
//! answer is a [`Receipt`] or a typed [`SubmitError`] that knows its HTTP status.

mod error;
pub mod idempotency;
mod json;
pub mod keys;
mod raw;
mod request;
mod server;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;

use mailgate_message::{Budget, Reservation};
use mailgate_smtp::Reply;
use mailgate_spool::{ApiMeta, BoxFuture};

pub use error::ApiError;
pub use idempotency::Idempotency;
pub use keys::{ApiKey, KeyError, KeyStore, Keys, OverRate};
pub use server::{serve, Listening, Services};

/// A message the API validated and built, ready for the gateway's message path.
pub struct Submission {
    /// The queue id the message will have; also the request's id in logs and for plugins.
    pub id: String,
    /// The API key's name (plugins see it as the authenticated identity).
    pub key: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The `[[api]]` listener's name and pipeline.
    pub listener: Arc<str>,
    pub pipeline: String,
    /// TLS version and cipher, when the request came over HTTPS.
    pub tls: Option<(String, String)>,
    /// The envelope: reverse path and recipients (distinct, in request order).
    pub from: String,
    pub rcpts: Vec<String>,
    /// Some address is not ASCII (RFC 6531): the next hop must offer SMTPUTF8.
    pub smtputf8: bool,
    /// The message, CRLF line ends, checked by the same content rules as SMTP DATA.
    pub data: Vec<u8>,
    /// `data`'s octets counted against the content memory budget.
    pub hold: Reservation,
    /// Kept with the message: key name, tags, metadata, idempotency key.
    pub meta: ApiMeta,
}

/// What happened to one recipient of a request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RcptReceipt {
    pub email: String,
    pub status: RcptState,
    /// The policy's reply for a refused recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// In the spool, to be delivered.
    Queued,
    /// Refused by the pipeline's on-rcpt stage; the others went on.
    Refused,
    /// On the key's suppression list (it bounced for good before): not sent to.
    Suppressed,
}

/// An SMTP reply as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SmtpReply {
    pub code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

impl From<&Reply> for SmtpReply {
    fn from(r: &Reply) -> SmtpReply {
        SmtpReply { code: r.code, enhanced: r.enhanced.map(|e| e.to_string()), text: r.text.to_string() }
    }
}

/// The answer to an accepted submission: the message is in the spool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Receipt {
    /// The queue id.
    pub id: String,
    pub recipients: Vec<RcptReceipt>,
}

/// Why a submission was not accepted; each kind knows its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The pipeline refused the message (at on-mail-from or on-data): 422, or 503 when the
    /// refusal is temporary.
    #[error("refused by policy: {0}")]
    Refused(Reply),
    /// Every recipient was refused at on-rcpt: 422 with each one's reply.
    #[error("every recipient was refused")]
    NoRecipients(Vec<RcptReceipt>),
    /// The message could not be stored or checked now (spool, shutdown): 503.
    #[error("temporarily unavailable: {0}")]
    Unavailable(Reply),
}

/// The gateway's message path, as the API uses it.
pub trait Gate: Send + Sync + 'static {
    /// Passes a submission through the listener's pipeline and the cleanup stage into the
    /// spool; the receipt comes only once it is stored.
    fn submit(&self, s: Submission) -> BoxFuture<'_, Result<Receipt, SubmitError>>;
    /// The configuration new requests start with (limits, hostname).
    fn config(&self) -> Arc<mailgate_config::Config>;
    /// The memory budget request bodies are counted against.
    fn budget(&self) -> Arc<Budget>;
    /// A new queue id (also the request id).
    fn new_id(&self) -> String;
    /// A message still in the queue, with its state (`active`, `deferred`, `held`,
    /// `quarantined`); `None` once it is finished (or never was).
    fn queued(&self, id: &str) -> Option<(mailgate_spool::Envelope, &'static str)>;
}
