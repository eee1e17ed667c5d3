//! EHLO and HELO (RFC 5321 §4.1.1.1): greet, reset any transaction, list the extensions.

use mailgate_smtp::address::valid_domain;
use mailgate_smtp::{Enhanced, Reply};

use super::{Next, Session, SessionIo};

impl<S: SessionIo> Session<S> {
    pub(crate) async fn ehlo(&mut self, host: String, esmtp: bool) -> Next {
        // A name or an address literal; anything else is a syntax error (RFC 5321 §4.1.4).
        if !valid_domain(&host) {
            return self.bad_command(Reply::new(501, Enhanced(5, 5, 4), "Invalid domain name in HELO/EHLO"));
        }
        // Before the plugins, so that their `spf-helo` sees this name.
        self.policy.auth.lock().await.set_helo(&host);
        if let Some(chain) = self.policy.chain.as_mut() {
            let mut conn = mailgate_plugin_host::bindings::types::ConnectionInfo::clone(&self.conn.info());
            conn.helo = Some(host.clone());
            let d = chain.on_helo(&conn, &host).await;
            if let Err(next) = self.enforce(d) {
                return next;
            }
        }
        self.tx = None;
        self.conn.esmtp = esmtp;
        let me = &self.config.server.hostname;
        let text = if esmtp {
            let size = self.config.limits.max_message_size;
            let mut t = format!(
                "{me} greets {host}\nPIPELINING\nSIZE {size}\n8BITMIME\nSMTPUTF8\nCHUNKING\nDSN\nENHANCEDSTATUSCODES\nHELP"
            );
            if self.shared.acceptor.is_some() && self.conn.tls.is_none() {
                t.push_str("\nSTARTTLS");
            }
            if self.auth_offered() {
                t.push_str("\nAUTH PLAIN LOGIN");
            }
            if self.conn.tls.is_some() {
                t.push_str("\nREQUIRETLS");
            }
            t
        } else {
            format!("{me} greets {host}")
        };
        self.conn.helo = Some(host);
        // RFC 2034: the EHLO/HELO response carries no enhanced code.
        self.reply(Reply::plain(250, text));
        Next::Continue
    }
}
