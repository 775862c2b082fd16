//! One client stack per upstream, built once at load and shared by every route using it.
//!
//! The pools (keep-alive connections) live here, with the breaker, limiter and
//! coalescer, which is why a reload keeps an `Upstream` whose settings did not change.
//! Calls go out through hyper's connection-level HTTP/1.1 client ([`pool`]): it takes
//! our body types as they are (a passthrough body goes upstream unboxed).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

pub mod breaker;
pub mod limit;
pub mod pool;

use crate::body::{BodyWatch, BoxError, RequestBody};
use crate::budget::{Budget, Charge, Share};
use crate::config::{DEFAULT_MAX_CONCURRENCY, UpstreamSettings};
use crate::error::{ClientFault, Failure};
use breaker::{Breaker, BreakerState, Permit};
use limit::{InFlight, Slot};
use pool::{Base, Lease, Pool};

use crate::cache::{Coalescer, Hints};
use crate::metrics::{METRICS, UpstreamMetrics};
use crate::ratelimit::Bucket;
use crate::trace::{Pending, Span};
use opentelemetry::trace::SpanKind;

pub struct Upstream {
    pub name: Arc<str>,
    pub settings: UpstreamSettings,
    /// Idle connections per worker event loop: a connection's I/O is driven by the
    /// loop that opened it, so sharing them across loops would turn every answer into
    /// a cross-thread wake-up (measured: the largest cost after malloc).
    pool: Arc<Pool>,
    next: AtomicUsize,
    breaker: Option<Breaker>,
    inflight: Option<InFlight>,
    /// The upstream's own `rate_limit`, shared by every route that calls it.
    rate: Option<Bucket>,
    /// Identical GETs in flight share one call (CONTRACT §5).
    pub coalescer: Coalescer<(Reply, u32)>,
    metrics: UpstreamMetrics,
    /// Starts this upstream's cache and coalescing keys: its name and a fingerprint of
    /// its settings, so answers of an upstream that was repointed are not served.
    pub cache_prefix: String,
    /// `buffer_capacity`, which every buffered answer is read against.
    budget: Arc<Budget>,
}

/// A 2xx answer (status, body, what its `cache-control` allows), or why not.
/// The body is held against `buffer_capacity` as long as its [`Charge`] lives.
pub type Reply = Result<(StatusCode, Bytes, Hints, Charge), Failure>;

/// Why a streamed call got no response head.
pub enum SendError {
    /// The breaker or the in-flight cap refused it; nothing was sent.
    Refused(Failure),
    Timeout,
    Transport(BoxError),
    /// The client's body failed the call (see [`BodyWatch`]): not the upstream's fault.
    Client(ClientFault),
}

/// Failures worth another attempt (CONTRACT §5).
fn retries_on(f: &Failure) -> bool {
    match f {
        Failure::Connect | Failure::Timeout => true,
        Failure::ServerError(s) => matches!(s.as_u16(), 502..=504),
        _ => false,
    }
}

/// A streamed answer's status as a call's outcome: 5xx and 4xx are failures (the
/// response is still passed on), a 101 that nothing asked for is a bad response (not
/// passed on), anything else is the upstream's answer.
pub fn classify(status: StatusCode) -> Result<StatusCode, Failure> {
    if status.is_server_error() {
        Err(Failure::ServerError(status))
    } else if status.is_client_error() {
        Err(Failure::Rejected(status))
    } else if status == StatusCode::SWITCHING_PROTOCOLS {
        Err(Failure::BadResponse(
            "an unsolicited 101 Switching Protocols",
        ))
    } else {
        Ok(status)
    }
}

/// Connect bound when the upstream sets no `timeout` (the route deadline still applies).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle-read bound for streamed (passthrough) bodies when the upstream sets no timeout.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn build(
        name: &str,
        settings: &UpstreamSettings,
        workers: usize,
        budget: &Arc<Budget>,
    ) -> Result<Self, String> {
        let tls =
            tls_config(settings.ca_file.as_deref()).map_err(|e| format!("upstream {name}: {e}"))?;
        let bases = settings
            .urls
            .iter()
            .map(Base::new)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("upstream {name}: {e}"))?;
        Ok(Upstream {
            name: Arc::from(name),
            settings: settings.clone(),
            pool: Arc::new(Pool::new(connector(settings, tls), bases, workers)),
            next: AtomicUsize::new(0),
            breaker: settings
                .circuit_breaker
                .clone()
                .map(|c| Breaker::new(Arc::from(name), c)),
            inflight: Some(InFlight::new(
                settings.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
            )),
            rate: settings.rate_limit.as_ref().map(Bucket::new),
            coalescer: Coalescer::default(),
            metrics: METRICS.upstream(name),
            cache_prefix: format!(
                "b|{name}|{:016x}|",
                crate::gateway::fingerprint(&format!("{settings:?}"))
            ),
            budget: budget.clone(),
        })
    }

    /// Where a rendered path (`/users/42?x=1`) goes: one of `urls`, round-robin, and
    /// the request target there.
    pub fn target(&self, path_and_query: String) -> Result<(usize, Uri), Failure> {
        let bases = self.pool.bases();
        let i = if bases.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % bases.len()
        };
        match bases[i].target(path_and_query) {
            Some(uri) => Ok((i, uri)),
            None => Err(Failure::BadResponse("the backend path is not a valid URL")),
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

    /// The upstream's rate limit, its place under `max_concurrency`, then the
    /// breaker's leave: load checks first, so a call shed for load never uses up a
    /// half-open probe.
    fn guards(&self) -> Result<(Option<Slot>, Option<Permit<'_>>), Failure> {
        if let Some(rate) = &self.rate {
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

    /// Calls in flight allowed at once (`max_concurrency`, or the default).
    pub fn max_concurrency(&self) -> u32 {
        self.inflight.as_ref().map_or(u32::MAX, InFlight::max)
    }

    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(Breaker::state)
    }

    /// A streamed (passthrough) call to `bases[base]`, begun at `started`: one
    /// attempt, waiting for the response head until the attempt deadline. The slot
    /// under `max_concurrency` and the connection come back with the response, to be
    /// held until its body ends, and so does the time the head took. `client` watches
    /// the client's body streamed along, if any: a call that its body failed is the
    /// client's failure, which the breaker and the upstream's metrics never see.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        base: usize,
        mut req: Request<RequestBody>,
        started: Instant,
        route_deadline: Instant,
        span: &Span,
        span_name: &Arc<str>,
        client: Option<&BodyWatch>,
    ) -> Result<(Response<Incoming>, Held, Duration), SendError> {
        let deadline = self.attempt_deadline(started, route_deadline);
        let mut attempt = ClientSpan::start(
            self,
            span,
            span_name,
            req.method(),
            &self.pool.bases()[base],
            req.uri(),
            1,
            false,
            deadline,
        );
        attempt.inject(req.headers_mut());
        let guards = self.guards();
        attempt.breaker(self, &guards);
        let (slot, permit) = match guards {
            Ok(g) => g,
            Err(f) => {
                self.metrics.observe(f.outcome(), 0.0);
                attempt.finish(Err(&f));
                return Err(SendError::Refused(f));
            }
        };
        let result = tokio::time::timeout_at(deadline, self.pool.send(base, req)).await;
        let client_fault = match (&result, client) {
            (Ok(Ok(_)), _) | (_, None) => None,
            (Ok(Err(_)), Some(watch)) => watch.fault(false),
            (Err(_), Some(watch)) => watch.fault(true),
        };
        if let Some(fault) = client_fault {
            // Dropped unrecorded: the breaker counts neither a success nor a fault.
            drop(permit);
            attempt.client_fault(fault);
            return Err(SendError::Client(fault));
        }
        // One verdict for the breaker, the metrics and the span.
        let verdict = match &result {
            Ok(Ok((resp, _))) => classify(resp.status()),
            Ok(Err(_)) => Err(Failure::Connect),
            Err(_) => Err(Failure::Timeout),
        };
        if let Some(p) = permit {
            p.record(matches!(&verdict, Err(f) if f.is_upstream_fault()));
        }
        let outcome = verdict.as_ref().map_or_else(Failure::outcome, |_| "ok");
        let elapsed = started.elapsed();
        self.metrics.observe(outcome, elapsed.as_secs_f64());
        attempt.finish(verdict.as_ref().copied());
        match result {
            Ok(Ok((resp, lease))) => Ok((
                resp,
                Held {
                    _slot: slot,
                    _conn: lease,
                },
                elapsed,
            )),
            Ok(Err(e)) => Err(SendError::Transport(e)),
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// A call whose answer must be a 2xx, retried as `retry` allows when `retryable`
    /// (an idempotent method, or POST with `idempotency-key`): only after a connect
    /// error, a timeout or a 502/503/504, and never past the route deadline. Returns
    /// the result and the number of attempts made.
    pub async fn call(&self, spec: &CallSpec<'_>) -> (Reply, u32) {
        let (attempts, backoff) = match (&self.settings.retry, spec.retryable) {
            (Some(r), true) => (r.attempts.max(1), r.backoff),
            _ => (1, Duration::ZERO),
        };
        let mut n = 0;
        loop {
            n += 1;
            let started = Instant::now();
            let result = match self.target(spec.path.to_owned()) {
                Ok((base, uri)) => self.attempt(spec, base, uri, n, started).await,
                Err(f) => Err(f),
            };
            let outcome = result.as_ref().map_or_else(Failure::outcome, |_| "ok");
            self.metrics
                .observe(outcome, started.elapsed().as_secs_f64());
            let again = n < attempts
                && matches!(&result, Err(f) if retries_on(f))
                && Instant::now() + backoff < spec.deadline;
            if !again {
                return (result, n);
            }
            tracing::debug!(upstream = %self.name, attempt = n, "retrying");
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// One attempt: guards, then head and body within the attempt deadline. With a
    /// breaker, the timer is this attempt's own even when it equals the route
    /// deadline, so the breaker hears about the timeout before the caller drops the call.
    async fn attempt(
        &self,
        spec: &CallSpec<'_>,
        base: usize,
        uri: Uri,
        n: u32,
        started: Instant,
    ) -> Reply {
        let route_deadline = spec.deadline;
        let deadline = self.attempt_deadline(started, route_deadline);
        let mut span = ClientSpan::start(
            self,
            spec.span,
            spec.span_name,
            spec.method,
            &self.pool.bases()[base],
            &uri,
            n,
            spec.cache_miss,
            deadline,
        );
        // A buffered answer needs room in `buffer_capacity`: none left, no call.
        let guards = if self.budget.has_room() {
            self.guards()
        } else {
            Err(Failure::BufferFull)
        };
        span.breaker(self, &guards);
        let (_slot, permit) = match guards {
            Ok(g) => g,
            Err(f) => {
                span.finish(Err(&f));
                return Err(f);
            }
        };
        let mut req = Request::new(RequestBody::Full(None));
        *req.method_mut() = spec.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = spec.headers.clone();
        span.inject(req.headers_mut());
        if let Some((bytes, content_type)) = spec.body {
            req.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            *req.body_mut() = RequestBody::Full(Some(bytes.clone()));
        }
        let limit = self.settings.max_response_body;
        let work = async {
            let (resp, lease) = self
                .pool
                .send(base, req)
                .await
                .map_err(|_| Failure::Connect)?;
            let status = resp.status();
            let answer = if status.is_server_error() {
                Err(Failure::ServerError(status))
            } else if status.is_client_error() {
                Err(Failure::Rejected(status))
            } else if status.is_redirection() {
                Err(Failure::BadResponse("a redirect"))
            } else if !status.is_success() {
                Err(Failure::BadResponse("an unexpected status"))
            } else {
                let hints = Hints::from_headers(resp.headers());
                read_limited(resp, limit, &self.budget, spec.share)
                    .await
                    .map(|(body, charge)| (status, body, hints, charge))
            };
            // The lease goes back whatever the answer was: a short error body is
            // usually in with the head, so the connection stays usable.
            drop(lease);
            answer
        };
        let result = if permit.is_none() && deadline >= route_deadline {
            // No breaker needs to hear of a timeout, and the caller's route deadline
            // already bounds this call: one timer fewer per call on the hot path.
            work.await
        } else {
            tokio::time::timeout_at(deadline, work)
                .await
                .unwrap_or(Err(Failure::Timeout))
        };
        if let Some(p) = permit {
            p.record(matches!(&result, Err(f) if f.is_upstream_fault()));
        }
        span.finish(result.as_ref().map(|(status, ..)| *status));
        result
    }
}

/// One call as a backend asks for it (see [`Upstream::call`]).
pub struct CallSpec<'a> {
    pub method: &'a Method,
    /// Path and query, rendered.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a (Bytes, HeaderValue)>,
    /// The route deadline.
    pub deadline: Instant,
    /// An idempotent method, or POST with `idempotency-key`.
    pub retryable: bool,
    /// The backend span the attempts' client spans go under, and their name.
    pub span: &'a Span,
    pub span_name: &'a Arc<str>,
    /// The backend's cache was asked and had nothing (the attempt says so).
    pub cache_miss: bool,
    /// The client connection's part of `buffer_capacity` (h2), which the answer counts against too.
    pub share: Option<&'a Arc<Share>>,
}

/// The client span of one attempt (CONTRACT §6), marked as cut short if the attempt
/// is dropped before it finishes.
struct ClientSpan(Pending);

impl ClientSpan {
    #[allow(clippy::too_many_arguments)]
    fn start(
        up: &Upstream,
        parent: &Span,
        name: &Arc<str>,
        method: &Method,
        base: &Base,
        target: &Uri,
        attempt: u32,
        cache_miss: bool,
        deadline: Instant,
    ) -> ClientSpan {
        let span = parent.child(name, SpanKind::Client, |a| {
            a.str("http.request.method", method.as_str());
            // Pieces that are strings already, so no formatting here.
            let uri = &base.origin;
            let full = (uri.scheme_str(), uri.authority(), target.path_and_query());
            if let (Some(scheme), Some(authority), Some(pq)) = full {
                a.concat(
                    "url.full",
                    &[scheme, "://", authority.as_str(), pq.as_str()],
                );
            }
            if let Some(host) = uri.host() {
                a.str("server.address", host);
            }
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            a.int("server.port", i64::from(port));
            a.str("manifold.upstream", &up.name);
            a.int("manifold.attempt", i64::from(attempt));
            if attempt > 1 {
                a.int("http.request.resend_count", i64::from(attempt - 1));
            }
            if cache_miss {
                a.str("manifold.cache", "miss");
            }
        });
        ClientSpan(Pending::new(span, deadline))
    }

    /// The breaker's state as this attempt met it: `closed` or `half_open` (the
    /// probe) when let through, `open` when refused.
    fn breaker(
        &mut self,
        up: &Upstream,
        guards: &Result<(Option<Slot>, Option<Permit<'_>>), Failure>,
    ) {
        let state = match guards {
            Ok((_, Some(permit))) => permit.state(),
            Err(Failure::CircuitOpen { .. }) => BreakerState::Open,
            // Shed by a load guard before the breaker was asked.
            _ => match up.breaker_state() {
                Some(s) => s,
                None => return,
            },
        };
        self.0
            .span
            .record(|a| a.str("manifold.breaker.state", state.as_str()));
    }

    fn inject(&self, headers: &mut HeaderMap) {
        self.0.span.inject(headers);
    }

    /// Ends a call the client's body failed: not an error of the upstream's.
    fn client_fault(&mut self, fault: ClientFault) {
        let span = self.0.finish();
        if span.is_on() {
            span.record(|a| a.str("manifold.client_fault", fault.describe()));
            span.end();
        }
    }

    /// Records how the attempt went and ends the span.
    fn finish(&mut self, result: Result<StatusCode, &Failure>) {
        let span = self.0.finish();
        if !span.is_on() {
            return;
        }
        match result {
            Ok(status) => {
                span.record(|a| a.int("http.response.status_code", i64::from(status.as_u16())));
            }
            Err(f) => {
                if let Failure::ServerError(s) | Failure::Rejected(s) = f {
                    span.record(|a| a.int("http.response.status_code", i64::from(s.as_u16())));
                }
                span.fail(f.outcome(), || f.describe());
            }
        }
        span.end();
    }
}

/// Reads a whole body, refusing one larger than `limit` bytes without buffering it all,
/// and one whose buffer would pass `buffer_capacity` as it grows. What is charged is
/// the memory taken, not the bytes read: a buffer that doubles as an unannounced body
/// arrives holds up to twice them (an announced length is reserved exactly).
async fn read_limited(
    resp: Response<Incoming>,
    limit: u64,
    budget: &Arc<Budget>,
    share: Option<&Arc<Share>>,
) -> Result<(Bytes, Charge), Failure> {
    const TOO_LARGE: Failure = Failure::BadResponse("the body is larger than max_response_body");
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(TOO_LARGE);
    }
    let mut body = resp.into_body();
    let charge = budget.start(share);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Connect)?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + first.as_ref().map_or(0, Bytes::len) + chunk.len();
        if total as u64 > limit {
            return Err(TOO_LARGE);
        }
        // Most JSON answers arrive in one chunk: keep it without copying.
        let held = match first.take() {
            None if buf.is_empty() => {
                first = Some(chunk);
                total
            }
            f => {
                let needed = f.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len();
                if buf.capacity() < needed {
                    buf.reserve(declared.map_or(needed, |d| d as usize).max(needed) - buf.len());
                }
                if let Some(f) = f {
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&chunk);
                buf.capacity()
            }
        };
        if !charge.grow((held as u64).saturating_sub(charge.bytes())) {
            return Err(Failure::BufferFull);
        }
    }
    let body = match first {
        Some(only) => only,
        // A buffer that doubled past the body is copied down to size, so the answer
        // holds (and is charged for) no more than itself while it waits to be merged.
        None if buf.capacity() > buf.len() + buf.len() / 4 => {
            let exact = Bytes::copy_from_slice(&buf);
            drop(buf);
            charge.shrink_to(exact.len() as u64);
            exact
        }
        None => buf.freeze(),
    };
    Ok((body, charge))
}

fn connector(
    settings: &UpstreamSettings,
    tls: rustls::ClientConfig,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    // The TLS wrapper below decides per URL; the inner connector must accept https too.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(
        settings
            .timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .min(DEFAULT_CONNECT_TIMEOUT),
    ));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// What a streamed answer holds until its body ends: its place under
/// `max_concurrency`, and its connection.
pub struct Held {
    _slot: Option<Slot>,
    _conn: Lease,
}

/// The platform's roots (as browsers and curl trust them), plus `ca_file` if set.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut extra = Vec::new();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
        {
            extra.push(cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?);
        }
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("cannot set up TLS verification: {e}"))?;
    // `dangerous()` is rustls' gate for any custom verifier; this one is the platform
    // verifier (full chain and hostname checks), the same that reqwest and curl use.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}
