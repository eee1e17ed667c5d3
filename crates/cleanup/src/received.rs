//! The `Received:` trace field (RFC 5321 §4.4) the cleanup stage puts on every message.

use mailgate_message::date::rfc5322_date;

/// What the `Received:` field says about one hop.
pub struct Received<'a> {
    /// The name the client gave in HELO/EHLO and its IP address; `None` for a message the
    /// gateway wrote itself (a DSN), which has no client.
    pub from: Option<(&'a str, std::net::IpAddr)>,
    /// Our host name.
    pub by: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8SMTP`… (RFC 3848, RFC 6531); none for local messages.
    pub with: Option<&'a str>,
    /// Extra clause, e.g. the TLS version and cipher, in parentheses after `with`.
    pub tls: Option<&'a str>,
    pub queue_id: &'a str,
    /// The recipient, named only when there is exactly one (privacy, RFC 5321 §7.6).
    pub for_rcpt: Option<&'a str>,
    pub unix_time: u64,
}

impl Received<'_> {
    /// The header field, folded, ending with CRLF.
    pub fn to_header(&self) -> String {
        // One buffer, written in place: this runs for every message.
        let mut h = String::with_capacity(160 + self.by.len() + self.queue_id.len());
        h.push_str("Received: ");
        if let Some((helo, ip)) = self.from {
            h.push_str("from ");
            h.extend(helo.chars().filter(|c| !c.is_control() && *c != '(' && *c != ')').take(255));
            h.push_str(if ip.is_ipv4() { " ([" } else { " ([IPv6:" });
            mailgate_smtp::push_ip(&mut h, ip);
            h.push_str("])\r\n\t");
        }
        h.push_str("by ");
        h.push_str(self.by);
        match self.with {
            Some(with) => {
                h.push_str(" with ");
                h.push_str(with);
            }
            None => h.push_str(" (mailgate)"),
        }
        if let Some(t) = self.tls {
            h.push_str(" (");
            h.push_str(t);
            h.push(')');
        }
        h.push_str(" id ");
        h.push_str(self.queue_id);
        if let Some(r) = self.for_rcpt {
            h.push_str("\r\n\tfor <");
            h.push_str(r);
            h.push('>');
        }
        h.push_str(";\r\n\t");
        h.push_str(&rfc5322_date(self.unix_time));
        h.push_str("\r\n");
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header() {
        let h = Received {
            from: Some(("client.example", "192.0.2.1".parse().unwrap())),
            by: "mx.example",
            with: Some("ESMTP"),
            tls: None,
            queue_id: "ABC",
            for_rcpt: Some("u@example.test"),
            unix_time: 0,
        }
        .to_header();
        assert_eq!(h, "Received: from client.example ([192.0.2.1])\r\n\tby mx.example with ESMTP id ABC\r\n\tfor <u@example.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n");
        let local = Received {
            from: None,
            by: "mx.example",
            with: None,
            tls: None,
            queue_id: "D",
            for_rcpt: None,
            unix_time: 0,
        };
        assert_eq!(
            local.to_header(),
            "Received: by mx.example (mailgate) id D;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
