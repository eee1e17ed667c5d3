//! The DKIM keys a message's signatures and ARC sets name, fetched by us before mail-auth asks
//! for them, so that what the cache keeps of a key is known and bounded: mail-auth keeps a key
//! as published, and the names come from the message (`s=`, `d=`), so a sender could point
//! every signature at a fresh name whose TXT answer is 64 KiB. A key record larger than
//! [`KEY_RECORD_OCTETS`] is refused here (a `permerror` naming its size) and kept as that
//! refusal; the others are parsed as mail-auth would and charged their size. An RSA key over
//! [`RSA_KEY_BITS`] is refused too: what a verification costs grows with the key's size, and
//! the signer — anyone — chooses it.
//!
//! mail-auth is then given what was decided here for each name ([`MessageKeys`]), ahead of the
//! shared cache: a key evicted in between, or a look-up that failed here and could succeed
//! when mail-auth asked again (a server can answer the second query with another record), is
//! never fetched by mail-auth itself, unchecked.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use mail_auth::common::crypto::CryptoError;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::{AuthenticatedMessage, ResolverCache, Txt};

use crate::TxtCache;

/// The largest key record taken, in octets (every TXT string of the name together): an
/// 8192-bit RSA key — the largest mail-auth verifies — makes a record of ~1 450.
pub const KEY_RECORD_OCTETS: usize = 4096;

/// The largest RSA key verified, in bits. RFC 8301 §3.2: verifiers must take keys of 1024 to
/// 4096 bits and may take larger ones. A verification with an 8192-bit key costs several
/// times one with a 4096-bit key (measured through the gateway: a 50-set ARC chain took 15 ms
/// of CPU with 4096-bit keys, 40 ms with 8192-bit ones), and almost nobody publishes one.
pub const RSA_KEY_BITS: usize = 4096;

/// Keys fetched for one message at most: every key mail-auth will verify with — the DKIM
/// signatures it looks at and an ARC chain it validates (each set's seal and message
/// signature) — so none is looked up by mail-auth itself.
const KEYS_PER_MESSAGE: usize = crate::session::DKIM_SIGNATURES + 2 * crate::session::ARC_SETS;

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

/// The records of one message as [`prefetch`] (or [`crate::policies::prefetch`]) decided
/// them, read by mail-auth before the shared cache (which takes whatever mail-auth inserts).
pub(crate) struct MessageKeys<'a> {
    shared: &'a TxtCache,
    /// By the name mail-auth looks up (see [`cache_key`]): a parsed key, or why there is none.
    decided: Vec<(Box<str>, Txt)>,
}

impl<'a> MessageKeys<'a> {
    pub(crate) fn new(shared: &'a TxtCache, decided: Vec<(Box<str>, Txt)>) -> MessageKeys<'a> {
        MessageKeys { shared, decided }
    }
}

impl ResolverCache<Box<str>, Txt> for MessageKeys<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.decided.iter().find(|(n, _)| <Box<str> as Borrow<Q>>::borrow(n) == name) {
            Some((_, v)) => Some(v.clone()),
            None => self.shared.get(name),
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        ResolverCache::insert(self.shared, key, value, valid_until)
    }
}

/// Fetches the keys `msg`'s DKIM signatures name, and its ARC sets' when `arc` (the chain will
/// be validated), that `cache` does not hold.
pub(crate) async fn prefetch<'a>(
    resolver: &TokioResolver,
    cache: &'a TxtCache,
    msg: &AuthenticatedMessage<'_>,
    arc: bool,
) -> MessageKeys<'a> {
    let names = msg.dkim_headers.iter().map(|h| h.header.domain_key());
    let arc_names = msg.ams_headers.iter().map(|h| h.header.domain_key());
    let arc_names = arc_names.chain(msg.as_headers.iter().map(|h| h.header.domain_key()));
    let names = names.chain(arc_names.take(if arc { usize::MAX } else { 0 }));
    let mut distinct: Vec<String> = Vec::new();
    for name in names.map(|n| cache_key(&n)) {
        if distinct.len() == KEYS_PER_MESSAGE {
            break;
        }
        if !distinct.contains(&name) {
            distinct.push(name);
        }
    }
    // All at once: a message signed by several domains waits for the slowest look-up, not for
    // their sum.
    let values = futures_util::future::join_all(distinct.iter().map(|name| async move {
        match cache.get(name.as_str()) {
            Some(v) => v,
            None => fetch(resolver, cache, name).await,
        }
    }))
    .await;
    MessageKeys { shared: cache, decided: distinct.into_iter().map(String::into_boxed_str).zip(values).collect() }
}

/// Looks `name`'s key record up and keeps it parsed (or refused); returns what was decided. A
/// failed look-up is not kept (the resolver keeps what it may of it).
async fn fetch(resolver: &TokioResolver, cache: &TxtCache, name: &str) -> Txt {
    let lookup = match Name::from_str_relaxed(name) {
        Ok(qname) => resolver.txt_lookup(qname).await,
        Err(e) => return Txt::Error(e.into()),
    };
    let lookup = match lookup {
        Ok(l) => l,
        Err(e) => return Txt::Error(e.into()),
    };
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
    let refused = |why: String| Txt::Error(mail_auth::Error::Crypto(CryptoError::Library(why)));
    let value = if octets > KEY_RECORD_OCTETS {
        refused(format!("DKIM key record of {octets} octets, more than the {KEY_RECORD_OCTETS} taken"))
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
            // An Ed25519 key reports no size (usize::MAX); an RSA key its modulus's.
            Ok(key) => match key.p.public_key_bits() {
                bits if bits > RSA_KEY_BITS && bits != usize::MAX => {
                    refused(format!("RSA key of {bits} bits, more than the {RSA_KEY_BITS} verified"))
                }
                _ => Txt::DomainKey(Arc::new(key)),
            },
            Err(e) => Txt::Error(e),
        }
    };
    let weight = octets.min(KEY_RECORD_OCTETS) + PARSED_KEY_OVERHEAD;
    cache.insert_weighing(name.into(), value.clone(), lookup.valid_until(), weight);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What prefetch decided for a name is what mail-auth gets, whatever the shared cache holds
    /// (a key mail-auth inserted, say); names prefetch did not decide come from the shared
    /// cache; what mail-auth inserts goes there.
    #[test]
    fn a_decided_key_comes_before_the_shared_cache() {
        let shared = TxtCache::new(16, 1 << 20);
        let key = DomainKey::parse(b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        ResolverCache::insert(&shared, "a._domainkey.x.test.".into(), Txt::DomainKey(Arc::new(key)), later);
        let refused = Txt::Error(mail_auth::Error::Crypto(CryptoError::Library("too big".into())));
        let keys = MessageKeys { shared: &shared, decided: vec![("a._domainkey.x.test.".into(), refused)] };
        assert!(matches!(keys.get("a._domainkey.x.test."), Some(Txt::Error(_))));
        assert!(keys.get("b._domainkey.x.test.").is_none());
        ResolverCache::insert(
            &keys,
            "b._domainkey.x.test.".into(),
            Txt::Error(mail_auth::Error::Io("x".into())),
            later,
        );
        assert!(matches!(shared.get("b._domainkey.x.test."), Some(Txt::Error(_))));
        assert!(matches!(keys.get("b._domainkey.x.test."), Some(Txt::Error(_))));
        assert!(matches!(shared.get("a._domainkey.x.test."), Some(Txt::DomainKey(_))));
    }

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
