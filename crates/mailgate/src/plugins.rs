//! Wiring between the gateway and its plugin chains: WIT views of sessions and envelopes, and
//! the queue's hooks (on-route, on-delivery-result) backed by the plugins' queue chain.

use mailgate_delivery::{RcptOutcome, Status};
use mailgate_plugin_host::bindings::types;
use mailgate_plugin_host::modify::route_text;
use mailgate_plugin_host::{QueueChain, RouteDecision};
use mailgate_queue::Hooks;
use mailgate_spool::{BoxFuture, Envelope};

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

/// Parses `"550 5.1.1 text"` into a WIT reply.
pub fn wit_reply(text: &str) -> Option<types::Reply> {
    let mut it = text.splitn(3, ' ');
    let code: u16 = it.next()?.parse().ok()?;
    let second = it.next().unwrap_or("");
    let (enhanced, rest) = match mailgate_smtp::Enhanced::parse(second) {
        Some(_) => (second.to_string(), it.next().unwrap_or("").to_string()),
        None => (String::new(), [second, it.next().unwrap_or("")].join(" ").trim().to_string()),
    };
    Some(types::Reply { code, enhanced, text: rest })
}

/// The queue's view of the plugins: a recipient's domain picks the pipeline.
pub struct PluginHooks {
    pub chain: QueueChain,
    pub config: std::sync::Arc<mailgate_config::Config>,
}

impl PluginHooks {
    fn pipeline(&self, rcpt: &str) -> &str {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        self.config.pipeline_for_domain(domain).unwrap_or(mailgate_config::DEFAULT_PIPELINE)
    }
}

impl Hooks for PluginHooks {
    fn route<'a>(&'a self, env: &'a Envelope, rcpt: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.chain.on_route(self.pipeline(rcpt), &spooled(env), rcpt).await {
                RouteDecision::Default => None,
                RouteDecision::Route(r) => Some(route_text(&r)),
                RouteDecision::Reply(r) => Some(format!("reject:{r}")),
            }
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
                reply: wit_reply(&o.reply),
                remote_host: o.remote_host.clone(),
            };
            self.chain.on_delivery_result(self.pipeline(rcpt), &res).await;
        })
    }
}
