//! `[telemetry]`: the service's name, log format, the access log and traces.

use url::Url;

use super::diag::Diagnostic;
use super::reader::{Errors, Key, KeyDefault, Table, key};

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

pub const SERVICE_NAME: Key =
    key("service_name", "service.name of the spans.").default(KeyDefault::Str("manifold"));
pub const LOG_FORMAT: Key = key(
    "log_format",
    "How log lines are written: JSON objects, or pretty text for a terminal.",
)
.choices(&["json", "pretty"])
.default(KeyDefault::Str("json"));
pub const ACCESS_LOG: Key =
    key("access_log", "One line per request.").default(KeyDefault::Bool(true));
pub const OTLP_ENDPOINT: Key = key(
    "otlp_endpoint",
    "OTLP/HTTP collector base URL; spans go to {this}/v1/traces.",
)
.default(KeyDefault::Computed(
    "none (no export, unless OTEL_EXPORTER_OTLP_* is set)",
));
pub const SAMPLE_RATIO: Key = key(
    "sample_ratio",
    "Share of new traces sampled (parent-based: a client's sampled flag wins).",
)
.between(0.0, 1.0)
.default(KeyDefault::Number(1.0));

pub(super) fn read_telemetry(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<TelemetryConfig> {
    let service_name = t
        .string(errs, SERVICE_NAME)
        .map_or_else(|| SERVICE_NAME.default_str().to_string(), |(s, _)| s);
    let log_format = match t.choice_or(errs, LOG_FORMAT) {
        "pretty" => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    let access_log = t.bool_or(errs, ACCESS_LOG);
    let otlp_endpoint = match t.string(errs, OTLP_ENDPOINT) {
        Some((s, span)) => match Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                Some(s.trim_end_matches('/').to_string())
            }
            _ => {
                errs.push(
                    Diagnostic::new(span, format!("otlp_endpoint `{s}` is not an http(s) URL"))
                        .label("bad URL"),
                );
                None
            }
        },
        None => None,
    };
    let sample_ratio = t.number_or(errs, SAMPLE_RATIO);
    Some(TelemetryConfig {
        service_name,
        log_format,
        access_log,
        otlp_endpoint,
        sample_ratio,
    })
}
