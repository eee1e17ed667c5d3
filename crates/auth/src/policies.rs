//! The DMARC policy records a message's From domain leads to, fetched before mail-auth walks
//! the DNS tree for them (RFC 9989 §4.10.2), so that the names that have none are kept as well:
//! mail-auth keeps what it finds, not what is missing, and every message from `example.com`
//! also asks for `_dmarc.com.` (from `news.example.com`, for `_dmarc.news.example.com.` too).
//! Those went to the resolver each time — its cache holds 256 answers, which a busy gateway's
//! other look-ups push out, and a hit there costs ~7 000 instructions. Here a name without a
//! record is kept in the same byte-bounded cache as the records, until the negative TTL the
//! zone's SOA gave it ends (RFC 2308); an answer without an SOA, or a failed look-up, is
//! decided for this message only, so that mail-auth does not ask (and wait) again.
//!
//! The names and their order are mail-auth's own ([`walk`]); a name it asks that is not
//! decided here is looked up by mail-auth as before, so a difference costs a look-up, never a
//! verdict. Records are parsed as mail-auth parses them (the first TXT record that parses as
//! a policy, else the last one's error) and kept as it keeps them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Dmarc, Psd};
use mail_auth::Txt;

use crate::TxtCache;

/// The names mail-auth's tree walk asks for `domain` (an A-label domain, lower case), in its
/// order: the domain itself, then — from a name of eight labels or more — the last seven
/// labels, then one label fewer at a time down to the top-level domain; each as
/// `_dmarc.<name>.`.
pub(crate) fn walk(domain: &str) -> Vec<String> {
    let total = domain.split('.').filter(|l| !l.is_empty()).count();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}.", drop_leftmost_labels(domain, total - count)));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

fn drop_leftmost_labels(domain: &str, n: usize) -> &str {
    let mut suffix = domain;
    for _ in 0..n {
        match suffix.split_once('.') {
            Some((_, rest)) => suffix = rest,
            None => return "",
        }
    }
    suffix
}

/// Whether the walk stops at this record (mail-auth: a record with `psd=y` or `psd=n`).
fn stops(v: &Txt) -> bool {
    matches!(v, Txt::Dmarc(d) if matches!(d.psd, Psd::Yes | Psd::No))
}

/// Looks up, in the walk's order, the names of `domain`'s walk that `cache` does not hold,
/// until a record that ends the walk. Records, parse errors and cacheable absences go into
/// `cache`; returns what is decided for this message only (failed look-ups, absences without
/// a TTL), for [`crate::keys::MessageKeys`].
pub(crate) async fn prefetch(resolver: &TokioResolver, cache: &TxtCache, domain: &str) -> Vec<(Box<str>, Txt)> {
    let mut decided = Vec::new();
    for name in walk(domain) {
        let value = match cache.get(name.as_str()) {
            Some(v) => v,
            None => match fetch(resolver, cache, &name).await {
                Fetched::Kept(v) => v,
                Fetched::ThisMessage(v) => {
                    decided.push((name.into_boxed_str(), v));
                    continue;
                }
            },
        };
        if stops(&value) {
            break;
        }
    }
    decided
}

enum Fetched {
    /// Put in the shared cache (also returned).
    Kept(Txt),
    /// Not kept beyond this message.
    ThisMessage(Txt),
}

async fn fetch(resolver: &TokioResolver, cache: &TxtCache, name: &str) -> Fetched {
    let lookup = match Name::from_str_relaxed(name) {
        Ok(qname) => resolver.txt_lookup(qname).await,
        Err(e) => return Fetched::ThisMessage(Txt::Error(e.into())),
    };
    match lookup {
        Ok(lookup) => {
            // Each record's strings joined; the first that parses, else the last error.
            let mut parsed = Err(mail_auth::Error::Dns(mail_auth::DnsError::InvalidRecordType));
            for r in lookup.answers() {
                let RData::TXT(t) = &r.data else { continue };
                if t.txt_data.is_empty() {
                    continue;
                }
                let record: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                parsed = Dmarc::parse(&record);
                if parsed.is_ok() {
                    break;
                }
            }
            let value = match parsed {
                Ok(d) => Txt::Dmarc(Arc::new(d)),
                Err(e) => Txt::Error(e),
            };
            cache.insert(name.into(), value.clone(), lookup.valid_until());
            Fetched::Kept(value)
        }
        Err(e) => {
            let ttl = match &e {
                NetError::Dns(DnsError::NoRecordsFound(NoRecords { negative_ttl: Some(ttl), .. })) => *ttl,
                _ => 0,
            };
            let value = Txt::Error(e.into());
            if ttl == 0 {
                return Fetched::ThisMessage(value);
            }
            cache.insert(name.into(), value.clone(), Instant::now() + Duration::from_secs(ttl.into()));
            Fetched::Kept(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_asks_what_mail_auth_asks() {
        assert_eq!(walk("example.com"), ["_dmarc.example.com.", "_dmarc.com."]);
        assert_eq!(
            walk("a.b.example.com"),
            ["_dmarc.a.b.example.com.", "_dmarc.b.example.com.", "_dmarc.example.com.", "_dmarc.com."]
        );
        assert!(walk("localhost").is_empty() && walk("").is_empty() && walk("com.").is_empty());
        // Eight labels or more: the name, then its last seven labels, then one fewer at a time.
        let w = walk("a.b.c.d.e.f.g.h.i");
        assert_eq!(w.len(), 8);
        assert_eq!(
            (w[0].as_str(), w[1].as_str(), w[7].as_str()),
            ("_dmarc.a.b.c.d.e.f.g.h.i.", "_dmarc.c.d.e.f.g.h.i.", "_dmarc.i.")
        );
    }

    #[test]
    fn a_record_with_psd_ends_the_walk() {
        let rec = |r: &str| Txt::Dmarc(Arc::new(Dmarc::parse(r.as_bytes()).unwrap()));
        assert!(stops(&rec("v=DMARC1; p=reject; psd=n")) && stops(&rec("v=DMARC1; p=none; psd=y")));
        assert!(!stops(&rec("v=DMARC1; p=reject")));
        assert!(!stops(&Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::InvalidRecordType))));
    }
}
