//! verdict (test plugin): returns one configured verdict at one configured stage and
//! `next` everywhere else, for end-to-end tests of every verdict at every stage.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct FixedVerdict {
    /// Stage that answers: connect, helo, auth, mail-from, rcpt, data or route.
    stage: String,
    /// The answer at that stage.
    verdict: Verdict,
    /// At rcpt and route: answer only for this recipient (case-insensitive); others get next.
    rcpt: Option<String>,
}

fn parse_verdict(name: &str, stage: &str) -> Result<Verdict, String> {
    let code: Option<u16> = config::parse("code")?;
    let text = config::get_or("text", &format!("verdict plugin: {name} at {stage}"));
    let reply = |code_default: u16, enhanced_default: &str| {
        let code = code.unwrap_or(code_default);
        Reply::new(code, config::get_or("enhanced", enhanced_default), text.clone())
    };
    Ok(match name {
        "next" => Verdict::Next,
        "accept" => Verdict::Accept,
        "reject" => Verdict::Reject(reply(550, "5.7.1")),
        "tempfail" => Verdict::Tempfail(reply(451, "4.7.1")),
        "disconnect" => Verdict::Disconnect(reply(421, "4.7.0")),
        "quarantine" => Verdict::quarantine(text.clone()),
        "discard" => Verdict::Discard,
        other => return Err(format!("verdict: unknown verdict {other:?}")),
    })
}

impl FixedVerdict {
    fn at(&self, stage: &str, rcpt: Option<&str>) -> Verdict {
        let other_rcpt = match (&self.rcpt, rcpt) {
            (Some(want), Some(got)) => !want.eq_ignore_ascii_case(got),
            _ => false,
        };
        if stage != self.stage || other_rcpt {
            return Verdict::Next;
        }
        self.verdict.clone()
    }
}

impl Filter for FixedVerdict {
    fn init(&mut self) -> Result<(), String> {
        self.stage = config::get_or("stage", "rcpt");
        self.verdict = parse_verdict(&config::get_or("verdict", "reject"), &self.stage)?;
        self.rcpt = config::get("rcpt");
        Ok(())
    }
    fn on_connect(&mut self, _: &ConnectionInfo) -> Verdict {
        self.at("connect", None)
    }
    fn on_helo(&mut self, _: &ConnectionInfo, _: &str) -> Verdict {
        self.at("helo", None)
    }
    fn on_auth(&mut self, _: &ConnectionInfo, _: &AuthRequest) -> Verdict {
        self.at("auth", None)
    }
    fn on_mail_from(&mut self, _: &ConnectionInfo, _: &Envelope) -> Verdict {
        self.at("mail-from", None)
    }
    fn on_rcpt(&mut self, _: &ConnectionInfo, _: &Envelope, rcpt: &str) -> Verdict {
        self.at("rcpt", Some(rcpt))
    }
    fn on_data(&mut self, _: &ConnectionInfo, _: &Envelope, _: &Message) -> DataResult {
        DataResult::verdict(self.at("data", None))
    }
    fn on_route(&mut self, _: &Envelope, rcpt: &str) -> RouteResult {
        RouteResult::verdict(self.at("route", Some(rcpt)))
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(FixedVerdict);
