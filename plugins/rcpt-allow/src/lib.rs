//! rcpt-allow: accepts only recipients whose address or domain is listed in the config;
//! every other recipient gets `550 5.1.1`.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct RcptAllow {
    /// Allowed recipient domains, lower case, without trailing dot.
    domains: Vec<String>,
    /// Allowed full recipient addresses, lower case.
    addresses: Vec<String>,
    /// Answer `accept` (stop the rcpt chain) for a listed recipient instead of `next`.
    accept_listed: bool,
    /// Also restrict trusted clients (by default they may relay anywhere).
    check_trusted: bool,
}

impl Filter for RcptAllow {
    fn init(&mut self) -> Result<(), String> {
        let lower = |items: Vec<String>| -> Vec<String> {
            items.iter().map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase()).collect()
        };
        self.domains = lower(config::get_list("domains"));
        self.addresses = lower(config::get_list("addresses"));
        self.accept_listed = config::parse("accept_listed")?.unwrap_or(false);
        self.check_trusted = config::parse("check_trusted")?.unwrap_or(false);
        if self.domains.is_empty() && self.addresses.is_empty() {
            log::warn!("rcpt-allow: no domains or addresses configured, every recipient fails");
        }
        Ok(())
    }

    fn on_rcpt(&mut self, conn: &ConnectionInfo, _env: &Envelope, rcpt: &str) -> Verdict {
        if conn.trusted && !self.check_trusted {
            return Verdict::Next;
        }
        let listed = self.addresses.contains(&rcpt.to_ascii_lowercase())
            || domain_of(rcpt).is_some_and(|d| self.domains.contains(&d));
        match (listed, self.accept_listed) {
            (true, true) => Verdict::Accept,
            (true, false) => Verdict::Next,
            (false, _) => {
                Verdict::reject(550, "5.1.1", format!("<{rcpt}>: recipient not accepted here"))
            }
        }
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(RcptAllow);
