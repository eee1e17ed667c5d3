//! dmarc: honours the DMARC policy (RFC 7489) that the header From domain publishes when the
//! message fails DMARC: `p=reject` → 550 5.7.1, `p=quarantine` → quarantine, `p=none` → only
//! marked. A local override list turns enforcement off per domain, and a chain that the `arc`
//! plugin trusted (rule ARC_TRUSTED in the shared score) is let through.

use mailgate_plugin_sdk::DmarcPolicy;
use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Dmarc {
    /// Domains whose policy is not enforced here (e.g. a partner with broken forwarding).
    overrides: Vec<String>,
    /// Points added to the shared score for any DMARC failure.
    fail_points: f64,
}

impl Filter for Dmarc {
    fn init(&mut self) -> Result<(), String> {
        self.overrides =
            config::get_list("override").into_iter().map(|d| d.to_ascii_lowercase()).collect();
        self.fail_points = config::parse("fail_points")?.unwrap_or(3.0);
        Ok(())
    }

    fn on_data(&mut self, conn: &ConnectionInfo, _env: &Envelope, _msg: &Message) -> DataResult {
        if conn.authenticated_as.is_some() {
            return DataResult::next();
        }
        let Some(d) = auth::dmarc() else { return DataResult::next() };
        if d.status != AuthStatus::Fail {
            return DataResult::next();
        }
        score::add(self.fail_points, "DMARC_FAIL");
        let domain = d.domain.to_ascii_lowercase();
        if self.overrides.contains(&domain) {
            log::info!("DMARC fail for {domain}: policy not enforced (local override)");
            return DataResult::next();
        }
        if score::rules().iter().any(|(r, _)| r == "ARC_TRUSTED") {
            log::info!("DMARC fail for {domain}: let through, sealed by a trusted ARC forwarder");
            return DataResult::next();
        }
        DataResult::verdict(match d.policy {
            DmarcPolicy::Reject => {
                Verdict::reject(550, "5.7.1", format!("Rejected by the DMARC policy of {domain}"))
            }
            DmarcPolicy::Quarantine => {
                Verdict::quarantine(format!("DMARC policy of {domain}: quarantine"))
            }
            DmarcPolicy::None => Verdict::Next,
        })
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Dmarc);
