//! dns-probe (test plugin): at on-rcpt looks up the TXT records of a configured name, to
//! test that `dns` is denied by default and works when granted. At on-route it looks up
//! `<recipient's local part>.<name>`, so a test can see routings wait on DNS side by side.
//!
//! Denied: `550 5.7.1 dns-denied ...`. Other DNS error: `451 4.4.3 dns-error: ...`.
//! Answer: logs the records at info level and says `next`.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct DnsProbe {
    /// The name whose TXT records are looked up.
    name: String,
}

impl Filter for DnsProbe {
    fn init(&mut self) -> Result<(), String> {
        self.name = config::get_or("name", "mailgate-probe.example");
        Ok(())
    }

    fn on_rcpt(&mut self, _conn: &ConnectionInfo, _env: &Envelope, _rcpt: &str) -> Verdict {
        match dns::txt(&self.name) {
            Ok(records) => {
                log::info!("dns-probe: TXT {} = {:?}", self.name, records);
                Verdict::Next
            }
            Err(dns::DnsError::Denied) => {
                Verdict::reject(550, "5.7.1", "dns-denied: this plugin has no dns grant")
            }
            Err(e) => Verdict::tempfail(451, "4.4.3", format!("dns-error: {} {e:?}", self.name)),
        }
    }

    fn on_route(&mut self, _env: &Envelope, rcpt: &str) -> RouteResult {
        let local = rcpt.split('@').next().unwrap_or("x");
        // Whatever the answer, the configured route: this hook only waits on DNS.
        let _ = dns::txt(&format!("{local}.{}", self.name));
        RouteResult::next()
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(DnsProbe);
