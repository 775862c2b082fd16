//! `buffer_capacity`: the bytes of answers manifold holds in memory at once, across all
//! requests — upstream bodies being read or waiting to be merged, and answers waiting
//! for their client to take them.
//!
//! Each answer is limited on its own (`max_response_body`), but without a total, a
//! hundred concurrent 16 MiB answers cost 2 GB. With one, the process's memory for
//! answers is bounded: past it, a new upstream call fails at once (`OVERLOADED`, 503)
//! instead of growing memory, and a call whose body would pass it fails the same way.
//! Answers already in memory (a merged body, a cached one) are always charged, so the
//! count stays true, and they push new calls out rather than being dropped.
//!
//! One counter per gateway, kept across reloads (the limit is re-read). Charges are
//! released when dropped, whoever holds them last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
}

/// Bytes held against the budget, given back when the last clone is dropped.
#[derive(Clone)]
pub struct Charge(Arc<Held>);

struct Held {
    budget: Arc<Budget>,
    bytes: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Whether a new call may start: some of the budget is left.
    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A charge of nothing yet, to grow as a body arrives.
    pub fn start(self: &Arc<Self>) -> Charge {
        Charge(Arc::new(Held {
            budget: self.clone(),
            bytes: AtomicU64::new(0),
        }))
    }

    /// Charges bytes that are in memory already, whether or not they fit.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge(Arc::new(Held {
            budget: self.clone(),
            bytes: AtomicU64::new(bytes),
        }))
    }
}

impl Charge {
    /// Adds `bytes` if they fit in what is left; false (and nothing added) if not.
    pub fn grow(&self, bytes: u64) -> bool {
        let budget = &self.0.budget;
        let limit = budget.limit.load(Ordering::Relaxed);
        let before = budget.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit {
            budget.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_are_given_back_by_the_last_holder() {
        let b = Budget::new(100);
        let c = b.start();
        assert!(c.grow(60));
        assert!(!c.grow(50), "would pass the limit");
        assert_eq!(b.used(), 60);
        assert!(b.has_room());
        let shared = c.clone();
        drop(c);
        assert_eq!(b.used(), 60, "a clone still holds it");
        let forced = b.charge(70);
        assert_eq!(b.used(), 130, "answers in memory are always counted");
        assert!(!b.has_room());
        drop(shared);
        drop(forced);
        assert_eq!(b.used(), 0);
        b.set_limit(10);
        assert!(!b.start().grow(11));
    }
}
