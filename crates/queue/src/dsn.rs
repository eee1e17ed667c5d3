//! RFC 3464 delivery status notifications: failures, delays and successes, as the sender
//! asked for them with the DSN extension (RFC 3461).

use mailgate_message::date::rfc5322_date;
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{DsnRet, Envelope};

/// Which report a DSN is (one kind per DSN, as Postfix sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Recipients that failed for good.
    Failure,
    /// Recipients still being retried; `until_unix` is when the queue gives up on them.
    Delay { until_unix: u64 },
    /// Recipients delivered or relayed, for senders that asked with NOTIFY=SUCCESS.
    Success,
}

/// A recipient's `Action:` (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// In its mailbox (or dropped by a discard route).
    Delivered,
    /// Passed to a next hop that does not do DSN: no more reports will come.
    Relayed,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient as reported in a DSN.
#[derive(Clone, Copy)]
pub struct Line<'a> {
    pub recipient: &'a str,
    pub action: Action,
    /// The reply that decided it, e.g. `550 5.1.1 no such user` (or a local one): its
    /// enhanced code is the `Status:`.
    pub reply: &'a Reply,
    pub remote_host: Option<&'a str>,
    /// ORCPT of the recipient (address type, address), for Original-Recipient.
    pub original: Option<&'a (String, String)>,
    /// What the `Diagnostic-Code:` says (RFC 3464 §2.3.6): a remote server's reply, or our
    /// own words; `None` for `reply` itself, as the remote's when `remote_host` is known.
    pub diagnostic: Option<Diagnostic<'a>>,
}

/// Whose words a `Diagnostic-Code:` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnostic<'a> {
    /// A remote SMTP server's reply: `smtp; 550 5.1.1 …`.
    Smtp(&'a str),
    /// Our own decision or local error: `X-Mailgate; …` (as Postfix writes `X-Postfix;`).
    Local(&'a str),
}

/// The reply's enhanced status, or a default by its class.
fn status_of(reply: &Reply) -> Enhanced {
    match reply.enhanced {
        Some(e) => e,
        None if reply.is_positive() => Enhanced(2, 0, 0),
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

/// Builds the DSN message (CRLF line ends) sent from `<>` to `to` (the sender of `env`, or the
/// postmaster for a null-sender message), with what
/// the sender asked for (RFC 3461): ENVID as Original-Envelope-Id, ORCPT as
/// Original-Recipient, and RET=FULL for the whole message instead of its header section (in
/// failure reports only: delays and successes return the headers, as Postfix does).
pub fn build(
    hostname: &str,
    env: &Envelope,
    to: &str,
    now_unix: u64,
    report: Report,
    lines: &[Line<'_>],
    original: &[u8],
) -> Vec<u8> {
    let (queue_id, arrival_unix) = (env.id.as_str(), env.received_at / 1000);
    // RFC 8689 §4.4: RET=FULL is disregarded for a REQUIRETLS message.
    let full = env.ret == Some(DsnRet::Full) && report == Report::Failure && !env.requiretls;
    let boundary = format!("{queue_id}.{now_unix}/{hostname}");
    let date = rfc5322_date(now_unix);
    // RFC 6533: a report naming a UTF-8 address, or quoting UTF-8 header fields, is a global
    // one (`message/global-delivery-status`, `utf-8` address types, `message/global-headers`).
    let quoted = if full { original } else { headers_of(original) };
    let global = !quoted.is_ascii()
        || lines.iter().any(|l| !l.recipient.is_ascii() || l.original.is_some_and(|(_, a)| !a.is_ascii()));
    let status_type = if global { "global-delivery-status" } else { "delivery-status" };
    let (subject, intro) = match report {
        Report::Failure => {
            ("Undelivered Mail Returned to Sender", "Your message could not be delivered to one or more recipients.")
        }
        Report::Delay { .. } => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried; you do not need to send it again.",
        ),
        Report::Success => (
            "Successful Mail Delivery Report",
            "Your message was delivered to the destinations listed below. A message relayed\r\nto another system may still meet a problem there, which that system reports.",
        ),
    };
    let mut m = String::new();
    m += &format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n");
    m += &format!("To: <{to}>\r\n");
    m += &format!("Subject: {subject}\r\n");
    m += &format!("Date: {date}\r\n");
    m += &format!("Message-ID: <{queue_id}.{now_unix}.dsn@{hostname}>\r\n");
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += &format!("Content-Type: multipart/report; report-type={status_type};\r\n\tboundary=\"{boundary}\"\r\n\r\n");
    m += "This is a MIME-encapsulated message.\r\n\r\n";
    m += &format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m += &format!("This is the mail system at host {hostname}.\r\n\r\n");
    m += intro;
    m += "\r\n";
    if let Report::Delay { until_unix } = report {
        m += &format!("The last attempt will be made by {}.\r\n", rfc5322_date(until_unix));
    }
    m += if full {
        "Your message is attached below.\r\n\r\n"
    } else {
        "The headers of your message are attached below.\r\n\r\n"
    };
    for l in lines {
        let why = match l.action {
            Action::Failed | Action::Delayed => mailgate_events::classify(&l.reply.to_string()).describe(),
            _ => None,
        };
        match why {
            Some(w) => m += &format!("<{}>: {w} ({})\r\n", l.recipient, l.reply),
            None => m += &format!("<{}>: {}\r\n", l.recipient, l.reply),
        }
    }
    m += &format!("\r\n--{boundary}\r\nContent-Type: message/{status_type}\r\n\r\n");
    m += &format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(id) = env.envid.as_deref() {
        m += &format!("Original-Envelope-Id: {id}\r\n");
    }
    m += &format!("X-Mailgate-Queue-ID: {queue_id}\r\n");
    m += &format!("Arrival-Date: {}\r\n", rfc5322_date(arrival_unix));
    for l in lines {
        m += "\r\n";
        if let Some((kind, addr)) = l.original {
            m += &format!("Original-Recipient: {kind}; {addr}\r\n");
        }
        m += &format!(
            "Final-Recipient: {}; {}\r\nAction: {}\r\nStatus: {}\r\n",
            if l.recipient.is_ascii() { "rfc822" } else { "utf-8" },
            l.recipient,
            l.action.name(),
            status_of(l.reply)
        );
        // A host name or address; a local socket (an LMTP path) is no MTA name.
        if let Some(h) = l.remote_host.filter(|h| !h.contains('/')) {
            m += &format!("Remote-MTA: dns; {h}\r\n");
        }
        let own = l.reply.to_string();
        let diagnostic = l.diagnostic.unwrap_or(match l.remote_host {
            Some(_) => Diagnostic::Smtp(&own),
            None => Diagnostic::Local(&own),
        });
        let (kind, text) = match diagnostic {
            Diagnostic::Smtp(t) => ("smtp", t),
            Diagnostic::Local(t) => ("X-Mailgate", t),
        };
        m += &format!("Diagnostic-Code: {kind}; {}\r\n", text.replace(['\r', '\n'], " "));
        if matches!(l.action, Action::Failed | Action::Delayed) {
            m += &format!("Last-Attempt-Date: {date}\r\n");
            // An extension field (RFC 3464 §3.1): why, as a class a program can act on.
            m += &format!("X-Mailgate-Class: {}\r\n", mailgate_events::classify(&l.reply.to_string()).name());
        }
        if let Report::Delay { until_unix } = report {
            m += &format!("Will-Retry-Until: {}\r\n", rfc5322_date(until_unix));
        }
    }
    let ctype = match (full, quoted.is_ascii()) {
        (true, true) => "message/rfc822",
        (true, false) => "message/global",
        (false, true) => "text/rfc822-headers",
        (false, false) => "message/global-headers",
    };
    let returned = quoted;
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
        let f = [Line {
            recipient: "x@y.example",
            action: Action::Failed,
            reply: &reply,
            remote_host: Some("mx.y.example"),
            original: None,
            diagnostic: None,
        }];
        let env = Envelope::new("Q1".into(), "a@b.example".into(), vec!["x@y.example".into()]);
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &f, orig)).unwrap();
        assert!(d.contains("report-type=delivery-status"));
        assert!(d.contains(
            "Final-Recipient: rfc822; x@y.example\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.example"
        ));
        assert!(d.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: a@b.example\r\n\r\n--"));
        assert!(!d.contains("body text"));
        // Why, in words for the sender and as a class for programs.
        assert!(d.contains("<x@y.example>: the recipient address does not exist (550 5.1.1 no such user)\r\n"), "{d}");
        assert!(d.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\nLast-Attempt-Date: "), "{d}");
        assert!(d.contains("X-Mailgate-Class: invalid_recipient\r\n"), "{d}");
        assert_eq!(status_of(&Reply::plain(451, "timeout")), Enhanced(4, 0, 0));
        // RET=FULL, ENVID and ORCPT (RFC 3461 §6).
        let orcpt = ("rfc822".to_string(), "first@y.example".to_string());
        let f = [Line {
            recipient: "x@y.example",
            action: Action::Failed,
            reply: &reply,
            remote_host: None,
            original: Some(&orcpt),
            diagnostic: None,
        }];
        let mut env = env;
        (env.envid, env.ret) = (Some("T-42".into()), Some(DsnRet::Full));
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &f, orig)).unwrap();
        assert!(d.contains("Reporting-MTA: dns; mx.test\r\nOriginal-Envelope-Id: T-42\r\n"), "{d}");
        assert!(d.contains("Original-Recipient: rfc822; first@y.example\r\nFinal-Recipient: rfc822; x@y.example"));
        assert!(d.contains("Content-Type: message/rfc822\r\n\r\nSubject: hello") && d.contains("body text"));
        assert!(!d.contains("Will-Retry-Until"));
        // RFC 8689 §4.4: a REQUIRETLS message's report quotes only its header section.
        env.requiretls = true;
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &f, orig)).unwrap();
        assert!(d.contains("Content-Type: text/rfc822-headers") && !d.contains("body text"), "{d}");
        env.requiretls = false;

        // A delay: Will-Retry-Until, the headers only even with RET=FULL.
        let later = Reply::new(451, Enhanced(4, 2, 1), "try later");
        let f = [Line {
            recipient: "x@y.example",
            action: Action::Delayed,
            reply: &later,
            remote_host: None,
            original: None,
            diagnostic: None,
        }];
        let d = String::from_utf8(build(
            "mx.test",
            &env,
            "a@b.example",
            60,
            Report::Delay { until_unix: 86_400 },
            &f,
            orig,
        ))
        .unwrap();
        assert!(d.contains("Subject: Delayed Mail (still being retried)\r\n"), "{d}");
        assert!(d.contains("Action: delayed\r\nStatus: 4.2.1\r\n"), "{d}");
        assert!(d.contains("Will-Retry-Until: Fri, 02 Jan 1970 00:00:00 +0000\r\n"), "{d}");
        assert!(d.contains("text/rfc822-headers") && !d.contains("body text"));

        // Successes: delivered (a mailbox) and relayed (a hop without DSN), no retry field.
        let ok = Reply::new(250, Enhanced(2, 0, 0), "queued as 1");
        let f = [
            Line {
                recipient: "x@y.example",
                action: Action::Delivered,
                reply: &ok,
                remote_host: None,
                original: None,
                diagnostic: None,
            },
            Line {
                recipient: "z@y.example",
                action: Action::Relayed,
                reply: &ok,
                remote_host: Some("mx"),
                original: None,
                diagnostic: None,
            },
        ];
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Success, &f, orig)).unwrap();
        assert!(d.contains("Subject: Successful Mail Delivery Report\r\n"), "{d}");
        assert!(d.contains("Final-Recipient: rfc822; x@y.example\r\nAction: delivered\r\nStatus: 2.0.0\r\n"));
        assert!(d.contains("Final-Recipient: rfc822; z@y.example\r\nAction: relayed\r\nStatus: 2.0.0\r\n"));
        assert!(!d.contains("Will-Retry-Until") && !d.contains("Last-Attempt-Date") && !d.contains("body text"));
    }

    /// An expiry: our 4.4.7 with the remote's last words as the diagnostic; a local failure
    /// says it is ours; a UTF-8 recipient makes the report a global one.
    #[test]
    fn expiry_diagnostics_and_global_reports() {
        let orig = b"Subject: hello\r\n\r\nbody\r\n";
        let expired = Reply::new(451, Enhanced(4, 4, 7), "delivery time expired: not delivered in 5days");
        let env = Envelope::new("Q1".into(), "a@b.example".into(), vec!["x@y.example".into()]);
        let mut l = Line {
            recipient: "x@y.example",
            action: Action::Failed,
            reply: &expired,
            remote_host: Some("mx.y.example"),
            original: None,
            diagnostic: Some(Diagnostic::Smtp("451 4.3.0 busy")),
        };
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &[l], orig)).unwrap();
        assert!(d.contains("Action: failed\r\nStatus: 4.4.7\r\n"), "{d}");
        assert!(d.contains("Diagnostic-Code: smtp; 451 4.3.0 busy\r\n"), "{d}");
        l.remote_host = None;
        l.diagnostic = None;
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &[l], orig)).unwrap();
        assert!(d.contains("Diagnostic-Code: X-Mailgate; 451 4.4.7 delivery time expired"), "{d}");
        assert!(d.contains("report-type=delivery-status") && d.contains("text/rfc822-headers"), "{d}");
        l.recipient = "jürgen@y.example";
        let d = String::from_utf8(build("mx.test", &env, "a@b.example", 60, Report::Failure, &[l], orig)).unwrap();
        assert!(d.contains("report-type=global-delivery-status"), "{d}");
        assert!(d.contains("Content-Type: message/global-delivery-status\r\n"), "{d}");
        assert!(d.contains("Final-Recipient: utf-8; jürgen@y.example\r\n"), "{d}");
        let d = String::from_utf8(build(
            "mx.test",
            &env,
            "a@b.example",
            60,
            Report::Failure,
            &[l],
            "Subject: grüße\r\n\r\n".as_bytes(),
        ))
        .unwrap();
        assert!(d.contains("Content-Type: message/global-headers\r\n"), "{d}");
    }
}
