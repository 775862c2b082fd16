//! State shared across replicas through Redis (`[shared]`): rate limits decided in one
//! place for every replica, and cached answers any replica can serve.
//!
//! Redis is never in the critical path of a failure: an operation gets `timeout`; the
//! first that fails or times out marks Redis `down`, and while it is down no operation
//! is attempted — each replica decides alone with its own limiters (the same limits) —
//! while one background task reconnects with backoff. The first successful PING marks
//! it `up` again. Each change of state is one log line and `manifold_shared_up`.
//!
//! Every script touches one key, so the keys could live in a Redis Cluster as they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use crate::config::SharedConfig;
use crate::telemetry::metrics::labels::{Dropped, RedisOp, RedisResult};
use crate::telemetry::metrics::{METRICS, RedisMetrics};

/// GCRA on Redis's own clock (so the replicas' clocks do not matter): the key holds
/// the theoretical arrival time in µs. Returns 0 when admitted, else the µs to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local next = tat + interval
redis.call('SET', KEYS[1], next, 'PX', math.ceil((next - now) / 1000) + 1000)
return 0
";

/// The system's trusted roots as PEM (what the redis client's TLS set-up takes).
fn system_roots_pem() -> Vec<u8> {
    use base64::Engine;
    let mut out = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    out
}

/// Reconnect attempts start this far apart and double up to [`BACKOFF_MAX`], so Redis
/// back is seen within about that long.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The replicas' Redis, as this replica sees it.
pub struct Redis {
    pub config: SharedConfig,
    client: redis::Client,
    /// The connection the reconnect loop made (its driver on the loop the gateway was
    /// built on); `None` while Redis is down.
    conn: ArcSwapOption<MultiplexedConnection>,
    /// One connection per worker loop, made on that loop once Redis is up, so an
    /// operation never hops threads (through the common one it costs two wake-ups).
    local: Vec<(ArcSwapOption<MultiplexedConnection>, AtomicBool)>,
    /// A reconnect loop is running.
    reconnecting: AtomicBool,
    script: redis::Script,
    metrics: RedisMetrics,
    /// Where reconnects run: the loop the gateway was built on (a connection's driver
    /// task lives there, and worker loops send to it).
    runtime: tokio::runtime::Handle,
    /// With `secret`: the key cache entries are signed with.
    signing: Option<aws_lc_rs::hmac::Key>,
}

/// The first byte of a signed entry; an unsigned one starts with its store time's
/// most significant byte, 0 for the next few million years.
const SIGNED: u8 = 0xFF;
/// HMAC-SHA256's output.
const TAG: usize = 32;
/// What an entry holds besides its body: the signature, and the three times of
/// `cache::encode`.
const ENTRY_OVERHEAD: u64 = 1 + TAG as u64 + 24;

tokio::task_local! {
    /// When the request running on this task must stop waiting on Redis: set at its
    /// first operation, `timeout` later, so all of a request's operations together wait
    /// at most `timeout` (the contract's bound), not `timeout` each.
    static REDIS_DEADLINE: std::cell::Cell<Option<tokio::time::Instant>>;
}

/// Runs a request with its Redis deadline (see [`REDIS_DEADLINE`]).
pub async fn with_redis_deadline<F: std::future::Future>(f: F) -> F::Output {
    REDIS_DEADLINE.scope(std::cell::Cell::new(None), f).await
}

/// This operation's deadline: `timeout` from now, or the request's Redis deadline if
/// sooner. `true` when the request's deadline is what bounds it.
fn op_deadline(timeout: Duration) -> (tokio::time::Instant, bool) {
    let own = tokio::time::Instant::now() + timeout;
    REDIS_DEADLINE
        .try_with(|b| {
            let until = *b.get().get_or_insert(own);
            b.set(Some(until));
            (until.min(own), until < own)
        })
        .unwrap_or((own, false))
}

/// What one Redis operation came to.
pub(super) enum Op<T> {
    Ok(T),
    /// Down (no attempt made), failed, or timed out: decide locally.
    Unavailable,
}

impl Redis {
    /// Starts connecting in the background; until connected, Redis counts as down.
    /// `workers`: the event loops that will call it (one connection each).
    pub fn start(config: SharedConfig, workers: usize) -> Result<Arc<Redis>, String> {
        let failed = |e: String| {
            format!(
                "[shared] redis {}: {}",
                crate::base::redact::url(&config.redis),
                crate::base::redact::in_text(&e)
            )
        };
        let client = match &config.ca_file {
            Some(ca) if config.redis.starts_with("rediss://") => {
                // The redis client takes its TLS roots whole: the system's, then ours.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let mut pem = system_roots_pem();
                let extra = crate::base::files::read_bounded(ca, crate::base::files::MAX_FILE)
                    .map_err(|e| failed(format!("ca_file {}: {e}", ca.display())))?;
                pem.extend_from_slice(&extra);
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(config.redis.as_str(), certs)
                    .map_err(|e| failed(e.to_string()))?
            }
            _ => {
                if config.redis.starts_with("rediss://") {
                    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                }
                redis::Client::open(config.redis.as_str()).map_err(|e| failed(e.to_string()))?
            }
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "[shared] needs a running event loop".to_string())?;
        let redis = Arc::new(Redis {
            client,
            conn: ArcSwapOption::empty(),
            local: (0..workers.max(1))
                .map(|_| (ArcSwapOption::empty(), AtomicBool::new(false)))
                .collect(),
            reconnecting: AtomicBool::new(false),
            script: redis::Script::new(GCRA),
            metrics: METRICS.redis(),
            runtime,
            signing: config
                .secret
                .as_ref()
                .map(|s| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, s.0.as_bytes())),
            config,
        });
        redis.metrics.up.set(0);
        redis.reconnect(true);
        Ok(redis)
    }

    pub fn is_up(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Marks Redis down (once) and starts the reconnect loop.
    fn went_down(self: &Arc<Self>, why: &str) {
        for (conn, _) in &self.local {
            conn.store(None);
        }
        if self.conn.swap(None).is_some() {
            self.metrics.up.set(0);
            tracing::warn!(redis = %crate::base::redact::url(&self.config.redis), cause = %why, "shared state: redis is down; each replica limits alone until it is up");
        }
        self.reconnect(false);
    }

    /// `initial`: the first connection since start, whose failure is logged (once) as
    /// the first state, down; later failures were logged when Redis went down.
    fn reconnect(self: &Arc<Self>, initial: bool) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let redis = Arc::downgrade(self);
        self.runtime.spawn(async move {
            let mut wait = BACKOFF_MIN;
            let mut first_failure = initial;
            loop {
                let Some(s) = redis.upgrade() else { return };
                let connected = tokio::time::timeout(BACKOFF_MAX, async {
                    let mut conn = s.client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await?;
                    // Pipelines do not load a script on NOSCRIPT as a lone call does:
                    // load it now (after every reconnect: a restarted Redis forgot it).
                    s.script.prepare_invoke().load_async(&mut conn).await?;
                    Ok::<_, redis::RedisError>(conn)
                })
                .await;
                match connected {
                    Ok(Ok(conn)) => {
                        s.conn.store(Some(Arc::new(conn)));
                        s.metrics.up.set(1);
                        s.reconnecting.store(false, Ordering::Release);
                        tracing::info!(redis = %crate::base::redact::url(&s.config.redis), "shared state: redis is up");
                        return;
                    }
                    Ok(Err(e)) => {
                        let cause = crate::base::redact::in_text(&e.to_string()).into_owned();
                        if std::mem::take(&mut first_failure) {
                            tracing::warn!(redis = %crate::base::redact::url(&s.config.redis), cause = %cause, "shared state: redis is down; each replica limits alone until it is up");
                        } else {
                            tracing::debug!(error = %cause, "shared state: reconnect failed");
                        }
                    }
                    Err(_) => {
                        if std::mem::take(&mut first_failure) {
                            tracing::warn!(redis = %crate::base::redact::url(&s.config.redis), cause = "no connection within 2 s", "shared state: redis is down; each replica limits alone until it is up");
                        } else {
                            tracing::debug!("shared state: reconnect timed out");
                        }
                    }
                }
                drop(s);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        });
    }

    /// This loop's own connection when it has one; else the common one the reconnect
    /// loop made (and this loop's is made in the background). `None` while Redis is down.
    fn connection(self: &Arc<Self>) -> Option<Arc<MultiplexedConnection>> {
        let common = self.conn.load_full()?;
        let (local, connecting) = &self.local[crate::base::worker::index() % self.local.len()];
        if let Some(c) = local.load_full() {
            return Some(c);
        }
        if !connecting.swap(true, Ordering::AcqRel) {
            let s = self.clone();
            tokio::spawn(async move {
                let slot = crate::base::worker::index() % s.local.len();
                let made =
                    tokio::time::timeout(BACKOFF_MAX, s.client.get_multiplexed_async_connection())
                        .await;
                if let Ok(Ok(conn)) = made
                    && s.conn.load().is_some()
                {
                    s.local[slot].0.store(Some(Arc::new(conn)));
                }
                s.local[slot].1.store(false, Ordering::Release);
            });
        }
        Some(common)
    }

    /// Runs one operation within `timeout`, counting it; a failure marks Redis down.
    pub(super) async fn run<T, F, Fut>(self: &Arc<Self>, op: RedisOp, f: F) -> Op<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.connection() else {
            return Op::Unavailable;
        };
        let (until, request_bound) = op_deadline(self.config.timeout);
        if request_bound && until <= tokio::time::Instant::now() {
            // This request has waited on Redis as long as it may: decide locally.
            return Op::Unavailable;
        }
        match tokio::time::timeout_at(until, f((*conn).clone())).await {
            Ok(Ok(v)) => {
                self.metrics.count(op, RedisResult::Ok);
                Op::Ok(v)
            }
            Ok(Err(e)) => {
                self.metrics.count(op, RedisResult::Error);
                self.went_down(&crate::base::redact::in_text(&e.to_string()));
                Op::Unavailable
            }
            Err(_) => {
                self.metrics.count(op, RedisResult::Timeout);
                // Cut short by the request's deadline, Redis was not given its whole
                // `timeout`: not a reason to call it down.
                if !request_bound {
                    self.went_down(&format!("no answer within {:?}", self.config.timeout));
                }
                Op::Unavailable
            }
        }
    }

    /// One GCRA decision on `key` (the prefix is added here): `None` when Redis cannot
    /// decide now (the caller decides locally), else admitted or the wait.
    pub async fn rate_limit(
        self: &Arc<Self>,
        key: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Option<Result<(), Duration>> {
        let full = format!("{}{key}", self.config.key_prefix);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let tolerance_us = u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX);
        let script = &self.script;
        let decided = self
            .run(RedisOp::RateLimit, |mut conn| async move {
                script
                    .key(full)
                    .arg(interval_us)
                    .arg(tolerance_us)
                    .invoke_async::<u64>(&mut conn)
                    .await
            })
            .await;
        match decided {
            Op::Ok(wait) => Some(waited(wait, interval_us)),
            Op::Unavailable => None,
        }
    }
}

impl Redis {
    /// A GCRA decision on `key` and a read of the cache entry `cache_key`, in one round
    /// trip: what a limited route with a shared cache needs before anything else.
    /// `None` when Redis cannot answer now.
    pub async fn rate_limit_and_get(
        self: &Arc<Self>,
        key: &str,
        interval: Duration,
        tolerance: Duration,
        cache_key: &str,
    ) -> Option<(Result<(), Duration>, Option<Vec<u8>>)> {
        let full = format!("{}{key}", self.config.key_prefix);
        let cached = self.cache_key(cache_key);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let tolerance_us = u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX);
        let script = &self.script;
        let most = self.most_read();
        let range = cached.clone();
        let answered = self
            .run(RedisOp::RateLimit, |mut conn| async move {
                redis::pipe()
                    .invoke_script(script.key(full).arg(interval_us).arg(tolerance_us))
                    .cmd("GETRANGE")
                    .arg(range)
                    .arg(0)
                    .arg(most)
                    .query_async::<(u64, Vec<u8>)>(&mut conn)
                    .await
            })
            .await;
        match answered {
            Op::Ok((wait, entry)) => {
                self.metrics.count(RedisOp::CacheGet, RedisResult::Ok);
                Some((waited(wait, interval_us), self.open(&cached, entry)))
            }
            Op::Unavailable => None,
        }
    }

    /// The Redis key of a cache key: hashed, because a cache key holds forwarded header
    /// values (an `authorization`, say) that must not be readable in Redis. Signed
    /// entries live apart (`cs:`), so a replica of an older build, which cannot read
    /// them, never meets one.
    fn cache_key(&self, key: &str) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        let mut out = String::with_capacity(self.config.key_prefix.len() + 3 + 64);
        out.push_str(&self.config.key_prefix);
        out.push_str(if self.signing.is_some() { "cs:" } else { "c:" });
        for b in digest.as_ref() {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// A cached value: `None` when Redis cannot answer now, `Some(None)` on a miss
    /// (or an entry this replica will not use: too large, unsigned, forged).
    pub async fn cache_get(self: &Arc<Self>, key: &str) -> Option<Option<Vec<u8>>> {
        let full = self.cache_key(key);
        let most = self.most_read();
        let range = full.clone();
        match self
            .run(RedisOp::CacheGet, |mut conn| async move {
                redis::cmd("GETRANGE")
                    .arg(range)
                    .arg(0)
                    .arg(most)
                    .query_async::<Vec<u8>>(&mut conn)
                    .await
            })
            .await
        {
            Op::Ok(v) => Some(self.open(&full, v)),
            Op::Unavailable => None,
        }
    }

    /// The last byte index read of an entry: one past the largest this replica stores,
    /// so a larger value shows itself without being read whole (`GETRANGE` answers at
    /// most `most + 1` bytes, and an empty string for a missing key).
    pub(super) fn most_read(&self) -> u64 {
        self.config.max_entry.saturating_add(ENTRY_OVERHEAD)
    }

    /// The entry Redis holds at `key` (read by [`Redis::most_read`]), if this replica
    /// will use it: not larger than `max_entry`, and with a secret, signed for this
    /// very key. The signature is taken off.
    pub(super) fn open(&self, key: &str, mut stored: Vec<u8>) -> Option<Vec<u8>> {
        if stored.is_empty() {
            return None;
        }
        if stored.len() as u64 > self.most_read() {
            self.metrics.dropped(Dropped::TooLarge);
            return None;
        }
        let signed = stored[0] == SIGNED;
        match (&self.signing, signed) {
            (None, false) => Some(stored),
            (Some(_), false) => {
                self.metrics.dropped(Dropped::Unsigned);
                None
            }
            (None, true) => {
                self.metrics.dropped(Dropped::Forged);
                None
            }
            (Some(signing), true) => {
                let body = stored.get(1 + TAG..)?;
                let tag = sign(signing, key, body);
                if aws_lc_rs::constant_time::verify_slices_are_equal(
                    tag.as_ref(),
                    &stored[1..1 + TAG],
                )
                .is_err()
                {
                    self.metrics.dropped(Dropped::Forged);
                    return None;
                }
                stored.drain(..1 + TAG);
                Some(stored)
            }
        }
    }

    /// An entry as Redis is to hold it at `key`: signed when there is a secret.
    pub(super) fn seal(&self, key: &str, entry: Vec<u8>) -> Vec<u8> {
        let Some(signing) = &self.signing else {
            return entry;
        };
        let tag = sign(signing, key, &entry);
        let mut out = Vec::with_capacity(1 + TAG + entry.len());
        out.push(SIGNED);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(&entry);
        out
    }

    /// Counts an entry from Redis that the cache would not use.
    pub fn dropped(&self, why: Dropped) {
        self.metrics.dropped(why);
    }

    /// Stores a value for `ttl`, in the background: the answer does not wait for it.
    pub fn cache_set(self: &Arc<Self>, key: &str, value: Vec<u8>, ttl: Duration) {
        if !self.is_up() {
            return;
        }
        let full = self.cache_key(key);
        let value = self.seal(&full, value);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let redis = self.clone();
        tokio::spawn(async move {
            let _ = redis
                .run(RedisOp::CacheSet, |mut conn| async move {
                    redis::cmd("SET")
                        .arg(full)
                        .arg(value)
                        .arg("PX")
                        .arg(ms)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
        });
    }
}

/// The HMAC of an entry for its Redis key: an entry moved to another key (another
/// identity's) does not verify there.
fn sign(signing: &aws_lc_rs::hmac::Key, key: &str, entry: &[u8]) -> aws_lc_rs::hmac::Tag {
    let mut ctx = aws_lc_rs::hmac::Context::with_key(signing);
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key.as_bytes());
    ctx.update(entry);
    ctx.sign()
}

/// A GCRA answer from Redis as a decision: 0 admits; a wait is at most the limit's
/// interval (what GCRA can ask for), whatever a value rewritten in Redis says.
fn waited(wait_us: u64, interval_us: u64) -> Result<(), Duration> {
    if wait_us == 0 {
        Ok(())
    } else {
        Err(Duration::from_micros(wait_us.min(interval_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_from_redis_is_at_most_the_interval() {
        assert_eq!(waited(0, 1_000_000), Ok(()));
        assert_eq!(waited(250, 1_000_000), Err(Duration::from_micros(250)));
        assert_eq!(waited(u64::MAX, 1_000_000), Err(Duration::from_secs(1)));
    }

    /// All of a request's Redis operations together wait at most `timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_requests_operations_share_one_timeout() {
        let timeout = Duration::from_millis(20);
        with_redis_deadline(async {
            let t0 = tokio::time::Instant::now();
            let (first, bound) = op_deadline(timeout);
            assert_eq!((first - t0, bound), (timeout, false));
            tokio::time::sleep(Duration::from_millis(15)).await;
            let (second, bound) = op_deadline(timeout);
            assert_eq!(second, first, "the second gets what is left: 5 ms");
            assert!(bound);
        })
        .await;
        // Outside a request (a cache write after the answer): its own timeout.
        let t0 = tokio::time::Instant::now();
        assert_eq!(op_deadline(timeout), (t0 + timeout, false));
    }
}
