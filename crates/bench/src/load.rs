//! The load generator: N sessions (persistent, or a new connection per message) sending
//! pipelined transactions, closed-loop or at a fixed offered rate, bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send.
#[derive(Clone, Debug)]
pub struct Load {
    pub target: SocketAddr,
    pub sessions: usize,
    pub count: u64,
    pub duration: Duration,
    pub size: usize,
    pub rcpts: usize,
    /// Offered rate in messages per second (open loop); `None` sends as fast as replies come.
    pub rate: Option<f64>,
    pub new_conn: bool,
    /// The message to send (headers and body, as a file holds it) instead of a made-up one
    /// of `size` octets: a DKIM-signed one, say.
    pub message: Option<Vec<u8>>,
    /// Recipient domain (the gateway must accept or relay it).
    pub domain: String,
    /// API only: messages per request, through `…/batch` (0 or 1: one per request).
    pub batch: usize,
}

/// What happened.
pub struct Outcome {
    /// Messages answered with 250 after DATA.
    pub accepted: u64,
    /// Messages refused or failed (any non-2xx, or a broken connection).
    pub failed: u64,
    pub first_send: Instant,
    pub last_reply: Instant,
    /// MAIL → final 250, microseconds.
    pub latency: Histogram<u64>,
}

/// A message of about `size` octets: headers, then 76-octet lines.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <bench@bench.test>\r\nTo: <sink@bench.test>\r\nSubject: mailgate-bench\r\nMessage-ID: <bench@bench.test>\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// A message as DATA sends it: CRLF line ends, dot-stuffed, with the final dot.
pub fn wire(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 64);
    for line in m.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A connection to the target, and what has been read from it but not used yet. SMTP
/// sessions use it through [`Conn::open`] and [`Conn::expect`]; the API mode through
/// [`Conn::exchange`].
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn { s, buf: Vec::with_capacity(4096) })
    }

    /// Reads what has arrived into the buffer; the end of the stream is an error.
    async fn fill(&mut self) -> std::io::Result<()> {
        self.buf.reserve(4096);
        if self.s.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// A new SMTP session: greeting, EHLO.
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let mut c = Conn::connect(addr).await?;
        c.expect(1, b'2').await?;
        c.s.write_all(b"EHLO bench.test\r\n").await?;
        c.expect(1, b'2').await?;
        Ok(c)
    }

    /// Reads `n` replies; fails unless each starts with `class` (the last may be `3` for 354).
    async fn expect(&mut self, n: usize, class: u8) -> std::io::Result<bool> {
        let mut ok = true;
        for _ in 0..n {
            loop {
                if let Some(i) = find_reply_end(&self.buf) {
                    let first = self.buf[0];
                    self.buf.drain(..i);
                    ok &= first == class || (class == b'3' && first == b'3');
                    break;
                }
                self.fill().await?;
            }
        }
        Ok(ok)
    }

    /// Sends an HTTP/1.1 `request` and reads the answer: its status, and whether the connection
    /// stays open. The head is parsed with httparse, the body skipped by `Content-Length` (the
    /// gateway always sends one).
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool, Vec<u8>)> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        self.s.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = head.parse(&self.buf).map_err(|_| bad("malformed answer"))? {
                let status = head.code.unwrap_or(0);
                let field = |name: &str| head.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
                let len: usize = field("content-length")
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .ok_or_else(|| bad("an answer without Content-Length"))?;
                let keep = !field("connection").is_some_and(|h| h.value.eq_ignore_ascii_case(b"close"));
                while self.buf.len() < n + len {
                    self.fill().await?;
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Ok((status, keep, body));
            }
            self.fill().await?;
        }
    }
}

/// End of the first complete reply (its last line is `ddd SP`).
fn find_reply_end(b: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = b[start..].iter().position(|c| *c == b'\n') {
        let line = &b[start..start + i + 1];
        if line.len() < 4 || line[3] != b'-' {
            return Some(start + i + 1);
        }
        start += i + 1;
    }
    None
}

/// The counters every sending task shares, and the outcome they add up to.
#[derive(Clone)]
struct Tally {
    /// The next message's number (count and rate are by it).
    next: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    last: Arc<Mutex<Instant>>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            next: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            hist: Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap())),
            last: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Claims the next message and, at a fixed offered rate, waits for its time; false once
    /// the count or the time is up.
    async fn claim(&self, load: &Load, t0: Instant, deadline: Instant) -> bool {
        self.claim_n(load, t0, deadline, 1).await == 1
    }

    /// Up to `n` messages to send at once (fewer at the end of the count; none past it or
    /// the deadline).
    async fn claim_n(&self, load: &Load, t0: Instant, deadline: Instant, n: u64) -> u64 {
        let i = self.next.fetch_add(n, Ordering::Relaxed);
        if i >= load.count || Instant::now() >= deadline {
            return 0;
        }
        if let Some(rate) = load.rate {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        n.min(load.count - i)
    }

    /// A message accepted after `started`, its latency into the task's own histogram.
    fn ok(&self, started: Instant, local: &mut Histogram<u64>) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = local.record(started.elapsed().as_micros() as u64);
        *self.last.lock().unwrap() = Instant::now();
    }

    fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn outcome(&self, first_send: Instant) -> Outcome {
        Outcome {
            accepted: self.accepted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            first_send,
            last_reply: *self.last.lock().unwrap(),
            latency: self.hist.lock().unwrap().clone(),
        }
    }
}

pub async fn run(load: Load) -> Outcome {
    let body = Arc::new(match &load.message {
        Some(m) => wire(m),
        None => message(load.size),
    });
    let tally = Tally::new();
    let t0 = Instant::now();
    let deadline = t0 + load.duration;
    let mut tasks = vec![];
    for s in 0..load.sessions {
        let (load, body, tally) = (load.clone(), body.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut cmds = b"MAIL FROM:<bench@bench.test>\r\n".to_vec();
            for r in 0..load.rcpts {
                cmds.extend_from_slice(format!("RCPT TO:<s{s}r{r}@{}>\r\n", load.domain).as_bytes());
            }
            cmds.extend_from_slice(b"DATA\r\n");
            let mut conn: Option<Conn> = None;
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                if !tally.claim(&load, t0, deadline).await {
                    break;
                }
                if conn.is_none() {
                    conn = Conn::open(load.target).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    tally.fail();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let started = Instant::now();
                let res: std::io::Result<bool> = async {
                    c.s.write_all(&cmds).await?;
                    let envelope_ok = c.expect(1 + load.rcpts, b'2').await?;
                    let data_ok = c.expect(1, b'3').await?;
                    if !(envelope_ok && data_ok) {
                        c.s.write_all(b"RSET\r\n").await?;
                        c.expect(1, b'2').await?;
                        return Ok(false);
                    }
                    c.s.write_all(&body).await?;
                    c.expect(1, b'2').await
                }
                .await;
                match res {
                    Ok(true) => tally.ok(started, &mut local),
                    Ok(false) => tally.fail(),
                    Err(_) => {
                        tally.fail();
                        conn = None;
                    }
                }
                if load.new_conn {
                    if let Some(mut c) = conn.take() {
                        let _ = c.s.write_all(b"QUIT\r\n").await;
                    }
                }
            }
            if let Some(mut c) = conn {
                let _ = c.s.write_all(b"QUIT\r\n").await;
            }
            tally.hist.lock().unwrap().add(&local).unwrap();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.outcome(t0)
}

/// Opens `n` sessions that say EHLO and then stay idle until `hold` passes.
pub async fn idle(target: SocketAddr, n: usize, hold: Duration) -> usize {
    let mut conns = vec![];
    for _ in 0..n {
        if let Ok(c) = Conn::open(target).await {
            conns.push(c);
        }
    }
    let opened = conns.len();
    tokio::time::sleep(hold).await;
    drop(conns);
    opened
}

/// Where `--api` sends: the address to connect to, the `Host` field and the path.
#[derive(Clone, Debug)]
pub struct ApiTarget {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl ApiTarget {
    /// `http://HOST:PORT/PATH` with a literal IP address (the bench talks to loopback only).
    pub fn parse(url: &str) -> Option<ApiTarget> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        Some(ApiTarget { addr: host.parse().ok()?, host: host.to_string(), path })
    }
}

/// The sending API as the way in: `sessions` keep-alive HTTP/1.1 connections POSTing JSON
/// messages of about `size` octets to `target` with `key`, bounded in count and time. The
/// client is as lean as the SMTP side's (a request is one write of bytes made once): on a
/// 2-core machine the load generator's own CPU competes with the gateway's.
pub async fn run_api(load: Load, target: ApiTarget, key: String) -> Outcome {
    let text: String = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\n"
        .repeat(load.size / 77 + 1)
        .chars()
        .take(load.size.saturating_sub(200).max(1))
        .collect();
    let tally = Tally::new();
    let t0 = Instant::now();
    let deadline = t0 + load.duration;
    let mut tasks = vec![];
    for s in 0..load.sessions {
        let (load, tally, target) = (load.clone(), tally.clone(), target.clone());
        let rcpts: Vec<String> = (0..load.rcpts).map(|r| format!("s{s}r{r}@{}", load.domain)).collect();
        // JSON the gateway builds a message from, or (`--message`) a raw message with the
        // envelope in the query.
        let batch = if load.message.is_none() { load.batch.max(1) as u64 } else { 1 };
        // The request for `n` messages: JSON the gateway builds a message from (`n` of them
        // in an array, to `…/batch`), or (`--message`) a raw message with the envelope in the
        // query.
        let (message, path, host, text, key) =
            (load.message.clone(), target.path.clone(), target.host.clone(), text.clone(), key.clone());
        let make = move |n: u64| {
            let (path, ctype, body) = match &message {
                Some(m) => {
                    let path = format!("{path}?from=bench@bench.test&to={}", rcpts.join(","));
                    (path, "message/rfc822", m.clone())
                }
                None => {
                    let json = serde_json::json!({
                        "from": "bench@bench.test", "to": rcpts, "subject": "mailgate-bench", "text": text,
                    });
                    match batch {
                        1 => (path.clone(), "application/json", json.to_string().into_bytes()),
                        _ => {
                            let all = vec![json; n as usize];
                            (format!("{path}/batch"), "application/json", serde_json::to_vec(&all).unwrap())
                        }
                    }
                }
            };
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                host,
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            request
        };
        let full = make(batch);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                let n = tally.claim_n(&load, t0, deadline, batch).await;
                if n == 0 {
                    break;
                }
                if conn.is_none() {
                    conn = Conn::connect(target.addr).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    (0..n).for_each(|_| tally.fail());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let started = Instant::now();
                let last;
                let request = if n == batch {
                    &full
                } else {
                    last = make(n);
                    &last
                };
                match c.exchange(request).await {
                    Ok((status, keep, body)) => {
                        // A batch is answered 200 with each message's own status.
                        let ok = match (batch, status) {
                            (1, 202) => 1,
                            (_, 200) => serde_json::from_slice::<serde_json::Value>(&body).ok().map_or(0, |v| {
                                v["results"].as_array().map_or(0, |r| r.iter().filter(|m| m["status"] == 202).count())
                            }) as u64,
                            _ => 0,
                        };
                        (0..ok).for_each(|_| tally.ok(started, &mut local));
                        (ok..n).for_each(|_| tally.fail());
                        if !keep {
                            conn = None;
                        }
                    }
                    Err(_) => {
                        (0..n).for_each(|_| tally.fail());
                        conn = None;
                    }
                }
                if load.new_conn {
                    conn = None;
                }
            }
            tally.hist.lock().unwrap().add(&local).unwrap();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.outcome(t0)
}
