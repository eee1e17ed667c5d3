//! Inbound TLS: the server certificate (reloadable without a restart: sessions ask a resolver
//! that can be swapped) and the stream a session reads and writes, plain or TLS.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use mailgate_config::Tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// A session's connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while a handshake has taken the socket.
    Gone,
}

impl Stream {
    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Runs the server handshake on a plain stream.
    pub async fn upgrade(
        &mut self,
        acceptor: &TlsAcceptor,
        limit: std::time::Duration,
    ) -> io::Result<(String, String)> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = tokio::time::timeout(limit, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version().map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1.")).unwrap_or_default();
        let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
        *self = Stream::Tls(Box::new(tls));
        Ok((version, cipher))
    }
}
