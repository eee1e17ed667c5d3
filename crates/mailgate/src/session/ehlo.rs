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
        // Written straight into the reply buffer: every connection says EHLO, and a `format!`
        // of the list then its split into lines cost ~3 000 instructions.
        let me = &self.config.server.hostname;
        let greets = [me.as_str(), " greets ", host.as_str()].concat();
        let mut size = b"SIZE ".to_vec();
        mailgate_smtp::push_decimal(&mut size, self.config.limits.max_message_size);
        let size = String::from_utf8(size).unwrap_or_default();
        let mut lines: Vec<&str> = Vec::with_capacity(13);
        lines.push(&greets);
        if esmtp {
            lines.extend([
                "PIPELINING",
                &size,
                "8BITMIME",
                "SMTPUTF8",
                "CHUNKING",
                "DSN",
                "ENHANCEDSTATUSCODES",
                "HELP",
            ]);
            if self.shared.acceptor.is_some() && self.conn.tls.is_none() {
                lines.push("STARTTLS");
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN");
            }
            if self.conn.tls.is_some() {
                lines.push("REQUIRETLS");
            }
        }
        // RFC 2034: the EHLO/HELO response carries no enhanced code.
        self.io.reply_with(|out| Reply::write_lines(out, 250, &lines));
        self.conn.helo = Some(host);
        Next::Continue
    }
}
