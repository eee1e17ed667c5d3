//! memo (test plugin): remembers, in its own instance, every HELO name it was shown and the
//! spam points it added, and tells at MAIL FROM what it remembers. A session that keeps its
//! plugin instances across STARTTLS would carry plaintext-era state into the TLS session
//! (RFC 3207 §4.2 says to forget it): this plugin makes that visible. It also counts every
//! HELO name in a metric labelled by the name, to show the host's cap on metric series.
//! With `reusable = true` it forgets its HELO names at the end of a session and offers its
//! instance for the next one, and tells how many sessions the instance served before: what
//! the host's reuse of instances does, and that nothing of one session reaches the next.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Memo {
    /// HELO names seen by this instance in this session, in order.
    helos: Vec<String>,
    /// Config `reusable`: whether `end_session` offers the instance for another session.
    reusable: bool,
    /// Sessions this instance served before this one (never reset).
    earlier: u32,
    /// Config `grow`: octets the instance allocates (and keeps) at each HELO, to make its
    /// memory large.
    grow: usize,
    ballast: Vec<Vec<u8>>,
}

impl Filter for Memo {
    fn init(&mut self) -> Result<(), String> {
        self.reusable = config::parse("reusable")?.unwrap_or(false);
        self.grow = config::parse("grow")?.unwrap_or(0);
        Ok(())
    }

    fn end_session(&mut self) -> bool {
        self.helos.clear();
        self.earlier += 1;
        self.reusable
    }

    fn on_helo(&mut self, _: &ConnectionInfo, helo: &str) -> Verdict {
        self.helos.push(helo.to_string());
        if self.grow > 0 {
            self.ballast.push(vec![1; self.grow]);
        }
        // One metric series per HELO name: a plugin that labels by client input (a bad idea,
        // shown here on purpose) must not grow the gateway's memory without bound.
        metrics::counter("memo_helo", 1, &[("helo", helo)]);
        // Session-wide points (HELO stage): they belong to the session, not the transaction.
        score::add(1.0, "MEMO_HELO");
        Verdict::Next
    }

    fn on_mail_from(&mut self, conn: &ConnectionInfo, _: &Envelope) -> Verdict {
        let tls = if conn.tls.is_some() { "tls" } else { "plain" };
        // And the connection facts as the host gives them now (this session's, never the
        // last one's: a reused instance keeps the facts it fetched).
        let text = format!(
            "memo: {tls}, helos [{}], score {}, earlier sessions {}, conn helo {}, session {}",
            self.helos.join(" "),
            score::total(),
            self.earlier,
            conn.helo.as_deref().unwrap_or("-"),
            conn.session_id
        );
        // A 4xx the test reads; it changes nothing else.
        Verdict::tempfail(451, "4.7.1", text)
    }
}

export!(Memo);
