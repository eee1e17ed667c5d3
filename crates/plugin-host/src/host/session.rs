//! `session`: the connection facts of the session a hook serves. Always granted. The hooks
//! are given only a version number (`conn-version`); a plugin asks for the facts when the
//! number is one it has not seen (the SDK does so, once per change).

use std::sync::Arc;

use crate::bindings::mailgate::plugin::session;
use crate::bindings::types::ConnectionInfo;

#[derive(Default)]
pub struct SessionState {
    /// The facts the current (or last) session hook's `conn-version` names; `None` before
    /// the first session hook of this store.
    pub conn: Option<Arc<ConnectionInfo>>,
}

impl session::Host for SessionState {
    fn connection(&mut self) -> wasmtime::Result<ConnectionInfo> {
        Ok(match &self.conn {
            Some(c) => ConnectionInfo::clone(c),
            None => ConnectionInfo {
                session_id: String::new(),
                client_ip: String::new(),
                client_port: 0,
                local_ip: String::new(),
                local_port: 0,
                listener: String::new(),
                tls: None,
                helo: None,
                authenticated_as: None,
                trusted: false,
            },
        })
    }
}
