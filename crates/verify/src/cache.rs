//! The callout cache: what a backend said about an address, for a while. Bounded: when full,
//! expired answers go first, then the oldest.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub struct Cache {
    answers: HashMap<String, (bool, Instant)>,
    /// Addresses in insertion order, to find the oldest without a scan.
    order: VecDeque<String>,
    max: usize,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache { answers: HashMap::new(), order: VecDeque::new(), max }
    }

    /// The cached answer (`true`: exists) if it has not expired.
    pub fn get(&mut self, address: &str, now: Instant) -> Option<bool> {
        match self.answers.get(address) {
            Some((exists, until)) if *until > now => Some(*exists),
            Some(_) => {
                self.answers.remove(address);
                None
            }
            None => None,
        }
    }

    pub fn put(&mut self, address: String, exists: bool, ttl: Duration, now: Instant) {
        if self.max == 0 || ttl.is_zero() {
            return;
        }
        while self.answers.len() >= self.max {
            let Some(old) = self.order.pop_front() else { break };
            self.answers.remove(&old);
        }
        if self.answers.insert(address.clone(), (exists, now + ttl)).is_none() {
            self.order.push_back(address);
        }
        // `order` may hold addresses already removed (expired on `get`): keep it from growing
        // past twice the live entries.
        if self.order.len() > 2 * self.max {
            let answers = &self.answers;
            self.order.retain(|a| answers.contains_key(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_oldest_go_first() {
        let now = Instant::now();
        let mut c = Cache::new(2);
        c.put("a".into(), true, Duration::from_secs(10), now);
        c.put("b".into(), false, Duration::from_secs(1), now);
        assert_eq!(c.get("a", now), Some(true));
        assert_eq!(c.get("b", now), Some(false));
        assert_eq!(c.get("b", now + Duration::from_secs(2)), None, "expired");
        c.put("c".into(), true, Duration::from_secs(10), now);
        c.put("d".into(), true, Duration::from_secs(10), now);
        assert_eq!(c.get("a", now), None, "the oldest went");
        assert_eq!(c.get("c", now), Some(true));
        assert_eq!(c.get("d", now), Some(true));
        for i in 0..100 {
            c.put(format!("x{i}"), true, Duration::from_secs(10), now);
        }
        assert!(c.answers.len() <= 2 && c.order.len() <= 4);
    }
}
