//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, only over TLS. The credentials are checked
//! by the plugins' on-auth stage; failures are counted per client IP. The password is never
//! logged.

use std::time::{Duration, Instant};

use base64::Engine;
use mailgate_config::{Role, Stage};
use mailgate_plugin_host::bindings::types::AuthRequest;
use mailgate_plugin_host::Decision;
use mailgate_smtp::reply::codes;
use mailgate_smtp::{Enhanced, LineEvent, Reply};

use super::{Next, Session};

/// Window over which failed attempts from one IP are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// RFC 4954 §4: an AUTH line may be up to 12288 octets.
const AUTH_LINE: usize = 12288 + 2;

fn b64(s: &str) -> Option<Vec<u8>> {
    if s == "=" {
        return Some(vec![]);
    }
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

impl Session {
    /// Whether AUTH is offered now: over TLS, when a plugin checks credentials.
    pub(crate) fn auth_offered(&self) -> bool {
        self.tls.is_some() && self.auth_configured()
    }

    /// Whether MAIL needs an authenticated session (submission listeners).
    pub(crate) fn auth_required(&self) -> bool {
        self.role != Role::Mx
    }

    fn failures(&self) -> usize {
        let m = self.shared.auth_failures.lock().unwrap();
        m.get(&self.peer.ip()).filter(|(_, since)| since.elapsed() < FAILURE_WINDOW).map_or(0, |(n, _)| *n)
    }

    fn count_failure(&self) -> usize {
        let mut m = self.shared.auth_failures.lock().unwrap();
        if m.len() > 10_000 {
            m.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = m.entry(self.peer.ip()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0
    }

    /// Reads one SASL response line; `None` when it was malformed.
    async fn sasl_line(&mut self) -> std::io::Result<Option<String>> {
        self.lines.set_max_len(AUTH_LINE);
        let limit = self.config.timeouts.command;
        let res = loop {
            let (ev, used) = self.lines.next(&self.rbuf[self.rpos..]);
            match ev {
                LineEvent::Line(l) => {
                    let s = String::from_utf8_lossy(l).into_owned();
                    self.rpos += used;
                    break Ok(Some(s));
                }
                LineEvent::Error(_) => {
                    self.rpos += used;
                    break Ok(None);
                }
                LineEvent::NeedMore => {
                    self.rpos += used;
                    if !self.fill(limit).await? {
                        break Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        };
        self.lines.set_max_len(self.config.limits.command_line);
        res
    }

    /// Sends a 334 challenge and reads the answer, decoded. `Err(reply)` ends the exchange.
    async fn challenge(&mut self, prompt: &'static str) -> std::io::Result<Result<Vec<u8>, Reply>> {
        self.reply(Reply::plain(334, prompt));
        self.flush_now().await?;
        Ok(match self.sasl_line().await? {
            Some(l) if l.trim() == "*" => Err(Reply::new(501, Enhanced(5, 7, 0), "Authentication cancelled")),
            Some(l) => b64(&l).ok_or_else(|| Reply::new(501, Enhanced(5, 5, 2), "Invalid base64")),
            None => Err(Reply::new(500, Enhanced(5, 5, 6), "Authentication line too long or malformed")),
        })
    }

    /// Whether any plugin of this listener's pipeline checks credentials (TLS or not).
    fn auth_configured(&self) -> bool {
        self.plugins.as_ref().is_some_and(|p| p.has_stage(&self.pipeline, Stage::Auth))
    }

    pub(crate) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> std::io::Result<Next> {
        // Nothing checks credentials: AUTH does not exist here, before TLS or after.
        if !self.auth_configured() {
            return Ok(self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "AUTH not available")));
        }
        if self.tls.is_none() {
            return Ok(self.bad_command(Reply::new(
                538,
                Enhanced(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            )));
        }
        if !self.auth_offered() {
            return Ok(self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "AUTH not available")));
        }
        if self.helo.is_none() {
            return Ok(self.bad_command(codes::bad_sequence("Send EHLO first")));
        }
        if self.auth_user.is_some() {
            return Ok(self.bad_command(codes::bad_sequence("Already authenticated")));
        }
        if self.tx.is_some() {
            return Ok(self.bad_command(codes::bad_sequence("AUTH not allowed during a mail transaction")));
        }
        let limit = self.config.limits.max_auth_failures;
        if self.failures() >= limit {
            self.reply(Reply::new(421, Enhanced(4, 7, 0), "Too many failed authentications, try again later"));
            return Ok(Next::Close);
        }
        let decoded: Result<(String, String), Reply> = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial.as_deref() {
                    Some(i) => b64(i).ok_or_else(|| Reply::new(501, Enhanced(5, 5, 2), "Invalid base64")),
                    None => self.challenge("").await?,
                };
                resp.and_then(|r| {
                    // authzid NUL authcid NUL passwd
                    let parts: Vec<&[u8]> = r.split(|b| *b == 0).collect();
                    match parts.as_slice() {
                        [_authz, user, pass] if !user.is_empty() => {
                            Ok((String::from_utf8_lossy(user).into_owned(), String::from_utf8_lossy(pass).into_owned()))
                        }
                        _ => Err(Reply::new(501, Enhanced(5, 5, 2), "Malformed PLAIN response")),
                    }
                })
            }
            "LOGIN" => {
                let user = match initial.as_deref() {
                    Some(i) => b64(i).ok_or_else(|| Reply::new(501, Enhanced(5, 5, 2), "Invalid base64")),
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                match user {
                    Ok(u) => self
                        .challenge("UGFzc3dvcmQ6")
                        .await?
                        .map(|p| (String::from_utf8_lossy(&u).into_owned(), String::from_utf8_lossy(&p).into_owned())),
                    Err(r) => Err(r),
                }
            }
            _ => Err(Reply::new(504, Enhanced(5, 5, 4), "Unrecognized authentication mechanism")),
        };
        let (username, password) = match decoded {
            Ok(c) => c,
            Err(r) => return Ok(self.bad_command(r)),
        };
        let req = AuthRequest { mechanism: mechanism.clone(), username: username.clone(), password };
        let decision = match self.chain.take() {
            Some(mut chain) => {
                let d = chain.on_auth(&self.conn_info(), &req).await;
                self.chain = Some(chain);
                d
            }
            None => Decision::Next,
        };
        match decision {
            Decision::Accept => {
                tracing::info!(user = %username, %mechanism, "authenticated");
                self.auth_user = Some(username);
                self.reply(Reply::new(235, Enhanced(2, 7, 0), "Authentication successful"));
                Ok(Next::Continue)
            }
            Decision::Disconnect(r) => {
                self.reply(r);
                Ok(Next::Close)
            }
            Decision::Reply(r) if r.is_transient() => {
                self.reply(r);
                Ok(Next::Continue)
            }
            _ => {
                let n = self.count_failure();
                tracing::warn!(user = %username, %mechanism, failures = n, "authentication failed");
                self.reply(Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"));
                if n >= limit {
                    self.reply(Reply::new(
                        421,
                        Enhanced(4, 7, 0),
                        "Too many failed authentications, closing connection",
                    ));
                    return Ok(Next::Close);
                }
                Ok(Next::Continue)
            }
        }
    }
}
