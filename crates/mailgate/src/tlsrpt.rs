//! TLS reports (RFC 8460) going out: the delivery agent counts sessions (mailgate-tlsrpt);
//! here the counts are flushed to disk every minute and at shutdown, and after each UTC day
//! every counted domain whose `_smtp._tls` TXT record names a `rua` gets its report — by mail
//! (a message written by mail-auth, through the cleanup stage and the queue like a DSN) or by
//! HTTPS POST. A domain without a record has its counts dropped; a report that reached none of
//! its `rua`s is tried again each hour for three days.

use std::sync::Arc;
use std::time::Duration;

use mailgate_cleanup::{Incoming, Origin, Outcome};
use mailgate_tlsrpt::Reports;
use serde::Serialize;

use crate::server::Shared;

/// How often counts are written to disk (what a crash can lose).
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// How often the sender looks for finished days (and retries failed reports).
const SEND_EVERY: Duration = Duration::from_secs(3600);
/// A day's report not delivered anywhere within this many days is dropped.
const GIVE_UP_DAYS: u64 = 3;
/// `rua` URIs of one record used at most.
const MAX_RUA: usize = 5;

/// What became of one domain's report.
#[derive(Debug, Serialize)]
pub(crate) struct Sent {
    pub domain: String,
    pub day: String,
    /// Each `rua` and what happened there (`queued <id>`, `posted`, or the error).
    pub rua: Vec<(String, String)>,
    /// The counts were dropped: delivered somewhere, nobody asked, or too old.
    pub done: bool,
}

/// Starts the flusher and the daily sender (when `tlsrpt.enabled`); the gateway's shutdown
/// aborts it and flushes once more itself, after the last deliveries.
pub(crate) fn start(shared: &Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let reports = shared.delivery.reports()?.clone();
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut send = tokio::time::interval(SEND_EVERY);
        loop {
            tokio::select! {
                _ = flush.tick() => flush_now(&reports).await,
                _ = send.tick() => {
                    let today = mailgate_tlsrpt::today();
                    for day in reports.days().into_iter().filter(|d| *d < today) {
                        send_day(&shared, &reports, &day).await;
                    }
                }
            }
        }
    }))
}

async fn flush_now(reports: &Arc<Reports>) {
    let r = reports.clone();
    match tokio::task::spawn_blocking(move || r.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("TLS report counts not written: {e}"),
        Err(e) => tracing::warn!("TLS report flush: {e}"),
    }
}

/// Sends every counted domain's report of `day` (also used by `mailgate tlsrpt send`).
pub(crate) async fn send_day(shared: &Arc<Shared>, reports: &Arc<Reports>, day: &str) -> Vec<Sent> {
    let mut out = vec![];
    for domain in reports.domains(day) {
        let sent = send_one(shared, reports, day, &domain).await;
        if sent.done {
            if let Err(e) = reports.remove(day, &domain) {
                tracing::warn!(%domain, %day, "TLS report counts not removed: {e}");
            }
        }
        out.push(sent);
    }
    flush_now(reports).await;
    out
}

/// Whether `day` is more than `GIVE_UP_DAYS` ago.
fn too_old(day: &str) -> bool {
    let now = mailgate_message::date::now_unix();
    day < mailgate_tlsrpt::day_of(now.saturating_sub(GIVE_UP_DAYS * 86_400)).as_str()
}

async fn send_one(shared: &Arc<Shared>, reports: &Arc<Reports>, day: &str, domain: &str) -> Sent {
    let mut sent = Sent { domain: domain.to_string(), day: day.to_string(), rua: vec![], done: false };
    let generation = shared.current();
    let cfg = &generation.config;
    let resolver = shared.delivery.resolver().inner();
    let rua = match resolver.txt_lookup(format!("_smtp._tls.{domain}.")).await {
        Ok(txt) => {
            // RFC 8460 §3: the records that start with the version; exactly one, or none counts.
            let records: Vec<String> = txt
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(t) => {
                        Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                    }
                    _ => None,
                })
                .filter(|t| t.starts_with("v=TLSRPTv1"))
                .collect();
            match records.as_slice() {
                [one] => mailgate_mtasts::tlsrpt_rua(one).unwrap_or_default(),
                _ => vec![],
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => vec![],
        Err(e) => {
            tracing::info!(%domain, %day, "TLS report: _smtp._tls lookup failed, tried again later: {e}");
            sent.done = too_old(day);
            return sent;
        }
    };
    if rua.is_empty() {
        tracing::debug!(%domain, %day, "no TLS-RPT record: counts dropped");
        sent.done = true;
        return sent;
    }
    let org = cfg.tlsrpt.organization.clone().unwrap_or_else(|| cfg.server.hostname.clone());
    let contact = cfg.tlsrpt.contact.clone().unwrap_or_else(|| cfg.postmaster());
    let submitter = cfg.server.hostname.clone();
    let Some(report) = reports.report(day, domain, &org, &contact, &submitter) else {
        sent.done = true;
        return sent;
    };
    let mut delivered = false;
    // The record is the recipient domain's, not ours: a few URIs at most.
    for uri in rua.into_iter().take(MAX_RUA) {
        let result = if let Some(to) = uri.strip_prefix("mailto:") {
            // Only a well-formed mailbox becomes a recipient (no CR/LF, spaces or brackets
            // from someone else's DNS reach an RCPT TO line).
            let to = to.split('?').next().unwrap_or(to);
            match mailgate_smtp::Address::parse_mailbox(to) {
                Ok(a) => by_mail(shared, &report, domain, &submitter, cfg, a.as_str()).await,
                Err(e) => Err(format!("rua {to:?} is not a mailbox ({e:?})")),
            }
        } else if uri.starts_with("https://") {
            by_https(shared, &report, &uri, cfg).await
        } else {
            Err(format!("unsupported rua {uri}"))
        };
        match result {
            Ok(what) => {
                tracing::info!(%domain, %day, rua = %uri, "TLS report {what}");
                delivered = true;
                sent.rua.push((uri, what));
            }
            Err(e) => {
                tracing::warn!(%domain, %day, rua = %uri, "TLS report not sent: {e}");
                sent.rua.push((uri, e));
            }
        }
    }
    sent.done = delivered || too_old(day);
    sent
}

async fn by_mail(
    shared: &Arc<Shared>,
    report: &mailgate_tlsrpt::TlsReport,
    domain: &str,
    submitter: &str,
    cfg: &mailgate_config::Config,
    to: &str,
) -> Result<String, String> {
    let from = cfg.tlsrpt.from.clone().unwrap_or_else(|| cfg.postmaster());
    let data = mailgate_tlsrpt::message(report, domain, submitter, &from, &[to]).map_err(|e| e.to_string())?;
    let cleanup = shared.current().cleanup.clone();
    // The null reverse path: a report must not bounce back into another report (RFC 8460 §5.3
    // leaves it open; DSNs about reports would go nowhere useful).
    let mut env = mailgate_cleanup::envelope(shared.spool.new_id(), String::new(), vec![to.to_string()]);
    env.client = "local TLS report".into();
    let incoming = Incoming { envelope: env, data, hold: None, traced: false };
    match cleanup.submit(&*shared.spool, incoming, &Origin::local(), None).await {
        Ok(Outcome::Kept(a)) => {
            let id = a.envelope.id.clone();
            shared.queue.enqueue(a.envelope, Some(a.data));
            Ok(format!("queued {id}"))
        }
        Ok(Outcome::Dropped { why, .. }) => Err(format!("dropped by cleanup: {why:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn by_https(
    shared: &Arc<Shared>,
    report: &mailgate_tlsrpt::TlsReport,
    uri: &str,
    cfg: &mailgate_config::Config,
) -> Result<String, String> {
    let host = reqwest::Url::parse(uri).ok().and_then(|u| u.host_str().map(str::to_string)).ok_or("no host")?;
    let port = reqwest::Url::parse(uri).ok().and_then(|u| u.port()).unwrap_or(443);
    let addrs = shared.delivery.resolver().addresses(&host, port).await.map_err(|o| o.reply.to_string())?;
    let roots = mailgate_mtasts::roots(cfg.delivery.ca_file.as_deref()).map_err(|e| e.to_string())?;
    mailgate_tlsrpt::post(uri, &addrs, mailgate_tlsrpt::gzip(report), roots).await.map_err(|e| e.to_string())?;
    Ok("posted".into())
}

/// The reports of `day` as they stand (today's so far), for `domain` or every domain.
pub(crate) fn show(shared: &Shared, day: &str, domain: Option<&str>) -> Result<serde_json::Value, String> {
    let reports = shared.delivery.reports().ok_or("TLS reporting is off ([tlsrpt] enabled = true)")?;
    let generation = shared.current();
    let cfg = &generation.config;
    let org = cfg.tlsrpt.organization.clone().unwrap_or_else(|| cfg.server.hostname.clone());
    let contact = cfg.tlsrpt.contact.clone().unwrap_or_else(|| cfg.postmaster());
    let domains = match domain {
        Some(d) => vec![d.to_ascii_lowercase()],
        None => reports.domains(day),
    };
    let list: Vec<serde_json::Value> = domains
        .iter()
        .filter_map(|d| reports.report(day, d, &org, &contact, &cfg.server.hostname))
        .filter_map(|r| serde_json::from_str(&mailgate_tlsrpt::json(&r)).ok())
        .collect();
    Ok(serde_json::json!({ "day": day, "reports": list }))
}
