//! Response caching and request coalescing (docs/configuration.md#caching-and-coalescing).
//!
//! One moka cache holds route answers and backend (upstream) answers, bounded by the
//! bytes it holds (`server.cache_capacity`). Keys hold the method, the final URL, and
//! the values of the client headers that reach the upstream (`accept` and the route's
//! `forward_headers`), so answers for one `authorization` never reach another. The
//! headers the gateway makes per request (`x-request-id`, `traceparent`, ...) are not
//! part of the key: they would make every key unique.
//!
//! An entry stays in the cache for its fresh time plus its `stale_if_error` time;
//! freshness is judged on tokio's clock at lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use moka::future::Cache as Moka;
use tokio::sync::watch;
use tokio::time::Instant;

use arc_swap::ArcSwapOption;

use crate::base::cache_control::Hints;
use crate::base::forward::Forward;
use crate::config::CacheConfig;
use crate::state::redis::Redis;
use crate::telemetry::metrics::labels::CacheResult;

#[derive(Clone, Debug)]
pub struct Entry {
    pub body: Bytes,
    pub stored: Instant,
    pub fresh_for: Duration,
    pub stale_for: Duration,
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Entry),
    /// Past its ttl but within `stale_if_error`: usable only if a fresh attempt fails.
    Stale(Entry),
    Miss,
}

/// Redis's answer for a route-cache key, read in the round trip of the route's rate
/// limit: the entry, or none there. A lookup without one asks Redis itself.
#[derive(Debug)]
pub struct Prefetched(pub Option<Vec<u8>>);

#[derive(Clone)]
pub struct Cache {
    inner: Moka<String, Entry>,
    /// With `[shared]`: the replicas' Redis, behind this replica's own entries.
    redis: Arc<ArcSwapOption<RedisTier>>,
}

/// The shared tier: Redis, and the largest answer stored there.
pub struct RedisTier {
    pub redis: Arc<Redis>,
    pub max_entry: u64,
}

/// The longest an entry may be kept, from the route's or backend's own settings: an
/// entry read from Redis is believed no further (a writer to Redis could have given it
/// any lifetime).
#[derive(Clone, Copy, Debug)]
pub struct Longest {
    /// `ttl` (route) or `cache_ttl` (backend).
    pub fresh: Duration,
    /// `stale_if_error`, or zero.
    pub stale: Duration,
}

struct Expiry;

// moka's trait hands over its own `Instant`, unused: the entry's age is tokio's.
#[allow(clippy::disallowed_types)]
impl moka::Expiry<String, Entry> for Expiry {
    fn expire_after_create(
        &self,
        _: &String,
        e: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        // An entry read from Redis arrives with some of its life spent.
        Some((e.fresh_for + e.stale_for).saturating_sub(e.stored.elapsed()))
    }
}

impl Cache {
    pub fn new(capacity_bytes: u64) -> Self {
        let inner = Moka::builder()
            .max_capacity(capacity_bytes)
            .weigher(|k: &String, e: &Entry| {
                u32::try_from(k.len() + e.body.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(Expiry)
            .build();
        Cache {
            inner,
            redis: Arc::new(ArcSwapOption::empty()),
        }
    }

    /// Redis stands behind this cache and answers now.
    pub fn shared_up(&self) -> bool {
        self.redis.load().as_ref().is_some_and(|t| t.redis.is_up())
    }

    /// Puts Redis behind this cache (or takes it away): set by every config build.
    pub fn set_redis(&self, tier: Option<RedisTier>) {
        self.redis.store(tier.map(Arc::new));
    }

    /// This replica's entry, else (with `[shared]`, Redis up) the replicas' one, which
    /// is then kept here too with the expiry it was stored with, within `longest`.
    pub async fn lookup(&self, key: &str, longest: Longest) -> Lookup {
        self.lookup_with(key, None, longest).await
    }

    /// As [`Cache::lookup`], with Redis's answer for `key` already fetched (`Some`:
    /// read together with the route's rate limit, in one round trip).
    pub async fn lookup_with(
        &self,
        key: &str,
        fetched: Option<Prefetched>,
        longest: Longest,
    ) -> Lookup {
        let found = match self.inner.get(key).await {
            Some(e) => Some(e),
            None => match fetched {
                Some(Prefetched(bytes)) => {
                    match bytes.and_then(|b| self.decode_shared(&b, longest)) {
                        Some(entry) => {
                            self.inner.insert(key.to_string(), entry.clone()).await;
                            Some(entry)
                        }
                        None => None,
                    }
                }
                None => self.lookup_shared(key, longest).await,
            },
        };
        match found {
            Some(e) if e.stored.elapsed() < e.fresh_for => Lookup::Fresh(e),
            Some(e) if e.stored.elapsed() < e.fresh_for + e.stale_for => Lookup::Stale(e),
            _ => Lookup::Miss,
        }
    }

    async fn lookup_shared(&self, key: &str, longest: Longest) -> Option<Entry> {
        let tier = self.redis.load_full()?;
        if !tier.redis.is_up() {
            return None;
        }
        let bytes = tier.redis.cache_get(key).await??;
        let entry = self.decode_shared(&bytes, longest)?;
        self.inner.insert(key.to_string(), entry.clone()).await;
        Some(entry)
    }

    /// An entry read from Redis, within `longest`; one stored in the future is counted
    /// and dropped.
    fn decode_shared(&self, bytes: &[u8], longest: Longest) -> Option<Entry> {
        match decode(bytes, longest) {
            Ok(entry) => Some(entry),
            Err(why) => {
                if let (Some(why), Some(tier)) = (why, self.redis.load_full()) {
                    tier.redis.dropped(why);
                }
                None
            }
        }
    }

    pub async fn store(&self, key: String, body: Bytes, fresh_for: Duration, stale_for: Duration) {
        if fresh_for.is_zero() {
            return;
        }
        if let Some(tier) = self.redis.load_full()
            && body.len() as u64 <= tier.max_entry
        {
            tier.redis.cache_set(
                &key,
                encode(&body, fresh_for, stale_for),
                fresh_for + stale_for,
            );
        }
        let entry = Entry {
            body,
            stored: Instant::now(),
            fresh_for,
            stale_for,
        };
        self.inner.insert(key, entry).await;
    }

    /// Bytes held (approximate: moka applies writes in batches).
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }
}

// === the route cache's policy ===

/// A route cache entry's key: the route (`prefix`: its name and definition's
/// fingerprint), the path, the forwarded query, and `vary`: the values that reach
/// upstreams (forwarded headers, then the token's claims).
pub fn route_key(prefix: &str, path: &str, query: Option<&str>, vary: &str) -> String {
    format!("{prefix}{path}?{}{vary}", query.unwrap_or(""))
}

/// A fetched answer.
pub struct Fetched {
    pub body: Bytes,
    /// Every backend answered (none left out or defaulted).
    pub completed: bool,
    /// What its upstreams' `cache-control` allows.
    pub hints: Hints,
    /// 200, or a one-backend route's own 2xx (`201 Created`); only 200s are kept.
    pub status: http::StatusCode,
}

/// What the route cache made of a request.
pub enum Through<E> {
    /// A fresh entry, served without a call.
    Hit(Bytes),
    /// Fetched (and stored when complete, 200 and storable).
    Miss(Fetched),
    /// The fetch failed and an entry within `stale_if_error` stands in for it.
    Stale(Bytes, E),
    /// The fetch failed and nothing stands in.
    Failed(E),
}

impl<E> Through<E> {
    /// The verdict (`x-manifold-cache`, the access line, the metrics).
    pub fn result(&self) -> CacheResult {
        match self {
            Through::Hit(_) => CacheResult::Hit,
            Through::Miss(..) | Through::Failed(_) => CacheResult::Miss,
            Through::Stale(..) => CacheResult::Stale,
        }
    }
}

impl Cache {
    /// A route's answer through its cache (docs/configuration.md#the-route-cache):
    /// a fresh entry is served; else `fetch` runs, and a complete answer is stored for
    /// `ttl` (shortened by the upstreams' `max-age`, not at all on `no-store`); when it
    /// fails, an entry past its ttl but within `stale_if_error` stands in. `prefetched`:
    /// Redis's entry, read already with the route's rate limit.
    pub async fn through<E>(
        &self,
        key: String,
        prefetched: Option<Prefetched>,
        config: &CacheConfig,
        fetch: impl std::future::Future<Output = Result<Fetched, E>>,
    ) -> Through<E> {
        let stale_for = config.stale_if_error.unwrap_or_default();
        let longest = Longest {
            fresh: config.ttl,
            stale: stale_for,
        };
        let stale = match self.lookup_with(&key, prefetched, longest).await {
            Lookup::Fresh(entry) => return Through::Hit(entry.body),
            Lookup::Stale(entry) => Some(entry),
            Lookup::Miss => None,
        };
        match fetch.await {
            Ok(fetched) => {
                if fetched.completed && fetched.status == http::StatusCode::OK {
                    let fresh_for = fetched.hints.ttl(config.ttl);
                    self.store(key, fetched.body.clone(), fresh_for, stale_for)
                        .await;
                }
                Through::Miss(fetched)
            }
            Err(e) => match stale {
                Some(entry) => Through::Stale(entry.body, e),
                None => Through::Failed(e),
            },
        }
    }
}

/// An entry as Redis holds it: when it was stored (Unix ms, so any replica can age
/// it), its fresh and stale times (ms), then the body.
fn encode(body: &[u8], fresh_for: Duration, stale_for: Duration) -> Vec<u8> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms);
    let mut out = Vec::with_capacity(24 + body.len());
    out.extend_from_slice(&now.to_be_bytes());
    out.extend_from_slice(&ms(fresh_for).to_be_bytes());
    out.extend_from_slice(&ms(stale_for).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// How far in the future an entry's store time may be (replicas' clocks differ).
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The entry [`encode`] wrote, aged by this replica's clock, its times no longer than
/// `longest`. `Err(None)`: not an entry; `Err(Some(why))`: one not to use.
fn decode(
    bytes: &[u8],
    longest: Longest,
) -> Result<Entry, Option<crate::telemetry::metrics::labels::Dropped>> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
    };
    let (Some(stored), Some(fresh), Some(stale), Some(body)) =
        (word(0), word(8), word(16), bytes.get(24..))
    else {
        return Err(None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| None)?;
    let stored = Duration::from_millis(stored);
    if stored > now + CLOCK_SKEW {
        return Err(Some(
            crate::telemetry::metrics::labels::Dropped::Implausible,
        ));
    }
    let age = now.saturating_sub(stored);
    Ok(Entry {
        body: Bytes::copy_from_slice(body),
        stored: Instant::now().checked_sub(age).ok_or(None)?,
        fresh_for: Duration::from_millis(fresh).min(longest.fresh),
        stale_for: Duration::from_millis(stale).min(longest.stale),
    })
}

/// The part of a cache key that comes from the client's headers: `accept` and every
/// forwarded header's values, in a fixed order. Values are written byte for byte
/// ([`push_lossless`]): two credentials that differ only in bytes that are not UTF-8
/// must never share an entry.
pub fn vary(client: &HeaderMap, forward: &Forward<HeaderName>) -> String {
    let mut out = String::new();
    let mut push = |name: &str, value: &[u8]| {
        out.push('\n');
        out.push_str(name);
        out.push(':');
        push_lossless(&mut out, value);
    };
    for v in client.get_all(header::ACCEPT) {
        push("accept", v.as_bytes());
    }
    for v in client.get_all(crate::base::forward::IDEMPOTENCY_KEY) {
        push("idempotency-key", v.as_bytes());
    }
    match forward {
        Forward::Only(names) => {
            for name in names {
                for v in client.get_all(name) {
                    push(name.as_str(), v.as_bytes());
                }
            }
        }
        Forward::All => {
            let mut all: Vec<(&HeaderName, &http::HeaderValue)> = client
                .iter()
                .filter(|(n, _)| crate::base::forward::is_forwarded_by_star(n))
                .collect();
            all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            for (name, v) in all {
                push(name.as_str(), v.as_bytes());
            }
        }
    }
    out
}

/// Appends header value bytes so that different bytes always read differently: valid
/// UTF-8 as it is, with `\` doubled, and every other byte as `\xNN`. (A value holds
/// no newline, so the newline-separated parts of a key stay apart too.)
pub fn push_lossless(out: &mut String, value: &[u8]) {
    use std::fmt::Write;
    for chunk in value.utf8_chunks() {
        let valid = chunk.valid();
        if valid.contains('\\') {
            out.push_str(&valid.replace('\\', "\\\\"));
        } else {
            out.push_str(valid);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Identical concurrent calls share one: the first caller (the leader) makes it, the
/// others wait for its result. A leader dropped midway (its request was cancelled)
/// lets the waiters make their own calls rather than wait forever.
pub struct Coalescer<T: Clone> {
    /// Calls in flight by key, with their followers' channel once one has joined: the
    /// channel is made by the first follower, so a call nobody joins (most of them)
    /// costs one insert and one remove, not a channel whose every waiter list is
    /// notified when it ends.
    /// foldhash: SipHash on every call's key showed up in profiles; keys here are
    /// not attacker-chosen in a way that matters (the map only holds in-flight calls).
    inflight: Mutex<HashMap<String, Followers<T>, foldhash::fast::RandomState>>,
}

type Followers<T> = Option<watch::Sender<Option<T>>>;

impl<T: Clone> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::default()),
        }
    }
}

/// The leader's entry: it hands its answer to the followers when done, and is
/// removed however the call ends (a cancelled leader's followers see the channel
/// close and make the call themselves).
struct Leading<'a, T: Clone> {
    coalescer: &'a Coalescer<T>,
    key: &'a str,
    done: bool,
}

impl<T: Clone> Leading<'_, T> {
    fn finish(mut self, result: &T) {
        self.done = true;
        // Removed first: a caller from now on makes a call of its own.
        let followers = self.coalescer.lock().remove(self.key).flatten();
        if let Some(tx) = followers {
            let _ = tx.send(Some(result.clone()));
        }
    }
}

impl<T: Clone> Drop for Leading<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.coalescer.lock().remove(self.key);
        }
    }
}

impl<T: Clone> Coalescer<T> {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Followers<T>, foldhash::fast::RandomState>> {
        // The map is only inserted into and removed from; a poisoned lock left it whole.
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the call unless an identical one is in flight; returns the result and
    /// whether this caller made the call.
    ///
    /// It takes the call's maker, not the call, and awaits it in one place: a future
    /// passed in is stored next to the future awaiting it (rustc cannot overlap the
    /// two), which made this future three calls large (8 KB) and every fan-out branch
    /// that holds it copy kilobytes on its way into the task set.
    pub async fn run<F, Fut>(&self, key: &str, call: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        // Look up and register under one lock, so two callers cannot both lead.
        // One lookup: the owned key is needed for the common case, a call nobody
        // else is making.
        let waiting = {
            use std::collections::hash_map::Entry;
            let mut map = self.lock();
            match map.entry(key.to_owned()) {
                Entry::Occupied(mut e) => match e.get_mut() {
                    Some(tx) => Some(tx.subscribe()),
                    slot => {
                        let (tx, rx) = watch::channel(None);
                        *slot = Some(tx);
                        Some(rx)
                    }
                },
                Entry::Vacant(e) => {
                    e.insert(None);
                    None
                }
            }
        };
        let leading = match waiting {
            None => Some(Leading {
                coalescer: self,
                key,
                done: false,
            }),
            Some(mut rx) => {
                if let Ok(value) = rx.wait_for(Option::is_some).await
                    && let Some(v) = value.clone()
                {
                    return (v, false);
                }
                // The leader went away without an answer: make the call ourselves.
                None
            }
        };
        let result = call().await;
        if let Some(leading) = leading {
            leading.finish(&result);
        }
        (result, true)
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough not to cut any test entry short.
    const ANY: Longest = Longest {
        fresh: Duration::from_secs(3600),
        stale: Duration::from_secs(3600),
    };

    /// A copy read from Redis keeps the expiry it was stored with, aged by the time
    /// since it was stored (by wall clock: replicas share no monotonic one).
    /// An entry read with the route's rate limit is used as read: no second look.
    #[tokio::test]
    async fn a_prefetched_entry_is_used_as_read() {
        let c = Cache::new(1 << 20);
        let bytes = encode(b"{\"a\":1}", Duration::from_secs(60), Duration::ZERO);
        match c.lookup_with("k", Some(Prefetched(Some(bytes))), ANY).await {
            Lookup::Fresh(e) => assert_eq!(&e.body[..], b"{\"a\":1}"),
            _ => panic!("the prefetched entry is served"),
        }
        // And it is kept here now.
        assert!(matches!(c.lookup("k", ANY).await, Lookup::Fresh(_)));
        assert!(matches!(
            c.lookup_with("other", Some(Prefetched(None)), ANY).await,
            Lookup::Miss
        ));
    }

    #[test]
    fn an_entry_from_redis_keeps_its_expiry() {
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let stored_ago = |secs: u64, fresh: u64, stale: u64| {
            let mut b = Vec::new();
            b.extend_from_slice(&(now_ms - secs * 1000).to_be_bytes());
            b.extend_from_slice(&(fresh * 1000).to_be_bytes());
            b.extend_from_slice(&(stale * 1000).to_be_bytes());
            b.extend_from_slice(b"{}");
            decode(&b, ANY).unwrap()
        };
        let e = stored_ago(30, 60, 0);
        let left = e.fresh_for.saturating_sub(e.stored.elapsed());
        assert!(
            (29..=30).contains(&left.as_secs()),
            "{left:?} of its 60 s left"
        );
        assert_eq!(&e.body[..], b"{}");
        let old = stored_ago(90, 60, 60);
        assert!(old.stored.elapsed() > old.fresh_for, "stale by now");
        assert!(old.stored.elapsed() < old.fresh_for + old.stale_for);
        let round = decode(
            &encode(b"abc", Duration::from_secs(5), Duration::from_secs(7)),
            ANY,
        )
        .unwrap();
        assert_eq!(
            (&round.body[..], round.fresh_for, round.stale_for),
            (&b"abc"[..], Duration::from_secs(5), Duration::from_secs(7))
        );
        assert!(decode(b"short", ANY).is_err());
        // A writer to Redis may give an entry any lifetime: it lives no longer than
        // the route's own, and one stored in the future is not believed.
        let forever = decode(
            &encode(
                b"{}",
                Duration::from_millis(u64::MAX),
                Duration::from_millis(u64::MAX),
            ),
            Longest {
                fresh: Duration::from_secs(2),
                stale: Duration::ZERO,
            },
        )
        .unwrap();
        assert_eq!(
            (forever.fresh_for, forever.stale_for),
            (Duration::from_secs(2), Duration::ZERO)
        );
        let mut future = encode(b"{}", Duration::from_secs(1), Duration::ZERO);
        future[..8].copy_from_slice(&(now_ms + 3_600_000).to_be_bytes());
        assert!(matches!(
            decode(&future, ANY),
            Err(Some(
                crate::telemetry::metrics::labels::Dropped::Implausible
            ))
        ));
    }
    use http::HeaderValue;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn fresh_then_stale_then_gone() {
        let c = Cache::new(1 << 20);
        c.store(
            "k".into(),
            Bytes::from_static(b"v"),
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
        .await;
        assert!(matches!(c.lookup("k", ANY).await, Lookup::Fresh(_)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(c.lookup("k", ANY).await, Lookup::Stale(_)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(matches!(c.lookup("k", ANY).await, Lookup::Miss));
    }

    proptest::proptest! {
        /// Different forwarded header values never make the same key part, whatever
        /// their bytes (`X-Api-Key: k-\xff\xff` and `k-\xe4\xf6` once did, decoded
        /// lossily to the same text).
        #[test]
        fn different_header_bytes_never_share_a_key(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
        ) {
            let name = HeaderName::from_static("x-api-key");
            let forward = Forward::Only(vec![name.clone()]);
            let (Ok(va), Ok(vb)) = (HeaderValue::from_bytes(&a), HeaderValue::from_bytes(&b)) else {
                return Ok(());
            };
            let key = |v: HeaderValue| {
                let mut h = HeaderMap::new();
                h.insert(name.clone(), v);
                vary(&h, &forward)
            };
            proptest::prop_assert_eq!(va == vb, key(va) == key(vb));
        }
    }

    #[test]
    fn values_are_kept_byte_for_byte() {
        let mut out = String::new();
        push_lossless(&mut out, b"k-\xff\xff");
        assert_eq!(out, "k-\\xff\\xff");
        out.clear();
        // The text `\xff` is not the byte 0xff.
        push_lossless(&mut out, b"k-\\xff\\xff");
        assert_eq!(out, "k-\\\\xff\\\\xff");
        out.clear();
        push_lossless(&mut out, "né".as_bytes());
        assert_eq!(out, "né");
    }

    #[tokio::test]
    async fn concurrent_identical_calls_share_one() {
        let c: Arc<Coalescer<u32>> = Arc::new(Coalescer::default());
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", || async {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .await
                .0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_take_over_when_the_leader_is_cancelled() {
        let c: Arc<Coalescer<u32>> = Arc::new(Coalescer::default());
        let leader = {
            let c = c.clone();
            tokio::spawn(async move {
                c.run("k", || async { std::future::pending::<u32>().await })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = {
            let c = c.clone();
            tokio::spawn(async move { c.run("k", || async { 9 }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), (9, true));
    }
}
