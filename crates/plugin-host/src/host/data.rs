//! `data`: look-ups in the read-only tables granted to the plugin (`data = { name = "file" }`).

use super::HostState;
use crate::bindings::mailgate::plugin::data;

/// Longest data-table key looked up (longer keys are absent).
pub const MAX_DATA_KEY: usize = 1024;

impl data::Host for HostState {
    fn lookup(
        &mut self,
        table: String,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<String>>, data::DataError>> {
        // The grant check: only tables named in the plugin's config entry exist for it.
        let Some(t) = self.meta.tables.get(&table) else {
            tracing::debug!(plugin = %self.meta.name, sid = %self.sid, %table, "data table denied (not granted)");
            return Ok(Err(data::DataError::Denied));
        };
        Ok(Ok(keys
            .iter()
            .enumerate()
            .map(
                |(i, k)| {
                    if i < crate::data::MAX_KEYS && k.len() <= MAX_DATA_KEY {
                        t.get(k).map(str::to_string)
                    } else {
                        None
                    }
                },
            )
            .collect()))
    }
}
