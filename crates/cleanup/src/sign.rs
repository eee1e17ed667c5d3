//! DKIM signing and ARC sealing: the last changes to a message before it is stored, so that
//! the signature covers every change made before it.

use std::sync::Arc;

use mailgate_auth::{AuthError, Authenticator, Sealer, Signer};
use mailgate_config::{Config, DkimSign};
use mailgate_spool::Envelope;

use crate::{prepend, Origin};

/// The signing identities of one configuration, with their keys loaded.
pub struct Signing {
    /// Verifies the chain an ARC seal builds on (`None`: no sealing).
    auth: Option<Arc<Authenticator>>,
    /// `[[dkim_sign]]` identities in config order: the first that applies signs.
    signers: Arc<Vec<(DkimSign, Signer)>>,
    /// `[arc_seal]`, if configured.
    sealer: Option<Sealer>,
    /// Parses only the header From (the identity that chooses the signer): a parse of the
    /// whole header section (Received, DKIM-Signature, …) cost ten times as much.
    from_parser: mail_parser::MessageParser,
}

impl Signing {
    /// Loads the keys a configuration names; an unreadable key fails, naming it.
    pub fn load(config: &Config, auth: Arc<Authenticator>) -> Result<Signing, AuthError> {
        let mut signers = vec![];
        for d in &config.dkim_sign {
            let s = Signer::load(&d.key, &d.domain, &d.selector, &d.headers)
                .map_err(|e| AuthError::Key(format!("dkim_sign {}/{}: {e}", d.domain, d.selector)))?;
            signers.push((d.clone(), s));
        }
        let sealer = match &config.arc_seal {
            Some(a) => {
                let id = config.auth.authserv_id.as_deref().unwrap_or(&config.server.hostname);
                Some(
                    Sealer::load(&a.key, &a.domain, &a.selector, &a.headers, id)
                        .map_err(|e| AuthError::Key(format!("arc_seal {}/{}: {e}", a.domain, a.selector)))?,
                )
            }
            None => None,
        };
        Ok(Signing { auth: Some(auth), signers: Arc::new(signers), sealer, from_parser: from_parser() })
    }

    /// No identities: nothing is signed or sealed.
    pub fn none() -> Signing {
        Signing { auth: None, signers: Arc::new(vec![]), sealer: None, from_parser: from_parser() }
    }

    /// Prepends a DKIM-Signature when a `[[dkim_sign]]` identity applies to the header From
    /// domain and the origin. Unsigned mail still goes out; the log says why.
    pub async fn sign(&self, env: &Envelope, origin: &Origin, data: Vec<u8>) -> Vec<u8> {
        if self.signers.is_empty() {
            return data;
        }
        let Some(from_domain) = header_from_domain(&self.from_parser, &data) else { return data };
        let user = origin.user.as_deref();
        let Some(i) =
            self.signers.iter().position(|(d, _)| d.applies(&from_domain, &origin.listener, user, origin.trusted))
        else {
            return data;
        };
        let (result, mut data) = if self.signers[i].1.is_quick() && data.len() <= crate::INLINE_CHECK {
            // An Ed25519 signature over a small message costs less than handing it to a
            // blocking thread and back.
            (self.signers[i].1.sign(&data), data)
        } else {
            // An RSA signature is ~0.5 ms of CPU, hashing a large message more: off the
            // async threads.
            let (signers, shared) = (self.signers.clone(), Arc::new(data));
            let bytes = shared.clone();
            let result = tokio::task::spawn_blocking(move || signers[i].1.sign(&bytes))
                .await
                .unwrap_or_else(|e| Err(AuthError::Sign(format!("signing task failed: {e}"))));
            // The task has ended and dropped its handle: no copy here.
            (result, Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone()))
        };
        let d = &self.signers[i].0;
        match result {
            Ok(field) => {
                tracing::info!(queue_id = %env.id, domain = %d.domain, selector = %d.selector, "DKIM signed");
                prepend(&mut data, field.as_bytes());
            }
            Err(e) => tracing::error!(queue_id = %env.id, domain = %d.domain, "{e}"),
        }
        data
    }

    /// Prepends an ARC set when `[arc_seal]` is configured and the message came from a client
    /// (ARC records a hop of forwarded mail; the gateway's own messages have none). A message
    /// that cannot be sealed goes on unsealed, logged.
    pub async fn seal(&self, env: &Envelope, origin: &Origin, data: Vec<u8>) -> Vec<u8> {
        let (Some(sealer), Some(auth), Some((helo, ip))) = (&self.sealer, &self.auth, &origin.client) else {
            return data;
        };
        match sealer.seal(auth, &data, *ip, helo, &env.sender).await {
            Ok(set) => {
                tracing::info!(queue_id = %env.id, "ARC sealed");
                let mut data = data;
                prepend(&mut data, set.as_bytes());
                data
            }
            Err(e) => {
                tracing::warn!(queue_id = %env.id, "not ARC sealed: {e}");
                data
            }
        }
    }
}

/// A parser of the header section that reads From as addresses and skips every other field.
fn from_parser() -> mail_parser::MessageParser {
    mail_parser::MessageParser::new().header_address(mail_parser::HeaderName::From).default_header_ignore()
}

/// The domain of the header From address, if the message has one: the From field (the last,
/// as mail-parser reads a message with several — which `auth.refuse_ambiguous_from` refuses
/// before this), found by a scan of the line starts, then parsed alone.
fn header_from_domain(parser: &mail_parser::MessageParser, data: &[u8]) -> Option<String> {
    let msg = parser.parse_headers(mailgate_message::fields::raw_fields(data, "from").last()?)?;
    let addr = msg.from()?.first()?.address.as_ref()?.to_string();
    Some(addr.rsplit_once('@')?.1.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The From-only parse finds the domain a parse of every field finds, whatever the fields
    /// around From and however From is written.
    #[test]
    fn from_domain_is_what_a_full_parse_finds() {
        let before = [
            "",
            "Received: from a.example (a.example [192.0.2.1])\r\n\tby mx.example with ESMTP id X; Mon, 30 Nov 2026 10:00:00 +0000\r\n",
            "DKIM-Signature: v=1; a=rsa-sha256; d=other.example; s=s;\r\n h=from:to; bh=abc=; b=def=\r\n",
            "Subject: =?utf-8?q?From:_x@wrong.example?=\r\n",
            "X-From: <x@wrong.example>\r\n",
            "Sender: <s@sender.example>\r\n",
        ];
        let froms = [
            "From: a@example.com\r\n",
            "From: \"A, B\" <a@Example.COM>\r\n",
            "FROM:a@example.com\r\n",
            "From: =?utf-8?b?w4lsb2k=?= <a@b.example.org>\r\n",
            "From: (comment) a@example.com (more)\r\n",
            "From:\r\n <folded@example.net>\r\n",
            "From: Group: a@one.example, b@two.example;\r\n",
            "From: a@one.example, b@two.example\r\n",
            "From : spaced@example.com\r\n",
            "From\t:tabbed@example.com\r\n",
            "From: <a@example.com>\r\n\t(folded comment)\r\n",
            "From: \"quoted \\\"From: x@wrong.example\\\"\" <q@quoted.example>\r\n",
            "From: a@example.com\n",
            "From: no-domain\r\n",
            "From: <>\r\n",
            "From: a@one.example\r\nFrom: b@two.example\r\n",
            "",
        ];
        let after = ["", "To: <t@to.example>\r\n", "From-Like: x@wrong.example\r\n", " continued\r\n"];
        let full = mail_parser::MessageParser::default();
        let ours = from_parser();
        let mut n = 0;
        for b in before {
            for f in froms {
                for a in after {
                    for body in ["\r\nFrom: body@wrong.example\r\n", ""] {
                        let m = format!("{b}{f}{a}{body}");
                        let expected = full
                            .parse_headers(m.as_bytes())
                            .and_then(|msg| msg.from()?.first()?.address.as_ref().map(|a| a.to_string()))
                            .and_then(|a| Some(a.rsplit_once('@')?.1.to_string()));
                        assert_eq!(header_from_domain(&ours, m.as_bytes()), expected, "{m:?}");
                        n += usize::from(expected.is_some());
                    }
                }
            }
        }
        assert!(n > 100, "most cases have a From domain: {n}");
        assert_eq!(header_from_domain(&ours, b"From: \"x\" <a@Example.COM>\r\n\r\n").as_deref(), Some("Example.COM"));
        assert_eq!(header_from_domain(&ours, b"To: a@example.com\r\n\r\nFrom: b@example.com\r\n"), None);
    }
}
