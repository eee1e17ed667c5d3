//! MAIL FROM (RFC 5321 §4.1.1.2, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8).

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Address, Body, Enhanced, MailParams, Reply};

use super::{tx_envelope, Next, Session, SessionIo, Transaction};

impl<S: SessionIo> Session<S> {
    pub(crate) async fn mail(&mut self, from: Option<Address>, params: MailParams) -> Next {
        if self.conn.helo.is_none() {
            return self.bad_command(codes::bad_sequence("Send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            return self.bad_command(codes::bad_sequence("Sender already specified"));
        }
        if !self.conn.esmtp && (params != MailParams::default()) {
            return self.bad_command(Reply::new(555, Enhanced(5, 5, 4), "MAIL parameters need EHLO"));
        }
        if params.body == Body::BinaryMime {
            return self.bad_command(Reply::new(555, Enhanced(5, 5, 4), "BODY=BINARYMIME is not supported"));
        }
        if params.requiretls && self.conn.tls.is_none() {
            // RFC 8689 §4.1: only offered, and only accepted, over TLS.
            return self.bad_command(Reply::new(530, Enhanced(5, 7, 10), "REQUIRETLS needs a TLS session"));
        }
        if self.auth_required() && self.conn.user.is_none() {
            let r = if self.conn.tls.is_none() {
                Reply::new(530, Enhanced(5, 7, 0), "Must issue a STARTTLS command first")
            } else {
                Reply::new(530, Enhanced(5, 7, 0), "Authentication required")
            };
            return self.bad_command(r);
        }
        let max = self.config.limits.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            self.reply(Reply::new(552, Enhanced(5, 3, 4), format!("Message size exceeds the limit of {max} octets")));
            return Next::Continue;
        }
        tracing::debug!(from = from.as_ref().map_or("<>", |a| a.as_str()), "MAIL");
        self.policy.auth.lock().await.begin_transaction(from.as_ref().map_or("", |a| a.as_str()));
        self.tx = Some(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            rcpt_params: Vec::new(),
            bdat: None,
            pipeline: None,
            returns: false,
        });
        if let Some(chain) = self.policy.chain.as_mut() {
            let envelope = tx_envelope(&self.tx);
            chain.use_pipeline(&self.conn.pipeline);
            let d = chain.on_mail_from(&self.conn.info(), envelope).await;
            if let Err(next) = self.enforce(d) {
                self.tx = None;
                return next;
            }
        }
        self.reply(Reply::new(250, Enhanced(2, 1, 0), "Sender OK"));
        Next::Continue
    }
}
