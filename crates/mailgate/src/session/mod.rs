//! One SMTP session: a state machine over the sans-IO parser, generic over its byte stream (a
//! TCP socket in the gateway, an in-memory duplex in the tests of `tests.rs`).
//!
//! A session is made of the connection's facts ([`Conn`]), its I/O ([`Io`]), the open mail
//! [`Transaction`], its [`Policy`] (plugin chain and authentication state) and the protocol
//! [`State`]: what the next input octets are — a command line, DATA content, the rest of a BDAT
//! chunk, or a SASL response. The loop in [`Session::serve`] feeds the input to the state; verb
//! handlers (one file per verb) answer and move the state, and never read the socket
//! themselves. Each scope has one reset: the transaction (`tx = None`), STARTTLS
//! ([`Session::reset_for_tls`]) and the session (a new one).

mod auth;
mod data;
mod ehlo;
mod io;
mod mail;
mod misc;
mod rcpt;
mod starttls;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mailgate_config::Role;
use mailgate_smtp::reply::codes;
use mailgate_smtp::{Address, Command, Enhanced, LineError, LineEvent, MailParams, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::plugins::wit_envelope;
use crate::server::{Generation, Shared};
use mailgate_plugin_host::bindings::types::{self, ConnectionInfo};
use mailgate_plugin_host::{Decision, SessionChain};

pub(crate) use io::{Interrupt, Io};

/// The byte streams a session runs over.
pub trait SessionIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionIo for T {}

/// What the loop does after a command.
pub(crate) enum Next {
    Continue,
    /// Send what is buffered, then close.
    Close,
}

/// What the next input octets are.
pub(crate) enum State {
    /// A command line.
    Command,
    /// DATA content, up to `<CRLF>.<CRLF>`.
    Data(data::Chunks),
    /// The rest of a BDAT chunk.
    Bdat(data::BdatChunk),
    /// The client's answer to a SASL challenge.
    Sasl(auth::Sasl),
}

/// A mail transaction: from MAIL to the end of DATA/BDAT LAST (or RSET).
pub(crate) struct Transaction {
    /// `None` is the null reverse path.
    pub from: Option<Address>,
    pub params: MailParams,
    pub rcpts: Vec<Address>,
    /// Each recipient's parameters (NOTIFY, ORCPT), in the order of `rcpts`.
    pub rcpt_params: Vec<mailgate_smtp::RcptParams>,
    /// BDAT in progress: the chunks so far.
    pub bdat: Option<data::Chunks>,
    /// The pipeline the first accepted recipient chose; every recipient must share it.
    pub pipeline: Option<String>,
    /// The recipients are VERP return paths: the content is a bounce to read, not to queue.
    pub returns: bool,
}

/// The facts of a connection: fixed at accept, then TLS, HELO and AUTH as they happen.
pub(crate) struct Conn {
    /// Session id, as in the logs; plugins see it too.
    pub sid: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `peer` and `local`'s addresses as text, made once: plugins are given them at every hook
    /// (formatting both took ~1 600 instructions a call, ~10 000 a message with five plugins).
    pub(crate) ip_text: (String, String),
    /// Listener name, for logs.
    pub listener: Arc<str>,
    /// The listener's role: decides STARTTLS/AUTH requirements.
    pub role: Role,
    /// The listener's pipeline (connection stages, and recipients of no listed domain).
    pub pipeline: String,
    /// TLS version and cipher once TLS is active.
    pub tls: Option<(String, String)>,
    /// The authenticated identity, once AUTH succeeded.
    pub user: Option<String>,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// EHLO (true) or HELO (false): decides the `with` of `Received:`.
    pub esmtp: bool,
    /// The client may relay to any domain (trusted network).
    pub trusted: bool,
    /// What `info` made last: made again only when a fact it holds changed (a session asks at
    /// every hook; making it took ~1 000 instructions and six allocations).
    info: Option<Arc<ConnectionInfo>>,
}

impl Conn {
    /// What plugins know about this connection.
    pub fn info(&mut self) -> Arc<ConnectionInfo> {
        if let Some(info) = &self.info {
            let tls = self.tls.as_ref().map(|(v, c)| (v.as_str(), c.as_str()));
            if info.helo == self.helo
                && info.authenticated_as == self.user
                && info.trusted == self.trusted
                && info.tls.as_ref().map(|t| (t.version.as_str(), t.cipher.as_str())) == tls
            {
                return info.clone();
            }
        }
        let info = Arc::new(self.make_info());
        self.info = Some(info.clone());
        info
    }

    fn make_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            session_id: self.sid.clone(),
            client_ip: self.ip_text.0.clone(),
            client_port: self.peer.port(),
            local_ip: self.ip_text.1.clone(),
            local_port: self.local.port(),
            listener: self.listener.to_string(),
            tls: self
                .tls
                .as_ref()
                .map(|(version, cipher)| types::TlsInfo { version: version.clone(), cipher: cipher.clone() }),
            helo: self.helo.clone(),
            authenticated_as: self.user.clone(),
            trusted: self.trusted,
        }
    }
}

/// The session's policy state: its plugin instances (and with them the shared score) and its
/// authentication session. Made new at the start and after STARTTLS.
pub(crate) struct Policy {
    /// This session's plugin instances (`None`: no plugins configured).
    pub chain: Option<SessionChain>,
    /// SPF/DKIM/DMARC/ARC/iprev of this session, computed when first asked (shared with the
    /// plugins and the cleanup stage).
    pub auth: mailgate_cleanup::SharedAuth,
}

impl Policy {
    fn new(generation: &Generation, conn: &Conn) -> Policy {
        let auth =
            Arc::new(tokio::sync::Mutex::new(mailgate_auth::AuthSession::new(generation.auth.clone(), conn.peer.ip())));
        let chain = generation.plugins.as_ref().map(|p| {
            let mut c = p.session(&conn.sid, &conn.pipeline);
            c.set_auth(auth.clone());
            c
        });
        Policy { chain, auth }
    }

    /// The session (or its plaintext part) is over: the plugin instances that can forget it
    /// wait for another.
    async fn end(self) {
        if let Some(chain) = self.chain {
            chain.end().await;
        }
    }
}

/// The facts of an accepted connection a session starts from.
pub struct Accepted {
    pub sid: String,
    /// The client, canonical (an IPv4-mapped address is its IPv4 address).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: Arc<str>,
    pub role: Role,
    pub pipeline: String,
    /// Its place in the slot table: progress marks, and the signal to make room.
    pub slot: Arc<crate::slots::Slot>,
    /// Who the client already is: the local user of a unix-socket submission (`None` for TCP
    /// clients, who may AUTH).
    pub user: Option<String>,
}

pub(crate) struct Session<S> {
    pub conn: Conn,
    io: Io<S>,
    pub tx: Option<Transaction>,
    pub policy: Policy,
    state: State,
    pub shared: Arc<Shared>,
    /// The configuration generation this session started with (a reload does not change it).
    pub generation: Arc<Generation>,
    /// That generation's configuration.
    pub config: Arc<mailgate_config::Config>,
    /// Bad commands so far; too many closes the session.
    errors: usize,
}

impl<S: SessionIo> Session<S> {
    pub fn new(accepted: Accepted, stream: S, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Session<S> {
        let Accepted { sid, peer, local, listener, role, pipeline, slot, user } = accepted;
        let generation = shared.current();
        let config = generation.config.clone();
        let conn = Conn {
            sid,
            peer,
            local,
            ip_text: (mailgate_smtp::ip_text(peer.ip()), mailgate_smtp::ip_text(local.ip())),
            listener,
            role,
            pipeline,
            tls: None,
            user,
            helo: None,
            esmtp: false,
            trusted: config.is_trusted(peer.ip()),
            info: None,
        };
        let policy = Policy::new(&generation, &conn);
        let io = Io::new(stream, config.limits.command_line, stop, slot);
        Session { conn, io, tx: None, policy, state: State::Command, shared, generation, config, errors: 0 }
    }

    /// RFC 3207 §4.2: after STARTTLS the session forgets everything the client said before —
    /// the SMTP state, and the policy state built on it: plugin instances (whatever they
    /// remembered: the plaintext session ends for them), the shared score, the
    /// authentication session.
    pub(crate) async fn reset_for_tls(&mut self) {
        self.conn.helo = None;
        self.conn.esmtp = false;
        self.conn.user = None;
        self.tx = None;
        let old = std::mem::replace(&mut self.policy, Policy::new(&self.generation, &self.conn));
        old.end().await;
    }

    pub fn reply(&mut self, r: Reply) {
        self.io.reply(r);
    }

    pub async fn run(mut self) {
        self.serve_all().await;
        let Session { io, policy, .. } = self;
        // The client has its last reply; close before the plugins are told.
        drop(io);
        policy.end().await;
    }

    async fn serve_all(&mut self) {
        tracing::info!(listener = %self.conn.listener, trusted = self.conn.trusted, "connected");
        if self.conn.role == Role::Submissions {
            // Implicit TLS (RFC 8314): the handshake comes before the greeting.
            if let Err(e) = self.handshake().await {
                tracing::info!("TLS handshake failed: {e}");
                return;
            }
        }
        if self.connect_policy().await.is_err() {
            tracing::info!("refused at connect by policy");
            let _ = self.io.flush(self.config.timeouts.command).await;
            return;
        }
        let greeting = Reply::plain(220, format!("{} ESMTP mailgate", self.config.server.hostname));
        self.reply(greeting);
        let result = self.serve().await;
        if matches!(self.state, State::Data(_) | State::Bdat(_)) && result.is_ok() {
            tracing::info!("client went away during message content; nothing was accepted");
        }
        match result {
            Ok(()) => tracing::info!("disconnected"),
            Err(e) => {
                let (reply, reason) = match Interrupt::of(&e) {
                    Some(why) => (Some(why.reply()), Some(why.reason())),
                    None if e.kind() == std::io::ErrorKind::TimedOut => (Some(codes::timeout()), Some("timeout")),
                    None => (None, None),
                };
                if let Some(reason) = reason.filter(|r| *r != "shutdown") {
                    metrics::counter!("mailgate_sessions_closed_total", "reason" => reason).increment(1);
                }
                match reply {
                    Some(r) => {
                        self.reply(r);
                        let _ = self.io.flush(self.config.timeouts.command).await;
                        tracing::info!("closed: {e}");
                    }
                    None => tracing::info!("connection error: {e}"),
                }
            }
        }
    }

    /// The connect stage of the plugins (at the start, and again after STARTTLS). `Err` once
    /// the refusal is queued.
    async fn connect_policy(&mut self) -> Result<(), Next> {
        let Some(chain) = self.policy.chain.as_mut() else { return Ok(()) };
        let decision = chain.on_connect(&self.conn.info()).await;
        self.enforce(decision)
    }

    /// Feeds the input to the state until it needs more, flushes the replies, waits for
    /// input; until the client quits, the session is closed, or an [`Interrupt`] ends it.
    async fn serve(&mut self) -> std::io::Result<()> {
        let cmd_timeout = self.config.timeouts.command;
        // When the command line being waited for began: the timeout is for the whole line,
        // however slowly it trickles in.
        let mut line_since = Instant::now();
        loop {
            let mut completed = false;
            loop {
                match self.step().await? {
                    Step::NeedMore => break,
                    Step::Done => completed = true,
                    Step::Close => {
                        self.io.flush(cmd_timeout).await?;
                        return Ok(());
                    }
                }
            }
            self.io.flush(cmd_timeout).await?;
            if self.io.stopping() && self.tx.is_none() && matches!(self.state, State::Command) {
                self.reply(codes::shutting_down());
                self.io.flush(cmd_timeout).await?;
                return Ok(());
            }
            if completed || self.io.pending().is_empty() {
                line_since = Instant::now();
            }
            let idle = self.tx.is_none();
            let more = match &self.state {
                State::Data(c) => {
                    let (started, received) = c.progress();
                    self.io.fill_content(&self.config, started, received, idle).await?
                }
                State::Bdat(b) => {
                    let (started, received) = b.progress();
                    self.io.fill_content(&self.config, started, received, idle).await?
                }
                State::Command | State::Sasl(_) => {
                    let left = cmd_timeout.saturating_sub(line_since.elapsed());
                    if left.is_zero() {
                        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "command line timeout"));
                    }
                    self.io.fill(left, idle).await?
                }
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// One step of the state machine on the input received so far.
    async fn step(&mut self) -> std::io::Result<Step> {
        let next = match std::mem::replace(&mut self.state, State::Command) {
            State::Command => {
                let (ev, used) = self.io.next_line();
                match ev {
                    LineEvent::NeedMore => {
                        self.io.consume(used);
                        return Ok(Step::NeedMore);
                    }
                    LineEvent::Line(line) => {
                        let parsed = Command::parse(line);
                        self.io.consume(used);
                        self.io.progressed();
                        match parsed {
                            Ok(cmd) => self.command(cmd).await?,
                            Err(reply) => self.bad_command(reply),
                        }
                    }
                    LineEvent::Error(e) => {
                        self.io.consume(used);
                        tracing::info!("refused command line: {e:?}");
                        self.bad_command(match e {
                            LineError::TooLong => codes::line_too_long(),
                            LineError::BareLf | LineError::BareCr => codes::bare_line_ending(),
                        })
                    }
                }
            }
            State::Data(chunks) => match self.data_input(chunks).await {
                Some(next) => next,
                None => return Ok(Step::NeedMore),
            },
            State::Bdat(chunk) => match self.bdat_input(chunk).await {
                Some(next) => next,
                None => return Ok(Step::NeedMore),
            },
            State::Sasl(sasl) => match self.sasl_input(sasl).await {
                Some(next) => next,
                None => return Ok(Step::NeedMore),
            },
        };
        Ok(match next {
            Next::Continue => Step::Done,
            Next::Close => Step::Close,
        })
    }

    fn bad_command(&mut self, reply: Reply) -> Next {
        self.errors += 1;
        self.reply(reply);
        if self.errors >= self.config.limits.max_errors {
            self.reply(Reply::new(421, Enhanced(4, 7, 0), "Too many errors, closing connection"));
            return Next::Close;
        }
        Next::Continue
    }

    async fn command(&mut self, cmd: Command) -> std::io::Result<Next> {
        Ok(match cmd {
            Command::Ehlo(host) => self.ehlo(host, true).await,
            Command::Helo(host) => self.ehlo(host, false).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => self.rset(),
            Command::Noop => self.ok(),
            Command::Quit => self.quit(),
            Command::Vrfy(_) => self.vrfy(),
            Command::Expn(_) => self.expn(),
            Command::Help => self.help(),
            Command::StartTls => self.starttls().await?,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
        })
    }

    /// Applies a chain decision: `Ok` to go on, `Err(next)` once the refusal is queued.
    pub(crate) fn enforce(&mut self, d: Decision) -> Result<(), Next> {
        match d {
            Decision::Next | Decision::Accept => Ok(()),
            Decision::Reply(r) => {
                self.reply(r);
                Err(Next::Continue)
            }
            Decision::Disconnect(r) => {
                self.reply(r);
                Err(Next::Close)
            }
        }
    }
}

/// What one step did.
enum Step {
    /// Nothing more can be done before more input arrives.
    NeedMore,
    /// A command (or a message, or a chunk) was handled.
    Done,
    /// Close after flushing.
    Close,
}

/// The current transaction as plugins see it (built only when a plugin chain will see it).
pub(crate) fn tx_envelope(tx: &Option<Transaction>) -> types::Envelope {
    match tx {
        Some(tx) => wit_envelope(
            tx.from.as_ref().map_or("", |a| a.as_str()),
            tx.rcpts.iter().map(|r| r.to_string()).collect(),
            tx.params.body != mailgate_smtp::Body::SevenBit,
            tx.params.smtputf8,
            tx.params.size,
        ),
        None => wit_envelope("", vec![], false, false, None),
    }
}
