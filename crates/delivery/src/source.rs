//! Source address pools: which local address, with its EHLO name, a new outbound connection
//! leaves from. A weighted rotation per pool; an address that cannot be bound is skipped.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use mailgate_config::SourcePool;

/// Most turns one source may take in a pool's rotation (bounds the order list).
const MAX_WEIGHT: u32 = 100;

pub struct Rotation {
    pub name: String,
    /// (address, EHLO name) of each source.
    sources: Vec<(IpAddr, Option<String>)>,
    /// Source indexes, each repeated by its weight, interleaved.
    order: Vec<usize>,
    next: AtomicUsize,
}

impl Rotation {
    pub fn new(p: &SourcePool) -> Rotation {
        let sources: Vec<(IpAddr, Option<String>)> = p.sources.iter().map(|s| (s.address, s.helo.clone())).collect();
        // Interleaved (a b a b a) rather than grouped (a a a b b): load spreads within a burst.
        let weights: Vec<u32> = p.sources.iter().map(|s| s.weight.clamp(1, MAX_WEIGHT)).collect();
        let mut order = vec![];
        for round in 0..weights.iter().copied().max().unwrap_or(0) {
            order.extend((0..weights.len()).filter(|i| weights[*i] > round));
        }
        Rotation { name: p.name.clone(), sources, order, next: AtomicUsize::new(0) }
    }

    /// The sources to try for a connection to `to`, in order: the one whose turn it is, then
    /// the others, all of `to`'s address family.
    pub fn candidates(&self, to: IpAddr) -> Vec<(IpAddr, Option<String>)> {
        if self.order.is_empty() {
            return vec![];
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.order.len();
        let mut out: Vec<(IpAddr, Option<String>)> = vec![];
        for k in 0..self.order.len() {
            let s = &self.sources[self.order[(start + k) % self.order.len()]];
            if s.0.is_ipv4() == to.is_ipv4() && !out.iter().any(|o| o.0 == s.0) {
                out.push(s.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_config::Source;

    #[test]
    fn weighted_rotation_by_family() {
        let src = |a: &str, w| Source { address: a.parse().unwrap(), helo: Some(format!("h-{a}")), weight: w };
        let p = SourcePool { name: "p".into(), sources: vec![src("10.0.0.1", 2), src("10.0.0.2", 1)] };
        let r = Rotation::new(&p);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let firsts: Vec<String> = (0..6).map(|_| r.candidates(v4)[0].0.to_string()).collect();
        assert_eq!(firsts, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"]);
        assert_eq!(r.candidates(v4).len(), 2, "the others follow as fallbacks");
        assert!(r.candidates("2001:db8::1".parse().unwrap()).is_empty(), "no IPv6 source");
        let p = SourcePool { name: "p".into(), sources: vec![src("10.0.0.1", 1), src("::2", 1)] };
        let r = Rotation::new(&p);
        assert_eq!(r.candidates("2001:db8::1".parse().unwrap()), [("::2".parse().unwrap(), Some("h-::2".into()))]);
    }
}
