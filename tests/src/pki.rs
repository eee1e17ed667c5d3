//! A test certificate authority (rcgen): a CA whose PEM a route trusts by `ca_file`, and server
//! configurations with certificates it signed (or self-signed ones it did not).

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{CertificateParams, IsCa, KeyPair, SanType};

pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// Session-ticket keys shared by every server config made here.
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca, ca_key, ticketer: rustls::crypto::ring::Ticketer::new().unwrap(), dir }
    }

    /// The CA certificate as a PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for 127.0.0.1 and `mx.gateway.test` this CA signed, with its key, as PEM
    /// files (for the gateway's own `[tls]`).
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        self.files_for("mx.gateway.test")
    }

    /// A certificate for `name` and 127.0.0.1 this CA signed, with its key, as PEM files.
    pub fn files_for(&self, name: &str) -> (PathBuf, PathBuf) {
        self.files_for_all(&[name])
    }

    /// A certificate for all of `names` (the first names the files) and 127.0.0.1.
    pub fn files_for_all(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let name = names[0];
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A server config for 127.0.0.1 with a certificate this CA signed (`signed`) or a
    /// self-signed one.
    pub fn server(&self, signed: bool) -> rustls::ServerConfig {
        self.server_named(&[], signed)
    }

    /// The same, the certificate also valid for the host `names`.
    pub fn server_named(&self, names: &[&str], signed: bool) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = if signed {
            params.signed_by(&key, &self.ca, &self.ca_key).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        cfg.ticketer = self.ticketer.clone();
        cfg
    }
}

/// A server's TLS set-up with what a TLSA record of it is made from.
pub struct DaneServer {
    pub config: rustls::ServerConfig,
    /// The leaf certificate (DER).
    pub cert: Vec<u8>,
    /// Its SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
}

impl Pki {
    /// The CA certificate (DER): a DANE-TA record's subject.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// A server for the host `names` whose certificate is self-signed (`chain` false: what
    /// DANE-EE publishes) or signed by this CA and sent with the CA certificate after it (the
    /// chain DANE-TA needs).
    pub fn dane_server(&self, names: &[&str], chain: bool) -> DaneServer {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = if chain {
            params.signed_by(&key, &self.ca, &self.ca_key).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        let mut certs = vec![cert.der().clone()];
        if chain {
            certs.push(self.ca.der().clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        DaneServer { config, cert: cert.der().to_vec(), spki: key.public_key_der() }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
