//! The API listener: accept loop (connection limit, optional TLS with a handshake deadline),
//! HTTP/1.1 with a deadline for request heads, and the routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use mailgate_config::ApiListener;
use mailgate_message::Reservation;
use mailgate_smtp::content::{ContentError, Mode};
use mailgate_smtp::ContentReceiver;
use mailgate_spool::ApiMeta;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::idempotency::{Answer, Begin, Idempotency};
use crate::keys::{ApiKey, Keys};
use crate::{raw, request, Gate, Submission};
use mailgate_events::{Event, EventLog};

/// What a handler knows about the connection its request came on.
#[derive(Clone)]
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<(String, String)>,
}

/// What every request of one listener shares.
struct Api {
    gate: Arc<dyn Gate>,
    keys: Arc<Keys>,
    idem: Arc<Idempotency>,
    /// The event log (`None`: events are off, and the read endpoints answer 404).
    events: Option<Arc<EventLog>>,
    conf: ApiListener,
    name: Arc<str>,
    /// Requests between "body read" and "answered": shutdown waits for them.
    in_flight: Arc<AtomicUsize>,
    /// Event-log reads running at once (each may scan the log on a blocking thread): the
    /// rest wait their turn instead of taking every blocking thread.
    reads: tokio::sync::Semaphore,
    /// Messages passed on at once, batches' included: `max_connections`, what the plugin
    /// engine counts instances for (a batch cannot make a listener take more).
    submitting: tokio::sync::Semaphore,
    /// `mailgate_api_requests_total` of this listener's `202`s, registered once (the answer to
    /// nearly every request; the others are looked up when they happen).
    accepted: metrics::Counter,
}

/// Event-log reads one listener runs at once.
const CONCURRENT_READS: usize = 4;

/// A running API listener.
pub struct Listening {
    pub addr: SocketAddr,
    in_flight: Arc<AtomicUsize>,
}

impl Listening {
    /// Submissions being processed now (shutdown lets them finish before the spool closes).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The `Idempotency-Key` request header, named once (a name given as text is parsed at
/// every look-up).
static IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");

/// Time for a TLS handshake and for a request's head (headers) to arrive.
const HANDSHAKE: Duration = Duration::from_secs(10);
const HEAD: Duration = Duration::from_secs(10);

/// What every `[[api]]` listener of a gateway shares.
#[derive(Clone)]
pub struct Services {
    pub gate: Arc<dyn Gate>,
    pub keys: Arc<Keys>,
    pub idem: Arc<Idempotency>,
    /// The event log (`None`: events are off).
    pub events: Option<Arc<EventLog>>,
}

/// Serves the API on `listener` until `stop` turns true.
pub fn serve(
    listener: TcpListener,
    conf: ApiListener,
    tls: Option<TlsAcceptor>,
    services: Services,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<(Listening, tokio::task::JoinHandle<()>)> {
    let Services { gate, keys, idem, events } = services;
    let addr = listener.local_addr()?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = conf.name.as_str().into();
    let permits = Arc::new(tokio::sync::Semaphore::new(conf.max_connections));
    let submitting = tokio::sync::Semaphore::new(conf.max_connections);
    let api = Arc::new(Api {
        gate,
        keys,
        idem,
        events,
        conf,
        name: name.clone(),
        in_flight: in_flight.clone(),
        reads: tokio::sync::Semaphore::new(CONCURRENT_READS),
        submitting,
        accepted: metrics::counter!("mailgate_api_requests_total", "listener" => name.to_string(), "status" => "202"),
    });
    let router = Router::new()
        .route("/api/v1/messages", post(submit))
        .route("/api/v1/messages/batch", post(submit_batch))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/events", get(events_page))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .with_state(api);
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.changed() => break,
            };
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(listener = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let (router, tls) = (router.clone(), tls.clone());
            let name = name.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let local =
                    stream.local_addr().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).unwrap_or(peer);
                match tls {
                    None => connection(stream, Conn { peer, local, tls: None }, router).await,
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let (_, c) = s.get_ref();
                            let version = c
                                .protocol_version()
                                .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
                                .unwrap_or_default();
                            let cipher = c
                                .negotiated_cipher_suite()
                                .map(|c| mailgate_smtp::iana_cipher_name(&format!("{:?}", c.suite())))
                                .unwrap_or_default();
                            connection(s, Conn { peer, local, tls: Some((version, cipher)) }, router).await
                        }
                        Ok(Err(e)) => tracing::debug!(listener = %name, client = %peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(listener = %name, client = %peer, "TLS handshake timed out"),
                    },
                }
            });
        }
    });
    Ok((Listening { addr, in_flight }, task))
}

/// Events a page may hold, and events one request may read past to fill it.
const PAGE_MAX: usize = 1000;
const SCAN_MAX: usize = 20_000;

fn no_events() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "events_off", "events are not recorded by this gateway")
}

/// `GET /api/v1/messages/{id}`: a message of this key, its recipients' current state and its
/// history (the events the log still has).
async fn message(
    State(api): State<Arc<Api>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = authenticate(&api, &headers)?;
    let log = api.events.as_ref().ok_or_else(no_events)?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::field("/id", "not a message id"));
    }
    let not_found =
        || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no message {id} of key {}", key.name));
    let log2 = log.clone();
    let id2 = id.clone();
    let _turn = api.reads.acquire().await.expect("never closed");
    let history = tokio::task::spawn_blocking(move || log2.for_message(&id2, 10_000))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), 5))?
        .map_err(|e| ApiError::unavailable(format!("the event log cannot be read: {e}"), 5))?;
    let queued = api.gate.queued(&id);
    let owner = match &queued {
        Some((env, _)) => env.api.as_ref().map(|a| a.key.clone()),
        None => history.first().and_then(|e| e.api_key.clone()),
    };
    if owner.as_deref() != Some(key.name.as_str()) {
        return Err(not_found());
    }
    // Each recipient's state: its last per-recipient event, or the queue's view.
    let mut rcpts: Vec<(String, serde_json::Value)> = vec![];
    // A delay notice is about a recipient, not a change of its state.
    for e in history.iter().filter(|e| e.recipient.is_some() && e.kind != mailgate_events::Kind::DelayNotice) {
        let r = e.recipient.clone().unwrap_or_default();
        let v = serde_json::json!({ "email": r, "status": e.kind.name(), "reply": e.reply, "at": e.at });
        match rcpts.iter_mut().find(|(a, _)| *a == r) {
            Some(slot) => slot.1 = v,
            None => rcpts.push((r, v)),
        }
    }
    if let Some((env, _)) = &queued {
        for r in &env.recipients {
            if !rcpts.iter().any(|(a, _)| *a == r.address) {
                rcpts.push((r.address.clone(), serde_json::json!({ "email": r.address, "status": "queued" })));
            }
        }
    }
    let state = queued.as_ref().map_or("finished", |(_, s)| *s);
    let body = serde_json::json!({
        "id": id,
        "state": state,
        "recipients": rcpts.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "events": history,
    });
    Ok(json_answer(StatusCode::OK, body.to_string(), false))
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

/// `GET /api/v1/events?since=CURSOR&limit=N`: this key's events after the cursor, and the cursor
/// to ask from next (`next`; the same when nothing new happened).
async fn events_page(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let key = authenticate(&api, &headers)?;
    let log = api.events.clone().ok_or_else(no_events)?;
    let axum::extract::Query(page) = query.map_err(|e| ApiError::field("?since", e.body_text()))?;
    let limit = page.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let name = key.name.clone();
    let _turn = api.reads.acquire().await.expect("never closed");
    let (events, next) = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<Event>, u64)> {
        let (mut out, mut cursor, mut scanned) = (vec![], page.since, 0);
        while out.len() < limit && scanned < SCAN_MAX {
            let chunk = log.since(cursor, PAGE_MAX)?;
            let Some(last) = chunk.last().map(|e| e.seq) else { break };
            scanned += chunk.len();
            for e in chunk {
                if out.len() == limit {
                    break;
                }
                cursor = e.seq;
                if e.api_key.as_deref() == Some(name.as_str()) {
                    out.push(e);
                }
            }
            if cursor < last {
                break;
            }
        }
        Ok((out, cursor))
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string(), 5))?
    .map_err(|e| ApiError::unavailable(format!("the event log cannot be read: {e}"), 5))?;
    let body = serde_json::json!({ "events": events, "next": next });
    Ok(json_answer(StatusCode::OK, body.to_string(), false))
}

/// Serves one connection (keep-alive: many requests).
async fn connection<S>(stream: S, conn: Conn, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req.map(Body::new))
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEAD).max_buf_size(64 << 10);
    if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!("API connection ended: {e}");
    }
}

/// The API key a request's `Authorization: Bearer` names, and one message of its rate.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<Arc<ApiKey>, ApiError> {
    let key = authenticate(api, headers)?;
    if let Err(wait) = api.keys.take(&key) {
        metrics::counter!("mailgate_api_requests_total", "listener" => api.name.to_string(), "status" => "429")
            .increment(1);
        let mut e =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("key {} is over its rate", key.name));
        e.retry_after = Some(wait);
        return Err(e);
    }
    Ok(key)
}

/// The API key a request's `Authorization: Bearer` names.
fn authenticate(api: &Api, headers: &HeaderMap) -> Result<Arc<ApiKey>, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("an API key is required (Authorization: Bearer <key>)"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <key>"))?;
    api.keys.verify(token.trim()).ok_or_else(|| unauthorized("unknown or revoked API key"))
}

/// Reads the body within the listener's limit and deadline, counted against the content memory
/// budget as it grows.
async fn read_body(api: &Api, headers: &HeaderMap, body: Body) -> Result<(Vec<u8>, Reservation), ApiError> {
    let limit = api.conf.body_limit(&api.gate.config().limits);
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let budget = api.gate.budget();
    let first = declared.unwrap_or(64 << 10).min(limit) as usize;
    let busy = || ApiError::unavailable("the gateway is busy receiving other messages; try again shortly", 5);
    let mut hold = budget.reserve(first).ok_or_else(busy)?;
    let mut buf = Vec::with_capacity(first);
    hold.force_to(buf.capacity());
    let mut body = body;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::bad_request("bad_body", format!("reading the body failed: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if (buf.len() + data.len()) as u64 > limit {
                return Err(ApiError::too_large(limit));
            }
            if buf.capacity() - buf.len() < data.len() {
                let want = (buf.len() + data.len()).max(buf.capacity() + buf.capacity() / 4);
                if !hold.grow_to(want) {
                    return Err(busy());
                }
                buf.reserve_exact(want - buf.len());
                hold.force_to(buf.capacity());
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(api.conf.request_timeout, read).await {
        Ok(Ok(())) => Ok((buf, hold)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the body did not arrive in time")),
    }
}

/// The SMTP content rules (line length, NUL octets, size), as DATA applies them.
fn content_rules(api: &Api, message: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    let cfg = api.gate.config();
    let (max_size, max_line) = (cfg.limits.max_message_size, cfg.limits.text_line - 2);
    // What mail-builder writes (its last line has no line end), and most raw messages, are
    // kept as they are: no copy.
    if let Some(add_crlf) = mailgate_smtp::content::as_stored(&message, max_size, max_line) {
        let mut message = message;
        if add_crlf {
            message.extend_from_slice(b"\r\n");
        }
        return Ok(message);
    }
    let strip = cfg.limits.nul_bytes == mailgate_config::NulBytes::Strip;
    let mut r = ContentReceiver::new(Mode::Bdat, max_size, max_line).strip_nul(strip);
    let mut out = Vec::with_capacity(message.len() + 2);
    r.feed(&message, &mut out);
    match r.finish_bdat(&mut out) {
        Ok(()) => Ok(out),
        Err(ContentError::TooBig) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the message exceeds {} octets", cfg.limits.max_message_size),
        )),
        Err(e) => {
            let reply = e.reply();
            let mut a = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_message", reply.text.to_string());
            a.smtp = Some((&reply).into());
            Err(a)
        }
    }
}

fn json_answer(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    if replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// A handler's answer, its failure made a response (logged when it is the server's).
fn respond(api: &Api, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        if e.status.is_server_error() {
            tracing::warn!(listener = %api.name, status = e.status.as_u16(), "API request failed: {}", e.message);
        }
        e.into_response()
    })
}

/// `POST /api/v1/messages`.
async fn submit(State(api): State<Arc<Api>>, Extension(conn): Extension<Conn>, req: Request) -> Response {
    let resp = respond(&api, submit_inner(&api, conn, req).await);
    if resp.status() == StatusCode::ACCEPTED {
        api.accepted.increment(1);
    } else {
        metrics::counter!("mailgate_api_requests_total", "listener" => api.name.to_string(), "status" => resp.status().as_str().to_string())
            .increment(1);
    }
    resp
}

/// A request read and checked: what [`send`] passes on.
struct Parsed {
    from: mailgate_smtp::Address,
    rcpts: Vec<mailgate_smtp::Address>,
    message: Vec<u8>,
    /// The header's From addresses: the key's sender domains bind them too.
    header_from: Vec<String>,
    tags: Vec<String>,
    metadata: std::collections::BTreeMap<String, String>,
    idempotency_key: Option<String>,
}

impl From<request::Built> for Parsed {
    fn from(b: request::Built) -> Parsed {
        Parsed {
            header_from: vec![b.from.as_str().to_string()],
            from: b.from,
            rcpts: b.rcpts,
            message: b.message,
            tags: b.tags,
            metadata: b.metadata,
            idempotency_key: b.idempotency_key,
        }
    }
}

/// One message's answer: `202` and its receipt, `422` and the refusal (both kept for an
/// idempotent repeat), or a replay of the first answer to its idempotency key.
struct Answered {
    status: StatusCode,
    body: String,
    replayed: bool,
}

/// The `Idempotency-Key` header, checked.
fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(&IDEMPOTENCY_KEY) {
        Some(v) => {
            let k = v.to_str().map_err(|_| ApiError::field("Idempotency-Key", "not printable ASCII"))?;
            request::check_idempotency_key(k, "Idempotency-Key")?;
            Ok(Some(k.to_string()))
        }
        None => Ok(None),
    }
}

async fn submit_inner(api: &Arc<Api>, conn: Conn, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let key = authorize(api, &parts.headers)?;
    // The media type without parameters, compared without regard to case (RFC 9110 §8.3.1).
    let ctype = parts.headers.get(header::CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
    let ctype = ctype.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let is_raw = match ctype {
        t if t.eq_ignore_ascii_case(b"application/json") => false,
        t if t.eq_ignore_ascii_case(b"message/rfc822") => true,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json or message/rfc822",
            ))
        }
    };
    let header_key = header_key(&parts.headers)?;
    let (body, hold) = read_body(api, &parts.headers, body).await?;
    let cfg = api.gate.config();
    let max_rcpts = cfg.limits.max_recipients;
    let mut parsed = if is_raw {
        // Percent-decoded pairs (invalid UTF-8 made U+FFFD, as axum's `Query` does).
        let query: Vec<(String, String)> =
            parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let tags = request::tags(query.iter().filter(|(k, _)| k == "tag").map(|(_, v)| v.as_str()), "?tag")?;
        let r = raw::read(&query, body, max_rcpts, cfg.limits.max_header_size)?;
        Parsed {
            from: r.from,
            rcpts: r.rcpts,
            message: r.message,
            header_from: r.header_from,
            tags,
            metadata: Default::default(),
            idempotency_key: None,
        }
    } else {
        let b = request::build(&body, &cfg.server.hostname, max_rcpts)?;
        drop(body);
        Parsed::from(b)
    };
    parsed.idempotency_key = header_key.or(parsed.idempotency_key);
    let a = send(api, &conn, &key, parsed, hold).await?;
    Ok(json_answer(a.status, a.body, a.replayed))
}

/// Passes one read message on: the key's sender domains, the content rules, idempotency, the
/// gateway's message path. `hold` is the memory budget's reservation it is counted against.
async fn send(
    api: &Arc<Api>,
    conn: &Conn,
    key: &ApiKey,
    p: Parsed,
    mut hold: Reservation,
) -> Result<Answered, ApiError> {
    let Parsed { from, rcpts, message, header_from, tags, metadata, idempotency_key: idem_key } = p;
    // The key's sender domains bind the envelope sender and every From address.
    let domain_of = |a: &str| a.rsplit_once('@').map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
    for a in std::iter::once(from.as_str()).chain(header_from.iter().map(String::as_str)) {
        if !key.allows(&domain_of(a)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_sender",
                format!("key {} may not send as {a}", key.name),
            ));
        }
    }
    let message = content_rules(api, message)?;
    hold.force_to(message.capacity());
    let guard = match &idem_key {
        None => None,
        Some(k) => match api.idem.begin(&key.name, k) {
            Begin::Replay(a) => {
                let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::ACCEPTED);
                return Ok(Answered { status, body: a.body, replayed: true });
            }
            Begin::InProgress => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "in_progress",
                    "a request with this idempotency key is being processed",
                ))
            }
            Begin::New(g) => Some(g),
        },
    };
    let smtputf8 = !from.as_str().is_ascii() || rcpts.iter().any(|r| r.is_utf8());
    let id = api.gate.new_id();
    let submission = Submission {
        id: id.clone(),
        key: key.name.clone(),
        peer: conn.peer,
        local: conn.local,
        listener: api.name.clone(),
        pipeline: api.conf.pipeline.clone(),
        tls: conn.tls.clone(),
        from: from.as_str().to_string(),
        rcpts: rcpts.iter().map(|r| r.as_str().to_string()).collect(),
        smtputf8,
        data: message,
        hold,
        meta: ApiMeta {
            key: key.name.clone(),
            tags,
            metadata,
            idempotency_key: idem_key.clone(),
            verp: false,
            pool: key.pool.clone(),
        },
    };
    // From here on the message is the gateway's to finish: a client that goes away mid-request
    // makes hyper drop this future, which must stop neither the message between the spool and
    // the queue nor the recording of its idempotent answer. So it runs as a task of its own.
    let task = tokio::spawn(hand_over(api.clone(), submission, guard));
    task.await.unwrap_or_else(|e| {
        tracing::error!(queue_id = %id, "API submission task failed: {e}");
        Err(ApiError::unavailable("the message could not be processed; try again", 5))
    })
}

/// Passes a submission through the gateway's message path and records its answer for its
/// idempotency key (when it has one).
async fn hand_over(
    api: Arc<Api>,
    submission: Submission,
    guard: Option<crate::idempotency::Guard>,
) -> Result<Answered, ApiError> {
    let id = submission.id.clone();
    let _permit = api.submitting.acquire().await.expect("the listener's semaphore is never closed");
    api.in_flight.fetch_add(1, Ordering::AcqRel);
    let result = api.gate.submit(submission).await;
    api.in_flight.fetch_sub(1, Ordering::AcqRel);
    let (status, body) = match result {
        Ok(receipt) => (StatusCode::ACCEPTED, serde_json::to_string(&receipt).expect("serialises")),
        Err(e) => {
            let e = ApiError::from(e);
            if e.status != StatusCode::UNPROCESSABLE_ENTITY {
                return Err(e);
            }
            (e.status, e.body().to_string())
        }
    };
    if let Some(g) = guard {
        if let Err(e) = g.finish(Answer { status: status.as_u16(), body: body.clone() }).await {
            // The message is stored: the client gets its answer; only a repeat could now
            // send it again.
            tracing::error!(queue_id = %id, "idempotency log write failed: {e}");
        }
    }
    Ok(Answered { status, body, replayed: false })
}

/// Messages of one batch passed on at once: enough for their spool writes to share group
/// commits, few enough that one request cannot take every plugin instance or the spool.
const BATCH_CONCURRENCY: usize = 8;

/// `POST /api/v1/messages/batch`.
async fn submit_batch(State(api): State<Arc<Api>>, Extension(conn): Extension<Conn>, req: Request) -> Response {
    let resp = respond(&api, batch_inner(&api, conn, req).await);
    metrics::counter!("mailgate_api_requests_total", "listener" => api.name.to_string(), "status" => resp.status().as_str().to_string())
        .increment(1);
    resp
}

/// A batch: a JSON array of messages as `POST /api/v1/messages` takes one. The request as a
/// whole is refused (its status, nothing sent) for what concerns it all: the key, the media
/// type, the body's size and syntax, the key's rate (every message counts). Otherwise the
/// answer is `200` with one result per message, in order, each what that message alone would
/// have been answered: `{"status": 202, "id", "recipients"}`, or `{"status": 4xx/5xx,
/// "error": {…}}` (pointers start with the message's index). Each message is all or nothing
/// on its own, as a single request is; an idempotency key is per message (`idempotency_key`).
async fn batch_inner(api: &Arc<Api>, conn: Conn, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let key = authenticate(api, &parts.headers)?;
    let ctype = parts.headers.get(header::CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
    let ctype = ctype.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if !ctype.eq_ignore_ascii_case(b"application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a batch is application/json",
        ));
    }
    if parts.headers.contains_key(&IDEMPOTENCY_KEY) {
        return Err(ApiError::field("Idempotency-Key", "a batch takes an idempotency_key in each message instead"));
    }
    let (body, body_hold) = read_body(api, &parts.headers, body).await?;
    let cfg = api.gate.config();
    let built = request::build_batch(&body, &cfg.server.hostname, cfg.limits.max_recipients)?;
    // The body is read: what stays in memory is the built messages, each counted below as it
    // will be held (alone, until the spool has it).
    drop((body, body_hold));
    match api.keys.take_n(&key, built.len()) {
        Ok(()) => {}
        Err(over) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{} messages are over key {}'s rate", built.len(), key.name),
            );
            match over {
                crate::keys::OverRate::Wait(s) => e.retry_after = Some(s),
                crate::keys::OverRate::Never { per_min } => {
                    e.message = format!(
                        "{} messages at once are more than key {}'s rate allows ({per_min} a minute): send smaller batches",
                        built.len(),
                        key.name
                    );
                }
            }
            return Err(e);
        }
    }
    let budget = api.gate.budget();
    let mut seen = std::collections::HashMap::new();
    let jobs: Vec<Result<(Parsed, Reservation), ApiError>> = built
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let b = b?;
            if let Some(k) = &b.idempotency_key {
                let first = *seen.entry(k.clone()).or_insert(i);
                if first != i {
                    let why = format!("repeats message {first}'s in this batch");
                    return Err(ApiError::field(format!("/{i}/idempotency_key"), why));
                }
            }
            let hold = budget.reserve(b.message.capacity()).ok_or_else(|| {
                ApiError::unavailable("the gateway is busy receiving other messages; try again shortly", 5)
            })?;
            Ok((Parsed::from(b), hold))
        })
        .collect();
    use futures_util::StreamExt as _;
    let (api_ref, conn_ref, key_ref) = (api, &conn, &key);
    let results: Vec<Result<Answered, ApiError>> = futures_util::stream::iter(jobs)
        .map(|job| async move {
            let (parsed, hold) = job?;
            send(api_ref, conn_ref, key_ref, parsed, hold).await
        })
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    let mut out = String::with_capacity(32 + results.len() * 160);
    out.push_str("{\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let status = match r {
            Ok(a) => a.status,
            Err(e) => e.status,
        };
        metrics::counter!("mailgate_api_batch_messages_total", "listener" => api.name.to_string(), "status" => status.as_str().to_string())
            .increment(1);
        out.push_str("{\"status\":");
        out.push_str(status.as_str());
        match r {
            // A receipt or a refusal is an object: its members follow the status.
            Ok(a) => {
                if a.replayed {
                    out.push_str(",\"replayed\":true");
                }
                match a.body.strip_prefix('{').filter(|rest| rest.len() > 1) {
                    Some(rest) => {
                        out.push(',');
                        out.push_str(rest);
                    }
                    None => out.push('}'),
                }
            }
            Err(e) => {
                if e.status.is_server_error() {
                    tracing::warn!(listener = %api.name, status = e.status.as_u16(), "API batch message failed: {}", e.message);
                }
                if let Some(s) = e.retry_after {
                    out.push_str(",\"retry_after\":");
                    out.push_str(&s.to_string());
                }
                out.push_str(",\"error\":");
                out.push_str(&e.body()["error"].to_string());
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    Ok(json_answer(StatusCode::OK, out, false))
}
