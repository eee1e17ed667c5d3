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
        Ok(Signing { auth: Some(auth), signers: Arc::new(signers), sealer })
    }

    /// No identities: nothing is signed or sealed.
    pub fn none() -> Signing {
        Signing { auth: None, signers: Arc::new(vec![]), sealer: None }
    }

    /// Prepends a DKIM-Signature when a `[[dkim_sign]]` identity applies to the header From
    /// domain and the origin. Unsigned mail still goes out; the log says why.
    pub async fn sign(&self, env: &Envelope, origin: &Origin, data: Vec<u8>) -> Vec<u8> {
        if self.signers.is_empty() {
            return data;
        }
        let Some(from_domain) = header_from_domain(&data) else { return data };
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

/// The domain of the header From address, if the message has one.
fn header_from_domain(data: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse_headers(data)?;
    let addr = msg.from()?.first()?.address.as_ref()?.to_string();
    Some(addr.rsplit_once('@')?.1.to_string())
}
