//! `log`: the plugin's log lines, tagged with the plugin, the stage and the session.

use mailgate_config::Stage;

use super::{Caller, Context};
use crate::bindings::mailgate::plugin::log;

/// Longest log line a plugin may write, in characters (the rest is cut).
pub const MAX_LOG_LINE: usize = 4096;

/// Always granted: the tags of the instance's lines.
pub struct LogState {
    caller: Caller,
    /// The stage being called now; the chain sets it before every call.
    pub stage: Stage,
}

impl LogState {
    pub(super) fn new(cx: &Context<'_>) -> LogState {
        LogState { caller: cx.caller(), stage: Stage::Connect }
    }
}

impl log::Host for LogState {
    fn log(&mut self, level: log::Level, msg: String) -> wasmtime::Result<()> {
        let msg: String = msg.chars().take(MAX_LOG_LINE).collect();
        let (plugin, sid, stage) = (&*self.caller.plugin, &*self.caller.sid, self.stage.name());
        match level {
            log::Level::Trace => tracing::trace!(plugin, stage, sid, "{msg}"),
            log::Level::Debug => tracing::debug!(plugin, stage, sid, "{msg}"),
            log::Level::Info => tracing::info!(plugin, stage, sid, "{msg}"),
            log::Level::Warn => tracing::warn!(plugin, stage, sid, "{msg}"),
            log::Level::Error => tracing::error!(plugin, stage, sid, "{msg}"),
        }
        Ok(())
    }
}
