//! The look-ups SPF makes, over hickory, with the two failures SPF tells apart: a void answer
//! (NXDOMAIN or no records, §4.6.4) and a DNS error (`temperror`).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

pub(crate) enum Failed {
    /// NXDOMAIN or NODATA.
    Void,
    /// SERVFAIL, a time-out, or a name that cannot be asked for.
    Error,
}

fn failed(e: hickory_resolver::net::NetError) -> Failed {
    if e.is_nx_domain() || e.is_no_records_found() {
        Failed::Void
    } else {
        Failed::Error
    }
}

fn fqdn(name: &str) -> Result<hickory_resolver::proto::rr::Name, Failed> {
    let name = name.trim_end_matches('.');
    // Names that are not valid DNS names (empty or over-long labels) have no records.
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(Failed::Void);
    }
    // Any octets but the dot are allowed in a label (a domain-spec may hold ':' or '/').
    let labels = name.split('.').map(|l| hickory_resolver::proto::rr::Label::from_raw_bytes(l.as_bytes()));
    let labels: Result<Vec<_>, _> = labels.collect();
    let mut n =
        hickory_resolver::proto::rr::Name::from_labels(labels.map_err(|_| Failed::Void)?).map_err(|_| Failed::Void)?;
    n.set_fqdn(true);
    Ok(n)
}

/// A name as its labels' octets joined by dots (no escaping, no trailing dot): what SPF
/// compares and looks up again.
fn text(n: &hickory_resolver::proto::rr::Name) -> String {
    n.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect::<Vec<_>>().join(".")
}

/// The TXT records of `name`, from `cache` while their TTL lasts (void answers and errors are
/// not kept: the resolver keeps those, and the void-lookup count sees each; nor are answers
/// larger than [`super::CACHED_ANSWER_OCTETS`]).
pub(crate) async fn txt(r: &TokioResolver, cache: &super::RecordCache, name: &str) -> Result<Arc<[Vec<u8>]>, Failed> {
    if let Some(answer) = cache.txt.get(name) {
        return Ok(answer);
    }
    let l = r.txt_lookup(fqdn(name)?).await.map_err(failed)?;
    // A record's strings are joined without spaces (§3.3).
    let answer: Arc<[Vec<u8>]> = l
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
            _ => None,
        })
        .collect();
    if answer.iter().map(Vec::len).sum::<usize>() <= super::CACHED_ANSWER_OCTETS {
        cache.txt.insert(name.into(), answer.clone(), l.valid_until());
    }
    Ok(answer)
}

/// The A records for an IPv4 client, the AAAA records for an IPv6 one.
pub(crate) async fn addresses(r: &TokioResolver, name: &str, v4: bool) -> Result<Vec<IpAddr>, Failed> {
    let name = fqdn(name)?;
    let out: Vec<IpAddr> = if v4 {
        let l = r.ipv4_lookup(name).await.map_err(failed)?;
        l.answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect()
    } else {
        let l = r.ipv6_lookup(name).await.map_err(failed)?;
        l.answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    };
    if out.is_empty() {
        return Err(Failed::Void);
    }
    Ok(out)
}

pub(crate) async fn mx(r: &TokioResolver, name: &str) -> Result<Vec<String>, Failed> {
    let l = r.mx_lookup(fqdn(name)?).await.map_err(failed)?;
    let mut v: Vec<(u16, String)> = l
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::MX(m) => Some((m.preference, text(&m.exchange))),
            _ => None,
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, n)| n).collect())
}

pub(crate) async fn ptr(r: &TokioResolver, ip: IpAddr) -> Result<Vec<String>, Failed> {
    let l = r.reverse_lookup(hickory_resolver::proto::rr::Name::from(ip)).await.map_err(failed)?;
    Ok(l.answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::PTR(p) => Some(text(&p.0)),
            _ => None,
        })
        .collect())
}
