//! `mailgate dns check`: what the domain's DNS publishes, looked up through the configured
//! resolver, against the [`Plan`]; one line per finding, each problem with its fix.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use mailgate_auth::spf::{check_host, Identity, RecordCache, SpfVerdict};

use super::{chain, hex, spki, Plan};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Worth doing, not wrong: an optional record absent, a policy in testing.
    Warn,
    /// Wrong or missing: mail will be refused, marked or sent without the protection.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// What was checked: MX, SPF, DKIM, …
    pub what: &'static str,
    pub text: String,
}

struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, level: Level, what: &'static str, text: impl Into<String>) {
        self.0.push(Finding { level, what, text: text.into() });
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// The TXT records at `name`, each as its strings joined (none for NXDOMAIN or no data).
async fn txt(r: &TokioResolver, name: &str) -> Vec<String> {
    match r.txt_lookup(fqdn(name)).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
                _ => None,
            })
            .collect(),
        Err(_) => vec![],
    }
}

async fn addresses(r: &TokioResolver, name: &str) -> Vec<IpAddr> {
    r.lookup_ip(fqdn(name)).await.map(|l| l.iter().collect()).unwrap_or_default()
}

async fn mx_hosts(r: &TokioResolver, domain: &str) -> Vec<(u16, String)> {
    match r.mx_lookup(fqdn(domain)).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase())),
                _ => None,
            })
            .collect(),
        Err(_) => vec![],
    }
}

/// Checks everything `plan` needs; `roots` are the trust anchors for the MTA-STS policy fetch.
pub async fn check(plan: &Plan, r: &TokioResolver, roots: rustls::RootCertStore) -> Vec<Finding> {
    let mut rep = Report(vec![]);
    let d = &plan.domain;
    let h = &plan.hostname;

    // MX and the MX host's addresses.
    let mx = mx_hosts(r, d).await;
    match mx.iter().find(|(_, host)| host == h) {
        Some((pref, _)) => rep.add(Level::Ok, "MX", format!("{d} → {h} (preference {pref})")),
        None if mx.is_empty() => {
            rep.add(Level::Fail, "MX", format!("{d} has no MX record; publish: {d}. IN MX 10 {h}."))
        }
        None => {
            let names: Vec<&str> = mx.iter().map(|(_, n)| n.as_str()).collect();
            rep.add(Level::Fail, "MX", format!("no MX of {d} is this gateway ({h}); they are {}", names.join(", ")))
        }
    }
    let found = addresses(r, h).await;
    if plan.addresses.is_empty() {
        match found.is_empty() {
            true => rep.add(Level::Fail, "A/AAAA", format!("{h} has no address")),
            false => rep.add(Level::Ok, "A/AAAA", format!("{h} → {}", join(&found))),
        }
    }
    for ip in &plan.addresses {
        match found.contains(ip) {
            true => rep.add(Level::Ok, "A/AAAA", format!("{h} → {ip}")),
            false => {
                rep.add(Level::Fail, "A/AAAA", format!("{h} does not resolve to {ip} (it gives {})", join(&found)))
            }
        }
    }

    // SPF: the published record evaluated for every sending address, by our RFC 7208 code.
    let spf: Vec<String> =
        txt(r, d).await.into_iter().filter(|t| t.to_ascii_lowercase().starts_with("v=spf1")).collect();
    match spf.len() {
        0 => rep.add(Level::Fail, "SPF", format!("{d} publishes no SPF record; publish: \"{}\"", plan.spf())),
        1 => {
            let cache = RecordCache::default();
            let sender = format!("postmaster@{d}");
            for s in &plan.senders {
                let id = Identity { ip: s.ip, helo: &s.name, sender: &sender, receiver: h };
                let outcome = check_host(r, &cache, &id).await;
                match outcome.result {
                    SpfVerdict::Pass => rep.add(Level::Ok, "SPF", format!("{} may send for {d}", s.ip)),
                    other => rep.add(
                        Level::Fail,
                        "SPF",
                        format!(
                            "{d}'s SPF gives {} for the sending address {}; add {}:{} to \"{}\"",
                            verdict(other),
                            s.ip,
                            if s.ip.is_ipv4() { "ip4" } else { "ip6" },
                            s.ip,
                            spf[0]
                        ),
                    ),
                }
            }
        }
        n => rep.add(Level::Fail, "SPF", format!("{d} publishes {n} SPF records (a permerror): keep one")),
    }

    // DKIM: the published key is the one the gateway signs with.
    if plan.dkim.is_empty() {
        rep.add(Level::Warn, "DKIM", format!("no [[dkim_sign]] for {d}: its mail is not signed here"));
    }
    for k in &plan.dkim {
        let name = format!("{}._domainkey.{d}", k.selector);
        let published: Vec<String> = txt(r, &name).await;
        if published.is_empty() {
            rep.add(Level::Fail, "DKIM", format!("{name} is not published; publish: \"{}\"", k.record));
        } else if published.iter().any(|p| mailgate_auth::record_matches(p, &k.record)) {
            rep.add(Level::Ok, "DKIM", format!("{name} holds the key of {}", k.file.display()));
        } else {
            rep.add(
                Level::Fail,
                "DKIM",
                format!("{name} holds another key than {}; publish: \"{}\"", k.file.display(), k.record),
            );
        }
    }

    // DMARC.
    let dmarc: Vec<String> = txt(r, &format!("_dmarc.{d}"))
        .await
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=dmarc1"))
        .collect();
    match dmarc.first() {
        Some(t) => rep.add(Level::Ok, "DMARC", format!("_dmarc.{d}: {t}")),
        None => rep.add(Level::Fail, "DMARC", format!("_dmarc.{d} is absent; publish: \"{}\"", plan.dmarc)),
    }

    // Reverse DNS of every sending address, forward-confirmed.
    for s in &plan.senders {
        ptr(&mut rep, r, s.ip, &s.name).await;
    }

    // MTA-STS: the record, the policy over HTTPS, the MX hosts in it.
    let sts: Vec<String> = txt(r, &format!("_mta-sts.{d}"))
        .await
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=stsv1"))
        .collect();
    match sts.first() {
        None => rep.add(
            Level::Warn,
            "MTA-STS",
            format!(
                "_mta-sts.{d} is absent: senders may deliver to {d} without verified TLS (`dns records` prints it)"
            ),
        ),
        Some(t) => match mailgate_mtasts::record_id(t) {
            Err(e) => rep.add(Level::Fail, "MTA-STS", format!("_mta-sts.{d}: {e}")),
            Ok(id) => {
                let host = mailgate_mtasts::policy_host(d);
                let addrs: Vec<SocketAddr> =
                    addresses(r, &host).await.into_iter().map(|ip| SocketAddr::new(ip, 443)).collect();
                match mailgate_mtasts::fetch(d, &addrs, roots).await {
                    Err(e) => {
                        rep.add(Level::Fail, "MTA-STS", format!("{} (id {id}): {e}", mailgate_mtasts::policy_url(d)))
                    }
                    Ok(policy) => {
                        let level = if policy.mode == mailgate_mtasts::Mode::Enforce { Level::Ok } else { Level::Warn };
                        rep.add(
                            level,
                            "MTA-STS",
                            format!("policy id {id}: mode {}, mx {}", policy.mode.as_str(), policy.mx.join(" ")),
                        );
                        for (_, m) in &mx {
                            if !policy.matches(m) {
                                rep.add(
                                    Level::Fail,
                                    "MTA-STS",
                                    format!("the MX {m} is not in the policy (mx: {}): senders enforcing it will not deliver there", policy.mx.join(", ")),
                                );
                            }
                        }
                        if !mx.iter().any(|(_, m)| m == h) && !policy.matches(h) {
                            rep.add(
                                Level::Fail,
                                "MTA-STS",
                                format!("this gateway ({h}) is not in the policy (mx: {})", policy.mx.join(", ")),
                            );
                        }
                    }
                }
            }
        },
    }

    // TLS-RPT.
    let rpt: Vec<String> = txt(r, &format!("_smtp._tls.{d}"))
        .await
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=tlsrptv1"))
        .collect();
    match rpt.first().map(|t| mailgate_mtasts::tlsrpt_rua(t)) {
        None => rep.add(Level::Warn, "TLS-RPT", format!("_smtp._tls.{d} is absent; publish: \"{}\"", plan.tlsrpt)),
        Some(Ok(rua)) => rep.add(Level::Ok, "TLS-RPT", format!("reports to {}", rua.join(", "))),
        Some(Err(e)) => rep.add(Level::Fail, "TLS-RPT", format!("_smtp._tls.{d}: {e}")),
    }

    // DANE: a TLSA record that matches the certificate the gateway presents.
    if let Some((hash, file)) = &plan.tlsa {
        tlsa(&mut rep, r, h, hash, file).await;
    }
    rep.0
}

fn join(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "nothing".into();
    }
    ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn verdict(v: SpfVerdict) -> &'static str {
    match v {
        SpfVerdict::None => "none",
        SpfVerdict::Neutral => "neutral",
        SpfVerdict::Pass => "pass",
        SpfVerdict::Fail => "fail",
        SpfVerdict::SoftFail => "softfail",
        SpfVerdict::TempError => "temperror",
        SpfVerdict::PermError => "permerror",
    }
}

/// PTR of `ip`, a name of it resolving back to `ip`, and that name being the EHLO name.
async fn ptr(rep: &mut Report, r: &TokioResolver, ip: IpAddr, ehlo: &str) {
    let names: Vec<String> = match r.reverse_lookup(ip).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Err(_) => vec![],
    };
    if names.is_empty() {
        rep.add(
            Level::Fail,
            "PTR",
            format!("{ip} has no PTR record; ask its provider for: {} PTR {ehlo}.", super::reverse_name(ip)),
        );
        return;
    }
    let mut confirmed = None;
    for n in &names {
        if addresses(r, n).await.contains(&ip) {
            confirmed = Some(n.clone());
            break;
        }
    }
    match confirmed {
        None => rep.add(
            Level::Fail,
            "PTR",
            format!(
                "{ip} → {} but that name does not resolve back to {ip} (no forward-confirmed reverse DNS)",
                names.join(", ")
            ),
        ),
        Some(n) if n.eq_ignore_ascii_case(ehlo.trim_end_matches('.')) => {
            rep.add(Level::Ok, "PTR", format!("{ip} ↔ {n} (the EHLO name)"))
        }
        Some(n) => rep.add(
            Level::Warn,
            "PTR",
            format!("{ip} ↔ {n}, but mail from {ip} says EHLO {ehlo}: set the pool source's helo to {n}"),
        ),
    }
}

/// TLSA records of `_25._tcp.<host>` against the certificate chain in `file`.
async fn tlsa(rep: &mut Report, r: &TokioResolver, host: &str, hash: &str, file: &std::path::Path) {
    let name = format!("_25._tcp.{host}");
    let records: Vec<_> = match r.tlsa_lookup(fqdn(&name)).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::TLSA(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        Err(_) => vec![],
    };
    if records.is_empty() {
        rep.add(
            Level::Warn,
            "TLSA",
            format!("{name} is absent: no DANE for the gateway (needs a DNSSEC-signed zone); publish: 3 1 1 {hash}"),
        );
        return;
    }
    let certs = match chain(file) {
        Ok(c) => c,
        Err(e) => return rep.add(Level::Fail, "TLSA", e.to_string()),
    };
    let digest = |m: Matching, data: &[u8]| -> Option<Vec<u8>> {
        match m {
            Matching::Raw => Some(data.to_vec()),
            Matching::Sha256 => Some(ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()),
            Matching::Sha512 => Some(ring::digest::digest(&ring::digest::SHA512, data).as_ref().to_vec()),
            _ => None,
        }
    };
    let mut matched = None;
    let mut unchecked = 0;
    for t in &records {
        // DANE-EE matches the leaf; DANE-TA a certificate of the chain above it.
        let candidates: &[_] = match t.cert_usage {
            CertUsage::DaneEe => &certs[..1],
            CertUsage::DaneTa => &certs[1..],
            _ => {
                unchecked += 1;
                continue;
            }
        };
        for c in candidates {
            let selected = match t.selector {
                Selector::Full => Some(c.as_ref().to_vec()),
                Selector::Spki => spki(c).ok(),
                _ => None,
            };
            if selected.and_then(|s| digest(t.matching, &s)).is_some_and(|d| d == t.cert_data) {
                matched = Some(format!(
                    "{} {} {} {}",
                    u8::from(t.cert_usage),
                    u8::from(t.selector),
                    u8::from(t.matching),
                    hex(&t.cert_data)
                ));
            }
        }
    }
    match matched {
        Some(m) => rep.add(Level::Ok, "TLSA", format!("{name} {m} matches {}", file.display())),
        None if unchecked == records.len() => {
            rep.add(Level::Warn, "TLSA", format!("{name} has only PKIX records (usage 0/1), not used by SMTP DANE"))
        }
        None => rep.add(
            Level::Fail,
            "TLSA",
            format!("no record at {name} matches the certificate in {}: senders using DANE will not deliver; publish: 3 1 1 {hash}", file.display()),
        ),
    }
}
