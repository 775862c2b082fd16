//! A circuit breaker per upstream (docs/configuration.md#resilience-order-and-state), shared
//! by every route that uses it.
//!
//! Closed: calls go through; `consecutive_failures` faults in a row (connect error,
//! timeout, 5xx) open it. Open: calls fail at once until `open_for` has passed. Then
//! half-open: exactly one probe goes through; its success closes the breaker, its
//! failure opens it again. Any answer below 500 (4xx included) is a success.
//!
//! Time is tokio's, so tests drive it with a paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

pub struct Breaker {
    config: BreakerConfig,
    upstream: std::sync::Arc<str>,
    /// The hot path reads only this (and, on a failure, bumps `failures`): a healthy
    /// upstream's calls write nothing shared, so worker loops on other cores do not
    /// fight over a cache line. Transitions happen under `transition`.
    state: AtomicU8,
    failures: AtomicU32,
    transition: Mutex<Transition>,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

struct Transition {
    /// While open: when a probe may go.
    until: Instant,
    /// While half-open: a probe is out.
    probing: bool,
}

/// What `/routes` and metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Leave to make one call. Dropped without [`Permit::record`] (the call was cancelled),
/// a probe hands its slot to the next caller instead of wedging the breaker half-open.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    pub fn new(upstream: std::sync::Arc<str>, config: BreakerConfig) -> Self {
        Breaker {
            config,
            upstream,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            transition: Mutex::new(Transition {
                until: Instant::now(),
                probing: false,
            }),
        }
    }

    /// A permit for one call, or how long until the breaker lets a probe through.
    pub fn admit(&self) -> Result<Permit<'_>, Duration> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(self.permit(false));
        }
        let now = Instant::now();
        let mut t = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(self.permit(false)),
            OPEN if now >= t.until => {
                self.state.store(HALF_OPEN, Ordering::Release);
                t.probing = true;
                drop(t);
                tracing::info!(upstream = %self.upstream, "circuit breaker half-open: letting one probe through");
                Ok(self.permit(true))
            }
            OPEN => Err(t.until - now),
            _ if !t.probing => {
                t.probing = true;
                Ok(self.permit(true))
            }
            // A probe is out; everyone else waits for its verdict.
            _ => Err(Duration::from_secs(1)),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            recorded: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transition> {
        // Two plain fields always left consistent; a panic elsewhere while holding the
        // lock cannot leave them half-written, so poisoning is ignored.
        self.transition.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, t: &mut Transition) {
        t.until = Instant::now() + self.config.open_for;
        t.probing = false;
        self.failures.store(0, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Release);
    }

    fn on_result(&self, probe: bool, fault: bool) {
        if !probe {
            if self.state.load(Ordering::Acquire) != CLOSED {
                // Admitted before the breaker opened: its verdict is stale.
                return;
            }
            if !fault {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                return;
            }
            if self.failures.fetch_add(1, Ordering::AcqRel) + 1 < self.config.consecutive_failures {
                return;
            }
            let mut t = self.lock();
            if self.state.load(Ordering::Acquire) == CLOSED {
                self.open(&mut t);
                drop(t);
                tracing::warn!(
                    upstream = %self.upstream,
                    failures = self.config.consecutive_failures,
                    open_for = ?self.config.open_for,
                    "circuit breaker opened"
                );
            }
            return;
        }
        let mut t = self.lock();
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        if fault {
            self.open(&mut t);
            drop(t);
            tracing::warn!(upstream = %self.upstream, "circuit breaker probe failed; open again");
        } else {
            t.probing = false;
            self.failures.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
            drop(t);
            tracing::info!(upstream = %self.upstream, "circuit breaker probe succeeded; closed");
        }
    }
}

impl Permit<'_> {
    /// The state this call was let through in: `half_open` for the probe.
    pub fn state(&self) -> BreakerState {
        if self.probe {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// Records the call's verdict: `fault` for connect errors, timeouts and 5xx.
    pub fn record(mut self, fault: bool) {
        self.recorded = true;
        self.breaker.on_result(self.probe, fault);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut t = self.breaker.lock();
            if self.breaker.state.load(Ordering::Acquire) == HALF_OPEN {
                t.probing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32, open_for_ms: u64) -> Breaker {
        Breaker::new(
            "svc".into(),
            BreakerConfig {
                consecutive_failures: n,
                open_for: Duration::from_millis(open_for_ms),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_faults_and_probes_after_open_for() {
        let b = breaker(3, 5000);
        for _ in 0..2 {
            b.admit().unwrap().record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit().err().expect("open: fail fast");
        assert_eq!(wait, Duration::from_secs(5));

        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(b.admit().is_err(), "still open just before open_for");
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.admit().expect("one probe after open_for");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_full_period() {
        let b = breaker(1, 1000);
        b.admit().unwrap().record(true);
        tokio::time::advance(Duration::from_secs(1)).await;
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().err(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count() {
        let b = breaker(2, 1000);
        b.admit().unwrap().record(true);
        b.admit().unwrap().record(false);
        b.admit().unwrap().record(true);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "faults must be consecutive"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot() {
        let b = breaker(1, 1000);
        b.admit().unwrap().record(true);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.admit().unwrap());
        assert!(b.admit().is_ok(), "the next caller probes");
    }
}
