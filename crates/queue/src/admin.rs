//! Operator requests on queued messages, run by the scheduler (which owns the waiting and
//! held messages, so a request never races a delivery).

use std::collections::HashMap;
use std::sync::Arc;

use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{QueueId, RcptStatus};

use mailgate_events::{Event, Kind};

use crate::{AdminError, AdminOp, Entry, Queue, State};

impl Queue {
    pub(crate) fn admin_op(
        &self,
        op: AdminOp,
        waiting: &mut HashMap<QueueId, Entry>,
        held: &mut HashMap<QueueId, Entry>,
    ) -> Result<String, AdminError> {
        let busy = |id: &QueueId| -> AdminError {
            let id = id.clone();
            match self.inner.view.lock().unwrap().get(&id) {
                Some((_, State::Active)) => AdminError::Active(id),
                Some((_, State::Held)) => AdminError::Held(id),
                Some((_, State::Quarantined)) => AdminError::Quarantined(id),
                _ => AdminError::NotFound(id),
            }
        };
        match op {
            AdminOp::Retry(Some(id)) => {
                let mut e = waiting.remove(&id).ok_or_else(|| busy(&id))?;
                e.env.next_attempt = 0;
                self.dispatch(e);
                Ok(format!("{id}: retrying now"))
            }
            AdminOp::Retry(None) => {
                let n = waiting.len();
                for (_, mut e) in waiting.drain() {
                    e.env.next_attempt = 0;
                    self.dispatch(e);
                }
                Ok(format!("retrying {n} deferred messages now"))
            }
            AdminOp::ReleaseQuarantined(id) | AdminOp::DeleteQuarantined(id) if !quarantined(held, &id) => {
                Err(AdminError::NotQuarantined(id))
            }
            AdminOp::ReleaseQuarantined(id) => {
                let mut e = held.remove(&id).expect("checked by the guard");
                let reason = e.env.quarantine.take().unwrap_or_default();
                tracing::info!(queue_id = %id, %reason, "released from quarantine by the administrator");
                self.admin_event(Kind::Released, &e.env, "released from quarantine by the administrator");
                e.env.next_attempt = 0;
                self.inner.spool.update(&e.env);
                self.dispatch(e);
                Ok(format!("{id}: released from quarantine"))
            }
            AdminOp::DeleteQuarantined(id) => {
                if let Some(e) = held.remove(&id) {
                    self.admin_event(Kind::Removed, &e.env, "deleted from quarantine by the administrator");
                }
                self.forget(&id);
                tracing::info!(queue_id = %id, "deleted from quarantine by the administrator");
                Ok(format!("{id}: deleted"))
            }
            AdminOp::Remove(id) => {
                let e = waiting.remove(&id).or_else(|| held.remove(&id)).ok_or_else(|| busy(&id))?;
                self.admin_event(Kind::Removed, &e.env, "removed by the administrator (no DSN)");
                self.forget(&id);
                tracing::info!(queue_id = %id, "removed by the administrator (no DSN)");
                Ok(format!("{id}: removed"))
            }
            AdminOp::Bounce(id) => {
                let e = waiting.remove(&id).or_else(|| held.remove(&id)).ok_or_else(|| busy(&id))?;
                let q = self.clone();
                tokio::spawn(async move { q.bounce_now(e).await });
                Ok(format!("{id}: returned to the sender"))
            }
            AdminOp::Hold(id) => {
                let mut e = waiting.remove(&id).ok_or_else(|| busy(&id))?;
                e.env.held = true;
                self.inner.spool.update(&e.env);
                self.set_view(&e.env, State::Held);
                held.insert(id.clone(), e);
                Ok(format!("{id}: held"))
            }
            AdminOp::Release(id) => {
                if quarantined(held, &id) {
                    return Err(AdminError::Quarantined(id));
                }
                let mut e = held.remove(&id).ok_or_else(|| AdminError::NotHeld(id.clone()))?;
                self.admin_event(Kind::Released, &e.env, "released from hold by the administrator");
                e.env.held = false;
                e.env.next_attempt = 0;
                self.inner.spool.update(&e.env);
                self.dispatch(e);
                Ok(format!("{id}: released"))
            }
        }
    }

    /// The message is done with: out of the spool and the view.
    pub(crate) fn forget(&self, id: &QueueId) {
        self.inner.view.lock().unwrap().remove(id);
        self.inner.spool.complete(id);
    }

    /// Fails every pending recipient now and sends the DSN.
    async fn bounce_now(&self, e: Entry) {
        let mut env = e.env;
        let data = match e.data {
            Some(d) => d,
            None => {
                // Without its content the DSN still says what failed, with no headers quoted.
                Arc::new(self.inner.spool.read(&env.id).await.unwrap_or_default())
            }
        };
        let mut failed = vec![];
        let reply = Reply::new(550, Enhanced(5, 0, 0), "returned to the sender by the administrator");
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.status == RcptStatus::Pending {
                r.status = RcptStatus::Failed;
                r.last_reply = Some(reply.to_string());
                failed.push(crate::Failed { i, reply: reply.clone(), diagnostic: Some((reply.to_string(), false)) });
            }
        }
        if self.bounce(&env, &failed, &data).await {
            tracing::info!(queue_id = %env.id, "bounced by the administrator");
            if let Some(log) = &self.inner.events {
                let events = failed
                    .iter()
                    .map(|crate::Failed { i, reply, .. }| {
                        let mut ev = Event::about(Kind::Bounced, &env).rcpt(&env.recipients[*i].address);
                        ev.reply = Some(reply.to_string());
                        ev.class = Some(mailgate_events::BounceClass::Other);
                        ev.detail = Some("returned to the sender by the administrator".into());
                        ev
                    })
                    .collect();
                if let Err(e) = log.append(events).await {
                    tracing::error!(queue_id = %env.id, "events not recorded: {e}");
                }
            }
            self.forget(&env.id);
        } else {
            for f in &failed {
                env.recipients[f.i].status = RcptStatus::Pending;
            }
            self.requeue(env);
        }
    }
}

/// Whether `id` is a quarantined message (checked inside the scheduler, so no release or
/// delete can race another).
fn quarantined(held: &HashMap<QueueId, Entry>, id: &QueueId) -> bool {
    held.get(id).is_some_and(|e| e.env.quarantine.is_some())
}
