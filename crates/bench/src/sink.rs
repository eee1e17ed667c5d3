//! A fast SMTP sink: ESMTP with PIPELINING, DATA and CHUNKING (RFC 3030's BDAT, which real next
//! hops — Postfix's smtpd, Exim, the large mailbox providers — offer), counts what arrives. It
//! reuses the gateway's own sans-IO receiver, so "end of data" means exactly CRLF.CRLF.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mailgate_smtp::content::Mode;
use mailgate_smtp::{ContentReceiver, LineEvent, LineReader, Progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the sink has seen.
#[derive(Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub recipients: AtomicU64,
}

/// Starts the sink on `addr`; returns its bound address and counters.
pub async fn start(addr: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<Counters>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, c.clone()));
        }
    });
    Ok((bound, counters))
}

async fn serve(mut s: TcpStream, c: Arc<Counters>) -> std::io::Result<()> {
    s.write_all(b"220 sink ESMTP\r\n").await?;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut pos = 0;
    let mut out = Vec::with_capacity(1024);
    let mut lines = LineReader::new(4096);
    let mut data: Option<ContentReceiver> = None;
    let mut scratch = Vec::with_capacity(128 << 10);
    let mut rcpts = 0u64;
    // A BDAT chunk being read: octets still to come, whether it is the last, the message so far.
    let mut chunk: Option<(u64, bool)> = None;
    let mut chunked = 0u64;
    loop {
        loop {
            if let Some((left, last)) = chunk {
                let take = left.min((buf.len() - pos) as u64);
                pos += take as usize;
                chunked += take;
                if take < left {
                    chunk = Some((left - take, last));
                    break;
                }
                chunk = None;
                if last {
                    c.messages.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(chunked, Ordering::Relaxed);
                    c.recipients.fetch_add(rcpts, Ordering::Relaxed);
                    chunked = 0;
                }
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
                continue;
            }
            if let Some(r) = data.as_mut() {
                scratch.clear();
                let (used, p) = r.feed(&buf[pos..], &mut scratch);
                pos += used;
                if p == Progress::NeedMore {
                    break;
                }
                c.messages.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(r.size(), Ordering::Relaxed);
                c.recipients.fetch_add(rcpts, Ordering::Relaxed);
                data = None;
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
                continue;
            }
            let (ev, used) = lines.next(&buf[pos..]);
            let reply: &[u8] = match ev {
                LineEvent::NeedMore => {
                    pos += used;
                    break;
                }
                LineEvent::Error(_) => b"500 5.5.2 bad line\r\n",
                LineEvent::Line(l) => {
                    let verb = l.get(..4).map(|v| v.to_ascii_uppercase()).unwrap_or_default();
                    match &verb[..] {
                        b"EHLO" => b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SIZE 0\r\n",
                        b"HELO" => b"250 sink\r\n",
                        b"MAIL" => {
                            rcpts = 0;
                            b"250 2.1.0 ok\r\n"
                        }
                        b"RCPT" => {
                            rcpts += 1;
                            b"250 2.1.5 ok\r\n"
                        }
                        b"DATA" => {
                            data = Some(ContentReceiver::new(Mode::Data, u64::MAX, usize::MAX));
                            b"354 go\r\n"
                        }
                        b"BDAT" => match bdat_args(l) {
                            Some(args) => {
                                chunk = Some(args);
                                pos += used;
                                continue;
                            }
                            None => b"501 5.5.4 syntax: BDAT size [LAST]\r\n",
                        },
                        b"QUIT" => {
                            out.extend_from_slice(b"221 2.0.0 bye\r\n");
                            s.write_all(&out).await?;
                            return Ok(());
                        }
                        _ => b"250 2.0.0 ok\r\n",
                    }
                }
            };
            pos += used;
            out.extend_from_slice(reply);
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if pos == buf.len() {
            buf.clear();
            pos = 0;
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// `BDAT <size> [LAST]`'s size and whether it is the last chunk.
fn bdat_args(line: &[u8]) -> Option<(u64, bool)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace().skip(1);
    let size = words.next()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    Some((size, last))
}
