//! DATA and BDAT (RFC 5321 §4.1.1.4, RFC 3030 CHUNKING): receive the content, add
//! `Received:`, store it durably, and only then answer `250`.

use std::sync::Arc;

use mailgate_smtp::content::Mode;
use mailgate_smtp::reply::codes;
use mailgate_smtp::trace::{now_unix, Received};
use mailgate_smtp::{ContentReceiver, Enhanced, Progress, Reply};
use mailgate_spool::{Envelope, QueueId, RcptStatus, Recipient};

use super::{Next, Session};
use mailgate_plugin_host::{modify, DataDecision};

/// `Received:` fields beyond which a message is taken to be looping (Postfix uses 50 too).
const MAX_HOPS: usize = 50;

/// Counts `Received:` fields in the header section.
fn count_received(msg: &[u8]) -> usize {
    let end = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(msg.len());
    msg[..end].split(|b| *b == b'\n').filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:")).count()
}

/// A message being received: its id, the content so far (starting with our `Received:`),
/// and the receiver enforcing the content rules.
pub(crate) struct Chunks {
    id: QueueId,
    receiver: ContentReceiver,
    buf: Vec<u8>,
    /// When the content began (for `limits.min_data_rate`).
    started: std::time::Instant,
    /// The octets of `buf`'s capacity, counted against `limits.content_memory`.
    hold: mailgate_message::Reservation,
}

/// Smallest step by which a receive buffer grows (and is counted).
const GROW_STEP: usize = 64 << 10;

impl Chunks {
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
                self.receiver.abort(mailgate_smtp::ContentError::OverBudget);
                self.buf = Vec::new();
                self.hold.shrink_to(0);
            }
        }
        self.receiver.feed(input, &mut self.buf)
    }
}

impl Session {
    /// Why the transaction cannot take content now, if it cannot.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(codes::bad_sequence("Need MAIL and RCPT first")),
            Some(tx) if tx.rcpts.is_empty() => Some(Reply::new(554, Enhanced(5, 5, 1), "No valid recipients")),
            Some(_) => None,
        }
    }

    /// Starts a message: queue id, `Received:` first in the buffer. `None` when the memory
    /// budget for content cannot take another message now.
    fn begin_content(&self, mode: Mode) -> Option<Chunks> {
        let cfg = &self.config;
        let tx = self.tx.as_ref().expect("checked by content_refusal");
        let id = self.shared.spool.new_id();
        // RFC 3848 / RFC 6531 protocol names: S for TLS, A for an authenticated client.
        let base = match (tx.params.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        let suffix = match (self.tls.is_some(), self.auth_user.is_some()) {
            (true, true) => "SA",
            (true, false) => "S",
            (false, true) => "A",
            (false, false) => "",
        };
        let with = format!("{base}{suffix}");
        let mut clause = self.tls.as_ref().map(|(v, c)| format!("{v} {c}"));
        if let Some(u) = &self.auth_user {
            let u: String = u.chars().filter(|c| !c.is_control() && !"();".contains(*c)).take(64).collect();
            clause = Some(match clause {
                Some(t) => format!("{t}; authenticated as {u}"),
                None => format!("authenticated as {u}"),
            });
        }
        let for_rcpt = (tx.rcpts.len() == 1).then(|| tx.rcpts[0].as_str());
        let header = Received {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            client_ip: self.peer.ip(),
            by: &cfg.server.hostname,
            with: &with,
            tls: clause.as_deref(),
            queue_id: &id,
            for_rcpt,
            unix_time: now_unix(),
        }
        .to_header();
        let want = header.len() + (tx.params.size.unwrap_or(8192).min(1 << 20) as usize).max(8192);
        let mut hold = self.shared.budget.reserve(want)?;
        let mut buf = Vec::with_capacity(want);
        hold.force_to(buf.capacity());
        buf.extend_from_slice(header.as_bytes());
        let max = cfg.limits.max_message_size;
        let strip = cfg.limits.nul_bytes == mailgate_config::NulBytes::Strip;
        let receiver = ContentReceiver::new(mode, max, cfg.limits.text_line - 2).strip_nul(strip);
        Some(Chunks { id, receiver, buf, started: std::time::Instant::now(), hold })
    }

    pub(crate) async fn data(&mut self) -> std::io::Result<Next> {
        if let Some(r) = self.content_refusal() {
            return Ok(self.bad_command(r));
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return Ok(self.bad_command(codes::bad_sequence("DATA not allowed after BDAT")));
        }
        let Some(mut c) = self.begin_content(Mode::Data) else {
            tracing::warn!("DATA refused: the memory budget for message content is spent");
            metrics::counter!("mailgate_messages_total", "result" => "over_budget").increment(1);
            self.reply(mailgate_smtp::ContentError::OverBudget.reply());
            return Ok(Next::Continue);
        };
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.flush_now().await?;
        loop {
            let (used, progress) = c.feed(self.pending_input());
            self.consume(used);
            if progress == Progress::Done {
                break;
            }
            if !self.fill_content(c.started, c.receiver.size()).await? {
                tracing::info!(queue_id = %c.id, "client went away during DATA; nothing was accepted");
                return Ok(Next::Close);
            }
        }
        Ok(self.finish(c).await)
    }

    pub(crate) async fn bdat(&mut self, size: u64, last: bool) -> std::io::Result<Next> {
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
            refusal = Some(mailgate_smtp::ContentError::OverBudget.reply());
        }
        // Read exactly `size` octets, even when refusing them, to stay in step with the client.
        let mut remaining = size;
        let chunk_started = std::time::Instant::now();
        loop {
            let avail = (self.pending_input().len() as u64).min(remaining) as usize;
            if let Some(c) = chunks.as_mut() {
                c.feed(&self.pending_input()[..avail]);
            }
            self.consume(avail);
            remaining -= avail as u64;
            if remaining == 0 {
                break;
            }
            let (started, received) =
                chunks.as_ref().map_or((chunk_started, size - remaining), |c| (c.started, c.receiver.size()));
            if !self.fill_content(started, received).await? {
                return Ok(Next::Close);
            }
        }
        if let Some(r) = refusal {
            return Ok(self.bad_command(r));
        }
        let mut c = chunks.expect("present when not refused");
        if !last {
            // Refused at the chunk that crossed a limit (size, line rules): this and every
            // later chunk of the transaction is read and answered with the refusal, nothing
            // more is kept, and LAST ends the transaction (RFC 3030 §4.2).
            match c.receiver.error() {
                Some(e) => {
                    if e == mailgate_smtp::ContentError::TooBig {
                        tracing::info!(queue_id = %c.id, size = c.receiver.size(), "BDAT content over the size limit");
                    }
                    self.reply(e.reply());
                }
                None => self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("{size} octets received"))),
            }
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(c);
            }
            return Ok(Next::Continue);
        }
        let _ = c.receiver.finish_bdat(&mut c.buf);
        Ok(self.finish(c).await)
    }

    /// The content is complete: refuse it, or store it and say `250` once it is durable.
    async fn finish(&mut self, c: Chunks) -> Next {
        let tx = self.tx.take().expect("a transaction is open");
        if let Some(e) = c.receiver.error() {
            metrics::counter!("mailgate_messages_total", "result" => "refused").increment(1);
            tracing::info!(queue_id = %c.id, error = ?e, size = c.receiver.size(), "message refused");
            self.reply(e.reply());
            return Next::Continue;
        }
        // RFC 5321 §6.3: a message that has passed too many hops is looping.
        let hops = count_received(&c.buf);
        if hops > MAX_HOPS {
            tracing::warn!(queue_id = %c.id, hops, "mail loop: too many Received headers");
            metrics::counter!("mailgate_messages_total", "result" => "refused").increment(1);
            self.reply(Reply::new(554, Enhanced(5, 4, 6), "Too many hops (mail loop?)"));
            return Next::Continue;
        }
        // The structure is measured before anything parses the message (plugins, DKIM,
        // ARC): too deep, too many parts or too many header fields is refused here.
        let id = c.id.clone();
        let Some((buf, structure)) = check_structure(c.buf, &self.config.limits).await else {
            tracing::error!(queue_id = %id, "structure check failed to run");
            self.reply(Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later"));
            return Next::Continue;
        };
        let c = Chunks { buf, ..c };
        if let Err(e) = structure {
            tracing::info!(queue_id = %c.id, "message refused: {e}");
            metrics::counter!("mailgate_messages_total", "result" => "refused").increment(1);
            self.reply(e.reply());
            return Next::Continue;
        }
        if self.config.auth.refuse_ambiguous_from {
            if let Some(why) = mailgate_auth::ambiguous_from(&c.buf) {
                tracing::info!(queue_id = %c.id, "message refused: {why}");
                metrics::counter!("mailgate_messages_total", "result" => "refused").increment(1);
                self.reply(Reply::new(550, Enhanced(5, 7, 1), format!("Refused: {why} (DMARC cannot judge it)")));
                return Next::Continue;
            }
        }
        let shared = self.shared.clone();
        let content_8bit = !c.buf.is_ascii();
        let mut env = Envelope {
            id: c.id,
            sender: tx.from.as_ref().map(|a| a.as_str().to_string()).unwrap_or_default(),
            recipients: tx
                .rcpts
                .iter()
                .map(|r| Recipient {
                    address: r.as_str().to_string(),
                    status: RcptStatus::Pending,
                    last_reply: None,
                    remote_host: None,
                })
                .collect(),
            received_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            attempts: 0,
            next_attempt: 0,
            body_8bit: content_8bit || tx.params.body != mailgate_smtp::Body::SevenBit,
            smtputf8: tx.params.smtputf8,
            client: format!("{} ({})", self.helo.as_deref().unwrap_or("unknown"), self.peer.ip()),
            route: None,
            quarantine: None,
            requiretls: tx.params.requiretls,
            held: false,
        };
        let (mut data, mut hold) = (c.buf, c.hold);
        // RFC 8601 §5: a field claiming our authserv-id did not come from us.
        let authserv_id = self.config.auth.authserv_id.clone().unwrap_or_else(|| self.config.server.hostname.clone());
        let forged = mailgate_auth::strip_ours(&mut data, &authserv_id);
        if forged > 0 {
            tracing::info!(queue_id = %env.id, forged, "removed Authentication-Results fields claiming our authserv-id");
        }
        let raw = Arc::new(data);
        self.auth.lock().await.set_message(raw.clone());
        let mut data = raw;
        if self.chain.is_some() {
            let pipeline = tx.pipeline.clone().unwrap_or_else(|| self.pipeline.clone());
            match self.data_policy(&mut env, data, &pipeline, &mut hold).await {
                Ok(d) => data = d,
                Err(next) => {
                    // Refused or dropped: the received bytes are not needed any more.
                    self.auth.lock().await.end_message();
                    return next;
                }
            }
        }
        let mut data = self.sign_and_mark(&env, data, &authserv_id).await;
        data.shrink_to_fit();
        // From here only this copy is in memory: the queue keeps it (counted) for the first
        // delivery.
        hold.shrink_to(data.capacity());
        let data = Arc::new(data);
        match shared.spool.store(&env, data.clone()).await {
            Ok(()) => {
                tracing::info!(
                    queue_id = %env.id,
                    requiretls = env.requiretls,
                    auth = self.auth_user.as_deref().unwrap_or("-"),
                    from = %if env.sender.is_empty() { "<>" } else { &env.sender },
                    rcpts = env.recipients.len(),
                    size = data.len(),
                    "message accepted"
                );
                metrics::counter!("mailgate_messages_total", "result" => if env.quarantine.is_some() { "quarantined" } else { "accepted" }).increment(1);
                metrics::counter!("mailgate_recipients_total", "class" => "2xx").increment(env.recipients.len() as u64);
                metrics::counter!("mailgate_message_bytes_total").increment(data.len() as u64);
                let reply = Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", env.id));
                // The queue keeps the content for its first attempt while the budget has room
                // to spare; when it is tight (slow next hops), the queue reads it back from the
                // spool instead, so waiting deliveries never keep new mail out.
                if shared.budget.used() <= shared.budget.limit() / 2 {
                    shared.queue.enqueue_held(env, data, hold);
                } else {
                    drop(hold);
                    shared.queue.enqueue(env, None);
                }
                self.reply(reply);
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, "spool store failed: {e}");
                metrics::counter!("mailgate_messages_total", "result" => "tempfail").increment(1);
                let (code, enh, text) = e.smtp_reply();
                self.reply(Reply::new(code, Enhanced::parse(enh).unwrap_or(Enhanced(4, 3, 0)), text));
            }
        }
        Next::Continue
    }
}

impl Session {
    /// Runs the data-stage plugins on a complete message and applies their verdict and
    /// modifications. Returns the message to store, or `Err` once a reply has been queued.
    async fn data_policy(
        &mut self,
        env: &mut Envelope,
        raw: Arc<Vec<u8>>,
        pipeline: &str,
        hold: &mut mailgate_message::Reservation,
    ) -> Result<Arc<Vec<u8>>, Next> {
        let data = raw;
        let Some(mut chain) = self.chain.take() else {
            return Ok(data);
        };
        chain.use_pipeline(pipeline);
        let wenv = crate::plugins::wit_envelope(
            &env.sender,
            env.recipients.iter().map(|r| r.address.clone()).collect(),
            env.body_8bit,
            env.smtputf8,
            Some(data.len() as u64),
        );
        let raw = data;
        let (decision, mods) = chain.on_data(&self.conn_info(), &wenv, raw.clone()).await;
        self.chain = Some(chain);
        // Kept shared: the session's authentication checks may still need the bytes as received.
        let mut data = raw;
        match decision {
            DataDecision::Continue => {}
            DataDecision::Reply(r) => {
                metrics::counter!("mailgate_messages_total", "result" => if r.is_transient() { "tempfail" } else { "refused" }).increment(1);
                tracing::info!(queue_id = %env.id, reply = %r, "message refused by policy");
                self.reply(r);
                return Err(Next::Continue);
            }
            DataDecision::Disconnect(r) => {
                tracing::info!(queue_id = %env.id, reply = %r, "message refused by policy; disconnecting");
                self.reply(r);
                return Err(Next::Close);
            }
            DataDecision::Discard => {
                // The client cannot tell a discarded message from a delivered one.
                tracing::info!(queue_id = %env.id, "message discarded by policy");
                metrics::counter!("mailgate_messages_total", "result" => "discarded").increment(1);
                self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", env.id)));
                return Err(Next::Continue);
            }
            DataDecision::Quarantine(reason) => env.quarantine = Some(reason),
        }
        let edits = modify::apply(&data, &mods, self.config.limits.max_message_size as usize);
        for r in &edits.refused {
            tracing::warn!(queue_id = %env.id, "invalid plugin modification ignored: {r}");
        }
        if let Some(d) = edits.data {
            // The edited copy lives beside the received one until the checks are done.
            hold.force_to(hold.size() + d.capacity());
            data = Arc::new(d);
        }
        if let Some(s) = edits.sender {
            env.sender = s;
        }
        env.recipients.retain(|r| !edits.remove_rcpts.iter().any(|x| x.eq_ignore_ascii_case(&r.address)));
        for a in edits.add_rcpts {
            if !env.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(&a)) {
                env.recipients.push(Recipient {
                    address: a,
                    status: RcptStatus::Pending,
                    last_reply: None,
                    remote_host: None,
                });
            }
        }
        if edits.route.is_some() {
            env.route = edits.route;
        }
        if env.recipients.is_empty() {
            tracing::info!(queue_id = %env.id, "plugins removed every recipient: message dropped");
            self.reply(Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", env.id)));
            return Err(Next::Continue);
        }
        Ok(data)
    }
}

impl Session {
    /// Adds our Authentication-Results field and, when a `[[dkim_sign]]` identity matches, a
    /// DKIM-Signature over the final message (after every plugin change).
    async fn sign_and_mark(&mut self, env: &Envelope, data: Arc<Vec<u8>>, authserv_id: &str) -> Vec<u8> {
        let config = self.config.clone();
        let cfg = &config.auth;
        let mut field = None;
        if cfg.header {
            use mailgate_config::AuthCheck as C;
            let has = |c: C| cfg.always.contains(&c);
            let value = self
                .auth
                .lock()
                .await
                .header(authserv_id, has(C::Spf), has(C::Dkim) || has(C::Dmarc) || has(C::Arc), has(C::Iprev))
                .await;
            field = value.map(|v| format!("Authentication-Results: {v}\r\n"));
        }
        // The checks are done: the bytes as received are no longer needed, and without that
        // second owner the message is not copied here.
        self.auth.lock().await.end_message();
        let mut data = Arc::try_unwrap(data).unwrap_or_else(|a| (*a).clone());
        if let Some(field) = field {
            prepend(&mut data, field.as_bytes());
        }
        let data = self.dkim_sign(env, data).await;
        self.arc_seal(env, data).await
    }

    /// Prepends an ARC set when `[arc_seal]` is configured; a message that cannot be sealed
    /// (e.g. its chain already failed) goes on unsealed, logged.
    async fn arc_seal(&mut self, env: &Envelope, data: Vec<u8>) -> Vec<u8> {
        let generation = self.generation.clone();
        let Some(sealer) = &generation.sealer else { return data };
        let (ip, helo) = (self.peer.ip(), self.helo.clone().unwrap_or_default());
        match sealer.seal(&generation.auth, &data, ip, &helo, &env.sender).await {
            Ok(set) => {
                tracing::info!(queue_id = %env.id, "ARC sealed");
                let mut data = data;
                prepend(&mut data, set.as_bytes());
                data
            }
            Err(e) => {
                tracing::warn!(queue_id = %env.id, "not ARC sealed: {e}");
                data
            }
        }
    }

    /// Prepends a DKIM-Signature when a `[[dkim_sign]]` identity matches.
    async fn dkim_sign(&mut self, env: &Envelope, data: Vec<u8>) -> Vec<u8> {
        if self.generation.signers.is_empty() {
            return data;
        }
        let generation = self.generation.clone();
        let Some(from_domain) = header_from_domain(&data) else { return data };
        let (listener, user) = (&*self.listener, self.auth_user.as_deref());
        let Some(i) =
            generation.signers.iter().position(|(d, _)| d.applies(&from_domain, listener, user, self.trusted))
        else {
            return data;
        };
        // An RSA signature is ~0.5 ms of CPU: off the async threads.
        let (g, shared) = (generation.clone(), Arc::new(data));
        let bytes = shared.clone();
        let result = tokio::task::spawn_blocking(move || g.signers[i].1.sign(&bytes))
            .await
            .unwrap_or_else(|e| Err(mailgate_auth::AuthError::Sign(format!("signing task failed: {e}"))));
        // The task has ended and dropped its handle: no copy here.
        let mut data = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
        let d = &generation.signers[i].0;
        match result {
            Ok(field) => {
                tracing::info!(queue_id = %env.id, domain = %d.domain, selector = %d.selector, "DKIM signed");
                prepend(&mut data, field.as_bytes());
            }
            // Unsigned mail still goes out; the log says why.
            Err(e) => tracing::error!(queue_id = %env.id, domain = %d.domain, "{e}"),
        }
        data
    }
}

/// Puts `field` in front of the message in place: the buffer grows (for a large one the
/// allocator remaps it without copying) and the content moves up, with no second copy of the
/// message in memory.
fn prepend(data: &mut Vec<u8>, field: &[u8]) {
    data.splice(0..0, field.iter().copied());
}

/// Messages above this size are measured on the blocking pool, off the async threads.
const INLINE_CHECK: usize = 256 << 10;

/// Runs [`mailgate_message::inspect`] on a received message; hands the bytes back.
async fn check_structure(
    buf: Vec<u8>,
    limits: &mailgate_config::Limits,
) -> Option<(Vec<u8>, Result<mailgate_message::Structure, mailgate_message::MessageError>)> {
    let limits = mailgate_message::MessageLimits::from_config(limits);
    if buf.len() <= INLINE_CHECK {
        let r = mailgate_message::inspect(&buf, &limits);
        return Some((buf, r));
    }
    // `None` only if the task could not run to its end (the runtime is shutting down).
    tokio::task::spawn_blocking(move || {
        let r = mailgate_message::inspect(&buf, &limits);
        (buf, r)
    })
    .await
    .ok()
}

/// The domain of the header From address, if the message has one.
fn header_from_domain(data: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse_headers(data)?;
    let addr = msg.from()?.first()?.address.as_ref()?.to_string();
    Some(addr.rsplit_once('@')?.1.to_string())
}
