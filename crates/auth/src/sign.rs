//! DKIM signing with RSA-SHA256 or Ed25519-SHA256 keys from PEM files, and key generation
//! (`mailgate dkim keygen`).

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::AuthError;

/// A signer for one domain and selector.
pub enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Which key `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    Ed25519,
}

impl Signer {
    /// Loads a PEM private key (RSA in PKCS#1 or PKCS#8, Ed25519 in PKCS#8).
    pub fn load(path: &Path, domain: &str, selector: &str, headers: &[String]) -> Result<Signer, AuthError> {
        let key = read_key(path)?;
        let headers: Vec<String> = headers.to_vec();
        // PKCS#8 may hold either algorithm: try Ed25519 first, it is unambiguous.
        if let PrivateKeyDer::Pkcs8(p8) = &key {
            if let Ok(k) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
                return Ok(Signer::Ed25519(DkimSigner::from_key(k).domain(domain).selector(selector).headers(headers)));
            }
        }
        let k = RsaKey::<Sha256>::from_key_der(key)
            .map_err(|e| AuthError::Key(format!("{}: not an RSA or Ed25519 key ({e})", path.display())))?;
        Ok(Signer::Rsa(DkimSigner::from_key(k).domain(domain).selector(selector).headers(headers)))
    }

    /// Whether one signature costs little CPU (Ed25519: tens of µs) beside hashing the message;
    /// an RSA signature takes ~0.5 ms. Callers use it to decide whether signing is worth a
    /// hand-over to a blocking thread (two thread wake-ups per message).
    pub fn is_quick(&self) -> bool {
        matches!(self, Signer::Ed25519(_))
    }

    /// The DKIM-Signature field (name, value and CRLF) for `message` (CRLF lines).
    pub fn sign(&self, message: &[u8]) -> Result<String, AuthError> {
        let sig = match self {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        };
        sig.map(|s| s.to_header()).map_err(|e| AuthError::Sign(e.to_string()))
    }
}

/// A PEM private key file (PKCS#1 or PKCS#8).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    let pem = std::fs::read(path).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| AuthError::Key(format!("{}: not a PEM private key ({e})", path.display())))
}

/// A TXT record value as DNS character-strings of at most 255 octets each.
pub fn txt_strings(value: &str) -> Vec<String> {
    value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Makes a key pair: returns the private key as PEM and the DNS TXT record value to publish
/// at `<selector>._domainkey.<domain>`.
pub fn keygen(kind: KeyKind) -> Result<(String, String), AuthError> {
    let (pair, label, k) = match kind {
        KeyKind::Rsa2048 => (DkimKeyPair::generate_rsa(2048), "RSA PRIVATE KEY", "rsa"),
        KeyKind::Ed25519 => (DkimKeyPair::generate_ed25519(), "PRIVATE KEY", "ed25519"),
    };
    let pair = pair.map_err(|e| AuthError::Key(e.to_string()))?;
    let public = match kind {
        // RSA: p= is the SubjectPublicKeyInfo; mail-auth gives PKCS#1, which verifiers also
        // accept (RFC 6376 §3.6.1 says SPKI): wrap it to be strict.
        KeyKind::Rsa2048 => spki_rsa(pair.public_key()),
        KeyKind::Ed25519 => pair.public_key().to_vec(),
    };
    use base64::Engine;
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    Ok((pem(label, pair.private_key()), format!("v=DKIM1; k={k}; p={p}")))
}

/// The DNS TXT value to publish (`v=DKIM1; k=…; p=…`) for the private key in `path`: the
/// Ed25519 public key, or the RSA one as a SubjectPublicKeyInfo.
pub fn public_record(path: &Path) -> Result<String, AuthError> {
    use base64::Engine;
    let key = read_key(path)?;
    let bad =
        |e: ring::error::KeyRejected| AuthError::Key(format!("{}: not an RSA or Ed25519 key ({e})", path.display()));
    let (k, public) = match &key {
        PrivateKeyDer::Pkcs8(p8) => {
            match ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(p8.secret_pkcs8_der()) {
                Ok(pair) => ("ed25519", ring::signature::KeyPair::public_key(&pair).as_ref().to_vec()),
                Err(_) => {
                    let pair = ring::rsa::KeyPair::from_pkcs8(p8.secret_pkcs8_der()).map_err(bad)?;
                    ("rsa", spki_rsa(pair.public().as_ref()))
                }
            }
        }
        PrivateKeyDer::Pkcs1(p1) => {
            let pair = ring::rsa::KeyPair::from_der(p1.secret_pkcs1_der()).map_err(bad)?;
            ("rsa", spki_rsa(pair.public().as_ref()))
        }
        _ => return Err(AuthError::Key(format!("{}: not an RSA or Ed25519 key", path.display()))),
    };
    Ok(format!("v=DKIM1; k={k}; p={}", base64::engine::general_purpose::STANDARD.encode(public)))
}

/// Whether a published DKIM record carries the same public key as `ours` (from
/// [`public_record`]). Whitespace inside `p=` is ignored (long records are split); an RSA key
/// published as a bare PKCS#1 RSAPublicKey, which verifiers also accept, counts as the same.
pub fn record_matches(published: &str, ours: &str) -> bool {
    use base64::Engine;
    let p = |record: &str| -> Option<Vec<u8>> {
        let value = record.split(';').find_map(|tag| tag.trim().strip_prefix("p="))?;
        let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(compact).ok()
    };
    match (p(published), p(ours)) {
        (Some(theirs), Some(ours)) => !ours.is_empty() && (theirs == ours || spki_rsa(&theirs) == ours),
        _ => false,
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption, NULL parameters).
pub(crate) fn spki_rsa(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            vec![n as u8]
        } else if n < 0x100 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }
    const ALG: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bitstring = vec![0x03];
    bitstring.extend(der_len(pkcs1.len() + 1));
    bitstring.push(0);
    bitstring.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(ALG.len() + bitstring.len()));
    out.extend_from_slice(ALG);
    out.extend(bitstring);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_record_is_derived_from_the_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut records = vec![];
        for kind in [KeyKind::Ed25519, KeyKind::Rsa2048] {
            let (pem, txt) = keygen(kind).unwrap();
            let path = dir.path().join(format!("{kind:?}.pem"));
            std::fs::write(&path, pem).unwrap();
            let derived = public_record(&path).unwrap();
            assert_eq!(derived, txt, "{kind:?}");
            assert!(record_matches(&txt, &derived));
            records.push(derived);
        }
        // Another key does not match; split and spaced p= does; so does RSA as bare PKCS#1.
        assert!(!record_matches(&records[0], &records[1]));
        let (_, other) = keygen(KeyKind::Ed25519).unwrap();
        assert!(!record_matches(&other, &records[0]));
        let spaced = records[1].replacen("p=", "p= ", 1).replace("AQAB", "AQ AB");
        assert!(record_matches(&spaced, &records[1]));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let spki = b64.decode(records[1].split("p=").nth(1).unwrap()).unwrap();
        // The SubjectPublicKeyInfo's BIT STRING holds the PKCS#1 key after its 0 pad octet.
        let pkcs1 = &spki[24..];
        assert_eq!(spki_rsa(pkcs1), spki);
        assert!(record_matches(&format!("v=DKIM1; k=rsa; p={}", b64.encode(pkcs1)), &records[1]));
        assert!(!record_matches("v=DKIM1; p=", &records[0]), "a revoked key");
    }
}
