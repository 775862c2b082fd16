//! Rates and latencies over the last minutes, cheap to record: each worker loop writes
//! its own slot (atomics it alone touches, so the adds never contend), the console
//! merges the slots when the page asks. Time is cut into 10 s buckets, kept in a ring
//! and cleared by the first write of a new bucket: nothing runs in the background.
//!
//! Figures are approximate by design: a latency is placed in one of four bins per
//! doubling (within 12.5 % of the true value), and a write racing a bucket's clearing
//! may be lost.

use std::sync::OnceLock;
use std::sync::atomic::{
    AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::Duration;

use tokio::time::Instant;

/// One bucket's span of time.
pub const BUCKET: Duration = Duration::from_secs(10);
/// Buckets of counts kept: the sparkline's 30 and the one being filled, plus one so
/// a bucket is never cleared while it is still read as the oldest.
const RING: usize = 32;
/// Buckets the minute figures read: the current one and the five before it.
const MINUTE: u64 = 6;
/// Buckets of latencies kept (the minute's, plus one).
const LATENCY_RING: usize = 7;
/// Latency bins: four per doubling from 64 µs (everything below is in the first) to
/// 2^28 µs (about 4.5 minutes, everything above is in the last).
const BINS: usize = 88;
/// The sparkline's length: one value per bucket, 5 minutes.
pub const SPARKLINE: usize = 30;

/// What one bucket counts.
#[derive(Clone, Copy)]
enum Count {
    /// Requests, or upstream calls.
    Seen = 0,
    /// Of those: a status ≥ 500, or a failed call.
    Errors = 1,
    /// Cache lookups, and those answered from the cache.
    Lookups = 2,
    Hits = 3,
}

struct Counts {
    /// The bucket's number plus one (0: never written).
    epoch: AtomicU64,
    n: [AtomicU32; 4],
}

struct Latencies {
    epoch: AtomicU64,
    bins: [AtomicU32; BINS],
}

/// One worker's part.
struct Slot {
    counts: [Counts; RING],
    latencies: [Latencies; LATENCY_RING],
}

impl Slot {
    fn new() -> Box<Slot> {
        Box::new(Slot {
            counts: std::array::from_fn(|_| Counts {
                epoch: AtomicU64::new(0),
                n: Default::default(),
            }),
            latencies: std::array::from_fn(|_| Latencies {
                epoch: AtomicU64::new(0),
                bins: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        })
    }
}

/// One route's or one upstream's figures. Made once and kept across reloads (by
/// name); a worker's slot is allocated at its first write.
pub struct Window {
    slots: Box<[OnceLock<Box<Slot>>]>,
    /// Since when there are figures: bucket 0 starts here.
    since: Instant,
}

/// One thing seen: how long it took, whether it failed, and what a cache made of it
/// (`(lookups, hits)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub took: Duration,
    pub error: bool,
    pub lookups: u32,
    pub hits: u32,
    /// Counted, but not a latency: a call a guard refused took no time worth showing,
    /// and would pull the quantiles down just when the upstream is unwell.
    pub untimed: bool,
}

/// The figures the console shows of one window, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Per second, over the last minute.
    pub per_s: f64,
    /// Counted over the last minute.
    pub seen: u64,
    pub error_pct: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `None` when nothing was looked up in the cache.
    pub cache_hit_pct: Option<f64>,
    /// Per second, one value per bucket, oldest first; the last is the bucket being
    /// filled (its rate so far).
    pub sparkline: Vec<f64>,
}

/// The bin of a latency: 4 per doubling (2 bits under the leading one).
fn bin(took: Duration) -> usize {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(64);
    let e = 63 - us.leading_zeros();
    let sub = (us >> (e - 2)) & 3;
    (((e - 6) * 4) as usize + sub as usize).min(BINS - 1)
}

/// A bin's middle, in milliseconds.
fn bin_ms(i: usize) -> f64 {
    let e = (i / 4) as u32 + 6;
    let sub = (i % 4) as u64;
    let low = (4 + sub) << (e - 2);
    let high = (5 + sub) << (e - 2);
    (low + high) as f64 / 2.0 / 1000.0
}

impl Window {
    /// `slots`: the worker loops writing (more writers than slots share them safely).
    pub fn new(slots: usize) -> Window {
        Window {
            slots: (0..slots.max(1)).map(|_| OnceLock::new()).collect(),
            since: Instant::now(),
        }
    }

    fn slot(&self) -> &Slot {
        let i = crate::base::worker::index() % self.slots.len();
        self.slots[i].get_or_init(Slot::new)
    }

    fn epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.since).as_secs() / BUCKET.as_secs()
    }

    /// Counts one request or call that ended at `now`.
    pub fn record(&self, now: Instant, seen: Seen) {
        let slot = self.slot();
        let e = self.epoch(now);
        let c = &slot.counts[(e % RING as u64) as usize];
        fresh(&c.epoch, e, || c.n.iter().for_each(|n| n.store(0, Relaxed)));
        add(&c.n[Count::Seen as usize], 1);
        if seen.error {
            add(&c.n[Count::Errors as usize], 1);
        }
        if seen.lookups > 0 {
            add(&c.n[Count::Lookups as usize], seen.lookups);
            add(&c.n[Count::Hits as usize], seen.hits);
        }
        let l = &slot.latencies[(e % LATENCY_RING as u64) as usize];
        fresh(&l.epoch, e, || {
            l.bins.iter().for_each(|n| n.store(0, Relaxed))
        });
        add(&l.bins[bin(seen.took)], 1);
    }

    /// The figures as of `now`, all slots merged.
    pub fn figures(&self, now: Instant) -> Figures {
        let current = self.epoch(now);
        let age = now.saturating_duration_since(self.since).as_secs_f64();
        let into = age - (current * BUCKET.as_secs()) as f64;
        // Bucket by bucket, oldest first, as far back as the sparkline reaches.
        let oldest = current.saturating_sub(SPARKLINE as u64 - 1);
        let mut buckets = vec![[0u64; 4]; (current - oldest + 1) as usize];
        let mut bins = [0u64; BINS];
        for slot in self.slots.iter().filter_map(OnceLock::get) {
            for c in &slot.counts {
                let Some(e) = c.epoch.load(Acquire).checked_sub(1) else {
                    continue;
                };
                if (oldest..=current).contains(&e) {
                    let read: [u64; 4] = std::array::from_fn(|i| u64::from(c.n[i].load(Relaxed)));
                    // Cleared for a newer bucket meanwhile: not this bucket's counts.
                    if c.epoch.load(Acquire) == e + 1 {
                        let b = &mut buckets[(e - oldest) as usize];
                        b.iter_mut().zip(read).for_each(|(sum, n)| *sum += n);
                    }
                }
            }
            for l in &slot.latencies {
                let Some(e) = l.epoch.load(Acquire).checked_sub(1) else {
                    continue;
                };
                if e + MINUTE > current && e <= current {
                    let read: [u64; BINS] =
                        std::array::from_fn(|i| u64::from(l.bins[i].load(Relaxed)));
                    if l.epoch.load(Acquire) == e + 1 {
                        bins.iter_mut().zip(read).for_each(|(sum, n)| *sum += n);
                    }
                }
            }
        }
        // The minute: the buckets before this one, and this one so far.
        let mut minute = [0u64; 4];
        for b in buckets.iter().rev().take(MINUTE as usize) {
            for (sum, n) in minute.iter_mut().zip(b) {
                *sum += n;
            }
        }
        let span_start = (current + 1).saturating_sub(MINUTE) * BUCKET.as_secs();
        let elapsed = age - span_start as f64;
        let per_s = |n: u64, secs: f64| n as f64 / secs.max(1.0);
        let seen = minute[Count::Seen as usize];
        // The bucket being filled shows once it has a second in it (a rate over less
        // would dip for no reason).
        let shown = if into < 1.0 && buckets.len() > 1 {
            &buckets[..buckets.len() - 1]
        } else {
            &buckets[..]
        };
        let partial = into >= 1.0 || buckets.len() == 1;
        let sparkline = shown
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let secs = if i + 1 == shown.len() && partial {
                    into
                } else {
                    BUCKET.as_secs_f64()
                };
                round(per_s(b[Count::Seen as usize], secs), 2)
            })
            .collect();
        let lookups = minute[Count::Lookups as usize];
        Figures {
            per_s: round(per_s(seen, elapsed), 2),
            seen,
            error_pct: pct(minute[Count::Errors as usize], seen).unwrap_or(0.0),
            p50_ms: quantile(&bins, 0.50),
            p99_ms: quantile(&bins, 0.99),
            cache_hit_pct: pct(minute[Count::Hits as usize], lookups),
            sparkline,
        }
    }
}

/// Clears a bucket when `e` starts it (the first writer of a new bucket does): marked
/// as no bucket while it is cleared, so a reader never adds old counts to the new one.
fn fresh(mark: &AtomicU64, e: u64, clear: impl FnOnce()) {
    let seen = mark.load(Relaxed);
    if seen != e + 1 && mark.compare_exchange(seen, 0, Acquire, Relaxed).is_ok() {
        clear();
        mark.store(e + 1, Release);
    }
}

/// One writer per slot (its worker): a load and a store, no locked instruction. A
/// slot shared by more threads (tests, more loops than slots) may lose a count.
fn add(n: &AtomicU32, by: u32) {
    n.store(n.load(Relaxed).wrapping_add(by), Relaxed);
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round(part as f64 * 100.0 / whole as f64, 2))
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn quantile(bins: &[u64; BINS], q: f64) -> Option<f64> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in bins.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(round(bin_ms(i), 3));
        }
    }
    Some(round(bin_ms(BINS - 1), 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_within_an_eighth_of_the_latency() {
        for us in [
            64u64, 100, 999, 1_000, 1_234, 20_000, 499_999, 3_000_000, 60_000_000,
        ] {
            let got = bin_ms(bin(Duration::from_micros(us))) * 1000.0;
            let off = (got - us as f64).abs() / us as f64;
            assert!(off <= 0.125, "{us} µs shown as {got} µs");
        }
        assert_eq!(bin(Duration::ZERO), 0);
        assert_eq!(bin(Duration::from_secs(100_000)), BINS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_minute_and_the_sparkline_follow_the_clock() {
        let w = Window::new(2);
        // Ten requests a second for 90 s, one in ten failing and taking 100 ms.
        for s in 0..90u64 {
            for i in 0..10 {
                let slow = i == 0;
                w.record(
                    Instant::now(),
                    Seen {
                        took: Duration::from_millis(if slow { 100 } else { 2 }),
                        error: slow,
                        lookups: 1,
                        hits: u32::from(i % 2 == 0),
                        untimed: false,
                    },
                );
            }
            let _ = s;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let f = w.figures(Instant::now());
        assert!((f.per_s - 10.0).abs() < 1.0, "{f:?}");
        assert!((f.error_pct - 10.0).abs() < 0.5, "{f:?}");
        assert_eq!(f.cache_hit_pct, Some(50.0));
        let p50 = f.p50_ms.unwrap();
        let p99 = f.p99_ms.unwrap();
        assert!((1.75..2.25).contains(&p50), "{f:?}");
        assert!((88.0..112.0).contains(&p99), "{f:?}");
        // 90 s of buckets: nine or ten values, full ones at ten a second.
        assert!((9..=10).contains(&f.sparkline.len()), "{f:?}");
        assert!(
            f.sparkline[1..f.sparkline.len() - 1]
                .iter()
                .all(|v| *v == 10.0),
            "{f:?}"
        );
        // At the start of a bucket, the one being filled is not shown yet.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(w.figures(Instant::now()).sparkline.len(), SPARKLINE - 1);
        // Ten quiet minutes later: nothing in the minute, the sparkline at its length.
        tokio::time::advance(Duration::from_secs(5)).await;
        let f = w.figures(Instant::now());
        assert_eq!((f.seen, f.p99_ms, f.cache_hit_pct), (0, None, None));
        assert_eq!(f.sparkline.len(), SPARKLINE);
        assert!(f.sparkline.iter().all(|v| *v == 0.0));
    }
}
