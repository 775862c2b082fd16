//! Where idempotency keys live (docs/configuration.md#idempotency-keys): a key's
//! in-flight mark and then its final answer, in this replica's own bounded store, and
//! with `[shared]` in Redis for every replica (the mark set atomically, with an expiry,
//! so a replica that dies never holds a key for longer than its route deadline + 5 s).
//!
//! While Redis cannot answer, the replica decides with its own store alone, as rate
//! limits do: a duplicate that reaches another replica in that time goes through.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::redis::{Op, Redis};
use crate::telemetry::metrics::labels::RedisOp;

/// Keys this replica's own store remembers at most, and the bytes of answers it holds.
const LOCAL_KEYS: usize = 100_000;
const LOCAL_BYTES: usize = 64 << 20;
/// Without `[shared]`, the largest answer kept (with it: `[shared] max_entry`).
pub const LOCAL_MAX_ENTRY: u64 = 1 << 20;
/// How long an in-flight mark outlives the route deadline in Redis.
pub const MARK_SLACK: Duration = Duration::from_secs(5);

/// A request's fingerprint: its method, path, query and body, hashed.
pub type Fingerprint = u128;

/// A final answer kept for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub status: StatusCode,
    /// `content-type`, `etag`, `cache-control`, as the answer had them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Kept {
    /// Bytes it takes in a store.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
    }

    fn encode(&self, fingerprint: Fingerprint) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 16 + 2 + 1 + self.size() + 4 * self.headers.len());
        out.put_u8(b'D');
        out.put_u128(fingerprint);
        out.put_u16(self.status.as_u16());
        out.put_u8(self.headers.len().min(255) as u8);
        for (n, v) in self.headers.iter().take(255) {
            out.put_u8(n.as_str().len().min(255) as u8);
            out.put_slice(&n.as_str().as_bytes()[..n.as_str().len().min(255)]);
            out.put_u16(v.len().min(65_535) as u16);
            out.put_slice(&v.as_bytes()[..v.len().min(65_535)]);
        }
        out.put_slice(&self.body);
        out
    }

    /// What [`Kept::encode`] wrote; `None` for anything else.
    fn decode(mut b: &[u8]) -> Option<(Fingerprint, Kept)> {
        if b.len() < 1 + 16 + 3 || b.get_u8() != b'D' {
            return None;
        }
        let fingerprint = b.get_u128();
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let n = b.get_u8();
        let mut headers = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let len = usize::from(*b.first()?);
            b.advance(1);
            let name = HeaderName::from_bytes(b.get(..len)?).ok()?;
            b.advance(len);
            if b.len() < 2 {
                return None;
            }
            let len = usize::from(b.get_u16());
            let value = HeaderValue::from_bytes(b.get(..len)?).ok()?;
            b.advance(len);
            headers.push((name, value));
        }
        Some((
            fingerprint,
            Kept {
                status,
                headers,
                body: Bytes::copy_from_slice(b),
            },
        ))
    }
}

/// What a key holds when a request with it arrives.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Nothing: the key is this request's now (marked in flight).
    First,
    /// Another request with the key is in flight; `same`: with this fingerprint.
    InFlight { same: bool },
    /// A final answer is kept; `same`: for this fingerprint.
    Done { same: bool, kept: Arc<Kept> },
}

#[derive(Debug, Clone)]
enum Slot {
    InFlight {
        fingerprint: Fingerprint,
        owner: u64,
        until: Instant,
    },
    Done {
        fingerprint: Fingerprint,
        kept: Arc<Kept>,
        until: Instant,
    },
}

/// This replica's keys: bounded in count and bytes, least recently used forgotten first.
struct Local {
    slots: lru::LruCache<String, Slot, foldhash::fast::RandomState>,
    bytes: usize,
}

/// The store of every route's keys (one per gateway, kept across reloads).
pub struct Store {
    local: Mutex<Local>,
    redis: Option<Arc<Redis>>,
}

/// A key this request holds in flight: freed when dropped unless its answer was kept.
pub struct Mark {
    store: Arc<Store>,
    key: String,
    fingerprint: Fingerprint,
    owner: u64,
    /// The mark as Redis holds it (when it was set there).
    in_redis: bool,
    settled: bool,
}

impl Store {
    pub fn new(redis: Option<Arc<Redis>>) -> Arc<Store> {
        Arc::new(Store {
            local: Mutex::new(Local {
                slots: lru::LruCache::with_hasher(
                    NonZeroUsize::new(LOCAL_KEYS).unwrap_or(NonZeroUsize::MIN),
                    foldhash::fast::RandomState::default(),
                ),
                bytes: 0,
            }),
            redis,
        })
    }

    /// The largest answer kept.
    pub fn max_entry(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(LOCAL_MAX_ENTRY, |r| r.config.max_entry)
    }

    /// Looks `key` up and, when nobody has it, marks it in flight for `mark_for` (the
    /// route deadline; in Redis + [`MARK_SLACK`]). `key` is the route, identity and
    /// client key, hashed by the caller.
    pub async fn begin(
        self: &Arc<Self>,
        key: String,
        fingerprint: Fingerprint,
        mark_for: Duration,
    ) -> (Found, Option<Mark>) {
        let owner = rand::random::<u64>();
        let mut in_redis = false;
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            let mark = mark_value(fingerprint, owner);
            match redis
                .idempotency_begin(&key, mark, mark_for + MARK_SLACK)
                .await
            {
                Some(None) => in_redis = true,
                Some(Some(held)) => match found_in(&held, fingerprint, redis, &key) {
                    // This replica kept the answer and could not write it to Redis
                    // (down, or too slow then): the own store's.
                    Some(Found::InFlight { .. })
                        if let Some(done) = self.local_done(&key, fingerprint) =>
                    {
                        return (done, None);
                    }
                    Some(found) => return (found, None),
                    // An entry this replica cannot use (too large, unsigned, forged,
                    // not one of ours): decided by the own store, as if Redis were down.
                    None => {}
                },
                // Redis cannot answer: this replica decides alone.
                None => {}
            }
        }
        let now = Instant::now();
        let found = {
            let Ok(mut local) = self.local.lock() else {
                return (Found::First, None);
            };
            match local.slots.get(&key).cloned() {
                Some(Slot::InFlight {
                    fingerprint: f,
                    until,
                    ..
                }) if until > now => Some(Found::InFlight {
                    same: f == fingerprint,
                }),
                Some(Slot::Done {
                    fingerprint: f,
                    kept,
                    until,
                }) if until > now => Some(Found::Done {
                    same: f == fingerprint,
                    kept,
                }),
                _ => {
                    local.put(
                        key.clone(),
                        Slot::InFlight {
                            fingerprint,
                            owner,
                            until: now + mark_for + MARK_SLACK,
                        },
                    );
                    None
                }
            }
        };
        match found {
            Some(f) => {
                // Redis took a mark this replica's own store refuses (a key kept
                // here while Redis was down): give it back.
                if in_redis && let Some(redis) = &self.redis {
                    redis.idempotency_free(&key, mark_value(fingerprint, owner));
                }
                (f, None)
            }
            None => (
                Found::First,
                Some(Mark {
                    store: self.clone(),
                    key,
                    fingerprint,
                    owner,
                    in_redis,
                    settled: false,
                }),
            ),
        }
    }
}

impl Store {
    /// A final answer this replica's own store keeps for `key`.
    fn local_done(&self, key: &str, fingerprint: Fingerprint) -> Option<Found> {
        let mut local = self.local.lock().ok()?;
        match local.slots.get(key) {
            Some(Slot::Done {
                fingerprint: f,
                kept,
                until,
            }) if *until > Instant::now() => Some(Found::Done {
                same: *f == fingerprint,
                kept: kept.clone(),
            }),
            _ => None,
        }
    }
}

impl Local {
    fn put(&mut self, key: String, slot: Slot) {
        let size = slot_size(&key, &slot);
        if let Some(old) = self.slots.put(key.clone(), slot) {
            self.bytes -= slot_size(&key, &old).min(self.bytes);
        }
        self.bytes += size;
        while self.bytes > LOCAL_BYTES {
            match self.slots.pop_lru() {
                Some((k, s)) => self.bytes -= slot_size(&k, &s).min(self.bytes),
                None => break,
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.slots.pop(key) {
            self.bytes -= slot_size(key, &old).min(self.bytes);
        }
    }
}

fn slot_size(key: &str, slot: &Slot) -> usize {
    key.len()
        + 64
        + match slot {
            Slot::InFlight { .. } => 0,
            Slot::Done { kept, .. } => kept.size(),
        }
}

/// An in-flight mark as Redis holds it: who set it, for which fingerprint.
fn mark_value(fingerprint: Fingerprint, owner: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.push(b'F');
    v.extend_from_slice(&fingerprint.to_be_bytes());
    v.extend_from_slice(&owner.to_be_bytes());
    v
}

/// What a key held in Redis means for a request with `fingerprint`; `None` for a value
/// this replica cannot use.
fn found_in(held: &[u8], fingerprint: Fingerprint, redis: &Redis, key: &str) -> Option<Found> {
    match held.first() {
        Some(b'F') => {
            let theirs = held
                .get(1..17)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(u128::from_be_bytes);
            Some(Found::InFlight {
                same: theirs == Some(fingerprint),
            })
        }
        _ => {
            let (theirs, kept) = redis
                .idempotency_open(key, held)
                .and_then(|v| Kept::decode(&v))?;
            Some(Found::Done {
                same: theirs == fingerprint,
                kept: Arc::new(kept),
            })
        }
    }
}

impl Mark {
    /// Keeps `kept` as the key's final answer for `ttl`.
    /// Keeps `kept` as the key's final answer for `ttl`: here at once, and in Redis
    /// before the answer goes out (within `[shared] timeout`), so a retry that reaches
    /// another replica right after the answer is replayed, not told 409.
    pub async fn keep(mut self, kept: Kept, ttl: Duration) {
        self.settled = true;
        let kept = Arc::new(kept);
        if let Ok(mut local) = self.store.local.lock() {
            local.put(
                self.key.clone(),
                Slot::Done {
                    fingerprint: self.fingerprint,
                    kept: kept.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        if let Some(redis) = &self.store.redis {
            let value = kept.encode(self.fingerprint);
            redis
                .idempotency_keep(
                    &self.key,
                    mark_value(self.fingerprint, self.owner),
                    value,
                    ttl,
                )
                .await;
        }
    }

    /// Frees the key (nothing kept), in Redis before the answer goes out, so the
    /// client's retry is served wherever it lands.
    pub async fn free(mut self) {
        self.settled = true;
        self.free_local();
        if self.in_redis
            && let Some(redis) = &self.store.redis
        {
            let mark = mark_value(self.fingerprint, self.owner);
            redis.idempotency_free_now(&self.key, mark).await;
        }
    }

    fn free_local(&self) {
        if let Ok(mut local) = self.store.local.lock()
            && matches!(local.slots.peek(&self.key), Some(Slot::InFlight { owner, .. }) if *owner == self.owner)
        {
            local.remove(&self.key);
        }
    }
}

impl Drop for Mark {
    /// Not kept: the key is free again at once (a 5xx, a timeout, a client gone).
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.free_local();
        if self.in_redis
            && let Some(redis) = &self.store.redis
        {
            redis.idempotency_free(&self.key, mark_value(self.fingerprint, self.owner));
        }
    }
}

/// Sets the in-flight mark when the key is free; else answers what the key holds (at
/// most `ARGV[3]` bytes of it).
const BEGIN: &str = r"
local held = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[3]))
if held ~= '' then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Stores the final answer, unless another request's mark stands there now (this one's
/// expired and the key was taken).
const KEEP: &str = r"
local held = redis.call('GETRANGE', KEYS[1], 0, 24)
if held == '' or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Removes the mark if it is still this request's.
const FREE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

static SCRIPTS: std::sync::LazyLock<[redis::Script; 3]> = std::sync::LazyLock::new(|| {
    [
        redis::Script::new(BEGIN),
        redis::Script::new(KEEP),
        redis::Script::new(FREE),
    ]
});

impl Redis {
    /// The Redis key of an idempotency key (already hashed by the caller).
    fn idempotency_key(&self, key: &str) -> String {
        format!("{}i:{key}", self.config.key_prefix)
    }

    /// `None`: Redis cannot answer now. `Some(None)`: the mark is set, the key is
    /// this request's. `Some(Some(value))`: what the key holds.
    async fn idempotency_begin(
        self: &Arc<Self>,
        key: &str,
        mark: Vec<u8>,
        mark_for: Duration,
    ) -> Option<Option<Vec<u8>>> {
        let full = self.idempotency_key(key);
        let ms = u64::try_from(mark_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let most = self.most_read();
        match self
            .run(RedisOp::IdempotencyBegin, |mut conn| async move {
                SCRIPTS[0]
                    .key(full)
                    .arg(mark)
                    .arg(ms)
                    .arg(most)
                    .invoke_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await
        {
            Op::Ok(held) => Some(held),
            Op::Unavailable => None,
        }
    }

    /// A kept answer read from Redis, its signature checked (with `[shared] secret`).
    fn idempotency_open(&self, key: &str, held: &[u8]) -> Option<Vec<u8>> {
        self.open(&self.idempotency_key(key), held.to_vec())
    }

    /// Stores a final answer (unless Redis cannot answer: the own store has it).
    async fn idempotency_keep(
        self: &Arc<Self>,
        key: &str,
        mark: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) {
        let full = self.idempotency_key(key);
        let value = self.seal(&full, value);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .run(RedisOp::IdempotencyKeep, |mut conn| async move {
                SCRIPTS[1]
                    .key(full)
                    .arg(mark)
                    .arg(value)
                    .arg(ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    /// Frees a mark if it is still this request's.
    async fn idempotency_free_now(self: &Arc<Self>, key: &str, mark: Vec<u8>) {
        let full = self.idempotency_key(key);
        let _ = self
            .run(RedisOp::IdempotencyFree, |mut conn| async move {
                SCRIPTS[2]
                    .key(full)
                    .arg(mark)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    /// Frees a mark in the background (a request dropped midway has no answer to
    /// hold back).
    fn idempotency_free(self: &Arc<Self>, key: &str, mark: Vec<u8>) {
        let redis = self.clone();
        let key = key.to_string();
        tokio::spawn(async move { redis.idempotency_free_now(&key, mark).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_answer_reads_back_as_written() {
        let kept = Kept {
            status: StatusCode::CREATED,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (http::header::ETAG, HeaderValue::from_static("W/\"x\"")),
            ],
            body: Bytes::from_static(b"{\"id\":1}"),
        };
        let bytes = kept.encode(42);
        assert_eq!(Kept::decode(&bytes), Some((42, kept)));
        for cut in 0..bytes.len() - 8 {
            assert!(Kept::decode(&bytes[..cut]).is_none() || cut >= 20, "{cut}");
        }
        assert!(Kept::decode(b"F0123456789abcdef").is_none());
    }

    /// The store holds at most LOCAL_BYTES of answers: the least recently used go first.
    #[tokio::test(start_paused = true)]
    async fn the_own_store_is_bounded_in_bytes() {
        let store = Store::new(None);
        let body = Bytes::from(vec![b'x'; 1 << 20]);
        for i in 0..100 {
            let (found, mark) = store
                .begin(format!("k{i}"), 1, Duration::from_secs(1))
                .await;
            assert_eq!(found, Found::First);
            let kept = Kept {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: body.clone(),
            };
            mark.unwrap().keep(kept, Duration::from_secs(3600)).await;
        }
        let local = store.local.lock().unwrap();
        assert!(local.bytes <= LOCAL_BYTES, "{}", local.bytes);
        assert!(
            local.slots.len() < 100 && local.slots.len() >= 60,
            "{}",
            local.slots.len()
        );
        assert!(local.slots.peek("k0").is_none(), "the oldest went first");
        assert!(local.slots.peek("k99").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_first_then_in_flight_then_done_and_freed_when_dropped() {
        let store = Store::new(None);
        let (found, mark) = store.begin("k".into(), 1, Duration::from_secs(1)).await;
        assert_eq!(found, Found::First);
        let mark = mark.unwrap();
        assert_eq!(
            store.begin("k".into(), 1, Duration::from_secs(1)).await.0,
            Found::InFlight { same: true }
        );
        assert_eq!(
            store.begin("k".into(), 2, Duration::from_secs(1)).await.0,
            Found::InFlight { same: false }
        );
        drop(mark);
        let (found, mark) = store.begin("k".into(), 1, Duration::from_secs(1)).await;
        assert_eq!(found, Found::First);
        let kept = Kept {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from_static(b"{}"),
        };
        mark.unwrap()
            .keep(kept.clone(), Duration::from_secs(60))
            .await;
        match store.begin("k".into(), 1, Duration::from_secs(1)).await.0 {
            Found::Done {
                same: true,
                kept: k,
            } => assert_eq!(*k, kept),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            store.begin("k".into(), 1, Duration::from_secs(1)).await.0,
            Found::First
        );
    }
}
