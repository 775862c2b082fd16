//! One line per request (docs/operations.md#the-access-log): method, route, status, duration,
//! request id, partial flag and each backend's outcome.
//!
//! Lines are written whole to a sink (a non-blocking stdout writer in the binary, a
//! buffer in tests), never through the tracing formatter, so `backends` stays a JSON
//! object rather than an escaped string.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use opentelemetry::trace::TraceId;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::base::cache_control::Hints;
use crate::base::coding::Coding;
use crate::base::error::Outcome;
use crate::config::LogFormat;
use crate::telemetry::metrics::labels::{AuthResult, CacheResult, IdempotencyResult};

/// Where whole log lines go. Each call gets exactly one line, newline included.
pub type LogSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

#[derive(Clone)]
pub struct AccessRecord {
    pub method: Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    /// Which route of the gateway snapshot served it (for its metrics).
    pub route_index: Option<usize>,
    pub status: u16,
    pub duration: Duration,
    pub request_id: HeaderValue,
    /// The server span's trace, or with tracing off the client's `traceparent` trace.
    pub trace_id: Option<TraceId>,
    /// The error code of a refused or failed request.
    pub error: Option<&'static str>,
    pub partial: bool,
    /// The route cache's verdict on routes with `cache`.
    pub cache: Option<CacheResult>,
    /// The token check's result on routes with `auth`.
    pub auth: Option<AuthResult>,
    /// The answer's `content-encoding`, when manifold compressed it.
    pub encoding: Option<Coding>,
    /// The route's `validate` schemas refused the request (400, 415).
    pub validation_failed: bool,
    /// What the route's `idempotency` made of it (`replayed`, `stored`, ...).
    pub idempotency: Option<IdempotencyResult>,
    pub backends: Vec<(Arc<str>, Report)>,
    /// The client's address, after `trusted_proxies` (read only with the access log on).
    pub client: Option<std::net::IpAddr>,
    /// Its `user-agent`, at most [`MAX_USER_AGENT`] bytes (with the access log on).
    pub user_agent: Option<String>,
    /// The answer's body in bytes as sent (compressed, when it was): its length, or the
    /// declared `content-length` of a streamed one; `None` for a stream of unknown length.
    pub bytes: Option<u64>,
}

/// The line of a request whose answer streams with no declared length: written when
/// the stream ends (or the client leaves), when its bytes are known. The request
/// hands its record over as it finishes; the stream writes it.
pub struct Deferred {
    record: std::sync::Mutex<Option<AccessRecord>>,
    sink: LogSink,
    format: LogFormat,
}

impl Deferred {
    pub fn new(sink: LogSink, format: LogFormat) -> Arc<Deferred> {
        Arc::new(Deferred {
            record: std::sync::Mutex::new(None),
            sink,
            format,
        })
    }

    /// The request's record, complete but for the bytes sent.
    pub fn put(&self, record: AccessRecord) {
        if let Ok(mut r) = self.record.lock() {
            *r = Some(record);
        }
    }

    /// The stream ended after `bytes`: the line goes out (once).
    pub fn write(&self, bytes: u64) {
        let record = self.record.lock().ok().and_then(|mut r| r.take());
        if let Some(mut record) = record {
            record.bytes = Some(bytes);
            write(&self.sink, self.format, &record);
        }
    }
}

/// The most of a client's `user-agent` an access line holds.
pub const MAX_USER_AGENT: usize = 256;

/// How one backend went: its part of the access line.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// The upstream's status, when an answer came.
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// Calls sent to the upstream (more than one when retried; 0 when the backend
    /// never called out: answered from cache, shared another request's call, or
    /// refused by the breaker or a limit).
    pub attempts: u32,
    /// For backends with `cache_ttl`: hit or miss.
    pub cache: Option<CacheResult>,
    /// What the upstream's `cache-control` allows (for the route cache).
    pub hints: Hints,
    /// Which of the upstream's `urls` the answer (or the last attempt) came from.
    pub host: Option<usize>,
    /// When the backend began (the console's waterfall).
    pub started: Option<tokio::time::Instant>,
    /// Its attempts, when its call noted them (see `upstream::Called::trail`); else
    /// the one attempt these figures describe.
    pub trail: Option<Box<crate::telemetry::console::trail::Trail>>,
    /// Why it failed, as its log line says (with the console on).
    pub cause: Option<Box<str>>,
    /// It shared an identical call another request made.
    pub coalesced: bool,
}

impl Report {
    pub fn new(outcome: Outcome, status: Option<u16>, elapsed: Duration, attempts: u32) -> Self {
        Report {
            outcome,
            status,
            elapsed,
            attempts,
            cache: None,
            hints: Hints::default(),
            host: None,
            started: None,
            trail: None,
            cause: None,
            coalesced: false,
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    target: &'static str,
    message: &'static str,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    status: u16,
    duration_ms: f64,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency: Option<&'static str>,
    backends: Backends<'a>,
}

struct Backends<'a>(&'a [(Arc<str>, Report)]);

#[derive(Serialize)]
struct BackendLine {
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    duration_ms: f64,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
}

impl Serialize for Backends<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, r) in self.0 {
            map.serialize_entry(
                &**name,
                &BackendLine {
                    outcome: r.outcome.as_str(),
                    status: r.status,
                    duration_ms: ms(r.elapsed),
                    attempts: r.attempts,
                    cache: r.cache.map(CacheResult::as_str),
                },
            )?;
        }
        map.end()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// RFC 3339 UTC timestamp with milliseconds, as the tracing subscriber writes them.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn write(sink: &LogSink, format: LogFormat, r: &AccessRecord) {
    let route = r.route.as_deref().unwrap_or("unmatched");
    let mut buf = match format {
        LogFormat::Json => {
            let line = Line {
                timestamp: timestamp(SystemTime::now()),
                level: "INFO",
                target: "manifold::access",
                message: "request",
                method: r.method.as_str(),
                path: &r.path,
                route,
                status: r.status,
                duration_ms: ms(r.duration),
                request_id: r.request_id.to_str().unwrap_or(""),
                client: r.client.map(|c| c.to_string()),
                user_agent: r.user_agent.as_deref(),
                bytes: r.bytes,
                trace_id: r.trace_id.map(|t| t.to_string()),
                error: r.error,
                partial: r.partial,
                cache: r.cache.map(CacheResult::as_str),
                auth: r.auth.map(AuthResult::as_str),
                encoding: r.encoding.map(Coding::as_str),
                validation: r.validation_failed.then_some("failed"),
                idempotency: r.idempotency.map(IdempotencyResult::as_str),
                backends: Backends(&r.backends),
            };
            match serde_json::to_vec(&line) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
        LogFormat::Pretty => {
            let backends: Vec<String> = r
                .backends
                .iter()
                .map(|(n, b)| format!("{n}={}", b.outcome.as_str()))
                .collect();
            let trace = r
                .trace_id
                .map(|t| format!(" trace={t}"))
                .unwrap_or_default();
            let encoding = r
                .encoding
                .map(|c| format!(" encoding={}", c.as_str()))
                .unwrap_or_default();
            let validation = if r.validation_failed {
                " validation=failed"
            } else {
                ""
            };
            let idempotency = r
                .idempotency
                .map(|i| format!(" idempotency={}", i.as_str()))
                .unwrap_or_default();
            let client = r.client.map(|c| format!(" client={c}")).unwrap_or_default();
            let bytes = r.bytes.map(|b| format!(" bytes={b}")).unwrap_or_default();
            format!(
                "{} access {} {} route={route:?} status={} {:.1}ms id={}{client}{bytes}{trace}{encoding}{validation}{idempotency} partial={} backends=[{}]",
                timestamp(SystemTime::now()),
                r.method,
                r.path,
                r.status,
                r.duration.as_secs_f64() * 1e3,
                r.request_id.to_str().unwrap_or(""),
                r.partial,
                backends.join(" ")
            )
            .into_bytes()
        }
    };
    buf.push(b'\n');
    sink(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(timestamp(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
