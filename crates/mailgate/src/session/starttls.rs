//! STARTTLS (RFC 3207) and implicit TLS: the handshake, the injection defence, the reset.

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Enhanced, Reply};

use super::{Next, Session, SessionIo};

impl<S: SessionIo> Session<S> {
    /// Runs the TLS handshake on the plain connection and records version and cipher.
    pub(crate) async fn handshake(&mut self) -> std::io::Result<()> {
        let acceptor =
            self.shared.acceptor.clone().ok_or_else(|| std::io::Error::other("no TLS certificate configured"))?;
        let (version, cipher) = self.io.upgrade(&acceptor, self.config.tls.handshake_timeout).await?;
        tracing::info!(%version, %cipher, "TLS established");
        self.conn.tls = Some((version, cipher));
        Ok(())
    }

    pub(crate) async fn starttls(&mut self) -> std::io::Result<Next> {
        if self.shared.acceptor.is_none() {
            return Ok(self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "STARTTLS not available")));
        }
        if self.conn.tls.is_some() {
            return Ok(self.bad_command(codes::bad_sequence("TLS already active")));
        }
        self.reply(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS"));
        self.io.flush(self.config.timeouts.command).await?;
        // Injection defence (CVE-2011-0411): whatever the client pipelined after STARTTLS
        // arrived in plaintext and must never run as if it came over TLS.
        let injected = self.io.discard_input();
        if injected > 0 {
            tracing::warn!(octets = injected, "discarded plaintext pipelined after STARTTLS");
        }
        if let Err(e) = self.handshake().await {
            tracing::info!("STARTTLS handshake failed: {e}");
            return Ok(Next::Close);
        }
        self.reset_for_tls().await;
        // The new instances see the connection (now with TLS) as the old ones did at first;
        // what they found then (a DNSBL listing, say) counts again, not a STARTTLS away.
        if self.connect_policy().await.is_err() {
            tracing::info!("refused after STARTTLS by policy");
            return Ok(Next::Close);
        }
        Ok(Next::Continue)
    }
}
