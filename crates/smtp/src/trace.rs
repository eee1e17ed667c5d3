//! Trace and date fields (RFC 5321 §4.4, RFC 5322 §3.3) the gateway writes into messages.

/// Formats Unix seconds as an RFC 5322 date in UTC: `Sun, 22 Nov 2026 04:05:16 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the `Received:` field says about one hop.
pub struct Received<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// The client's IP address.
    pub client_ip: std::net::IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8SMTP`… (RFC 3848, RFC 6531).
    pub with: &'a str,
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
        let ip = match self.client_ip {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        let helo: String = self.helo.chars().filter(|c| !c.is_control() && *c != '(' && *c != ')').take(255).collect();
        let mut h = format!("Received: from {helo} ({ip})\r\n\tby {} with {}", self.by, self.with);
        if let Some(t) = self.tls {
            h.push_str(&format!(" ({t})"));
        }
        h.push_str(&format!(" id {}", self.queue_id));
        if let Some(r) = self.for_rcpt {
            h.push_str(&format!("\r\n\tfor <{r}>"));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.unix_time)));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_320_316), "Sun, 22 Nov 2026 04:05:16 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn received_header() {
        let h = Received {
            helo: "client.example",
            client_ip: "192.0.2.1".parse().unwrap(),
            by: "mx.example",
            with: "ESMTP",
            tls: None,
            queue_id: "ABC",
            for_rcpt: Some("u@example.test"),
            unix_time: 0,
        }
        .to_header();
        assert_eq!(h, "Received: from client.example ([192.0.2.1])\r\n\tby mx.example with ESMTP id ABC\r\n\tfor <u@example.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n");
    }
}
