//! The evaluator's pure parts: RFC 7208 §7.4's macro examples and record syntax. The whole
//! check runs through the gateway against the RFC 7208 suite (tests/tests/spf_suite.rs).

use super::macros::{Context, Facts, MacroString};
use super::record::{self, Mechanism};

fn expand(spec: &str, ip: &str) -> String {
    let f = Facts {
        local: "strong-bad",
        sender_domain: "email.example.com",
        domain: "email.example.com",
        ip: ip.parse().unwrap(),
        helo: "mx.example.org",
        validated: None,
        receiver: "mx.gateway.test",
    };
    MacroString::parse(spec).unwrap().expand(&f, Context::Explanation).unwrap()
}

#[test]
fn rfc7208_macro_examples() {
    let v4 = "192.0.2.3";
    for (spec, want) in [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%%%_%-", "% %20"),
        ("%{L}", "strong-bad"),
        ("%{S}", "strong-bad%40email.example.com"),
    ] {
        assert_eq!(expand(spec, v4), want, "{spec}");
    }
    assert_eq!(
        expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01"),
        "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"
    );
}

#[test]
fn macro_syntax_errors_and_explanation_only_letters() {
    for bad in ["%", "%x", "%{", "%{x}", "%{d0}", "%{d2", "%{d;}"] {
        assert!(MacroString::parse(bad).is_none(), "{bad}");
    }
    assert!(MacroString::parse("%{c}").is_some());
    assert!(MacroString::parse_spec("%{c}.example.com").is_none(), "c, r and t are for explanations only");
    assert!(MacroString::parse_spec("%{d}.example.com").is_some());
}

#[test]
fn record_syntax() {
    let ok = |r: &str| record::parse(r.as_bytes()).is_some();
    assert!(ok("v=spf1"));
    assert!(ok("v=spf1 ip4:192.0.2.0/24 a mx/24//64 ptr include:_spf.example.com ?all"));
    assert!(ok("v=spf1 a:foo:bar/baz.example.com"), "a domain-spec may hold ':' and '/'");
    assert!(ok("v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all"), "unknown modifiers are ignored");
    for bad in [
        "v=spf1 ip4:1.2.3.4/33",
        "v=spf1 ip4:1.2.3",
        "v=spf1 ip4:01.2.3.4",
        "v=spf1 ip6:::1/129",
        "v=spf1 a:museum",
        "v=spf1 a:111.222.33.444",
        "v=spf1 -all:foobar",
        "v=spf1 include:",
        "v=spf1 redirect=a.example.com redirect=b.example.com",
        "v=spf1 exp=a.example.com exp=b.example.com",
        "v=spf1 frobnicate",
        "v=spf1 a:\u{ef}garbage.example.net",
        "v=spf1 mx/0//",
    ] {
        assert!(!ok(bad), "{bad}");
    }
    let r = record::parse(b"v=spf1 mx:example.com/24//64 -all").unwrap();
    assert!(matches!(r.directives[0].mechanism, Mechanism::Mx(Some(_), 24, 64)));
    assert!(record::is_spf(b"V=SPF1 -all") && record::is_spf(b"v=spf1") && !record::is_spf(b"v=spf10"));
}

#[test]
fn only_records_of_a_sane_length_are_kept_parsed() {
    let cache = super::RecordCache::default();
    let short = b"v=spf1 ip4:192.0.2.0/24 -all".to_vec();
    let long = format!("v=spf1 {}-all", "ip4:192.0.2.1 ".repeat(200)).into_bytes();
    assert!(long.len() > super::CACHED_RECORD_OCTETS);
    for _ in 0..3 {
        assert!(cache.parse(&short).is_some());
        assert!(cache.parse(&long).is_some(), "a long record still parses, every time");
    }
    assert_eq!(cache.parsed(), 1, "the long record is not kept");
    // A record of a sender's making, different every time, never grows the cache past its
    // count either.
    for i in 0..(super::CACHED_RECORDS + 10) {
        cache.parse(format!("v=spf1 ip4:10.{}.{}.0/24 -all", i / 256, i % 256).as_bytes());
        assert!(cache.parsed() <= super::CACHED_RECORDS);
    }
}
