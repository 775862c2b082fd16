//! One client stack per upstream, built once at load and shared by every route using it.
//!
//! The pools (keep-alive connections) live here, with the breaker, limiter and
//! coalescer, which is why a reload keeps an `Upstream` whose settings did not change.
//! Calls go out through hyper's connection-level HTTP/1.1 client ([`pool`]): it takes
//! our body types as they are (a passthrough body goes upstream unboxed). Every call,
//! streamed or buffered, is made of attempts ([`attempt`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use tokio::time::Instant;

mod attempt;
pub mod breaker;
pub mod codec;
pub mod grpc;
mod health;
pub mod hosts;
pub mod limit;
pub mod pool;
pub mod proto_json;
mod retry_budget;
mod span;
mod stream;

pub use attempt::Tried;
pub use codec::Codec;
pub use stream::{Held, Streamed};

use crate::base::body::{BodyWatch, RequestBody};
use crate::base::cache_control::Hints;
use crate::base::error::{Failure, Outcome};
use crate::config::{Protocol, UpstreamSettings};
use crate::state::bucket::Bucket;
use crate::state::buffers::{Buffers, Charge, Share};
use crate::state::cache::Coalescer;
use crate::state::redis::Redis;
use crate::telemetry::console::trail::{AttemptEnd, Mark, Trail};
use crate::telemetry::console::window::{Seen, Window};
use crate::telemetry::metrics::labels::Hedge;
use crate::telemetry::metrics::{METRICS, UpstreamMetrics};
use crate::telemetry::trace::Span;
use attempt::{Mode, read_limited};
use breaker::{Breaker, BreakerState, Permit};
use hosts::Hosts;
use limit::{InFlight, Ticket};
use pool::{Base, Pool};
use retry_budget::RetryBudget;

pub struct Upstream {
    pub name: Arc<str>,
    pub settings: UpstreamSettings,
    /// Idle connections per worker event loop: a connection's I/O is driven by the
    /// loop that opened it, so sharing them across loops would turn every answer into
    /// a cross-thread wake-up (measured: the largest cost after malloc).
    pool: Arc<Pool>,
    /// Which of the `urls` a call goes to, and which are out of the rotation.
    pub hosts: Arc<Hosts>,
    breaker: Option<Breaker>,
    inflight: Option<InFlight>,
    /// The upstream's own `rate_limit`, shared by every route that calls it.
    rate: Option<Bucket>,
    /// With `[shared]`: the same limit decided for all replicas in Redis (the local
    /// bucket decides while Redis cannot).
    shared_rate: Option<SharedRate>,
    /// Identical GETs in flight share one call (docs/configuration.md#coalescing).
    pub coalescer: Coalescer<Called>,
    metrics: UpstreamMetrics,
    /// Starts this upstream's cache and coalescing keys: its name and a fingerprint of
    /// its settings, so answers of an upstream that was repointed are not served.
    pub cache_prefix: String,
    /// `buffer_capacity`, which every buffered answer is read against.
    buffers: Arc<Buffers>,
    /// `retry.budget`: retries and hedges as a share of first attempts.
    retry_budget: Option<RetryBudget>,
    /// The console's figures (kept by name across reloads; none with the console off).
    pub console: Option<Arc<Window>>,
}

/// A 2xx answer (status, body, what its `cache-control` allows), or why not.
/// The body is held against `buffer_capacity` as long as its [`Charge`] lives.
pub type Reply = Result<(StatusCode, Bytes, Hints, Charge), Failure>;

/// How a buffered call ended: its answer, the attempts sent (refused ones are not),
/// and which of the upstream's hosts gave the answer (the last one tried when none did).
#[derive(Clone)]
pub struct Called {
    pub reply: Reply,
    pub attempts: u32,
    pub host: Option<usize>,
    /// Each attempt, for the console's waterfall, when there is more to say than the
    /// call's own figures: it failed, or took more than one attempt (console on only).
    pub trail: Option<Box<Trail>>,
}

/// Which failures a call may be sent again after, and whether it may be hedged
/// (docs/configuration.md#resilience-order-and-state, #grpc-backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: a POST without `idempotency-key`, and the like.
    Never,
    /// An idempotent HTTP call: after a connect error, a timeout, a 502, 503 or 504.
    Idempotent,
    /// A gRPC method: after a connect error or UNAVAILABLE (the call was not
    /// processed; a 502-504 from a proxy in front means the same).
    Unprocessed,
    /// A gRPC method marked `NO_SIDE_EFFECTS` or `IDEMPOTENT`: a timeout and
    /// DEADLINE_EXCEEDED too.
    GrpcIdempotent,
}

impl Retry {
    /// Failures worth another attempt.
    fn retries_on(self, f: &Failure) -> bool {
        use crate::base::error::GrpcCode;
        let gateway_error = matches!(f, Failure::ServerError(s) if matches!(s.as_u16(), 502..=504));
        match self {
            Retry::Never => false,
            Retry::Idempotent => {
                gateway_error || matches!(f, Failure::Connect(_) | Failure::Timeout)
            }
            Retry::Unprocessed => {
                gateway_error
                    || matches!(f, Failure::Connect(_))
                    || matches!(f, Failure::Grpc(g) if g.code == GrpcCode::UNAVAILABLE)
            }
            Retry::GrpcIdempotent => {
                gateway_error
                    || matches!(f, Failure::Connect(_) | Failure::Timeout)
                    || matches!(f, Failure::Grpc(g) if matches!(g.code, GrpcCode::UNAVAILABLE | GrpcCode::DEADLINE_EXCEEDED))
            }
        }
    }

    /// A call that may be repeated at all; hedged only when it is safe to have two
    /// in flight.
    fn hedges(self) -> bool {
        matches!(self, Retry::Idempotent | Retry::GrpcIdempotent)
    }
}

/// Connect bound when the upstream sets no `timeout` (the route deadline still applies).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle-read bound for streamed (passthrough) bodies when the upstream sets no timeout.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An upstream limit decided in Redis: where, and its GCRA parameters.
struct SharedRate {
    redis: Arc<Redis>,
    key: String,
    interval: Duration,
    tolerance: Duration,
}

impl Upstream {
    pub fn build(
        name: &str,
        settings: &UpstreamSettings,
        workers: usize,
        buffers: &Arc<Buffers>,
        descriptors: &Arc<crate::state::descriptors::Descriptors>,
        redis: Option<&Arc<Redis>>,
        console: Option<Arc<Window>>,
    ) -> Result<Self, String> {
        let tls = crate::base::tls::client_config(settings.ca_file.as_deref())
            .map_err(|e| format!("upstream {name}: {e}"))?;
        let bases: Vec<Base> = settings
            .urls
            .iter()
            .map(Base::new)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("upstream {name}: {e}"))?;
        let hosts = Arc::new(Hosts::new(
            Arc::from(name),
            bases.iter().map(Base::label).collect(),
            settings.balance,
            settings.outlier.clone(),
        ));
        let connect_timeout = settings
            .timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .min(DEFAULT_CONNECT_TIMEOUT);
        let connector = |h2| {
            crate::base::tls::connector(
                tls.clone(),
                Some(connect_timeout),
                Some(Duration::from_secs(60)),
                h2,
            )
        };
        let main = connector(settings.protocol == Protocol::H2);
        // WebSocket handshakes are HTTP/1.1: over TLS they must not negotiate h2.
        let upgrades = if settings.protocol == Protocol::H2 {
            connector(false)
        } else {
            main.clone()
        };
        let pool = Arc::new(Pool::new(
            main,
            upgrades,
            connect_timeout,
            bases,
            workers,
            settings.protocol,
            descriptors.clone(),
        ));
        if let Some(check) = &settings.health_check {
            health::spawn(Arc::downgrade(&hosts), pool.clone(), check.clone());
        }
        Ok(Upstream {
            name: Arc::from(name),
            settings: settings.clone(),
            pool,
            hosts,
            breaker: settings
                .circuit_breaker
                .clone()
                .map(|c| Breaker::new(Arc::from(name), c)),
            inflight: Some(InFlight::new(settings.max_concurrency)),
            rate: settings.rate_limit.as_ref().map(Bucket::new),
            shared_rate: match (redis, &settings.rate_limit) {
                (Some(redis), Some(rate)) => {
                    let (interval, tolerance) = crate::state::bucket::gcra_params(rate);
                    let fp = crate::config::fingerprint(&format!("{rate:?}"));
                    Some(SharedRate {
                        redis: redis.clone(),
                        key: format!("url:{name}:{fp:016x}"),
                        interval,
                        tolerance,
                    })
                }
                _ => None,
            },
            coalescer: Coalescer::default(),
            metrics: METRICS.upstream(name),
            cache_prefix: format!(
                "b|{name}|{:016x}|",
                crate::config::fingerprint(&format!("{settings:?}"))
            ),
            buffers: buffers.clone(),
            retry_budget: settings
                .retry
                .as_ref()
                .and_then(|r| r.budget)
                .map(RetryBudget::new),
            console,
        })
    }

    /// An attempt's end, in the metrics and the console: a failure is one that was
    /// the upstream's (an error, a timeout) or that its guards shed.
    fn observe(&self, outcome: Outcome, started: Instant, elapsed: Duration) {
        self.metrics.observe(outcome, elapsed.as_secs_f64());
        if let Some(w) = &self.console {
            let error = !matches!(
                outcome,
                Outcome::Ok | Outcome::Rejected | Outcome::ClientError
            );
            let seen = Seen {
                took: elapsed,
                error,
                ..Seen::default()
            };
            w.record(started + elapsed, seen);
        }
    }

    /// Calls in flight now, and counts since start: hedges sent, retries and hedges
    /// the budget refused.
    pub fn counts(&self) -> (u32, u64, u64) {
        let inflight = self.inflight.as_ref().map_or(0, InFlight::current);
        let (hedges, refused) = self.metrics.counts();
        (inflight, hedges, refused)
    }

    /// Where a rendered path (`/users/42?x=1`) goes: one of `urls` as `balance` picks
    /// it (another than `avoid` when there is one), and the request target there.
    pub fn target(
        &self,
        path_and_query: String,
        avoid: Option<usize>,
    ) -> Result<(usize, Uri), Failure> {
        let i = self.hosts.pick(avoid);
        match self.pool.bases()[i].target(path_and_query) {
            Some(uri) => Ok((i, uri)),
            None => Err(Failure::InvalidTarget),
        }
    }

    /// When an attempt begun at `now` must end: `min(upstream timeout, route deadline)`.
    pub fn attempt_deadline(&self, now: Instant, route_deadline: Instant) -> Instant {
        match self.settings.timeout {
            Some(t) => route_deadline.min(now + t),
            None => route_deadline,
        }
    }

    /// How long a streamed body may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        self.settings.timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }

    /// The upstream's rate limit (unless Redis `decided` it for all replicas), its
    /// place under `max_concurrency`, then the breaker's leave: load checks first, so a
    /// call shed for load never uses up a half-open probe.
    fn guards(&self, decided: bool) -> Result<(Option<Ticket>, Option<Permit<'_>>), Failure> {
        if let Some(rate) = &self.rate
            && !decided
        {
            rate.check().map_err(|_| Failure::Overloaded)?;
        }
        let slot = match &self.inflight {
            Some(l) => Some(l.try_acquire().ok_or(Failure::Overloaded)?),
            None => None,
        };
        let permit = match &self.breaker {
            Some(b) => Some(
                b.admit()
                    .map_err(|retry_after| Failure::CircuitOpen { retry_after })?,
            ),
            None => None,
        };
        Ok((slot, permit))
    }

    /// With a limit shared in Redis: its decision (`None`: Redis cannot decide now, the
    /// local bucket will).
    async fn shared_rate(&self) -> Option<Result<(), Failure>> {
        let r = self.shared_rate.as_ref()?;
        let decided = r.redis.rate_limit(&r.key, r.interval, r.tolerance).await?;
        Some(decided.map_err(|_| Failure::Overloaded))
    }

    /// Calls in flight allowed at once (`max_concurrency`, or the default).
    pub fn max_concurrency(&self) -> u32 {
        self.inflight.as_ref().map_or(u32::MAX, InFlight::max)
    }

    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(Breaker::state)
    }

    /// A streamed (passthrough) call to `bases[base]`: one attempt, waiting for the
    /// response head until the attempt deadline. The place under `max_concurrency`
    /// and the connection come back with the response, to be held until its body
    /// ends. `client` watches the client's body streamed along, if any: a call that
    /// its body failed is the client's failure, which the breaker and the upstream's
    /// metrics never see.
    ///
    /// Not an `async fn`: it hands back the attempt's own future, one level (and one
    /// copy of a large future) fewer on the pass-through path.
    pub fn call_streamed<'a>(
        &'a self,
        base: usize,
        req: Request<RequestBody>,
        route_deadline: Instant,
        span: &'a Span,
        span_name: &'a Arc<str>,
        client: Option<&'a BodyWatch>,
    ) -> impl Future<Output = Tried<(Response<Incoming>, Held)>> + 'a {
        if let Some(b) = &self.retry_budget {
            b.first();
        }
        let t = Try::once(base, span, span_name, route_deadline, client);
        self.attempt(req, t, Mode::Streamed, |resp, held| {
            std::future::ready(Ok((resp, held)))
        })
    }

    /// A WebSocket handshake to `bases[base]` (docs/configuration.md#websocket-routes): one
    /// attempt on a new connection, bounded by the route deadline; a 101's answer can be upgraded
    /// (`hyper::upgrade::on`), any other is passed on as a passthrough answer.
    pub async fn call_upgrade(
        &self,
        base: usize,
        req: Request<RequestBody>,
        route_deadline: Instant,
        span: &Span,
        span_name: &Arc<str>,
    ) -> Tried<(Response<Incoming>, Held)> {
        let t = Try::once(base, span, span_name, route_deadline, None);
        self.attempt(req, t, Mode::Upgrade, |resp, held| {
            std::future::ready(Ok((resp, held)))
        })
        .await
    }

    /// A call whose answer must be a 2xx, read whole, retried as `retry` allows when
    /// the call may be (`spec.retry`: an idempotent method, or POST with
    /// `idempotency-key`: after a connect error, a timeout or a 502/503/504; a gRPC
    /// method after UNAVAILABLE), never past the route deadline, and within the retry
    /// budget. With `hedge`, see [`Upstream::call_hedged`].
    pub async fn call_buffered(&self, spec: &CallSpec<'_>) -> Called {
        let (attempts, backoff) = match (&self.settings.retry, spec.retry) {
            (_, Retry::Never) | (None, _) => (1, Duration::ZERO),
            (Some(r), _) => (r.attempts.max(1), r.backoff),
        };
        if let Some(b) = &self.retry_budget {
            b.first();
        }
        if let Some(h) = &self.settings.hedge
            && attempts > 1
            && spec.retry.hedges()
        {
            return Box::pin(self.call_hedged(spec, attempts, backoff, h.after)).await;
        }
        let mut n = 0;
        let mut sent = 0;
        let mut host = None;
        // Noted from the first failed attempt on: a call that succeeds at once is
        // its backend's figures, and carries nothing more.
        let mut trail: Option<Box<Trail>> = None;
        loop {
            n += 1;
            let result = match self.target(spec.path.to_owned(), host) {
                Ok((base, uri)) => {
                    host = Some(base);
                    let tried = self.buffered_attempt(spec, base, uri, n, false).await;
                    sent += u32::from(tried.sent);
                    if self.console.is_some() && (tried.verdict.is_err() || trail.is_some()) {
                        trail
                            .get_or_insert_with(Box::default)
                            .push(mark(base, &tried, false));
                    }
                    tried.into_result()
                }
                Err(f) => Err(f),
            };
            let retry = match &result {
                Err(f) if self.may_retry(f, n, attempts, backoff, spec) => f,
                _ => {
                    return Called {
                        reply: result,
                        attempts: sent,
                        host,
                        trail,
                    };
                }
            };
            self.log_retry(spec, n, retry);
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// Whether a failed attempt `n` of `attempts` goes again: a failure worth it, time
    /// left, and room in the retry budget (spent here).
    fn may_retry(
        &self,
        f: &Failure,
        n: u32,
        attempts: u32,
        backoff: Duration,
        spec: &CallSpec<'_>,
    ) -> bool {
        n < attempts
            && spec.retry.retries_on(f)
            && Instant::now() + backoff < spec.deadline
            && self.spend_budget()
    }

    /// One retry or hedge out of the budget; false (and counted) when it is spent.
    fn spend_budget(&self) -> bool {
        match &self.retry_budget {
            Some(b) if !b.try_spend() => {
                self.metrics.retry_budget_exhausted();
                false
            }
            _ => true,
        }
    }

    /// Logged here, once: the caller logs only the attempt that ends the call.
    fn log_retry(&self, spec: &CallSpec<'_>, n: u32, failure: &Failure) {
        tracing::info!(
            request_id = spec.request_id.to_str().unwrap_or_default(),
            backend = spec.backend,
            upstream = %self.name,
            attempt = n,
            outcome = %failure.outcome(),
            cause = %failure.describe(),
            "attempt failed; retrying"
        );
    }

    /// A buffered call with hedging (docs/configuration.md#hedge). Each round is one attempt (the
    /// first, or a retry) and, if it has not answered after `after`, one hedge on
    /// another host: the first good answer wins and the other attempt is dropped
    /// (hyper closes a connection whose answer was left midway, so only one that
    /// finished cleanly is reused). A failure waits for the other attempt of its
    /// round; when both failed, the round's last failure decides the retry. A hedge
    /// is an attempt like any other: it uses one of `attempts`, goes through the
    /// guards, has its span, and spends the retry budget.
    async fn call_hedged(
        &self,
        spec: &CallSpec<'_>,
        attempts: u32,
        backoff: Duration,
        after: Duration,
    ) -> Called {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;
        type Racing<'a> = std::pin::Pin<
            Box<dyn Future<Output = (bool, Tried<(StatusCode, Bytes, Hints, Charge)>)> + Send + 'a>,
        >;
        let mut n = 0;
        let mut sent = 0;
        let mut host = None;
        let mut trail = Trail::default();
        loop {
            n += 1;
            let (base, uri) = match self.target(spec.path.to_owned(), host) {
                Ok(t) => t,
                Err(f) => {
                    return Called {
                        reply: Err(f),
                        attempts: sent,
                        host,
                        trail: self.kept(trail, true),
                    };
                }
            };
            host = Some(base);
            // The round's attempts still running: when each began, on which host.
            let began = Instant::now();
            trail.begin(began);
            let mut first_running = Some(began);
            let mut hedge_running = None;
            let mut racing: FuturesUnordered<Racing<'_>> = FuturesUnordered::new();
            racing.push(Box::pin(async move {
                (
                    false,
                    self.buffered_attempt(spec, base, uri, n, false).await,
                )
            }));
            let hedge_at = Instant::now() + after;
            let mut hedged = false;
            let mut hedge_sent = false;
            let mut hedge_host = None;
            let mut last = None;
            while !racing.is_empty() {
                let may_hedge = !hedged && n < attempts && hedge_at < spec.deadline;
                let done = if may_hedge {
                    tokio::select! {
                        done = racing.next() => done,
                        () = tokio::time::sleep_until(hedge_at) => {
                            hedged = true;
                            if !self.spend_budget() {
                                continue;
                            }
                            n += 1;
                            match self.target(spec.path.to_owned(), Some(base)) {
                                Ok((other, uri)) => {
                                    tracing::debug!(
                                        request_id = spec.request_id.to_str().unwrap_or_default(),
                                        backend = spec.backend,
                                        upstream = %self.name,
                                        attempt = n,
                                        "no answer yet; hedging"
                                    );
                                    hedge_sent = true;
                                    hedge_host = Some(other);
                                    hedge_running = Some(Instant::now());
                                    racing.push(Box::pin(async move {
                                        (true, self.buffered_attempt(spec, other, uri, n, true).await)
                                    }));
                                }
                                Err(f) => last = Some(Err(f)),
                            }
                            continue;
                        }
                    }
                } else {
                    racing.next().await
                };
                let Some((is_hedge, tried)) = done else { break };
                sent += u32::from(tried.sent);
                let on = if is_hedge { hedge_host } else { Some(base) };
                trail.push(mark(on.unwrap_or(base), &tried, is_hedge));
                if is_hedge {
                    hedge_running = None;
                } else {
                    first_running = None;
                }
                let result = tried.into_result();
                if result.is_ok() {
                    if hedge_sent {
                        self.metrics
                            .hedge(if is_hedge { Hedge::Won } else { Hedge::Lost });
                    }
                    // The other attempt, cancelled now, was sent too.
                    let now = Instant::now();
                    let cancelled = [
                        (first_running, Some(base), false),
                        (hedge_running, hedge_host, true),
                    ];
                    for (began, on, hedge) in cancelled {
                        if let (Some(began), Some(on)) = (began, on) {
                            let took = now - began;
                            trail.push(Mark::new(on, began, took, AttemptEnd::Cancelled, hedge));
                            // Not an upstream's outcome for the metrics, but a call that
                            // was out this long: the console's rate and p99 count it.
                            if let Some(w) = &self.console {
                                let seen = Seen {
                                    took,
                                    ..Seen::default()
                                };
                                w.record(now, seen);
                            }
                        }
                    }
                    return Called {
                        reply: result,
                        attempts: sent + racing.len() as u32,
                        host: on,
                        trail: self.kept(trail, false),
                    };
                }
                last = Some(result);
            }
            if hedge_sent {
                self.metrics.hedge(Hedge::Lost);
            }
            let result = last.unwrap_or(Err(Failure::BadResponse("no answer")));
            let retry = match &result {
                Err(f) if self.may_retry(f, n, attempts, backoff, spec) => f,
                _ => {
                    let failed = result.is_err();
                    return Called {
                        reply: result,
                        attempts: sent,
                        host: Some(base),
                        trail: self.kept(trail, failed),
                    };
                }
            };
            self.log_retry(spec, n, retry);
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    async fn buffered_attempt(
        &self,
        spec: &CallSpec<'_>,
        base: usize,
        uri: Uri,
        n: u32,
        hedge: bool,
    ) -> Tried<(StatusCode, Bytes, Hints, Charge)> {
        let mut req = Request::new(RequestBody::Full(None));
        *req.method_mut() = spec.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = spec.headers.clone();
        if let Some((bytes, content_type)) = spec.body {
            req.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            *req.body_mut() = RequestBody::Full(Some(bytes.clone()));
        }
        let grpc = spec.codec.grpc();
        if grpc.is_some() {
            // The time this attempt has left, as the attempt itself will bound it.
            let now = Instant::now();
            let left = self.attempt_deadline(now, spec.deadline) - now;
            let h = req.headers_mut();
            h.insert(header::TE, grpc::TE);
            h.insert(grpc::GRPC_TIMEOUT, grpc::timeout(left));
        }
        let t = Try {
            base,
            n,
            parent: spec.span,
            span_name: spec.span_name,
            cache_miss: spec.cache_miss,
            route_deadline: spec.deadline,
            bounded: true,
            client: None,
            hedge,
            pass_errors: spec.pass_errors,
            grpc,
        };
        let limit = self.settings.max_response_body;
        self.attempt(req, t, Mode::Buffered, |resp, held| async move {
            let (head, incoming) = resp.into_parts();
            let hints = Hints::from_headers(&head.headers);
            let (body, charge, trailers) =
                read_limited(&head.headers, incoming, limit, &self.buffers, spec.share).await?;
            drop(held);
            let body = codec::decode(&head.headers, body, limit, &charge)?;
            let json = spec
                .codec
                .read(&head.headers, trailers.as_ref(), body, limit, &charge)?;
            Ok((head.status, json, hints, charge))
        })
        .await
    }
}

impl Upstream {
    /// A hedged call's attempts, kept as [`Called::trail`] says.
    fn kept(&self, trail: Trail, failed: bool) -> Option<Box<Trail>> {
        (self.console.is_some() && (failed || trail.len() > 1)).then(|| Box::new(trail))
    }
}

/// An attempt as the console's waterfall shows it.
fn mark<T>(host: usize, tried: &Tried<T>, hedge: bool) -> Mark {
    let end = AttemptEnd::Done(Outcome::of(&tried.verdict));
    Mark::new(host, tried.started, tried.elapsed, end, hedge)
}

/// What one attempt is for.
pub(crate) struct Try<'a> {
    /// Which of the upstream's `urls`.
    pub base: usize,
    /// 1 for the first attempt, 2 for the first retry...
    pub n: u32,
    /// The backend span this attempt's client span goes under, and its name.
    pub parent: &'a Span,
    pub span_name: &'a Arc<str>,
    /// The backend's cache was asked and had nothing.
    pub cache_miss: bool,
    pub route_deadline: Instant,
    /// The caller's own timer ends the whole call at the route deadline (a fan-out's),
    /// so no second timer is needed unless a breaker must hear of a timeout.
    pub bounded: bool,
    /// A passthrough client's body streamed along: a call it failed is the client's.
    pub client: Option<&'a BodyWatch>,
    /// A hedge (docs/configuration.md#hedge): its span says so.
    pub hedge: bool,
    /// `pass_errors`: a 4xx's JSON body is read and kept ([`Failure::Passed`]).
    pub pass_errors: bool,
    /// A gRPC call: its span carries the `rpc.*` attributes.
    pub grpc: Option<&'a grpc::GrpcMethod>,
}

impl<'a> Try<'a> {
    /// A call's one attempt (passthrough, WebSocket handshake): no cache, no retry,
    /// its own timer.
    pub(crate) fn once(
        base: usize,
        parent: &'a Span,
        span_name: &'a Arc<str>,
        route_deadline: Instant,
        client: Option<&'a BodyWatch>,
    ) -> Self {
        Try {
            base,
            n: 1,
            parent,
            span_name,
            cache_miss: false,
            route_deadline,
            bounded: false,
            client,
            hedge: false,
            pass_errors: false,
            grpc: None,
        }
    }
}

/// One call as a backend asks for it (see [`Upstream::call_buffered`]).
pub struct CallSpec<'a> {
    pub method: &'a Method,
    /// Path and query, rendered.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a (Bytes, HeaderValue)>,
    /// The route deadline.
    pub deadline: Instant,
    /// What it may be retried (and hedged) after: an idempotent method, or POST with
    /// `idempotency-key`; a gRPC method by its idempotency level.
    pub retry: Retry,
    /// The backend span the attempts' client spans go under, and their name.
    pub span: &'a Span,
    pub span_name: &'a Arc<str>,
    /// The backend's cache was asked and had nothing (the attempt says so).
    pub cache_miss: bool,
    /// The client connection's part of `buffer_capacity` (h2), which the answer counts against too.
    pub share: Option<&'a Arc<Share>>,
    /// For the log line of a retried attempt.
    pub request_id: &'a HeaderValue,
    pub backend: &'a str,
    /// How the answer is read into JSON.
    pub codec: &'a Codec,
    /// `pass_errors`: a 4xx with a JSON body is kept for the client.
    pub pass_errors: bool,
}
