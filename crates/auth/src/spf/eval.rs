//! `check_host()` (RFC 7208 §4): record selection, evaluation of the directives in order,
//! `redirect=`, the limits, and the explanation of a `fail`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use hickory_resolver::TokioResolver;

use super::dns::{self, Failed};
use super::macros::{Context, Facts, MacroString};
use super::record::{self, Mechanism, Qualifier, Record};
use super::RecordCache;
use super::{Identity, SpfOutcome, SpfVerdict};

/// Terms that cause DNS look-ups (include, a, mx, ptr, exists, redirect), per check (§4.6.4).
const MAX_LOOKUP_TERMS: u32 = 10;
/// Look-ups that return nothing (NXDOMAIN or no records), per check (§4.6.4).
const MAX_VOID_LOOKUPS: u32 = 2;
/// Names of one `mx` (address look-ups) or `ptr` mechanism (§4.6.4).
const MAX_NAMES: usize = 10;

/// Evaluates SPF for `id`: of the MAIL FROM domain, or of `postmaster@<helo>` for the null
/// sender (§2.4). A sender or HELO that is not a domain name gives `none` (§4.3).
pub async fn check_host(resolver: &TokioResolver, cache: &RecordCache, id: &Identity<'_>) -> SpfOutcome {
    let (local, domain) = match id.sender.rsplit_once('@') {
        Some((l, d)) => (if l.is_empty() { "postmaster".to_string() } else { unquote(l) }, d),
        None if id.sender.is_empty() => ("postmaster".to_string(), id.helo),
        None => ("postmaster".to_string(), id.sender),
    };
    let domain = domain.trim_end_matches('.');
    let mut check = Check {
        resolver,
        cache,
        ip: canonical(id.ip),
        local: &local,
        sender_domain: domain,
        helo: id.helo,
        receiver: id.receiver,
        lookups: 0,
        voids: 0,
        validated: None,
    };
    let outcome = if valid_domain(domain) {
        check.run(domain.to_string(), true).await
    } else {
        Evaluated { result: SpfVerdict::None, explanation: None }
    };
    SpfOutcome { result: outcome.result, domain: domain.to_string(), explanation: outcome.explanation }
}

/// A quoted local part (`"Macro Error"@…`) is its content for `%{l}` (RFC 5321 §4.1.2).
fn unquote(local: &str) -> String {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else { return local.to_string() };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
    }
    out
}

/// An IPv4 client on an IPv6 socket is an IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// §4.3: a fully qualified domain name — at least two labels, none empty or over 63 octets,
/// not a domain literal.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && !d.starts_with('[')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

struct Evaluated {
    result: SpfVerdict,
    explanation: Option<String>,
}

impl Evaluated {
    fn of(result: SpfVerdict) -> Evaluated {
        Evaluated { result, explanation: None }
    }
}

/// One check's state: its facts and the limits shared by every nested include and redirect.
struct Check<'a> {
    resolver: &'a TokioResolver,
    cache: &'a RecordCache,
    ip: IpAddr,
    local: &'a str,
    sender_domain: &'a str,
    helo: &'a str,
    receiver: &'a str,
    lookups: u32,
    voids: u32,
    /// `%{p}`, once computed.
    validated: Option<String>,
}

/// Why a mechanism could not be evaluated: the check ends with this result.
struct Abort(SpfVerdict);

type Boxed<'b> = Pin<Box<dyn Future<Output = Evaluated> + Send + 'b>>;

impl<'a> Check<'a> {
    /// check_host() for `domain`. `explain`: whether this record's `exp=` may be used (not
    /// inside an include, §6.2).
    fn run(&mut self, domain: String, explain: bool) -> Boxed<'_> {
        Box::pin(async move {
            let records = match dns::txt(self.resolver, self.cache, &domain).await {
                Ok(r) => r,
                Err(Failed::Void) => return Evaluated::of(SpfVerdict::None),
                Err(Failed::Error) => return Evaluated::of(SpfVerdict::TempError),
            };
            let mut spf = records.iter().filter(|r| record::is_spf(r));
            let (Some(txt), None) = (spf.next(), spf.next()) else {
                // None, or more than one (§4.5).
                let n = records.iter().filter(|r| record::is_spf(r)).count();
                return Evaluated::of(if n == 0 { SpfVerdict::None } else { SpfVerdict::PermError });
            };
            let Some(rec) = self.cache.parse(txt) else { return Evaluated::of(SpfVerdict::PermError) };
            match self.evaluate(&rec, &domain).await {
                Err(Abort(r)) => Evaluated::of(r),
                Ok(Some(Qualifier::Fail)) => {
                    let explanation = match (&rec.exp, explain) {
                        (Some(exp), true) => self.explain(exp, &domain).await,
                        _ => None,
                    };
                    Evaluated { result: SpfVerdict::Fail, explanation }
                }
                Ok(Some(q)) => Evaluated::of(match q {
                    Qualifier::Pass => SpfVerdict::Pass,
                    Qualifier::SoftFail => SpfVerdict::SoftFail,
                    _ => SpfVerdict::Neutral,
                }),
                Ok(None) => match &rec.redirect {
                    None => Evaluated::of(SpfVerdict::Neutral),
                    Some(target) => {
                        if let Err(Abort(r)) = self.count_lookup() {
                            return Evaluated::of(r);
                        }
                        let target = match self.target(target, &domain).await {
                            Ok(t) => t,
                            Err(Abort(r)) => return Evaluated::of(r),
                        };
                        if !valid_domain(&target) {
                            return Evaluated::of(SpfVerdict::PermError);
                        }
                        // The redirect target's record, with its own exp= (§6.1).
                        let out = self.run(target, explain).await;
                        if out.result == SpfVerdict::None {
                            return Evaluated::of(SpfVerdict::PermError);
                        }
                        out
                    }
                },
            }
        })
    }

    /// The qualifier of the first matching directive, or none.
    async fn evaluate(&mut self, rec: &Record, domain: &str) -> Result<Option<Qualifier>, Abort> {
        for d in &rec.directives {
            if self.matches(&d.mechanism, domain).await? {
                return Ok(Some(d.qualifier));
            }
        }
        Ok(None)
    }

    fn count_lookup(&mut self) -> Result<(), Abort> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUP_TERMS {
            return Err(Abort(SpfVerdict::PermError));
        }
        Ok(())
    }

    /// Counts a void answer; past the limit the check is a `permerror`.
    fn void(&mut self) -> Result<(), Abort> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Abort(SpfVerdict::PermError));
        }
        Ok(())
    }

    /// The target of a mechanism: its expanded domain-spec, or the current domain.
    async fn target(&mut self, spec: &MacroString, domain: &str) -> Result<String, Abort> {
        if spec.wants_validated_name() && self.validated.is_none() {
            self.validated = Some(self.validated_name(domain).await);
        }
        let facts = Facts {
            local: self.local,
            sender_domain: self.sender_domain,
            domain,
            ip: self.ip,
            helo: self.helo,
            validated: self.validated.as_deref(),
            receiver: self.receiver,
        };
        let mut name = spec.expand(&facts, Context::DomainSpec).ok_or(Abort(SpfVerdict::PermError))?;
        // Over 253 octets: drop labels from the left until it fits (§7.3).
        while name.len() > 253 {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_string(),
                None => break,
            }
        }
        Ok(name.trim_end_matches('.').to_string())
    }

    async fn target_or(&mut self, spec: &Option<MacroString>, domain: &str) -> Result<String, Abort> {
        match spec {
            Some(s) => self.target(s, domain).await,
            None => Ok(domain.to_string()),
        }
    }

    async fn matches(&mut self, m: &Mechanism, domain: &str) -> Result<bool, Abort> {
        let v4 = self.ip.is_ipv4();
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(match self.ip {
                IpAddr::V4(ip) => in_net(u32::from(ip).into(), u32::from(*net).into(), len + 96),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6(net, len) => Ok(match self.ip {
                IpAddr::V6(ip) => in_net(ip.into(), (*net).into(), *len),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                self.count_lookup()?;
                let target = self.target(spec, domain).await?;
                if !valid_domain(&target) {
                    return Err(Abort(SpfVerdict::PermError));
                }
                // An include's own exp= is never used (§6.2).
                match self.run(target, false).await.result {
                    SpfVerdict::Pass => Ok(true),
                    SpfVerdict::Fail | SpfVerdict::SoftFail | SpfVerdict::Neutral => Ok(false),
                    SpfVerdict::TempError => Err(Abort(SpfVerdict::TempError)),
                    SpfVerdict::PermError | SpfVerdict::None => Err(Abort(SpfVerdict::PermError)),
                }
            }
            Mechanism::A(spec, l4, l6) => {
                self.count_lookup()?;
                let target = self.target_or(spec, domain).await?;
                let len = if v4 { *l4 } else { *l6 };
                self.address_match(&target, len).await
            }
            Mechanism::Mx(spec, l4, l6) => {
                self.count_lookup()?;
                let target = self.target_or(spec, domain).await?;
                let len = if v4 { *l4 } else { *l6 };
                let hosts = match dns::mx(self.resolver, &target).await {
                    Ok(h) => h,
                    Err(Failed::Void) => {
                        self.void()?;
                        return Ok(false);
                    }
                    Err(Failed::Error) => return Err(Abort(SpfVerdict::TempError)),
                };
                if hosts.len() > MAX_NAMES {
                    return Err(Abort(SpfVerdict::PermError));
                }
                for host in hosts.iter().filter(|h| !h.is_empty()) {
                    if self.address_match(host, len).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_lookup()?;
                let target = self.target_or(spec, domain).await?.to_ascii_lowercase();
                let names = self.validated_names().await;
                Ok(names.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    n == target || n.ends_with(&format!(".{target}"))
                }))
            }
            Mechanism::Exists(spec) => {
                self.count_lookup()?;
                let target = self.target(spec, domain).await?;
                // Always an A query, whatever the client's family (§5.7).
                match dns::addresses(self.resolver, &target, true).await {
                    Ok(_) => Ok(true),
                    Err(Failed::Void) => {
                        self.void()?;
                        Ok(false)
                    }
                    Err(Failed::Error) => Err(Abort(SpfVerdict::TempError)),
                }
            }
        }
    }

    /// Whether `name` has an address (of the client's family) in the client's network.
    async fn address_match(&mut self, name: &str, len: u8) -> Result<bool, Abort> {
        match dns::addresses(self.resolver, name, self.ip.is_ipv4()).await {
            Ok(addrs) => Ok(addrs.into_iter().any(|a| same_net(self.ip, a, len))),
            Err(Failed::Void) => {
                self.void()?;
                Ok(false)
            }
            Err(Failed::Error) => Err(Abort(SpfVerdict::TempError)),
        }
    }

    /// The client's PTR names that resolve back to its address (§5.5); DNS errors only
    /// leave names out.
    async fn validated_names(&mut self) -> Vec<String> {
        let names = match dns::ptr(self.resolver, self.ip).await {
            Ok(n) => n,
            Err(_) => return vec![],
        };
        let mut out = vec![];
        for name in names.into_iter().take(MAX_NAMES) {
            if let Ok(addrs) = dns::addresses(self.resolver, &name, self.ip.is_ipv4()).await {
                if addrs.contains(&self.ip) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// `%{p}`: a validated name, preferring the domain itself, then one of its subdomains.
    async fn validated_name(&mut self, domain: &str) -> String {
        let names = self.validated_names().await;
        let d = domain.to_ascii_lowercase();
        names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(&d))
            .or_else(|| names.iter().find(|n| n.to_ascii_lowercase().ends_with(&format!(".{d}"))))
            .or(names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The explanation of a fail (§6.2): one TXT record at the expanded `exp=` target,
    /// macros expanded; nothing on any error.
    async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let target = self.target(exp, domain).await.ok()?;
        if !valid_domain(&target) {
            return None;
        }
        let records = dns::txt(self.resolver, self.cache, &target).await.ok()?;
        let [text] = &records[..] else { return None };
        let text = std::str::from_utf8(text).ok()?;
        if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return None;
        }
        let text = MacroString::parse(text)?;
        if text.wants_validated_name() && self.validated.is_none() {
            self.validated = Some(self.validated_name(domain).await);
        }
        let facts = Facts {
            local: self.local,
            sender_domain: self.sender_domain,
            domain,
            ip: self.ip,
            helo: self.helo,
            validated: self.validated.as_deref(),
            receiver: self.receiver,
        };
        text.expand(&facts, Context::Explanation)
    }
}

/// Whether the first `len` bits agree (IPv4 as the low 32 bits, its length plus 96).
fn in_net(ip: u128, net: u128, len: u8) -> bool {
    len == 0 || (ip ^ net) >> (128 - u32::from(len)) == 0
}

/// Whether `a` is in the client's network of prefix `len` (families must agree).
fn same_net(client: IpAddr, a: IpAddr, len: u8) -> bool {
    match (client, a) {
        (IpAddr::V4(c), IpAddr::V4(a)) => in_net(u32::from(c).into(), u32::from(a).into(), len + 96),
        (IpAddr::V6(c), IpAddr::V6(a)) => in_net(c.into(), a.into(), len),
        _ => false,
    }
}
