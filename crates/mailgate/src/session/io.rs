//! A session's I/O: the stream (plain or TLS, over any byte stream), the input not yet
//! consumed, the replies not yet sent, and the waits — each bounded by a timeout, and each
//! ended early when the session is asked to make room or the gateway stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Enhanced, LineEvent, LineReader, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::SessionIo;

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
    pub fn of(e: &std::io::Error) -> Option<Interrupt> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Interrupt>()).copied()
    }

    pub fn reply(self) -> Reply {
        match self {
            Interrupt::Shed => Reply::new(421, Enhanced(4, 7, 0), "Closing idle connection, the server is busy"),
            Interrupt::Shutdown => codes::shutting_down(),
            Interrupt::TooSlow => Reply::new(421, Enhanced(4, 4, 2), "Data transfer too slow, closing connection"),
        }
    }

    /// The `reason` label of `mailgate_sessions_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Interrupt::Shed => "shed",
            Interrupt::Shutdown => "shutdown",
            Interrupt::TooSlow => "slow",
        }
    }
}

/// The stream, plain or TLS.
enum Stream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// Only while a handshake has taken the stream.
    Gone,
}

pub(crate) struct Io<S> {
    stream: Stream<S>,
    /// Read but not yet consumed input.
    rbuf: Vec<u8>,
    /// Start of the unconsumed part of `rbuf`.
    rpos: usize,
    /// Replies not yet sent (pipelining: flushed before the session waits for input).
    wbuf: Vec<u8>,
    lines: LineReader,
    stop: watch::Receiver<bool>,
    /// This session's slot: marked on progress, notified to make room.
    slot: Arc<crate::slots::Slot>,
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

impl<S: SessionIo> Io<S> {
    pub fn new(stream: S, max_line: usize, stop: watch::Receiver<bool>, slot: Arc<crate::slots::Slot>) -> Io<S> {
        Io {
            stream: Stream::Plain(stream),
            rbuf: Vec::with_capacity(8192),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            lines: LineReader::new(max_line),
            stop,
            slot,
        }
    }

    pub fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.wbuf);
    }

    /// Writes a reply's wire form straight into the output buffer (a reply made of parts
    /// that need not become a [`Reply`] first).
    pub fn reply_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.wbuf);
    }

    /// Whether the gateway is stopping.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// The session did something worth keeping its slot for.
    pub fn progressed(&self) {
        self.slot.progressed();
    }

    /// The next command line (or SASL response) in the input, and the octets it used.
    pub fn next_line(&mut self) -> (LineEvent<'_>, usize) {
        self.lines.next(&self.rbuf[self.rpos..])
    }

    /// The longest line accepted from now on (SASL responses may be longer than commands).
    pub fn set_max_line(&mut self, n: usize) {
        self.lines.set_max_len(n);
    }

    /// Sends the buffered replies, within `limit`: a client that stops reading cannot hold
    /// the session (and its slot) forever.
    pub async fn flush(&mut self, limit: Duration) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(&self.wbuf).await,
                Stream::Tls(s) => {
                    s.write_all(&self.wbuf).await?;
                    s.flush().await
                }
                Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        match tokio::time::timeout(limit, write).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "client does not read")),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Reads more input. `Ok(false)` on EOF. Ends early, with an [`Interrupt`], when the
    /// session is asked to make room, or when the gateway stops while the session is `idle`
    /// (no transaction open: a transaction in progress may finish).
    pub async fn fill(&mut self, limit: Duration, idle: bool) -> std::io::Result<bool> {
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
        let read = async {
            match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.rbuf).await,
                Stream::Tls(s) => s.read_buf(&mut self.rbuf).await,
                Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        tokio::select! {
            r = tokio::time::timeout(limit, read) => match r {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout")),
            },
            _ = self.slot.shed.notified() => Err(std::io::Error::other(Interrupt::Shed)),
            _ = stopped(&mut self.stop), if idle => Err(std::io::Error::other(Interrupt::Shutdown)),
        }
    }

    /// Reads more message content: within the data-block timeout, and at no less than
    /// `limits.min_data_rate` for the transfer as a whole once `timeouts.data_grace` is over
    /// (`received` octets since `started`). A transfer keeping that rate counts as progress
    /// for load shedding; a trickle does not.
    pub async fn fill_content(
        &mut self,
        config: &mailgate_config::Config,
        started: Instant,
        received: u64,
        idle: bool,
    ) -> std::io::Result<bool> {
        let (block, grace, rate) =
            (config.timeouts.data_block, config.timeouts.data_grace, config.limits.min_data_rate);
        if rate == 0 {
            return self.fill(block, idle).await;
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
        match self.fill(block.min(left), idle).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && left < block => {
                Err(std::io::Error::other(Interrupt::TooSlow))
            }
            r => r,
        }
    }

    /// Drops all unconsumed input; returns how many octets that was.
    pub fn discard_input(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.rbuf.clear();
        self.rpos = 0;
        n
    }

    /// The unconsumed input.
    pub fn pending(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Runs the server handshake on the plain stream; returns the TLS version and cipher.
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor, limit: Duration) -> std::io::Result<(String, String)> {
        let Stream::Plain(plain) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(std::io::Error::other("TLS is already active"));
        };
        let tls = tokio::time::timeout(limit, acceptor.accept(plain))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version().map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1.")).unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| mailgate_smtp::iana_cipher_name(&format!("{:?}", c.suite())))
            .unwrap_or_default();
        self.stream = Stream::Tls(Box::new(tls));
        Ok((version, cipher))
    }
}
