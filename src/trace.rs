//! OpenTelemetry traces (CONTRACT §6): a server span per request, a span per backend
//! under it, and a client span per upstream attempt, exported over OTLP/HTTP.
//!
//! Spans are made with the OpenTelemetry API and an explicit parent context, handed
//! down the request's path (`proxy` → `fanout` → `upstream`), not through `tracing`'s
//! current span: a route's backends are futures of one task, and the explicit parent
//! keeps each span where it belongs at no per-poll cost. Export happens on the SDK's
//! own thread; a full queue drops spans and never holds a request back.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};

use crate::config::TelemetryConfig;
use crate::metrics::METRICS;

/// Spans waiting for export. At ~7 spans a request this absorbs a second of a busy
/// gateway's traffic while the collector is slow, in a few tens of MiB at most.
const QUEUE: usize = 65_536;
/// How long a span may wait for its batch when traffic is low.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Shutdown waits this long for the last batch, whatever the collector does.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Where spans go and which are kept: what decides whether a reload may keep the
/// exporter it has.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The full `/v1/traces` URL, or `None` to let the `OTEL_EXPORTER_OTLP_*`
    /// variables decide.
    endpoint: Option<String>,
    sample_ratio: f64,
    service_name: String,
}

impl TraceSettings {
    /// Tracing is on when `otlp_endpoint` is set, or when one of the standard
    /// endpoint variables is (and `OTEL_SDK_DISABLED` is not `true`).
    pub fn from_config(t: &TelemetryConfig) -> Option<TraceSettings> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = match &t.otlp_endpoint {
            Some(base) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            None if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
            {
                None
            }
            None => return None,
        };
        Some(TraceSettings {
            endpoint,
            sample_ratio: t.sample_ratio,
            service_name: t.service_name.clone(),
        })
    }
}

/// The tracer and its exporter. Built at load; a reload keeps it while its settings
/// are unchanged.
pub struct Tracing {
    pub settings: TraceSettings,
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

impl Tracing {
    pub fn build(settings: TraceSettings) -> Result<Tracing, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(url) = &settings.endpoint {
            exporter = exporter.with_endpoint(url.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(BATCH_DELAY)
            .build();
        let processor = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            failing: AtomicBool::new(false),
        })
        .with_batch_config(batch)
        .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("manifold");
        Ok(Tracing {
            settings,
            tracer,
            provider,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The server span of a request, continuing the client's `traceparent` if it
    /// sent a valid one. Named after the method until the route is known.
    pub fn server_span(self: &Arc<Self>, method: &http::Method, headers: &HeaderMap) -> Span {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(Cow::Owned(method.as_str().to_owned()))
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .with_attributes([KeyValue::new(
                "http.request.method",
                Value::from(method.as_str().to_owned()),
            )])
            .start_with_context(&self.tracer, &parent);
        Span(Some((self.clone(), Context::new().with_span(span))))
    }

    /// Exports what is queued (tests, shutdown). Blocks: call it off the event loops.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Flushes and stops the exporter, waiting at most a few seconds for the
    /// collector. Blocks: call it off the event loops.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT);
    }
}

impl Drop for Tracing {
    /// A tracer replaced by a reload is dropped by whichever request finished last
    /// on the old config, possibly on an event loop: the final flush, which waits on
    /// the network, runs on a thread of its own.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("manifold-trace-flush".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
            });
    }
}

/// The trace id of a client's valid `traceparent` (for the access log when tracing
/// is off).
pub fn client_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    if !headers.contains_key(crate::forward::TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id())
}

/// A span in flight, or nothing when tracing is off. It ends at [`Span::end`] or
/// when the last clone is dropped.
#[derive(Clone, Default)]
pub struct Span(Option<(Arc<Tracing>, Context)>);

impl Span {
    pub fn none() -> Self {
        Span(None)
    }

    /// A child span. `attributes` is only called when tracing is on.
    pub fn child(
        &self,
        name: impl FnOnce() -> Cow<'static, str>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some((tracing, cx)) = &self.0 else {
            return Span(None);
        };
        let span = tracing
            .tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(&tracing.tracer, cx);
        Span(Some((tracing.clone(), Context::new().with_span(span))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute; `value` is only called when tracing is on.
    pub fn set(&self, key: &'static str, value: impl FnOnce() -> Value) {
        if let Some((_, cx)) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value()));
        }
    }

    pub fn rename(&self, name: impl FnOnce() -> String) {
        if let Some((_, cx)) = &self.0 {
            cx.span().update_name(name());
        }
    }

    /// Marks the span failed, with `error.type` as the semantic conventions name it.
    pub fn fail(&self, error_type: &'static str, message: impl FnOnce() -> String) {
        if let Some((_, cx)) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", error_type));
            span.set_status(Status::error(message()));
        }
    }

    /// Ends the span now rather than when its last clone goes.
    pub fn end(&self) {
        if let Some((_, cx)) = &self.0 {
            cx.span().end();
        }
    }

    pub fn trace_id(&self) -> Option<TraceId> {
        let (_, cx) = self.0.as_ref()?;
        Some(cx.span().span_context().trace_id())
    }

    /// Writes `traceparent` (and `tracestate`) naming this span as the parent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some((tracing, cx)) = &self.0 {
            tracing
                .propagator
                .inject_context(cx, &mut HeaderInjector(headers));
        }
    }
}

/// Counts exported and failed spans and logs when export starts or stops failing.
/// It reports success to the SDK either way: the SDK would log every failed batch,
/// which with a collector down under load is hundreds of lines a second.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        match self.inner.export(batch).await {
            Ok(()) => {
                METRICS.trace_spans("exported", n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                METRICS.trace_spans("failed", n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "trace export failing; spans are dropped until the collector answers");
                }
            }
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
