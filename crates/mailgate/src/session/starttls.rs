//! STARTTLS (RFC 3207) and implicit TLS: the handshake, the injection defence, the reset.

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Enhanced, Reply};

use super::{Next, Session};

impl Session {
    /// Runs the TLS handshake on the plain connection and records version and cipher.
    pub(crate) async fn handshake(&mut self) -> std::io::Result<()> {
        let acceptor =
            self.shared.acceptor.clone().ok_or_else(|| std::io::Error::other("no TLS certificate configured"))?;
        let (version, cipher) = self.stream.upgrade(&acceptor, self.config.tls.handshake_timeout).await?;
        tracing::info!(%version, %cipher, "TLS established");
        self.tls = Some((version, cipher));
        Ok(())
    }

    pub(crate) async fn starttls(&mut self) -> std::io::Result<Next> {
        if self.shared.acceptor.is_none() {
            return Ok(self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "STARTTLS not available")));
        }
        if self.tls.is_some() {
            return Ok(self.bad_command(codes::bad_sequence("TLS already active")));
        }
        self.reply(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS"));
        self.flush_now().await?;
        // Injection defence (CVE-2011-0411): whatever the client pipelined after STARTTLS
        // arrived in plaintext and must never run as if it came over TLS.
        let injected = self.discard_input();
        if injected > 0 {
            tracing::warn!(octets = injected, "discarded plaintext pipelined after STARTTLS");
        }
        if let Err(e) = self.handshake().await {
            tracing::info!("STARTTLS handshake failed: {e}");
            return Ok(Next::Close);
        }
        // RFC 3207 §4.2: forget everything the client said before TLS — the SMTP state, and
        // the policy state built on it: plugin instances (whatever they remembered), the
        // shared score, the authentication session.
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
        self.new_policy();
        // The new instances see the connection (now with TLS) as the old ones did at first;
        // what they found then (a DNSBL listing, say) counts again, not a STARTTLS away.
        if let Some(mut chain) = self.chain.take() {
            let decision = chain.on_connect(&self.conn_info()).await;
            self.chain = Some(chain);
            if self.enforce(decision).is_err() {
                tracing::info!("refused after STARTTLS by policy");
                return Ok(Next::Close);
            }
        }
        Ok(Next::Continue)
    }
}
