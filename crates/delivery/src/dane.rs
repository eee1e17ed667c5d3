//! DANE for SMTP (RFC 7672): a DNSSEC-validating resolver (hickory's validation, trust
//! anchors from `dns.trust_anchor` or the root's), TLSA records of MX hosts looked up only
//! when the MX and address answers are secure, and a rustls verifier that checks the server's
//! certificate against them: DANE-EE (3 x x) matches the leaf or its key, with no name or
//! expiry check (RFC 7672 §3.1.1); DANE-TA (2 x x) takes the matching certificate the server
//! sent as the trust anchor and checks the chain and the name (§3.1.2). PKIX usages (0, 1)
//! are unusable for SMTP (§3.1.3). What a host's TLSA state means for delivery is `plan`'s.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use mailgate_config::Dns;
use mailgate_smtp::{Enhanced, Reply};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{RcptOutcome, Status};

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// DANE-TA (2) rather than DANE-EE (3).
    pub trust_anchor: bool,
    /// The key (SPKI) rather than the whole certificate.
    pub spki: bool,
    pub matching: Digest,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    Exact,
    Sha256,
    Sha512,
}

impl Tlsa {
    /// The record if it is usable for SMTP (RFC 7672 §3.1.3; a digest of the wrong length is
    /// not, RFC 7671 §10.1.2).
    fn usable(t: &hickory_resolver::proto::rr::rdata::TLSA) -> Option<Tlsa> {
        let trust_anchor = match t.cert_usage {
            CertUsage::DaneTa => true,
            CertUsage::DaneEe => false,
            _ => return None,
        };
        let spki = match t.selector {
            Selector::Full => false,
            Selector::Spki => true,
            _ => return None,
        };
        let matching = match t.matching {
            Matching::Raw => Digest::Exact,
            Matching::Sha256 if t.cert_data.len() == 32 => Digest::Sha256,
            Matching::Sha512 if t.cert_data.len() == 64 => Digest::Sha512,
            _ => return None,
        };
        Some(Tlsa { trust_anchor, spki, matching, data: t.cert_data.clone() })
    }

    /// The record as a zone file writes it (`3 1 1 <hex>`), for TLS reports.
    pub fn presentation(&self) -> String {
        let usage = if self.trust_anchor { 2 } else { 3 };
        let matching = match self.matching {
            Digest::Exact => 0,
            Digest::Sha256 => 1,
            Digest::Sha512 => 2,
        };
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{usage} {} {matching} {hex}", u8::from(self.spki))
    }

    /// Whether `cert` is what this record names.
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let spki;
        let selected: &[u8] = if self.spki {
            match ParsedCertificate::try_from(cert) {
                Ok(p) => {
                    spki = p.subject_public_key_info();
                    spki.as_ref()
                }
                Err(_) => return false,
            }
        } else {
            cert.as_ref()
        };
        match self.matching {
            Digest::Exact => selected == self.data.as_slice(),
            Digest::Sha256 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data.as_slice(),
            Digest::Sha512 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data.as_slice(),
        }
    }
}

/// What DANE says about one MX host.
#[derive(Debug, Clone)]
pub enum HostTlsa {
    /// No DANE: the MX or address answers were not secure, or the host has no TLSA records.
    None,
    /// Secure TLSA records, none usable: TLS is required, but not authenticated (RFC 7672 §2.2).
    Unusable,
    /// Usable records: TLS verified against them.
    Usable(Arc<[Tlsa]>),
    /// The TLSA lookup failed or was bogus (`true`): the host must not be used (RFC 7672
    /// §2.2).
    Failed(RcptOutcome, bool),
}

/// The validating resolver DANE looks up with.
pub struct Dane {
    resolver: TokioResolver,
}

/// A trust anchor file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("dns.trust_anchor {}: {why}", path.display())]
pub struct AnchorError {
    path: std::path::PathBuf,
    /// What hickory's parser said.
    why: String,
}

/// The DNSKEY records of a `dns.trust_anchor` file (none there is an error too: a file that
/// trusts nothing would make every answer bogus).
pub fn read_trust_anchor(path: &std::path::Path) -> Result<TrustAnchors, AnchorError> {
    let bad = |why: String| AnchorError { path: path.to_path_buf(), why };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if !text.lines().any(|l| l.contains("DNSKEY")) {
        return Err(bad("no DNSKEY record".into()));
    }
    text.parse::<TrustAnchors>().map_err(|e| bad(e.to_string()))
}

impl Dane {
    pub fn new(cfg: &Dns) -> std::io::Result<Dane> {
        let mut builder = crate::mx::builder(cfg)?;
        builder.options_mut().validate = true;
        if let Some(path) = &cfg.trust_anchor {
            let anchors = read_trust_anchor(path).map_err(std::io::Error::other)?;
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        Ok(Dane { resolver: builder.build().map_err(std::io::Error::other)? })
    }

    /// The validating resolver's options (for tests).
    #[cfg(test)]
    pub(crate) fn resolver_options(&self) -> &hickory_resolver::config::ResolverOpts {
        self.resolver.options()
    }

    /// `domain`'s MX hosts and whether the answer was secure (a bogus one is an error).
    pub async fn mx_hosts(&self, domain: &str) -> Result<(Vec<String>, bool), RcptOutcome> {
        crate::mx::mx_hosts(&self.resolver, domain).await
    }

    /// `host`'s addresses and TLSA state for `port`; `mx_secure`: the MX answer that named the
    /// host was secure (else no TLSA is looked up: an attacker could have named any host).
    pub async fn host(
        &self,
        host: &str,
        port: u16,
        mx_secure: bool,
    ) -> Result<(Vec<SocketAddr>, HostTlsa), RcptOutcome> {
        let (addrs, secure) = crate::mx::addresses(&self.resolver, host, port).await?;
        if !mx_secure || !secure {
            return Ok((addrs, HostTlsa::None));
        }
        Ok((addrs, self.tlsa(host, port).await))
    }

    async fn tlsa(&self, host: &str, port: u16) -> HostTlsa {
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let failed = |why: String, bogus: bool| {
            HostTlsa::Failed(
                RcptOutcome::new(
                    Status::Deferred,
                    Reply::new(451, Enhanced(4, 7, 5), format!("DANE: TLSA lookup for {name} failed: {why}")),
                    Some(host),
                ),
                bogus,
            )
        };
        match self.resolver.tlsa_lookup(name.as_str()).await {
            Ok(lookup) => {
                let records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(t) => Some((t, r.proof)),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    return HostTlsa::None;
                }
                if records.iter().any(|(_, p)| *p == Proof::Bogus) {
                    return failed("bogus DNSSEC signature".into(), true);
                }
                if records.iter().any(|(_, p)| *p != Proof::Secure) {
                    // Not from a signed zone: means nothing (RFC 7672 §2.2).
                    return HostTlsa::None;
                }
                let usable: Vec<Tlsa> = records.iter().filter_map(|(t, _)| Tlsa::usable(t)).collect();
                if usable.is_empty() {
                    HostTlsa::Unusable
                } else {
                    HostTlsa::Usable(usable.into())
                }
            }
            // Denied (securely or in an unsigned zone): no DANE for the host.
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => HostTlsa::None,
            Err(NetError::Dns(DnsError::Nsec { proof: Proof::Insecure, .. })) => HostTlsa::None,
            Err(e) => {
                let bogus = matches!(e, NetError::Dns(DnsError::DnssecBogus));
                failed(e.to_string(), bogus)
            }
        }
    }
}

/// A digest of a host's records, so that a pooled connection verified under one set is not
/// reused under another.
pub fn fingerprint(records: &[Tlsa]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    records.hash(&mut h);
    h.finish()
}

/// The certificate check of a connection to a host with usable TLSA records.
#[derive(Debug)]
pub struct Verifier {
    records: Arc<[Tlsa]>,
    /// Names a DANE-TA chain's certificate may carry: the MX host (which rustls passes in)
    /// and the recipient domain (RFC 7672 §3.2.3).
    also: Option<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

/// Why the certificate did not pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Mismatch {
    #[error("DANE: no TLSA record matches the server's certificate")]
    NoMatch,
    #[error("DANE-TA: the chain from the TLSA trust anchor is not valid for this name: {0}")]
    Chain(rustls::Error),
}

impl Mismatch {
    /// The certificate error under a DANE-TA chain's failure (a name, an expiry, ...).
    pub(crate) fn cause(&self) -> Option<&rustls::Error> {
        match self {
            Mismatch::NoMatch => None,
            Mismatch::Chain(e) => Some(e),
        }
    }
}

impl Verifier {
    pub fn new(records: Arc<[Tlsa]>, domain: &str, provider: Arc<CryptoProvider>) -> Verifier {
        Verifier { records, also: crate::tls::server_name(domain), provider }
    }

    fn trust_anchor_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        anchor_at: usize,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(intermediates[anchor_at].clone())?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &intermediates[..anchor_at],
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        rustls::client::verify_server_name(&leaf, server_name).or_else(|e| match &self.also {
            Some(domain) => rustls::client::verify_server_name(&leaf, domain).map_err(|_| e),
            None => Err(e),
        })
    }
}

fn refuse(m: Mismatch) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(m))))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.iter().any(|r| !r.trust_anchor && r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last = None;
        for (i, cert) in intermediates.iter().enumerate() {
            if self.records.iter().any(|r| r.trust_anchor && r.matches(cert)) {
                match self.trust_anchor_chain(end_entity, intermediates, i, server_name, now) {
                    Ok(()) => return Ok(ServerCertVerified::assertion()),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(refuse(last.map_or(Mismatch::NoMatch, Mismatch::Chain)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::TLSA;

    fn record(usage: CertUsage, selector: Selector, matching: Matching, data: Vec<u8>) -> TLSA {
        TLSA::new(usage, selector, matching, data)
    }

    /// A self-signed certificate for `name`, expired a year ago when `expired`.
    fn cert(name: &str, expired: bool) -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let c = params.self_signed(&key).unwrap();
        (c.der().clone(), key.public_key_der())
    }

    #[test]
    fn only_dane_usages_with_known_selectors_and_sound_digests_are_usable() {
        let d32 = vec![7u8; 32];
        assert!(Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, d32.clone())).is_some());
        assert!(Tlsa::usable(&record(CertUsage::DaneTa, Selector::Full, Matching::Sha256, d32.clone())).is_some());
        // PKIX usages mean nothing for SMTP (RFC 7672 §3.1.3).
        assert!(Tlsa::usable(&record(CertUsage::PkixEe, Selector::Spki, Matching::Sha256, d32.clone())).is_none());
        assert!(Tlsa::usable(&record(CertUsage::PkixTa, Selector::Spki, Matching::Sha256, d32.clone())).is_none());
        assert!(Tlsa::usable(&record(CertUsage::Private, Selector::Spki, Matching::Sha256, d32.clone())).is_none());
        assert!(Tlsa::usable(&record(CertUsage::DaneEe, Selector::Private, Matching::Sha256, d32.clone())).is_none());
        assert!(Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Private, d32.clone())).is_none());
        // A digest of the wrong length can never match.
        assert!(Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, vec![7; 31])).is_none());
        assert!(Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Sha512, d32)).is_none());
    }

    #[test]
    fn records_match_the_certificate_or_its_key_in_every_form() {
        let (der, spki) = cert("mx.example.test", false);
        let sha256 = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec();
        let sha512 = |b: &[u8]| ring::digest::digest(&ring::digest::SHA512, b).as_ref().to_vec();
        for (selector, selected) in [(Selector::Full, der.to_vec()), (Selector::Spki, spki.clone())] {
            for (matching, data) in [
                (Matching::Raw, selected.clone()),
                (Matching::Sha256, sha256(&selected)),
                (Matching::Sha512, sha512(&selected)),
            ] {
                let t = Tlsa::usable(&record(CertUsage::DaneEe, selector, matching, data.clone())).unwrap();
                assert!(t.matches(&der), "{selector:?} {matching:?}");
                let mut other = data;
                other[0] ^= 1;
                let t = Tlsa::usable(&record(CertUsage::DaneEe, selector, matching, other)).unwrap();
                assert!(!t.matches(&der), "{selector:?} {matching:?} matched altered data");
            }
        }
        // Not a certificate at all: no match, no panic.
        let t = Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, sha256(&spki))).unwrap();
        assert!(!t.matches(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])));
    }

    #[test]
    fn dane_ee_ignores_names_and_expiry_but_nothing_else() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (der, spki) = cert("somewhere.else.test", true);
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki).as_ref().to_vec();
        let t = Tlsa::usable(&record(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, digest)).unwrap();
        let v = Verifier::new(vec![t].into(), "example.test", provider.clone());
        let name = ServerName::try_from("mx.example.test").unwrap();
        assert!(v.verify_server_cert(&der, &[], &name, &[], UnixTime::now()).is_ok());
        let (other, _) = cert("mx.example.test", false);
        let err = v.verify_server_cert(&other, &[], &name, &[], UnixTime::now()).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_))), "{err:?}");
        // A DANE-TA record is never satisfied by the leaf alone.
        let full = ring::digest::digest(&ring::digest::SHA256, &der).as_ref().to_vec();
        let ta = Tlsa::usable(&record(CertUsage::DaneTa, Selector::Full, Matching::Sha256, full)).unwrap();
        let v = Verifier::new(vec![ta].into(), "example.test", provider);
        assert!(v.verify_server_cert(&der, &[], &name, &[], UnixTime::now()).is_err());
    }
}
