//! The operator's HTTP endpoint on loopback, served by axum: `GET /metrics` (Prometheus text
//! format), `GET /healthz`, and behind the bearer token when `admin.token` is set: `POST
//! /reload`, `GET /status`, the queue (`/queue…`), the quarantine (`/quarantine…`), the event
//! log (`/events`), the API's suppression list (`/suppressions…`) and TLS reports
//! (`/tlsrpt`, `/tlsrpt/send`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::server::Shared;

use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// The metrics facade has one recorder per process; every gateway in it shares the handle.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
            let b = PrometheusBuilder::new().set_buckets(&latency).ok()?;
            match b.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!("metrics recorder not installed: {e}");
                    None
                }
            }
        })
        .clone()
}

/// What the admin handlers share.
struct Admin {
    handle: PrometheusHandle,
    shared: Arc<Shared>,
    /// `admin.token`: every route but `/metrics` and `/healthz` needs it when set.
    token: Option<String>,
}

/// An admin answer: JSON, or an error with its status and a line of text.
type Answer = Result<([(header::HeaderName, &'static str); 1], String), (StatusCode, String)>;

fn json(body: String) -> Answer {
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

/// The routes. `/metrics` and `/healthz` are open (scrapers and probes on loopback); the rest
/// needs the bearer token when one is configured.
fn router(admin: Arc<Admin>) -> Router {
    let protected = Router::new()
        .route("/reload", post(reload))
        .route(
            "/status",
            get(|State(a): State<Arc<Admin>>| async move { wrap(api(&a.shared, "GET", "/status").await) }),
        )
        .route("/queue", get(queue_list))
        .route(
            "/events",
            get(|State(a): State<Arc<Admin>>, RawQuery(q): RawQuery| async move {
                wrap(api(&a.shared, "GET", &format!("/events?{}", q.unwrap_or_default())).await)
            }),
        )
        .route(
            "/queue/retry-all",
            post(|State(a): State<Arc<Admin>>| async move { wrap(api(&a.shared, "POST", "/queue/retry-all").await) }),
        )
        .route(
            "/queue/{id}",
            get(|State(a): State<Arc<Admin>>, Path(id): Path<String>| async move {
                wrap(api(&a.shared, "GET", &format!("/queue/{id}")).await)
            }),
        )
        .route(
            "/queue/{id}/{action}",
            post(|State(a): State<Arc<Admin>>, Path((id, action)): Path<(String, String)>| async move {
                wrap(api(&a.shared, "POST", &format!("/queue/{id}/{action}")).await)
            }),
        )
        .route(
            "/quarantine",
            get(|State(a): State<Arc<Admin>>| async move { wrap(api(&a.shared, "GET", "/quarantine").await) }),
        )
        .route(
            "/quarantine/{id}",
            get(|State(a): State<Arc<Admin>>, Path(id): Path<String>| async move {
                wrap(api(&a.shared, "GET", &format!("/quarantine/{id}")).await)
            }),
        )
        .route(
            "/quarantine/{id}/{action}",
            post(|State(a): State<Arc<Admin>>, Path((id, action)): Path<(String, String)>| async move {
                wrap(api(&a.shared, "POST", &format!("/quarantine/{id}/{action}")).await)
            }),
        )
        .route(
            "/tlsrpt",
            get(|State(a): State<Arc<Admin>>, RawQuery(q): RawQuery| async move {
                wrap(api(&a.shared, "GET", &format!("/tlsrpt?{}", q.unwrap_or_default())).await)
            }),
        )
        .route(
            "/tlsrpt/send",
            post(|State(a): State<Arc<Admin>>, RawQuery(q): RawQuery| async move {
                wrap(api(&a.shared, "POST", &format!("/tlsrpt/send?{}", q.unwrap_or_default())).await)
            }),
        )
        .route("/suppressions", get(suppression_list))
        .route("/suppressions/remove", post(suppression_remove))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], a.handle.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(admin)
}

fn wrap(r: Result<String, (&'static str, String)>) -> Answer {
    match r {
        Ok(body) => json(body),
        Err((status, msg)) => {
            let code = status.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            Err((StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), format!("{msg}\n")))
        }
    }
}

async fn require_token(State(a): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let Some(token) = a.token.as_deref() else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if constant_time_eq(given, format!("Bearer {token}").as_bytes()) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "bearer token required\n").into_response()
    }
}

/// The API's suppression list, or why there is none.
fn suppressions(a: &Admin) -> Result<&Arc<mailgate_bounces::Suppressions>, (StatusCode, String)> {
    a.shared.suppressions.as_ref().ok_or((
        StatusCode::NOT_FOUND,
        "no suppression list (no [[api]] listener, or bounces.suppress = false)\n".to_string(),
    ))
}

/// `GET /suppressions[?key=NAME]`: the suppressed recipients, by key and address.
async fn suppression_list(State(a): State<Arc<Admin>>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let list = suppressions(&a)?.list(q.get("key").map(String::as_str));
    json(serde_json::to_string(&list).unwrap_or_default())
}

/// `POST /suppressions/remove?key=NAME&address=A`: the key may send to the address again.
async fn suppression_remove(State(a): State<Arc<Admin>>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let list = suppressions(&a)?.clone();
    let (Some(key), Some(address)) = (q.get("key").cloned(), q.get("address").cloned()) else {
        return Err((StatusCode::BAD_REQUEST, "key and address are both needed\n".into()));
    };
    let (k, ad) = (key.clone(), address.clone());
    match tokio::task::spawn_blocking(move || list.remove(&k, &ad)).await {
        Ok(Ok(true)) => {
            tracing::info!(%key, %address, "suppression removed by the administrator");
            json(
                serde_json::json!({ "ok": true, "message": format!("{address} is no longer suppressed for {key}") })
                    .to_string(),
            )
        }
        Ok(Ok(false)) => Err((StatusCode::NOT_FOUND, format!("{address} is not suppressed for {key}\n"))),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    }
}

async fn reload(State(a): State<Arc<Admin>>) -> (StatusCode, String) {
    match a.shared.reload().await {
        Ok(msg) => (StatusCode::OK, format!("{msg}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}\n")),
    }
}

async fn queue_list(State(a): State<Arc<Admin>>, RawQuery(q): RawQuery) -> Answer {
    let target = match q {
        Some(q) => format!("/queue?{q}"),
        None => "/queue".into(),
    };
    wrap(api(&a.shared, "GET", &target).await)
}

/// Binds and serves in the background; returns the bound address.
pub async fn start(addr: SocketAddr, shared: Arc<Shared>, token: Option<String>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(handle) = recorder() else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "admin endpoint: /metrics, /healthz, /reload, /status, /queue, /quarantine");
    let app = router(Arc::new(Admin { handle, shared, token }));
    tokio::spawn(serve(listener, app));
    Ok(Some(bound))
}

/// Connections the endpoint serves at once (each is a file descriptor the SMTP listeners
/// share; the endpoint is on loopback, but any local user can connect).
const CONNECTIONS: usize = 64;

/// How long a request's header may take to arrive (a client that never finishes one must
/// not keep its connection).
const HEAD: std::time::Duration = std::time::Duration::from_secs(10);

/// The accept loop: at most [`CONNECTIONS`], each request header within [`HEAD`].
async fn serve(listener: TcpListener, app: Router) {
    use tower::ServiceExt;
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("admin endpoint: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEAD).max_buf_size(64 << 10);
            if let Err(e) = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await {
                tracing::debug!("admin connection ended: {e}");
            }
        });
    }
}

/// The queue and status API (JSON). Errors carry the HTTP status they become.
async fn api(shared: &Arc<Shared>, method: &str, target: &str) -> Result<String, (&'static str, String)> {
    use mailgate_queue::{AdminOp, State};
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    let item = |env: &mailgate_spool::Envelope, state: mailgate_queue::State| {
        let mut v = serde_json::to_value(env).unwrap_or_default();
        v["state"] = state.name().into();
        // Why each recipient that is not delivered is where it is, from its last reply.
        if let Some(rs) = v["recipients"].as_array_mut() {
            for r in rs {
                if r["status"] != "delivered" {
                    if let Some(reply) = r["last_reply"].as_str() {
                        r["class"] = mailgate_events::classify(reply).name().into();
                    }
                }
            }
        }
        v
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let queue = &shared.queue;
    let quarantined = |id: &str| {
        queue
            .list()
            .into_iter()
            .find(|(e, s)| e.id == id && *s == State::Quarantined)
            .ok_or(("404 Not Found", format!("no message {id} in quarantine")))
    };
    let op_result = |r: Result<String, mailgate_queue::AdminError>| match r {
        Ok(m) => Ok(serde_json::json!({ "ok": true, "message": m }).to_string()),
        Err(e) if e.is_not_found() => Err(("404 Not Found", e.to_string())),
        Err(e) => Err(("409 Conflict", e.to_string())),
    };
    match (method, segs.as_slice()) {
        ("GET", ["tlsrpt"]) => {
            let day = param("day").unwrap_or_else(mailgate_tlsrpt::today);
            let domain = param("domain");
            crate::tlsrpt::show(shared, &day, domain.as_deref())
                .map(|v| v.to_string())
                .map_err(|e| ("404 Not Found", e))
        }
        ("POST", ["tlsrpt", "send"]) => {
            let reports = shared
                .delivery
                .reports()
                .cloned()
                .ok_or(("404 Not Found", "TLS reporting is off ([tlsrpt] enabled = true)".to_string()))?;
            let day = param("day").unwrap_or_else(mailgate_tlsrpt::today);
            let sent = crate::tlsrpt::send_day(shared, &reports, &day).await;
            Ok(serde_json::json!({ "day": day, "sent": sent }).to_string())
        }
        ("GET", ["events"]) => {
            let log = shared
                .events
                .clone()
                .ok_or(("404 Not Found", "events are off ([events] enabled = true)".to_string()))?;
            let since: u64 = param("since").and_then(|s| s.parse().ok()).unwrap_or(0);
            let limit: usize = param("limit").and_then(|s| s.parse().ok()).unwrap_or(100).clamp(1, 1000);
            let events = tokio::task::spawn_blocking(move || log.since(since, limit))
                .await
                .map_err(|e| ("500 Internal Server Error", e.to_string()))?
                .map_err(|e| ("500 Internal Server Error", format!("event log: {e}")))?;
            let next = events.last().map_or(since, |e| e.seq);
            Ok(serde_json::json!({ "events": events, "next": next }).to_string())
        }
        ("GET", ["status"]) => {
            let generation = shared.current();
            let mut counts = std::collections::BTreeMap::new();
            for (_, s) in queue.list() {
                *counts.entry(s.name()).or_insert(0u64) += 1;
            }
            // Each plugin's build, the stages it turned out to have no code at (not called
            // there), and its instances waiting for a session.
            let plugins: Vec<_> = generation
                .plugins
                .as_ref()
                .map(|p| {
                    let described = p.describe().into_iter().zip(p.unused_stages()).zip(p.idle_instances());
                    described
                        .map(|(((n, h), (_, unused)), (_, idle))| {
                            let unused: Vec<&str> = unused.iter().map(|s| s.name()).collect();
                            serde_json::json!({ "name": n, "fingerprint": h, "not_called_at": unused, "idle_instances": idle })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let listeners: Vec<_> = generation
                .config
                .listeners
                .iter()
                .map(|l| serde_json::json!({ "name": l.name, "address": l.address.to_string(), "role": format!("{:?}", l.role).to_lowercase(), "pipeline": l.pipeline }))
                .collect();
            let webhooks: Vec<_> = match (&shared.events, shared.webhooks.get()) {
                (Some(log), Some(hooks)) => {
                    hooks.iter().map(|w| serde_json::json!({ "name": w.name, "backlog": w.backlog(log) })).collect()
                }
                _ => vec![],
            };
            let events = shared.events.as_ref().map(|l| l.last());
            // Destinations and hosts with deliveries in flight, failures or a pause.
            let shaping = shared.delivery.shaper().status();
            Ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "listeners": listeners, "plugins": plugins,
                "queue": counts, "events": events, "webhooks": webhooks, "shaping": shaping })
            .to_string())
        }
        ("GET", ["queue"]) => {
            let (domain, state) = (param("domain").map(|d| d.to_ascii_lowercase()), param("state"));
            let items: Vec<_> = queue
                .list()
                .into_iter()
                .filter(|(_, s)| state.as_deref().is_none_or(|st| st == s.name()))
                .filter(|(e, _)| {
                    domain.as_deref().is_none_or(|d| {
                        e.recipients.iter().any(|r| r.address.to_ascii_lowercase().ends_with(&format!("@{d}")))
                    })
                })
                .map(|(e, s)| item(&e, s))
                .collect();
            Ok(serde_json::Value::Array(items).to_string())
        }
        ("POST", ["queue", "retry-all"]) => op_result(queue.admin(AdminOp::Retry(None)).await),
        ("GET", ["queue", id]) => queue
            .list()
            .into_iter()
            .find(|(e, _)| e.id == *id)
            .map(|(e, s)| item(&e, s).to_string())
            .ok_or(("404 Not Found", format!("no message {id} in the queue"))),
        ("POST", ["queue", id, action]) => {
            let id = id.to_string();
            let op = match *action {
                "retry" => AdminOp::Retry(Some(id)),
                "remove" => AdminOp::Remove(id),
                "bounce" => AdminOp::Bounce(id),
                "hold" => AdminOp::Hold(id),
                "release" => AdminOp::Release(id),
                _ => return Err(("404 Not Found", format!("unknown action {action}"))),
            };
            op_result(queue.admin(op).await)
        }
        ("GET", ["quarantine"]) => {
            let items: Vec<_> =
                queue.list().into_iter().filter(|(_, s)| *s == State::Quarantined).map(|(e, s)| item(&e, s)).collect();
            Ok(serde_json::Value::Array(items).to_string())
        }
        ("GET", ["quarantine", id]) => {
            let (env, state) = quarantined(id)?;
            let mut v = item(&env, state);
            let content = shared.spool.read(&env.id).await.map_err(|e| ("500 Internal Server Error", e.to_string()))?;
            let end = content.windows(4).position(|w| w == b"\r\n\r\n").map_or(content.len(), |p| p + 2);
            v["header"] = String::from_utf8_lossy(&content[..end.min(64 << 10)]).into_owned().into();
            v["size"] = content.len().into();
            Ok(v.to_string())
        }
        ("POST", ["quarantine", id, action]) => {
            let op = match *action {
                "release" => AdminOp::ReleaseQuarantined(id.to_string()),
                "delete" => AdminOp::DeleteQuarantined(id.to_string()),
                _ => return Err(("404 Not Found", format!("unknown action {action}"))),
            };
            op_result(queue.admin(op).await)
        }
        _ => Err(("404 Not Found", format!("no such endpoint: {method} {path}"))),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        use super::constant_time_eq as eq;
        assert!(eq(b"Bearer s3cret", b"Bearer s3cret"));
        assert!(!eq(b"Bearer s3cres", b"Bearer s3cret"));
        assert!(!eq(b"Bearer s3cre", b"Bearer s3cret"));
        assert!(!eq(b"", b"x"));
    }
}
