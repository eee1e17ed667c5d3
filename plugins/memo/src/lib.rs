//! memo (test plugin): remembers, in its own instance, every HELO name it was shown and the
//! spam points it added, and tells at MAIL FROM what it remembers. A session that keeps its
//! plugin instances across STARTTLS would carry plaintext-era state into the TLS session
//! (RFC 3207 §4.2 says to forget it): this plugin makes that visible. It also counts every
//! HELO name in a metric labelled by the name, to show the host's cap on metric series.
//! With `reusable = true` it forgets its HELO names at the end of a session and offers its
//! instance for the next one, and tells how many sessions the instance served before: what
//! the host's reuse of instances does, and that nothing of one session reaches the next.
//! With `stateless = true` it tells the host at `init` that it keeps no session state (which
//! is not true of it): the host then hands its instance on without calling `end_session`, and
//! the next session finds the last one's HELO names — what the host skips, made visible.
//! With `lend = true` it tells the host at `init` that it keeps nothing between calls (not
//! true either): the host then lends its instance to any session for one call at a time, and
//! sessions open at once find each other's HELO names — which instance served which call,
//! made visible, beside the host's own state of each call (score, facts), which stays the
//! calling session's.
//! With `show_envelope = true` it tells the envelope as it reads it: at RCPT for a recipient
//! `show@…` (refused with 451, the envelope in the text), at DATA in a header field
//! `X-Memo-Envelope`, and at routing for a recipient `route-show@…` (failed with 550, the
//! envelope in the text) — what the SDK's envelope, fetched on first read and kept across the
//! hooks of a transaction, gives a plugin.

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
    /// Config `show_envelope`: report the envelope at RCPT `show@…` and at DATA.
    show_envelope: bool,
}

/// The envelope as one short line (a reply's text is cut at 400 characters): "from SENDER,
/// N recipients (as counted by the reference), first F, last L, fnv H", where H is the
/// FNV-1a 64 hash of the recipients, each followed by a line feed.
fn describe(env: &Envelope) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in env.rcpt_to.iter().flat_map(|r| r.bytes().chain([b'\n'])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let (first, last) = (env.rcpt_to.first(), env.rcpt_to.last());
    format!(
        "from {}, {} recipients ({}), first {}, last {}, fnv {h:016x}",
        env.mail_from,
        env.rcpt_to.len(),
        env.recipient_count(),
        first.map_or("-", |r| r.as_str()),
        last.map_or("-", |r| r.as_str()),
    )
}

impl Filter for Memo {
    fn init(&mut self) -> Result<(), String> {
        self.reusable = config::parse("reusable")?.unwrap_or(false);
        self.grow = config::parse("grow")?.unwrap_or(0);
        self.show_envelope = config::parse("show_envelope")?.unwrap_or(false);
        if config::parse("stateless")?.unwrap_or(false) {
            keeps_no_session_state();
        }
        if config::parse("lend")?.unwrap_or(false) {
            keeps_no_state();
        }
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
            "memo: {tls}, helos [{}], score {}, earlier sessions {}, conn helo {}, user {}, session {}",
            self.helos.join(" "),
            score::total(),
            self.earlier,
            conn.helo.as_deref().unwrap_or("-"),
            conn.authenticated_as.as_deref().unwrap_or("-"),
            conn.session_id
        );
        // A 4xx the test reads; it changes nothing else.
        Verdict::tempfail(451, "4.7.1", text)
    }

    fn on_rcpt(&mut self, _: &ConnectionInfo, env: &Envelope, rcpt: &str) -> Verdict {
        if self.show_envelope && rcpt.starts_with("show@") {
            return Verdict::tempfail(451, "4.7.1", format!("memo: {}", describe(env)));
        }
        Verdict::Next
    }

    fn on_route(&mut self, env: &Envelope, rcpt: &str) -> RouteResult {
        if self.show_envelope && rcpt.starts_with("route-show@") {
            return RouteResult::verdict(Verdict::reject(
                550,
                "5.7.1",
                format!("memo: {}", describe(env)),
            ));
        }
        RouteResult::next()
    }

    fn on_data(&mut self, _: &ConnectionInfo, env: &Envelope, _: &Message) -> DataResult {
        if !self.show_envelope {
            return DataResult::next();
        }
        DataResult::next().with(Modification::add_header("X-Memo-Envelope", describe(env)))
    }
}

export!(Memo);
