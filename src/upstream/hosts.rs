//! An upstream's hosts (docs/configuration.md#upstreamsname): which one a call goes to
//! (`balance`), and which are out of the rotation, ejected after failing calls
//! (`outlier`) or failing the active probes (`health_check`, see [`super::health`]).
//!
//! State is per replica and shared by its worker loops: atomics read on every pick,
//! and a per-host lock taken only to change a host's state (an ejection, its end, a
//! health verdict), so concurrent changes from several loops and the prober count
//! each host in or out exactly once. With nothing out of the rotation
//! a pick reads no clock: one counter for round robin, two in-flight counts for
//! least_request. An ejection ends by time; whoever looks first (a pick, `/routes`, a
//! scrape) brings the host back on probation.
//!
//! Bookkeeping never refuses a call on its own: when every host is out, all are used.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::{Balance, OutlierConfig};

/// Where a host stands, as `/routes` and `manifold_upstream_host_state` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    Ok,
    Ejected,
    Unhealthy,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ok => "ok",
            HostState::Ejected => "ejected",
            HostState::Unhealthy => "unhealthy",
        }
    }

    /// The gauge's value (docs/operations.md#upstream-hosts): 0 in rotation, 1 ejected, 2
    /// unhealthy.
    pub fn gauge(self) -> i64 {
        match self {
            HostState::Ok => 0,
            HostState::Ejected => 1,
            HostState::Unhealthy => 2,
        }
    }
}

/// Ejections longer than this many `eject_for` never happen.
const MAX_EJECTION_FACTOR: u32 = 10;

pub struct Hosts {
    upstream: Arc<str>,
    hosts: Box<[Host]>,
    balance: Balance,
    next: AtomicUsize,
    outlier: Option<OutlierConfig>,
    /// `max_ejected` of the hosts, rounded down.
    max_ejected: usize,
    /// Hosts ejected now (an ejection that ran out counts until someone looks).
    ejected: AtomicUsize,
    /// Hosts out of the rotation now, ejected or unhealthy: while 0 a pick looks at
    /// nothing else.
    out: AtomicUsize,
    epoch: Instant,
}

struct Host {
    /// `host:port`, never credentials.
    label: String,
    /// Calls in flight (least_request only).
    inflight: AtomicU32,
    /// Failed calls in a row (outlier only).
    failures: AtomicU32,
    /// Milliseconds since `epoch` (+1) until which the host is ejected; 0: it is not.
    ejected_until: AtomicU64,
    unhealthy: AtomicBool,
    /// Counted in `Hosts::out` now (see [`Hosts::settle`]).
    counted_out: AtomicBool,
    /// Taken for every change of state (rare), never to read it.
    ejection: Mutex<Ejection>,
}

#[derive(Default)]
struct Ejection {
    /// How long the last ejection lasted.
    last: Duration,
    /// Until when (ms, as `ejected_until`) a failure ejects the host at once.
    probation_until: u64,
}

impl Hosts {
    pub fn new(
        upstream: Arc<str>,
        labels: Vec<String>,
        balance: Balance,
        outlier: Option<OutlierConfig>,
    ) -> Hosts {
        let max_ejected = outlier.as_ref().map_or(0, |o| {
            (o.max_ejected * labels.len() as f64 + 1e-9).floor() as usize
        });
        Hosts {
            upstream,
            hosts: labels
                .into_iter()
                .map(|label| Host {
                    label,
                    inflight: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    unhealthy: AtomicBool::new(false),
                    counted_out: AtomicBool::new(false),
                    ejection: Mutex::default(),
                })
                .collect(),
            balance,
            next: AtomicUsize::new(0),
            outlier,
            max_ejected,
            ejected: AtomicUsize::new(0),
            out: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn count(&self) -> usize {
        self.hosts.len()
    }

    pub fn label(&self, i: usize) -> &str {
        &self.hosts[i].label
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The host for the next call, other than `avoid` when there is another (a hedge's
    /// or a retry's). Hosts out of the rotation are skipped unless all are out.
    pub fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.hosts.len();
        if n == 1 {
            return 0;
        }
        if avoid.is_none() && self.out.load(Ordering::Relaxed) == 0 {
            return match self.balance {
                Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
                Balance::LeastRequest => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    self.less_loaded(a, b)
                }
            };
        }
        let now = self.now_ms();
        let rotation = |i: usize| self.state_at(i, now) == HostState::Ok;
        // In rotation and not avoided; else in rotation; else anything not avoided.
        let tiers: [&dyn Fn(usize) -> bool; 3] =
            [&|i| rotation(i) && Some(i) != avoid, &rotation, &|i| {
                Some(i) != avoid
            }];
        for usable in tiers {
            let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
            match candidates.len() {
                0 => continue,
                1 => return candidates[0],
                m => {
                    return match self.balance {
                        Balance::RoundRobin => {
                            candidates[self.next.fetch_add(1, Ordering::Relaxed) % m]
                        }
                        Balance::LeastRequest => {
                            let mut rng = rand::rng();
                            let a = rng.random_range(0..m);
                            let b = (a + rng.random_range(1..m)) % m;
                            self.less_loaded(candidates[a], candidates[b])
                        }
                    };
                }
            }
        }
        0
    }

    fn less_loaded(&self, a: usize, b: usize) -> usize {
        let load = |i: usize| self.hosts[i].inflight.load(Ordering::Relaxed);
        if load(b) < load(a) { b } else { a }
    }

    /// Counts a call in flight to host `i` until the guard drops (least_request only).
    pub fn start(self: &Arc<Self>, i: usize) -> Option<Load> {
        if self.balance != Balance::LeastRequest || self.hosts.len() == 1 {
            return None;
        }
        self.hosts[i].inflight.fetch_add(1, Ordering::Relaxed);
        Some(Load {
            hosts: self.clone(),
            i,
        })
    }

    /// Calls in flight to host `i` now (least_request), for tests and `/routes`.
    pub fn inflight(&self, i: usize) -> u32 {
        self.hosts[i].inflight.load(Ordering::Relaxed)
    }

    /// Hears how a call to host `i` ended: `fault` is a connect error, a timeout or a
    /// 5xx. Without `outlier`, nothing to do.
    pub fn record(&self, i: usize, fault: bool) {
        let Some(o) = &self.outlier else { return };
        let h = &self.hosts[i];
        if !fault {
            if h.failures.load(Ordering::Relaxed) != 0 {
                h.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let now = self.now_ms();
        // Brings a host whose ejection ran out back first (on probation); failures of
        // calls that were under way when it left do not count towards the next one.
        if self.state_at(i, now) != HostState::Ok && h.ejected_until.load(Ordering::Acquire) != 0 {
            return;
        }
        let failures = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut e = h.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        let probation = now < e.probation_until;
        if (!probation && failures < o.consecutive_failures)
            || h.ejected_until.load(Ordering::Acquire) != 0
        {
            return;
        }
        // A place among the `max_ejected`, taken in one step: two hosts reaching their
        // threshold at once on two loops cannot both pass a full count.
        let max = self.max_ejected;
        if self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            tracing::debug!(upstream = %self.upstream, host = %h.label, failures,
                "host not ejected: max_ejected hosts are out already");
            return;
        }
        let eject_for = if probation {
            (e.last * 2).min(o.eject_for * MAX_EJECTION_FACTOR)
        } else {
            o.eject_for
        };
        let until = now + eject_for.as_millis() as u64;
        e.last = eject_for;
        e.probation_until = until + o.eject_for.as_millis() as u64;
        h.failures.store(0, Ordering::Relaxed);
        h.ejected_until.store(until, Ordering::Release);
        self.settle(h);
        drop(e);
        tracing::warn!(
            upstream = %self.upstream,
            host = %h.label,
            failures,
            probation,
            eject_for_ms = eject_for.as_millis() as u64,
            "upstream host ejected"
        );
    }

    /// Counts host `h` in `out` if it is ejected or unhealthy, and not if neither:
    /// called with its `ejection` lock held after either changed, so the count moves
    /// exactly once per change whichever loop (or the prober) made it.
    fn settle(&self, h: &Host) {
        let out =
            h.unhealthy.load(Ordering::Acquire) || h.ejected_until.load(Ordering::Acquire) != 0;
        if h.counted_out.swap(out, Ordering::AcqRel) != out {
            if out {
                self.out.fetch_add(1, Ordering::AcqRel);
            } else {
                self.out.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Sets what the active health check says of host `i`; logs a change.
    pub fn set_healthy(&self, i: usize, healthy: bool) {
        let h = &self.hosts[i];
        let e = h.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        if h.unhealthy.swap(!healthy, Ordering::AcqRel) != healthy {
            return;
        }
        self.settle(h);
        drop(e);
        if healthy {
            tracing::info!(upstream = %self.upstream, host = %h.label, "upstream host healthy again");
        } else {
            tracing::warn!(upstream = %self.upstream, host = %h.label, "upstream host unhealthy");
        }
    }

    /// Host `i`'s state now.
    pub fn state(&self, i: usize) -> HostState {
        self.state_at(i, self.now_ms())
    }

    /// Host `i`'s state at `now`, bringing it back if its ejection has run out.
    fn state_at(&self, i: usize, now: u64) -> HostState {
        let h = &self.hosts[i];
        let until = h.ejected_until.load(Ordering::Acquire);
        let ejected = until != 0 && now < until;
        if until != 0 && !ejected {
            // One looker brings it back (the others find it done under the lock).
            let e = h.ejection.lock().unwrap_or_else(PoisonError::into_inner);
            if h.ejected_until.load(Ordering::Acquire) == until {
                h.ejected_until.store(0, Ordering::Release);
                self.ejected.fetch_sub(1, Ordering::AcqRel);
                self.settle(h);
                drop(e);
                tracing::info!(
                    upstream = %self.upstream,
                    host = %h.label,
                    "upstream host back in rotation (on probation)"
                );
            }
        }
        if h.unhealthy.load(Ordering::Acquire) {
            HostState::Unhealthy
        } else if ejected {
            HostState::Ejected
        } else {
            HostState::Ok
        }
    }
}

/// A call in flight to one host, for least_request.
pub struct Load {
    hosts: Arc<Hosts>,
    i: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.hosts.hosts[self.i]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(n: u32, eject_for_s: u64, max: f64) -> Option<OutlierConfig> {
        Some(OutlierConfig {
            consecutive_failures: n,
            eject_for: Duration::from_secs(eject_for_s),
            max_ejected: max,
        })
    }

    fn hosts(n: usize, balance: Balance, o: Option<OutlierConfig>) -> Arc<Hosts> {
        Arc::new(Hosts::new(
            Arc::from("u"),
            (0..n).map(|i| format!("h{i}:80")).collect(),
            balance,
            o,
        ))
    }

    #[test]
    fn round_robin_takes_turns() {
        let h = hosts(3, Balance::RoundRobin, None);
        let picks: Vec<usize> = (0..6).map(|_| h.pick(None)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // A hedge never lands on the host it avoids.
        for _ in 0..10 {
            assert_ne!(h.pick(Some(1)), 1);
        }
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let h = hosts(2, Balance::LeastRequest, None);
        let busy: Vec<Load> = (0..5).filter_map(|_| h.start(0)).collect();
        for _ in 0..20 {
            assert_eq!(h.pick(None), 1);
        }
        drop(busy);
        assert_eq!(h.inflight(0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_probation_and_growing_ejections() {
        let h = hosts(3, Balance::RoundRobin, outlier(3, 10, 0.5));
        h.record(0, true);
        h.record(0, true);
        assert_eq!(h.state(0), HostState::Ok);
        h.record(0, false);
        h.record(0, true);
        h.record(0, true);
        assert_eq!(h.state(0), HostState::Ok, "a success resets the count");
        h.record(0, true);
        assert_eq!(h.state(0), HostState::Ejected);
        for _ in 0..10 {
            assert_ne!(h.pick(None), 0);
        }
        // max_ejected 50 % of 3 rounds down to one host.
        for _ in 0..5 {
            h.record(1, true);
        }
        assert_eq!(h.state(1), HostState::Ok);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.state(0), HostState::Ok);
        // Probation: one failure ejects for twice as long.
        h.record(0, true);
        assert_eq!(h.state(0), HostState::Ejected);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(h.state(0), HostState::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.state(0), HostState::Ok);
        // Doubling stops at 10x eject_for: 40, 80, then 100 s.
        for want in [40, 80, 100, 100] {
            h.record(0, true);
            tokio::time::advance(Duration::from_secs(want - 1)).await;
            assert_eq!(h.state(0), HostState::Ejected, "{want}");
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(h.state(0), HostState::Ok, "{want}");
        }
        // A clean probation resets the ejection to eject_for, and one failure no
        // longer ejects.
        tokio::time::advance(Duration::from_secs(10)).await;
        h.record(0, true);
        assert_eq!(h.state(0), HostState::Ok);
        h.record(0, true);
        h.record(0, true);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(h.state(0), HostState::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.state(0), HostState::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn all_out_means_all_used() {
        let h = hosts(2, Balance::RoundRobin, outlier(1, 10, 1.0));
        h.set_healthy(0, false);
        h.record(1, true);
        assert_eq!(h.state(0), HostState::Unhealthy);
        assert_eq!(h.state(1), HostState::Ejected);
        let mut seen = [0; 2];
        for _ in 0..10 {
            seen[h.pick(None)] += 1;
        }
        assert_eq!(seen, [5, 5]);
        h.set_healthy(0, true);
        for _ in 0..4 {
            assert_eq!(h.pick(None), 0);
        }
        // Only one host in rotation, and the hedge avoids it: it goes there anyway
        // rather than to an ejected host.
        assert_eq!(h.pick(Some(0)), 0);
    }

    #[test]
    fn counts_stay_exact_under_concurrent_changes() {
        // Ejections and health verdicts from several threads at once: afterwards the
        // hosts counted out are exactly those that are out, and never more ejected
        // than max_ejected allows (one of three at 34 %).
        for _ in 0..50 {
            let h = hosts(3, Balance::RoundRobin, outlier(1, 3600, 0.34));
            std::thread::scope(|s| {
                for t in 0..4 {
                    let h = &h;
                    s.spawn(move || {
                        for k in 0..200 {
                            let i = (t + k) % 3;
                            if k % 3 == 0 {
                                h.set_healthy(i, k % 2 == 0);
                            } else {
                                h.record(i, true);
                            }
                            let _ = h.pick(None);
                        }
                    });
                }
            });
            let out = (0..3).filter(|&i| h.state(i) != HostState::Ok).count();
            assert_eq!(h.out.load(Ordering::SeqCst), out);
            let ejected = (0..3)
                .filter(|&i| h.hosts[i].ejected_until.load(Ordering::SeqCst) != 0)
                .count();
            assert!(ejected <= 1, "{ejected} ejected");
            assert_eq!(h.ejected.load(Ordering::SeqCst), ejected);
        }
    }

    #[test]
    fn without_outlier_nothing_is_ejected() {
        let h = hosts(2, Balance::RoundRobin, None);
        for _ in 0..100 {
            h.record(0, true);
        }
        assert_eq!(h.state(0), HostState::Ok);
    }
}
