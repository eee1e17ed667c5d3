//! Events: every change of state of a message and of each recipient — received, refused at
//! the door, delivered, deferred, bounced (with a classification), expired, delay notices sent, quarantined,
//! released, and what an operator did — as one typed [`Event`], appended to a durable log.
//!
//! This crate owns the event's shape, the bounce classification and the log: JSON lines in
//! segments under `<spool>/events/`, appended by one writer thread with group commit, synced
//! before [`EventLog::append`] returns, read back by cursor (the sequence number). It must not
//! know where events come from (sessions, the API, the queue) or where they go (HTTP, webhooks):
//! producers call `append`, readers page with [`EventLog::since`].

mod classify;
mod json;
mod log;

use std::collections::BTreeMap;

use mailgate_spool::Envelope;
use serde::{Deserialize, Serialize};

pub use classify::{classify, BounceClass};
pub use log::EventLog;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// In the spool: accepted by SMTP or the API (one event per message).
    Received,
    /// Refused at the door after its content arrived (by policy or the content rules): never
    /// stored. The reply is what the client was told.
    Rejected,
    /// Delivered to the next hop or a maildir (per recipient).
    Delivered,
    /// A temporary failure; another attempt will follow (per recipient).
    Deferred,
    /// A permanent failure (per recipient), with its classification.
    Bounced,
    /// Still undelivered at `queue.max_age` (per recipient).
    Expired,
    /// The sender was sent a delay notice (RFC 3461 DELAY) about this recipient.
    DelayNotice,
    /// Kept by a plugin's quarantine verdict.
    Quarantined,
    /// Released from hold or quarantine by an operator.
    Released,
    /// Removed or bounced by an operator.
    Removed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Received => "received",
            Kind::Rejected => "rejected",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
            Kind::DelayNotice => "delay_notice",
            Kind::Quarantined => "quarantined",
            Kind::Released => "released",
            Kind::Removed => "removed",
        }
    }
}

/// One event. `seq` is its place in the log (the cursor); `id` is unique and stable, for
/// receivers that de-duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the log when appended (0 before).
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub id: String,
    /// Unix time in milliseconds.
    pub at: u64,
    pub kind: Kind,
    pub queue_id: String,
    /// The recipient a per-recipient event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The envelope sender (empty for `<>`).
    pub sender: String,
    /// How many recipients a `received` event's message has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<usize>,
    /// `smtp` or `api` for `received`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The API key a message came with, its tags and metadata, echoed in every event about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The full reply of the next hop (or the local reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// Which attempt this was (delivery events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the next attempt is due (deferred), Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    /// Why a recipient bounced or was deferred (see [`classify`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<BounceClass>,
    /// Anything else worth saying (quarantine reason, operator action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event about `env`, now, with its API key, tags and metadata.
    pub fn about(kind: Kind, env: &Envelope) -> Event {
        let mut e = Event::new(kind, &env.id, &env.sender, env.api.as_deref());
        e.recipients = (kind == Kind::Received).then_some(env.recipients.len());
        e
    }

    /// An event about a message that has no stored envelope (refused at the door).
    pub fn new(kind: Kind, queue_id: &str, sender: &str, api: Option<&mailgate_spool::ApiMeta>) -> Event {
        Event {
            seq: 0,
            id: String::new(),
            at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            kind,
            queue_id: queue_id.to_string(),
            recipient: None,
            sender: sender.to_string(),
            recipients: None,
            source: None,
            api_key: api.map(|a| a.key.clone()),
            tags: api.map(|a| a.tags.clone()).unwrap_or_default(),
            metadata: api.map(|a| a.metadata.clone()).unwrap_or_default(),
            reply: None,
            remote_host: None,
            attempt: None,
            next_attempt: None,
            class: None,
            detail: None,
        }
    }

    /// The same event about one recipient.
    pub fn rcpt(mut self, rcpt: &str) -> Event {
        self.recipient = Some(rcpt.to_string());
        self
    }
}
