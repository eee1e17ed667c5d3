//! `dns`: look-ups through the gateway's resolver, for plugins granted `dns`. Waiting for an
//! answer does not count against the plugin's CPU budget.

use hickory_resolver::proto::rr::RData;
use std::sync::Arc;

use hickory_resolver::TokioResolver;

use super::{Caller, Context, Waited};
use crate::bindings::mailgate::plugin::dns;

/// What a plugin may resolve with.
enum Access {
    /// Not granted `dns`.
    Denied,
    /// Granted, but the gateway runs without a resolver (`mailgate plugin test`, say).
    NoResolver,
    Granted(Arc<TokioResolver>),
}

pub struct DnsState {
    access: Access,
    caller: Caller,
    /// Time spent waiting for answers, given back to the CPU budget.
    pub(super) waited: Waited,
}

impl DnsState {
    /// The grant check: the resolver is there only for a plugin granted `dns`.
    pub(super) fn new(cx: &Context<'_>) -> DnsState {
        let access = match (&cx.services.resolver, cx.meta.dns) {
            (_, false) => Access::Denied,
            (None, true) => Access::NoResolver,
            (Some(r), true) => Access::Granted(r.clone()),
        };
        DnsState { access, caller: cx.caller(), waited: Waited::default() }
    }

    fn resolver(&self) -> Result<Arc<TokioResolver>, dns::DnsError> {
        match &self.access {
            Access::Granted(r) => Ok(r.clone()),
            Access::NoResolver => Err(dns::DnsError::Servfail("no resolver".into())),
            Access::Denied => {
                let Caller { plugin, sid } = &self.caller;
                tracing::debug!(%plugin, %sid, "dns denied (no grant)");
                Err(dns::DnsError::Denied)
            }
        }
    }
}

fn dns_error(e: hickory_resolver::net::NetError) -> dns::DnsError {
    if e.is_nx_domain() {
        dns::DnsError::Nxdomain
    } else if e.is_no_records_found() {
        // NODATA: the name exists without records of this type.
        dns::DnsError::Nxdomain
    } else if is_timeout(&e) {
        dns::DnsError::Timeout
    } else {
        dns::DnsError::Servfail(e.to_string())
    }
}

/// A look-up that ran out of time, by the error's kind (never by its text).
fn is_timeout(e: &hickory_resolver::net::NetError) -> bool {
    use hickory_resolver::net::NetError;
    match e {
        NetError::Timeout => true,
        NetError::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn texts(l: &hickory_resolver::lookup::Lookup, f: impl Fn(&RData) -> Option<String>) -> Vec<String> {
    l.answers().iter().filter_map(|r| f(&r.data)).collect()
}

impl dns::Host for DnsState {
    async fn txt(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited.time(r.txt_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::TXT(t) => {
                Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<String>())
            }
            _ => None,
        }))
    }
    async fn a(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited.time(r.ipv4_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        }))
    }
    async fn aaaa(&mut self, name: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited.time(r.ipv6_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        }))
    }
    async fn mx(&mut self, name: String) -> Result<Vec<(u16, String)>, dns::DnsError> {
        let r = self.resolver()?;
        let l = self.waited.time(r.mx_lookup(fqdn(&name))).await.map_err(dns_error)?;
        Ok(l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_string())),
                _ => None,
            })
            .collect())
    }
    async fn ptr(&mut self, ip: String) -> Result<Vec<String>, dns::DnsError> {
        let r = self.resolver()?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| dns::DnsError::Servfail("not an IP address".into()))?;
        let l =
            self.waited.time(r.reverse_lookup(hickory_resolver::proto::rr::Name::from(ip))).await.map_err(dns_error)?;
        Ok(texts(&l, |d| match d {
            RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_string()),
            _ => None,
        }))
    }
}
