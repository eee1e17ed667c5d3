//! One SMTP session: the state machine over the sans-IO parser. Each verb is handled in its
//! own file; this one owns the I/O loop, pipelining and the per-session state.

mod auth;
mod data;
mod ehlo;
mod mail;
mod misc;
mod rcpt;
mod starttls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailgate_config::Role;
use mailgate_smtp::reply::codes;
use mailgate_smtp::{Address, Command, Enhanced, LineError, LineEvent, LineReader, MailParams, Reply};
use tokio::sync::watch;

use crate::plugins::wit_envelope;
use crate::server::Shared;
use crate::tls::Stream;
use mailgate_plugin_host::bindings::types::{self, ConnectionInfo};
use mailgate_plugin_host::{Decision, SessionChain};

/// What the loop does after a command.
pub(crate) enum Next {
    Continue,
    /// Send what is buffered, then close.
    Close,
}

/// A mail transaction: from MAIL to the end of DATA/BDAT LAST (or RSET).
pub(crate) struct Transaction {
    /// `None` is the null reverse path.
    pub from: Option<Address>,
    pub params: MailParams,
    pub rcpts: Vec<Address>,
    /// BDAT in progress: the chunks so far.
    pub bdat: Option<data::Chunks>,
    /// The pipeline the first accepted recipient chose; every recipient must share it.
    pub pipeline: Option<String>,
}

pub(crate) struct Session {
    /// Session id, as in the logs; plugins see it too.
    pub sid: String,
    stream: Stream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Listener name, for logs.
    pub listener: Arc<str>,
    /// The listener's role: decides STARTTLS/AUTH requirements.
    pub role: Role,
    /// The listener's pipeline (connection stages, and recipients of no listed domain).
    pub pipeline: String,
    /// TLS version and cipher once TLS is active.
    pub tls: Option<(String, String)>,
    /// The authenticated identity, once AUTH succeeded.
    pub auth_user: Option<String>,
    pub shared: Arc<Shared>,
    /// The configuration generation this session started with (a reload does not change it).
    pub config: Arc<mailgate_config::Config>,
    /// That generation's plugins.
    pub plugins: Option<Arc<mailgate_plugin_host::Plugins>>,
    /// Read but not yet consumed input.
    rbuf: Vec<u8>,
    /// Start of the unconsumed part of `rbuf`.
    rpos: usize,
    /// Replies not yet sent (pipelining: flushed before we wait for input).
    wbuf: Vec<u8>,
    lines: LineReader,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// EHLO (true) or HELO (false): decides the `with` of `Received:`.
    pub esmtp: bool,
    /// The client may relay to any domain (trusted network).
    pub trusted: bool,
    pub tx: Option<Transaction>,
    /// This session's plugin instances (created on first use).
    pub chain: Option<SessionChain>,
    /// SPF/DKIM/DMARC/ARC/iprev of this session, computed when first asked (shared with the
    /// plugins).
    pub auth: mailgate_plugin_host::host::SharedAuth,
    /// The generation's signing identities and authenticator.
    pub generation: Arc<crate::server::Generation>,
    /// Bad commands so far; too many closes the session.
    errors: usize,
    stop: watch::Receiver<bool>,
    /// This session's slot: marked on progress, notified to make room.
    slot: Arc<crate::slots::Slot>,
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
}

/// Why a read ended without input, other than the client: typed, so that the session picks
/// its reply by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Interrupt {
    #[error("closed to make room for another client")]
    Shed,
    #[error("the gateway is shutting down")]
    Shutdown,
    #[error("content arrives slower than limits.min_data_rate")]
    TooSlow,
}

impl Interrupt {
    fn of(e: &std::io::Error) -> Option<Interrupt> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Interrupt>()).copied()
    }

    fn reply(self) -> Reply {
        match self {
            Interrupt::Shed => Reply::new(421, Enhanced(4, 7, 0), "Closing idle connection, the server is busy"),
            Interrupt::Shutdown => codes::shutting_down(),
            Interrupt::TooSlow => Reply::new(421, Enhanced(4, 4, 2), "Data transfer too slow, closing connection"),
        }
    }
}

/// Resolves once the gateway stops (never, if the sender is gone without stopping).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Session {
    pub fn new(
        conn: Accepted,
        stream: tokio::net::TcpStream,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Session {
        let Accepted { sid, peer, local, listener, role, pipeline, slot } = conn;
        let generation = shared.current();
        let (config, plugins) = (generation.config.clone(), generation.plugins.clone());
        let auth =
            Arc::new(tokio::sync::Mutex::new(mailgate_auth::AuthSession::new(generation.auth.clone(), peer.ip())));
        let trusted = config.is_trusted(peer.ip());
        let lines = LineReader::new(config.limits.command_line);
        let chain = plugins.as_ref().map(|p| {
            let mut c = p.session(&sid, &pipeline);
            c.set_auth(auth.clone());
            c
        });
        Session {
            sid,
            stream: Stream::Plain(stream),
            role,
            pipeline,
            tls: None,
            auth_user: None,
            peer,
            local,
            chain,
            auth,
            generation,
            listener,
            shared,
            config,
            plugins,
            rbuf: Vec::with_capacity(8192),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            lines,
            helo: None,
            esmtp: false,
            trusted,
            tx: None,
            errors: 0,
            stop,
            slot,
        }
    }

    /// New per-session policy state: plugin instances (and with them the shared score) and
    /// the authentication session — at the start, and after STARTTLS.
    pub(crate) fn new_policy(&mut self) {
        self.auth = Arc::new(tokio::sync::Mutex::new(mailgate_auth::AuthSession::new(
            self.generation.auth.clone(),
            self.peer.ip(),
        )));
        self.chain = self.plugins.as_ref().map(|p| {
            let mut c = p.session(&self.sid, &self.pipeline);
            c.set_auth(self.auth.clone());
            c
        });
    }

    pub fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.wbuf);
    }

    /// Sends the buffered replies. Bounded by the command timeout: a client that stops
    /// reading cannot hold the session (and its slot) forever.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let limit = self.config.timeouts.command;
            match tokio::time::timeout(limit, self.stream.write_all(&self.wbuf)).await {
                Ok(r) => r?,
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "client does not read")),
            }
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more input into `rbuf`. `Ok(false)` on EOF. Ends early, with an [`Interrupt`],
    /// when the session is asked to make room, or when the gateway stops while no transaction
    /// is open (a transaction in progress may finish).
    async fn fill(&mut self, limit: Duration) -> std::io::Result<bool> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 64 << 10 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 << 10);
        }
        let idle = self.tx.is_none();
        tokio::select! {
            r = tokio::time::timeout(limit, self.stream.read_buf(&mut self.rbuf)) => match r {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout")),
            },
            _ = self.slot.shed.notified() => Err(std::io::Error::other(Interrupt::Shed)),
            _ = stopped(&mut self.stop), if idle => Err(std::io::Error::other(Interrupt::Shutdown)),
        }
    }

    pub async fn run(mut self) {
        tracing::info!(listener = %self.listener, trusted = self.trusted, "connected");
        if self.role == Role::Submissions {
            // Implicit TLS (RFC 8314): the handshake comes before the greeting.
            if let Err(e) = self.handshake().await {
                tracing::info!("TLS handshake failed: {e}");
                return;
            }
        }
        if let Some(mut chain) = self.chain.take() {
            let decision = chain.on_connect(&self.conn_info()).await;
            self.chain = Some(chain);
            if let Err(_next) = self.enforce(decision) {
                tracing::info!("refused at connect by policy");
                let _ = self.flush().await;
                return;
            }
        }
        let greeting = Reply::plain(220, format!("{} ESMTP mailgate", self.config.server.hostname));
        self.reply(greeting);
        match self.serve().await {
            Ok(()) => tracing::info!("disconnected"),
            Err(e) if Interrupt::of(&e).is_some() => {
                let why = Interrupt::of(&e).unwrap_or(Interrupt::Shutdown);
                if why == Interrupt::Shed {
                    metrics::counter!("mailgate_sessions_closed_total", "reason" => "shed").increment(1);
                } else if why == Interrupt::TooSlow {
                    metrics::counter!("mailgate_sessions_closed_total", "reason" => "slow").increment(1);
                }
                self.reply(why.reply());
                let _ = self.flush().await;
                tracing::info!("closed: {why}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                metrics::counter!("mailgate_sessions_closed_total", "reason" => "timeout").increment(1);
                self.reply(codes::timeout());
                let _ = self.flush().await;
                tracing::info!("closed after timeout");
            }
            Err(e) => tracing::info!("connection error: {e}"),
        }
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let cmd_timeout = self.config.timeouts.command;
        // When the command line being waited for began: the timeout is for the whole line,
        // however slowly it trickles in.
        let mut line_since = std::time::Instant::now();
        loop {
            let mut completed = false;
            // Answer every complete command already received (pipelining), then flush.
            loop {
                let (ev, used) = self.lines.next(&self.rbuf[self.rpos..]);
                let next = match ev {
                    LineEvent::NeedMore => {
                        self.rpos += used;
                        break;
                    }
                    LineEvent::Line(line) => {
                        let parsed = Command::parse(line);
                        self.rpos += used;
                        completed = true;
                        self.slot.progressed();
                        match parsed {
                            Ok(cmd) => self.command(cmd).await?,
                            Err(reply) => self.bad_command(reply),
                        }
                    }
                    LineEvent::Error(e) => {
                        self.rpos += used;
                        tracing::info!("refused command line: {e:?}");
                        self.bad_command(match e {
                            LineError::TooLong => codes::line_too_long(),
                            LineError::BareLf | LineError::BareCr => codes::bare_line_ending(),
                        })
                    }
                };
                if let Next::Close = next {
                    self.flush().await?;
                    return Ok(());
                }
            }
            self.flush().await?;
            if *self.stop.borrow() && self.tx.is_none() {
                self.reply(codes::shutting_down());
                self.flush().await?;
                return Ok(());
            }
            if completed || self.pending_input().is_empty() {
                line_since = std::time::Instant::now();
            }
            let left = cmd_timeout.saturating_sub(line_since.elapsed());
            if left.is_zero() {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "command line timeout"));
            }
            if !self.fill(left).await? {
                return Ok(());
            }
        }
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
            Command::Rcpt { to, .. } => self.rcpt(to).await,
            Command::Data => self.data().await?,
            Command::Bdat { size, last } => self.bdat(size, last).await?,
            Command::Rset => self.rset(),
            Command::Noop => self.ok(),
            Command::Quit => self.quit(),
            Command::Vrfy(_) => self.vrfy(),
            Command::Expn(_) => self.expn(),
            Command::Help => self.help(),
            Command::StartTls => self.starttls().await?,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
        })
    }

    /// What plugins know about this connection.
    pub(crate) fn conn_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            session_id: self.sid.clone(),
            client_ip: self.peer.ip().to_string(),
            client_port: self.peer.port(),
            local_ip: self.local.ip().to_string(),
            local_port: self.local.port(),
            listener: self.listener.to_string(),
            tls: self
                .tls
                .as_ref()
                .map(|(version, cipher)| types::TlsInfo { version: version.clone(), cipher: cipher.clone() }),
            helo: self.helo.clone(),
            authenticated_as: self.auth_user.clone(),
            trusted: self.trusted,
        }
    }

    /// The current transaction as plugins see it.
    pub(crate) fn wit_envelope(&self) -> types::Envelope {
        match &self.tx {
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

    /// Reads more input during DATA/BDAT content: within the data-block timeout, and at no
    /// less than `limits.min_data_rate` for the transfer as a whole once `timeouts.data_grace`
    /// is over (`received` octets since `started`). A transfer keeping that rate counts as
    /// progress for load shedding; a trickle does not.
    pub(crate) async fn fill_content(&mut self, started: std::time::Instant, received: u64) -> std::io::Result<bool> {
        let (block, grace, rate) =
            (self.config.timeouts.data_block, self.config.timeouts.data_grace, self.config.limits.min_data_rate);
        if rate == 0 {
            return self.fill(block).await;
        }
        let allowed = grace + Duration::from_secs_f64(received as f64 / rate as f64);
        let elapsed = started.elapsed();
        if elapsed > allowed {
            return Err(std::io::Error::other(Interrupt::TooSlow));
        }
        if received as f64 >= elapsed.as_secs_f64() * rate as f64 {
            self.slot.progressed();
        }
        let left = allowed - elapsed;
        match self.fill(block.min(left)).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && left < block => {
                Err(std::io::Error::other(Interrupt::TooSlow))
            }
            r => r,
        }
    }

    /// Drops all unconsumed input; returns how many octets that was.
    pub(crate) fn discard_input(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.rbuf.clear();
        self.rpos = 0;
        n
    }

    /// The unconsumed input.
    pub(crate) fn pending_input(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Sends buffered replies now (before a long wait, e.g. the 354).
    pub(crate) async fn flush_now(&mut self) -> std::io::Result<()> {
        self.flush().await
    }
}
