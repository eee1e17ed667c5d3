//! `log`: the plugin's log lines, tagged with the plugin and the session.

use super::HostState;
use crate::bindings::mailgate::plugin::log;

/// Longest log line a plugin may write, in characters (the rest is cut).
pub const MAX_LOG_LINE: usize = 4096;

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, msg: String) -> wasmtime::Result<()> {
        let msg: String = msg.chars().take(MAX_LOG_LINE).collect();
        let (plugin, sid) = (&self.meta.name, &*self.sid);
        match level {
            log::Level::Trace => tracing::trace!(plugin, sid, "{msg}"),
            log::Level::Debug => tracing::debug!(plugin, sid, "{msg}"),
            log::Level::Info => tracing::info!(plugin, sid, "{msg}"),
            log::Level::Warn => tracing::warn!(plugin, sid, "{msg}"),
            log::Level::Error => tracing::error!(plugin, sid, "{msg}"),
        }
        Ok(())
    }
}
