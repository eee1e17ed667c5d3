//! greylist: the classic triplet (client network, sender, recipient). The first attempt gets
//! `451 4.7.1`; a retry after `delay` seconds passes, and the triplet is then known for
//! `expiry` seconds. Time comes from the host kv's TTLs (plugins have no clock). Trusted and
//! authenticated clients and allow-listed senders are not greylisted.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Greylist {
    delay: u32,
    expiry: u32,
    /// Sender addresses or `@domain`s never greylisted.
    allow: Vec<String>,
}

/// /24 for IPv4, /64 for IPv6: retries from a pool of servers count as one client.
fn network(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.segments()[..4].iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":")
        }
        Err(_) => ip.to_string(),
    }
}

impl Filter for Greylist {
    fn init(&mut self) -> Result<(), String> {
        self.delay = config::parse("delay")?.unwrap_or(300);
        self.expiry = config::parse("expiry")?.unwrap_or(36 * 86400);
        self.allow =
            config::get_list("allow").into_iter().map(|a| a.to_ascii_lowercase()).collect();
        Ok(())
    }

    fn on_rcpt(&mut self, conn: &ConnectionInfo, env: &Envelope, rcpt: &str) -> Verdict {
        let sender = env.mail_from.to_ascii_lowercase();
        let allowed = self
            .allow
            .iter()
            .any(|a| *a == sender || (a.starts_with('@') && sender.ends_with(a.as_str())));
        if conn.trusted || conn.authenticated_as.is_some() || allowed {
            return Verdict::Next;
        }
        let triplet =
            format!("{}|{}|{}", network(&conn.client_ip), sender, rcpt.to_ascii_lowercase());
        let (seen, wait) = (format!("seen|{triplet}"), format!("wait|{triplet}"));
        let exists = |k: &str| kv::get(k).map(|v| v.is_some());
        match (exists(&seen), exists(&wait)) {
            (Ok(true), Ok(false)) => {
                // Waited long enough: known from now on.
                let _ = kv::set(&seen, b"ok", Some(self.expiry));
                Verdict::Next
            }
            (Ok(true), Ok(true)) => {
                Verdict::tempfail(451, "4.7.1", "Greylisted, please try again later")
            }
            (Ok(false), _) => {
                let _ = kv::set(&seen, b"new", Some(self.expiry));
                let _ = kv::set(&wait, b"1", Some(self.delay));
                Verdict::tempfail(451, "4.7.1", "Greylisted, please try again later")
            }
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("greylist: kv unavailable ({e:?}); not greylisting");
                Verdict::Next
            }
        }
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Greylist);
