//! The mailgate gateway: listeners, SMTP sessions and the command line.
//!
//! This crate wires the others together. It owns the session state machine (one file per SMTP
//! verb under `session/`), the accept loops with their connection limits, the relay decision,
//! the `Received:` header, and the CLI. The wire format lives in `mailgate-smtp`, storage in
//! `mailgate-spool`, scheduling in `mailgate-queue`, outbound SMTP in `mailgate-delivery`.
//! Nothing here is a process-wide global: a [`Gateway`] gets its config and spool passed in, so
//! tests can run many gateways in one process.

mod admin;
pub mod alloc;
mod api;
mod api_cli;
mod bounces;
pub mod cli;
mod cli_output;
mod dns_cli;
mod local;
mod logfmt;
mod plugin_cli;
mod plugins;
mod privileges;
mod sendmail;
mod server;
mod service;
mod session;
mod slots;
mod spam_cli;
mod tls;
mod tlsrpt;

pub use server::{Gateway, Shared};
