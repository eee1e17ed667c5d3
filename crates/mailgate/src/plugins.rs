//! Wiring between the gateway and its plugin chains: WIT views of sessions and envelopes, the
//! session chain as the cleanup stage's on-data policy, and the queue's hooks (on-route,
//! on-delivery-result) backed by the plugins' queue chain.

use std::sync::Arc;

use mailgate_cleanup::{Changes, DataPolicy, PolicyAnswer, Verdict};
use mailgate_delivery::{RcptOutcome, Status};
use mailgate_plugin_host::bindings::types::{self, ConnectionInfo};
use mailgate_plugin_host::{modify, DataDecision, QueueChain, RouteDecision, SessionChain};
use mailgate_queue::{Hooks, RouteAnswer};
use mailgate_spool::{BoxFuture, Envelope, RouteChoice};

/// A WIT envelope.
pub fn wit_envelope(
    from: &str,
    rcpts: Vec<String>,
    body_8bit: bool,
    smtputf8: bool,
    size: Option<u64>,
) -> types::Envelope {
    types::Envelope { mail_from: from.to_string(), rcpt_to: rcpts, body_8bit, smtputf8, size_hint: size }
}

fn spooled(env: &Envelope) -> types::Envelope {
    wit_envelope(
        &env.sender,
        env.recipients.iter().map(|r| r.address.clone()).collect(),
        env.body_8bit,
        env.smtputf8,
        None,
    )
}

/// A reply as plugins see it.
pub fn wit_reply(r: &mailgate_smtp::Reply) -> types::Reply {
    types::Reply {
        code: r.code,
        enhanced: r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
        text: r.text.to_string(),
    }
}

/// A plugin's route as the spool keeps it.
pub fn route_choice(r: &types::Route) -> RouteChoice {
    match r {
        types::Route::Mx(d) => RouteChoice::Mx { domain: d.clone() },
        types::Route::Smarthost((host, port)) => RouteChoice::Smarthost { host: host.clone(), port: *port },
        types::Route::Maildir(p) => RouteChoice::Maildir { path: p.clone() },
        types::Route::Discard => RouteChoice::Discard,
        types::Route::Hold => RouteChoice::Hold,
        types::Route::Reject(r) => {
            RouteChoice::Reject { code: r.code, enhanced: r.enhanced.clone(), text: r.text.clone() }
        }
    }
}

/// A session's plugin chain as the cleanup stage's on-data policy, for one message.
pub struct ChainPolicy<'a> {
    pub chain: &'a mut SessionChain,
    pub conn: Arc<ConnectionInfo>,
}

impl DataPolicy for ChainPolicy<'_> {
    fn on_data<'a>(&'a mut self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, PolicyAnswer> {
        Box::pin(async move {
            let wenv = Arc::new(wit_envelope(
                &env.sender,
                env.recipients.iter().map(|r| r.address.clone()).collect(),
                env.body_8bit,
                env.smtputf8,
                Some(data.len() as u64),
            ));
            let (decision, mods) = self.chain.on_data(&self.conn, &wenv, data).await;
            let verdict = match decision {
                DataDecision::Continue => Verdict::Continue,
                DataDecision::Reply(r) => Verdict::Reply(r),
                DataDecision::Disconnect(r) => Verdict::Disconnect(r),
                DataDecision::Discard => Verdict::Discard,
                DataDecision::Quarantine(why) => Verdict::Quarantine(why),
            };
            let e = modify::translate(&mods);
            let changes = Changes {
                content: e.content,
                sender: e.sender,
                add_rcpts: e.add_rcpts,
                remove_rcpts: e.remove_rcpts,
                route: e.route.as_ref().map(route_choice),
                refused: e.refused,
            };
            PolicyAnswer { verdict, changes }
        })
    }
}

type SpooledKey = (usize, String, u32, usize);

/// The queue's view of the plugins: a recipient's domain picks the pipeline.
pub struct PluginHooks {
    pub chain: QueueChain,
    pub config: std::sync::Arc<mailgate_config::Config>,
    /// The plugins' view of the message whose recipients are being routed, made once for all
    /// of them, not once per recipient: keyed by where the queue keeps that envelope now, its
    /// queue id, attempt and recipient count.
    last: std::sync::Mutex<Option<(SpooledKey, Arc<types::Envelope>)>>,
}

impl PluginHooks {
    pub fn new(chain: QueueChain, config: Arc<mailgate_config::Config>) -> PluginHooks {
        PluginHooks { chain, config, last: Default::default() }
    }

    /// The plugins' view of `env`, shared by the route questions of its recipients.
    fn spooled(&self, env: &Envelope) -> Arc<types::Envelope> {
        let key = (env as *const Envelope as usize, env.id.clone(), env.attempts, env.recipients.len());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((k, wenv)) if *k == key => wenv.clone(),
            _ => {
                let wenv = Arc::new(spooled(env));
                *last = Some((key, wenv.clone()));
                wenv
            }
        }
    }

    fn pipeline(&self, rcpt: &str) -> &str {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        self.config.pipeline_for_domain(domain).unwrap_or(mailgate_config::DEFAULT_PIPELINE)
    }
}

impl Hooks for PluginHooks {
    fn route<'a>(&'a self, env: &'a Envelope, rcpt: &'a str) -> BoxFuture<'a, RouteAnswer> {
        Box::pin(async move {
            let routed = self.chain.on_route(self.pipeline(rcpt), &self.spooled(env), rcpt).await;
            let choice = match routed.decision {
                RouteDecision::Default => None,
                RouteDecision::Route(r) => Some(route_choice(&r)),
                RouteDecision::Reply(r) => Some(RouteChoice::Reject {
                    code: r.code,
                    enhanced: r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
                    text: r.text.to_string(),
                }),
            };
            RouteAnswer { choice, pool: routed.pool, shaping: routed.shaping }
        })
    }

    fn delivery_result<'a>(&'a self, env: &'a Envelope, rcpt: &'a str, o: &'a RcptOutcome) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let res = types::DeliveryResult {
                queue_id: env.id.clone(),
                rcpt: rcpt.to_string(),
                attempt: env.attempts + 1,
                status: match o.status {
                    Status::Delivered => types::DeliveryStatus::Delivered,
                    Status::Deferred => types::DeliveryStatus::Deferred,
                    Status::Failed => types::DeliveryStatus::Failed,
                },
                reply: Some(wit_reply(&o.reply)),
                remote_host: o.remote_host.clone(),
            };
            self.chain.on_delivery_result(self.pipeline(rcpt), &res).await;
        })
    }
}
