//! What the spool keeps about each message besides its content.

use serde::{Deserialize, Serialize};

/// A queue id: 16 upper-case hex digits, time-ordered.
pub type QueueId = String;

/// The state of one recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet delivered; will be tried at `next_attempt`.
    Pending,
    Delivered,
    /// Permanently failed (a DSN was or will be sent).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub status: RcptStatus,
    /// The last reply (or local error) for this recipient, for logs, DSNs and the queue CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// The host that gave `last_reply`, for the DSN's Remote-MTA field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
}

/// The envelope and queue state of a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Reverse path; empty for the null sender `<>` (DSNs), which never gets a DSN back.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// When the message was accepted (Unix time, milliseconds).
    pub received_at: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When to try again (Unix time, milliseconds); 0 means now.
    pub next_attempt: u64,
    /// BODY=8BITMIME was given (or content has 8-bit octets): the next hop must offer 8BITMIME.
    #[serde(default)]
    pub body_8bit: bool,
    /// SMTPUTF8 was given: the next hop must offer SMTPUTF8.
    #[serde(default)]
    pub smtputf8: bool,
    /// The client's address and HELO, for logs and DSNs.
    #[serde(default)]
    pub client: String,
    /// A route for the whole message chosen by a plugin, in the queue's text form
    /// (`mx:D`, `smarthost:H:P`, `maildir:P`, `discard`, `hold`, `reject:CODE ENH TEXT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why the message is quarantined: kept, never delivered until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// MAIL FROM had REQUIRETLS (RFC 8689): relay only over verified TLS (delivery honours it
    /// in the outbound TLS issue; stored and shown for now).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// Held by an operator: kept, not tried, until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Envelope {
    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients.iter().enumerate().filter(|(_, r)| r.status == RcptStatus::Pending)
    }
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status != RcptStatus::Pending)
    }
}
