//! The DKIM keys a message's signatures and ARC sets name, fetched by us before mail-auth asks
//! for them, so that what the cache keeps of a key is known and bounded: mail-auth keeps a key
//! as published, and the names come from the message (`s=`, `d=`), so a sender could point
//! every signature at a fresh name whose TXT answer is 64 KiB. A key record larger than
//! [`KEY_RECORD_OCTETS`] is refused here (a `permerror` naming its size) and kept as that
//! refusal; the others are parsed as mail-auth would and charged their size.

use std::sync::Arc;

use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use mail_auth::common::crypto::CryptoError;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::{AuthenticatedMessage, Txt};

use crate::TxtCache;

/// The largest key record taken, in octets (every TXT string of the name together): an
/// 8192-bit RSA key — the largest mail-auth verifies — makes a record of ~1 450.
pub const KEY_RECORD_OCTETS: usize = 4096;

/// Keys fetched for one message at most (its ten DKIM signatures' and an ARC chain's first
/// few); mail-auth looks further ones up itself (and the cache charges those as the largest
/// a record can be).
const KEYS_PER_MESSAGE: usize = 16;

/// What a parsed key costs besides its record's octets (the key's box, the `Arc`).
const PARSED_KEY_OVERHEAD: usize = 64;

/// The cache key mail-auth uses for `name` (lower case, with the root's dot).
fn cache_key(name: &str) -> String {
    let mut key = name.to_lowercase();
    if !key.ends_with('.') {
        key.push('.');
    }
    key
}

/// Fetches the keys `msg`'s DKIM signatures and ARC sets name that `cache` does not hold.
pub(crate) async fn prefetch(resolver: &TokioResolver, cache: &TxtCache, msg: &AuthenticatedMessage<'_>) {
    let names = msg.dkim_headers.iter().map(|h| h.header.domain_key());
    let names = names
        .chain(msg.ams_headers.iter().map(|h| h.header.domain_key()))
        .chain(msg.as_headers.iter().map(|h| h.header.domain_key()));
    let mut seen: Vec<String> = Vec::new();
    for name in names.map(|n| cache_key(&n)) {
        if seen.len() == KEYS_PER_MESSAGE {
            break;
        }
        if seen.contains(&name) {
            continue;
        }
        if cache.get(name.as_str()).is_none() {
            fetch(resolver, cache, &name).await;
        }
        seen.push(name);
    }
}

/// Looks `name`'s key record up and keeps it parsed (or refused). A failed look-up keeps
/// nothing: mail-auth asks again and gets the same answer from the resolver's cache.
async fn fetch(resolver: &TokioResolver, cache: &TxtCache, name: &str) {
    let Ok(qname) = Name::from_str_relaxed(name) else { return };
    let Ok(lookup) = resolver.txt_lookup(qname).await else { return };
    // Each record's strings joined, as mail-auth does.
    let records: Vec<Vec<u8>> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) if !t.txt_data.is_empty() => {
                Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect())
            }
            _ => None,
        })
        .collect();
    let octets: usize = records.iter().map(Vec::len).sum();
    let value = if octets > KEY_RECORD_OCTETS {
        let why = format!("DKIM key record of {octets} octets, more than the {KEY_RECORD_OCTETS} taken");
        Txt::Error(mail_auth::Error::Crypto(CryptoError::Library(why)))
    } else {
        // The first record that parses as a key, else the last one's error (mail-auth's rule).
        let mut parsed = Err(mail_auth::Error::Dns(mail_auth::DnsError::InvalidRecordType));
        for r in &records {
            parsed = DomainKey::parse(r);
            if parsed.is_ok() {
                break;
            }
        }
        match parsed {
            Ok(key) => Txt::DomainKey(Arc::new(key)),
            Err(e) => Txt::Error(e),
        }
    };
    let weight = octets.min(KEY_RECORD_OCTETS) + PARSED_KEY_OVERHEAD;
    cache.insert_weighing(name.into(), value, lookup.valid_until(), weight);
}

#[cfg(test)]
mod tests {
    use super::cache_key;

    #[test]
    fn names_are_kept_as_mail_auth_looks_them_up() {
        for (name, key) in [
            ("s1._domainkey.example.com.", "s1._domainkey.example.com."),
            ("S1._DomainKey.Example.COM.", "s1._domainkey.example.com."),
            ("s1._domainkey.example.com", "s1._domainkey.example.com."),
            ("Sél._domainkey.exämple.com", "sél._domainkey.exämple.com."),
        ] {
            assert_eq!(cache_key(name), key);
        }
    }
}
