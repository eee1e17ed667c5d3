//! `config`: the plugin's own table from the gateway's configuration, read-only.

use super::HostState;
use crate::bindings::mailgate::plugin::config;

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.meta.config.get(&key).map(scalar))
    }
    fn get_list(&mut self, key: String) -> wasmtime::Result<Vec<String>> {
        Ok(match self.meta.config.get(&key) {
            None => vec![],
            Some(serde_json::Value::Array(a)) => a.iter().map(scalar).collect(),
            Some(v) => vec![scalar(v)],
        })
    }
    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.meta.config.keys().cloned().collect())
    }
}
