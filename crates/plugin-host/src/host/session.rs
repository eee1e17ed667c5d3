//! `session`: the connection facts and the envelope a hook serves. Always granted. The hooks
//! are given only version numbers (`conn-version`, `envelope-ref`); a plugin asks for the
//! contents when the number is one it has not seen (the SDK does so, once per change, and
//! for the envelope only when the plugin reads it).

use std::sync::Arc;

use crate::bindings::mailgate::plugin::session;
use crate::bindings::types::{ConnectionInfo, Envelope};

#[derive(Default)]
pub struct SessionState {
    /// The facts the current (or last) session hook's `conn-version` names; `None` before
    /// the first session hook of this store.
    pub conn: Option<Arc<ConnectionInfo>>,
    /// The envelope the current hook's `envelope-ref` names; `None` in hooks without one.
    pub env: Option<Arc<Envelope>>,
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

    fn get_envelope(&mut self, first: u32) -> wasmtime::Result<Envelope> {
        Ok(match &self.env {
            Some(e) => Envelope {
                mail_from: e.mail_from.clone(),
                rcpt_to: e.rcpt_to.get(first as usize..).unwrap_or_default().to_vec(),
                body_8bit: e.body_8bit,
                smtputf8: e.smtputf8,
                size_hint: e.size_hint,
            },
            None => Envelope {
                mail_from: String::new(),
                rcpt_to: Vec::new(),
                body_8bit: false,
                smtputf8: false,
                size_hint: None,
            },
        })
    }
}
