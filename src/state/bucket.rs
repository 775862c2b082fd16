//! A GCRA bucket on tokio's clock (`governor`), so paused test time drives it: the
//! limit of one thing — an upstream, or a whole route (`global`) — and the cell
//! interval and burst tolerance that a limit decided in Redis uses too.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::RateConfig;

/// Governor's clock, read from tokio so a paused test clock drives the buckets.
#[derive(Clone, Debug, Default)]
pub struct TokioClock;

// governor's clock trait speaks std's `Instant`; the value comes from tokio's clock.
#[allow(clippy::disallowed_types)]
impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

#[allow(clippy::disallowed_types)]
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

fn quota(rate: &RateConfig) -> Quota {
    // per_second may be fractional ("0.5" = one every two seconds).
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map_or_else(
        || Quota::per_second(NonZeroU32::MIN),
        |q| q.allow_burst(burst),
    )
}

/// A limit's GCRA cell interval and burst tolerance: what a shared decision in Redis
/// is made with, the same as the local buckets'.
pub fn gcra_params(rate: &RateConfig) -> (Duration, Duration) {
    let interval = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    (interval, interval.saturating_mul(rate.burst.max(1) - 1))
}

/// A limit on one thing: an upstream, or a whole route (`global`).
pub struct Bucket(Direct);

impl Bucket {
    pub fn new(rate: &RateConfig) -> Self {
        Bucket(RateLimiter::direct_with_clock(quota(rate), TokioClock))
    }

    /// `Err(wait)` when over the limit.
    pub fn check(&self) -> Result<(), Duration> {
        self.0
            .check()
            .map_err(|n| n.wait_time_from(TokioClock.now()))
    }
}
