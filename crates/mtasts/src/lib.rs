//! MTA-STS (RFC 8461) as data: the `_mta-sts.<domain>` TXT record and the TLS-RPT one
//! (RFC 8460) parsed, the policy fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! the way §3.3 asks (HTTPS with a valid certificate, no redirects, `200` only, a size cap, a
//! short deadline) and parsed, and MX names matched against its patterns.
//!
//! It owns no DNS and no cache: callers resolve names with their own resolver (and hand the
//! addresses in), and decide what a policy means for a delivery or a report.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;

/// Why a record, a policy or its fetch is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MtaStsError {
    #[error("not an MTA-STS record (v=STSv1; id=…)")]
    Record,
    #[error("not a TLS-RPT record (v=TLSRPTv1; rua=…)")]
    TlsRptRecord,
    #[error("policy: {0}")]
    Policy(&'static str),
    #[error("policy fetch: {0}")]
    Fetch(#[from] reqwest::Error),
    #[error("policy fetch: HTTP status {0} (only 200 is a policy)")]
    Status(u16),
    #[error("policy fetch: larger than {MAX_POLICY} bytes")]
    TooLarge,
    #[error("policy fetch: no address for {0}")]
    NoAddress(String),
    #[error("trust anchors {0}: {1}")]
    Roots(String, String),
}

/// The largest policy body read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;

/// How long a policy fetch may take (connect, TLS, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The `id` of a `_mta-sts` TXT record (`v=STSv1; id=…`).
pub fn record_id(txt: &str) -> Result<String, MtaStsError> {
    mail_auth::mta_sts::MtaSts::parse(txt.as_bytes()).map(|r| r.id).map_err(|_| MtaStsError::Record)
}

/// The report addresses of a `_smtp._tls` TXT record (`v=TLSRPTv1; rua=mailto:…`), as URIs.
pub fn tlsrpt_rua(txt: &str) -> Result<Vec<String>, MtaStsError> {
    use mail_auth::mta_sts::ReportUri;
    let r = mail_auth::mta_sts::TlsRpt::parse(txt.as_bytes()).map_err(|_| MtaStsError::TlsRptRecord)?;
    Ok(r.rua
        .into_iter()
        .map(|u| match u {
            ReportUri::Mail(m) => format!("mailto:{m}"),
            ReportUri::Http(h) => h,
        })
        .collect())
}

/// A policy's mode (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// The `mx:` patterns: host names, or `*.` and a domain for one more label.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// The largest `max_age` honoured (§3.2: 31557600, about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

impl Policy {
    /// Parses a policy body: `key: value` lines (CRLF or LF), `version: STSv1` required, `mode`
    /// and `max_age` required, `mx` required unless the mode is `none`; unknown keys ignored.
    pub fn parse(text: &str) -> Result<Policy, MtaStsError> {
        let (mut version, mut mode, mut max_age, mut mx) = (false, None, None, vec![]);
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(MtaStsError::Policy("a line without ':'"));
            };
            let value = value.trim();
            match key.trim() {
                "version" => {
                    if value != "STSv1" {
                        return Err(MtaStsError::Policy("version is not STSv1"));
                    }
                    version = true;
                }
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return Err(MtaStsError::Policy("mode is not enforce, testing or none")),
                    })
                }
                "max_age" => {
                    let n: u64 = value.parse().map_err(|_| MtaStsError::Policy("max_age is not a number"))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
                _ => {}
            }
        }
        if !version {
            return Err(MtaStsError::Policy("no version: STSv1"));
        }
        let mode = mode.ok_or(MtaStsError::Policy("no mode"))?;
        let max_age = max_age.ok_or(MtaStsError::Policy("no max_age"))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(MtaStsError::Policy("no mx"));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Whether an MX host name matches one of the policy's patterns (§4.1): equal, or the
    /// pattern `*.example.com` and a name with exactly one more label.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }

    /// The policy as its file says it (what `mailgate dns records` prints to serve).
    pub fn render(&self) -> String {
        let mut s = format!("version: STSv1\r\nmode: {}\r\n", self.mode.as_str());
        for m in &self.mx {
            s.push_str(&format!("mx: {m}\r\n"));
        }
        s.push_str(&format!("max_age: {}\r\n", self.max_age));
        s
    }
}

/// Where the policy of `domain` is served.
pub fn policy_url(domain: &str) -> String {
    format!("https://mta-sts.{}/.well-known/mta-sts.txt", domain.trim_end_matches('.'))
}

/// The policy host of `domain` (`mta-sts.<domain>`), to be resolved by the caller.
pub fn policy_host(domain: &str) -> String {
    format!("mta-sts.{}", domain.trim_end_matches('.'))
}

/// Trust anchors for policy fetches: the public roots, and the certificates of `extra` (a PEM
/// file; for a private PKI such as a test's).
pub fn roots(extra: Option<&Path>) -> Result<rustls::RootCertStore, MtaStsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra {
        let name = path.display().to_string();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| MtaStsError::Roots(name.clone(), e.to_string()))?;
        for c in certs {
            let c = c.map_err(|e| MtaStsError::Roots(name.clone(), e.to_string()))?;
            roots.add(c).map_err(|e| MtaStsError::Roots(name.clone(), e.to_string()))?;
        }
    }
    Ok(roots)
}

/// Fetches and parses the policy of `domain` from `addrs` (the addresses of
/// `mta-sts.<domain>`, port 443, as the caller's resolver found them): a certificate valid
/// for `mta-sts.<domain>` under `roots`, no redirect followed, only `200`, at most
/// [`MAX_POLICY`] bytes, within [`FETCH_TIMEOUT`].
pub async fn fetch(domain: &str, addrs: &[SocketAddr], roots: rustls::RootCertStore) -> Result<Policy, MtaStsError> {
    let host = policy_host(domain);
    if addrs.is_empty() {
        return Err(MtaStsError::NoAddress(host));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| MtaStsError::Roots("ring".into(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .no_proxy()
        .resolve_to_addrs(&host, addrs)
        .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut resp = client.get(policy_url(domain)).send().await?;
    if resp.status().as_u16() != 200 {
        return Err(MtaStsError::Status(resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_POLICY {
            return Err(MtaStsError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Policy::parse(&String::from_utf8_lossy(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(record_id("v=STSv1; id=20261129T1030").unwrap(), "20261129T1030");
        assert!(record_id("v=STSv2; id=1").is_err());
        assert!(record_id("v=spf1 -all").is_err());
        assert_eq!(tlsrpt_rua("v=TLSRPTv1; rua=mailto:tls@example.com").unwrap(), ["mailto:tls@example.com"]);
        assert!(tlsrpt_rua("v=TLSRPTv1").is_err());
    }

    #[test]
    fn policies_parse_and_match() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert!(p.matches("MX1.example.com."));
        assert!(p.matches("a.mx.example.com"));
        assert!(!p.matches("a.b.mx.example.com"), "a wildcard covers one label");
        assert!(!p.matches("mx.example.com"));
        assert!(!p.matches("mx2.example.com"));
        assert_eq!(Policy::parse(&p.render()).unwrap(), p);
        // LF lines, unknown keys, a huge max_age capped.
        let q =
            Policy::parse("version: STSv1\nmode: testing\nmx: m.example\nmax_age: 99999999999\nextra: 1\n").unwrap();
        assert_eq!((q.mode, q.max_age), (Mode::Testing, MAX_AGE_LIMIT));
        for bad in [
            "mode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
            "<html>not a policy</html>",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        assert!(Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
    }
}
