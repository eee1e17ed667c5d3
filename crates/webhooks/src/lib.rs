//! Webhooks: the event log's events POSTed in batches to each `[[webhook]]` receiver, signed
//! as the Standard Webhooks specification says (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256>`), retried with backoff until the receiver says
//! 2xx, from a cursor kept on disk — at least once, across restarts; a receiver de-duplicates
//! by event id. Each receiver has its own task reading the log: a slow or dead one never slows
//! mail or the other receivers, and its backlog is a metric.
//!
//! This crate owns batching, signing, retries and cursors. It must not know where events come
//! from: it reads [`EventLog`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mailgate_config::Webhook;
use mailgate_events::{Event, EventLog};

/// Events read from the log per look.
const READ: usize = 1000;
/// The longest wait between two tries of a failing receiver.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {0}: the secret is not base64 after whsec_")]
    Secret(String),
    #[error("webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{path}: {source}")]
    Cursor { path: PathBuf, source: std::io::Error },
}

/// The key of a secret: the bytes after `whsec_` (base64), or the text itself.
fn key_of(w: &Webhook) -> Result<Vec<u8>, WebhookError> {
    match w.secret.strip_prefix("whsec_") {
        Some(b64) => {
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| WebhookError::Secret(w.name.clone()))
        }
        None => Ok(w.secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(format!("{id}.{timestamp}.").as_bytes());
    ctx.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref()))
}

/// A running webhook: its cursor, for status and metrics.
pub struct Running {
    pub name: String,
    pub cursor: Arc<AtomicU64>,
}

impl Running {
    /// Events not yet delivered to this receiver (some may not be of its types).
    pub fn backlog(&self, log: &EventLog) -> u64 {
        log.last().saturating_sub(self.cursor.load(Ordering::Acquire))
    }
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.cursor"))
}

/// Writes the cursor durably: a temporary file, fsync, rename.
fn save_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(seq.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The HTTP client: rustls with ring and the public roots, no redirects (a receiver that moves
/// must be reconfigured, not followed), a deadline per request.
fn client(timeout: Duration) -> Result<reqwest::Client, WebhookError> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .no_proxy()
        .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Starts one task per `[[webhook]]`; cursors live in `dir` (a new receiver starts at the end
/// of the log: it gets what happens from now on).
pub fn start(
    hooks: &[Webhook],
    log: Arc<EventLog>,
    dir: &Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Running>, WebhookError> {
    std::fs::create_dir_all(dir).map_err(|source| WebhookError::Cursor { path: dir.to_path_buf(), source })?;
    let mut out = vec![];
    for w in hooks {
        let path = cursor_path(dir, &w.name);
        let cursor = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let at = log.last();
                save_cursor(&path, at).map_err(|source| WebhookError::Cursor { path: path.clone(), source })?;
                at
            }
            Err(source) => return Err(WebhookError::Cursor { path, source }),
        };
        let cursor = Arc::new(AtomicU64::new(cursor));
        let task = Task {
            hook: w.clone(),
            key: key_of(w)?,
            client: client(w.timeout)?,
            log: log.clone(),
            path,
            cursor: cursor.clone(),
        };
        tokio::spawn(task.run(stop.clone()));
        out.push(Running { name: w.name.clone(), cursor });
    }
    Ok(out)
}

struct Task {
    hook: Webhook,
    key: Vec<u8>,
    client: reqwest::Client,
    log: Arc<EventLog>,
    path: PathBuf,
    cursor: Arc<AtomicU64>,
}

impl Task {
    fn wanted(&self, e: &Event) -> bool {
        self.hook.events.is_empty() || self.hook.events.iter().any(|k| k == e.kind.name())
    }

    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut moved = self.log.watch();
        let name = self.hook.name.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            let cursor = self.cursor.load(Ordering::Acquire);
            let backlog = self.log.last().saturating_sub(cursor);
            metrics::gauge!("mailgate_webhook_backlog", "webhook" => name.clone()).set(backlog as f64);
            if backlog == 0 {
                tokio::select! {
                    _ = moved.changed() => continue,
                    _ = stop.changed() => return,
                }
            }
            let log = self.log.clone();
            let read = tokio::task::spawn_blocking(move || log.since(cursor, READ)).await;
            let events = match read {
                Ok(Ok(e)) => e,
                other => {
                    tracing::error!(webhook = %name, "cannot read the event log: {other:?}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let Some(last_read) = events.last().map(|e| e.seq) else {
                // Retention dropped what the cursor pointed at: go on from what is left.
                self.advance(self.log.last()).await;
                continue;
            };
            let mut batch = vec![];
            let mut upto = last_read;
            for e in events {
                if self.wanted(&e) {
                    if batch.len() == self.hook.batch_size {
                        upto = batch.last().map_or(upto, |b: &Event| b.seq);
                        break;
                    }
                    batch.push(e);
                }
            }
            if !batch.is_empty() && !self.deliver(&batch, &mut stop).await {
                return;
            }
            self.advance(upto).await;
        }
    }

    async fn advance(&self, seq: u64) {
        self.cursor.store(seq, Ordering::Release);
        let path = self.path.clone();
        let saved = tokio::task::spawn_blocking(move || save_cursor(&path, seq)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::error!(webhook = %self.hook.name, "cannot save the cursor (events may be sent again): {saved:?}");
        }
    }

    /// POSTs one batch until the receiver takes it (2xx); false when stopped first.
    async fn deliver(&self, batch: &[Event], stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
        // Stable across retries: the receiver can tell a repeat.
        let msg_id = format!("msg_{}_{first}_{last}", self.hook.name);
        let body = serde_json::json!({
            "type": "mailgate.events",
            "data": { "events": batch },
        })
        .to_string();
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let sig = sign(&self.key, &msg_id, ts, body.as_bytes());
            let sent = self
                .client
                .post(&self.hook.url)
                .header("content-type", "application/json")
                .header("webhook-id", &msg_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!("mailgate_webhook_events_total", "webhook" => self.hook.name.clone())
                        .increment(batch.len() as u64);
                    tracing::debug!(webhook = %self.hook.name, first, last, "events delivered");
                    return true;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            metrics::counter!("mailgate_webhook_failures_total", "webhook" => self.hook.name.clone()).increment(1);
            tracing::warn!(webhook = %self.hook.name, attempt, retry_in = ?backoff, "webhook delivery failed: {outcome}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_the_specification_example() {
        // The Standard Webhooks specification's test vector.
        let key =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            super::sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
