//! ratelimit: counts messages per client IP, per authenticated user or per sender domain over
//! a window (host kv `incr` with a TTL) and answers `450 4.7.1` past the limit — or `421` and
//! a disconnect when `disconnect = true`.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Ratelimit {
    /// `ip`, `user` or `sender_domain`.
    by: String,
    limit: i64,
    window: u32,
    disconnect: bool,
}

impl Filter for Ratelimit {
    fn init(&mut self) -> Result<(), String> {
        self.by = config::get_or("by", "ip");
        if !matches!(self.by.as_str(), "ip" | "user" | "sender_domain") {
            return Err("by: ip, user or sender_domain".into());
        }
        self.limit = config::parse("limit")?.unwrap_or(100);
        self.window = config::parse("window")?.unwrap_or(3600);
        self.disconnect = config::parse("disconnect")?.unwrap_or(false);
        Ok(())
    }

    fn on_mail_from(&mut self, conn: &ConnectionInfo, env: &Envelope) -> Verdict {
        let key = match self.by.as_str() {
            "ip" => conn.client_ip.clone(),
            "user" => match &conn.authenticated_as {
                Some(u) => u.clone(),
                None => return Verdict::Next,
            },
            _ => domain_of(&env.mail_from).unwrap_or_default(),
        };
        match kv::incr(&format!("{}|{key}", self.by), 1, Some(self.window)) {
            Ok(n) if n > self.limit => {
                log::info!("ratelimit: {} {key} over {} per {}s", self.by, self.limit, self.window);
                if self.disconnect {
                    Verdict::disconnect(421, "4.7.0", "Rate limit exceeded, closing connection")
                } else {
                    Verdict::tempfail(450, "4.7.1", "Rate limit exceeded, try again later")
                }
            }
            Ok(_) => Verdict::Next,
            Err(e) => {
                log::warn!("ratelimit: kv unavailable ({e:?}); not limiting");
                Verdict::Next
            }
        }
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(Ratelimit);
