//! OpenTelemetry traces (CONTRACT §6): a server span per request, a span per backend
//! under it, and a client span per upstream attempt, exported over OTLP/HTTP.
//!
//! Spans are recorded by a small recorder of our own rather than the OpenTelemetry
//! SDK: measured on the fan-out benchmark, the SDK's span objects, per-span channel
//! and exporter cost 41 % of the gateway's requests/s at ratio 1.0, against a budget
//! of 15 %. Here a span is a plain record; a request's finished spans travel to the
//! export thread together, in one message, when its server span ends; the export
//! thread batches them into the OTLP protobuf messages of `opentelemetry-proto` and
//! posts them. The W3C trace context is parsed by the OpenTelemetry propagator and
//! the ids are OpenTelemetry's types, so what goes out is standard OTLP.
//!
//! Parents are explicit: each span is made from its parent (`proxy` → `fanout` →
//! `upstream`), not from an ambient "current span", since a route's backends are
//! futures of one task.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::config::TelemetryConfig;
use crate::forward::{TRACEPARENT, TRACESTATE};

mod export;

pub use export::ExportSettings;

/// What decides whether a reload may keep the exporter it has.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub export: ExportSettings,
    pub sample_ratio: f64,
}

impl TraceSettings {
    /// Tracing is on when `otlp_endpoint` is set, or when one of the standard
    /// endpoint variables is (and `OTEL_SDK_DISABLED` is not `true`).
    pub fn from_config(t: &TelemetryConfig) -> Option<TraceSettings> {
        Some(TraceSettings {
            export: ExportSettings::resolve(t, |k| std::env::var(k).ok())?,
            sample_ratio: t.sample_ratio,
        })
    }
}

/// The recorder and its export thread. Built at load; a reload keeps it while its
/// settings are unchanged.
pub struct Tracing {
    pub settings: TraceSettings,
    /// Root spans whose trace id falls under this bound are sampled (the
    /// `TraceIdRatioBased` rule, so every OpenTelemetry SDK would decide alike).
    ratio_bound: u64,
    exporter: export::Exporter,
}

impl Tracing {
    pub fn build(settings: TraceSettings) -> Result<Tracing, String> {
        let exporter = export::Exporter::start(&settings.export)?;
        Ok(Tracing {
            ratio_bound: ratio_bound(settings.sample_ratio),
            settings,
            exporter,
        })
    }

    /// The server span of a request, continuing the client's `traceparent` if it
    /// sent a valid one. Named after the method until the route is known.
    pub fn server_span(self: &Arc<Self>, method: &http::Method, headers: &HeaderMap) -> Span {
        let parent = if headers.contains_key(TRACEPARENT) {
            let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
            Some(cx.span().span_context().clone()).filter(SpanContext::is_valid)
        } else {
            None
        };
        let (trace_id, sampled, state, parent_id) = match parent {
            // Parent-based: the caller's decision stands.
            Some(p) => (
                p.trace_id(),
                p.is_sampled(),
                p.trace_state().clone(),
                p.span_id(),
            ),
            None => {
                let id = new_trace_id();
                (
                    id,
                    keeps(id, self.ratio_bound),
                    TraceState::default(),
                    SpanId::INVALID,
                )
            }
        };
        let trace = Arc::new(Trace {
            tracing: self.clone(),
            trace_id,
            sampled,
            state,
            done: Mutex::new(Done::default()),
        });
        let mut rec = sampled.then(|| {
            Box::new(Record::new(
                method_name(method),
                SpanKind::Server,
                parent_id,
                vec![KeyValue::new("http.request.method", method_name(method))],
            ))
        });
        if let Some(r) = &mut rec {
            r.parent_remote = parent_id != SpanId::INVALID;
        }
        Span(Some(Live {
            trace,
            span_id: new_span_id(),
            rec,
            root: true,
        }))
    }

    /// Exports what is queued (tests, shutdown) and waits for it, up to a few
    /// seconds. Blocks: call it off the event loops.
    pub fn flush(&self) {
        self.exporter.flush();
    }

    /// The drain's last flush: exports what is queued, waiting at most a few seconds
    /// for the collector. Blocks: call it off the event loops.
    pub fn shutdown(&self) {
        self.exporter.flush();
    }
}

/// The trace id of a client's valid `traceparent` (for the access log when tracing
/// is off).
pub fn client_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    if !headers.contains_key(TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id())
}

/// One request's trace: what its spans share.
struct Trace {
    tracing: Arc<Tracing>,
    trace_id: TraceId,
    sampled: bool,
    state: TraceState,
    done: Mutex<Done>,
}

/// Finished spans waiting for the server span; after it ended (`sent`), a late span
/// goes out on its own.
#[derive(Default)]
struct Done {
    spans: Vec<Record>,
    sent: bool,
}

/// A finished or running span, as exported.
pub(crate) struct Record {
    pub name: StringValue,
    pub kind: SpanKind,
    pub parent: SpanId,
    pub parent_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Set when the span failed: the status message.
    pub error: Option<String>,
    /// Filled in when the span ends.
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The W3C `tracestate` carried along, if any.
    pub state: String,
}

impl Record {
    fn new(name: StringValue, kind: SpanKind, parent: SpanId, attributes: Vec<KeyValue>) -> Record {
        let now = SystemTime::now();
        let mut attributes = attributes;
        // Room for what is set as the span goes (status, error, outcome).
        attributes.reserve(4);
        Record {
            name,
            kind,
            parent,
            parent_remote: false,
            start: now,
            end: now,
            attributes,
            error: None,
            trace_id: TraceId::INVALID,
            span_id: SpanId::INVALID,
            state: String::new(),
        }
    }
}

/// A span in flight, or nothing when tracing is off (then every method returns at
/// once). An unsampled span still has ids, so the trace reaches the upstreams, but
/// records nothing. It ends at [`Span::end`] or when dropped.
#[derive(Default)]
pub struct Span(Option<Live>);

struct Live {
    trace: Arc<Trace>,
    span_id: SpanId,
    /// What is recorded (sampled spans only); `None` once ended.
    rec: Option<Box<Record>>,
    /// The server span: ending it sends the trace's spans to the exporter.
    root: bool,
}

impl Span {
    pub fn none() -> Self {
        Span(None)
    }

    /// A child span. `name` and `attributes` are only called when it is recorded.
    pub fn child(
        &self,
        name: impl FnOnce() -> StringValue,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(live) = &self.0 else {
            return Span(None);
        };
        let rec = live
            .trace
            .sampled
            .then(|| Box::new(Record::new(name(), kind, live.span_id, attributes())));
        Span(Some(Live {
            trace: live.trace.clone(),
            span_id: new_span_id(),
            rec,
            root: false,
        }))
    }

    /// Whether this span records (tracing on and the trace sampled).
    pub fn is_on(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.rec.is_some())
    }

    fn rec(&mut self) -> Option<&mut Record> {
        self.0.as_mut()?.rec.as_deref_mut()
    }

    /// Sets an attribute; `value` is only called when the span records.
    pub fn set(&mut self, key: &'static str, value: impl FnOnce() -> Value) {
        if let Some(r) = self.rec() {
            r.attributes.push(KeyValue::new(key, value()));
        }
    }

    pub fn rename(&mut self, name: impl FnOnce() -> StringValue) {
        if let Some(r) = self.rec() {
            r.name = name();
        }
    }

    /// Marks the span failed, with `error.type` as the semantic conventions name it.
    pub fn fail(&mut self, error_type: &'static str, message: impl FnOnce() -> String) {
        if let Some(r) = self.rec() {
            r.attributes.push(KeyValue::new("error.type", error_type));
            r.error = Some(message());
        }
    }

    /// Ends the span now (later calls change nothing).
    pub fn end(&mut self) {
        let Some(live) = &mut self.0 else { return };
        let Some(mut rec) = live.rec.take() else {
            return;
        };
        let trace = &live.trace;
        rec.end = SystemTime::now();
        rec.trace_id = trace.trace_id;
        rec.span_id = live.span_id;
        rec.state = trace.state.header();
        let mut done = match trace.done.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if live.root {
            done.spans.push(*rec);
            done.sent = true;
            let spans = std::mem::take(&mut done.spans);
            drop(done);
            trace.tracing.exporter.send(spans);
        } else if done.sent {
            drop(done);
            trace.tracing.exporter.send(vec![*rec]);
        } else {
            done.spans.push(*rec);
        }
    }

    pub fn trace_id(&self) -> Option<TraceId> {
        Some(self.0.as_ref()?.trace.trace_id)
    }

    /// Writes `traceparent` (and `tracestate`) naming this span as the parent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let Some(live) = &self.0 else { return };
        let flags = if live.trace.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        // 00-{trace id}-{span id}-{flags}: fixed width.
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&mut buf[3..35], &live.trace.trace_id.to_bytes());
        buf[35] = b'-';
        hex_into(&mut buf[36..52], &live.span_id.to_bytes());
        buf[52] = b'-';
        hex_into(&mut buf[53..55], &[flags.to_u8()]);
        if let Ok(v) = HeaderValue::from_bytes(&buf) {
            headers.insert(TRACEPARENT, v);
        }
        let state = live.trace.state.header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::from_str(&state)
        {
            headers.insert(TRACESTATE, v);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end();
    }
}

/// A span whose work may be cut short. Dropped before [`Pending::finish`] (the
/// route deadline passed, or another backend's failure ended the request), it says
/// so — `timeout` once `deadline` has passed, `cancelled` before — rather than end
/// as a silent success.
pub struct Pending {
    pub span: Span,
    deadline: tokio::time::Instant,
    finished: bool,
}

impl Pending {
    pub fn new(span: Span, deadline: tokio::time::Instant) -> Pending {
        Pending {
            span,
            deadline,
            finished: false,
        }
    }

    /// The span, to record the outcome on and end; dropping no longer marks it.
    pub fn finish(&mut self) -> &mut Span {
        self.finished = true;
        &mut self.span
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished || !self.span.is_on() {
            return;
        }
        if tokio::time::Instant::now() >= self.deadline {
            self.span
                .fail("timeout", || "no answer before the deadline".to_owned());
        } else {
            self.span.fail("cancelled", || {
                "another backend's failure ended the request first".to_owned()
            });
        }
        self.span.end();
    }
}

/// OpenTelemetry's `TraceIdRatioBased` rule: a trace is kept when the low 63 bits of
/// its id fall under `ratio × 2^63`.
fn ratio_bound(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

fn keeps(id: TraceId, bound: u64) -> bool {
    let b = id.to_bytes();
    let low = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    (low >> 1) < bound
}

fn new_trace_id() -> TraceId {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The method as a span name or attribute, without an allocation for the usual ones.
pub(crate) fn method_name(m: &http::Method) -> StringValue {
    match *m {
        http::Method::GET => StringValue::from("GET"),
        http::Method::POST => StringValue::from("POST"),
        http::Method::PUT => StringValue::from("PUT"),
        http::Method::DELETE => StringValue::from("DELETE"),
        http::Method::PATCH => StringValue::from("PATCH"),
        http::Method::HEAD => StringValue::from("HEAD"),
        http::Method::OPTIONS => StringValue::from("OPTIONS"),
        _ => StringValue::from(m.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_formatted_as_w3c_says() {
        let mut buf = [0u8; 4];
        hex_into(&mut buf, &[0x0a, 0xf1]);
        assert_eq!(&buf, b"0af1");
    }

    #[test]
    fn sampling_follows_the_trace_id_ratio_rule() {
        let low = TraceId::from(1u128);
        let high = TraceId::from(u128::from(u64::MAX));
        assert!(keeps(low, ratio_bound(1.0)) && keeps(high, ratio_bound(1.0)));
        assert!(!keeps(low, ratio_bound(0.0)) && !keeps(high, ratio_bound(0.0)));
        assert!(keeps(low, ratio_bound(0.5)) && !keeps(high, ratio_bound(0.5)));
        // About half of random ids pass at 0.5.
        let kept = (0..10_000)
            .filter(|_| keeps(new_trace_id(), ratio_bound(0.5)))
            .count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
    }
}
