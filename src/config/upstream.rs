//! `[upstreams.NAME]`: an upstream's hosts, how calls reach them (balance, protocol,
//! pools), and what protects them (timeouts, limits, breaker, retries, hedging,
//! outlier ejection, health checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, KeyDefault, Table, key};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub name_span: SourceSpan,
    pub settings: UpstreamSettings,
    /// `grpc`: its `.proto` files, compiled. Outside `settings`: a changed `.proto`
    /// changes the backends that call it, not the upstream's connections or breaker.
    pub grpc: Option<std::sync::Arc<super::grpc::Protos>>,
}

/// Everything that defines an upstream's client state. Reload keeps an upstream's
/// breaker, pool and limiter when these compare equal (spans excluded on purpose).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub urls: Vec<Url>,
    /// Per attempt; `None` leaves only the route deadline.
    pub timeout: Option<Duration>,
    pub max_concurrency: u32,
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

/// How a call picks one of an upstream's hosts (docs/configuration.md#balance).
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

/// Active health checks: `GET path` to every host every `interval`, or with `grpc`,
/// `grpc.health.v1.Health/Check` for that service name.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    /// `grpc = true`: the service name asked about (`""`: the server as a whole).
    pub grpc: Option<String>,
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

pub const URLS: Key = key(
    "urls",
    "One or more http(s) base URLs (the upstream's hosts). user:password@ in a URL is sent as basic auth.",
)
.required()
.non_empty();
pub const TIMEOUT: Key = key(
    "timeout",
    "Bound of each attempt (connect, head and body); the route deadline still applies. Without it, only the route deadline bounds an attempt.",
);
/// Envoy's default.
pub const MAX_CONCURRENCY: Key = key(
    "max_concurrency",
    "Calls in flight to this upstream at once; past it a call fails at once (OVERLOADED).",
)
.at_least(1.0)
.default(KeyDefault::Count(1024));
pub const CIRCUIT_BREAKER: Key = key(
    "circuit_breaker",
    "Opens after consecutive faults (connect error, timeout, 5xx); after open_for one probe decides.",
);
pub const BREAKER_FAILURES: Key = key(
    "consecutive_failures",
    "Faults in a row that open the breaker.",
)
.at_least(1.0)
.required();
pub const OPEN_FOR: Key = key(
    "open_for",
    "How long the breaker stays open before its probe.",
)
.required();
pub const RETRY: Key = key(
    "retry",
    "Attempts for idempotent calls (and POST with idempotency-key) after a connect error, a timeout or a 502/503/504.",
);
pub const ATTEMPTS: Key = key(
    "attempts",
    "Total attempts, the first one included (more than 16 count as 16).",
)
.at_least(1.0)
.required();
pub const BACKOFF: Key =
    key("backoff", "Wait between attempts.").default(KeyDefault::Duration(Duration::ZERO));
pub const BUDGET: Key = key(
    "budget",
    "Retries plus hedges per 10 s, as a share of first attempts (\"20%\"); at least 3 per window. Without it, retries are unbudgeted.",
);
pub const RATE_LIMIT: Key = key(
    "rate_limit",
    "Limit of calls to this upstream, shared by every route (OVERLOADED past it).",
);
pub const CA_FILE: Key = key(
    "ca_file",
    "Extra CA certificates (PEM) trusted for https urls; relative to the config file's directory.",
);
pub const MAX_RESPONSE_BODY: Key = key(
    "max_response_body",
    "Larger answers fail the backend (502) before they are buffered.",
)
.default(KeyDefault::Size(16 << 20));
pub const BALANCE: Key = key(
    "balance",
    "How a call picks a host: round_robin, or least_request (of two hosts drawn at random, the one with fewer calls in flight).",
)
.choices(&["round_robin", "least_request"])
.default(KeyDefault::Str("round_robin"));
pub const OUTLIER: Key = key(
    "outlier",
    "Passive ejection: a host failing (connect error, timeout, 5xx) consecutive_failures times in a row leaves the rotation for eject_for.",
);
pub const OUTLIER_FAILURES: Key = key(
    "consecutive_failures",
    "Failures in a row that eject a host.",
)
.at_least(1.0)
.default(KeyDefault::Count(5));
pub const EJECT_FOR: Key = key(
    "eject_for",
    "First ejection; then probation as long, a failure in it ejects for twice the last (at most 10x).",
)
.default(KeyDefault::Duration(Duration::from_secs(30)));
pub const MAX_EJECTED: Key = key(
    "max_ejected",
    "Share of the hosts ejected at once at most, rounded down (\"50%\").",
)
.default(KeyDefault::Str("50%"));
pub const HEALTH_CHECK: Key = key(
    "health_check",
    "Active checks: GET path (with grpc = true: grpc.health.v1.Health/Check) on every host every interval, from each replica; 2xx (SERVING) within timeout is healthy.",
);
pub const HEALTH_PATH: Key = key(
    "path",
    "Path probed on every host, e.g. \"/healthz\". Required unless grpc = true.",
);
pub const HEALTH_GRPC: Key = key(
    "grpc",
    "Probe with grpc.health.v1.Health/Check (SERVING is healthy) instead of GET path.",
)
.default(KeyDefault::Bool(false));
pub const HEALTH_SERVICE: Key = key(
    "service",
    "With grpc = true: the service name asked about; \"\" asks for the server as a whole.",
)
.default(KeyDefault::Str(""));
pub const HEALTH_INTERVAL: Key = key("interval", "Time between probes of a host.")
    .default(KeyDefault::Duration(Duration::from_secs(5)));
pub const HEALTH_TIMEOUT: Key =
    key("timeout", "Bound of one probe.").default(KeyDefault::Duration(Duration::from_secs(1)));
pub const UNHEALTHY: Key = key("unhealthy", "Failed probes in a row that take a host out.")
    .at_least(1.0)
    .default(KeyDefault::Count(3));
pub const HEALTHY: Key = key("healthy", "Good probes in a row that bring it back.")
    .at_least(1.0)
    .default(KeyDefault::Count(2));
pub const HEDGE: Key = key(
    "hedge",
    "Retryable calls only: no answer after `after` -> one more attempt on another host (uses one of retry.attempts); the first answer wins.",
);
pub const HEDGE_AFTER: Key = key(
    "after",
    "How long the first attempt has to answer before the hedge goes.",
)
.required();
pub const PROTOCOL: Key = key(
    "protocol",
    "How calls are carried: http1, h2 (TLS, ALPN; https urls) or h2c (cleartext, prior knowledge; http urls). HTTP/2 calls share one connection per host per worker.",
)
.choices(&["http1", "h2", "h2c"])
.default(KeyDefault::Str("http1"));

impl Balance {
    fn from_choice(c: &str) -> Balance {
        match c {
            "least_request" => Balance::LeastRequest,
            _ => Balance::RoundRobin,
        }
    }
}

impl Protocol {
    fn from_choice(c: &str) -> Protocol {
        match c {
            "h2" => Protocol::H2,
            "h2c" => Protocol::H2c,
            _ => Protocol::Http1,
        }
    }
}

/// What a gRPC health check calls.
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// A count that fits a `u32`.
fn count32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn read_upstream(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<UpstreamSettings> {
    let mut urls = Vec::new();
    match t.string_list(errs, URLS) {
        Some(list) if list.is_empty() => errs.push(
            Diagnostic::new(t.span(), format!("{} needs at least one url", t.name))
                .label("empty `urls`"),
        ),
        Some(list) => {
            for (s, span) in list {
                match Url::parse(&s) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                        if u.query().is_some() || u.fragment().is_some() {
                            errs.push(
                                Diagnostic::new(
                                    span,
                                    format!("upstream url `{s}` must not have a query or fragment"),
                                )
                                .label("remove the part after `?` or `#`"),
                            );
                        } else {
                            urls.push(u);
                        }
                    }
                    _ => errs.push(
                        Diagnostic::new(span, format!("`{s}` is not an http:// or https:// URL"))
                            .label("expected e.g. \"http://127.0.0.1:7001\""),
                    ),
                }
            }
        }
        None if t.get(URLS).is_none() => t.missing(errs, URLS.name),
        None => {}
    }
    let timeout = t.positive_duration(errs, TIMEOUT).flatten();
    let max_concurrency = count32(t.count_or(errs, MAX_CONCURRENCY));
    let circuit_breaker = t.table(errs, CIRCUIT_BREAKER).and_then(|mut b| {
        let failures = b.count(errs, BREAKER_FAILURES);
        let open_for = b.duration(errs, OPEN_FOR);
        let out = match (failures, open_for) {
            (Some((n, _)), Some((d, _))) => Some(BreakerConfig {
                consecutive_failures: count32(n),
                open_for: d,
            }),
            (f, o) => {
                if f.is_none() && b.get(BREAKER_FAILURES).is_none() {
                    b.missing(errs, BREAKER_FAILURES.name);
                }
                if o.is_none() && b.get(OPEN_FOR).is_none() {
                    b.missing(errs, OPEN_FOR.name);
                }
                None
            }
        };
        b.finish(errs);
        out
    });
    let retry = t.table(errs, RETRY).and_then(|mut r| {
        let attempts = r.count(errs, ATTEMPTS);
        let backoff = r.duration_or(errs, BACKOFF);
        let budget = percent(&mut r, errs, BUDGET).map(|(f, _)| f);
        let out = match attempts {
            Some((n, _)) => Some(RetryConfig {
                attempts: count32(n.min(16)),
                backoff,
                budget,
            }),
            None => {
                if r.get(ATTEMPTS).is_none() {
                    r.missing(errs, ATTEMPTS.name);
                }
                None
            }
        };
        r.finish(errs);
        out
    });
    let rate_limit = t.table(errs, RATE_LIMIT).and_then(|mut r| {
        let rate = read_rate(&mut r, errs);
        r.finish(errs);
        rate
    });
    let ca_file = t.string(errs, CA_FILE).and_then(|(s, span)| {
        match crate::base::files::read_bounded(&base.join(&s), crate::base::files::MAX_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
        {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(base.join(s)),
            Ok(_) => {
                errs.push(
                    Diagnostic::new(span, format!("ca_file `{s}` holds no PEM certificate"))
                        .label("not a PEM file"),
                );
                None
            }
            Err(e) => {
                errs.push(
                    Diagnostic::new(span, format!("cannot read ca_file `{s}`: {e}"))
                        .label("unreadable"),
                );
                None
            }
        }
    });
    let max_response_body = t.size_or(errs, MAX_RESPONSE_BODY);
    let balance = Balance::from_choice(t.choice_or(errs, BALANCE));
    let outlier = t.table(errs, OUTLIER).map(|mut o| {
        let consecutive_failures = count32(o.count_or(errs, OUTLIER_FAILURES));
        let eject_for = o.positive_duration_or(errs, EJECT_FOR);
        let max_ejected = percent(&mut o, errs, MAX_EJECTED).map_or_else(
            || percent_of(MAX_EJECTED.default_str()).unwrap_or(0.5),
            |(f, _)| f,
        );
        o.finish(errs);
        OutlierConfig {
            consecutive_failures,
            eject_for,
            max_ejected,
        }
    });
    let health_check = t.table(errs, HEALTH_CHECK).and_then(|mut h| {
        let path = h.string(errs, HEALTH_PATH);
        let grpc = h.bool_or(errs, HEALTH_GRPC);
        let service = h.string(errs, HEALTH_SERVICE);
        let interval = h.positive_duration_or(errs, HEALTH_INTERVAL);
        let timeout = h.positive_duration_or(errs, HEALTH_TIMEOUT);
        let unhealthy = count32(h.count_or(errs, UNHEALTHY));
        let healthy = count32(h.count_or(errs, HEALTHY));
        if let (false, Some((_, span))) = (grpc, &service) {
            errs.push(
                Diagnostic::new(span.clone(), "health_check `service` is for grpc = true")
                    .label("a GET probe names no service"),
            );
        }
        let path = match path {
            Some((_, span)) if grpc => {
                errs.push(
                    Diagnostic::new(span, "a gRPC health check takes no `path`")
                        .label("it calls grpc.health.v1.Health/Check"),
                );
                None
            }
            None if grpc => Some(GRPC_HEALTH_PATH.to_string()),
            Some((p, span))
                if !p.starts_with('/')
                    || http::uri::PathAndQuery::try_from(p.as_str()).is_err() =>
            {
                errs.push(
                    Diagnostic::new(span, format!("health_check path `{p}` is not a path"))
                        .label("expected e.g. \"/healthz\""),
                );
                None
            }
            Some((p, _)) => Some(p),
            None => {
                if h.get(HEALTH_PATH).is_none() {
                    h.missing(errs, HEALTH_PATH.name);
                }
                None
            }
        };
        h.finish(errs);
        Some(HealthCheckConfig {
            path: path?,
            grpc: grpc.then(|| service.map(|(s, _)| s).unwrap_or_default()),
            interval,
            timeout,
            unhealthy,
            healthy,
        })
    });
    let hedge = t.table(errs, HEDGE).and_then(|mut h| {
        let after = h.positive_duration(errs, HEDGE_AFTER).flatten();
        if after.is_none() && h.get(HEDGE_AFTER).is_none() {
            h.missing(errs, HEDGE_AFTER.name);
        }
        h.finish(errs);
        after.map(|after| HedgeConfig { after })
    });
    let protocol = match t.choice(errs, PROTOCOL) {
        None => Protocol::from_choice(PROTOCOL.default_str()),
        Some((s, span)) => {
            let p = Protocol::from_choice(s);
            let wrong = match p {
                Protocol::H2 => urls.iter().find(|u| u.scheme() != "https"),
                Protocol::H2c => urls.iter().find(|u| u.scheme() != "http"),
                Protocol::Http1 => None,
            };
            if let Some(u) = wrong {
                let (want, why) = if p == Protocol::H2 {
                    ("https", "h2 is negotiated in the TLS handshake (ALPN)")
                } else {
                    ("http", "h2c is HTTP/2 without TLS")
                };
                errs.push(
                    Diagnostic::new(
                        span,
                        format!(
                            "protocol `{s}` needs {want}:// urls, and `{}` is not one",
                            crate::base::redact::url(u.as_str())
                        ),
                    )
                    .label(why),
                );
            }
            p
        }
    };
    Some(UpstreamSettings {
        urls,
        timeout,
        max_concurrency,
        circuit_breaker,
        retry,
        rate_limit,
        ca_file,
        max_response_body,
        balance,
        outlier,
        health_check,
        hedge,
        protocol,
    })
}

/// `"20%"` as 0.2.
fn percent_of(s: &str) -> Option<f64> {
    let n = s.trim().strip_suffix('%')?.trim().parse::<f64>().ok()?;
    (0.0..=100.0).contains(&n).then_some(n / 100.0)
}

/// A share written as a percentage (`"20%"`), as a fraction of one.
pub(super) fn percent(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    k: Key,
) -> Option<(f64, SourceSpan)> {
    let (s, span) = t.string(errs, k)?;
    match percent_of(&s) {
        Some(f) => Some((f, span)),
        None => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{}` must be a percentage from 0% to 100%", k.name),
                )
                .label("expected e.g. \"20%\""),
            );
            None
        }
    }
}

pub const PER_SECOND: Key = key(
    "per_second",
    "Requests per second allowed (GCRA); fractions allowed, at least one a day.",
)
.at_least(1.0 / 86_400.0)
.required();
pub const BURST: Key = key("burst", "Requests allowed at once above the steady rate.")
    .default(KeyDefault::Computed("per_second rounded up"));

pub(super) fn read_rate(r: &mut Table<'_, '_>, errs: &mut Errors) -> Option<RateConfig> {
    let per_second = r.number(errs, PER_SECOND);
    let burst = r.count(errs, BURST);
    match per_second {
        Some((n, span)) => {
            let burst = burst.map_or((n.ceil() as u32).max(1), |(b, _)| {
                b.clamp(1, u32::MAX as u64) as u32
            });
            // GCRA keeps burst × period in nanoseconds; past a century it overflows.
            if f64::from(burst) / n > 100.0 * 365.0 * 86_400.0 {
                errs.push(
                    Diagnostic::new(
                        span,
                        "burst / per_second is more than a century of requests",
                    )
                    .label("lower burst or raise per_second"),
                );
                return None;
            }
            Some(RateConfig {
                per_second: n,
                burst,
            })
        }
        None => {
            if r.get(PER_SECOND).is_none() {
                r.missing(errs, PER_SECOND.name);
            }
            None
        }
    }
}
