//! `log`: the plugin's log lines, tagged with the plugin, the stage and the session.

use mailgate_config::Stage;

use super::{Caller, Context};
use crate::bindings::mailgate::plugin::log;

/// Longest log line a plugin may write, in characters (the rest is cut).
pub const MAX_LOG_LINE: usize = 4096;

/// Lines one hook call may write; the rest are counted, and the count logged once when the
/// call ends (a plugin logging in a loop would otherwise fill the disk within its CPU budget).
pub const MAX_LOG_LINES_PER_CALL: u32 = 200;

/// Always granted: the tags of the instance's lines.
pub struct LogState {
    caller: Caller,
    /// The stage being called now; the chain sets it before every call.
    pub stage: Stage,
    /// Lines written and dropped in the current call.
    written: u32,
    dropped: u32,
}

impl LogState {
    pub(super) fn new(cx: &Context<'_>) -> LogState {
        LogState { caller: cx.caller(), stage: Stage::Connect, written: 0, dropped: 0 }
    }

    /// The call has ended: says how many lines were dropped, if any, and starts counting anew.
    pub fn end_call(&mut self) {
        if self.dropped > 0 {
            let (plugin, sid, stage) = (&*self.caller.plugin, &*self.caller.sid, self.stage.name());
            tracing::warn!(
                plugin,
                stage,
                sid,
                dropped = self.dropped,
                "plugin log lines dropped: more than {MAX_LOG_LINES_PER_CALL} in one call"
            );
        }
        (self.written, self.dropped) = (0, 0);
    }
}

impl log::Host for LogState {
    fn log(&mut self, level: log::Level, msg: String) -> wasmtime::Result<()> {
        if self.written >= MAX_LOG_LINES_PER_CALL {
            self.dropped = self.dropped.saturating_add(1);
            return Ok(());
        }
        self.written += 1;
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
