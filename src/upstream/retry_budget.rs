//! The retry budget (`retry.budget`, docs/configuration.md#upstreamsname): per upstream, over
//! a sliding 10 s window, retries plus hedges are at most `budget` of first attempts, and at
//! least `MIN_PER_WINDOW`. A sick upstream then sees at most `1 + budget` times its normal
//! load, not `attempts` times.
//!
//! The window is ten one-second slots; a slot older than the window is reset when its
//! second comes round again. One short lock per call (only on upstreams that set a
//! budget).

use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

const SLOTS: usize = 10;
/// Retries plus hedges always allowed per window, so a quiet upstream can retry.
const MIN_PER_WINDOW: u64 = 3;

pub struct RetryBudget {
    ratio: f64,
    epoch: Instant,
    slots: Mutex<[Slot; SLOTS]>,
}

#[derive(Default, Clone, Copy)]
struct Slot {
    /// The second (since `epoch`) this slot counts.
    second: u64,
    first: u64,
    extra: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            epoch: Instant::now(),
            slots: Mutex::new([Slot::default(); SLOTS]),
        }
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut [Slot; SLOTS], usize, u64) -> R) -> R {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: no slot is ever stamped with a later second than this.
        let second = self.epoch.elapsed().as_secs();
        let i = (second % SLOTS as u64) as usize;
        if slots[i].second != second {
            slots[i] = Slot {
                second,
                first: 0,
                extra: 0,
            };
        }
        f(&mut slots, i, second)
    }

    /// A call's first attempt: what the budget is a share of.
    pub fn first(&self) {
        self.with_slot(|slots, i, _| slots[i].first += 1);
    }

    /// Whether one more retry or hedge may go now; if so it is counted.
    pub fn try_spend(&self) -> bool {
        let ratio = self.ratio;
        self.with_slot(|slots, i, second| {
            let (first, extra) = slots
                .iter()
                .filter(|s| s.second <= second && second - s.second < SLOTS as u64)
                .fold((0, 0), |(f, e), s| (f + s.first, e + s.extra));
            let allowed = MIN_PER_WINDOW.max((ratio * first as f64 + 1e-9).floor() as u64);
            if extra < allowed {
                slots[i].extra += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_is_a_share_of_first_attempts_over_ten_seconds() {
        let b = RetryBudget::new(0.2);
        // Nothing sent yet: the minimum of 3 still allows a few.
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(!b.try_spend());
        for _ in 0..100 {
            b.first();
        }
        // 20 % of 100 = 20 in the window, 3 spent.
        let more = (0..50).filter(|_| b.try_spend()).count();
        assert_eq!(more, 17);
        // Still inside the window five seconds on.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_spend());
        // Once those seconds slide out, only the minimum is left.
        tokio::time::advance(Duration::from_secs(5)).await;
        let fresh = (0..50).filter(|_| b.try_spend()).count();
        assert_eq!(fresh, 3);
    }
}
