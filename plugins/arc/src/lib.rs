//! arc: trusts an ARC chain (RFC 8617) that validates and was sealed last by a listed
//! forwarder (a mailing list, a forwarding service): it adds the rule ARC_TRUSTED with
//! negative points to the shared score, which the `dmarc` plugin honours by not enforcing a
//! DMARC failure that forwarding caused. A failing chain is marked. Put it before `dmarc`.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Arc {
    /// Sealer domains (the newest ARC-Seal's d=) whose chains are trusted.
    trusted: Vec<String>,
    /// Points for a trusted chain (negative: less spammy).
    trusted_points: f64,
    /// Points for a chain that fails validation.
    fail_points: f64,
}

impl Filter for Arc {
    fn init(&mut self) -> Result<(), String> {
        self.trusted =
            config::get_list("trusted").into_iter().map(|d| d.to_ascii_lowercase()).collect();
        self.trusted_points = config::parse("trusted_points")?.unwrap_or(-1.0);
        self.fail_points = config::parse("fail_points")?.unwrap_or(1.0);
        Ok(())
    }

    fn on_data(&mut self, _conn: &ConnectionInfo, _env: &Envelope, _msg: &Message) -> DataResult {
        let Some(a) = auth::arc() else { return DataResult::next() };
        match a.status {
            AuthStatus::Pass => {
                let sealer = a.sealer.unwrap_or_default().to_ascii_lowercase();
                if self.trusted.contains(&sealer) {
                    log::info!("ARC chain of {} sets sealed by trusted {sealer}", a.instances);
                    score::add(self.trusted_points, "ARC_TRUSTED");
                }
            }
            AuthStatus::Fail => score::add(self.fail_points, "ARC_FAIL"),
            _ => {}
        }
        DataResult::next()
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Arc);
