//! Reading a delivery status notification (RFC 3464, and RFC 6533's global form) that came
//! back to a VERP address: the per-message fields and one entry per recipient.
//!
//! The report is found by a line scan, not a MIME parse: the `message/delivery-status` part's
//! header, its empty line, its fields up to the next boundary line. Nothing recurses, every
//! loop is bounded, and no input can make it allocate more than the message it reads.
//! Reports are 7-bit text (RFC 3464 §2.1); a transfer-encoded one is not read (the caller
//! then falls back to what the VERP address says).

/// What a report says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `Reporting-MTA`, without its type.
    pub reporting_mta: Option<String>,
    /// `Original-Envelope-Id`.
    pub envelope_id: Option<String>,
    pub recipients: Vec<ReportedRcpt>,
}

/// One recipient's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedRcpt {
    /// `Final-Recipient`'s address, without its type.
    pub final_recipient: String,
    /// `Original-Recipient`'s address, when given.
    pub original_recipient: Option<String>,
    /// `Action`, lower case: failed, delayed, delivered, relayed, expanded.
    pub action: String,
    /// `Status`, e.g. `5.1.1`.
    pub status: String,
    /// `Diagnostic-Code` without its type, e.g. `550 5.1.1 no such user`.
    pub diagnostic: Option<String>,
    /// `Remote-MTA` without its type.
    pub remote_mta: Option<String>,
}

impl ReportedRcpt {
    /// A permanent failure: `Action: failed` (with a 5.x.x status, or none).
    pub fn failed(&self) -> bool {
        self.action == "failed" && !self.status.starts_with('4')
    }

    /// The remote reply as it would read in SMTP, for events: the diagnostic, or the status.
    pub fn reply(&self) -> String {
        match &self.diagnostic {
            Some(d) if d.contains(&self.status) || self.status.is_empty() => d.clone(),
            Some(d) => format!("{} {d}", self.status),
            None => self.status.clone(),
        }
    }
}

/// Most lines read from the report part, and most recipients kept.
const MAX_LINES: usize = 20_000;
const MAX_RCPTS: usize = 1_000;

/// The report in `message`, if it has one.
pub fn parse_report(message: &[u8]) -> Option<Report> {
    let mut lines = message.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // The part: its Content-Type line, then the rest of its header up to the empty line.
    let mut encoded = false;
    loop {
        let l = lines.next()?;
        if is_report_type(l) {
            break;
        }
    }
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
        if let Some(v) = field(l, "content-transfer-encoding") {
            encoded = !matches!(v.to_ascii_lowercase().as_str(), "7bit" | "8bit" | "binary");
        }
    }
    if encoded {
        return None;
    }
    // The fields: groups separated by empty lines, folded lines unfolded.
    let mut groups: Vec<Vec<(String, String)>> = vec![vec![]];
    for l in lines.take(MAX_LINES) {
        if l.starts_with(b"--") {
            break;
        }
        let text = String::from_utf8_lossy(l);
        if text.trim().is_empty() {
            if groups.last().is_some_and(|g| !g.is_empty()) {
                if groups.len() > MAX_RCPTS {
                    break;
                }
                groups.push(vec![]);
            }
            continue;
        }
        let group = groups.last_mut().expect("never empty");
        if text.starts_with([' ', '\t']) {
            if let Some((_, v)) = group.last_mut() {
                v.push(' ');
                v.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut report = Report::default();
    for g in groups.into_iter().filter(|g| !g.is_empty()) {
        let get = |name: &str| g.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        match get("final-recipient") {
            None => {
                report.reporting_mta = report.reporting_mta.or(get("reporting-mta").map(|v| untyped(&v)));
                report.envelope_id = report.envelope_id.or(get("original-envelope-id"));
            }
            Some(fr) => {
                let status = get("status").unwrap_or_default();
                report.recipients.push(ReportedRcpt {
                    final_recipient: address(&fr),
                    original_recipient: get("original-recipient").map(|v| address(&v)),
                    action: get("action").unwrap_or_default().to_ascii_lowercase(),
                    status: status.split_whitespace().next().unwrap_or("").to_string(),
                    diagnostic: get("diagnostic-code").map(|v| untyped(&v)),
                    remote_mta: get("remote-mta").map(|v| untyped(&v)),
                })
            }
        }
    }
    Some(report)
}

fn is_report_type(line: &[u8]) -> bool {
    field(line, "content-type").is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v.starts_with("message/delivery-status") || v.starts_with("message/global-delivery-status")
    })
}

/// The value of header line `line` if its name is `name` (any case).
fn field(line: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let (n, v) = text.split_once(':')?;
    n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
}

/// `rfc822; a@b` → `a@b` (angle brackets dropped too).
fn address(v: &str) -> String {
    untyped(v).trim_start_matches('<').trim_end_matches('>').to_string()
}

/// `dns; mx.example` → `mx.example`; a value without a type is kept.
fn untyped(v: &str) -> String {
    v.split_once(';').map_or(v, |(_, rest)| rest).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as Postfix writes one.
    const POSTFIX: &str = "From: MAILER-DAEMON@mx.remote.test (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"\r\n\r\n\
--B1\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
I'm sorry to have to inform you...\r\n\r\n\
--B1\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.remote.test\r\nX-Postfix-Queue-ID: 4ABC\r\nArrival-Date: Sun, 29 Nov 2026 05:00:00 +0000\r\n\r\n\
Final-Recipient: rfc822; gone@remote.test\r\nOriginal-Recipient: rfc822;gone@remote.test\r\nAction: failed\r\n\
Status: 5.1.1\r\nRemote-MTA: dns; inner.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@remote.test>:\r\n\
\tRecipient address rejected: User unknown\r\n\r\n\
Final-Recipient: rfc822; later@remote.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n\
--B1\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n\
Final-Recipient: rfc822; not-a-field@remote.test\r\n\r\n--B1--\r\n";

    #[test]
    fn reads_a_postfix_report() {
        let r = parse_report(POSTFIX.as_bytes()).unwrap();
        assert_eq!(r.reporting_mta.as_deref(), Some("mx.remote.test"));
        assert_eq!(r.recipients.len(), 2, "{r:?}");
        let gone = &r.recipients[0];
        assert_eq!(gone.final_recipient, "gone@remote.test");
        assert_eq!(gone.original_recipient.as_deref(), Some("gone@remote.test"));
        assert!(gone.failed());
        assert_eq!(gone.status, "5.1.1");
        assert_eq!(gone.remote_mta.as_deref(), Some("inner.remote.test"));
        assert_eq!(gone.reply(), "550 5.1.1 <gone@remote.test>: Recipient address rejected: User unknown");
        assert!(!r.recipients[1].failed());
        assert_eq!(r.recipients[1].reply(), "4.4.1");
    }

    #[test]
    fn no_report_no_answer_and_any_input_is_safe() {
        assert_eq!(parse_report(b"Subject: out of office\r\n\r\nI am away.\r\n"), None);
        let encoded = POSTFIX.replace(
            "Content-Type: message/delivery-status\r\n",
            "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n",
        );
        assert_eq!(parse_report(encoded.as_bytes()), None);
        // Garbage, truncation at every byte, a flood of recipients: bounded and no panic.
        for cut in 0..POSTFIX.len() {
            let _ = parse_report(&POSTFIX.as_bytes()[..cut]);
        }
        let mut flood = String::from("Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n");
        for i in 0..5000 {
            flood += &format!("\r\nFinal-Recipient: rfc822; r{i}@x\r\nAction: failed\r\nStatus: 5.0.0\r\n");
        }
        let r = parse_report(flood.as_bytes()).unwrap();
        assert!(r.recipients.len() <= MAX_RCPTS, "{}", r.recipients.len());
        let _ = parse_report(&[0xff, b'\n', b':', b'\r', 0, b'\n'][..]);
    }
}
