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
    /// NOTIFY= of RCPT (RFC 3461): `None` when not given (failures are reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// ORCPT= of RCPT: the address type and the original address (for Original-Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<(String, String)>,
}

impl Recipient {
    /// A recipient not yet tried.
    pub fn pending(address: String) -> Recipient {
        Recipient {
            address,
            status: RcptStatus::Pending,
            last_reply: None,
            remote_host: None,
            notify: None,
            orcpt: None,
        }
    }

    /// Whether its sender wants to hear of its failure (RFC 3461: by default, yes).
    pub fn notify_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// Whether its sender wants to hear that it is delayed (by default, yes).
    pub fn notify_delay(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }

    /// Whether its sender asked to hear of its delivery (only with NOTIFY=SUCCESS).
    pub fn notify_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }
}

/// When a recipient's sender wants a DSN (RFC 3461 NOTIFY); all false is `NEVER`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// What a failure DSN returns of the message (RFC 3461 RET).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    Full,
    Hdrs,
}

/// A route chosen for a message (or one recipient) outside the configuration, by a plugin.
/// Stored as data: the queue interprets it, this crate does not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RouteChoice {
    /// The MX hosts of this domain.
    Mx { domain: String },
    /// One host (only those the operator allowed; checked before it is stored).
    Smarthost { host: String, port: u16 },
    /// A maildir (only a configured one; checked before it is stored).
    Maildir { path: String },
    /// Accept and drop.
    Discard,
    /// Keep it queued without trying.
    Hold,
    /// Fail (5xx) or defer (4xx) with this reply.
    Reject { code: u16, enhanced: String, text: String },
}

/// Reads the route field as written by this version (tagged JSON) or by versions before it,
/// which stored a text form (`mx:D`, `smarthost:H:P`, `maildir:P`, `discard`, `hold`,
/// `reject:CODE ENH TEXT`): a spool survives the upgrade. A legacy text that does not parse
/// becomes a transient reject, so the message waits for an operator instead of going astray.
fn route_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RouteChoice>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Typed(RouteChoice),
        Legacy(String),
    }
    Ok(match Option::<Stored>::deserialize(d)? {
        None => None,
        Some(Stored::Typed(r)) => Some(r),
        Some(Stored::Legacy(s)) => Some(legacy_route(&s)),
    })
}

fn legacy_route(s: &str) -> RouteChoice {
    let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
    let smarthost = || {
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Some(RouteChoice::Smarthost { host, port: port.parse().ok()? })
    };
    let reject = || {
        let mut it = rest.splitn(3, ' ');
        let code: u16 = it.next()?.parse().ok()?;
        Some(RouteChoice::Reject {
            code,
            enhanced: it.next().unwrap_or("").to_string(),
            text: it.next().unwrap_or("").to_string(),
        })
    };
    let parsed = match kind {
        "mx" if !rest.is_empty() => Some(RouteChoice::Mx { domain: rest.to_ascii_lowercase() }),
        "smarthost" => smarthost(),
        "maildir" if !rest.is_empty() => Some(RouteChoice::Maildir { path: rest.to_string() }),
        "discard" => Some(RouteChoice::Discard),
        "hold" => Some(RouteChoice::Hold),
        "reject" => reject(),
        _ => None,
    };
    parsed.unwrap_or_else(|| RouteChoice::Reject {
        code: 451,
        enhanced: "4.3.5".into(),
        text: format!("stored route {s:?} not understood"),
    })
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
    /// A route for the whole message chosen by a plugin.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "route_or_legacy")]
    pub route: Option<RouteChoice>,
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
    /// RET= of MAIL (RFC 3461): the whole message or its headers in a failure DSN (`None`:
    /// not given, headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<DsnRet>,
    /// ENVID= of MAIL, decoded: the sender's transaction id, in every DSN about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// A delay notice went to the sender (RFC 3461 DELAY): there is one per message at most.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
    /// A DSN about a null-sender message, sent to the postmaster: if it fails too, it is
    /// dropped (there is no one left to tell, and telling the postmaster again would loop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub double_bounce: bool,
    /// What the sending API was told about a message it took in (`None`: not from the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Box<ApiMeta>>,
}

/// A message submitted through the HTTP API: who sent it and what the sender asked to have
/// echoed in every event about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiMeta {
    /// The name of the API key that submitted it.
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The client's idempotency key: kept with the message so that a repeat is recognised
    /// even when the gateway stopped between the spool write and the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The return path is the gateway's VERP address for it: failures reach the API client as
    /// events, so no DSN is written (it would only come back to us).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verp: bool,
    /// The key's `[[pool]]` of source addresses: its mail leaves from there (unless an
    /// on-route plugin picks another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl Envelope {
    /// A new envelope received now: pending recipients, no attempt yet, no flags.
    pub fn new(id: QueueId, sender: String, recipients: Vec<String>) -> Envelope {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Envelope {
            id,
            sender,
            recipients: recipients.into_iter().map(Recipient::pending).collect(),
            received_at: now as u64,
            attempts: 0,
            next_attempt: 0,
            body_8bit: false,
            smtputf8: false,
            client: String::new(),
            route: None,
            quarantine: None,
            requiretls: false,
            held: false,
            ret: None,
            envid: None,
            delay_notified: false,
            double_bounce: false,
            api: None,
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients.iter().enumerate().filter(|(_, r)| r.status == RcptStatus::Pending)
    }
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status != RcptStatus::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_and_legacy_texts_still_read() {
        let typed = RouteChoice::Smarthost { host: "10.0.0.1".into(), port: 2525 };
        let json = serde_json::to_string(&typed).unwrap();
        assert_eq!(json, r#"{"type":"smarthost","host":"10.0.0.1","port":2525}"#);
        let read = |route: &str| -> Option<RouteChoice> {
            let env = format!(
                r#"{{"id":"A","sender":"","recipients":[],"received_at":0,"attempts":0,"next_attempt":0,"route":{route}}}"#
            );
            serde_json::from_str::<Envelope>(&env).unwrap().route
        };
        assert_eq!(read(&json), Some(typed.clone()));
        assert_eq!(read(r#""smarthost:[10.0.0.1]:2525""#), Some(typed));
        assert_eq!(read(r#""mx:Example.ORG""#), Some(RouteChoice::Mx { domain: "example.org".into() }));
        assert_eq!(read(r#""hold""#), Some(RouteChoice::Hold));
        assert_eq!(
            read(r#""reject:550 5.7.1 go away""#),
            Some(RouteChoice::Reject { code: 550, enhanced: "5.7.1".into(), text: "go away".into() })
        );
        assert!(matches!(read(r#""teleport""#), Some(RouteChoice::Reject { code: 451, .. })));
        assert_eq!(read("null"), None);
    }
}
