//! A budget for message content held in memory. Every session's receive buffer, and every
//! message the queue keeps in memory for its first delivery, holds a [`Reservation`] of the
//! octets it occupies; when the budget is spent, new content is refused (`452 4.3.1`) or left
//! on disk, instead of the process growing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget of one gateway.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicUsize::new(0) })
    }

    /// Octets reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves `n` octets, if the budget has them.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        self.take(n).then(|| Reservation { budget: self.clone(), n })
    }

    /// Counts `n` octets even past the limit: for content the gateway itself must keep (a
    /// DSN whose failure is already decided), so that the count stays true.
    pub fn force(self: &Arc<Self>, n: usize) -> Reservation {
        self.used.fetch_add(n, Ordering::AcqRel);
        Reservation { budget: self.clone(), n }
    }
}

/// Octets of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    n: usize,
}

impl Reservation {
    /// Octets held.
    pub fn size(&self) -> usize {
        self.n
    }

    /// Grows the reservation to `n` octets (never shrinks it); false when the budget does not
    /// have them.
    pub fn grow_to(&mut self, n: usize) -> bool {
        if n <= self.n {
            return true;
        }
        if self.budget.take(n - self.n) {
            self.n = n;
            true
        } else {
            false
        }
    }

    /// Grows to `n` octets even past the limit: for memory already in use that must be
    /// counted (new content is refused until it is given back).
    pub fn force_to(&mut self, n: usize) {
        if n > self.n {
            self.budget.used.fetch_add(n - self.n, Ordering::AcqRel);
            self.n = n;
        }
    }

    /// Shrinks the reservation to `n` octets.
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.n {
            self.budget.used.fetch_sub(self.n - n, Ordering::AcqRel);
            self.n = n;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_grow_and_give_back() {
        let b = Budget::new(100);
        let mut a = b.reserve(60).unwrap();
        assert!(b.reserve(50).is_none());
        assert!(!a.grow_to(120));
        assert!(a.grow_to(90));
        assert_eq!(b.used(), 90);
        a.force_to(150);
        assert_eq!(b.used(), 150);
        assert!(b.reserve(1).is_none());
        a.shrink_to(10);
        let c = b.reserve(90).unwrap();
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
