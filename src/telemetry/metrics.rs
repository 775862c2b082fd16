//! Prometheus metrics on the admin listener's `/metrics` (docs/operations.md#metrics). The
//! names are a contract: dashboards and alerts depend on them.
//!
//! One registry for the process. Handles are made when a config is compiled (per route,
//! per upstream), so the request path only does atomic observes: no label hashing, no
//! lock, no allocation. Labels are bounded: route names or templates (`unmatched` when
//! no route matched), upstream names, status codes (100–599), fixed outcome words.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::base::error::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    outcome: String,
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
    cache: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteName {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResult {
    route: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidatorResult {
    validator: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResult {
    op: String,
    result: String,
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
    result: String,
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
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    upstream: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    breaker: Family<UpstreamName, Gauge>,
    host_state: Family<HostLabels, Gauge>,
    hedges: Family<UpstreamResult, Counter>,
    budget_exhausted: Family<UpstreamName, Counter>,
    websocket_tunnels: Family<RouteName, Gauge>,
    cache: Family<CacheLabels, Counter>,
    rate_limited: Family<RouteName, Counter>,
    pub inflight: Gauge,
    reloads: Family<ResultLabel, Counter>,
    tls_reloads: Family<ResultLabel, Counter>,
    auth: Family<RouteResult, Counter>,
    jwks: Family<ValidatorResult, Counter>,
    shared_up: Gauge,
    shared_ops: Family<OpResult, Counter>,
    shared_dropped: Family<ReasonLabel, Counter>,
    descriptors: Family<HolderLabel, Gauge>,
    descriptors_max: Family<HolderLabel, Gauge>,
    descriptors_refused: Family<HolderLabel, Counter>,
    trace_spans: Family<ResultLabel, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    connections_refused: Family<ListenerLabel, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    buffered: Gauge,
    buffer_capacity: Gauge,
    rate_limit_keys: Family<RouteName, Gauge>,
    config_info: Family<FingerprintLabel, Gauge>,
    config_reloaded_at: Gauge<f64, AtomicU64>,
    process: Process,
}

/// The standard process metrics (as Prometheus' client libraries name them), read
/// from /proc at scrape time.
struct Process {
    resident: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
    cpu: Counter<f64, AtomicU64>,
    /// CPU seconds already counted, so a scrape adds only what is new.
    cpu_counted: std::sync::Mutex<f64>,
}

/// Why a client connection was closed by one of its bounds, in `ClosedLabels` order.
pub const CLOSE_REASONS: [&str; 4] = ["header_timeout", "idle", "send_timeout", "tls_handshake"];

/// One listener's connection counts.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
    closed: [Counter; CLOSE_REASONS.len()],
}

impl ConnectionMetrics {
    pub fn closed(&self, reason: &str) {
        if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.closed[i].inc();
        }
    }
}

/// Seconds: 1 ms to 10 s, the range a gateway's answers live in.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Status codes a request histogram can carry: 100 to 599.
const STATUSES: usize = 500;

/// One route's request histograms, one per status code sent, each made at its first
/// use (a labelled lookup once) and an atomic observe after that: no series for codes
/// a route never sends, and no lookup on the request path.
#[derive(Clone)]
pub struct RouteMetrics {
    labels: Arc<(String, String)>,
    by_status: Arc<[OnceLock<Histogram>]>,
    rate_limited: Counter,
}

/// The results of a route's token checks, in [`AUTH_RESULTS`] order.
#[derive(Clone)]
pub struct AuthMetrics {
    by_result: [Counter; 5],
}

/// `manifold_auth_total{result}`: a valid token (or none on an `optional` route with
/// `missing`), and the failures of the table in docs/configuration.md#routes (`auth`).
pub const AUTH_RESULTS: [&str; 5] = ["ok", "missing", "invalid", "forbidden", "unavailable"];

impl AuthMetrics {
    pub fn count(&self, result: &str) {
        if let Some(i) = AUTH_RESULTS.iter().position(|r| *r == result) {
            self.by_result[i].inc();
        }
    }
}

/// One token validator's key fetches (or file reads).
#[derive(Clone)]
pub struct JwksMetrics {
    pub ok: Counter,
    pub error: Counter,
}

/// `[shared]`: whether Redis is usable now, and its operations by result.
#[derive(Clone)]
pub struct SharedMetrics {
    pub up: Gauge,
    ops: Family<OpResult, Counter>,
    dropped: [Counter; Dropped::ALL.len()],
}

/// The descriptor budget's series, by holder index.
pub struct DescriptorMetrics {
    pub open: [Gauge; 3],
    pub max: [Gauge; 3],
    pub refused: [Counter; 3],
}

/// Why an entry read from Redis was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Larger than `max_entry`: refused without reading it whole.
    TooLarge,
    /// With `[shared] secret`: no signature.
    Unsigned,
    /// With `[shared] secret`: a signature that does not verify (a forged entry, or
    /// one moved from another key), or a signed entry read without a secret.
    Forged,
    /// Stored in the future.
    Implausible,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::TooLarge,
        Dropped::Unsigned,
        Dropped::Forged,
        Dropped::Implausible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::TooLarge => "too_large",
            Dropped::Unsigned => "unsigned",
            Dropped::Forged => "forged",
            Dropped::Implausible => "implausible",
        }
    }
}

impl SharedMetrics {
    /// `op`: `rate_limit`, `cache_get`, `cache_set`; `result`: `ok`, `error`, `timeout`.
    pub fn count(&self, op: &str, result: &str) {
        self.ops
            .get_or_create(&OpResult {
                op: op.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].inc();
    }
}

/// One upstream's call histograms, one per outcome.
#[derive(Clone)]
pub struct UpstreamMetrics {
    by_outcome: [Histogram; 6],
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let upstream = Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let breaker = Family::<UpstreamName, Gauge>::default();
        let host_state = Family::<HostLabels, Gauge>::default();
        let hedges = Family::<UpstreamResult, Counter>::default();
        let budget_exhausted = Family::<UpstreamName, Counter>::default();
        let websocket_tunnels = Family::<RouteName, Gauge>::default();
        registry.register(
            "manifold_websocket_tunnels",
            "WebSocket tunnels open now, by route",
            websocket_tunnels.clone(),
        );
        registry.register(
            "manifold_upstream_host_state",
            "Each upstream host: 0 in rotation, 1 ejected (outlier), 2 unhealthy (health check)",
            host_state.clone(),
        );
        registry.register(
            "manifold_hedges",
            "Hedged attempts by upstream and result: won (its answer was used), lost",
            hedges.clone(),
        );
        registry.register(
            "manifold_retry_budget_exhausted",
            "Retries and hedges not sent because the upstream's retry budget was spent",
            budget_exhausted.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        let rate_limited = Family::<RouteName, Counter>::default();
        let inflight = Gauge::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let auth = Family::<RouteResult, Counter>::default();
        let jwks = Family::<ValidatorResult, Counter>::default();
        let shared_up = Gauge::default();
        let shared_ops = Family::<OpResult, Counter>::default();
        let shared_dropped = Family::<ReasonLabel, Counter>::default();
        let descriptors = Family::<HolderLabel, Gauge>::default();
        let descriptors_max = Family::<HolderLabel, Gauge>::default();
        let descriptors_refused = Family::<HolderLabel, Counter>::default();
        registry.register(
            "manifold_descriptors",
            "File descriptors held now, by holder (connection: client connections; tunnel: WebSocket tunnels' upstream sides; upstream: upstream connections)",
            descriptors.clone(),
        );
        registry.register(
            "manifold_descriptors_max",
            "The most each holder may hold (the descriptor limit less a reserve; see docs/operations.md)",
            descriptors_max.clone(),
        );
        registry.register(
            "manifold_descriptors_refused",
            "Connections, tunnels and upstream connections refused because their share of the descriptor limit was in use",
            descriptors_refused.clone(),
        );
        registry.register(
            "manifold_shared_entries_dropped",
            "Cache entries read from Redis and not used, by reason (too_large: over max_entry, not read whole; unsigned or forged: with [shared] secret, no valid signature; implausible: stored in the future)",
            shared_dropped.clone(),
        );
        registry.register(
            "manifold_shared_up",
            "1 while the [shared] Redis answers, 0 while each replica decides alone",
            shared_up.clone(),
        );
        registry.register(
            "manifold_shared_ops",
            "Operations on the [shared] Redis by op (rate_limit, cache_get, cache_set) and result (ok, error, timeout)",
            shared_ops.clone(),
        );
        registry.register(
            "manifold_auth",
            "Token checks by route and result (ok, missing, invalid, forbidden, unavailable)",
            auth.clone(),
        );
        registry.register(
            "manifold_jwks_refresh",
            "Key set fetches (JWKS URL) and reads (JWKS file) by validator and result (ok, error)",
            jwks.clone(),
        );
        let trace_spans = Family::<ResultLabel, Counter>::default();
        let connections = Family::<ListenerLabel, Gauge>::default();
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        let buffered = Gauge::default();
        let rate_limit_keys = Family::<RouteName, Gauge>::default();
        let buffer_capacity = Gauge::default();
        registry.register(
            "http_server_request_duration_seconds",
            "Time to answer client requests, by route, method and status code",
            requests.clone(),
        );
        registry.register(
            "manifold_upstream_request_duration_seconds",
            "Time of calls to upstreams (each attempt), by upstream and outcome",
            upstream.clone(),
        );
        registry.register(
            "manifold_circuit_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        registry.register(
            "manifold_cache_requests",
            "Cache lookups by cache (route, backend) and result (hit, miss, stale)",
            cache.clone(),
        );
        registry.register(
            "manifold_rate_limited",
            "Requests refused by a route's rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "manifold_inflight_requests",
            "Client requests being served now",
            inflight.clone(),
        );
        registry.register(
            "manifold_config_reloads",
            "Config reloads by result (ok, error)",
            reloads.clone(),
        );
        registry.register(
            "manifold_tls_certificate_reloads",
            "Listener certificates re-read because their files changed, by result (ok: serving the new pair; error: unusable, the previous one keeps serving)",
            tls_reloads.clone(),
        );
        registry.register(
            "manifold_trace_spans",
            "Spans for the OTLP collector, by result (exported, failed, dropped when the export queue was full)",
            trace_spans.clone(),
        );
        registry.register(
            "manifold_client_connections",
            "Client connections open now, by listener (public, admin)",
            connections.clone(),
        );
        registry.register(
            "manifold_connections_refused",
            "Client connections closed at accept because max_connections were open",
            connections_refused.clone(),
        );
        registry.register(
            "manifold_connections_closed",
            "Client connections closed by a bound: header_timeout, idle, send_timeout",
            connections_closed.clone(),
        );
        registry.register(
            "manifold_buffered_bytes",
            "Bytes of answers held in memory now (upstream bodies and unsent answers)",
            buffered.clone(),
        );
        registry.register(
            "manifold_buffer_capacity_bytes",
            "buffer_capacity: past it new upstream calls fail with OVERLOADED",
            buffer_capacity.clone(),
        );
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
        let process = Process {
            resident: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
            cpu: Counter::default(),
            cpu_counted: std::sync::Mutex::new(0.0),
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            process.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            process.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            process.start_time.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds",
            process.cpu.clone(),
        );
        Metrics {
            config_info,
            config_reloaded_at,
            process,
            registry,
            rate_limit_keys,
            connections,
            connections_refused,
            connections_closed,
            buffered,
            buffer_capacity,
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
            shared_ops,
            shared_dropped,
            descriptors,
            descriptors_max,
            descriptors_refused,
            trace_spans,
        }
    }

    pub fn route(&self, route: &str, method: &str) -> RouteMetrics {
        let by_status = (0..STATUSES).map(|_| OnceLock::new()).collect();
        let rate_limited = self
            .rate_limited
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics {
            labels: Arc::new((route.to_string(), method.to_string())),
            by_status,
            rate_limited,
        }
    }

    /// Made when a route with `auth` is compiled: every result shows from the start.
    pub fn auth(&self, route: &str) -> AuthMetrics {
        let by_result = AUTH_RESULTS.map(|result| {
            self.auth
                .get_or_create(&RouteResult {
                    route: route.to_string(),
                    result: result.to_string(),
                })
                .clone()
        });
        AuthMetrics { by_result }
    }

    /// The descriptor budget's series, one per holder (named by `holders`, in the
    /// order the budget indexes them).
    pub fn descriptors(&self, holders: [&'static str; 3]) -> DescriptorMetrics {
        let label = |holder: &'static str| HolderLabel { holder };
        DescriptorMetrics {
            open: holders.map(|h| self.descriptors.get_or_create(&label(h)).clone()),
            max: holders.map(|h| self.descriptors_max.get_or_create(&label(h)).clone()),
            refused: holders.map(|h| self.descriptors_refused.get_or_create(&label(h)).clone()),
        }
    }

    pub fn shared(&self) -> SharedMetrics {
        SharedMetrics {
            up: self.shared_up.clone(),
            ops: self.shared_ops.clone(),
            dropped: Dropped::ALL.map(|why| {
                self.shared_dropped
                    .get_or_create(&ReasonLabel {
                        reason: why.as_str(),
                    })
                    .clone()
            }),
        }
    }

    pub fn jwks(&self, validator: &str) -> JwksMetrics {
        let one = |result: &str| {
            self.jwks
                .get_or_create(&ValidatorResult {
                    validator: validator.to_string(),
                    result: result.to_string(),
                })
                .clone()
        };
        JwksMetrics {
            ok: one("ok"),
            error: one("error"),
        }
    }

    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let by_outcome = Outcome::UPSTREAM.map(|outcome| {
            self.upstream
                .get_or_create(&UpstreamLabels {
                    upstream: name.to_string(),
                    outcome: outcome.as_str().to_string(),
                })
                .clone()
        });
        UpstreamMetrics { by_outcome }
    }

    /// For requests a route's own handles do not cover: no route matched
    /// (`route="unmatched"`), a 405, or HEAD on a GET route. Methods outside the
    /// standard set are `OTHER`, so a client cannot mint label values.
    pub fn request(&self, route: &str, method: &http::Method, status: u16, secs: f64) {
        let method = match *method {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::POST
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::PATCH
            | http::Method::OPTIONS => method.as_str(),
            _ => "OTHER",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                method: method.into(),
                status: status.to_string(),
            })
            .observe(secs);
    }

    pub fn cache_result(&self, cache: &'static str, result: &'static str) {
        self.cache
            .get_or_create(&CacheLabels {
                cache: cache.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Spans in one export batch: `exported`, or `failed` when the collector did not
    /// take them.
    pub fn trace_spans(&self, result: &'static str, n: u64) {
        self.trace_spans
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc_by(n);
    }

    /// A listener's connection counters (made once per listener).
    pub fn connections(&self, listener: &str) -> ConnectionMetrics {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        ConnectionMetrics {
            open: self.connections.get_or_create(&label).clone(),
            refused: self.connections_refused.get_or_create(&label).clone(),
            closed: CLOSE_REASONS.map(|reason| {
                self.connections_closed
                    .get_or_create(&ClosedLabels {
                        listener: listener.to_string(),
                        reason: reason.to_string(),
                    })
                    .clone()
            }),
        }
    }

    /// Keys a route's limiter holds, read at scrape time.
    pub fn rate_limit_keys(&self, route: &str, keys: u64) {
        self.rate_limit_keys
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The buffer budget's use and limit, read at scrape time.
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

    /// A host's state (0 in rotation, 1 ejected, 2 unhealthy), read at scrape time.
    pub fn host_state(&self, upstream: &str, host: &str, state: i64) {
        self.host_state
            .get_or_create(&HostLabels {
                upstream: upstream.to_string(),
                host: host.to_string(),
            })
            .set(state);
    }

    /// A hedge's end: `won` when its answer was the one used.
    pub fn hedge(&self, upstream: &str, won: bool) {
        self.hedges
            .get_or_create(&UpstreamResult {
                upstream: upstream.to_string(),
                result: if won { "won" } else { "lost" },
            })
            .inc();
    }

    /// The open-tunnels gauge of a `websocket = true` route (0 from the start).
    pub fn websocket_tunnels(&self, route: &str) -> Gauge {
        self.websocket_tunnels
            .get_or_create(&RouteName {
                route: route.to_string(),
            })
            .clone()
    }

    /// A retry or hedge the budget did not allow.
    pub fn retry_budget_exhausted(&self, upstream: &str) {
        self.budget_exhausted
            .get_or_create(&UpstreamName {
                upstream: upstream.to_string(),
            })
            .inc();
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
        let p = &self.process;
        if let Some(status) = read("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            if let Some(kib) = rss_kib {
                p.resident.set(kib * 1024);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the one this read holds open.
            p.open_fds.set(dir.count().saturating_sub(1) as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            p.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        if let Some((cpu, start)) = read("/proc/self/stat").and_then(|s| cpu_and_start(&s)) {
            let mut counted = p
                .cpu_counted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cpu > *counted {
                p.cpu.inc_by(cpu - *counted);
                *counted = cpu;
            }
            if let Some(boot) = read("/proc/stat").and_then(|s| boot_time(&s)) {
                p.start_time.set(boot + start);
            }
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        // Both series exist from the start, so dashboards see 0 rather than no data.
        let _ = self.reloads.get_or_create(&ResultLabel {
            result: "ok".into(),
        });
        let _ = self.reloads.get_or_create(&ResultLabel {
            result: "error".into(),
        });
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`).
fn ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) and seconds from boot to start, from `/proc/self/stat`.
fn cpu_and_start(stat: &str) -> Option<(f64, f64)> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15, starttime 22.
    let num = |i: usize| fields.get(i)?.parse::<f64>().ok();
    let t = ticks();
    Some(((num(11)? + num(12)?) / t, num(19)? / t))
}

/// Boot time (Unix seconds), from `/proc/stat`.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, secs: f64) {
        let i = usize::from(status.clamp(100, 599) - 100);
        let Some(cell) = self.by_status.get(i) else {
            return;
        };
        cell.get_or_init(|| {
            METRICS
                .requests
                .get_or_create(&RequestLabels {
                    route: self.labels.0.clone(),
                    method: self.labels.1.clone(),
                    status: (i + 100).to_string(),
                })
                .clone()
        })
        .observe(secs);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }
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
}
