//! The cleanup stage (Postfix's `cleanup`): everything between "the content has arrived" and
//! "it is in the spool", the same for every way a message enters the queue — SMTP DATA/BDAT,
//! the DSNs the queue writes, `mailgate plugin test` (which stops before the spool) and the
//! sending API.
//!
//! In order: our `Received:` field, loop detection, the structure check (before anything
//! parses the message), the From check, removal of `Authentication-Results:` fields forged in
//! our name, the on-data policy with its verdict and changes, the address maps (canonical
//! rewriting, then aliases: the policy saw the addresses as given, the queue sees the
//! rewritten ones), our `Authentication-Results:`, DKIM signing, ARC sealing, and the spool
//! write. The answer is [`Outcome`] or a typed
//! [`Refusal`] that knows its SMTP reply.
//!
//! This crate owns those steps and their order. It must not know sessions, sockets, the queue
//! or the plugin ABI: the on-data policy comes in through [`DataPolicy`], and what happens to a
//! stored message next (the queue) is the caller's business.

mod received;
mod sign;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use mailgate_auth::AuthSession;
use mailgate_config::Config;
use mailgate_message::{Edit, MessageError, Reservation};
use mailgate_rewrite::MAX_EXPANSION;
pub use mailgate_rewrite::{MapError, Maps};
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{BoxFuture, Envelope, Recipient, RouteChoice, Spool, SpoolError};

pub use received::Received;
pub use sign::Signing;

/// `Received:` fields beyond which a message is taken to be looping (Postfix uses 50 too).
pub const MAX_HOPS: usize = 50;

/// Messages above this size are measured (and DKIM-signed) on the blocking pool, off the async
/// threads.
pub(crate) const INLINE_CHECK: usize = 256 << 10;

/// The authentication state of the session a message came in (SPF, DKIM, DMARC, ARC, iprev),
/// shared with the plugins that ask for it.
pub type SharedAuth = Arc<tokio::sync::Mutex<AuthSession>>;

/// Where a message comes from: what `Received:`, signing and sealing need to know.
#[derive(Clone, Default)]
pub struct Origin {
    /// The client's HELO name and address; `None` for a message the gateway wrote (a DSN).
    pub client: Option<(String, IpAddr)>,
    /// The protocol for `Received: … with` (`ESMTPSA`…); `None` for local messages.
    pub with: Option<String>,
    /// TLS version and cipher of the client's connection.
    pub tls: Option<(String, String)>,
    /// The authenticated identity.
    pub user: Option<String>,
    /// The listener it came in on (DKIM identities may be limited to listeners).
    pub listener: String,
    /// The client may relay (a trusted network); the gateway's own messages are trusted.
    pub trusted: bool,
    /// The session's authentication state: when present, our `Authentication-Results:` is
    /// written from it and the plugins' `auth` import reads it.
    pub auth: Option<SharedAuth>,
}

impl Origin {
    /// A message the gateway writes itself (a DSN).
    pub fn local() -> Origin {
        Origin { trusted: true, listener: "local".into(), ..Origin::default() }
    }
}

/// A message whose content has arrived.
pub struct Incoming {
    /// Its envelope (id, sender, recipients, flags). Recipients are pending.
    pub envelope: Envelope,
    /// The content, CRLF line ends.
    pub data: Vec<u8>,
    /// The octets of `data` counted against the memory budget (`None`: not counted).
    pub hold: Option<Reservation>,
    /// Our `Received:` field is already first in `data`: SMTP writes it before the content
    /// arrives ([`Cleanup::received`]), so that a large message is not moved to make room.
    pub traced: bool,
}

/// What the on-data policy (the plugin chain) decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    #[default]
    Continue,
    /// Refuse with this reply.
    Reply(Reply),
    /// Refuse with this reply and close the session.
    Disconnect(Reply),
    /// Accept and drop: the client cannot tell it from a delivery.
    Discard,
    /// Keep it, never delivered until an operator releases it.
    Quarantine(String),
}

/// The changes the policy asks for, already checked for form by whoever made them.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Header and body edits, applied in order (each is checked again here).
    pub content: Vec<Edit>,
    /// New reverse path (`Some("")` is the null sender).
    pub sender: Option<String>,
    pub add_rcpts: Vec<String>,
    pub remove_rcpts: Vec<String>,
    /// A route for the whole message.
    pub route: Option<RouteChoice>,
    /// Changes refused before they got here, with the reason (for the log).
    pub refused: Vec<String>,
}

/// The on-data policy's answer.
#[derive(Debug, Clone, Default)]
pub struct PolicyAnswer {
    pub verdict: Verdict,
    pub changes: Changes,
}

/// The on-data policy: the gateway's plugin chain, or nothing.
pub trait DataPolicy: Send {
    /// Judges a complete message. `data` is shared, not copied.
    fn on_data<'a>(&'a mut self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, PolicyAnswer>;
}

/// Why a message was not accepted. Each kind knows the reply the sender gets.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("mail loop: {0} Received fields")]
    Loop(usize),
    #[error("{0}")]
    Structure(#[from] MessageError),
    #[error("{0} (DMARC cannot judge it)")]
    AmbiguousFrom(String),
    #[error("refused by policy: {0}")]
    Policy(Reply),
    #[error("refused by policy, closing the session: {0}")]
    PolicyDisconnect(Reply),
    #[error("the structure check could not run (shutting down)")]
    Interrupted,
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("address maps: {0}")]
    Rewrite(#[from] MapError),
}

impl Refusal {
    /// The reply for the sender.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::Loop(_) => Reply::new(554, Enhanced(5, 4, 6), "Too many hops (mail loop?)"),
            Refusal::Structure(e) => e.reply(),
            Refusal::AmbiguousFrom(why) => {
                Reply::new(550, Enhanced(5, 7, 1), format!("Refused: {why} (DMARC cannot judge it)"))
            }
            Refusal::Policy(r) | Refusal::PolicyDisconnect(r) => r.clone(),
            Refusal::Interrupted => Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later"),
            Refusal::Spool(_) => {
                Reply::new(451, Enhanced(4, 3, 0), "Temporary local problem storing the message, try again later")
            }
            Refusal::Rewrite(MapError::Loop(_)) => Reply::new(554, Enhanced(5, 4, 6), "Alias loop"),
            Refusal::Rewrite(MapError::TooWide(_)) => {
                Reply::new(552, Enhanced(5, 5, 3), "Too many recipients after alias expansion")
            }
            Refusal::Rewrite(_) => Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later"),
        }
    }

    /// Whether the session ends after the reply.
    pub fn closes_session(&self) -> bool {
        matches!(self, Refusal::PolicyDisconnect(_))
    }
}

/// A message that passed cleanup.
pub enum Outcome<T> {
    /// Ready (or stored, after [`Cleanup::submit`]).
    Kept(T),
    /// Accepted and dropped: a `discard` verdict, or every recipient removed by the policy.
    /// The sender hears the same as for a stored message.
    Dropped { id: String, why: Dropped },
}

/// Why an accepted message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Discarded,
    NoRecipients,
}

/// A message ready for the spool.
pub struct Prepared {
    pub envelope: Envelope,
    pub data: Vec<u8>,
    pub hold: Option<Reservation>,
}

/// A message in the spool. Its content stays shared for the queue's first attempt.
pub struct Accepted {
    pub envelope: Envelope,
    pub data: Arc<Vec<u8>>,
    pub hold: Option<Reservation>,
}

/// The cleanup stage of one configuration generation.
pub struct Cleanup {
    config: Arc<Config>,
    signing: Signing,
    maps: Maps,
}

impl Cleanup {
    pub fn new(config: Arc<Config>, signing: Signing, maps: Maps) -> Cleanup {
        Cleanup { config, signing, maps }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The address maps this stage applies (sessions ask them whether an address is an alias).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Our `Received:` field for a message of `env` from `origin`.
    pub fn received(&self, origin: &Origin, env: &Envelope) -> String {
        let for_rcpt = (env.recipients.len() == 1).then(|| env.recipients[0].address.as_str());
        let tls = origin.tls.as_ref().map(|(v, c)| format!("{v} {c}"));
        let clause = match (&tls, &origin.user) {
            (t, Some(u)) => {
                let u: String = u.chars().filter(|c| !c.is_control() && !"();".contains(*c)).take(64).collect();
                Some(match t {
                    Some(t) => format!("{t}; authenticated as {u}"),
                    None => format!("authenticated as {u}"),
                })
            }
            (t, None) => t.clone(),
        };
        Received {
            from: origin.client.as_ref().map(|(h, ip)| (h.as_str(), *ip)),
            by: &self.config.server.hostname,
            with: origin.with.as_deref(),
            tls: clause.as_deref(),
            queue_id: &env.id,
            for_rcpt,
            unix_time: mailgate_message::date::now_unix(),
        }
        .to_header()
    }

    /// Runs every step but the spool write: the message as it would be stored, or why not.
    pub async fn process(
        &self,
        msg: Incoming,
        origin: &Origin,
        policy: Option<&mut dyn DataPolicy>,
    ) -> Result<Outcome<Prepared>, Refusal> {
        let Incoming { mut envelope, mut data, mut hold, traced } = msg;
        let id = envelope.id.clone();
        if !traced {
            let field = self.received(origin, &envelope);
            prepend(&mut data, field.as_bytes());
            if let Some(h) = hold.as_mut() {
                h.force_to(data.capacity());
            }
        }
        // RFC 5321 §6.3: a message that has passed too many hops is looping.
        let hops = count_received(&data);
        if hops > MAX_HOPS {
            return Err(Refusal::Loop(hops));
        }
        // The structure is measured before anything parses the message (plugins, DKIM, ARC).
        let (data, structure) = check_structure(data, &self.config.limits).await.ok_or(Refusal::Interrupted)?;
        structure?;
        if self.config.auth.refuse_ambiguous_from {
            if let Some(why) = mailgate_auth::ambiguous_from(&data) {
                return Err(Refusal::AmbiguousFrom(why));
            }
        }
        let mut data = data;
        // RFC 6409 §8.3: an authenticated client's message gets what it lacks, before plugins
        // see it and before it is signed.
        if origin.user.is_some() {
            let sub = &self.config.submission;
            let mut fields = String::new();
            let [has_date, has_id] = has_fields(&data, ["date", "message-id"]);
            if sub.add_date && !has_date {
                fields +=
                    &format!("Date: {}\r\n", mailgate_message::date::rfc5322_date(mailgate_message::date::now_unix()));
            }
            if sub.add_message_id && !has_id {
                fields += &format!("Message-ID: <{id}@{}>\r\n", self.config.server.hostname);
            }
            if !fields.is_empty() {
                tracing::debug!(queue_id = %id, added = %fields.trim_end(), "submission: header fields added");
                append_header(&mut data, fields.as_bytes());
                if let Some(h) = hold.as_mut() {
                    h.force_to(data.capacity());
                }
            }
        }
        envelope.body_8bit |= !data.is_ascii();
        // RFC 8601 §5: a field claiming our authserv-id did not come from us.
        let authserv_id = self.authserv_id();
        let forged = mailgate_auth::strip_ours(&mut data, &authserv_id);
        if forged > 0 {
            tracing::info!(queue_id = %id, forged, "removed Authentication-Results fields claiming our authserv-id");
        }
        let data = Arc::new(data);
        if let Some(auth) = &origin.auth {
            auth.lock().await.set_message(data.clone());
        }
        let answer = match policy {
            Some(p) => p.on_data(&envelope, data.clone()).await,
            None => PolicyAnswer::default(),
        };
        let kept = self.apply(&mut envelope, data, &mut hold, answer).await;
        let data = match kept {
            Ok(Some(d)) => d,
            other => {
                if let Some(auth) = &origin.auth {
                    auth.lock().await.end_message();
                }
                return match other {
                    Ok(Some(_)) => unreachable!("handled above"),
                    Ok(None) => {
                        let why =
                            if envelope.recipients.is_empty() { Dropped::NoRecipients } else { Dropped::Discarded };
                        Ok(Outcome::Dropped { id, why })
                    }
                    Err(r) => Err(r),
                };
            }
        };
        let data = match self.rewrite(&mut envelope, data, &mut hold) {
            Ok(d) => d,
            Err(e) => {
                if let Some(auth) = &origin.auth {
                    auth.lock().await.end_message();
                }
                tracing::warn!(queue_id = %id, "refused: {e}");
                return Err(e);
            }
        };
        let data = self.mark(origin, &authserv_id, data).await;
        let data = self.signing.sign(&envelope, origin, data).await;
        let mut data = self.signing.seal(&envelope, origin, data).await;
        data.shrink_to_fit();
        if let Some(h) = hold.as_mut() {
            // From here only this copy is in memory.
            h.shrink_to(data.capacity());
        }
        Ok(Outcome::Kept(Prepared { envelope, data, hold }))
    }

    /// [`Cleanup::process`], then the spool write. Resolves once the message is durable; only
    /// then may the sender hear that it was accepted.
    pub async fn submit(
        &self,
        spool: &dyn Spool,
        msg: Incoming,
        origin: &Origin,
        policy: Option<&mut dyn DataPolicy>,
    ) -> Result<Outcome<Accepted>, Refusal> {
        let p = match self.process(msg, origin, policy).await? {
            Outcome::Kept(p) => p,
            Outcome::Dropped { id, why } => return Ok(Outcome::Dropped { id, why }),
        };
        let data = Arc::new(p.data);
        spool.store(&p.envelope, data.clone()).await?;
        Ok(Outcome::Kept(Accepted { envelope: p.envelope, data, hold: p.hold }))
    }

    fn authserv_id(&self) -> String {
        self.config.auth.authserv_id.clone().unwrap_or_else(|| self.config.server.hostname.clone())
    }

    /// Applies the policy's verdict and changes. `Ok(None)`: accepted and dropped.
    async fn apply(
        &self,
        env: &mut Envelope,
        data: Arc<Vec<u8>>,
        hold: &mut Option<Reservation>,
        answer: PolicyAnswer,
    ) -> Result<Option<Arc<Vec<u8>>>, Refusal> {
        let PolicyAnswer { verdict, changes } = answer;
        match verdict {
            Verdict::Continue => {}
            Verdict::Reply(r) => return Err(Refusal::Policy(r)),
            Verdict::Disconnect(r) => return Err(Refusal::PolicyDisconnect(r)),
            Verdict::Discard => return Ok(None),
            Verdict::Quarantine(reason) => env.quarantine = Some(reason),
        }
        for r in &changes.refused {
            tracing::warn!(queue_id = %env.id, "invalid policy change ignored: {r}");
        }
        let mut data = data;
        if !changes.content.is_empty() {
            let applied =
                mailgate_message::apply(&data, &changes.content, self.config.limits.max_message_size as usize);
            for (_, why) in &applied.refused {
                tracing::warn!(queue_id = %env.id, "invalid policy change ignored: {why}");
            }
            if let Some(d) = applied.data {
                // The edited copy lives beside the received one until the checks are done.
                if let Some(h) = hold.as_mut() {
                    h.force_to(h.size() + d.capacity());
                }
                data = Arc::new(d);
            }
        }
        if let Some(s) = changes.sender {
            env.sender = s;
        }
        env.recipients.retain(|r| !changes.remove_rcpts.iter().any(|x| x.eq_ignore_ascii_case(&r.address)));
        // Plugins add recipients up to the limit an SMTP client has (`limits.max_recipients`).
        let mut over = 0;
        for a in changes.add_rcpts {
            if !env.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(&a)) {
                if env.recipients.len() >= self.config.limits.max_recipients {
                    over += 1;
                    continue;
                }
                env.recipients.push(Recipient::pending(a));
            }
        }
        if over > 0 {
            tracing::warn!(queue_id = %env.id, over, max = self.config.limits.max_recipients, "recipients added by plugins beyond limits.max_recipients ignored");
        }
        if changes.route.is_some() {
            env.route = changes.route;
        }
        if env.recipients.is_empty() {
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// The address maps: canonical rewriting of the sender and each recipient, then alias
    /// expansion. An expanded recipient keeps its NOTIFY, and its original address as ORCPT
    /// when it had none (so a DSN names the address the sender used).
    fn rewrite(
        &self,
        env: &mut Envelope,
        data: Arc<Vec<u8>>,
        hold: &mut Option<Reservation>,
    ) -> Result<Arc<Vec<u8>>, Refusal> {
        let maps = &self.maps;
        if maps.is_empty() {
            return Ok(data);
        }
        if let Some(s) = (!env.sender.is_empty()).then(|| maps.canonical_sender(&env.sender)).flatten() {
            tracing::info!(queue_id = %env.id, from = %env.sender, to = %s, "sender rewritten");
            env.sender = s;
        }
        let mut out: Vec<Recipient> = Vec::with_capacity(env.recipients.len());
        let mut seen = std::collections::HashSet::new();
        for r in std::mem::take(&mut env.recipients) {
            let canonical = maps.canonical_recipient(&r.address);
            let targets = maps.expand(canonical.as_deref().unwrap_or(&r.address))?;
            if targets.len() == 1 && targets[0] == r.address {
                if seen.insert(r.address.to_lowercase()) {
                    out.push(r);
                }
                continue;
            }
            tracing::info!(queue_id = %env.id, rcpt = %r.address, to = %targets.join(","), "recipient rewritten");
            for t in targets {
                if seen.insert(t.to_lowercase()) {
                    let mut n = Recipient::pending(t);
                    n.notify = r.notify;
                    let kind = if r.address.is_ascii() { "rfc822" } else { "utf-8" };
                    n.orcpt = r.orcpt.clone().or_else(|| Some((kind.to_string(), r.address.clone())));
                    out.push(n);
                }
            }
        }
        if out.len() > MAX_EXPANSION.max(self.config.limits.max_recipients) {
            return Err(Refusal::Rewrite(MapError::TooWide(format!("{} recipients", out.len()))));
        }
        env.recipients = out;
        if !maps.rewrites_headers() {
            return Ok(data);
        }
        match maps.rewrite_headers(&data) {
            Some(d) => {
                if let Some(h) = hold.as_mut() {
                    h.force_to(h.size() + d.capacity());
                }
                Ok(Arc::new(d))
            }
            None => Ok(data),
        }
    }

    /// Puts our `Authentication-Results:` on top, from the session's results (and the checks
    /// the operator wants in every header). The received bytes are released here.
    async fn mark(&self, origin: &Origin, authserv_id: &str, data: Arc<Vec<u8>>) -> Vec<u8> {
        let Some(auth) = &origin.auth else {
            return Arc::try_unwrap(data).unwrap_or_else(|a| (*a).clone());
        };
        let cfg = &self.config.auth;
        let mut field = None;
        let mut session = auth.lock().await;
        if cfg.header {
            use mailgate_config::AuthCheck as C;
            let has = |c: C| cfg.always.contains(&c);
            let value = session
                .header(authserv_id, has(C::Spf), has(C::Dkim) || has(C::Dmarc) || has(C::Arc), has(C::Iprev))
                .await;
            field = value.map(|v| format!("Authentication-Results: {v}\r\n"));
        }
        // The checks are done: without that second owner the message is not copied here.
        session.end_message();
        drop(session);
        let mut data = Arc::try_unwrap(data).unwrap_or_else(|a| (*a).clone());
        if let Some(field) = field {
            prepend(&mut data, field.as_bytes());
        }
        data
    }
}

/// A new envelope for content the gateway writes or receives: pending recipients, no attempt.
pub fn envelope(id: String, sender: String, recipients: Vec<String>) -> Envelope {
    Envelope::new(id, sender, recipients)
}

/// Puts `field` in front of the message in place: the buffer grows (for a large one the
/// allocator remaps it without copying) and the content moves up, with no second copy.
pub fn prepend(data: &mut Vec<u8>, field: &[u8]) {
    let n = data.len();
    data.resize(n + field.len(), 0);
    data.copy_within(0..n, field.len());
    data[..field.len()].copy_from_slice(field);
}

/// Counts `Received:` fields in the header section.
/// Whether the header section has a field `name` (lower case), by its name at a line start.
/// Which of the fields `names` the header section has, in one pass over its line starts (a
/// line is only looked at as far as a name could reach: `Name`, optional blanks, `:`).
fn has_fields<const N: usize>(msg: &[u8], names: [&str; N]) -> [bool; N] {
    let head = &msg[..header_end(msg)];
    let mut found = [false; N];
    let mut at = 0;
    while at < head.len() {
        let end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |i| at + i);
        let line = &head[at..end];
        let first = line.first().map(u8::to_ascii_lowercase);
        for (i, name) in names.iter().enumerate() {
            let n = name.len();
            if !found[i]
                && first == name.as_bytes().first().copied()
                && line.len() > n
                && line[..n].eq_ignore_ascii_case(name.as_bytes())
                && line[n..].trim_ascii_start().first() == Some(&b':')
            {
                found[i] = true;
            }
        }
        at = end + 1;
    }
    found
}

/// Where the header section ends (the empty line's start, or the end of a message that has
/// no body).
fn header_end(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 0;
    }
    mailgate_message::blank_line(msg).map_or(msg.len(), |p| p + 2)
}

/// Adds fields (CRLF-terminated) at the end of the header section.
fn append_header(data: &mut Vec<u8>, fields: &[u8]) {
    let at = header_end(data);
    let at = if at == data.len() && !data.is_empty() && !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
        data.len()
    } else {
        at
    };
    data.splice(at..at, fields.iter().copied());
}

fn count_received(msg: &[u8]) -> usize {
    let end = mailgate_message::blank_line(msg).unwrap_or(msg.len());
    let head = &msg[..end];
    let line_starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', head).map(|i| i + 1));
    line_starts.filter(|&at| head.get(at..at + 9).is_some_and(|n| n.eq_ignore_ascii_case(b"received:"))).count()
}

/// Runs [`mailgate_message::inspect`]; hands the bytes back. `None` only if the blocking task
/// could not run to its end (the runtime is shutting down).
async fn check_structure(
    buf: Vec<u8>,
    limits: &mailgate_config::Limits,
) -> Option<(Vec<u8>, Result<mailgate_message::Structure, MessageError>)> {
    let limits = mailgate_message::MessageLimits::from_config(limits);
    if buf.len() <= INLINE_CHECK {
        let r = mailgate_message::inspect(&buf, &limits);
        return Some((buf, r));
    }
    tokio::task::spawn_blocking(move || {
        let r = mailgate_message::inspect(&buf, &limits);
        (buf, r)
    })
    .await
    .ok()
}

/// RFC 3848 / RFC 6531 protocol name for `Received: … with`: S for TLS, A for an
/// authenticated client.
pub fn protocol(esmtp: bool, smtputf8: bool, tls: bool, authenticated: bool) -> &'static str {
    match (smtputf8, esmtp, tls, authenticated) {
        (true, _, true, true) => "UTF8SMTPSA",
        (true, _, true, false) => "UTF8SMTPS",
        (true, _, false, true) => "UTF8SMTPA",
        (true, _, false, false) => "UTF8SMTP",
        (false, true, true, true) => "ESMTPSA",
        (false, true, true, false) => "ESMTPS",
        (false, true, false, true) => "ESMTPA",
        (false, true, false, false) => "ESMTP",
        (false, false, true, true) => "SMTPSA",
        (false, false, true, false) => "SMTPS",
        (false, false, false, true) => "SMTPA",
        (false, false, false, false) => "SMTP",
    }
}
