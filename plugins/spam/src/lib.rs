//! spam: scores a message with the naive-Bayes model that `mailgate spam train` built (granted
//! as data table `model`) plus a few rules on URLs and the authentication results, adds its
//! points to the transaction's shared score, writes X-Spam-Score/X-Spam-Status with the total
//! of every plugin, and quarantines or rejects by the configured thresholds.

use mailgate_plugin_sdk::prelude::*;
use mailgate_spam::{Counts, HEADERS, Input, KEY_NHAM, KEY_NSPAM, Model, tenths};

#[derive(Default)]
struct Spam {
    /// Total score at which the message is quarantined.
    quarantine_at: f64,
    /// Total score at which it is refused (550 5.7.1).
    reject_at: f64,
    /// Multiplies the Bayes points.
    bayes_weight: f64,
}

/// (lowest probability, rule, points) buckets of the Bayes verdict, highest first.
const BAYES: &[(f64, &str, f64)] = &[
    (0.99, "BAYES_99", 5.0),
    (0.95, "BAYES_95", 3.5),
    (0.80, "BAYES_80", 2.0),
    (0.60, "BAYES_60", 1.0),
    (0.20, "BAYES_50", 0.0),
    (0.05, "BAYES_20", -0.5),
    (0.01, "BAYES_05", -1.0),
    (0.00, "BAYES_00", -2.0),
];

impl Spam {
    fn bayes(&self, msg: &Message) -> Result<(f64, Vec<String>), String> {
        let values: Vec<(&str, String)> =
            HEADERS.iter().filter_map(|h| Some((*h, msg.header(h)?))).collect();
        let (subject, text, html) = (msg.subject(), msg.text_body(), msg.html_body());
        let input = Input {
            subject: subject.as_deref(),
            headers: values.iter().map(|(n, v)| (*n, v.as_str())).collect(),
            text: text.as_deref(),
            html: html.as_deref(),
        };
        let mut keys = mailgate_spam::tokens(&input);
        keys.extend([KEY_NSPAM.to_string(), KEY_NHAM.to_string()]);
        let found = data::lookup("model", &keys).map_err(|e| format!("model: {e:?}"))?;
        let n = |i: usize| found[i].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        let model = Model { nspam: n(keys.len() - 2), nham: n(keys.len() - 1) };
        let counts = found[..keys.len() - 2].iter().map(|v| v.as_deref().and_then(Counts::parse));
        let p = mailgate_spam::classify(model, counts).probability;
        keys.truncate(keys.len() - 2);
        Ok((p, keys))
    }
}

impl Filter for Spam {
    fn init(&mut self) -> Result<(), String> {
        self.quarantine_at = config::parse("quarantine_at")?.unwrap_or(3.5);
        self.reject_at = config::parse("reject_at")?.unwrap_or(12.0);
        self.bayes_weight = config::parse("bayes_weight")?.unwrap_or(1.0);
        Ok(())
    }

    fn on_data(&mut self, _c: &ConnectionInfo, _e: &Envelope, msg: &Message) -> DataResult {
        match self.bayes(msg) {
            Ok((p, tokens)) => {
                let (_, rule, points) =
                    BAYES.iter().find(|(min, ..)| p >= *min).copied().unwrap_or(BAYES[7]);
                score::add(points * self.bayes_weight, rule);
                if tokens.iter().any(|t| t == "url:ip-literal") {
                    score::add(1.0, "URL_IP_LITERAL");
                }
            }
            Err(e) => log::warn!("no Bayes score: {e}"),
        }
        // Rules an spf or dmarc plugin already scored are not counted twice.
        let scored = score::rules();
        let has = |prefix: &str| scored.iter().any(|(r, _)| r.starts_with(prefix));
        match auth::spf().map(|s| s.status).filter(|_| !has("SPF_")) {
            Some(AuthStatus::Fail) => score::add(2.0, "SPF_FAIL"),
            Some(AuthStatus::Softfail) => score::add(1.0, "SPF_SOFTFAIL"),
            _ => {}
        }
        match auth::dmarc().map(|d| d.status).filter(|_| !has("DMARC_")) {
            Some(AuthStatus::Fail) => score::add(3.0, "DMARC_FAIL"),
            Some(AuthStatus::Pass) => score::add(-1.0, "DMARC_PASS"),
            _ => {}
        }
        let total = score::total();
        let tests: Vec<String> =
            score::rules().iter().take(50).map(|(r, p)| format!("{r}={}", tenths(*p))).collect();
        let spam = total >= self.quarantine_at;
        let shown = tenths(total);
        let status = format!(
            "{}, score={shown} required={} tests={}",
            if spam { "Yes" } else { "No" },
            tenths(self.quarantine_at),
            tests.join(", ")
        );
        let verdict = if total >= self.reject_at {
            Verdict::reject(550, "5.7.1", format!("Message refused as spam (score {shown})"))
        } else if spam {
            Verdict::Quarantine(format!("spam score {shown} ({})", tests.join(",")))
        } else {
            Verdict::Next
        };
        // A sender's own X-Spam-* fields must not pass for ours.
        DataResult { verdict, modifications: vec![] }
            .with(Modification::RemoveHeader("X-Spam-Score".into()))
            .with(Modification::RemoveHeader("X-Spam-Status".into()))
            .with(Modification::add_header("X-Spam-Score", shown))
            .with(Modification::add_header("X-Spam-Status", status))
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Spam);
