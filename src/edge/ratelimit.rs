//! Rate limits (docs/configuration.md#routes, `rate_limit`): GCRA via `governor`, on tokio's
//! clock so tests can pause time. A route's limit is kept per key (`client_ip`, `header:NAME`
//! or `global`); an upstream's limit is one bucket shared by every route calling it.
//!
//! `client_ip` is the peer address, or, when the peer is a trusted proxy, the nearest
//! address in `x-forwarded-for` that is not itself trusted. A client that is not a
//! trusted proxy cannot buy a fresh bucket by sending its own `x-forwarded-for`.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;
use lru::LruCache;

use crate::base::forward::X_FORWARDED_FOR;
use crate::config::{LimitKey, RateConfig};
use crate::state::bucket::Bucket;
use crate::state::cache::Prefetched;
use crate::state::redis::Redis;

/// A route's limit.
///
/// Per-key buckets live in LRU maps bounded by `max_keys` (least recently used
/// forgotten first), so a flood of fresh keys costs bounded memory however slowly the
/// limit refills: with governor's keyed map, 238k keys in 10 s held 53 MB until their
/// buckets refilled. A key is stored as a 64-bit hash (seeded per process) next to its
/// bucket's one number, about 60 bytes in all; a forgotten key starts again with a
/// full bucket, so under a flood of fresh keys the least recent clients lose theirs.
/// The maps are sharded so worker loops rarely wait on one another.
pub struct RouteLimiter {
    key: LimitKey,
    shards: Vec<Mutex<LruCache<u64, Tat>>>,
    hasher: foldhash::fast::RandomState,
    /// Each key's cell interval and burst tolerance, in nanoseconds.
    interval: u64,
    tolerance: u64,
    global: Bucket,
    born: tokio::time::Instant,
    /// With `[shared]`: where the replicas decide together, and this limit's keys there.
    redis: Option<(Arc<Redis>, String)>,
}

const SHARDS: usize = 8;

/// One key's GCRA state: the theoretical arrival time of its next cell (ns since the
/// limiter was made). The same algorithm governor runs for the other buckets (tested
/// against it below).
type Tat = u64;

/// Takes a cell at `now`, or says how long until one is free.
fn gcra(tat: &mut Tat, now: u64, interval: u64, tolerance: u64) -> Result<(), Duration> {
    let start = (*tat).max(now);
    if start - now > tolerance {
        return Err(Duration::from_nanos(start - now - tolerance));
    }
    *tat = start + interval;
    Ok(())
}

impl RouteLimiter {
    /// `redis`: the replicas' Redis and the start of this limit's keys there (route
    /// name and a fingerprint of the limit, so a changed limit starts afresh).
    pub fn new(
        rate: &RateConfig,
        key: LimitKey,
        max_keys: u64,
        redis: Option<(Arc<Redis>, String)>,
    ) -> Self {
        let interval = u64::try_from(Duration::from_secs_f64(1.0 / rate.per_second).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1) - 1));
        let per_shard = usize::try_from(max_keys.div_ceil(SHARDS as u64))
            .ok()
            .and_then(NonZeroUsize::new)
            .unwrap_or(NonZeroUsize::MIN);
        RouteLimiter {
            key,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            interval,
            tolerance,
            global: Bucket::new(rate),
            born: tokio::time::Instant::now(),
            redis,
        }
    }

    /// Decided in Redis when it answers (then awaited: [`RouteLimiter::check_shared`]).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// As [`RouteLimiter::check`], decided for all replicas in Redis; this replica's
    /// own buckets decide while Redis cannot.
    ///
    /// With `cache_key` (a route cache shared in Redis), that entry is read in the same
    /// round trip and handed back (`Some`: Redis's answer, entry or none).
    pub async fn check_shared(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        trusted: &[IpNet],
        cache_key: Option<&str>,
    ) -> (Result<(), Duration>, Option<Prefetched>) {
        let suffix = match &self.key {
            LimitKey::Global => "global".to_string(),
            LimitKey::ClientIp => client_ip(headers, peer, trusted).to_string(),
            LimitKey::Header(name) => {
                stable_hash(headers.get(name).map_or(&[][..], |v| v.as_bytes()))
            }
            LimitKey::Claim(_) => return (Ok(()), None),
        };
        let together = match (&self.redis, cache_key) {
            (Some((redis, base)), Some(ck)) => {
                let (i, t) = (
                    Duration::from_nanos(self.interval),
                    Duration::from_nanos(self.tolerance),
                );
                redis
                    .rate_limit_and_get(&format!("{base}{suffix}"), i, t, ck)
                    .await
                    .map(|(decided, entry)| (decided, Some(Prefetched(entry))))
            }
            _ => self.decide_shared(&suffix).await.map(|d| (d, None)),
        };
        together.unwrap_or_else(|| (self.check(headers, peer, trusted), None))
    }

    /// As [`RouteLimiter::check_claim`], decided in Redis when it answers.
    pub async fn check_claim_shared(&self, value: Option<&str>) -> Result<(), Duration> {
        let suffix = stable_hash(value.unwrap_or("").as_bytes());
        match self.decide_shared(&suffix).await {
            Some(decided) => decided,
            None => self.check_claim(value),
        }
    }

    async fn decide_shared(&self, suffix: &str) -> Option<Result<(), Duration>> {
        let (redis, base) = self.redis.as_ref()?;
        redis
            .rate_limit(
                &format!("{base}{suffix}"),
                Duration::from_nanos(self.interval),
                Duration::from_nanos(self.tolerance),
            )
            .await
    }

    /// `Err(wait)` when this request's key is over its limit.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        trusted: &[IpNet],
    ) -> Result<(), Duration> {
        use std::hash::BuildHasher;
        let hash = match &self.key {
            LimitKey::Global => return self.global.check(),
            LimitKey::ClientIp => self.hasher.hash_one(client_ip(headers, peer, trusted)),
            // Requests without the header share one bucket rather than going unlimited.
            LimitKey::Header(name) => self
                .hasher
                .hash_one(headers.get(name).map_or(&[][..], |v| v.as_bytes())),
            // Checked after the token, with [`RouteLimiter::check_claim`].
            LimitKey::Claim(_) => return Ok(()),
        };
        self.check_hash(hash)
    }

    /// A limit keyed on a claim (`claim:NAME`) waits for the token: this is its check,
    /// with the claim's value (none: one shared bucket, as for a missing header).
    pub fn check_claim(&self, value: Option<&str>) -> Result<(), Duration> {
        use std::hash::BuildHasher;
        self.check_hash(self.hasher.hash_one(value.unwrap_or("").as_bytes()))
    }

    /// A limit keyed on a claim (`claim:NAME`), checked once the token gave `claims`
    /// (decided in Redis when it answers); any other limit was checked before.
    pub async fn check_claims(
        &self,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<(), Duration> {
        let Some(claim) = self.claim() else {
            return Ok(());
        };
        let value = claims.and_then(|c| crate::edge::auth::claim_text(c, claim));
        if self.is_shared() {
            self.check_claim_shared(value.as_deref()).await
        } else {
            self.check_claim(value.as_deref())
        }
    }

    /// The claim this limit is keyed on, if it is.
    pub fn claim(&self) -> Option<&str> {
        match &self.key {
            LimitKey::Claim(c) => Some(c),
            _ => None,
        }
    }

    fn check_hash(&self, hash: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(hash >> 59) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = map.get_or_insert_mut(hash, || now);
        gcra(tat, now, self.interval, self.tolerance)
    }

    /// Keys held now.
    pub fn keys(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len() as u64)
            .sum()
    }
}

/// A key value as every replica hashes it: SHA-256 (a specified hash, so replicas
/// built by different toolchains agree; std's `DefaultHasher` may change between Rust
/// releases), of the raw bytes, cut to 128 bits. The raw value never lands in Redis.
fn stable_hash(value: &[u8]) -> String {
    use std::fmt::Write;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
    let mut out = String::with_capacity(32);
    for b in &digest.as_ref()[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
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

    /// Shared limit keys are the same on every replica, whatever built it: a fixed
    /// vector of SHA-256 (the first 128 bits of SHA-256("abc")), raw bytes in.
    #[test]
    fn shared_key_hash_is_specified() {
        assert_eq!(stable_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_ne!(stable_hash(b"k-\xff\xff"), stable_hash(b"k-\xe4\xf6"));
    }

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
    async fn keys_have_their_own_buckets() {
        let l = RouteLimiter::new(
            &rate(1.0, 1),
            LimitKey::Header(http::HeaderName::from_static("x-api-key")),
            100,
            None,
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
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_bounded_and_the_least_recently_used_go_first() {
        let l = RouteLimiter::new(
            &rate(0.001, 1),
            LimitKey::Header(http::HeaderName::from_static("x-api-key")),
            100,
            None,
        );
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("regular"));
        assert!(l.check(&h, peer, &[]).is_ok());
        for i in 0..10_000 {
            h.insert("x-api-key", HeaderValue::from(i));
            let _ = l.check(&h, peer, &[]);
            // The regular client keeps coming back, so it stays and stays limited.
            if i % 10 == 0 {
                h.insert("x-api-key", HeaderValue::from_static("regular"));
                assert!(l.check(&h, peer, &[]).is_err(), "round {i}");
            }
        }
        assert!(l.keys() <= 104, "{} keys", l.keys());
    }

    /// The hand-written GCRA against governor's, over the same random request times.
    #[tokio::test(start_paused = true)]
    async fn gcra_matches_governor() {
        for (per_second, burst) in [(2.0, 3), (10.0, 1), (0.5, 4), (1000.0, 50)] {
            let r = rate(per_second, burst);
            let reference = Bucket::new(&r);
            let ours = RouteLimiter::new(&r, LimitKey::ClientIp, 10, None);
            let peer: IpAddr = "192.0.2.1".parse().unwrap();
            let mut seed: u64 = 7;
            for _ in 0..2_000 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let gap = (seed >> 33) % ((2e9 / per_second) as u64).max(1);
                tokio::time::advance(Duration::from_nanos(gap / 3)).await;
                let a = reference.check();
                let b = ours.check(&HeaderMap::new(), peer, &[]);
                assert_eq!(a.is_ok(), b.is_ok(), "{per_second}/s burst {burst}");
                if let (Err(x), Err(y)) = (a, b) {
                    let diff = x.as_nanos().abs_diff(y.as_nanos());
                    assert!(diff <= 1_000, "wait {x:?} vs {y:?}");
                }
            }
        }
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
