//! The sending API's way into the message path: a submission passes the API listener's
//! pipeline (on-mail-from, on-rcpt per recipient, on-data) and the cleanup stage into the
//! spool, exactly as an SMTP transaction does, and is queued the same way.

use std::sync::Arc;

use mailgate_api::{Gate, RcptReceipt, RcptState, Receipt, Submission, SubmitError};
use mailgate_cleanup::{DataPolicy, Incoming, Outcome, Refusal};
use mailgate_plugin_host::bindings::types::{ConnectionInfo, TlsInfo};
use mailgate_plugin_host::Decision;
use mailgate_spool::BoxFuture;
use tracing::Instrument;

use crate::plugins::{wit_envelope, ChainPolicy};
use crate::server::Shared;

/// The gateway as the API sees it.
pub struct ApiGate {
    pub shared: Arc<Shared>,
}

impl Gate for ApiGate {
    fn submit(&self, s: Submission) -> BoxFuture<'_, Result<Receipt, SubmitError>> {
        let span = tracing::info_span!("api", request = %s.id, listener = %s.listener, key = %s.key, client = %s.peer);
        Box::pin(submit(self.shared.clone(), s).instrument(span))
    }

    fn config(&self) -> Arc<mailgate_config::Config> {
        self.shared.current().config.clone()
    }

    fn budget(&self) -> Arc<mailgate_message::Budget> {
        self.shared.budget.clone()
    }

    fn new_id(&self) -> String {
        self.shared.spool.new_id()
    }

    fn queued(&self, id: &str) -> Option<(mailgate_spool::Envelope, &'static str)> {
        self.shared.queue.find(id).map(|(e, s)| (e, s.name()))
    }
}

async fn submit(shared: Arc<Shared>, s: Submission) -> Result<Receipt, SubmitError> {
    let generation = shared.current();
    let mut chain = generation.plugins.as_ref().map(|p| p.session(&s.id, &s.pipeline));
    let result = submit_with(&shared, &generation, s, &mut chain).await;
    // Each request is a session of its own: its instances may serve the next one.
    if let Some(chain) = chain {
        chain.end().await;
    }
    result
}

async fn submit_with(
    shared: &Arc<Shared>,
    generation: &crate::server::Generation,
    s: Submission,
    chain: &mut Option<mailgate_plugin_host::SessionChain>,
) -> Result<Receipt, SubmitError> {
    // What plugins are told about the "connection"; built only when there are plugins.
    let info = || ConnectionInfo {
        session_id: s.id.clone(),
        client_ip: mailgate_smtp::ip_text(s.peer.ip()),
        client_port: s.peer.port(),
        local_ip: mailgate_smtp::ip_text(s.local.ip()),
        local_port: s.local.port(),
        listener: String::from(&*s.listener),
        tls: s.tls.as_ref().map(|(version, cipher)| TlsInfo { version: version.clone(), cipher: cipher.clone() }),
        helo: None,
        authenticated_as: Some(s.key.clone()),
        trusted: false,
    };
    let body_8bit = !s.data.is_ascii(); // word at a time
    let size = Some(s.data.len() as u64);
    let refused = |d: Decision| match d {
        Decision::Next | Decision::Accept => None,
        Decision::Reply(r) | Decision::Disconnect(r) => Some(r),
    };
    let info = chain.is_some().then(info);
    if let (Some(c), Some(info)) = (chain.as_mut(), &info) {
        let env = wit_envelope(&s.from, vec![], body_8bit, s.smtputf8, size);
        if let Some(r) = refused(c.on_mail_from(info, env).await) {
            tracing::info!(reply = %r, "API message refused at on-mail-from");
            return Err(SubmitError::Refused(r));
        }
    }
    let mut accepted: Vec<String> = vec![];
    let mut receipts: Vec<RcptReceipt> = vec![];
    for rcpt in &s.rcpts {
        if shared.suppressions.as_ref().is_some_and(|l| l.contains(&s.key, rcpt)) {
            tracing::info!(rcpt = %rcpt, "API recipient suppressed (bounced for good before)");
            receipts.push(RcptReceipt { email: rcpt.clone(), status: RcptState::Suppressed, smtp: None });
            continue;
        }
        let verdict = match (chain.as_mut(), &info) {
            (Some(c), Some(info)) => refused(c.on_rcpt(info, rcpt).await),
            _ => None,
        };
        match verdict {
            None => {
                if let Some(c) = chain.as_mut() {
                    c.add_recipient(rcpt);
                }
                accepted.push(rcpt.clone());
                receipts.push(RcptReceipt { email: rcpt.clone(), status: RcptState::Queued, smtp: None });
            }
            Some(r) => {
                tracing::info!(rcpt = %rcpt, reply = %r, "API recipient refused at on-rcpt");
                receipts.push(RcptReceipt { email: rcpt.clone(), status: RcptState::Refused, smtp: Some((&r).into()) });
            }
        }
    }
    if accepted.is_empty() {
        return Err(SubmitError::NoRecipients(receipts));
    }
    // With VERP, the return path names this message, so a bounce that comes back later is
    // matched to it (and the sender's own address gets no bounces from us).
    let return_path = match &shared.verp {
        Some(v) if !s.from.is_empty() => v.address(&s.id),
        _ => s.from.clone(),
    };
    let mut meta = s.meta;
    meta.verp = return_path != s.from;
    let mut env = mailgate_cleanup::envelope(s.id.clone(), return_path, accepted);
    env.body_8bit = body_8bit;
    env.smtputf8 = s.smtputf8;
    let mut client = String::with_capacity(s.listener.len() + s.key.len() + 24);
    for part in [&*s.listener, " key ", &s.key, " ("] {
        client.push_str(part);
    }
    mailgate_smtp::push_ip(&mut client, s.peer.ip());
    client.push(')');
    env.client = client;
    env.api = Some(Box::new(meta));
    let origin = mailgate_cleanup::Origin {
        // No HELO over HTTP: the listener's name stands in for it in `Received: from`.
        client: Some((String::from(&*s.listener), s.peer.ip())),
        with: Some("HTTP".into()),
        tls: s.tls.clone(),
        user: Some(s.key.clone()),
        listener: String::from(&*s.listener),
        trusted: false,
        auth: None,
    };
    let meta = env.api.clone();
    let incoming = Incoming { envelope: env, data: s.data, hold: Some(s.hold), traced: false };
    let mut policy = chain.as_mut().zip(info).map(|(chain, conn)| {
        chain.use_pipeline(&s.pipeline);
        ChainPolicy { chain, conn: Arc::new(conn) }
    });
    let policy = policy.as_mut().map(|p| p as &mut dyn DataPolicy);
    let cleanup = generation.cleanup.clone();
    match cleanup.submit(&*shared.spool, incoming, &origin, policy).await {
        Ok(Outcome::Kept(a)) => {
            tracing::info!(
                queue_id = %a.envelope.id,
                from = %a.envelope.sender,
                rcpts = a.envelope.recipients.len(),
                size = a.data.len(),
                "message accepted"
            );
            crate::server::record(shared, crate::server::reception(&a.envelope, "api")).await;
            crate::server::queue_accepted(shared, a);
        }
        Ok(Outcome::Dropped { id, why }) => crate::server::dropped(&id, why),
        Err(refusal) => {
            let reply = refusal.reply();
            crate::server::refused(shared, &s.id, &s.from, meta.as_deref(), &reply, "api").await;
            return Err(match refusal {
                Refusal::Spool(e) => {
                    tracing::error!(queue_id = %s.id, "spool store failed: {e}");
                    SubmitError::Unavailable(reply)
                }
                Refusal::Interrupted => SubmitError::Unavailable(reply),
                r => {
                    tracing::info!(queue_id = %s.id, reply = %reply, "message refused: {r}");
                    SubmitError::Refused(reply)
                }
            });
        }
    }
    Ok(Receipt { id: s.id, recipients: receipts })
}

/// Binds and serves the configured `[[api]]` listeners. Their idempotency table is opened once
/// and told about the API messages the spool holds (see `mailgate_api::idempotency`).
pub(crate) async fn start(
    shared: &Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<mailgate_api::Listening>> {
    let config = shared.current().config.clone();
    let Some(keys) = shared.api_keys.clone() else { return Ok(vec![]) };
    let idem = Arc::new(mailgate_api::Idempotency::open(&config.spool.path)?);
    for (env, _) in shared.queue.list() {
        if let Some(meta) = env.api.as_ref() {
            if let Some(k) = &meta.idempotency_key {
                let receipt = Receipt {
                    id: env.id.clone(),
                    recipients: env
                        .recipients
                        .iter()
                        .map(|r| RcptReceipt { email: r.address.clone(), status: RcptState::Queued, smtp: None })
                        .collect(),
                };
                let body = serde_json::to_string(&receipt)?;
                let answer = mailgate_api::idempotency::Answer { status: 202, body };
                idem.recover(&meta.key, k, env.received_at / 1000, answer);
            }
        }
    }
    let gate: Arc<dyn Gate> = Arc::new(ApiGate { shared: shared.clone() });
    let services = mailgate_api::Services { gate, keys, idem, events: shared.events.clone() };
    let mut out = vec![];
    for a in &config.apis {
        let listener = tokio::net::TcpListener::bind(a.address)
            .await
            .map_err(|e| anyhow::anyhow!("api {} on {}: {e}", a.name, a.address))?;
        let tls = if a.tls { shared.acceptor.clone() } else { None };
        let (listening, _task) = mailgate_api::serve(listener, a.clone(), tls, services.clone(), stop.clone())?;
        tracing::info!(listener = %a.name, addr = %listening.addr, tls = a.tls, "sending API listening");
        out.push(listening);
    }
    Ok(out)
}
