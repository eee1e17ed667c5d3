//! Name resolution for delivery: MX with the RFC 5321 §5.1 fallback to A/AAAA, null MX
//! (RFC 7505), host addresses. Uses hickory-resolver with configurable name servers, so tests
//! can point it at a DNS server on loopback. The lookups also say whether an answer was
//! DNSSEC-secure, which only a validating resolver (DANE's, `dane.rs`) can.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use mailgate_config::Dns;
use rand::seq::SliceRandom;

use crate::{RcptOutcome, Status};
use mailgate_smtp::{Enhanced, Reply};

/// The gateway's DNS resolver (cloning shares the cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

/// A resolver builder for `cfg`'s name servers, timeout and attempts.
pub(crate) fn builder(cfg: &Dns) -> std::io::Result<ResolverBuilder<TokioRuntimeProvider>> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(std::io::Error::other)?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|sa| {
                let mut udp = ConnectionConfig::udp();
                udp.port = sa.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = sa.port();
                NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout;
    opts.attempts = cfg.attempts;
    opts.cache_size = cfg.cache_entries;
    Ok(builder)
}

impl Resolver {
    pub fn new(cfg: &Dns) -> std::io::Result<Resolver> {
        Ok(Resolver { inner: builder(cfg)?.build().map_err(std::io::Error::other)? })
    }

    pub fn inner(&self) -> &TokioResolver {
        &self.inner
    }

    /// Hosts to try for `domain`, best first (equal preferences shuffled). An error is the
    /// outcome for every recipient of the domain.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, RcptOutcome> {
        mx_hosts(&self.inner, domain).await.map(|(hosts, _)| hosts)
    }

    /// Addresses of `host` (an IP, `[IP]` literal or name) with `port`.
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RcptOutcome> {
        addresses(&self.inner, host, port).await.map(|(addrs, _)| addrs)
    }
}

/// Whether every record of an answer (signatures aside) was validated from a trust anchor
/// (only a validating resolver says so).
pub(crate) fn secure(records: &[Record]) -> bool {
    let mut data = records.iter().filter(|r| r.record_type() != RecordType::RRSIG).peekable();
    data.peek().is_some() && data.all(|r| r.proof == Proof::Secure)
}

/// `domain`'s MX hosts (see `Resolver::mx_hosts`) and whether the answer was DNSSEC-secure
/// (an implicit MX counts as secure here: the host's own address answer decides).
pub(crate) async fn mx_hosts(r: &TokioResolver, domain: &str) -> Result<(Vec<String>, bool), RcptOutcome> {
    if domain.starts_with('[') {
        // An address literal: deliver straight to it.
        return Ok((vec![domain.to_string()], false));
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    match r.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let secure = secure(lookup.answers());
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_string())),
                    _ => None,
                })
                .collect();
            if mx.len() == 1 && mx[0].1.is_empty() {
                return Err(RcptOutcome::new(
                    Status::Failed,
                    Reply::new(
                        556,
                        Enhanced(5, 1, 10),
                        "recipient domain publishes a null MX (RFC 7505): it accepts no mail",
                    ),
                    None,
                ));
            }
            mx.retain(|(_, h)| !h.is_empty());
            if mx.is_empty() {
                return Ok((vec![domain.to_string()], true));
            }
            mx.shuffle(&mut rand::rng());
            mx.sort_by_key(|(p, _)| *p);
            Ok((mx.into_iter().map(|(_, h)| h).collect(), secure))
        }
        Err(e) if e.is_nx_domain() => Err(RcptOutcome::new(
            Status::Failed,
            Reply::new(550, Enhanced(5, 1, 2), format!("recipient domain {domain} does not exist")),
            None,
        )),
        Err(e) if e.is_no_records_found() => Ok((vec![domain.to_string()], true)), // implicit MX
        Err(e) => Err(RcptOutcome::new(
            Status::Deferred,
            Reply::new(451, Enhanced(4, 4, 3), format!("MX lookup for {domain} failed: {e}")),
            None,
        )),
    }
}

/// Addresses of `host` with `port`, and whether the answer was DNSSEC-secure.
pub(crate) async fn addresses(
    r: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, bool), RcptOutcome> {
    let lit = host.trim_start_matches('[').trim_end_matches(']');
    let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
    if let Ok(ip) = lit.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], false));
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    match r.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => {
            let v: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            if v.is_empty() {
                Err(RcptOutcome::new(
                    Status::Deferred,
                    Reply::new(451, Enhanced(4, 4, 4), format!("no address for {host}")),
                    None,
                ))
            } else {
                Ok((v, secure(ips.as_lookup().answers())))
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(RcptOutcome::new(
            Status::Deferred,
            Reply::new(451, Enhanced(4, 4, 4), format!("host {host} has no address")),
            None,
        )),
        Err(e) => Err(RcptOutcome::new(
            Status::Deferred,
            Reply::new(451, Enhanced(4, 4, 3), format!("address lookup for {host} failed: {e}")),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resolver's answer cache is the size `dns.cache_entries` says (hickory's default,
    /// 8 192 answers of up to ~0.8 MiB parsed each, is not what the gateway runs with), and
    /// so is DANE's validating one.
    #[tokio::test]
    async fn the_answer_cache_is_sized_by_the_config() {
        let mut cfg = Dns { nameservers: vec!["127.0.0.1:53".parse().unwrap()], ..Dns::default() };
        assert_eq!(Resolver::new(&cfg).unwrap().inner().options().cache_size, 256);
        cfg.cache_entries = 17;
        assert_eq!(Resolver::new(&cfg).unwrap().inner().options().cache_size, 17);
        assert_eq!(crate::dane::Dane::new(&cfg).unwrap().resolver_options().cache_size, 17);
    }
}
