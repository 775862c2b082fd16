//! Prometheus metrics on the admin listener's `/metrics` (docs/operations.md#metrics). The
//! names are a contract: dashboards and alerts depend on them.
//!
//! One registry for the process, its families registered in one table
//! ([`Metrics::new`]). Every series a request can touch is a handle made before the
//! request: when the metrics are made (the fixed label sets of [`labels`]: cache
//! results, close reasons, Redis operations…), or when a config is compiled (per route,
//! upstream, validator, listener), or at a route's first answer with a status code. So
//! counting on the request path is an atomic update at an array index: no label is
//! built, hashed or looked up, no lock is taken and nothing is allocated
//! (`tests/metrics_alloc.rs` counts the allocations). Labels are bounded: route names
//! or templates (`unmatched` when no route matched), upstream names, status codes
//! (100–599), methods (the standard ones, else `OTHER`), fixed words.
//! [`process`] reads the process's own figures at scrape time.

pub mod labels;
mod process;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::base::coding::Coding;
use crate::base::error::{Outcome, Part};
use labels::{
    AuthResult, CacheKind, CacheResult, CloseReason, Dropped, Hedge, IdempotencyResult, METHODS,
    RedisOp, RedisResult, Reload, SpanExport, method_index,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamName {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    upstream: String,
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResult {
    upstream: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteName {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteEncoding {
    route: String,
    encoding: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// `{route, in}`: `in` is a keyword in Rust, so the set is written out.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RoutePart {
    route: String,
    part: Part,
}

impl prometheus_client::encoding::EncodeLabelSet for RoutePart {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        [("route", self.route.as_str()), ("in", self.part.as_str())].encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResult {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidatorResult {
    validator: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResult {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabel {
    holder: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FingerprintLabel {
    fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: String,
    reason: &'static str,
}

/// Seconds: 1 ms to 10 s, the range a gateway's answers live in.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    requests: Histograms<RequestLabels>,
    upstream: Histograms<UpstreamLabels>,
    breaker: Family<UpstreamName, Gauge>,
    host_state: Family<HostLabels, Gauge>,
    hedges: Family<UpstreamResult, Counter>,
    budget_exhausted: Family<UpstreamName, Counter>,
    websocket_tunnels: Family<RouteName, Gauge>,
    /// By [`CacheKind`], then [`CacheResult`].
    cache: Vec<Vec<Counter>>,
    rate_limited: Family<RouteName, Counter>,
    pub inflight: Gauge,
    /// By [`Reload`].
    reloads: Vec<Counter>,
    tls_reloads: Vec<Counter>,
    auth: Family<RouteResult, Counter>,
    jwks: Family<ValidatorResult, Counter>,
    shared_up: Gauge,
    shared_ops: Family<OpResult, Counter>,
    shared_dropped: Family<ReasonLabel, Counter>,
    descriptors: Family<HolderLabel, Gauge>,
    descriptors_max: Family<HolderLabel, Gauge>,
    descriptors_refused: Family<HolderLabel, Counter>,
    /// Made at the first export (by [`SpanExport`]), so a gateway without tracing
    /// shows none.
    trace_spans: (Family<ResultLabel, Counter>, OnceLock<Vec<Counter>>),
    connections: Family<ListenerLabel, Gauge>,
    connections_refused: Family<ListenerLabel, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    buffered: Gauge,
    buffer_capacity: Gauge,
    rate_limit_keys: Family<RouteName, Gauge>,
    config_info: Family<FingerprintLabel, Gauge>,
    config_reloaded_at: Gauge<f64, AtomicU64>,
    compressed: Family<RouteEncoding, Counter>,
    /// Bytes of compressed answers: uncompressed in, compressed out.
    compression_bytes: [Counter; 2],
    not_modified: Family<RouteName, Counter>,
    validation_failures: Family<RoutePart, Counter>,
    idempotency: Family<RouteResult, Counter>,
    /// The request histograms of requests no route matched.
    unmatched: RouteMetrics,
    process: process::Process,
}

impl Metrics {
    /// Every family, registered once: the table of what `/metrics` shows.
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests: Histograms<RequestLabels> =
            Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "http_server_request_duration_seconds",
            "Time to answer client requests, by route, method and status code",
            requests.clone(),
        );
        let upstream: Histograms<UpstreamLabels> =
            Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "manifold_upstream_request_duration_seconds",
            "Time of calls to upstreams (each attempt), by upstream and outcome",
            upstream.clone(),
        );
        let breaker = Family::<UpstreamName, Gauge>::default();
        registry.register(
            "manifold_circuit_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        let host_state = Family::<HostLabels, Gauge>::default();
        registry.register(
            "manifold_upstream_host_state",
            "Each upstream host: 0 in rotation, 1 ejected (outlier), 2 unhealthy (health check)",
            host_state.clone(),
        );
        let hedges = Family::<UpstreamResult, Counter>::default();
        registry.register(
            "manifold_hedges",
            "Hedged attempts by upstream and result: won (its answer was used), lost",
            hedges.clone(),
        );
        let budget_exhausted = Family::<UpstreamName, Counter>::default();
        registry.register(
            "manifold_retry_budget_exhausted",
            "Retries and hedges not sent because the upstream's retry budget was spent",
            budget_exhausted.clone(),
        );
        let websocket_tunnels = Family::<RouteName, Gauge>::default();
        registry.register(
            "manifold_websocket_tunnels",
            "WebSocket tunnels open now, by route",
            websocket_tunnels.clone(),
        );
        let cache_family = Family::<CacheLabels, Counter>::default();
        registry.register(
            "manifold_cache_requests",
            "Cache lookups by cache (route, backend) and result (hit, miss, stale)",
            cache_family.clone(),
        );
        let cache = CacheKind::ALL
            .iter()
            .map(|k| {
                CacheResult::ALL
                    .iter()
                    .map(|r| {
                        cache_family
                            .get_or_create(&CacheLabels {
                                cache: k.as_str(),
                                result: r.as_str(),
                            })
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let rate_limited = Family::<RouteName, Counter>::default();
        registry.register(
            "manifold_rate_limited",
            "Requests refused by a route's rate limit",
            rate_limited.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "manifold_inflight_requests",
            "Client requests being served now",
            inflight.clone(),
        );
        let results = |family: &Family<ResultLabel, Counter>| -> Vec<Counter> {
            Reload::ALL
                .iter()
                .map(|r| {
                    family
                        .get_or_create(&ResultLabel { result: r.as_str() })
                        .clone()
                })
                .collect()
        };
        let reloads_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "manifold_config_reloads",
            "Config reloads by result (ok, error)",
            reloads_family.clone(),
        );
        let reloads = results(&reloads_family);
        let tls_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "manifold_tls_certificate_reloads",
            "Listener certificates re-read because their files changed, by result (ok: serving the new pair; error: unusable, the previous one keeps serving)",
            tls_family.clone(),
        );
        let tls_reloads = results(&tls_family);
        let auth = Family::<RouteResult, Counter>::default();
        registry.register(
            "manifold_auth",
            "Token checks by route and result (ok, missing, invalid, forbidden, unavailable)",
            auth.clone(),
        );
        let jwks = Family::<ValidatorResult, Counter>::default();
        registry.register(
            "manifold_jwks_refresh",
            "Key set fetches (JWKS URL) and reads (JWKS file) by validator and result (ok, error)",
            jwks.clone(),
        );
        let shared_up = Gauge::default();
        registry.register(
            "manifold_shared_up",
            "1 while the [shared] Redis answers, 0 while each replica decides alone",
            shared_up.clone(),
        );
        let ops_family = Family::<OpResult, Counter>::default();
        registry.register(
            "manifold_shared_ops",
            "Operations on the [shared] Redis by op (rate_limit, cache_get, cache_set) and result (ok, error, timeout)",
            ops_family.clone(),
        );
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "manifold_shared_entries_dropped",
            "Cache entries read from Redis and not used, by reason (too_large: over max_entry, not read whole; unsigned or forged: with [shared] secret, no valid signature; implausible: stored in the future)",
            dropped_family.clone(),
        );
        let descriptors = Family::<HolderLabel, Gauge>::default();
        registry.register(
            "manifold_descriptors",
            "File descriptors held now, by holder (connection: client connections; tunnel: WebSocket tunnels' upstream sides; upstream: upstream connections)",
            descriptors.clone(),
        );
        let descriptors_max = Family::<HolderLabel, Gauge>::default();
        registry.register(
            "manifold_descriptors_max",
            "The most each holder may hold (the descriptor limit less a reserve; see docs/operations.md)",
            descriptors_max.clone(),
        );
        let descriptors_refused = Family::<HolderLabel, Counter>::default();
        registry.register(
            "manifold_descriptors_refused",
            "Connections, tunnels and upstream connections refused because their share of the descriptor limit was in use",
            descriptors_refused.clone(),
        );
        let spans_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "manifold_trace_spans",
            "Spans for the OTLP collector, by result (exported, failed, dropped when the export queue was full)",
            spans_family.clone(),
        );
        let connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "manifold_client_connections",
            "Client connections open now, by listener (public, admin)",
            connections.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "manifold_connections_refused",
            "Client connections closed at accept because max_connections were open",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "manifold_connections_closed",
            "Client connections closed by a bound (header_timeout, idle, send_timeout), a failed TLS handshake (tls_handshake), or another protocol than ALPN chose (alpn_mismatch)",
            connections_closed.clone(),
        );
        let buffered = Gauge::default();
        registry.register(
            "manifold_buffered_bytes",
            "Bytes of answers held in memory now (upstream bodies and unsent answers)",
            buffered.clone(),
        );
        let buffer_capacity = Gauge::default();
        registry.register(
            "manifold_buffer_capacity_bytes",
            "buffer_capacity: past it new upstream calls fail with OVERLOADED",
            buffer_capacity.clone(),
        );
        let rate_limit_keys = Family::<RouteName, Gauge>::default();
        registry.register(
            "manifold_rate_limit_keys",
            "Keys a route's rate limit remembers now (at most its max_keys)",
            rate_limit_keys.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            "manifold_build_info",
            "Always 1; the label says which manifold this is",
            build_info,
        );
        let config_info = Family::<FingerprintLabel, Gauge>::default();
        registry.register(
            "manifold_config_info",
            "Always 1, for the config serving now; fingerprint is the start of the file's SHA-256 (sha256sum routes.toml)",
            config_info.clone(),
        );
        let config_reloaded_at = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "manifold_config_last_reload_success_timestamp_seconds",
            "When the config serving now was loaded (Unix time): at start or by the last reload that succeeded",
            config_reloaded_at.clone(),
        );
        let compressed = Family::<RouteEncoding, Counter>::default();
        registry.register(
            "manifold_compressed_responses",
            "Answers sent compressed, by route and encoding (br, zstd, gzip)",
            compressed.clone(),
        );
        let bytes_family = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "manifold_compression_bytes",
            "Bytes of compressed answers: in, their uncompressed bodies; out, what was sent",
            bytes_family.clone(),
        );
        let compression_bytes = ["in", "out"].map(|direction| {
            bytes_family
                .get_or_create(&DirectionLabel { direction })
                .clone()
        });
        let not_modified = Family::<RouteName, Counter>::default();
        registry.register(
            "manifold_not_modified",
            "Requests answered 304 Not Modified (their if-none-match matched the answer's etag), by route",
            not_modified.clone(),
        );
        let validation_failures = Family::<RoutePart, Counter>::default();
        registry.register(
            "manifold_validation_failures",
            "Requests refused by a route's `validate` schemas (400 INVALID_REQUEST, 415), by route and the part that failed (params, query, body)",
            validation_failures.clone(),
        );
        let idempotency = Family::<RouteResult, Counter>::default();
        registry.register(
            "manifold_idempotency",
            "Requests with an idempotency key (or missing one where required), by route and result (stored, replayed, in_progress, reused, missing, invalid, too_large, not_stored)",
            idempotency.clone(),
        );
        let process = process::Process::register(&mut registry);
        let unmatched = RouteMetrics::new(&requests, "unmatched", Counter::default());
        Metrics {
            registry,
            requests,
            upstream,
            breaker,
            host_state,
            hedges,
            budget_exhausted,
            websocket_tunnels,
            cache,
            rate_limited,
            inflight,
            reloads,
            tls_reloads,
            auth,
            jwks,
            shared_up,
            shared_ops: ops_family,
            shared_dropped: dropped_family,
            descriptors,
            descriptors_max,
            descriptors_refused,
            trace_spans: (spans_family, OnceLock::new()),
            connections,
            connections_refused,
            connections_closed,
            buffered,
            buffer_capacity,
            rate_limit_keys,
            config_info,
            config_reloaded_at,
            compressed,
            compression_bytes,
            not_modified,
            validation_failures,
            idempotency,
            unmatched,
            process,
        }
    }
}

// === handles, made before the requests that count with them ===

/// Status codes a request histogram can carry: 100 to 599.
const STATUSES: usize = 500;

/// A method's histograms by status code (index `status - 100`), each made at first use.
type ByStatus = OnceLock<Box<[OnceLock<Histogram>]>>;

/// One route's request histograms: per method label and status code, each made at its
/// first use (one labelled lookup) and an atomic observe after that — no series for
/// codes or methods a route never answers, and no lookup on the request path.
#[derive(Clone)]
pub struct RouteMetrics {
    route: Arc<str>,
    family: Histograms<RequestLabels>,
    by_method: Arc<[ByStatus; METHODS.len()]>,
    rate_limited: Counter,
}

impl RouteMetrics {
    fn new(family: &Histograms<RequestLabels>, route: &str, rate_limited: Counter) -> Self {
        RouteMetrics {
            route: Arc::from(route),
            family: family.clone(),
            by_method: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            rate_limited,
        }
    }

    /// One answer of this route with `status`, to a request of `method`.
    pub fn observe(&self, method: &http::Method, status: u16, secs: f64) {
        let m = method_index(method);
        let i = usize::from(status.clamp(100, 599) - 100);
        let statuses =
            self.by_method[m].get_or_init(|| (0..STATUSES).map(|_| OnceLock::new()).collect());
        statuses[i]
            .get_or_init(|| {
                self.family
                    .get_or_create(&RequestLabels {
                        route: self.route.clone(),
                        method: METHODS[m],
                        status: status.clamp(100, 599),
                    })
                    .clone()
            })
            .observe(secs);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Requests refused by the route's rate limits since start.
    pub fn rate_limited_count(&self) -> u64 {
        self.rate_limited.get()
    }
}

/// The results of a route's token checks, by [`AuthResult`].
#[derive(Clone)]
pub struct AuthMetrics {
    by_result: Vec<Counter>,
}

impl AuthMetrics {
    pub fn count(&self, result: AuthResult) {
        self.by_result[result as usize].inc();
    }
}

/// One token validator's key fetches (or file reads).
#[derive(Clone)]
pub struct JwksMetrics {
    pub ok: Counter,
    pub error: Counter,
}

/// One upstream's series: call histograms by outcome, hedges, retries refused.
#[derive(Clone)]
pub struct UpstreamMetrics {
    by_outcome: [Histogram; 6],
    hedges: [Counter; 2],
    budget_exhausted: Counter,
}

impl UpstreamMetrics {
    /// Counts a call's end; outcomes that are not the upstream's (`client_error`,
    /// `dependency_failed`) are not counted here.
    pub fn observe(&self, outcome: Outcome, secs: f64) {
        // `Outcome::UPSTREAM` lists the first variants in order.
        if let Some(h) = self.by_outcome.get(outcome as usize) {
            h.observe(secs);
        }
    }

    /// A hedge's end: `Won` when its answer was the one used.
    pub fn hedge(&self, result: Hedge) {
        self.hedges[result as usize].inc();
    }

    /// A retry or hedge the budget did not allow.
    pub fn retry_budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }

    /// Since start: hedges sent (won or lost), and retries and hedges refused.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hedges.iter().map(Counter::get).sum(),
            self.budget_exhausted.get(),
        )
    }
}

/// One listener's connection counts.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
    closed: Vec<Counter>,
}

impl ConnectionMetrics {
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].inc();
    }
}

/// `[shared]`: whether Redis is usable now, its operations, the entries not used.
#[derive(Clone)]
pub struct RedisMetrics {
    pub up: Gauge,
    /// By [`RedisOp`], then [`RedisResult`].
    ops: Arc<Vec<Vec<Counter>>>,
    dropped: Arc<Vec<Counter>>,
}

impl RedisMetrics {
    pub fn count(&self, op: RedisOp, result: RedisResult) {
        self.ops[op as usize][result as usize].inc();
    }

    pub fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].inc();
    }
}

/// The descriptor budget's series, by holder index.
pub struct DescriptorMetrics {
    pub open: [Gauge; 3],
    pub max: [Gauge; 3],
    pub refused: [Counter; 3],
}

/// A route's answers on the wire: compressed per coding, and 304s.
#[derive(Clone, Default)]
pub struct WireMetrics {
    /// By [`Coding::index`].
    compressed: [Counter; 3],
    not_modified: Counter,
}

impl WireMetrics {
    pub fn compressed(&self, coding: Coding) {
        self.compressed[coding.index()].inc();
    }

    pub fn not_modified(&self) {
        self.not_modified.inc();
    }
}

impl Metrics {
    /// Made when a route is compiled: a series per coding it may answer with, and
    /// its 304s where it can send them.
    pub fn wire(&self, route: &str, codings: &[Coding], revalidates: bool) -> WireMetrics {
        let mut m = WireMetrics::default();
        for &c in codings {
            m.compressed[c.index()] = self
                .compressed
                .get_or_create(&RouteEncoding {
                    route: route.to_string(),
                    encoding: c.as_str(),
                })
                .clone();
        }
        if revalidates {
            m.not_modified = self
                .not_modified
                .get_or_create(&RouteName {
                    route: route.to_string(),
                })
                .clone();
        }
        m
    }

    /// Bytes of one compressed answer (or a piece of a streamed one): `input`
    /// uncompressed, `output` sent.
    pub fn compression_bytes(&self, input: u64, output: u64) {
        self.compression_bytes[0].inc_by(input);
        self.compression_bytes[1].inc_by(output);
    }

    /// Made when a route is compiled.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let rate_limited = self
            .rate_limited
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics::new(&self.requests, route, rate_limited)
    }

    /// The request histograms of requests no route matched (`route="unmatched"`).
    pub fn unmatched(&self) -> &RouteMetrics {
        &self.unmatched
    }

    /// Made when a route with `validate` is compiled: one counter per part, in
    /// [`Part::ALL`] order.
    pub fn validation(&self, route: &str) -> [Counter; 3] {
        Part::ALL.map(|part| {
            self.validation_failures
                .get_or_create(&RoutePart {
                    route: route.to_string(),
                    part,
                })
                .clone()
        })
    }

    /// Made when a route with `idempotency` is compiled: one counter per result, in
    /// [`IdempotencyResult::ALL`] order, every series from the start.
    pub fn idempotency(&self, route: &str) -> Vec<Counter> {
        IdempotencyResult::ALL
            .iter()
            .map(|r| {
                self.idempotency
                    .get_or_create(&RouteResult {
                        route: route.to_string(),
                        result: r.as_str(),
                    })
                    .clone()
            })
            .collect()
    }

    /// Made when a route with `auth` is compiled: every result shows from the start.
    pub fn auth(&self, route: &str) -> AuthMetrics {
        let by_result = AuthResult::ALL
            .iter()
            .map(|r| {
                self.auth
                    .get_or_create(&RouteResult {
                        route: route.to_string(),
                        result: r.as_str(),
                    })
                    .clone()
            })
            .collect();
        AuthMetrics { by_result }
    }

    /// The descriptor budget's series, one per holder (named by `holders`, in the
    /// order the shares index them).
    pub fn descriptors(&self, holders: [&'static str; 3]) -> DescriptorMetrics {
        let label = |holder: &'static str| HolderLabel { holder };
        DescriptorMetrics {
            open: holders.map(|h| self.descriptors.get_or_create(&label(h)).clone()),
            max: holders.map(|h| self.descriptors_max.get_or_create(&label(h)).clone()),
            refused: holders.map(|h| self.descriptors_refused.get_or_create(&label(h)).clone()),
        }
    }

    /// Made when `[shared]` starts (its series show from then on).
    pub fn redis(&self) -> RedisMetrics {
        let ops = RedisOp::ALL
            .iter()
            .map(|op| {
                RedisResult::ALL
                    .iter()
                    .map(|r| {
                        self.shared_ops
                            .get_or_create(&OpResult {
                                op: op.as_str(),
                                result: r.as_str(),
                            })
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let dropped = Dropped::ALL
            .iter()
            .map(|d| {
                self.shared_dropped
                    .get_or_create(&ReasonLabel { reason: d.as_str() })
                    .clone()
            })
            .collect();
        RedisMetrics {
            up: self.shared_up.clone(),
            ops: Arc::new(ops),
            dropped: Arc::new(dropped),
        }
    }

    pub fn jwks(&self, validator: &str) -> JwksMetrics {
        let one = |result: Reload| {
            self.jwks
                .get_or_create(&ValidatorResult {
                    validator: validator.to_string(),
                    result: result.as_str(),
                })
                .clone()
        };
        JwksMetrics {
            ok: one(Reload::Ok),
            error: one(Reload::Error),
        }
    }

    /// Made when an upstream is built.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let by_outcome = Outcome::UPSTREAM.map(|outcome| {
            self.upstream
                .get_or_create(&UpstreamLabels {
                    upstream: name.to_string(),
                    outcome: outcome.as_str(),
                })
                .clone()
        });
        let hedge = |result: Hedge| {
            self.hedges
                .get_or_create(&UpstreamResult {
                    upstream: name.to_string(),
                    result: result.as_str(),
                })
                .clone()
        };
        UpstreamMetrics {
            by_outcome,
            hedges: [hedge(Hedge::Won), hedge(Hedge::Lost)],
            budget_exhausted: self
                .budget_exhausted
                .get_or_create(&UpstreamName {
                    upstream: name.to_string(),
                })
                .clone(),
        }
    }

    /// A lookup of the route or backend cache.
    pub fn cache_result(&self, kind: CacheKind, result: CacheResult) {
        self.cache[kind as usize][result as usize].inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads[if ok { Reload::Ok } else { Reload::Error } as usize].inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads[if ok { Reload::Ok } else { Reload::Error } as usize].inc();
    }

    /// Spans handed to the exporter and what became of them.
    pub fn trace_spans(&self, result: SpanExport, n: u64) {
        let (family, counters) = &self.trace_spans;
        let counters = counters.get_or_init(|| {
            SpanExport::ALL
                .iter()
                .map(|r| {
                    family
                        .get_or_create(&ResultLabel { result: r.as_str() })
                        .clone()
                })
                .collect()
        });
        counters[result as usize].inc_by(n);
    }

    /// A listener's connection counters (made once per listener).
    pub fn connections(&self, listener: &str) -> ConnectionMetrics {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        ConnectionMetrics {
            open: self.connections.get_or_create(&label).clone(),
            refused: self.connections_refused.get_or_create(&label).clone(),
            closed: CloseReason::ALL
                .iter()
                .map(|reason| {
                    self.connections_closed
                        .get_or_create(&ClosedLabels {
                            listener: listener.to_string(),
                            reason: reason.as_str(),
                        })
                        .clone()
                })
                .collect(),
        }
    }

    /// The open-tunnels gauge of a `websocket = true` route (0 from the start).
    pub fn websocket_tunnels(&self, route: &str) -> Gauge {
        self.websocket_tunnels
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .clone()
    }

    // === read at scrape time, off the request path ===

    /// Keys a route's limiter holds.
    pub fn rate_limit_keys(&self, route: &str, keys: u64) {
        self.rate_limit_keys
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The buffer budget's use and limit.
    pub fn buffers(&self, used: u64, limit: u64) {
        self.buffered.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.buffer_capacity
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub fn breaker_state(&self, upstream: &str, state: i64) {
        self.breaker
            .get_or_create(&UpstreamName {
                upstream: upstream.to_string(),
            })
            .set(state);
    }

    /// A host's state (0 in rotation, 1 ejected, 2 unhealthy).
    pub fn host_state(&self, upstream: &str, host: &str, state: i64) {
        self.host_state
            .get_or_create(&HostLabels {
                upstream: upstream.to_string(),
                host: host.to_string(),
            })
            .set(state);
    }

    /// The config that serves now: its fingerprint, and when it was loaded.
    pub fn config_loaded(&self, fingerprint: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&FingerprintLabel {
                fingerprint: fingerprint.to_string(),
            })
            .set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_reloaded_at.set(now.as_secs_f64());
    }

    /// Reads the process metrics (Linux `/proc`; elsewhere they stay 0).
    pub fn sample_process(&self) {
        self.process.sample();
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same families in the Prometheus text format 0.0.4 (what `promtool check
    /// metrics` and scrapers that do not ask for OpenMetrics read).
    pub fn encode_text(&self) -> String {
        text_004(&self.encode())
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's `# HELP` and
/// `# TYPE` name its samples' `_total` name, and there is no `# EOF` (nor `# UNIT`,
/// which 0.0.4 lacks). Every sample line stays as it is.
fn text_004(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 8 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let (name, tail) = line.strip_prefix(p)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP b Bytes.\n# TYPE b gauge\n# UNIT b bytes\nb 1\n# EOF\n";
        assert_eq!(
            super::text_004(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP b Bytes.\n# TYPE b gauge\nb 1\n"
        );
    }
}
