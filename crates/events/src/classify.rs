//! Why a recipient bounced, from its reply: the enhanced status code (RFC 3463) first, the
//! basic code when there is none. The classes are the ones senders act on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    /// The mailbox does not exist (5.1.1, 5.1.0, 5.1.6, 5.1.3): stop sending to it.
    InvalidRecipient,
    /// The domain does not take mail (5.1.2, 5.4.4, 5.1.10 null MX).
    BadDomain,
    /// Over quota (5.2.2) or disabled (5.2.1).
    MailboxFull,
    /// Refused as spam or by policy (5.7.x).
    PolicyBlock,
    /// Too large for the receiver (5.3.4, 5.2.3).
    TooLarge,
    /// Not delivered before the queue's maximum age (5.4.7).
    Expired,
    /// Any other permanent failure.
    Other,
}

/// The class of a permanent failure's reply text (`550 5.1.1 No such user`).
pub fn classify(reply: &str) -> BounceClass {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let enhanced = words.next().filter(|w| w.split('.').count() == 3 && w.starts_with(['4', '5']));
    match enhanced.map(|e| e.split_once('.').map_or(e, |(_, rest)| rest)) {
        Some("1.1" | "1.0" | "1.6" | "1.3") => BounceClass::InvalidRecipient,
        Some("1.2" | "4.4" | "1.10") => BounceClass::BadDomain,
        Some("2.2" | "2.1") => BounceClass::MailboxFull,
        Some("3.4" | "2.3") => BounceClass::TooLarge,
        Some("4.7") => BounceClass::Expired,
        Some(s) if s.starts_with("7.") => BounceClass::PolicyBlock,
        Some(_) => BounceClass::Other,
        None => match code {
            "550" | "551" | "553" if reply.to_ascii_lowercase().contains("user") => BounceClass::InvalidRecipient,
            "552" => BounceClass::MailboxFull,
            "554" => BounceClass::PolicyBlock,
            _ => BounceClass::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(
            classify("550 5.1.1 <x@y>: Recipient address rejected: User unknown"),
            BounceClass::InvalidRecipient
        );
        assert_eq!(classify("550 5.1.10 null MX"), BounceClass::BadDomain);
        assert_eq!(classify("552 5.2.2 Mailbox full"), BounceClass::MailboxFull);
        assert_eq!(classify("554 5.7.1 Spam detected"), BounceClass::PolicyBlock);
        assert_eq!(classify("550 5.4.7 message expired in the queue"), BounceClass::Expired);
        assert_eq!(classify("552 5.3.4 Message too big"), BounceClass::TooLarge);
        assert_eq!(classify("550 No such user here"), BounceClass::InvalidRecipient);
        assert_eq!(classify("500 what"), BounceClass::Other);
    }
}
