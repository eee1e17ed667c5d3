//! Why a plugin's call gave no answer the chain can use. Every one is that plugin's failure
//! only: logged with plugin, stage and session, counted by kind, and turned into its
//! `on_error` verdict. Decisions are made on the variant; the text is for the log.

use mailgate_config::Stage;
use mailgate_smtp::{Enhanced, Reply};

use crate::bindings::types;
use crate::route::RouteRefused;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The instance could not be made (out of instance slots, a start function trapped).
    #[error("instantiate: {0}")]
    Instantiate(String),
    /// `init` answered an error.
    #[error("init refused: {0}")]
    InitRefused(String),
    /// The call ran out of its CPU budget.
    #[error("CPU budget exceeded (interrupted)")]
    Budget,
    /// The call trapped (or a host import failed fatally).
    #[error("trap: {0}")]
    Trap(String),
    /// The answer's reply is not one a verdict may carry.
    #[error(transparent)]
    Reply(#[from] BadReply),
    /// The verdict is not one this stage takes.
    #[error("verdict {verdict} is not valid at {}", stage.name())]
    Verdict { stage: Stage, verdict: &'static str },
    /// A route outside the plugin's grant.
    #[error(transparent)]
    Route(#[from] RouteRefused),
    /// A source pool or shaping class the operator did not configure.
    #[error("on-route named {what} {name:?}, which the configuration does not have")]
    Unknown { what: &'static str, name: String },
    /// More modifications in one on-data answer than any plugin needs: the answer is not
    /// applied (each could cost a pass over the message).
    #[error("on-data answered {count} modifications; at most {max}")]
    TooManyModifications { count: usize, max: usize },
    /// The message could not be handed over as a resource.
    #[error("resource table: {0}")]
    Resource(#[from] wasmtime::component::ResourceTableError),
}

impl Failure {
    /// A failed call or instantiation, by what wasmtime says happened.
    pub(crate) fn of(e: wasmtime::Error) -> Failure {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Failure::Budget,
            Some(t) => Failure::Trap(t.to_string()),
            None => Failure::Trap(format!("{e:#}")),
        }
    }

    /// The label of `mailgate_plugin_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Instantiate(_) | Failure::InitRefused(_) => "instantiate",
            Failure::Budget => "budget",
            Failure::Trap(_) => "trap",
            Failure::Reply(_)
            | Failure::Verdict { .. }
            | Failure::Unknown { .. }
            | Failure::TooManyModifications { .. } => "invalid_answer",
            Failure::Route(_) => "route_refused",
            Failure::Resource(_) => "resource",
        }
    }
}

/// A reply a plugin's verdict carried that the gateway will not send.
#[derive(Debug, thiserror::Error)]
pub enum BadReply {
    #[error("reply code {0} is not allowed for this verdict")]
    Class(u16),
    #[error("bad enhanced code {0:?}")]
    Enhanced(String),
    #[error("enhanced code {enhanced} does not match reply code {code}")]
    Mismatch { code: u16, enhanced: String },
}

/// Checks a plugin's reply: the class must be one of `classes`, the enhanced code must parse
/// and agree, and the text must be one sane line.
pub(crate) fn checked_reply(r: &types::Reply, classes: &[u8]) -> Result<Reply, BadReply> {
    let class = (r.code / 100) as u8;
    if !classes.contains(&class) || !(400..600).contains(&r.code) {
        return Err(BadReply::Class(r.code));
    }
    let enhanced = if r.enhanced.is_empty() {
        Enhanced(class, 0, 0)
    } else {
        let e = Enhanced::parse(&r.enhanced).ok_or_else(|| BadReply::Enhanced(r.enhanced.clone()))?;
        if e.0 != class {
            return Err(BadReply::Mismatch { code: r.code, enhanced: r.enhanced.clone() });
        }
        e
    };
    let text: String = r.text.chars().filter(|c| !c.is_control()).take(400).collect();
    Ok(Reply::new(r.code, enhanced, if text.is_empty() { "Refused by policy".to_string() } else { text }))
}

/// The reply a plugin failure becomes when its `on_error` is tempfail.
pub(crate) fn policy_failure() -> Reply {
    Reply::new(451, Enhanced(4, 3, 0), "Temporary policy failure, try again later")
}
