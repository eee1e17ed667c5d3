//! `mailgate dns records|check`: the DNS records a deployment needs, derived from its
//! configuration and keys (MX, SPF for every sending address, DKIM for every signing key,
//! DMARC, MTA-STS and its policy, TLS-RPT, PTR with forward confirmation, TLSA for the
//! gateway's certificate), and a check of what is published against them, through the
//! configured resolver, naming each fix.

mod check;
mod records;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mailgate_config::Config;
use mailgate_mtasts::{Mode, Policy};

pub use check::{check, Level};
pub use records::render;

/// `mailgate dns records`.
pub fn records_command(config: Option<&Path>, domain: &str, ips: &[IpAddr]) -> std::process::ExitCode {
    let plan = match Config::load(config)
        .map_err(|e| e.to_string())
        .and_then(|c| Plan::new(&c, domain, ips).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mailgate dns records: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    print!("{}", render(&plan));
    std::process::ExitCode::SUCCESS
}

/// `mailgate dns check`: exit 1 when anything is wrong or missing (warnings do not count).
pub fn check_command(
    config: Option<&Path>,
    domain: &str,
    ips: &[IpAddr],
    ca_file: Option<&Path>,
) -> std::process::ExitCode {
    let fail = |e: String| {
        eprintln!("mailgate dns check: {e}");
        std::process::ExitCode::from(1)
    };
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let plan = match Plan::new(&cfg, domain, ips) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let roots = match mailgate_mtasts::roots(ca_file) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let findings = rt.block_on(async {
        let resolver = mailgate_delivery::Resolver::new(&cfg.dns)?;
        Ok::<_, std::io::Error>(check(&plan, resolver.inner(), roots).await)
    });
    let findings = match findings {
        Ok(f) => f,
        Err(e) => return fail(format!("resolver: {e}")),
    };
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for f in &findings {
        let (tag, code) = match f.level {
            Level::Ok => ("ok  ", "32"),
            Level::Warn => ("WARN", "33"),
            Level::Fail => ("FAIL", "31"),
        };
        let tag = if colour { format!("\x1b[{code}m{tag}\x1b[0m") } else { tag.to_string() };
        println!("{tag} {:<8} {}", f.what, f.text);
    }
    let problems = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warnings = findings.iter().filter(|f| f.level == Level::Warn).count();
    println!("{}: {problems} problem(s), {warnings} warning(s)", plan.domain);
    if problems > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Why the records cannot be derived.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("dkim_sign {selector}._domainkey.{domain}: {source}")]
    Dkim { domain: String, selector: String, source: mailgate_auth::AuthError },
    #[error("tls.cert {0}: {1}")]
    Cert(PathBuf, String),
}

/// An address mail leaves from, with the name its PTR record should give.
#[derive(Debug, Clone)]
pub struct Sender {
    pub ip: IpAddr,
    pub name: String,
}

/// A DKIM key to publish.
#[derive(Debug, Clone)]
pub struct DkimKey {
    pub selector: String,
    /// `v=DKIM1; k=…; p=…`, from the private key.
    pub record: String,
    pub file: PathBuf,
}

/// Everything the domain's DNS should say, from the configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    pub domain: String,
    /// The gateway's name: the MX target, the TLSA owner.
    pub hostname: String,
    /// The gateway's own addresses (`--ip`), for the MX host's A/AAAA records.
    pub addresses: Vec<IpAddr>,
    /// Where mail leaves from: every `[[pool]]` source and the gateway's own addresses.
    pub senders: Vec<Sender>,
    pub dkim: Vec<DkimKey>,
    pub dmarc: String,
    pub tlsrpt: String,
    /// The MTA-STS policy to serve, and the `id` of its record; only with a certificate.
    pub mta_sts: Option<(Policy, String)>,
    /// SHA-256 of the certificate's public key (DANE-EE `3 1 1`), hex, and the file.
    pub tlsa: Option<(String, PathBuf)>,
}

/// How long receivers may cache the MTA-STS policy: a week (RFC 8461 §3.2 suggests weeks).
const STS_MAX_AGE: u64 = 604_800;

impl Plan {
    pub fn new(cfg: &Config, domain: &str, addresses: &[IpAddr]) -> Result<Plan, PlanError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let hostname = cfg.server.hostname.trim_end_matches('.').to_ascii_lowercase();
        let mut senders: Vec<Sender> = vec![];
        for s in cfg.pools.iter().flat_map(|p| &p.sources) {
            if !senders.iter().any(|x| x.ip == s.address) {
                let name = s.helo.clone().unwrap_or_else(|| cfg.helo_name().to_string());
                senders.push(Sender { ip: s.address, name });
            }
        }
        for ip in addresses {
            if !senders.iter().any(|x| x.ip == *ip) {
                senders.push(Sender { ip: *ip, name: cfg.helo_name().to_string() });
            }
        }
        let mut dkim = vec![];
        for d in cfg.dkim_sign.iter().filter(|d| d.domain.trim_end_matches('.').eq_ignore_ascii_case(&domain)) {
            let record = mailgate_auth::public_record(&d.key).map_err(|source| PlanError::Dkim {
                domain: d.domain.clone(),
                selector: d.selector.clone(),
                source,
            })?;
            if !dkim.iter().any(|k: &DkimKey| k.selector == d.selector) {
                dkim.push(DkimKey { selector: d.selector.clone(), record, file: d.key.clone() });
            }
        }
        let tlsa = match &cfg.tls.cert {
            Some(path) => Some((spki_sha256(path)?, path.clone())),
            None => None,
        };
        let mta_sts = tlsa.as_ref().map(|_| {
            let policy = Policy { mode: Mode::Enforce, mx: vec![hostname.clone()], max_age: STS_MAX_AGE };
            let digest = ring::digest::digest(&ring::digest::SHA256, policy.render().as_bytes());
            let id = hex(&digest.as_ref()[..10]);
            (policy, id)
        });
        Ok(Plan {
            dmarc: format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}"),
            tlsrpt: format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
            domain,
            hostname,
            addresses: addresses.to_vec(),
            senders,
            dkim,
            mta_sts,
            tlsa,
        })
    }

    /// The SPF record that covers every sending address (`mx` when none is known).
    pub fn spf(&self) -> String {
        let mut terms = vec!["v=spf1".to_string()];
        for s in &self.senders {
            terms.push(match s.ip {
                IpAddr::V4(v4) => format!("ip4:{v4}"),
                IpAddr::V6(v6) => format!("ip6:{v6}"),
            });
        }
        if self.senders.is_empty() {
            terms.push("mx".into());
        }
        terms.push("-all".into());
        terms.join(" ")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificates of a PEM chain file, leaf first.
pub(crate) fn chain(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PlanError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| PlanError::Cert(path.to_path_buf(), e);
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate".into()));
    }
    Ok(certs)
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn spki(cert: &rustls::pki_types::CertificateDer<'_>) -> Result<Vec<u8>, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    Ok(ee.subject_public_key_info().as_ref().to_vec())
}

/// SHA-256 of the leaf certificate's public key, hex (the data of a `3 1 1` TLSA record).
fn spki_sha256(path: &Path) -> Result<String, PlanError> {
    let certs = chain(path)?;
    let spki = spki(&certs[0]).map_err(|e| PlanError::Cert(path.to_path_buf(), e))?;
    Ok(hex(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()))
}

/// The reverse-DNS name of an address (`4.3.2.1.in-addr.arpa`, nibbles for IPv6).
pub(crate) fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("192.0.2.10".parse().unwrap()), "10.2.0.192.in-addr.arpa");
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
