//! Inbound TLS: the server certificate, reloadable without a restart (sessions ask a resolver
//! that can be swapped).

use std::path::Path;
use std::sync::{Arc, RwLock};

use mailgate_config::Tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The current certificate; [`CertStore::reload`] swaps it for new handshakes.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| format!("private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl CertStore {
    pub fn load(cfg: &Tls) -> Result<Option<Arc<CertStore>>, String> {
        let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else { return Ok(None) };
        Ok(Some(Arc::new(CertStore { current: RwLock::new(load_key(cert, key)?) })))
    }

    /// Loads the files again; on error the old certificate stays.
    pub fn reload(&self, cfg: &Tls) -> Result<(), String> {
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            *self.current.write().unwrap() = load_key(cert, key)?;
        }
        Ok(())
    }

    /// A TLS 1.2/1.3 acceptor that asks this store for the certificate at every handshake.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        TlsAcceptor::from(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}
