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
//! An h2 connection multiplexes many requests, so one client could pin the whole capacity
//! with answers it never reads. Each connection therefore has a [`Share`] too
//! (`buffer_per_connection`): the answers of its requests count against both, and
//! past its share its new requests are refused before they cost anything.
//!
//! One counter per gateway, kept across reloads (the limit is re-read). Charges are
//! released when dropped, whoever holds them last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes of `buffer_capacity`: held now, and the limit.
pub struct Buffers {
    limit: AtomicU64,
    used: AtomicU64,
}

/// Bytes held against `buffer_capacity`, given back when the last clone is dropped.
#[derive(Clone)]
pub struct Charge(Arc<Held>);

struct Held {
    buffers: Arc<Buffers>,
    share: Option<Arc<Share>>,
    bytes: AtomicU64,
}

/// One connection's part of `buffer_capacity` (`buffer_per_connection`).
#[derive(Debug)]
pub struct Share {
    cap: u64,
    used: AtomicU64,
}

impl Share {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Share {
            cap,
            used: AtomicU64::new(0),
        })
    }

    /// Past its cap: the connection's new requests are refused.
    pub fn is_full(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.cap
    }

    /// Whether `bytes` more would take it past its cap.
    pub fn would_pass(&self, bytes: u64) -> bool {
        self.used.load(Ordering::Relaxed).saturating_add(bytes) > self.cap
    }
}

impl Buffers {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Buffers {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Whether a new call may start: some of the capacity is left.
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

    /// A charge of nothing yet, to grow as a body arrives; against `share` too, if any.
    pub fn start(self: &Arc<Self>, share: Option<&Arc<Share>>) -> Charge {
        Charge(Arc::new(Held {
            buffers: self.clone(),
            share: share.cloned(),
            bytes: AtomicU64::new(0),
        }))
    }

    /// Charges bytes that are in memory already, whether or not they fit.
    pub fn charge(self: &Arc<Self>, bytes: u64, share: Option<&Arc<Share>>) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        if let Some(s) = share {
            s.used.fetch_add(bytes, Ordering::Relaxed);
        }
        Charge(Arc::new(Held {
            buffers: self.clone(),
            share: share.cloned(),
            bytes: AtomicU64::new(bytes),
        }))
    }
}

impl Charge {
    /// Adds `bytes` if they fit in what is left of the capacity and of the share; false
    /// (and nothing added) if not.
    pub fn grow(&self, bytes: u64) -> bool {
        let held = &self.0;
        let buffers = &held.buffers;
        let limit = buffers.limit.load(Ordering::Relaxed);
        let before = buffers.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit {
            buffers.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        if let Some(share) = &held.share {
            let before = share.used.fetch_add(bytes, Ordering::Relaxed);
            if before.saturating_add(bytes) > share.cap {
                share.used.fetch_sub(bytes, Ordering::Relaxed);
                buffers.used.fetch_sub(bytes, Ordering::Relaxed);
                return false;
            }
        }
        held.bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Gives back what is held above `bytes` (the memory shrank).
    pub fn shrink_to(&self, bytes: u64) {
        let held = &self.0;
        let before = held.bytes.load(Ordering::Relaxed);
        let back = before.saturating_sub(bytes);
        held.bytes.fetch_sub(back, Ordering::Relaxed);
        held.buffers.used.fetch_sub(back, Ordering::Relaxed);
        if let Some(share) = &held.share {
            share.used.fetch_sub(back, Ordering::Relaxed);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        self.buffers.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(share) = &self.share {
            share.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_are_given_back_by_the_last_holder() {
        let b = Buffers::new(100);
        let c = b.start(None);
        assert!(c.grow(60));
        assert!(!c.grow(50), "would pass the limit");
        assert_eq!(b.used(), 60);
        assert!(b.has_room());
        let shared = c.clone();
        drop(c);
        assert_eq!(b.used(), 60, "a clone still holds it");
        let forced = b.charge(70, None);
        assert_eq!(b.used(), 130, "answers in memory are always counted");
        assert!(!b.has_room());
        drop(shared);
        drop(forced);
        assert_eq!(b.used(), 0);
        b.set_limit(10);
        assert!(!b.start(None).grow(11));
        b.set_limit(100);
        let c = b.start(None);
        assert!(c.grow(64));
        c.shrink_to(40);
        assert_eq!((c.bytes(), b.used()), (40, 40));
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_share_caps_one_connection_within_the_capacity() {
        let b = Buffers::new(1000);
        let share = Share::new(100);
        let c = b.start(Some(&share));
        assert!(c.grow(80));
        assert!(!c.grow(30), "past the share");
        assert_eq!(b.used(), 80, "nothing left behind by the refusal");
        let other = b.start(None);
        assert!(other.grow(500), "other connections still have room");
        let forced = b.charge(40, Some(&share));
        assert!(share.is_full());
        drop((c, forced));
        assert!(!share.is_full());
        assert_eq!(b.used(), 500);
    }
}
