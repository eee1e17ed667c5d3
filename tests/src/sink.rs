//! A real SMTP sink for tests: accepts connections on 127.0.0.1, speaks ESMTP with PIPELINING
//! and (optionally) STARTTLS with a self-signed rcgen certificate, answers RCPT and the final
//! dot with replies the test can change at any time, and records every message it accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::wait_for;

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// Whether the transaction ran inside STARTTLS.
    pub tls: bool,
    /// When the final dot was answered.
    pub at: std::time::Instant,
    /// Which connection (in accept order, from 1) carried it.
    pub connection: usize,
    /// Whether it came in BDAT chunks (RFC 3030) rather than after DATA.
    pub bdat: bool,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Default)]
struct State {
    /// Reply for RCPT per address (lower case); default `250 2.1.5 ok`.
    rcpt: HashMap<String, String>,
    /// Reply to the final dot; default `250 2.0.0 queued`.
    data: Option<String>,
    received: Vec<Received>,
    /// RCPT commands seen per address (attempt counting).
    rcpt_seen: HashMap<String, usize>,
    connections: usize,
    /// Connections open now, and the most ever open at once.
    open: usize,
    max_open: usize,
    /// EHLO leaves out 8BITMIME (a 7-bit next hop).
    no_8bitmime: bool,
    /// EHLO leaves out SMTPUTF8.
    no_smtputf8: bool,
    /// How long the reply to the final dot waits (a slow next hop).
    data_delay: Duration,
    /// Final dots seen (whether answered yet or not).
    data_ends: usize,
    /// QUIT commands seen.
    quits: usize,
    /// `Some((user, password))`: AUTH PLAIN/LOGIN is offered inside TLS only, and MAIL needs it.
    require_auth: Option<(String, String)>,
    /// Successful logins: (mechanism, user, inside TLS).
    logins: Vec<(String, String, bool)>,
    /// Failed AUTH attempts.
    auth_failures: usize,
    /// The name of each EHLO, in order.
    helos: Vec<String>,
    /// EHLO inside TLS offers REQUIRETLS (RFC 8689).
    requiretls: bool,
    /// The arguments of each MAIL FROM, in order.
    mail_args: Vec<String>,
    /// The client address of each connection, in order.
    peers: Vec<std::net::IpAddr>,
    /// EHLO offers CHUNKING (RFC 3030) and BDAT is taken.
    chunking: bool,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Sink {
    pub fn start() -> Sink {
        Self::start_with(false)
    }

    /// With `tls`, STARTTLS is offered with a self-signed certificate.
    pub fn start_with(tls: bool) -> Sink {
        Self::start_on(0, tls)
    }

    pub fn start_on(port: u16, tls: bool) -> Sink {
        Self::start_inner(port, tls.then(tls_acceptor))
    }

    /// STARTTLS with the test's own server configuration (certificate, session tickets).
    pub fn start_tls(cfg: rustls::ServerConfig) -> Sink {
        Self::start_inner(0, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
    }

    /// On `ip:port` (another loopback address, the port of another sink: MX hosts that share
    /// the gateway's `mx_port`), STARTTLS with `cfg` when given.
    pub fn start_at(ip: std::net::IpAddr, port: u16, cfg: Option<rustls::ServerConfig>) -> Sink {
        Self::start_bound(ip, port, cfg.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c))))
    }

    fn start_inner(port: u16, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Sink {
        Self::start_bound(std::net::Ipv4Addr::LOCALHOST.into(), port, acceptor)
    }

    fn start_bound(ip: std::net::IpAddr, port: u16, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Sink {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind((ip, port))).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((s, peer)) = listener.accept().await else { continue };
                let n = {
                    let mut g = st.lock().unwrap();
                    g.connections += 1;
                    g.open += 1;
                    g.max_open = g.max_open.max(g.open);
                    g.peers.push(peer.ip());
                    g.connections
                };
                let (st, acc) = (st.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = serve(s, st.clone(), acc, n).await;
                    st.lock().unwrap().open -= 1;
                });
            }
        });
        Sink { addr, state, _rt: rt }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets the RCPT reply for one address (e.g. `"451 4.3.0 try later"`).
    pub fn set_rcpt_reply(&self, rcpt: &str, reply: &str) {
        self.state.lock().unwrap().rcpt.insert(rcpt.to_lowercase(), reply.to_string());
    }

    pub fn clear_rcpt_reply(&self, rcpt: &str) {
        self.state.lock().unwrap().rcpt.remove(&rcpt.to_lowercase());
    }

    /// Makes the reply to the final dot wait this long.
    pub fn set_data_delay(&self, d: Duration) {
        self.state.lock().unwrap().data_delay = d;
    }

    /// Final dots seen so far, answered or not.
    pub fn data_ends(&self) -> usize {
        self.state.lock().unwrap().data_ends
    }

    /// Whether EHLO announces 8BITMIME (it does unless told otherwise).
    pub fn set_8bitmime(&self, on: bool) {
        self.state.lock().unwrap().no_8bitmime = !on;
    }

    /// Whether EHLO announces SMTPUTF8 (it does unless told otherwise).
    pub fn set_smtputf8(&self, on: bool) {
        self.state.lock().unwrap().no_smtputf8 = !on;
    }

    pub fn set_data_reply(&self, reply: Option<&str>) {
        self.state.lock().unwrap().data = reply.map(str::to_string);
    }

    /// Requires AUTH (offered only after STARTTLS) with these credentials before MAIL.
    pub fn require_auth(&self, user: &str, password: &str) {
        self.state.lock().unwrap().require_auth = Some((user.into(), password.into()));
    }

    /// Successful logins so far: (mechanism, user, inside TLS).
    pub fn logins(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().logins.clone()
    }

    /// The client address of every connection so far.
    pub fn peers(&self) -> Vec<std::net::IpAddr> {
        self.state.lock().unwrap().peers.clone()
    }

    /// Offer REQUIRETLS in EHLO inside TLS.
    pub fn set_requiretls(&self, on: bool) {
        self.state.lock().unwrap().requiretls = on;
    }

    /// Offer CHUNKING in EHLO and take BDAT (RFC 3030).
    pub fn set_chunking(&self, on: bool) {
        self.state.lock().unwrap().chunking = on;
    }

    /// The arguments of every MAIL FROM so far (`<a@b> SIZE=… REQUIRETLS`).
    pub fn mail_args(&self) -> Vec<String> {
        self.state.lock().unwrap().mail_args.clone()
    }

    /// The names the client gave in EHLO, in order.
    pub fn helos(&self) -> Vec<String> {
        self.state.lock().unwrap().helos.clone()
    }

    pub fn auth_failures(&self) -> usize {
        self.state.lock().unwrap().auth_failures
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn rcpt_attempts(&self, rcpt: &str) -> usize {
        self.state.lock().unwrap().rcpt_seen.get(&rcpt.to_lowercase()).copied().unwrap_or(0)
    }

    /// QUIT commands received so far.
    pub fn quits(&self) -> usize {
        self.state.lock().unwrap().quits
    }

    /// The most connections that were ever open at once.
    pub fn max_open(&self) -> usize {
        self.state.lock().unwrap().max_open
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits until `n` messages have arrived; returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        wait_for(limit, || {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("sink got {} messages, wanted {n}", self.received().len()))
    }

    /// Waits for a message to `rcpt`.
    pub fn wait_for_rcpt(&self, rcpt: &str, limit: Duration) -> Received {
        wait_for(limit, || self.received().into_iter().find(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt))))
            .unwrap_or_else(|| panic!("no message for {rcpt} at the sink"))
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve(
    s: tokio::net::TcpStream,
    st: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connection: usize,
) -> std::io::Result<()> {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(s));
    let mut in_tls = false;
    io.get_mut().write_all(b"220 sink.test ESMTP test sink\r\n").await?;
    let (mut from, mut rcpts) = (String::new(), Vec::<String>::new());
    let mut authed = false;
    let mut line = String::new();
    // BDAT chunks of the current message so far.
    let mut chunks = Vec::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            st.lock().unwrap().helos.push(cmd[4..].trim().to_string());
            let tls_kw = if tls.is_some() && !in_tls { "250-STARTTLS\r\n" } else { "" };
            let eight = if st.lock().unwrap().no_8bitmime { "" } else { "250-8BITMIME\r\n" };
            let auth =
                if in_tls && st.lock().unwrap().require_auth.is_some() { "250-AUTH PLAIN LOGIN\r\n" } else { "" };
            let utf8 = if st.lock().unwrap().no_smtputf8 { "" } else { "250-SMTPUTF8\r\n" };
            let rtls = if in_tls && st.lock().unwrap().requiretls { "250-REQUIRETLS\r\n" } else { "" };
            let chunking = if st.lock().unwrap().chunking { "250-CHUNKING\r\n" } else { "" };
            format!(
                "250-sink.test\r\n250-PIPELINING\r\n{eight}{utf8}{rtls}{chunking}{tls_kw}{auth}250 SIZE 52428800\r\n"
            )
        } else if upper.starts_with("HELO") {
            "250 sink.test\r\n".into()
        } else if let Some(acceptor) = tls.as_ref().filter(|_| upper == "STARTTLS" && !in_tls) {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let inner = std::mem::replace(io.get_mut(), Box::new(tokio::io::duplex(1).0));
            let stream = acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(stream));
            in_tls = true;
            continue;
        } else if upper.starts_with("AUTH ") {
            let want = st.lock().unwrap().require_auth.clone();
            let words: Vec<&str> = cmd.split_ascii_whitespace().collect();
            let mech = words.get(1).map(|m| m.to_ascii_uppercase()).unwrap_or_default();
            let b64 = |s: &str| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let mut ask = async |prompt: &[u8]| -> std::io::Result<String> {
                io.get_mut().write_all(prompt).await?;
                let mut l = String::new();
                io.read_line(&mut l).await?;
                Ok(b64(&l))
            };
            let given = match mech.as_str() {
                "PLAIN" => {
                    let ir = match words.get(2) {
                        Some(ir) => b64(ir),
                        None => ask(b"334 \r\n").await?,
                    };
                    let mut parts = ir.split('\0').skip(1);
                    Some((parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string()))
                }
                "LOGIN" => {
                    let user = ask(b"334 VXNlcm5hbWU6\r\n").await?;
                    let pass = ask(b"334 UGFzc3dvcmQ6\r\n").await?;
                    Some((user, pass))
                }
                _ => None,
            };
            let mut g = st.lock().unwrap();
            if let Some((user, _)) = given.filter(|g| in_tls && want.as_ref() == Some(g)) {
                authed = true;
                g.logins.push((mech, user, in_tls));
                "235 2.7.0 authenticated\r\n".into()
            } else {
                g.auth_failures += 1;
                "535 5.7.8 authentication credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") && !authed && st.lock().unwrap().require_auth.is_some() {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            st.lock().unwrap().mail_args.push(cmd[10..].trim().to_string());
            from = cmd[10..].trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string();
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let r = cmd[8..].trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string();
            let mut g = st.lock().unwrap();
            *g.rcpt_seen.entry(r.to_lowercase()).or_default() += 1;
            let rep = g.rcpt.get(&r.to_lowercase()).cloned().unwrap_or_else(|| "250 2.1.5 ok".into());
            if rep.starts_with('2') {
                rcpts.push(r);
            }
            format!("{rep}\r\n")
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                io.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let l = if l.starts_with(b"..") { &l[1..] } else { &l[..] };
                    data.extend_from_slice(l);
                }
                let end = End { from: &from, tls: in_tls, connection, bdat: false };
                end.finish(&st, &mut rcpts, data).await
            }
        } else if let Some((size, last)) = bdat_args(&upper).filter(|_| st.lock().unwrap().chunking) {
            // RFC 3030: exactly `size` octets follow, whatever the state; a refused chunk is
            // read and dropped all the same.
            let mut chunk = vec![0u8; size];
            io.read_exact(&mut chunk).await?;
            chunks.extend_from_slice(&chunk);
            if rcpts.is_empty() {
                chunks.clear();
                "554 5.5.1 no valid recipients\r\n".into()
            } else if !last {
                "250 2.0.0 chunk ok\r\n".into()
            } else {
                let end = End { from: &from, tls: in_tls, connection, bdat: true };
                end.finish(&st, &mut rcpts, std::mem::take(&mut chunks)).await
            }
        } else if upper == "RSET" {
            rcpts.clear();
            chunks.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            st.lock().unwrap().quits += 1;
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else {
            "500 5.5.2 what\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// `BDAT <size> [LAST]` (upper case): the chunk's size and whether it is the last.
fn bdat_args(upper: &str) -> Option<(usize, bool)> {
    let mut words = upper.strip_prefix("BDAT ")?.split_ascii_whitespace();
    let size = words.next()?.parse().ok()?;
    match (words.next(), words.next()) {
        (None, _) => Some((size, false)),
        (Some("LAST"), None) => Some((size, true)),
        _ => None,
    }
}

/// The end of a message (the final dot, or BDAT LAST): the configured reply, and the message
/// recorded when it is positive.
struct End<'a> {
    from: &'a str,
    tls: bool,
    connection: usize,
    bdat: bool,
}

impl End<'_> {
    async fn finish(self, st: &Mutex<State>, rcpts: &mut Vec<String>, data: Vec<u8>) -> String {
        let delay = {
            let mut g = st.lock().unwrap();
            g.data_ends += 1;
            g.data_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut g = st.lock().unwrap();
        let rep = g.data.clone().unwrap_or_else(|| "250 2.0.0 queued".into());
        if rep.starts_with('2') {
            g.received.push(Received {
                from: self.from.to_string(),
                rcpts: std::mem::take(rcpts),
                data,
                tls: self.tls,
                at: std::time::Instant::now(),
                connection: self.connection,
                bdat: self.bdat,
            });
        }
        format!("{rep}\r\n")
    }
}
