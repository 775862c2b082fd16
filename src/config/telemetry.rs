//! `[telemetry]`: the service's name, log format, the access log and traces.

use url::Url;

use super::diag::Diagnostic;
use super::reader::{Errors, Table, key};

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

pub(super) fn read_telemetry(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<TelemetryConfig> {
    let service_name = t
        .string(
            errs,
            key(
                "service_name",
                "service.name of the spans. Default manifold.",
            ),
        )
        .map(|(s, _)| s);
    let log_format = match t.string(errs, key("log_format", "json (default) or pretty.")) {
        None => LogFormat::Json,
        Some((s, _)) if s == "json" => LogFormat::Json,
        Some((s, _)) if s == "pretty" => LogFormat::Pretty,
        Some((s, span)) => {
            errs.push(
                Diagnostic::new(span, format!("unknown log_format `{s}`"))
                    .label("expected \"json\" or \"pretty\""),
            );
            LogFormat::Json
        }
    };
    let access_log = t
        .bool(
            errs,
            key("access_log", "One line per request. Default true."),
        )
        .unwrap_or(true);
    let otlp_endpoint = match t.string(errs, key("otlp_endpoint", "OTLP/HTTP collector base URL; spans go to {this}/v1/traces. Default: OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.")) {
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
    let sample_ratio = t.number(errs, key("sample_ratio", "Share of new traces sampled (parent-based: a client's sampled flag wins). Default 1.0.").between(0.0, 1.0)).map_or(1.0, |(r, _)| r);
    Some(TelemetryConfig {
        service_name: service_name.unwrap_or_else(|| "manifold".to_string()),
        log_format,
        access_log,
        otlp_endpoint,
        sample_ratio,
    })
}
