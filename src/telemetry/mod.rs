//! What the gateway tells its operators: log lines (set up here: JSON by default, or
//! pretty, on stdout, written off the request path), one access line per request
//! ([`access_log`]), metrics ([`metrics`]) and traces ([`trace`]).

pub mod access_log;
pub mod console;
pub mod metrics;
pub mod trace;

use std::io::Write;
use std::sync::Arc;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::telemetry::access_log::LogSink;

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes.
pub fn init(format: LogFormat) -> (LogSink, WorkerGuard) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_env("MANIFOLD_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn")
    });
    // Colour codes only for a person at a terminal, never into a file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_timer(Millis)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(writer.clone());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    (sink(writer), guard)
}

/// Every line's timestamp as the access line's: RFC 3339, UTC, milliseconds (one
/// precision in one log, so lines sort and compare as text).
struct Millis;

impl tracing_subscriber::fmt::time::FormatTime for Millis {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&access_log::timestamp(std::time::SystemTime::now()))
    }
}

fn sink(writer: NonBlocking) -> LogSink {
    Arc::new(move |line: &[u8]| {
        let mut w = writer.clone();
        let _ = w.write_all(line);
    })
}
