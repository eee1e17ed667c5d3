//! RFC 3464 delivery status notifications for recipients that failed permanently.

use mailgate_message::date::rfc5322_date;
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{DsnRet, Envelope};

/// One failed recipient as reported in a DSN.
pub struct Failure<'a> {
    pub recipient: &'a str,
    /// The reply that failed it, e.g. `550 5.1.1 no such user` (or a local reason).
    pub reply: &'a Reply,
    pub remote_host: Option<&'a str>,
    /// ORCPT of the recipient (address type, address), for Original-Recipient.
    pub original: Option<&'a (String, String)>,
}

/// The reply's enhanced status, or a default by its class.
fn status_of(reply: &Reply) -> Enhanced {
    match reply.enhanced {
        Some(e) => e,
        None if reply.is_transient() => Enhanced(4, 0, 0),
        None => Enhanced(5, 0, 0),
    }
}

/// The header section of a message (up to the empty line).
pub fn headers_of(data: &[u8]) -> &[u8] {
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &data[..i + 2],
        None => data,
    }
}

/// Builds the DSN message (CRLF line ends) sent from `<>` to the sender of `env`, with what
/// the sender asked for (RFC 3461): ENVID as Original-Envelope-Id, RET=FULL for the whole
/// message instead of its header section.
pub fn build(hostname: &str, env: &Envelope, now_unix: u64, failures: &[Failure<'_>], original: &[u8]) -> Vec<u8> {
    let (queue_id, sender, arrival_unix) = (env.id.as_str(), env.sender.as_str(), env.received_at / 1000);
    let full = env.ret == Some(DsnRet::Full);
    let boundary = format!("{queue_id}.{now_unix}/{hostname}");
    let date = rfc5322_date(now_unix);
    let mut m = String::new();
    m += &format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n");
    m += &format!("To: <{sender}>\r\n");
    m += "Subject: Undelivered Mail Returned to Sender\r\n";
    m += &format!("Date: {date}\r\n");
    m += &format!("Message-ID: <{queue_id}.{now_unix}.dsn@{hostname}>\r\n");
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += &format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n");
    m += "This is a MIME-encapsulated message.\r\n\r\n";
    m += &format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m += &format!("This is the mail system at host {hostname}.\r\n\r\n");
    m += "Your message could not be delivered to one or more recipients.\r\n";
    m += if full {
        "Your message is attached below.\r\n\r\n"
    } else {
        "The headers of your message are attached below.\r\n\r\n"
    };
    for f in failures {
        m += &format!("<{}>: {}\r\n", f.recipient, f.reply);
    }
    m += &format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n");
    m += &format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(id) = env.envid.as_deref() {
        m += &format!("Original-Envelope-Id: {id}\r\n");
    }
    m += &format!("X-Mailgate-Queue-ID: {queue_id}\r\n");
    m += &format!("Arrival-Date: {}\r\n", rfc5322_date(arrival_unix));
    for f in failures {
        m += "\r\n";
        if let Some((kind, addr)) = f.original {
            m += &format!("Original-Recipient: {kind}; {addr}\r\n");
        }
        m += &format!(
            "Final-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.recipient,
            status_of(f.reply)
        );
        if let Some(h) = f.remote_host {
            m += &format!("Remote-MTA: dns; {h}\r\n");
        }
        m += &format!("Diagnostic-Code: smtp; {}\r\n", f.reply.to_string().replace(['\r', '\n'], " "));
    }
    let (ctype, returned) =
        if full { ("message/rfc822", original) } else { ("text/rfc822-headers", headers_of(original)) };
    m += &format!("\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(returned);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_report_with_the_original_headers() {
        let orig = b"Subject: hello\r\nFrom: a@b.example\r\n\r\nbody text\r\n";
        let reply = Reply::new(550, Enhanced(5, 1, 1), "no such user");
        let f =
            [Failure { recipient: "x@y.example", reply: &reply, remote_host: Some("mx.y.example"), original: None }];
        let env = Envelope::new("Q1".into(), "a@b.example".into(), vec!["x@y.example".into()]);
        let d = String::from_utf8(build("mx.test", &env, 60, &f, orig)).unwrap();
        assert!(d.contains("report-type=delivery-status"));
        assert!(d.contains(
            "Final-Recipient: rfc822; x@y.example\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.example"
        ));
        assert!(d.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: a@b.example\r\n\r\n--"));
        assert!(!d.contains("body text"));
        assert_eq!(status_of(&Reply::plain(451, "timeout")), Enhanced(4, 0, 0));
        // RET=FULL, ENVID and ORCPT (RFC 3461 §6).
        let orcpt = ("rfc822".to_string(), "first@y.example".to_string());
        let f = [Failure { recipient: "x@y.example", reply: &reply, remote_host: None, original: Some(&orcpt) }];
        let mut env = env;
        (env.envid, env.ret) = (Some("T-42".into()), Some(DsnRet::Full));
        let d = String::from_utf8(build("mx.test", &env, 60, &f, orig)).unwrap();
        assert!(d.contains("Reporting-MTA: dns; mx.test\r\nOriginal-Envelope-Id: T-42\r\n"), "{d}");
        assert!(d.contains("Original-Recipient: rfc822; first@y.example\r\nFinal-Recipient: rfc822; x@y.example"));
        assert!(d.contains("Content-Type: message/rfc822\r\n\r\nSubject: hello") && d.contains("body text"));
    }
}
