//! The operator's HTTP endpoint on loopback: `GET /metrics` (Prometheus text format),
//! `GET /healthz` and `POST /reload` (bearer token when `admin.token` is set). A deliberately
//! tiny HTTP/1.1 responder, one request per connection: the gateway needs no HTTP framework.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::server::Shared;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shared: Arc<Shared>, token: Option<String>) {
    let token: Arc<Option<String>> = Arc::new(token);
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let (handle, shared, token) = (handle.clone(), shared.clone(), token.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    if s.read_buf(&mut buf).await? == 0 {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
            let authorized = match token.as_deref() {
                None => true,
                Some(t) => String::from_utf8_lossy(&buf).lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization")
                            && constant_time_eq(v.trim().as_bytes(), format!("Bearer {t}").as_bytes())
                    })
                }),
            };
            let request = String::from_utf8_lossy(line).into_owned();
            let mut parts = request.split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let public = matches!(target, "/metrics" | "/healthz");
            let (status, ctype, body) = match line {
                _ if !public && !authorized => {
                    ("401 Unauthorized", "text/plain", "bearer token required\n".to_string())
                }
                b"POST /reload HTTP/1.1" | b"POST /reload HTTP/1.0" => match shared.reload().await {
                    Ok(msg) => ("200 OK", "text/plain", format!("{msg}\n")),
                    Err(e) => ("500 Internal Server Error", "text/plain", format!("reload failed: {e}\n")),
                },
                _ if target.starts_with("/queue") || target.starts_with("/quarantine") || target == "/status" => {
                    match api(&shared, method, target).await {
                        Ok(json) => ("200 OK", "application/json", json),
                        Err((code, msg)) => (code, "text/plain", format!("{msg}\n")),
                    }
                }
                b"GET /metrics HTTP/1.1" | b"GET /metrics HTTP/1.0" => {
                    ("200 OK", "text/plain; version=0.0.4", handle.render())
                }
                b"GET /healthz HTTP/1.1" | b"GET /healthz HTTP/1.0" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// Binds and serves in the background; returns the bound address.
pub async fn start(addr: SocketAddr, shared: Arc<Shared>, token: Option<String>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(handle) = recorder() else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "admin endpoint: /metrics, /healthz, /reload");
    tokio::spawn(serve(listener, handle, shared, token));
    Ok(Some(bound))
}

/// The queue and status API (JSON). Errors carry the HTTP status they become.
async fn api(shared: &Arc<Shared>, method: &str, target: &str) -> Result<String, (&'static str, String)> {
    use mailgate_queue::{AdminOp, State};
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    let item = |env: &mailgate_spool::Envelope, state: mailgate_queue::State| {
        let mut v = serde_json::to_value(env).unwrap_or_default();
        v["state"] = state.name().into();
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
        ("GET", ["status"]) => {
            let generation = shared.current();
            let mut counts = std::collections::BTreeMap::new();
            for (_, s) in queue.list() {
                *counts.entry(s.name()).or_insert(0u64) += 1;
            }
            let plugins: Vec<_> = generation
                .plugins
                .as_ref()
                .map(|p| p.describe())
                .unwrap_or_default()
                .into_iter()
                .map(|(n, h)| serde_json::json!({ "name": n, "fingerprint": h }))
                .collect();
            let listeners: Vec<_> = generation
                .config
                .listeners
                .iter()
                .map(|l| serde_json::json!({ "name": l.name, "address": l.address.to_string(), "role": format!("{:?}", l.role).to_lowercase(), "pipeline": l.pipeline }))
                .collect();
            Ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "listeners": listeners, "plugins": plugins, "queue": counts }).to_string())
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
