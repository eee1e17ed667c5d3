//! TLS for outbound STARTTLS: an opportunistic client that accepts any certificate (RFC 7435:
//! encryption without authentication beats plaintext), a verifying client for routes that
//! require TLS (webpki roots plus an optional CA file), and DANE's (`dane.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mailgate_config::TlsPolicy;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    None,
    Opportunistic,
    /// TLS or nothing, but any certificate (a host whose TLSA records are all unusable).
    Encrypt,
    /// Verified against the public roots and the route's CA file.
    Required,
    /// Verified against the host's TLSA records (their fingerprint: a pooled connection is
    /// only reused under the same records).
    Dane(u64),
}

impl PolicyKind {
    /// No plaintext, no fallback.
    pub fn mandatory(self) -> bool {
        matches!(self, PolicyKind::Encrypt | PolicyKind::Required | PolicyKind::Dane(_))
    }
}

/// The TLS policy of one attempt, ready to use.
#[derive(Clone)]
pub struct Policy {
    pub kind: PolicyKind,
    pub connector: Option<TlsConnector>,
}

pub struct Connectors {
    opportunistic: TlsConnector,
    /// Verifying connectors by extra CA file (`None`: webpki roots only) and server port. Each
    /// has its own session cache, which rustls keys by server name: a session verified on one
    /// port is never resumed on another (a different service that may share the ticket keys
    /// but not the certificate), nor under another trust set.
    verifying: Mutex<HashMap<(Option<PathBuf>, u16), TlsConnector>>,
    /// The verifiers `audit` hands out, by extra CA file.
    audits: Mutex<HashMap<Option<PathBuf>, Arc<dyn ServerCertVerifier>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported by ring")
}

impl Connectors {
    pub fn new() -> Connectors {
        let cfg = builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth();
        Connectors {
            opportunistic: TlsConnector::from(Arc::new(cfg)),
            verifying: Mutex::new(HashMap::new()),
            audits: Mutex::new(HashMap::new()),
        }
    }

    /// The check `required` TLS makes (public roots and `ca_file`), as a verifier to run after
    /// an opportunistic handshake (MTA-STS `testing`, for TLS reports).
    pub fn audit(&self, ca_file: Option<&Path>) -> Result<Arc<dyn ServerCertVerifier>, CaFileError> {
        let key = ca_file.map(Path::to_path_buf);
        if let Some(v) = self.audits.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(v.clone());
        }
        let roots = roots(ca_file)?;
        let v: Arc<dyn ServerCertVerifier> =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| CaFileError { path: key.clone().unwrap_or_default(), why: e.to_string() })?;
        self.audits.lock().unwrap_or_else(|e| e.into_inner()).insert(key, v.clone());
        Ok(v)
    }

    /// TLS required, any certificate (see `PolicyKind::Encrypt`).
    pub fn encrypt(&self) -> Policy {
        Policy { kind: PolicyKind::Encrypt, connector: Some(self.opportunistic.clone()) }
    }

    /// TLS verified against `records` (DANE); `domain` is the recipient domain, a name a
    /// DANE-TA chain may carry besides the MX host's. No session resumption: a resumed
    /// session would skip the check.
    pub fn dane(&self, records: Arc<[crate::dane::Tlsa]>, domain: &str) -> Policy {
        let kind = PolicyKind::Dane(crate::dane::fingerprint(&records));
        let verifier = crate::dane::Verifier::new(records, domain, provider());
        let mut cfg = builder().dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::disabled();
        Policy { kind, connector: Some(TlsConnector::from(Arc::new(cfg))) }
    }

    /// The policy for a connection to `port` (see `verifying` for why the port matters).
    pub fn policy(&self, p: TlsPolicy, ca_file: Option<&Path>, port: u16) -> Result<Policy, CaFileError> {
        Ok(match p {
            TlsPolicy::None => Policy { kind: PolicyKind::None, connector: None },
            TlsPolicy::Opportunistic => {
                Policy { kind: PolicyKind::Opportunistic, connector: Some(self.opportunistic.clone()) }
            }
            TlsPolicy::Required => {
                let key = (ca_file.map(Path::to_path_buf), port);
                let mut v = self.verifying.lock().unwrap();
                let conn = match v.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let cfg = builder().with_root_certificates(roots(key.0.as_deref())?).with_no_client_auth();
                        let c = TlsConnector::from(Arc::new(cfg));
                        v.insert(key, c.clone());
                        c
                    }
                };
                Policy { kind: PolicyKind::Required, connector: Some(conn) }
            }
        })
    }
}

/// The public roots and the certificates of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, CaFileError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(f) = ca_file {
        let bad = |e: String| CaFileError { path: f.to_path_buf(), why: e };
        let certs = CertificateDer::pem_file_iter(f).map_err(|e| bad(e.to_string()))?;
        for c in certs {
            roots.add(c.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// A route's `ca_file` that cannot be used as trust anchors.
#[derive(Debug, thiserror::Error)]
#[error("CA file {}: {why}", path.display())]
pub struct CaFileError {
    path: std::path::PathBuf,
    /// What the PEM reader or rustls said, for the log and the deferral reply.
    why: String,
}

/// What a failed handshake says, in words: a certificate our own verifier (DANE's) refused is
/// described by its reason rather than rustls's debug form of it.
pub fn handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => rustls_error(r),
        None => e.to_string(),
    }
}

/// A rustls error in words (see `handshake_error`).
pub fn rustls_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        e => e.to_string(),
    }
}

pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.trim_end_matches('.').to_string()).ok()
}

/// Accepts any certificate, but still checks the handshake signatures (so the session key
/// really belongs to whoever presented the certificate).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
