//! Why a recipient failed or was deferred, from its reply: the enhanced status code (RFC 3463)
//! when it says something specific, the words of well-known replies when it does not (a
//! `550 5.0.0 User unknown`), the basic code last. The classes are the ones senders and
//! operators act on; the same reply always gets the same class.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    /// The mailbox does not exist (x.1.1, x.1.0, x.1.6, x.1.3): stop sending to it.
    InvalidRecipient,
    /// The domain does not take mail (x.1.2, x.4.4, 5.1.10 null MX).
    BadDomain,
    /// Over quota (x.2.2) or disabled (x.2.1).
    MailboxFull,
    /// Refused as spam or by policy (x.7.x not below).
    PolicyBlock,
    /// Too large for the receiver (x.3.4, x.2.3).
    TooLarge,
    /// Our credentials were refused by the next hop (x.7.8, 535, …).
    AuthFailure,
    /// No TLS where it was required, a certificate that did not verify, REQUIRETLS that could
    /// not be honoured (x.7.5, x.7.10, x.7.30, …).
    TlsFailure,
    /// The next hop could not be reached or the connection broke (x.4.1, x.4.2, x.4.3).
    ConnectionFailure,
    /// Not delivered before the queue's maximum age (x.4.7).
    Expired,
    /// Anything else.
    Other,
}

impl BounceClass {
    /// The class as in events, metrics labels and DSNs: `invalid_recipient`, ….
    pub fn name(self) -> &'static str {
        match self {
            BounceClass::InvalidRecipient => "invalid_recipient",
            BounceClass::BadDomain => "bad_domain",
            BounceClass::MailboxFull => "mailbox_full",
            BounceClass::PolicyBlock => "policy_block",
            BounceClass::TooLarge => "too_large",
            BounceClass::AuthFailure => "auth_failure",
            BounceClass::TlsFailure => "tls_failure",
            BounceClass::ConnectionFailure => "connection_failure",
            BounceClass::Expired => "expired",
            BounceClass::Other => "other",
        }
    }

    /// In words, for the human-readable part of a DSN (none for `Other`: the reply says it).
    pub fn describe(self) -> Option<&'static str> {
        Some(match self {
            BounceClass::InvalidRecipient => "the recipient address does not exist",
            BounceClass::BadDomain => "the recipient's domain does not accept mail",
            BounceClass::MailboxFull => "the recipient's mailbox is full",
            BounceClass::PolicyBlock => "refused by the receiving system as spam or by its policy",
            BounceClass::TooLarge => "the message is too large for the receiving system",
            BounceClass::AuthFailure => "the next mail server did not accept our credentials",
            BounceClass::TlsFailure => "no secure (TLS) connection as required could be made",
            BounceClass::ConnectionFailure => "the receiving system could not be reached",
            BounceClass::Expired => "it could not be delivered in time",
            BounceClass::Other => return None,
        })
    }
}

/// Words of well-known replies, by class, for replies whose code says nothing specific.
const WORDS: &[(BounceClass, &[&str])] = &[
    (BounceClass::TlsFailure, &["starttls", "tls ", "tls:", "certificate", "encryption required"]),
    (BounceClass::AuthFailure, &["authentication", "credentials", "auth failed"]),
    (BounceClass::MailboxFull, &["mailbox full", "mailbox is full", "quota", "insufficient storage", "out of storage"]),
    (BounceClass::TooLarge, &["too large", "too big", "size limit", "exceeds the maximum size", "message size"]),
    (
        BounceClass::InvalidRecipient,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "no such mailbox",
            "mailbox unavailable",
            "mailbox not found",
            "does not exist",
            "recipient not found",
            "invalid recipient",
            "recipient address rejected",
        ],
    ),
    (BounceClass::BadDomain, &["domain not found", "no such domain", "host not found", "unrouteable"]),
    (
        BounceClass::PolicyBlock,
        &["spam", "blocked", "blacklist", "blocklist", "denylist", "reputation", "policy", "rejected for"],
    ),
    (BounceClass::ConnectionFailure, &["connection refused", "timed out", "connection lost", "no route to host"]),
];

/// The class of a reply's text (`550 5.1.1 No such user`, `451 4.4.1 connect … timed out`).
pub fn classify(reply: &str) -> BounceClass {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let enhanced = words.next().filter(|w| w.split('.').count() == 3 && w.starts_with(['2', '4', '5']));
    let by_code = match enhanced.map(|e| e.split_once('.').map_or(e, |(_, rest)| rest)) {
        Some("1.1" | "1.0" | "1.6" | "1.3") => Some(BounceClass::InvalidRecipient),
        Some("1.2" | "4.4" | "1.10") => Some(BounceClass::BadDomain),
        Some("2.2" | "2.1") => Some(BounceClass::MailboxFull),
        Some("3.4" | "2.3") => Some(BounceClass::TooLarge),
        Some("4.7") => Some(BounceClass::Expired),
        Some("4.1" | "4.2" | "4.3") => Some(BounceClass::ConnectionFailure),
        Some("7.8" | "7.9" | "7.11" | "7.12") => Some(BounceClass::AuthFailure),
        Some("7.5" | "7.10" | "7.30") => Some(BounceClass::TlsFailure),
        // 5.7.0 and 5.7.1 are policy unless the words say TLS or authentication.
        Some(s) if s.starts_with("7.") => Some(
            by_words(reply)
                .filter(|c| matches!(c, BounceClass::TlsFailure | BounceClass::AuthFailure))
                .unwrap_or(BounceClass::PolicyBlock),
        ),
        _ => None,
    };
    if let Some(c) = by_code {
        return c;
    }
    if let Some(c) = by_words(reply) {
        return c;
    }
    match code {
        "530" | "534" | "535" | "454" => BounceClass::AuthFailure,
        "552" | "452" => BounceClass::MailboxFull,
        "554" => BounceClass::PolicyBlock,
        "421" => BounceClass::ConnectionFailure,
        _ => BounceClass::Other,
    }
}

fn by_words(reply: &str) -> Option<BounceClass> {
    let lower = reply.to_ascii_lowercase();
    WORDS.iter().find(|(_, ws)| ws.iter().any(|w| lower.contains(w))).map(|(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for (reply, class) in [
            ("550 5.1.1 <x@y>: Recipient address rejected: User unknown", BounceClass::InvalidRecipient),
            ("550 5.1.10 null MX", BounceClass::BadDomain),
            ("552 5.2.2 Mailbox full", BounceClass::MailboxFull),
            ("452 4.2.2 Over quota, try later", BounceClass::MailboxFull),
            ("554 5.7.1 Spam detected", BounceClass::PolicyBlock),
            ("451 4.7.1 Greylisted, try again", BounceClass::PolicyBlock),
            ("550 5.4.7 message expired in the queue", BounceClass::Expired),
            ("552 5.3.4 Message too big", BounceClass::TooLarge),
            ("550 No such user here", BounceClass::InvalidRecipient),
            ("550 5.0.0 User unknown", BounceClass::InvalidRecipient),
            ("535 5.7.8 Authentication credentials invalid", BounceClass::AuthFailure),
            ("535 Incorrect authentication data", BounceClass::AuthFailure),
            ("451 4.7.5 TLS required but handshake failed: invalid peer certificate", BounceClass::TlsFailure),
            ("550 5.7.30 REQUIRETLS: the next hop does not offer STARTTLS", BounceClass::TlsFailure),
            ("530 5.7.0 Must issue a STARTTLS command first", BounceClass::TlsFailure),
            ("451 4.4.1 connect to 192.0.2.1:25: Connection refused", BounceClass::ConnectionFailure),
            ("451 4.4.2 connection lost", BounceClass::ConnectionFailure),
            ("421 Service not available, closing channel", BounceClass::ConnectionFailure),
            ("550 5.7.1 Message rejected due to local policy", BounceClass::PolicyBlock),
            ("554 Your IP is on a blocklist", BounceClass::PolicyBlock),
            ("500 what", BounceClass::Other),
            ("", BounceClass::Other),
        ] {
            assert_eq!(classify(reply), class, "{reply}");
            // Every class has a name; every one but Other has words for a DSN.
            assert!(!class.name().is_empty());
            assert_eq!(class.describe().is_none(), class == BounceClass::Other);
        }
    }
}
