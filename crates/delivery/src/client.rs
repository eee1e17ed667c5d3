//! The outbound SMTP client: one connection, its extensions, and transactions on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mailgate_config::{AuthMechanism, ClientAuth, Downgrade8bit};
use mailgate_smtp::{xtext_encode, Enhanced, Extensions, RcptParams, Reply, ReplyParser, Ret};
use mailgate_tlsrpt::ResultType;
use rustls::client::danger::ServerCertVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use crate::tls::{self, Policy, PolicyKind};
use crate::{Handoff, Outbound, RcptOutcome, Settings, Status};

/// Where a connection goes: a TCP address or a unix socket (LMTP to a local agent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `message` made 7-bit for a hop without 8BITMIME, as `mode` allows; why not otherwise (the
/// end of a sentence that begins "the message").
fn seven_bit(message: &[u8], mode: Downgrade8bit) -> Result<Vec<u8>, String> {
    match mode {
        Downgrade8bit::Never => return Err("has 8-bit content (delivery.downgrade_8bit = \"never\")".into()),
        Downgrade8bit::Unsigned if mailgate_message::downgrade::is_signed(message) => {
            return Err("is signed (DKIM or ARC): re-encoding it would break the signature".into())
        }
        _ => {}
    }
    mailgate_message::to_seven_bit(message).map_err(|e| format!("has 8-bit content that cannot be made 7-bit: {e}"))
}

/// How to talk to a next hop: its TLS policy, credentials, and SMTP or LMTP.
#[derive(Clone, Copy)]
pub struct Hop<'a> {
    pub policy: &'a Policy,
    /// Log in after STARTTLS (an authenticated smarthost).
    pub auth: Option<&'a ClientAuth>,
    /// LHLO and one reply per recipient after the data (RFC 2033).
    pub lmtp: bool,
    /// The message is REQUIRETLS: a server without STARTTLS fails it (5.7.30) rather than
    /// deferring it.
    pub requiretls: bool,
    /// The source addresses to connect from (none: the system picks).
    pub sources: Option<&'a crate::source::Rotation>,
    /// Checks the certificate of an opportunistic session after the fact, for a TLS report
    /// (an MTA-STS policy in `testing` mode): what `enforce` would have refused is noted in
    /// `Conn::tls_problem`, the session goes on.
    pub audit: Option<&'a Arc<dyn ServerCertVerifier>>,
}

/// A TLS problem of one session, in TLS-RPT's terms (RFC 8460 §4.3), for the recipient
/// domain's report.
#[derive(Debug, Clone)]
pub struct TlsProblem {
    pub result: ResultType,
    /// The error, in words.
    pub detail: String,
    /// The address the session left from.
    pub local: Option<std::net::IpAddr>,
}

impl TlsProblem {
    pub(crate) fn new(result: ResultType, detail: impl Into<String>) -> TlsProblem {
        TlsProblem { result, detail: detail.into(), local: None }
    }

    /// The same, of a session that left from `local`.
    fn at(mut self, local: Option<std::net::IpAddr>) -> TlsProblem {
        self.local = local;
        self
    }

    /// A certificate or handshake error, classified.
    fn of_tls(e: &rustls::Error) -> TlsProblem {
        TlsProblem::new(Self::classify(e), crate::tls::rustls_error(e))
    }

    fn classify(e: &rustls::Error) -> ResultType {
        use rustls::CertificateError as C;
        if let rustls::Error::InvalidCertificate(C::Other(o)) = e {
            // DANE-TA: what was wrong with the chain under the trust anchor.
            if let Some(cause) = o.0.downcast_ref::<crate::dane::Mismatch>().and_then(|m| m.cause()) {
                return Self::classify(cause);
            }
        }
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => ResultType::CertificateHostMismatch,
                C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
                C::UnknownIssuer | C::BadSignature | C::NotValidYet | C::NotValidYetContext { .. } => {
                    ResultType::CertificateNotTrusted
                }
                _ => ResultType::ValidationFailure,
            },
            _ => ResultType::ValidationFailure,
        }
    }

    fn of_io(e: &std::io::Error) -> TlsProblem {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => TlsProblem::of_tls(r),
            None => TlsProblem::new(ResultType::ValidationFailure, e.to_string()),
        }
    }
}

/// Why no connection could be had: the outcome for the recipients, and the TLS problem
/// when that was the reason (for the domain's TLS report).
pub struct Refused {
    pub outcome: RcptOutcome,
    pub tls: Option<TlsProblem>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Why a transaction did not produce per-recipient outcomes.
pub enum TxError {
    /// The connection was closed before it answered anything (e.g. an idle pooled one).
    Stale,
    /// The host failed us: try the next one. The outcome says why.
    Host(RcptOutcome),
}

/// An open SMTP connection after EHLO (and STARTTLS, when done).
pub struct Conn {
    io: Box<dyn Io>,
    /// Bytes read but not yet parsed.
    rbuf: Vec<u8>,
    pub ext: Extensions,
    pub host: String,
    pub addr: Peer,
    /// LMTP: LHLO, and a reply per accepted recipient after the data.
    lmtp: bool,
    /// `Some("TLSv1_3 ...")` once STARTTLS succeeded.
    pub tls: Option<String>,
    /// A reply went missing (RSET or an end-of-data timed out): replies may now be out of step,
    /// so the connection must not be reused.
    broken: bool,
    /// The block buffer content is dot-stuffed into, kept for the connection's next message (a
    /// fresh 64 KiB per message costs page faults).
    wbuf: Vec<u8>,
    /// What an audited session (see `Hop::audit`) found wrong with its TLS: no STARTTLS, a
    /// failed handshake retried in plaintext, or a certificate `enforce` would refuse.
    pub tls_problem: Option<TlsProblem>,
    /// The address this connection left from.
    pub local_ip: Option<std::net::IpAddr>,
    /// Transactions started on it (for `max_messages_per_connection`).
    pub messages: u32,
}

fn deferred(reply: Reply, host: &str) -> RcptOutcome {
    RcptOutcome::new(Status::Deferred, reply, Some(host))
}

impl Conn {
    /// Connects, reads the greeting, EHLO (HELO fallback) and STARTTLS per policy. An
    /// opportunistic handshake that fails is retried once in plaintext (RFC 7435).
    pub async fn open(host: &str, addr: &Peer, hop: Hop<'_>, s: &Settings) -> Result<Conn, Refused> {
        match Self::open_once(host, addr, hop, s, true).await {
            Err(OpenError::Handshake(e, problem)) if hop.policy.kind == PolicyKind::Opportunistic => {
                tracing::info!(%host, %addr, "STARTTLS handshake failed ({e}); retrying without TLS");
                let mut c = Self::open_once(host, addr, hop, s, false).await.map_err(|e| e.refused(host))?;
                c.tls_problem = Some(problem);
                Ok(c)
            }
            r => r.map_err(|e| e.refused(host)),
        }
    }

    /// The connection, and the EHLO name of the source address it left from (if a pool's).
    async fn connect(
        addr: &Peer,
        s: &Settings,
        sources: Option<&crate::source::Rotation>,
    ) -> Result<(Box<dyn Io>, Option<String>, Option<std::net::IpAddr>), OpenError> {
        let fail = |why: String| OpenError::Fail(Reply::new(451, Enhanced(4, 4, 1), format!("connect to {addr}{why}")));
        if let (Peer::Tcp(a), Some(rot)) = (addr, sources) {
            for (src, helo) in rot.candidates(a.ip()) {
                let sock = match src {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                };
                let bound = sock.and_then(|sock| sock.bind(SocketAddr::new(src, 0)).map(|()| sock));
                let sock = match bound {
                    Ok(sock) => sock,
                    Err(e) => {
                        tracing::warn!(pool = %rot.name, source = %src, "source address could not be bound, skipped: {e}");
                        continue;
                    }
                };
                let tcp = timeout(s.connect_timeout, sock.connect(*a))
                    .await
                    .map_err(|_| fail(format!(" from {src} timed out")))?
                    .map_err(|e| fail(format!(" from {src}: {e}")))?;
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().ok().map(|a| a.ip());
                return Ok((Box::new(tcp), helo, local));
            }
            return Err(OpenError::Fail(Reply::new(
                451,
                Enhanced(4, 4, 0),
                format!("no source address of pool {} could be used for {a}", rot.name),
            )));
        }
        let (io, local): (Box<dyn Io>, _) = match addr {
            Peer::Tcp(a) => {
                let tcp = timeout(s.connect_timeout, TcpStream::connect(a))
                    .await
                    .map_err(|_| fail(" timed out".into()))?
                    .map_err(|e| fail(format!(": {e}")))?;
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().ok().map(|a| a.ip());
                (Box::new(tcp), local)
            }
            Peer::Unix(p) => (
                Box::new(
                    timeout(s.connect_timeout, UnixStream::connect(p))
                        .await
                        .map_err(|_| fail(" timed out".into()))?
                        .map_err(|e| fail(format!(": {e}")))?,
                ),
                None,
            ),
        };
        Ok((io, None, local))
    }

    async fn open_once(host: &str, addr: &Peer, hop: Hop<'_>, s: &Settings, try_tls: bool) -> Result<Conn, OpenError> {
        let policy = hop.policy;
        let (io, helo, local_ip) = Self::connect(addr, s, hop.sources).await?;
        // A pool's source address greets with its own name.
        let with_helo;
        let s = match helo {
            Some(h) => {
                with_helo = Settings { helo_name: h, ..s.clone() };
                &with_helo
            }
            None => s,
        };
        let mut c = Conn {
            io,
            rbuf: Vec::with_capacity(4096),
            ext: Extensions::default(),
            host: host.into(),
            addr: addr.clone(),
            lmtp: hop.lmtp,
            tls: None,
            broken: false,
            wbuf: Vec::new(),
            tls_problem: None,
            local_ip,
            messages: 0,
        };
        let greet = c.read_reply(s.command_timeout).await.map_err(OpenError::Fail)?;
        if greet.code != 220 {
            return Err(OpenError::Fail(greet));
        }
        c.ehlo(s).await.map_err(OpenError::Fail)?;
        let want_tls = policy.kind != PolicyKind::None && try_tls;
        if want_tls && c.ext.starttls {
            c.write(b"STARTTLS\r\n").await.map_err(OpenError::Fail)?;
            let r = c.read_reply(s.command_timeout).await.map_err(OpenError::Fail)?;
            if r.code != 220 {
                let problem =
                    TlsProblem::new(ResultType::StartTlsNotSupported, format!("STARTTLS refused: {r}")).at(c.local_ip);
                if policy.kind.mandatory() {
                    return Err(OpenError::Tls(
                        Reply::new(451, Enhanced(4, 7, 5), format!("TLS required but STARTTLS refused: {r}")),
                        problem,
                    ));
                }
                return Err(OpenError::Handshake(format!("STARTTLS refused: {r}"), problem));
            }
            let ip = match addr {
                Peer::Tcp(a) => Some(a.ip().to_string()),
                Peer::Unix(_) => None,
            };
            let name =
                tls::server_name(host).or_else(|| ip.as_deref().and_then(tls::server_name)).ok_or_else(|| {
                    OpenError::Fail(Reply::new(451, Enhanced(4, 7, 5), format!("bad TLS server name {host}")))
                })?;
            let connector = policy.connector.clone().expect("a TLS policy has a connector");
            let io = std::mem::replace(&mut c.io, Box::new(tokio::io::duplex(1).0));
            let stream = timeout(s.command_timeout, connector.connect(name.clone(), io))
                .await
                .map_err(|_| {
                    let why = "TLS handshake timed out";
                    OpenError::Handshake(why.into(), TlsProblem::new(ResultType::ValidationFailure, why).at(local_ip))
                })?
                .map_err(|e| {
                    let problem = TlsProblem::of_io(&e).at(local_ip);
                    if policy.kind.mandatory() {
                        let why = format!("TLS required but handshake failed: {}", tls::handshake_error(&e));
                        OpenError::Tls(Reply::new(451, Enhanced(4, 7, 5), why), problem)
                    } else {
                        OpenError::Handshake(e.to_string(), problem)
                    }
                })?;
            let (_, session) = stream.get_ref();
            if let Some(audit) = hop.audit {
                c.tls_problem =
                    audit_certificate(audit.as_ref(), session.peer_certificates(), &name).map(|p| p.at(local_ip));
            }
            c.tls = Some(format!(
                "{:?} {:?}",
                session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                session
                    .negotiated_cipher_suite()
                    .map(|cs| mailgate_smtp::iana_cipher_name(&format!("{:?}", cs.suite())))
                    .unwrap_or_default()
            ));
            c.io = Box::new(stream);
            c.rbuf.clear();
            c.ehlo(s).await.map_err(OpenError::Fail)?;
        } else if policy.kind.mandatory() && hop.requiretls && !hop.lmtp {
            // RFC 8689 §4.2.1: this hop cannot carry it; the next MX may, otherwise it bounces.
            return Err(OpenError::Fail(Reply::new(
                550,
                Enhanced(5, 7, 30),
                "REQUIRETLS: the next hop does not offer STARTTLS",
            )));
        } else if policy.kind.mandatory() {
            let why = "TLS required but the server does not offer STARTTLS";
            return Err(OpenError::Tls(
                Reply::new(451, Enhanced(4, 7, 5), why),
                TlsProblem::new(ResultType::StartTlsNotSupported, why).at(c.local_ip),
            ));
        } else if want_tls && hop.audit.is_some() {
            // No STARTTLS where a policy in `testing` mode wants it: delivered, reported.
            c.tls_problem = Some(
                TlsProblem::new(ResultType::StartTlsNotSupported, "the server does not offer STARTTLS").at(c.local_ip),
            );
        }
        if let Some(auth) = hop.auth {
            c.login(auth, s).await.map_err(OpenError::Fail)?;
        }
        Ok(c)
    }

    /// SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) or LOGIN, only inside TLS. Every failure,
    /// the server's 535 included, defers: a wrong password is the operator's to fix, and the
    /// mail must wait for it, not bounce.
    async fn login(&mut self, auth: &ClientAuth, s: &Settings) -> Result<(), Reply> {
        let defer = |text: String| Reply::new(451, Enhanced(4, 7, 0), text);
        if self.tls.is_none() {
            return Err(defer(format!("not sending credentials to {} without TLS", self.addr)));
        }
        let offered = |m: &str| self.ext.auth.iter().any(|x| x == m);
        let mech = match auth.mechanism {
            Some(m) => m,
            None if offered("PLAIN") => AuthMechanism::Plain,
            None => AuthMechanism::Login,
        };
        let name = if mech == AuthMechanism::Plain { "PLAIN" } else { "LOGIN" };
        if !offered(name) {
            return Err(defer(format!("{} does not offer AUTH {name}", self.host)));
        }
        let password = auth.password().map_err(|e| defer(format!("smarthost credentials: {e}")))?;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let steps: Vec<String> = match mech {
            AuthMechanism::Plain => {
                vec![format!("AUTH PLAIN {}", b64(format!("\0{}\0{password}", auth.username).as_bytes()))]
            }
            AuthMechanism::Login => {
                vec!["AUTH LOGIN".into(), b64(auth.username.as_bytes()), b64(password.as_bytes())]
            }
        };
        for (i, step) in steps.iter().enumerate() {
            self.write(format!("{step}\r\n").as_bytes()).await?;
            let r = self.read_reply(s.command_timeout).await?;
            let last = i + 1 == steps.len();
            let expected = if last { 235 } else { 334 };
            if r.code != expected {
                if r.code == 334 {
                    // A challenge we have no answer for: cancel the exchange (RFC 4954 §4).
                    let _ = self.write(b"*\r\n").await;
                    self.broken = true;
                }
                return Err(defer(format!("{} refused AUTH {name} as {}: {r}", self.host, auth.username)));
            }
        }
        Ok(())
    }

    async fn ehlo(&mut self, s: &Settings) -> Result<(), Reply> {
        if self.lmtp {
            // RFC 2033 §4.1: LHLO, and no HELO to fall back to.
            self.write(format!("LHLO {}\r\n", s.helo_name).as_bytes()).await?;
            let r = self.read_reply(s.command_timeout).await?;
            if r.code != 250 {
                return Err(r);
            }
            self.ext = Extensions::from_reply(&r);
            return Ok(());
        }
        self.write(format!("EHLO {}\r\n", s.helo_name).as_bytes()).await?;
        let r = self.read_reply(s.command_timeout).await?;
        if r.code == 250 {
            self.ext = Extensions::from_reply(&r);
            return Ok(());
        }
        self.write(format!("HELO {}\r\n", s.helo_name).as_bytes()).await?;
        let r = self.read_reply(s.command_timeout).await?;
        if r.code != 250 {
            return Err(r);
        }
        self.ext = Extensions::default();
        Ok(())
    }

    async fn write(&mut self, b: &[u8]) -> Result<(), Reply> {
        self.io
            .write_all(b)
            .await
            .map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("write to {}: {e}", self.addr)))?;
        self.io.flush().await.map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("write to {}: {e}", self.addr)))
    }

    /// Reads one whole reply. Errors are reply texts (4xx: the attempt is deferred).
    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, Reply> {
        let mut parser = ReplyParser::default();
        // Disjoint borrows: the reading future uses the buffer and the stream, errors the name.
        let (rbuf, io, addr) = (&mut self.rbuf, &mut self.io, &self.addr);
        let fut = async {
            loop {
                while let Some(nl) = memchr::memchr(b'\n', rbuf) {
                    let line = &rbuf[..nl];
                    let fed = parser.feed(line.strip_suffix(b"\r").unwrap_or(line));
                    rbuf.drain(..=nl);
                    match fed {
                        Ok(Some(r)) => return Ok(r),
                        Ok(None) => {}
                        Err(e) => return Err(Reply::new(451, Enhanced(4, 5, 0), format!("{addr}: {e}"))),
                    }
                }
                if rbuf.len() > 64 << 10 {
                    return Err(Reply::new(451, Enhanced(4, 5, 0), format!("{addr}: reply line too long")));
                }
                // Into the buffer's spare room: no zeroed chunk per read.
                rbuf.reserve(4096);
                let n = io
                    .read_buf(rbuf)
                    .await
                    .map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("read from {addr}: {e}")))?;
                if n == 0 {
                    return Err(Reply::new(451, Enhanced(4, 4, 2), format!("{addr} closed the connection")));
                }
            }
        };
        timeout(limit, fut)
            .await
            .map_err(|_| Reply::new(451, Enhanced(4, 4, 2), format!("timeout waiting for {addr}")))?
    }

    /// One mail transaction for all of `msg`'s recipients. With PIPELINING, MAIL, every RCPT
    /// and DATA go in one write (RFC 2920).
    pub async fn transaction(&mut self, msg: &Outbound<'_>, s: &Settings) -> Result<Vec<RcptOutcome>, TxError> {
        self.messages = self.messages.saturating_add(1);
        let host = self.host.clone();
        let n = msg.recipients.len();
        let all = |o: RcptOutcome| Ok(vec![o; n]);
        // RFC 6531 §3.4: a message sent with SMTPUTF8 needs it on the next hop only when an
        // address or a header field is not ASCII; otherwise it goes as any other message.
        let needs_utf8 = msg.smtputf8
            && (!msg.sender.is_ascii()
                || msg.recipients.iter().any(|r| !r.is_ascii())
                || !header_section(msg.data).is_ascii());
        // Only some recipients need it: the others go in a transaction of their own, and only
        // the UTF-8 addresses fail (RFC 6531 §3.2).
        if needs_utf8
            && !self.ext.smtputf8
            && msg.sender.is_ascii()
            && header_section(msg.data).is_ascii()
            && msg.recipients.iter().any(|r| r.is_ascii())
        {
            let keep: Vec<usize> = (0..n).filter(|i| msg.recipients[*i].is_ascii()).collect();
            let recipients: Vec<String> = keep.iter().map(|i| msg.recipients[*i].clone()).collect();
            let rcpt_params: Vec<RcptParams> = match msg.rcpt_params.is_empty() {
                true => vec![],
                false => keep.iter().map(|i| msg.rcpt_params[*i].clone()).collect(),
            };
            let ascii = Outbound { recipients: &recipients, rcpt_params: &rcpt_params, ..*msg };
            let sent = Box::pin(self.transaction(&ascii, s)).await?;
            let refused = RcptOutcome::new(
                Status::Failed,
                Reply::new(553, Enhanced(5, 6, 7), "next hop does not support SMTPUTF8"),
                Some(&host),
            );
            let mut out = vec![refused; n];
            for (k, i) in keep.into_iter().enumerate() {
                out[i] = sent[k].clone();
            }
            return Ok(out);
        }
        if needs_utf8 && !self.ext.smtputf8 {
            return all(RcptOutcome::new(
                Status::Failed,
                Reply::new(553, Enhanced(5, 6, 7), "next hop does not support SMTPUTF8"),
                Some(&host),
            ));
        }
        // RFC 6152: 8-bit content only to a server that announced 8BITMIME. A peer that does
        // not may strip the eighth bit, and 0x8D 0x8A 0xAE 0x8D 0x8A then reads as the end of
        // data: the bodies are re-encoded (quoted-printable, base64) when that is allowed and
        // possible, else nothing is sent and the sender gets a DSN.
        let converted;
        let data: &[u8] = if !self.ext.eightbitmime && !msg.data.is_ascii() {
            match seven_bit(msg.data, s.downgrade_8bit) {
                Ok(d) => {
                    tracing::info!(queue_id = msg.id, %host, "8-bit content re-encoded for a next hop without 8BITMIME");
                    converted = d;
                    &converted
                }
                Err(why) => {
                    return all(RcptOutcome::new(
                        Status::Failed,
                        Reply::new(
                            554,
                            Enhanced(5, 6, 3),
                            format!("next hop does not support 8BITMIME and the message {why}"),
                        ),
                        Some(&host),
                    ))
                }
            }
        } else {
            msg.data
        };
        // RFC 8689 §4.2.1: a REQUIRETLS message is relayed only to a hop that takes REQUIRETLS
        // over the verified TLS this connection has (its policy was `required`). Another MX
        // may; when none does, the recipients fail with 5.7.30 instead of waiting for days.
        // An LMTP agent delivers into the mailbox: there is no further hop to protect.
        if msg.requiretls && !self.lmtp && (!self.ext.requiretls || self.tls.is_none()) {
            return Err(TxError::Host(RcptOutcome::new(
                Status::Failed,
                Reply::new(550, Enhanced(5, 7, 30), "REQUIRETLS not supported by the next hop"),
                Some(&host),
            )));
        }
        if let Some(limit) = self.ext.size.filter(|l| *l > 0) {
            if data.len() as u64 > limit {
                return all(RcptOutcome::new(
                    Status::Failed,
                    Reply::new(552, Enhanced(5, 3, 4), format!("message larger than the next hop's limit ({limit})")),
                    Some(&host),
                ));
            }
        }
        let mut mail = String::with_capacity(64 + msg.sender.len());
        mail.push_str("MAIL FROM:<");
        mail.push_str(msg.sender);
        mail.push('>');
        if self.ext.size.is_some() {
            mail.push_str(" SIZE=");
            mail.push_str(&data.len().to_string());
        }
        if msg.body_8bit && self.ext.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 && self.ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if msg.requiretls && self.ext.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        // RFC 3461 §5.2: the DSN parameters go on to a hop that does DSN; one that does not
        // gets none, and a success is reported by us as "relayed".
        if self.ext.dsn {
            dsn_mail_params(&mut mail, msg);
        }
        mail.push_str("\r\n");
        let mut cmds = vec![mail];
        cmds.extend(msg.recipients.iter().enumerate().map(|(i, r)| {
            let mut rcpt = String::with_capacity(16 + r.len());
            rcpt.push_str("RCPT TO:<");
            rcpt.push_str(r);
            rcpt.push('>');
            if let Some(p) = msg.rcpt_params.get(i).filter(|_| self.ext.dsn) {
                dsn_rcpt_params(&mut rcpt, p);
            }
            rcpt.push_str("\r\n");
            rcpt
        }));
        // RFC 3030 with RFC 2920: a message that fits in one write goes as `BDAT <size> LAST`
        // right behind the RCPTs — one write and one round trip for the whole transaction
        // instead of two, and no dot-stuffing. A larger one keeps DATA, so that its content is
        // not sent before the next hop has taken a recipient.
        let bdat = !self.lmtp
            && self.ext.chunking
            && self.ext.pipelining
            && data.len() <= BDAT_INLINE_MAX
            && data.ends_with(b"\r\n");
        cmds.push(if bdat { format!("BDAT {} LAST\r\n", data.len()) } else { "DATA\r\n".into() });

        // Send and collect the replies, pipelined or in lock-step.
        let mut replies: Vec<Reply> = Vec::with_capacity(cmds.len());
        let stale = |e: Reply, first: bool| if first { TxError::Stale } else { TxError::Host(deferred(e, &host)) };
        if self.ext.pipelining {
            let mut batch = std::mem::take(&mut self.wbuf);
            batch.clear();
            for c in &cmds {
                batch.extend_from_slice(c.as_bytes());
            }
            if bdat {
                batch.extend_from_slice(data);
            }
            let written = self.write(&batch).await;
            self.wbuf = batch;
            written.map_err(|e| stale(e, true))?;
            for i in 0..cmds.len() {
                // The reply to BDAT LAST is the reply to the whole message: it may take as
                // long as the end of DATA.
                let limit = if bdat && i + 1 == cmds.len() { s.data_timeout } else { s.command_timeout };
                let r = self.read_reply(limit).await.map_err(|e| stale(e, i == 0))?;
                replies.push(r);
            }
            if bdat {
                return Ok(self.after_bdat(&replies, n, &host, s).await);
            }
        } else {
            for (i, c) in cmds.iter().enumerate() {
                let last = i + 1 == cmds.len();
                if last && !replies[1..].iter().any(|r| r.is_positive()) {
                    break; // no recipient accepted: no DATA
                }
                self.write(c.as_bytes()).await.map_err(|e| stale(e, i == 0))?;
                let r = self.read_reply(s.command_timeout).await.map_err(|e| stale(e, i == 0))?;
                let stop = i == 0 && !r.is_positive();
                replies.push(r);
                if stop {
                    break;
                }
            }
        }
        let outcome = |r: &Reply| RcptOutcome::of(r.clone(), Some(&host));
        let mail_reply = &replies[0];
        if !mail_reply.is_positive() {
            if self.ext.pipelining && replies.get(n + 1).is_some_and(|r| r.code == 354) {
                self.end_empty_data(s).await;
            }
            self.rset(s).await;
            return all(outcome(mail_reply));
        }
        let rcpt_replies = &replies[1..replies.len().min(n + 1)];
        let accepted: Vec<usize> = (0..n).filter(|i| rcpt_replies.get(*i).is_some_and(|r| r.is_positive())).collect();
        let mut out: Vec<RcptOutcome> = (0..n)
            .map(|i| match rcpt_replies.get(i) {
                Some(r) if !r.is_positive() => outcome(r),
                _ => RcptOutcome::new(Status::Deferred, Reply::new(451, Enhanced(4, 4, 2), "no reply"), Some(&host)),
            })
            .collect();
        let data_reply = replies.get(n + 1);
        if accepted.is_empty() {
            if data_reply.is_some_and(|r| r.code == 354) {
                // A server that said 354 with no recipient: end the empty message.
                self.end_empty_data(s).await;
            }
            self.rset(s).await;
            return Ok(out);
        }
        match data_reply {
            Some(r) if r.code == 354 => {}
            Some(r) => {
                // A positive reply other than 354 to DATA is out of protocol: never "delivered".
                let o = if r.is_positive() {
                    RcptOutcome::new(
                        Status::Deferred,
                        Reply::new(451, Enhanced(4, 5, 0), format!("unexpected reply to DATA: {r}")),
                        Some(&host),
                    )
                } else {
                    outcome(r)
                };
                self.broken |= r.is_positive();
                for &i in &accepted {
                    out[i] = o.clone();
                }
                self.rset(s).await;
                return Ok(out);
            }
            None => unreachable!("DATA was sent because a recipient was accepted"),
        }
        self.write_stuffed(data).await.map_err(|e| TxError::Host(deferred(e, &host)))?;
        if self.lmtp {
            // RFC 2033 §4.2: one reply per accepted recipient, in order; the agent delivers
            // into the mailbox, so a success is final. A reply that never comes leaves the
            // rest deferred (and the connection unusable).
            for (k, &i) in accepted.iter().enumerate() {
                match self.read_reply(s.data_timeout).await {
                    Ok(r) => out[i] = outcome(&r).handed(Handoff::Final),
                    Err(e) => {
                        self.broken = true;
                        if k == 0 {
                            return Err(TxError::Host(deferred(e, &host)));
                        }
                        for &j in &accepted[k..] {
                            out[j] = deferred(e.clone(), &host);
                        }
                        break;
                    }
                }
            }
            return Ok(out);
        }
        let fin = self.read_reply(s.data_timeout).await.map_err(|e| TxError::Host(deferred(e, &host)))?;
        let handoff = if self.ext.dsn { Handoff::RelayedWithDsn } else { Handoff::Relayed };
        for &i in &accepted {
            out[i] = outcome(&fin).handed(handoff);
        }
        Ok(out)
    }

    /// The outcomes of a pipelined `MAIL`, `RCPT`s and `BDAT … LAST` (`replies` holds all
    /// `n + 2` replies): the reply to BDAT is every accepted recipient's. The content went
    /// out whatever the recipients' replies were (the server reads and drops it).
    async fn after_bdat(&mut self, replies: &[Reply], n: usize, host: &str, s: &Settings) -> Vec<RcptOutcome> {
        let outcome = |r: &Reply| RcptOutcome::of(r.clone(), Some(host));
        let (mail, rcpts, fin) = (&replies[0], &replies[1..=n], &replies[n + 1]);
        if !mail.is_positive() {
            self.rset(s).await;
            return vec![outcome(mail); n];
        }
        let mut out: Vec<RcptOutcome> = rcpts.iter().map(outcome).collect();
        let accepted = rcpts.iter().filter(|r| r.is_positive()).count();
        if accepted == 0 {
            self.rset(s).await;
            return out;
        }
        let o = match fin.code / 100 {
            2 => outcome(fin).handed(if self.ext.dsn { Handoff::RelayedWithDsn } else { Handoff::Relayed }),
            // A 3xx to BDAT is out of protocol: never "delivered", and the session is unusable.
            3 => {
                self.broken = true;
                RcptOutcome::new(
                    Status::Deferred,
                    Reply::new(451, Enhanced(4, 5, 0), format!("unexpected reply to BDAT: {fin}")),
                    Some(host),
                )
            }
            _ => outcome(fin),
        };
        for (i, r) in rcpts.iter().enumerate() {
            if r.is_positive() {
                out[i] = o.clone();
            }
        }
        if !fin.is_positive() {
            // RFC 3030 §2: a failed BDAT fails the transaction; start the next one clean.
            self.rset(s).await;
        }
        out
    }

    /// Asks whether the next hop takes `rcpt` without sending anything (a recipient callout):
    /// `MAIL FROM:<>`, `RCPT TO:<rcpt>`, `RSET`. `Err` means the connection failed us.
    pub async fn probe(&mut self, rcpt: &str, s: &Settings) -> Result<Reply, TxError> {
        let host = self.host.clone();
        let cmds = format!("MAIL FROM:<>\r\nRCPT TO:<{rcpt}>\r\n");
        let stale = |e: Reply, first: bool| if first { TxError::Stale } else { TxError::Host(deferred(e, &host)) };
        let reply = if self.ext.pipelining {
            self.write(cmds.as_bytes()).await.map_err(|e| stale(e, true))?;
            let mail = self.read_reply(s.command_timeout).await.map_err(|e| stale(e, true))?;
            let rcpt = self.read_reply(s.command_timeout).await.map_err(|e| stale(e, false))?;
            if mail.is_positive() {
                rcpt
            } else {
                mail
            }
        } else {
            let (mail_cmd, rcpt_cmd) = cmds.split_at(cmds.find('\n').map_or(0, |i| i + 1));
            self.write(mail_cmd.as_bytes()).await.map_err(|e| stale(e, true))?;
            let mail = self.read_reply(s.command_timeout).await.map_err(|e| stale(e, true))?;
            if mail.is_positive() {
                self.write(rcpt_cmd.as_bytes()).await.map_err(|e| stale(e, false))?;
                self.read_reply(s.command_timeout).await.map_err(|e| stale(e, false))?
            } else {
                mail
            }
        };
        self.rset(s).await;
        Ok(reply)
    }

    /// Sends the content dot-stuffed, with the end marker, a block at a time: no stuffed copy
    /// of the whole message is made (a 9 MB message costs 64 KiB here, not 9 MB more).
    async fn write_stuffed(&mut self, data: &[u8]) -> Result<(), Reply> {
        let mut stuffer = Stuffer::new(data);
        let mut block = std::mem::take(&mut self.wbuf);
        block.clear();
        block.reserve(STUFF_BLOCK.min(data.len() + data.len() / 32 + 8));
        let result = self.stuff_into(&mut stuffer, &mut block).await;
        self.wbuf = block;
        result
    }

    async fn stuff_into(&mut self, stuffer: &mut Stuffer<'_>, block: &mut Vec<u8>) -> Result<(), Reply> {
        while stuffer.next_block(block, STUFF_BLOCK) {
            self.io
                .write_all(block)
                .await
                .map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("write to {}: {e}", self.addr)))?;
            block.clear();
        }
        self.io
            .write_all(block)
            .await
            .map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("write to {}: {e}", self.addr)))?;
        self.io.flush().await.map_err(|e| Reply::new(451, Enhanced(4, 4, 2), format!("write to {}: {e}", self.addr)))
    }

    async fn rset(&mut self, s: &Settings) {
        let ok = self.write(b"RSET\r\n").await.is_ok() && self.read_reply(s.command_timeout).await.is_ok();
        self.broken |= !ok;
    }

    /// Ends a DATA the server accepted without any recipient (an empty message).
    async fn end_empty_data(&mut self, s: &Settings) {
        let ok = self.write(b".\r\n").await.is_ok() && self.read_reply(s.data_timeout).await.is_ok();
        self.broken |= !ok;
    }

    /// Whether the connection may serve another transaction.
    pub fn reusable(&self) -> bool {
        !self.broken && self.rbuf.is_empty()
    }

    /// For an idle connection: whether it is still open with nothing waiting to be read. A
    /// peer that closed it (EOF), broke it (an error) or sent something unasked for makes it
    /// useless. Does not wait: the read is polled once.
    pub fn idle_and_open(&mut self) -> bool {
        use std::task::{Context, Waker};
        let mut buf = [0u8; 64];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::Pin::new(&mut self.io).poll_read(&mut cx, &mut rb).is_pending()
    }

    /// Ends the session politely: QUIT, its reply (or `limit` passing), then the close.
    pub async fn quit(mut self, limit: Duration) {
        let _ = timeout(limit, async {
            if self.write(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply(limit).await;
            }
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// ` RET=… ENVID=…` for MAIL FROM (RFC 3461 §4.3, §4.4).
fn dsn_mail_params(mail: &mut String, msg: &Outbound<'_>) {
    match msg.dsn_ret {
        Some(Ret::Full) => mail.push_str(" RET=FULL"),
        Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
        None => {}
    }
    if let Some(id) = msg.envid {
        mail.push_str(" ENVID=");
        mail.push_str(&xtext_encode(id));
    }
}

/// ` NOTIFY=… ORCPT=…` for RCPT TO (RFC 3461 §4.1, §4.2).
fn dsn_rcpt_params(rcpt: &mut String, p: &RcptParams) {
    if let Some(n) = p.notify {
        let words: Vec<&str> = [(n.success, "SUCCESS"), (n.failure, "FAILURE"), (n.delay, "DELAY")]
            .into_iter()
            .filter_map(|(on, w)| on.then_some(w))
            .collect();
        rcpt.push_str(" NOTIFY=");
        rcpt.push_str(&if words.is_empty() { "NEVER".to_string() } else { words.join(",") });
    }
    if let Some((kind, addr)) = &p.orcpt {
        rcpt.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
    }
}

/// Why opening failed: a handshake failure can fall back to plaintext, anything else cannot.
enum OpenError {
    /// An opportunistic handshake that failed (retried in plaintext).
    Handshake(String, TlsProblem),
    /// The reply that ended it: the host's own (a 5xx greeting keeps its class) or ours.
    Fail(Reply),
    /// TLS was mandatory and could not be had.
    Tls(Reply, TlsProblem),
}

impl OpenError {
    fn refused(self, host: &str) -> Refused {
        match self {
            OpenError::Handshake(e, problem) => Refused {
                outcome: deferred(Reply::new(451, Enhanced(4, 7, 5), format!("TLS handshake failed: {e}")), host),
                tls: Some(problem),
            },
            // A 5xx greeting or EHLO is still "try the next host", but keeps its class.
            OpenError::Fail(r) => Refused { outcome: RcptOutcome::of(r, Some(host)), tls: None },
            OpenError::Tls(r, problem) => Refused { outcome: RcptOutcome::of(r, Some(host)), tls: Some(problem) },
        }
    }
}

/// The certificate check `enforce` would have made, made after the handshake.
fn audit_certificate(
    verifier: &dyn ServerCertVerifier,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    name: &rustls::pki_types::ServerName<'static>,
) -> Option<TlsProblem> {
    let Some((leaf, rest)) = certs.and_then(|c| c.split_first()) else {
        return Some(TlsProblem::new(ResultType::CertificateNotTrusted, "no certificate"));
    };
    verifier
        .verify_server_cert(leaf, rest, name, &[], rustls::pki_types::UnixTime::now())
        .err()
        .map(|e| TlsProblem::of_tls(&e))
}

/// Octets of dot-stuffed content sent per write.
const STUFF_BLOCK: usize = 64 << 10;

/// The largest message sent as one pipelined `BDAT … LAST` with its envelope (RFC 3030): one
/// write of commands and content. Beyond it, DATA after the recipients' replies.
const BDAT_INLINE_MAX: usize = 64 << 10;

/// Dot-stuffs a CRLF message block by block (RFC 5321 §4.5.2) and appends the end marker.
pub struct Stuffer<'a> {
    rest: &'a [u8],
    at_line_start: bool,
    ended: bool,
}

impl<'a> Stuffer<'a> {
    pub fn new(data: &'a [u8]) -> Stuffer<'a> {
        Stuffer { rest: data, at_line_start: true, ended: false }
    }

    /// Appends the next stuffed part to `out`, stopping once it holds `max` octets or more (a
    /// line at most past it). `false` once everything, end marker included, is in `out`.
    pub fn next_block(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        while !self.rest.is_empty() && out.len() < max {
            if self.at_line_start && self.rest[0] == b'.' {
                out.push(b'.');
            }
            // Everything up to the next line that starts with a dot is copied as it is, within
            // the block's room (searched no further: a large message is sent in many blocks).
            let room = max.saturating_sub(out.len()).max(1);
            let window = &self.rest[..self.rest.len().min(room.saturating_add(1))];
            let take = memchr::memmem::find(window, b"\n.").map_or(window.len(), |i| i + 1).min(room);
            out.extend_from_slice(&self.rest[..take]);
            self.at_line_start = self.rest[take - 1] == b'\n';
            self.rest = &self.rest[take..];
        }
        if !self.rest.is_empty() {
            return true;
        }
        if !self.ended {
            if !self.at_line_start {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            self.ended = true;
        }
        false
    }
}

/// Dot-stuffs a CRLF message and appends the end marker, in one buffer (tests compare the
/// blockwise output with it).
#[cfg(test)]
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut s = Stuffer::new(data);
    while s.next_block(&mut out, usize::MAX) {}
    out
}

/// The header section of a message (up to its empty line; all of it when there is none).
fn header_section(data: &[u8]) -> &[u8] {
    if data.starts_with(b"\r\n") {
        return &[];
    }
    data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data, |i| &data[..i + 2])
}

#[cfg(test)]
mod tests {
    /// Dot-stuffing as RFC 5321 §4.5.2 says it, line by line (a line ends at LF).
    fn reference(data: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        for line in data.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !data.is_empty() && !data.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// Every block size against the line-by-line reference, for messages with dots at line
    /// starts and elsewhere, bare LFs, a last line without an end, and dot-only lines.
    #[test]
    fn stuffs_as_the_reference_at_every_block_size() {
        let messages: [&[u8]; 6] = [
            b"",
            b".",
            b"a\r\n.\r\n..\r\nb.c\r\n.d",
            b".start\n.bare lf\nx\n\n.\n",
            b"no end.\r\n.",
            b"line\r\n\r\n.\r\n\r\n..x\r\nlast\r\n",
        ];
        for msg in messages {
            let want = reference(msg);
            for max in 1..=want.len() + 2 {
                let mut s = super::Stuffer::new(msg);
                let (mut all, mut block) = (Vec::new(), Vec::new());
                loop {
                    let more = s.next_block(&mut block, max);
                    assert!(block.len() <= max + 6, "block of {} for max {max}", block.len()); // a dot and the end
                    all.extend_from_slice(&block);
                    block.clear();
                    if !more {
                        break;
                    }
                }
                assert_eq!(all, want, "{:?} in blocks of {max}", String::from_utf8_lossy(msg));
            }
        }
    }

    #[test]
    fn stuffs_in_blocks_as_in_one() {
        let mut msg = Vec::new();
        for i in 0..5000 {
            msg.extend_from_slice(if i % 7 == 0 { b".dot line\r\n" } else { b"plain line of text\r\n" });
        }
        msg.extend_from_slice(b".");
        let mut s = super::Stuffer::new(&msg);
        let (mut all, mut block, mut blocks) = (Vec::new(), Vec::new(), 0);
        while s.next_block(&mut block, 1000) {
            assert!(block.len() < 1000 + 30);
            all.extend_from_slice(&block);
            block.clear();
            blocks += 1;
        }
        all.extend_from_slice(&block);
        assert!(blocks > 50);
        assert_eq!(all, super::dot_stuff(&msg));
        assert_eq!(all, reference(&msg));
        assert!(all.ends_with(b"\r\n..\r\n.\r\n"));
    }

    #[test]
    fn dsn_parameters_in_wire_form() {
        use mailgate_smtp::{Notify, RcptParams, Ret};
        let params = [RcptParams {
            notify: Some(Notify { success: true, failure: false, delay: true }),
            orcpt: Some(("rfc822".into(), "a+b=c@x.test".into())),
        }];
        let rcpts = ["r@x.test".to_string()];
        let msg = crate::Outbound {
            id: "Q",
            sender: "s@x.test",
            recipients: &rcpts,
            data: b"",
            body_8bit: false,
            smtputf8: false,
            dsn_ret: Some(Ret::Hdrs),
            envid: Some("id with space+"),
            rcpt_params: &params,
            requiretls: false,
            max_per_connection: None,
        };
        let mut mail = String::new();
        super::dsn_mail_params(&mut mail, &msg);
        assert_eq!(mail, " RET=HDRS ENVID=id+20with+20space+2B");
        let mut rcpt = String::new();
        super::dsn_rcpt_params(&mut rcpt, &params[0]);
        assert_eq!(rcpt, " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb+3Dc@x.test");
        let mut never = String::new();
        super::dsn_rcpt_params(&mut never, &RcptParams { notify: Some(Notify::default()), orcpt: None });
        assert_eq!(never, " NOTIFY=NEVER");
    }

    #[test]
    fn stuffs_dots() {
        assert_eq!(super::dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(super::dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(super::dot_stuff(b""), b".\r\n");
    }
}
