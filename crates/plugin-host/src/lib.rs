//! The WebAssembly plugin host.
//!
//! This crate owns everything between the gateway and its plugins: the one `bindgen!` over
//! `wit/` ([`bindings`]), a narrow wasmtime engine wrapper (pooling allocator, epoch deadlines,
//! memory limits — [`engine`]), the host imports plugins may call, one file and one state per
//! capability ([`host`]), the one stage runner that asks plugins in order ([`runner`]), and
//! the chain that turns their answers into decisions at each stage ([`chain`]).
//!
//! It must not know sockets, the spool or the queue: the session and the queue call it with
//! plain values and get plain decisions back. A plugin's failure (trap, timeout, out of memory,
//! an invalid answer) is that plugin's only: it becomes its configured `on-error` verdict.

pub mod bindings;
pub mod chain;
pub mod data;
pub mod engine;
mod exports;
pub mod failure;
pub mod host;
pub mod kv;
pub mod modify;
pub mod route;
mod runner;

pub use chain::{DataDecision, Decision, Plugins, QueueChain, RouteDecision, Routed, SessionChain};
pub use engine::PluginEngine;
pub use kv::{KvError, KvStore, MemoryKv};

/// A failure of the plugin machinery (not a policy answer).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: {msg}")]
    Load { plugin: String, msg: String },
}
