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

use super::{Next, Session, SessionIo, State};

/// Window over which failed attempts from one client are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Clients whose failures are remembered at most (~64 octets each): past that, the expired
/// are forgotten, then arbitrary ones down to nine tenths — an IPv6 client has 2^64
/// addresses, which is why a client is its /64 there, but it may have many /64s too.
const FAILURE_MEMORY: usize = 65_536;
/// RFC 4954 §4: an AUTH line may be up to 12288 octets.
const AUTH_LINE: usize = 12288 + 2;

fn b64(s: &str) -> Option<Vec<u8>> {
    if s == "=" {
        return Some(vec![]);
    }
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

/// A SASL exchange waiting for the client's next line.
pub(crate) enum Sasl {
    /// PLAIN without an initial response: the whole response comes next.
    Plain,
    /// LOGIN: the user name comes next.
    LoginUser,
    /// LOGIN: the password comes next.
    LoginPassword(String),
}

impl Sasl {
    fn mechanism(&self) -> &'static str {
        match self {
            Sasl::Plain => "PLAIN",
            Sasl::LoginUser | Sasl::LoginPassword(_) => "LOGIN",
        }
    }
}

/// What a client authenticates with.
struct Credentials {
    user: String,
    password: String,
    /// The identity asked to act as, when it is not `user` (PLAIN's authzid).
    authzid: Option<String>,
}

/// `authzid NUL authcid NUL passwd` (RFC 4616). An authzid equal to the user is no request to
/// act for someone else.
fn plain_credentials(r: &[u8]) -> Result<Credentials, Reply> {
    let parts: Vec<&[u8]> = r.split(|b| *b == 0).collect();
    match parts.as_slice() {
        [authz, user, pass] if !user.is_empty() => {
            let user = String::from_utf8_lossy(user).into_owned();
            let authz = String::from_utf8_lossy(authz).into_owned();
            Ok(Credentials {
                authzid: (!authz.is_empty() && authz != user).then_some(authz),
                user,
                password: String::from_utf8_lossy(pass).into_owned(),
            })
        }
        _ => Err(Reply::new(501, Enhanced(5, 5, 2), "Malformed PLAIN response")),
    }
}

fn invalid_base64() -> Reply {
    Reply::new(501, Enhanced(5, 5, 2), "Invalid base64")
}

impl<S: SessionIo> Session<S> {
    /// Whether AUTH is offered now: over TLS, when a plugin checks credentials.
    pub(crate) fn auth_offered(&self) -> bool {
        self.conn.tls.is_some() && self.auth_configured()
    }

    /// Whether MAIL needs an authenticated session (submission listeners).
    pub(crate) fn auth_required(&self) -> bool {
        self.conn.role != Role::Mx
    }

    fn failures(&self) -> usize {
        let m = self.shared.auth_failures.lock().unwrap();
        m.get(&crate::slots::offender(self.conn.peer.ip()))
            .filter(|(_, since)| since.elapsed() < FAILURE_WINDOW)
            .map_or(0, |(n, _)| *n)
    }

    fn count_failure(&self) -> usize {
        let mut m = self.shared.auth_failures.lock().unwrap();
        let key = crate::slots::offender(self.conn.peer.ip());
        if m.len() >= FAILURE_MEMORY && !m.contains_key(&key) {
            m.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            let excess = m.len().saturating_sub(FAILURE_MEMORY - FAILURE_MEMORY / 10);
            let victims: Vec<_> = m.keys().take(excess).copied().collect();
            for v in victims {
                m.remove(&v);
            }
        }
        let e = m.entry(key).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0
    }

    /// Whether any plugin of this listener's pipeline checks credentials (TLS or not).
    fn auth_configured(&self) -> bool {
        self.generation.plugins.as_ref().is_some_and(|p| p.has_stage(&self.conn.pipeline, Stage::Auth))
    }

    /// Sends a 334 challenge; the answer is read in the [`State::Sasl`] state.
    fn challenge(&mut self, prompt: &'static str, next: Sasl) -> Next {
        self.reply(Reply::plain(334, prompt));
        self.io.set_max_line(AUTH_LINE);
        self.state = State::Sasl(next);
        Next::Continue
    }

    pub(crate) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Next {
        // Nothing checks credentials: AUTH does not exist here, before TLS or after.
        if !self.auth_configured() {
            return self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "AUTH not available"));
        }
        if self.conn.tls.is_none() {
            return self.bad_command(Reply::new(
                538,
                Enhanced(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.conn.helo.is_none() {
            return self.bad_command(codes::bad_sequence("Send EHLO first"));
        }
        if self.conn.user.is_some() {
            return self.bad_command(codes::bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return self.bad_command(codes::bad_sequence("AUTH not allowed during a mail transaction"));
        }
        if self.failures() >= self.config.limits.max_auth_failures {
            self.reply(Reply::new(421, Enhanced(4, 7, 0), "Too many failed authentications, try again later"));
            return Next::Close;
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", None) => self.challenge("", Sasl::Plain),
            ("PLAIN", Some(i)) => match b64(&i).ok_or_else(invalid_base64).and_then(|r| plain_credentials(&r)) {
                Ok(c) => self.authenticate("PLAIN", c).await,
                Err(r) => self.bad_command(r),
            },
            ("LOGIN", None) => self.challenge("VXNlcm5hbWU6", Sasl::LoginUser),
            ("LOGIN", Some(i)) => match b64(&i) {
                Some(u) => {
                    self.challenge("UGFzc3dvcmQ6", Sasl::LoginPassword(String::from_utf8_lossy(&u).into_owned()))
                }
                None => self.bad_command(invalid_base64()),
            },
            _ => self.bad_command(Reply::new(504, Enhanced(5, 5, 4), "Unrecognized authentication mechanism")),
        }
    }

    /// The client's answer to a challenge arrived. `None` while the line is incomplete.
    pub(crate) async fn sasl_input(&mut self, sasl: Sasl) -> Option<Next> {
        let (ev, used) = self.io.next_line();
        let line = match ev {
            LineEvent::NeedMore => {
                self.io.consume(used);
                self.state = State::Sasl(sasl);
                return None;
            }
            LineEvent::Line(l) => Some(String::from_utf8_lossy(l).into_owned()),
            LineEvent::Error(_) => None,
        };
        self.io.consume(used);
        self.io.set_max_line(self.config.limits.command_line);
        self.io.progressed();
        let decoded = match line {
            Some(l) if l.trim() == "*" => Err(Reply::new(501, Enhanced(5, 7, 0), "Authentication cancelled")),
            Some(l) => b64(&l).ok_or_else(invalid_base64),
            None => Err(Reply::new(500, Enhanced(5, 5, 6), "Authentication line too long or malformed")),
        };
        let mechanism = sasl.mechanism();
        Some(match (sasl, decoded) {
            (_, Err(r)) => self.bad_command(r),
            (Sasl::Plain, Ok(r)) => match plain_credentials(&r) {
                Ok(c) => self.authenticate(mechanism, c).await,
                Err(r) => self.bad_command(r),
            },
            (Sasl::LoginUser, Ok(u)) => {
                self.challenge("UGFzc3dvcmQ6", Sasl::LoginPassword(String::from_utf8_lossy(&u).into_owned()))
            }
            (Sasl::LoginPassword(user), Ok(p)) => {
                let password = String::from_utf8_lossy(&p).into_owned();
                self.authenticate(mechanism, Credentials { user, password, authzid: None }).await
            }
        })
    }

    /// The credentials are complete: the on-auth stage decides, also whether the user may act
    /// for the authorization identity it asked for (the session is then that identity).
    async fn authenticate(&mut self, mechanism: &str, c: Credentials) -> Next {
        let username = c.user.clone();
        let req = AuthRequest {
            mechanism: mechanism.to_string(),
            username: c.user,
            password: c.password,
            authzid: c.authzid.clone(),
        };
        let decision = match self.policy.chain.as_mut() {
            Some(chain) => chain.on_auth(&self.conn.info(), &req).await,
            None => Decision::Next,
        };
        match decision {
            Decision::Accept => {
                let identity = c.authzid.unwrap_or_else(|| username.clone());
                tracing::info!(user = %identity, authenticated_by = %username, %mechanism, "authenticated");
                self.conn.user = Some(identity);
                self.reply(Reply::new(235, Enhanced(2, 7, 0), "Authentication successful"));
                Next::Continue
            }
            Decision::Disconnect(r) => {
                self.reply(r);
                Next::Close
            }
            Decision::Reply(r) if r.is_transient() => {
                self.reply(r);
                Next::Continue
            }
            _ => {
                let n = self.count_failure();
                tracing::warn!(user = %username, %mechanism, failures = n, "authentication failed");
                self.reply(Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"));
                if n >= self.config.limits.max_auth_failures {
                    self.reply(Reply::new(
                        421,
                        Enhanced(4, 7, 0),
                        "Too many failed authentications, closing connection",
                    ));
                    return Next::Close;
                }
                Next::Continue
            }
        }
    }
}
