//! RCPT TO (RFC 5321 §4.1.1.3): the relay decision, the recipient limit, and recipient
//! verification.

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Address, Enhanced, RcptParams, Reply};

use mailgate_verify::Verdict;

use super::{Next, Session, SessionIo};

impl<S: SessionIo> Session<S> {
    /// `to: None` is `<Postmaster>` without a domain: the configured postmaster address,
    /// accepted from anyone.
    pub(crate) async fn rcpt(&mut self, to: Option<Address>, params: RcptParams) -> Next {
        let max = self.config.limits.max_recipients;
        if !self.conn.esmtp && params != RcptParams::default() {
            return self.bad_command(Reply::new(555, Enhanced(5, 5, 4), "RCPT parameters need EHLO"));
        }
        let (to, postmaster) = match to {
            Some(a) => (a, false),
            None => match Address::parse_mailbox(&self.config.postmaster()) {
                Ok(a) => (a, true),
                Err(_) => {
                    tracing::error!(postmaster = %self.config.postmaster(), "server.postmaster is not an address");
                    self.reply(Reply::new(451, Enhanced(4, 3, 0), "Postmaster address misconfigured"));
                    return Next::Continue;
                }
            },
        };
        let Some(tx) = self.tx.as_mut() else {
            return self.bad_command(codes::bad_sequence("Need MAIL before RCPT"));
        };
        if tx.bdat.is_some() {
            return self.bad_command(codes::bad_sequence("RCPT not allowed during BDAT"));
        }
        if to.is_utf8() && !tx.params.smtputf8 {
            self.reply(Reply::new(553, Enhanced(5, 6, 7), "Non-ASCII recipient requires SMTPUTF8"));
            return Next::Continue;
        }
        // A bounce to a VERP return path of ours: taken from anyone, read at the end of data,
        // never queued. Such a transaction carries return paths only.
        if let Some(verp) = self.shared.verp.as_ref().filter(|v| v.is_ours(to.as_str())) {
            if verp.queue_id(to.as_str()).is_none() {
                tracing::info!(rcpt = %to, "no such return path");
                metrics::counter!("mailgate_recipients_total", "class" => "5xx").increment(1);
                self.reply(Reply::new(550, Enhanced(5, 1, 1), "No such return path"));
                return Next::Continue;
            }
            if !tx.rcpts.is_empty() && !tx.returns {
                self.reply(Reply::new(452, Enhanced(4, 5, 3), "Send bounces in a separate transaction"));
                return Next::Continue;
            }
            if !tx.rcpts.iter().any(|r| r.as_str().eq_ignore_ascii_case(to.as_str())) {
                if tx.rcpts.len() >= max {
                    self.reply(Reply::new(452, Enhanced(4, 5, 3), "Too many recipients"));
                    return Next::Continue;
                }
                tx.rcpts.push(to);
                tx.rcpt_params.push(params);
                tx.returns = true;
            }
            self.reply(Reply::new(250, Enhanced(2, 1, 5), "Recipient OK"));
            return Next::Continue;
        }
        if tx.returns {
            self.reply(Reply::new(452, Enhanced(4, 5, 3), "Send this recipient in a separate transaction"));
            return Next::Continue;
        }
        // No open relay: our domains from anyone, other domains only from trusted or
        // authenticated clients.
        let may_relay = self.conn.trusted || self.conn.user.is_some();
        if !may_relay && !postmaster && !self.config.accepts_domain(to.domain()) {
            tracing::info!(rcpt = %to, "relaying denied");
            metrics::counter!("mailgate_recipients_total", "class" => "5xx").increment(1);
            self.reply(Reply::new(550, Enhanced(5, 7, 1), "Relaying denied"));
            return Next::Continue;
        }
        // A recipient given twice is not a new one, at the limit too.
        if tx.rcpts.iter().any(|r| r.as_str().eq_ignore_ascii_case(to.as_str())) {
            self.reply(Reply::new(250, Enhanced(2, 1, 5), "Recipient OK"));
            return Next::Continue;
        }
        if tx.rcpts.len() >= max {
            metrics::counter!("mailgate_recipients_total", "class" => "4xx").increment(1);
            self.reply(Reply::new(452, Enhanced(4, 5, 3), "Too many recipients"));
            return Next::Continue;
        }
        // Unknown recipients are refused here, not bounced later; the plugins' on-rcpt sees
        // only recipients that passed. The postmaster is always taken (RFC 5321 §4.5.1).
        if !postmaster && !to.local_part().eq_ignore_ascii_case("postmaster") {
            if let Some(next) = self.verify_recipient(&to).await {
                return next;
            }
        }
        // One message, one pipeline: the first accepted recipient's domain picks it.
        let want = self.config.pipeline_for_domain(to.domain()).unwrap_or(&self.conn.pipeline).to_string();
        if self.tx.as_ref().and_then(|t| t.pipeline.as_ref()).is_some_and(|p| *p != want) {
            self.reply(Reply::new(
                452,
                Enhanced(4, 5, 3),
                "Send this recipient in a separate transaction (different policy)",
            ));
            return Next::Continue;
        }
        if let Some(chain) = self.policy.chain.as_mut() {
            chain.use_pipeline(&want);
            let d = chain.on_rcpt(&self.conn.info(), to.as_str()).await;
            if let Err(next) = self.enforce(d) {
                return next;
            }
        }
        if let Some(tx) = self.tx.as_mut() {
            // The plugins' envelope grows with the transaction's.
            if let Some(chain) = self.policy.chain.as_mut() {
                chain.add_recipient(to.as_str());
            }
            tx.rcpts.push(to);
            tx.rcpt_params.push(params);
            tx.pipeline = Some(want);
        }
        self.reply(Reply::new(250, Enhanced(2, 1, 5), "Recipient OK"));
        Next::Continue
    }
}

impl<S: SessionIo> Session<S> {
    /// `Some` when verification refused the recipient: unknown is a 550 that counts as an
    /// error (a dictionary attack ends at `limits.max_errors`), no answer a 451.
    async fn verify_recipient(&mut self, to: &Address) -> Option<Next> {
        let verifier = self.generation.verify.clone();
        if verifier.is_empty() {
            return None;
        }
        // An alias exists whatever the mailboxes say; a canonical rewrite is checked in the form
        // it will be delivered to.
        let maps = self.generation.cleanup.maps();
        let address = maps.canonical_recipient(to.as_str()).unwrap_or_else(|| to.as_str().to_string());
        if maps.is_alias(&address) {
            return None;
        }
        match verifier.check(&self.config, &self.shared.delivery, &address).await {
            Verdict::Unchecked | Verdict::Known => None,
            Verdict::Unknown => {
                tracing::info!(rcpt = %to, "recipient unknown");
                metrics::counter!("mailgate_recipients_total", "class" => "5xx").increment(1);
                Some(self.bad_command(Reply::new(
                    550,
                    Enhanced(5, 1, 1),
                    format!("<{to}>: Recipient address rejected: User unknown"),
                )))
            }
            Verdict::Unavailable(why) => {
                tracing::info!(rcpt = %to, %why, "recipient verification unavailable");
                metrics::counter!("mailgate_recipients_total", "class" => "4xx").increment(1);
                self.reply(Reply::new(
                    451,
                    Enhanced(4, 4, 3),
                    format!("<{to}>: Recipient address verification unavailable, try again later"),
                ));
                Some(Next::Continue)
            }
        }
    }
}
