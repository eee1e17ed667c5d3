//! dnsbl: looks the client IP up in DNS blocklists (IPv4 reversed octets, IPv6 reversed
//! nibbles), adds up the weights of the lists that answer, and refuses the client at the
//! configured stage when the sum reaches the threshold. A list that times out or fails never
//! blocks mail.

use std::net::IpAddr;

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Dnsbl {
    /// (zone, weight) from `zones = ["zen.example=1.0", …]` (weight 1 when left out).
    zones: Vec<(String, f64)>,
    threshold: f64,
    /// `connect` or `rcpt`: where the verdict is given; `score`: never refuse, add each
    /// listing's weight to the transaction's shared spam score at connect.
    stage: String,
    /// Result for this session (the client does not change): None = not looked up yet.
    hits: Option<Vec<String>>,
}

/// The DNSBL query name of an address, without the zone.
fn reversed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().rev().map(u8::to_string).collect::<Vec<_>>().join("."),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0xf, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

impl Dnsbl {
    /// The lists that name the client (looked up once per session).
    fn lookup(&mut self, conn: &ConnectionInfo) -> &[String] {
        if self.hits.is_none() {
            let Ok(ip) = conn.client_ip.parse::<IpAddr>() else { return &[] };
            let name = reversed(&ip);
            let mut hits = vec![];
            for (zone, weight) in &self.zones {
                match dns::a(&format!("{name}.{zone}")) {
                    // RFC 5782: listed entries answer 127.0.0.0/8.
                    Ok(addrs) if addrs.iter().any(|a| a.starts_with("127.")) => {
                        hits.push(format!("{zone}={weight}"))
                    }
                    Ok(_) | Err(dns::DnsError::Nxdomain) => {}
                    Err(e) => log::warn!("dnsbl: {zone} did not answer ({e:?}); not blocking"),
                }
            }
            self.hits = Some(hits);
        }
        self.hits.as_deref().unwrap_or_default()
    }

    fn verdict(&mut self, conn: &ConnectionInfo) -> Verdict {
        let threshold = self.threshold;
        let hits = self.lookup(conn);
        let score: f64 =
            hits.iter().filter_map(|h| h.rsplit_once('=')?.1.parse::<f64>().ok()).sum();
        if !hits.is_empty() && score >= threshold {
            return Verdict::reject(
                554,
                "5.7.1",
                format!("{} is listed ({})", conn.client_ip, hits.join(", ")),
            );
        }
        Verdict::Next
    }
}

impl Filter for Dnsbl {
    fn init(&mut self) -> Result<(), String> {
        for z in config::get_list("zones") {
            let (zone, weight) = z.split_once('=').map_or((z.as_str(), "1"), |(z, w)| (z, w));
            let weight: f64 = weight.parse().map_err(|_| format!("zones: bad weight in {z:?}"))?;
            self.zones.push((zone.trim_end_matches('.').to_string(), weight));
        }
        self.threshold = config::parse("threshold")?.unwrap_or(1.0);
        self.stage = config::get_or("stage", "rcpt");
        if !matches!(self.stage.as_str(), "connect" | "rcpt" | "score") {
            return Err("stage: connect, rcpt or score".into());
        }
        Ok(())
    }

    fn on_connect(&mut self, conn: &ConnectionInfo) -> Verdict {
        match self.stage.as_str() {
            "connect" => self.verdict(conn),
            "score" => {
                for hit in self.lookup(conn) {
                    let (zone, weight) = hit.rsplit_once('=').unwrap_or((hit, "1"));
                    let rule = format!("DNSBL_{}", zone.to_uppercase().replace(['.', '-'], "_"));
                    score::add(weight.parse().unwrap_or(1.0), &rule);
                }
                Verdict::Next
            }
            _ => Verdict::Next,
        }
    }

    fn on_rcpt(&mut self, conn: &ConnectionInfo, _env: &Envelope, _rcpt: &str) -> Verdict {
        if self.stage == "rcpt" && conn.authenticated_as.is_none() {
            self.verdict(conn)
        } else {
            Verdict::Next
        }
    }

    /// Forgets the session's listings; the rest is config: the instance may serve again.
    fn end_session(&mut self) -> bool {
        self.hits = None;
        true
    }
}

export!(Dnsbl);
