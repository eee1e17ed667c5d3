//! The connection facts a session hook is asked about, fetched from the host when the plugin
//! first reads them.

use std::cell::{OnceCell, RefCell};
use std::ops::Deref;
use std::rc::Rc;

use crate::bindings::mailgate::plugin::session;

/// The facts themselves, as the WIT record `connection-info` has them: `session_id`,
/// `client_ip`, `client_port`, `local_ip`, `local_port`, `listener`, `tls`, `helo`,
/// `authenticated_as`, `trusted`.
pub type ConnectionData = crate::bindings::mailgate::plugin::types::ConnectionInfo;

/// What the host knows about the SMTP client. It reads as a [`ConnectionData`]
/// (`conn.client_ip`, `conn.helo`, …): the host passes only a version number, and the facts
/// are fetched when the plugin first reads them — a hook that never looks costs nothing for
/// them — and kept for the instance's later hooks until the version changes (HELO, AUTH, a
/// new session).
pub struct ConnectionInfo {
    version: u64,
    data: OnceCell<Rc<ConnectionData>>,
}

thread_local! {
    /// The facts last fetched and their version (0: none; the host never gives out 0).
    static KEPT: RefCell<(u64, Option<Rc<ConnectionData>>)> = const { RefCell::new((0, None)) };
}

impl ConnectionInfo {
    pub(crate) fn new(version: u64) -> ConnectionInfo {
        ConnectionInfo { version, data: OnceCell::new() }
    }

    fn fetch(version: u64) -> Rc<ConnectionData> {
        KEPT.with_borrow_mut(|kept| match kept {
            (v, Some(facts)) if *v == version => facts.clone(),
            _ => {
                let facts = Rc::new(session::connection());
                *kept = (version, Some(facts.clone()));
                facts
            }
        })
    }
}

impl Deref for ConnectionInfo {
    type Target = ConnectionData;

    fn deref(&self) -> &ConnectionData {
        self.data.get_or_init(|| ConnectionInfo::fetch(self.version))
    }
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ConnectionData::fmt(self, f)
    }
}
