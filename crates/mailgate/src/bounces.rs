//! Bounces that come back later, wired to the event log: a message to a VERP return path
//! becomes `bounced` events for the API message it is about (never a message in the queue),
//! and `bounced` events of API messages feed the per-key suppression list.

use std::collections::BTreeSet;
use std::sync::Arc;

use mailgate_bounces::{parse_report, Suppressed, Suppressions};
use mailgate_events::{BounceClass, Event, EventLog, Kind};
use mailgate_smtp::{Enhanced, Reply};

use crate::server::Shared;

/// How many of a message's events are read to find it and its recipients.
const HISTORY: usize = 10_000;

/// The classes that suppress a recipient: the address or its domain does not exist. Policy
/// blocks, full mailboxes and expiry are not the recipient's fault for good.
fn suppresses(class: BounceClass) -> bool {
    matches!(class, BounceClass::InvalidRecipient | BounceClass::BadDomain)
}

/// Takes a message sent to VERP return paths (`rcpts`, checked at RCPT) and records what it
/// reports as events, synced before the reply. The reply is `250` when the message was read
/// (whether it was a bounce or not: it is never kept), `451` when the events could not be
/// written (the sender tries again).
pub(crate) async fn intake(shared: &Arc<Shared>, sid: &str, sender: &str, rcpts: &[String], data: &[u8]) -> Reply {
    let (Some(verp), Some(log)) = (shared.verp.as_ref(), shared.events.as_ref()) else {
        return Reply::new(451, Enhanced(4, 3, 0), "bounce processing is not configured");
    };
    let report = parse_report(data);
    let mut events = vec![];
    for rcpt in rcpts {
        let Some(id) = verp.queue_id(rcpt) else { continue };
        let history = {
            let (log, id) = (log.clone(), id.clone());
            tokio::task::spawn_blocking(move || log.for_message(&id, HISTORY)).await
        };
        let history = match history {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::error!(session = sid, queue_id = %id, "event log not readable: {e}");
                return Reply::new(451, Enhanced(4, 3, 0), "cannot read the event log now");
            }
            Err(e) => {
                tracing::error!(session = sid, queue_id = %id, "event lookup failed: {e}");
                return Reply::new(451, Enhanced(4, 3, 0), "cannot read the event log now");
            }
        };
        let Some(received) = history.iter().find(|e| e.kind == Kind::Received) else {
            tracing::info!(session = sid, queue_id = %id, "bounce for a message no longer in the event log: dropped");
            continue;
        };
        let known: BTreeSet<String> =
            history.iter().filter_map(|e| e.recipient.as_ref()).map(|r| r.to_ascii_lowercase()).collect();
        let about = |rcpt: &str, reply: String, class: BounceClass, remote: Option<String>, detail: String| {
            let mut ev = Event::new(Kind::Bounced, &id, &received.sender, None).rcpt(rcpt);
            ev.api_key = received.api_key.clone();
            ev.tags = received.tags.clone();
            ev.metadata = received.metadata.clone();
            ev.reply = Some(reply);
            ev.class = Some(class);
            ev.remote_host = remote;
            ev.detail = Some(detail);
            ev
        };
        let only = (known.len() == 1).then(|| known.iter().next().cloned()).flatten();
        match &report {
            Some(r) => {
                let by = r.reporting_mta.as_deref().unwrap_or("a remote system");
                for rr in r.recipients.iter().filter(|rr| rr.failed()) {
                    // The report's recipient, or its original one, must be one of the message's;
                    // a report naming no known recipient is about the only one, if there is one.
                    let named = [Some(&rr.final_recipient), rr.original_recipient.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(|a| a.to_ascii_lowercase())
                        .find(|a| known.contains(a));
                    let Some(target) = named.or_else(|| only.clone()) else {
                        tracing::info!(session = sid, queue_id = %id, rcpt = %rr.final_recipient, "bounce names a recipient the message did not have: ignored");
                        continue;
                    };
                    let class =
                        mailgate_events::classify(&format!("{}00 {}", &rr.status.get(..1).unwrap_or("5"), rr.status));
                    let detail = format!("reported later by {by}");
                    events.push(about(&target, rr.reply(), class, rr.remote_mta.clone(), detail));
                }
            }
            // A bounce without a report (qmail and friends): from the null sender, not an
            // automatic reply (RFC 3834), about a message with one recipient.
            None if sender.is_empty() && !auto_replied(data) && only.is_some() => {
                let target = only.clone().unwrap_or_default();
                let detail = "a bounce without a delivery report".to_string();
                events.push(about(&target, "bounce without a report".into(), BounceClass::Other, None, detail));
            }
            None => tracing::info!(session = sid, queue_id = %id, "message to a return path is not a bounce: dropped"),
        }
    }
    let n = events.len();
    if let Err(e) = log.append(events).await {
        tracing::error!(session = sid, "bounce events not recorded: {e}");
        return Reply::new(451, Enhanced(4, 3, 0), "cannot record the bounce now");
    }
    tracing::info!(session = sid, bounced = n, "bounce processed");
    metrics::counter!("mailgate_bounces_received_total").increment(1);
    Reply::new(250, Enhanced(2, 0, 0), format!("Ok: bounce processed ({n} recipients)"))
}

/// Whether the message says it is an automatic reply (RFC 3834 `Auto-Submitted` other than
/// `no`), judged from its header section.
fn auto_replied(data: &[u8]) -> bool {
    let head = mailgate_queue::dsn::headers_of(data);
    head.split(|b| *b == b'\n').any(|l| {
        let l = String::from_utf8_lossy(l).to_ascii_lowercase();
        l.strip_prefix("auto-submitted:").is_some_and(|v| v.trim() != "no")
    })
}

/// Follows the event log and adds the API recipients that bounced for good to the suppression
/// list, from where it stopped last (kept in the list's file), until `stop`.
pub(crate) async fn feed(log: Arc<EventLog>, list: Arc<Suppressions>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Events looked at per read: a read starts at the log's mark before the cursor (one every
    // 1024 events), so a large batch keeps that re-read small against what is new.
    const BATCH: usize = 16_384;
    let mut moved = log.watch();
    loop {
        let from = list.seq();
        let batch = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.since_kinds(from, BATCH, &[Kind::Bounced])).await
        };
        let (batch, last) = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!("suppression list: event log not readable: {e}");
                (Vec::new(), from)
            }
            Err(_) => return,
        };
        if last > from {
            let now = mailgate_message::date::now_unix();
            let new: Vec<Suppressed> = batch
                .into_iter()
                .filter(|e| e.class.is_some_and(suppresses))
                .filter_map(|e| {
                    Some(Suppressed {
                        key: e.api_key?,
                        address: e.recipient?,
                        reason: e.reply.unwrap_or_default(),
                        class: serde_json::to_value(e.class?).ok()?.as_str()?.to_string(),
                        queue_id: e.queue_id,
                        at: now,
                    })
                })
                .collect();
            if new.is_empty() {
                // Only the cursor moves (in memory; it is written with the next entry): no
                // file to write, so no trip to the blocking pool — this runs at every commit
                // of the event log.
                if let Err(e) = list.add(new, last) {
                    tracing::error!("suppression list not written: {e}");
                }
                continue;
            }
            let list2 = list.clone();
            match tokio::task::spawn_blocking(move || list2.add(new, last)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(added = n, "recipients suppressed after hard bounces"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("suppression list not written: {e}"),
                Err(_) => return,
            }
            continue;
        }
        tokio::select! {
            r = moved.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        // Read at most once a second: under load the log moves for every message, and a
        // suppression a second late costs nothing.
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
