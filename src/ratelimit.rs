//! Rate limits (CONTRACT §5): GCRA via `governor`, on tokio's clock so tests can pause
//! time. A route's limit is kept per key (`client_ip`, `header:NAME` or `global`); an
//! upstream's limit is one bucket shared by every route calling it.
//!
//! `client_ip` is the peer address, or, when the peer is a trusted proxy, the nearest
//! address in `x-forwarded-for` that is not itself trusted. A client that is not a
//! trusted proxy cannot buy a fresh bucket by sending its own `x-forwarded-for`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;

use crate::config::{LimitKey, RateConfig};
use crate::forward::X_FORWARDED_FOR;

/// Governor's clock, read from tokio so a paused test clock drives the buckets.
#[derive(Clone, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Keyed = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    TokioClock,
    NoOpMiddleware<std::time::Instant>,
>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Keys kept before idle ones are swept; a sweep drops buckets that are full again
/// (they carry no information), so memory follows the number of *active* clients.
const SWEEP_ABOVE: usize = 10_000;

fn quota(rate: &RateConfig) -> Quota {
    // per_second may be fractional ("0.5" = one every two seconds).
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map_or_else(
        || Quota::per_second(NonZeroU32::MIN),
        |q| q.allow_burst(burst),
    )
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

/// A route's limit.
pub struct RouteLimiter {
    key: LimitKey,
    keyed: Keyed,
    global: Bucket,
    /// When the last sweep ran (ms on tokio's clock since `born`): at most one a second,
    /// so a flood of fresh keys cannot make every request walk the whole map.
    last_sweep: std::sync::atomic::AtomicU64,
    born: tokio::time::Instant,
}

/// Longer keys (a client-chosen header value) are stored as a hash, so a key costs
/// bounded memory whatever the client sends.
const MAX_KEY_LEN: usize = 128;

impl RouteLimiter {
    pub fn new(rate: &RateConfig, key: LimitKey) -> Self {
        RouteLimiter {
            key,
            keyed: RateLimiter::dashmap_with_clock(quota(rate), TokioClock),
            global: Bucket::new(rate),
            last_sweep: std::sync::atomic::AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }
    }

    /// `Err(wait)` when this request's key is over its limit.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        trusted: &[IpNet],
    ) -> Result<(), Duration> {
        let key = match &self.key {
            LimitKey::Global => return self.global.check(),
            LimitKey::ClientIp => client_ip(headers, peer, trusted).to_string(),
            // Requests without the header share one bucket rather than going unlimited.
            LimitKey::Header(name) => headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        let key = if key.len() > MAX_KEY_LEN {
            format!("#{:016x}", crate::gateway::fingerprint(&key))
        } else {
            key
        };
        if self.keyed.len() > SWEEP_ABOVE {
            use std::sync::atomic::Ordering;
            let now = self.born.elapsed().as_millis() as u64;
            let last = self.last_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.keyed.retain_recent();
                self.keyed.shrink_to_fit();
            }
        }
        self.keyed
            .check_key(&key)
            .map_err(|n| n.wait_time_from(TokioClock.now()))
    }

    pub fn keys(&self) -> usize {
        self.keyed.len()
    }
}

/// The client's address for rate limiting (see the module docs).
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    // On a dual-stack `[::]` listener IPv4 peers arrive as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Walk the chain from the nearest hop back; the first untrusted address is the
    // client. An entry that is not an address ends the walk: nothing left of it can
    // be believed, so the last hop reached stands in for the client.
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut client = peer;
    for part in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            return client;
        };
        let ip = ip.to_canonical();
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rate(per_second: f64, burst: u32) -> RateConfig {
        RateConfig { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_allows_the_burst_then_one_per_period() {
        let b = Bucket::new(&rate(2.0, 3));
        for _ in 0..3 {
            assert!(b.check().is_ok());
        }
        let wait = b.check().unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(b.check().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.check().is_ok());
        assert!(b.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets_and_idle_ones_are_swept() {
        let l = RouteLimiter::new(
            &rate(1.0, 1),
            LimitKey::Header(http::HeaderName::from_static("x-api-key")),
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("a"));
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(&h, peer, &[]).is_ok());
        assert!(l.check(&h, peer, &[]).is_err());
        h.insert("x-api-key", HeaderValue::from_static("b"));
        assert!(
            l.check(&h, peer, &[]).is_ok(),
            "another key, another bucket"
        );
        assert_eq!(l.keys(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        l.keyed.retain_recent();
        assert_eq!(l.keys(), 0, "full buckets carry nothing and are dropped");
    }

    #[test]
    fn ipv4_peers_on_a_dual_stack_listener_match_ipv4_ranges() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.7"));
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(&h, mapped, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.7, 10.1.2.3"),
        );
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        let stranger: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(
            client_ip(&h, proxy, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&h, stranger, &trusted),
            stranger,
            "spoofed header from an untrusted peer"
        );
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("garbage, 198.51.100.7"),
        );
        assert_eq!(
            client_ip(&h, proxy, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.7, nonsense"),
        );
        assert_eq!(client_ip(&h, proxy, &trusted), proxy);
    }
}
