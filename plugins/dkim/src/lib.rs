//! dkim: requires a valid DKIM signature from the header From domain for the listed sender
//! domains (mail claiming to be from them without one is refused or quarantined), and marks
//! broken signatures in the shared spam score.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Dkim {
    /// Sender domains (header From, exact or a subdomain) that must be signed by themselves.
    require: Vec<String>,
    /// `reject` or `quarantine` for a listed domain without a valid signature.
    action: String,
    /// Points added for each signature that fails to verify.
    fail_points: f64,
}

fn within(domain: &str, parent: &str) -> bool {
    domain.eq_ignore_ascii_case(parent)
        || domain.to_ascii_lowercase().ends_with(&format!(".{}", parent.to_ascii_lowercase()))
}

impl Filter for Dkim {
    fn init(&mut self) -> Result<(), String> {
        self.require =
            config::get_list("require").into_iter().map(|d| d.to_ascii_lowercase()).collect();
        self.action = config::get_or("action", "reject");
        if !matches!(self.action.as_str(), "reject" | "quarantine") {
            return Err("action: reject or quarantine".into());
        }
        self.fail_points = config::parse("fail_points")?.unwrap_or(1.0);
        Ok(())
    }

    fn on_data(&mut self, _conn: &ConnectionInfo, _env: &Envelope, msg: &Message) -> DataResult {
        let results = auth::dkim();
        for r in results.iter().filter(|r| r.status == AuthStatus::Fail) {
            score::add(self.fail_points, &format!("DKIM_FAIL_{}", r.domain.to_uppercase()));
        }
        let Some(from) = msg.from() else { return DataResult::next() };
        let Some(from_domain) = domain_of(&from) else { return DataResult::next() };
        let Some(listed) = self.require.iter().find(|d| within(&from_domain, d)) else {
            return DataResult::next();
        };
        // Relaxed alignment: the signing domain is the From domain or one of its parents.
        let signed =
            results.iter().any(|r| r.status == AuthStatus::Pass && within(&from_domain, &r.domain));
        if signed {
            return DataResult::next();
        }
        let why = format!("no valid DKIM signature for {from_domain} (required for {listed})");
        DataResult::verdict(match self.action.as_str() {
            "quarantine" => Verdict::quarantine(why),
            _ => Verdict::reject(550, "5.7.20", why),
        })
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Dkim);
