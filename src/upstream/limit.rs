//! `max_concurrency`: a cap on calls in flight to one upstream, across all routes and
//! worker loops. Past it a call fails at once (`OVERLOADED`) instead of queueing, so a
//! slow upstream sheds load rather than piling up requests behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct InFlight {
    max: u32,
    count: Arc<AtomicU32>,
}

/// One call's place under the cap, given back when dropped.
pub struct Ticket(Arc<AtomicU32>);

impl InFlight {
    pub fn new(max: u32) -> Self {
        InFlight {
            max,
            count: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn try_acquire(&self) -> Option<Ticket> {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Ticket(self.count.clone()))
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn current(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let l = InFlight::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.current(), 2);
        drop(a);
        assert!(l.try_acquire().is_some());
    }
}
