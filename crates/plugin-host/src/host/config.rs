//! `config`: the plugin's own table from the gateway's configuration, read-only. Always
//! granted; the table holds only the plugin's own keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Context;
use crate::bindings::mailgate::plugin::config;

pub struct ConfigState {
    table: Arc<BTreeMap<String, serde_json::Value>>,
}

impl ConfigState {
    pub(super) fn new(cx: &Context<'_>) -> ConfigState {
        ConfigState { table: cx.meta.config.clone() }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl config::Host for ConfigState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&key).map(scalar))
    }
    fn get_list(&mut self, key: String) -> wasmtime::Result<Vec<String>> {
        Ok(match self.table.get(&key) {
            None => vec![],
            Some(serde_json::Value::Array(a)) => a.iter().map(scalar).collect(),
            Some(v) => vec![scalar(v)],
        })
    }
    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.keys().cloned().collect())
    }
}
