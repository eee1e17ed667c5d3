//! `data`: look-ups in the read-only tables granted to the plugin (`data = { name = "file" }`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Caller, Context};
use crate::bindings::mailgate::plugin::data;
use crate::data::DataTable;

/// Longest data-table key looked up (longer keys are absent).
pub const MAX_DATA_KEY: usize = 1024;

/// The grant: only the tables named in the plugin's config entry exist for it.
pub struct DataState {
    tables: Arc<HashMap<String, Arc<DataTable>>>,
    caller: Caller,
}

impl DataState {
    pub(super) fn new(cx: &Context<'_>) -> DataState {
        DataState { tables: cx.meta.tables.clone(), caller: cx.caller() }
    }
}

impl data::Host for DataState {
    fn lookup(
        &mut self,
        table: String,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<String>>, data::DataError>> {
        let Some(t) = self.tables.get(&table) else {
            let Caller { plugin, sid } = &self.caller;
            tracing::debug!(%plugin, %sid, %table, "data table denied (not granted)");
            return Ok(Err(data::DataError::Denied));
        };
        let value = |(i, k): (usize, &String)| {
            if i < crate::data::MAX_KEYS && k.len() <= MAX_DATA_KEY {
                t.get(k).map(str::to_string)
            } else {
                None
            }
        };
        Ok(Ok(keys.iter().enumerate().map(value).collect()))
    }
}
