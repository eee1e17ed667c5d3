//! ARC sealing (RFC 8617) of mail the gateway passes on: an ARC set (ARC-Authentication-Results,
//! ARC-Message-Signature, ARC-Seal) that records what we found, so a later hop can trust our
//! results even after we changed the message.

use std::net::IpAddr;
use std::path::Path;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::Done;
use mail_auth::{AuthenticationResults, MessageAuthenticator};

use crate::AuthError;

/// Seals with one RSA key (ARC has no Ed25519 algorithm registered).
pub struct Sealer {
    sealer: ArcSealer<RsaKey<Sha256>, Done>,
    /// Our authserv-id, in the ARC-Authentication-Results field.
    authserv_id: String,
}

impl Sealer {
    pub fn load(
        path: &Path,
        domain: &str,
        selector: &str,
        headers: &[String],
        authserv_id: &str,
    ) -> Result<Sealer, AuthError> {
        let key = RsaKey::<Sha256>::from_key_der(crate::sign::read_key(path)?)
            .map_err(|e| AuthError::Key(format!("{}: ARC sealing needs an RSA key ({e})", path.display())))?;
        let sealer = ArcSealer::from_key(key).domain(domain).selector(selector).headers(headers.to_vec());
        Ok(Sealer { sealer, authserv_id: authserv_id.to_string() })
    }

    /// The ARC set to put on top of `raw` (header fields with CRLFs), or why not. A message
    /// that carries ARC fields is sealed only when its chain passes: a chain that failed — by
    /// its last `cv=fail`, or by our validation — is never sealed again, so no hop after us can
    /// take a new `i=1` for a chain that never broke.
    pub async fn seal(
        &self,
        auth: &crate::Authenticator,
        raw: &[u8],
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> Result<String, AuthError> {
        let inner: &MessageAuthenticator = auth.inner();
        let (msg, _) = crate::session::parse(raw).ok_or_else(|| AuthError::Sign("unparsable message".into()))?;
        if let Some(why) = crate::session::chain_refused(&msg) {
            return Err(AuthError::ChainFailed(why));
        }
        let keys = crate::keys::prefetch(&inner.0, auth.txt_cache(), &msg, true).await;
        let arc = inner.verify_arc(mail_auth::Parameters::new(&msg).with_txt_cache(&keys)).await;
        if crate::session::has_arc_fields(raw) && *arc.result() != mail_auth::DkimResult::Pass {
            return Err(AuthError::ChainFailed(format!("{:?}", arc.result())));
        }
        let dkim = inner.verify_dkim(mail_auth::Parameters::new(&msg).with_txt_cache(&keys)).await;
        // Our own SPF verdict (the one in our Authentication-Results), in mail-auth's form.
        let (_, spf) = auth.spf(ip, helo, mail_from).await;
        let results = AuthenticationResults::new(&self.authserv_id)
            .with_dkim_results(&dkim, msg.from())
            .with_spf_mailfrom_result(&spf, ip, mail_from, helo)
            .with_arc_result(&arc, ip);
        let set = self.sealer.seal(&msg, &results, &arc).map_err(|e| AuthError::Sign(format!("ARC: {e}")))?;
        Ok(set.to_header())
    }
}
