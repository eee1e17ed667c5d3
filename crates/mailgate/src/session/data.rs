//! DATA and BDAT (RFC 5321 §4.1.1.4, RFC 3030 CHUNKING): receive the content under the content
//! rules and the memory budget, then hand it to the cleanup stage, and answer `250` only once
//! it is in the spool.

use std::time::Instant;

use mailgate_cleanup::{DataPolicy, Incoming, Outcome, Refusal};
use mailgate_smtp::content::Mode;
use mailgate_smtp::reply::codes;
use mailgate_smtp::{ContentError, ContentReceiver, Enhanced, Progress, Reply};
use mailgate_spool::Envelope;

use super::{Next, Session, SessionIo, State};
use crate::plugins::ChainPolicy;

/// A message being received: its envelope, the content so far (starting with our
/// `Received:`), and the receiver enforcing the content rules.
pub(crate) struct Chunks {
    env: Envelope,
    receiver: ContentReceiver,
    buf: Vec<u8>,
    /// When the content began (for `limits.min_data_rate`).
    started: Instant,
    /// The octets of `buf`'s capacity, counted against `limits.content_memory`.
    hold: mailgate_message::Reservation,
}

/// A BDAT chunk being read.
pub(crate) struct BdatChunk {
    /// The message so far; `None` when this chunk is read only to be refused.
    chunks: Option<Chunks>,
    /// Why it is refused, if it is.
    refusal: Option<Reply>,
    size: u64,
    /// Octets of the chunk still to come.
    remaining: u64,
    last: bool,
    /// When this chunk began (the rate of a refused chunk is still enforced).
    started: Instant,
}

impl BdatChunk {
    /// When the transfer began and how much of it has arrived.
    pub fn progress(&self) -> (Instant, u64) {
        match &self.chunks {
            Some(c) => c.progress(),
            None => (self.started, self.size - self.remaining),
        }
    }
}

/// Smallest step by which a receive buffer grows (and is counted).
const GROW_STEP: usize = 64 << 10;

impl Chunks {
    /// When the content began and how much of it has arrived.
    pub fn progress(&self) -> (Instant, u64) {
        (self.started, self.receiver.size())
    }

    /// Feeds received octets to the content receiver. The buffer grows in steps of a quarter
    /// of its size (not doubling: no half-empty megabytes), and every step is counted against
    /// the memory budget; when the budget is spent the content is refused (452 4.3.1), its
    /// buffer given back, and the rest only consumed.
    fn feed(&mut self, input: &[u8]) -> (usize, Progress) {
        if self.receiver.error().is_none() && self.buf.capacity() - self.buf.len() < input.len() {
            let step = input.len().max(self.buf.len() / 4).max(GROW_STEP);
            if self.hold.grow_to(self.buf.len() + step) {
                self.buf.reserve_exact(step);
                self.hold.force_to(self.buf.capacity());
            } else {
                self.receiver.abort(ContentError::OverBudget);
                self.buf = Vec::new();
                self.hold.shrink_to(0);
            }
        }
        self.receiver.feed(input, &mut self.buf)
    }
}

impl<S: SessionIo> Session<S> {
    /// Why the transaction cannot take content now, if it cannot.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(codes::bad_sequence("Need MAIL and RCPT first")),
            Some(tx) if tx.rcpts.is_empty() => Some(Reply::new(554, Enhanced(5, 5, 1), "No valid recipients")),
            Some(_) => None,
        }
    }

    /// Where this session's messages come from, for the cleanup stage.
    fn origin(&self, smtputf8: bool) -> mailgate_cleanup::Origin {
        let c = &self.conn;
        mailgate_cleanup::Origin {
            client: Some((c.helo.clone().unwrap_or_else(|| "unknown".into()), c.peer.ip())),
            with: Some(mailgate_cleanup::protocol(c.esmtp, smtputf8, c.tls.is_some(), c.user.is_some()).to_string()),
            tls: c.tls.clone(),
            user: c.user.clone(),
            listener: c.listener.to_string(),
            trusted: c.trusted,
            auth: Some(self.policy.auth.clone()),
        }
    }

    /// Starts a message: its envelope, and our `Received:` first in the buffer. `None` when
    /// the memory budget for content cannot take another message now.
    fn begin_content(&self, mode: Mode) -> Option<Chunks> {
        let cfg = &self.config;
        let tx = self.tx.as_ref().expect("checked by content_refusal");
        let id = self.shared.spool.new_id();
        let sender = tx.from.as_ref().map(|a| a.as_str().to_string()).unwrap_or_default();
        let mut env = mailgate_cleanup::envelope(id, sender, tx.rcpts.iter().map(|r| r.as_str().to_string()).collect());
        env.body_8bit = tx.params.body != mailgate_smtp::Body::SevenBit;
        env.smtputf8 = tx.params.smtputf8;
        env.requiretls = tx.params.requiretls;
        // The DSN extension's parameters (RFC 3461), kept for the DSNs about this message.
        env.ret = tx.params.ret.map(|r| match r {
            mailgate_smtp::Ret::Full => mailgate_spool::DsnRet::Full,
            mailgate_smtp::Ret::Hdrs => mailgate_spool::DsnRet::Hdrs,
        });
        env.envid = tx.params.envid.clone();
        for (r, p) in env.recipients.iter_mut().zip(&tx.rcpt_params) {
            r.notify =
                p.notify.map(|n| mailgate_spool::Notify { success: n.success, failure: n.failure, delay: n.delay });
            r.orcpt = p.orcpt.clone();
        }
        let (helo, ip) = (self.conn.helo.as_deref().unwrap_or("unknown"), &self.conn.ip_text.0);
        env.client = [helo, " (", ip, ")"].concat();
        let header = self.generation.cleanup.received(&self.origin(tx.params.smtputf8), &env);
        let want = header.len() + (tx.params.size.unwrap_or(8192).min(1 << 20) as usize).max(8192);
        let mut hold = self.shared.budget.reserve(want)?;
        let mut buf = Vec::with_capacity(want);
        hold.force_to(buf.capacity());
        buf.extend_from_slice(header.as_bytes());
        let strip = cfg.limits.nul_bytes == mailgate_config::NulBytes::Strip;
        let receiver =
            ContentReceiver::new(mode, cfg.limits.max_message_size, cfg.limits.text_line - 2).strip_nul(strip);
        Some(Chunks { env, receiver, buf, started: Instant::now(), hold })
    }

    /// DATA: `354`, and the content is read in the [`State::Data`] state.
    pub(crate) fn data(&mut self) -> Next {
        if let Some(r) = self.content_refusal() {
            return self.bad_command(r);
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.bad_command(codes::bad_sequence("DATA not allowed after BDAT"));
        }
        let Some(c) = self.begin_content(Mode::Data) else {
            tracing::warn!("DATA refused: the memory budget for message content is spent");
            metrics::counter!("mailgate_messages_total", "result" => "over_budget").increment(1);
            self.reply(ContentError::OverBudget.reply());
            return Next::Continue;
        };
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.state = State::Data(c);
        Next::Continue
    }

    /// DATA content arrived. `None` while the end of data has not.
    pub(crate) async fn data_input(&mut self, mut c: Chunks) -> Option<Next> {
        let (used, progress) = c.feed(self.io.pending());
        self.io.consume(used);
        if progress != Progress::Done {
            self.state = State::Data(c);
            return None;
        }
        Some(self.finish(c).await)
    }

    /// BDAT: the chunk is read in the [`State::Bdat`] state — exactly `size` octets, even when
    /// refused, to stay in step with the client.
    pub(crate) fn bdat(&mut self, size: u64, last: bool) -> Next {
        let mut refusal = self.content_refusal();
        let mut chunks = match &refusal {
            Some(_) => None,
            None => match self.tx.as_mut().and_then(|t| t.bdat.take()) {
                Some(c) => Some(c),
                None => self.begin_content(Mode::Bdat),
            },
        };
        if refusal.is_none() && chunks.is_none() {
            tracing::warn!("BDAT refused: the memory budget for message content is spent");
            metrics::counter!("mailgate_messages_total", "result" => "over_budget").increment(1);
            // The transaction ends here; its chunks are read and refused.
            self.tx = None;
            refusal = Some(ContentError::OverBudget.reply());
        }
        if refusal.is_some() {
            chunks = None;
        }
        self.state = State::Bdat(BdatChunk { chunks, refusal, size, remaining: size, last, started: Instant::now() });
        Next::Continue
    }

    /// BDAT content arrived. `None` while the chunk is incomplete.
    pub(crate) async fn bdat_input(&mut self, mut b: BdatChunk) -> Option<Next> {
        let avail = (self.io.pending().len() as u64).min(b.remaining) as usize;
        if let Some(c) = b.chunks.as_mut() {
            c.feed(&self.io.pending()[..avail]);
        }
        self.io.consume(avail);
        b.remaining -= avail as u64;
        if b.remaining > 0 {
            self.state = State::Bdat(b);
            return None;
        }
        if let Some(r) = b.refusal {
            return Some(self.bad_command(r));
        }
        let mut c = b.chunks.expect("present when not refused");
        if !b.last {
            // Refused at the chunk that crossed a limit (size, line rules): this and every
            // later chunk of the transaction is read and answered with the refusal, nothing
            // more is kept, and LAST ends the transaction (RFC 3030 §4.2).
            match c.receiver.error() {
                Some(e) => {
                    if e == ContentError::TooBig {
                        tracing::info!(queue_id = %c.env.id, size = c.receiver.size(), "BDAT content over the size limit");
                    }
                    self.reply(e.reply());
                }
                None => self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("{} octets received", b.size))),
            }
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(c);
            }
            return Some(Next::Continue);
        }
        let _ = c.receiver.finish_bdat(&mut c.buf);
        Some(self.finish(c).await)
    }

    /// The content is complete: refuse it, or pass it through the cleanup stage and say `250`
    /// once it is in the spool.
    async fn finish(&mut self, c: Chunks) -> Next {
        let tx = self.tx.take().expect("a transaction is open");
        if let Some(e) = c.receiver.error() {
            metrics::counter!("mailgate_messages_total", "result" => "refused").increment(1);
            tracing::info!(queue_id = %c.env.id, error = ?e, size = c.receiver.size(), "message refused");
            self.reply(e.reply());
            return Next::Continue;
        }
        if tx.returns {
            let rcpts: Vec<String> = tx.rcpts.iter().map(|r| r.as_str().to_string()).collect();
            let sender = tx.from.as_ref().map_or("", |a| a.as_str());
            let reply = crate::bounces::intake(&self.shared, &self.conn.sid, sender, &rcpts, &c.buf).await;
            self.reply(reply);
            return Next::Continue;
        }
        let id = c.env.id.clone();
        let origin = self.origin(tx.params.smtputf8);
        let cleanup = self.generation.cleanup.clone();
        let incoming = Incoming { envelope: c.env, data: c.buf, hold: Some(c.hold), traced: true };
        let pipeline = tx.pipeline.clone().unwrap_or_else(|| self.conn.pipeline.clone());
        let mut policy = self.policy.chain.as_mut().map(|chain| {
            chain.use_pipeline(&pipeline);
            ChainPolicy { chain, conn: self.conn.info() }
        });
        let policy = policy.as_mut().map(|p| p as &mut dyn DataPolicy);
        let shared = self.shared.clone();
        match cleanup.submit(&*shared.spool, incoming, &origin, policy).await {
            Ok(Outcome::Kept(a)) => {
                let env = &a.envelope;
                tracing::info!(
                    queue_id = %env.id,
                    requiretls = env.requiretls,
                    auth = self.conn.user.as_deref().unwrap_or("-"),
                    from = %if env.sender.is_empty() { "<>" } else { &env.sender },
                    rcpts = env.recipients.len(),
                    size = a.data.len(),
                    "message accepted"
                );
                if shared.events.is_some() {
                    crate::server::record(&shared, crate::server::reception(env, "smtp")).await;
                }
                self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", env.id)));
                crate::server::queue_accepted(&shared, a);
                Next::Continue
            }
            Ok(Outcome::Dropped { id, why }) => {
                // The client cannot tell a discarded message from a delivered one.
                crate::server::dropped(&id, why);
                self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {id}")));
                Next::Continue
            }
            Err(refusal) => {
                let reply = refusal.reply();
                match &refusal {
                    Refusal::Spool(e) => tracing::error!(queue_id = %id, "spool store failed: {e}"),
                    Refusal::Interrupted => tracing::error!(queue_id = %id, "structure check failed to run"),
                    Refusal::Loop(hops) => tracing::warn!(queue_id = %id, hops, "mail loop: too many Received headers"),
                    r => tracing::info!(queue_id = %id, reply = %reply, "message refused: {r}"),
                }
                let sender = tx.from.as_ref().map_or("", |a| a.as_str());
                crate::server::refused(&shared, &id, sender, None, &reply, "smtp").await;
                self.reply(reply);
                if refusal.closes_session() {
                    Next::Close
                } else {
                    Next::Continue
                }
            }
        }
    }
}
