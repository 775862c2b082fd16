//! The types a `routes.toml` loads into, and the defaults of its keys. Every key is
//! described in docs/configuration.md; `manifold schema` gives them to editors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use url::Url;

use super::diag::SourceSpan;
use crate::base::template::{Placeholder, Template};

/// A whole, validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[cors]`: for every route that does not set its own.
    pub cors: Option<CorsConfig>,
    /// `[auth.jwt.NAME]`: token validators routes refer to by name.
    pub jwt: Vec<JwtConfig>,
    /// `[shared]`: rate limits decided in Redis, across replicas.
    pub shared: Option<SharedConfig>,
    /// The first 8 bytes of the SHA-256 of the file as written (before `${ENV}` is
    /// filled in): which version of the file serves. Shown as 16 hex digits, the start
    /// of `sha256sum routes.toml`, by `manifold check`, `/routes` and
    /// `manifold_config_info{fingerprint}`.
    pub fingerprint: u64,
}

impl Config {
    /// The fingerprint as 16 hex digits.
    pub fn version(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub default_timeout: Duration,
    pub max_request_body: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    /// Event loops (threads), each with its own listener socket and upstream pools.
    /// `None`: one per CPU.
    pub workers: Option<usize>,
    /// Bytes the response cache (route and backend answers) may hold.
    pub cache_capacity: u64,
    /// How long a client may take from connecting (or from the end of its previous
    /// request) to sending a whole request head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive HTTP/1 connection, or an h2 connection with no open
    /// stream, may sit idle before it is closed (h2: GOAWAY).
    pub idle_timeout: Duration,
    /// How long an answer may wait for the client to take any of it before the
    /// connection is closed.
    pub send_timeout: Duration,
    /// Open client connections past which new ones are closed at once. `None`: half
    /// the descriptor limit (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Bytes of a request head (path, query, header names and values): 414/431 past it.
    pub max_header_size: u64,
    /// Bytes of upstream answers held in memory at once, across all requests; past it
    /// a new upstream call fails at once (OVERLOADED).
    pub buffer_capacity: u64,
    /// Of those, what one h2 connection's requests may hold.
    pub buffer_per_connection: u64,
    /// `tls`: the public listener speaks TLS with this certificate.
    pub tls: Option<TlsFiles>,
}

/// The listener's certificate and key: where they are (relative paths already made
/// relative to the config file's directory) and the pair as loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pair: std::sync::Arc<rustls::sign::CertifiedKey>,
}

/// Two configs name the same TLS when they name the same files and those held the
/// same certificate when each was loaded.
impl PartialEq for TlsFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.pair.cert == other.pair.cert
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub log_format: LogFormat,
    pub access_log: bool,
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub name_span: SourceSpan,
    pub settings: UpstreamSettings,
}

/// Everything that defines an upstream's client state. Reload keeps an upstream's
/// breaker, pool and limiter when these compare equal (spans excluded on purpose).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub urls: Vec<Url>,
    /// Per attempt; `None` leaves only the route deadline.
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<u32>,
    pub circuit_breaker: Option<BreakerConfig>,
    pub retry: Option<RetryConfig>,
    pub rate_limit: Option<RateConfig>,
    pub ca_file: Option<PathBuf>,
    pub max_response_body: u64,
    pub balance: Balance,
    pub outlier: Option<OutlierConfig>,
    pub health_check: Option<HealthCheckConfig>,
    pub hedge: Option<HedgeConfig>,
    pub protocol: Protocol,
}

/// How calls to an upstream's hosts are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1, one call per connection at a time (a pool of them).
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN (HTTP/1.1 if the host offers only that).
    H2,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
        }
    }
}

/// How a call picks one of an upstream's hosts (CONTRACT §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Of two hosts drawn at random, the one with fewer calls in flight.
    LeastRequest,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
        }
    }
}

/// Passive outlier ejection: hosts whose calls keep failing leave the rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    /// Share of the hosts (0..=1) that may be ejected at once, rounded down.
    pub max_ejected: f64,
}

/// Active health checks: `GET path` to every host every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

/// One more attempt on another host when the first has not answered after `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    pub after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub open_for: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub attempts: u32,
    pub backoff: Duration,
    /// Retries plus hedges allowed per upstream and 10 s, as a share of first
    /// attempts (at least 3); `None`: unbudgeted.
    pub budget: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateConfig {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LimitKey {
    ClientIp,
    Header(http::HeaderName),
    Global,
    /// A validated claim of the route's token (`claim:sub`): checked after the token.
    Claim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteRateLimit {
    pub rate: RateConfig,
    pub key: LimitKey,
    /// Keys remembered at most (least recently used forgotten first).
    pub max_keys: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub method: Method,
    pub path: String,
    pub path_span: SourceSpan,
    pub span: SourceSpan,
    pub timeout: Option<Duration>,
    pub forward_headers: Vec<String>,
    pub forward_query: Vec<String>,
    pub cache: Option<CacheConfig>,
    pub rate_limit: Option<RouteRateLimit>,
    pub passthrough: bool,
    /// `websocket = true` (or a table): upgrade requests are tunnelled (passthrough routes).
    pub websocket: bool,
    /// `websocket = { allow_origins }`: the origins a tunnel may be opened from.
    pub websocket_origins: Option<Vec<String>>,
    /// How long a tunnel may carry no bytes either way.
    pub idle_timeout: Duration,
    /// The route's own `cors` table, `cors = false`, or `[cors]` (when unset).
    pub cors: RouteCors,
    /// `auth`: the route's token check.
    pub auth: Option<RouteAuth>,
    /// Where `auth` is, and where its `jwt` names the validator.
    pub auth_span: SourceSpan,
    pub auth_jwt_span: SourceSpan,
    pub backends: Vec<BackendConfig>,
}

pub use super::auth::{JwtConfig, KeySource, RouteAuth, Secret};
pub use super::cors::CorsConfig;
pub use super::shared::SharedConfig;

/// What a route says about CORS.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RouteCors {
    /// Nothing: `[cors]` applies, if there is one.
    #[default]
    Inherit,
    /// `cors = false`: no CORS on this route.
    Off,
    /// Its own table, which replaces `[cors]` whole.
    Own(CorsConfig),
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub name_span: SourceSpan,
    pub upstream: String,
    pub upstream_span: SourceSpan,
    pub method: Option<Method>,
    pub path: String,
    /// The path as the file has it (`${ENV}` not filled in), for `/routes` and
    /// `manifold routes`: a secret from the environment is not shown.
    pub path_as_written: String,
    pub path_span: SourceSpan,
    pub template: Template<Placeholder>,
    pub group: Option<String>,
    pub target: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub optional: bool,
    pub default: Option<serde_json::Value>,
    pub cache_ttl: Option<Duration>,
    pub passthrough: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 20;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 16 << 20;
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 << 20;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
pub const DEFAULT_BUFFER_CAPACITY: u64 = 256 << 20;
pub const DEFAULT_BUFFER_PER_CONNECTION: u64 = 16 << 20;
/// Calls in flight to one upstream when it sets no `max_concurrency` (Envoy's default).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 1024;
/// Rate-limit keys a route remembers when it sets no `max_keys`.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// Clock skew allowed on a token's exp, nbf and iat.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
pub const DEFAULT_JWKS_COOLDOWN: Duration = Duration::from_secs(30);
pub const DEFAULT_SHARED_PREFIX: &str = "manifold:";
pub const DEFAULT_SHARED_TIMEOUT: Duration = Duration::from_millis(20);
pub const DEFAULT_SHARED_MAX_ENTRY: u64 = 256 << 10;
