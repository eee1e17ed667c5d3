//! spf: acts on the host's SPF result for MAIL FROM (RFC 7208) at MAIL or RCPT: each result
//! (fail, softfail, neutral, none, temperror, permerror) maps to an action — reject, tempfail,
//! mark (add points to the shared spam score) or accept. Authenticated and trusted clients are
//! not checked.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Spf {
    /// `mail_from` or `rcpt`: where the verdict is given.
    stage: String,
    /// (result word, action) pairs from config, e.g. ("fail", "reject").
    actions: Vec<(&'static str, String)>,
    /// Points that `mark` adds.
    points: f64,
    /// Decided once per transaction (RCPT asks once per recipient).
    decided: Option<Verdict>,
}

const RESULTS: [(&str, &str); 6] = [
    ("fail", "reject"),
    ("softfail", "mark"),
    ("neutral", "accept"),
    ("none", "accept"),
    ("temperror", "tempfail"),
    ("permerror", "mark"),
];

fn word(s: AuthStatus) -> &'static str {
    match s {
        AuthStatus::Pass => "pass",
        AuthStatus::Fail => "fail",
        AuthStatus::Softfail => "softfail",
        AuthStatus::Neutral => "neutral",
        AuthStatus::None => "none",
        AuthStatus::Temperror => "temperror",
        AuthStatus::Permerror => "permerror",
    }
}

impl Spf {
    fn decide(&mut self, conn: &ConnectionInfo) -> Verdict {
        if conn.authenticated_as.is_some() || conn.trusted {
            return Verdict::Next;
        }
        let Some(r) = auth::spf() else { return Verdict::Next };
        let w = word(r.status);
        let action =
            self.actions.iter().find(|(k, _)| *k == w).map_or("accept", |(_, a)| a.as_str());
        let d = &r.domain;
        match action {
            "reject" => {
                // The domain's own explanation (exp=) when it gave one (RFC 7208 §8.4).
                let why = r.explanation.unwrap_or_else(|| "this host may not send its mail".into());
                Verdict::reject(550, "5.7.23", format!("SPF {w} for {d}: {why}"))
            }
            "tempfail" => {
                Verdict::tempfail(451, "4.4.3", format!("SPF {w} for {d}: try again later"))
            }
            "mark" => {
                score::add(self.points, &format!("SPF_{}", w.to_uppercase()));
                Verdict::Next
            }
            _ => Verdict::Next,
        }
    }
}

impl Filter for Spf {
    fn init(&mut self) -> Result<(), String> {
        self.stage = config::get_or("stage", "rcpt");
        if !matches!(self.stage.as_str(), "mail_from" | "rcpt") {
            return Err("stage: mail_from or rcpt".into());
        }
        for (result, default) in RESULTS {
            let a = config::get_or(result, default);
            if !matches!(a.as_str(), "reject" | "tempfail" | "mark" | "accept") {
                return Err(format!("{result}: reject, tempfail, mark or accept (got {a:?})"));
            }
            self.actions.push((result, a));
        }
        self.points = config::parse("points")?.unwrap_or(2.0);
        Ok(())
    }

    fn on_mail_from(&mut self, conn: &ConnectionInfo, _env: &Envelope) -> Verdict {
        self.decided = None;
        if self.stage == "mail_from" { self.decide(conn) } else { Verdict::Next }
    }

    fn on_rcpt(&mut self, conn: &ConnectionInfo, _env: &Envelope, _rcpt: &str) -> Verdict {
        if self.stage != "rcpt" {
            return Verdict::Next;
        }
        if self.decided.is_none() {
            self.decided = Some(self.decide(conn));
        }
        self.decided.clone().unwrap_or(Verdict::Next)
    }

    /// Forgets the transaction's verdict; the rest is config: the instance may serve again.
    fn end_session(&mut self) -> bool {
        self.decided = None;
        true
    }
}

export!(Spf);
