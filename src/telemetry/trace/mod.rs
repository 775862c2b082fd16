//! OpenTelemetry traces (docs/operations.md#traces): a server span per request, a span per backend
//! under it, and a client span per upstream attempt, exported over OTLP/HTTP.
//!
//! Spans are recorded by a small recorder of our own rather than the OpenTelemetry
//! SDK: measured on the fan-out benchmark, the SDK's span objects, per-span channel
//! and exporter cost 40 % of the gateway's requests/s at ratio 1.0, against a target
//! of 15 %. Here a span writes its OTLP protobuf as it goes: attributes are encoded
//! when set, and the finished span is appended to its trace's buffer, so nothing is
//! kept as objects, copied, or freed on another thread. When the server span ends,
//! the trace's bytes go to the export thread in one message; the thread wraps batches
//! of them in an `ExportTraceServiceRequest` and posts it. The W3C trace context is
//! parsed by the OpenTelemetry propagator, ids are OpenTelemetry's types, field
//! numbers are those of `opentelemetry-proto`, and the tests decode what is sent
//! with its generated types.
//!
//! Parents are explicit: each span is made from its parent (`proxy` → `fanout` →
//! `upstream`), not from an ambient "current span", since a route's backends are
//! futures of one task.

// A span's times are real ones (OTLP wants Unix nanoseconds; a paused test clock would
// give spans fake durations), so spans keep std's clock.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::StringValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::base::forward::{TRACEPARENT, TRACESTATE};
use crate::config::TelemetryConfig;

mod export;
mod wire;

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
        let parent = client_context(headers);
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
            done: Mutex::new(Done {
                spans: Chunk {
                    // A server span, a few backends and their attempts, without regrowing.
                    bytes: if sampled {
                        Vec::with_capacity(2048)
                    } else {
                        Vec::new()
                    },
                    count: 0,
                },
                sent: false,
            }),
        });
        let mut rec = sampled.then(|| {
            Record::new(method_name(method), SpanKind::Server, parent_id, |a| {
                match known_method(method) {
                    Some(m) => a.str("http.request.method", m),
                    // Semantic conventions: unknown methods are `_OTHER`, so a client
                    // cannot mint span names or attribute values.
                    None => {
                        a.str("http.request.method", "_OTHER");
                        a.str("http.request.method_original", method.as_str());
                    }
                }
            })
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

    /// Exports what is queued (tests, and the drain's last flush) and waits for it,
    /// at most a few seconds whatever the collector does. Blocks: call it off the
    /// event loops.
    pub fn flush(&self) {
        self.exporter.flush();
    }
}

/// The trace id of a client's valid `traceparent` (for the access log when tracing
/// is off).
pub fn client_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    client_context(headers).map(|sc| sc.trace_id())
}

/// The client's trace context, when it sent a valid `traceparent`.
fn client_context(headers: &HeaderMap) -> Option<SpanContext> {
    if !headers.contains_key(TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    Some(cx.span().span_context().clone()).filter(SpanContext::is_valid)
}

/// One request's trace: what its spans share.
struct Trace {
    tracing: Arc<Tracing>,
    trace_id: TraceId,
    sampled: bool,
    state: TraceState,
    done: Mutex<Done>,
}

/// Finished spans (encoded) waiting for the server span; after it ended (`sent`), a
/// late span goes out on its own.
#[derive(Default)]
struct Done {
    spans: Chunk,
    sent: bool,
}

/// Encoded spans, each a `ScopeSpans.spans` field, ready to be concatenated.
#[derive(Default)]
pub(crate) struct Chunk {
    pub bytes: Vec<u8>,
    pub count: usize,
}

/// A recording span: its attributes and status already encoded, the rest written
/// when it ends.
struct Record {
    buf: Vec<u8>,
    name: StringValue,
    kind: SpanKind,
    parent: SpanId,
    parent_remote: bool,
    start: SystemTime,
    /// The end is `start` plus this clock's elapsed time, so a wall-clock step
    /// cannot make a span end before it began.
    started: Instant,
}

impl Record {
    fn new(
        name: StringValue,
        kind: SpanKind,
        parent: SpanId,
        attributes: impl FnOnce(&mut Attrs<'_>),
    ) -> Record {
        // Room for a span of ours with its usual attributes: no regrowing.
        let mut buf = Vec::with_capacity(384);
        attributes(&mut Attrs(&mut buf));
        Record {
            buf,
            name,
            kind,
            parent,
            parent_remote: false,
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// Appends the span's remaining fields to its buffer and returns the whole span
    /// as a `ScopeSpans.spans` field.
    fn finish(mut self, trace_id: TraceId, state: &TraceState, span_id: SpanId, out: &mut Vec<u8>) {
        let b = &mut self.buf;
        wire::bytes(1, &trace_id.to_bytes(), b);
        wire::bytes(2, &span_id.to_bytes(), b);
        let state = state.header();
        if !state.is_empty() {
            wire::bytes(3, state.as_bytes(), b);
        }
        if self.parent != SpanId::INVALID {
            wire::bytes(4, &self.parent.to_bytes(), b);
        }
        wire::bytes(5, self.name.as_str().as_bytes(), b);
        wire::varint(6, wire::kind(&self.kind), b);
        wire::fixed64(7, wire::nanos(self.start), b);
        wire::fixed64(8, wire::nanos(self.start + self.started.elapsed()), b);
        // Sampled (bit 0); whether the parent is remote is known (bit 8), and it is
        // (bit 9).
        let mut flags: u32 = 0x01 | 0x100;
        if self.parent_remote {
            flags |= 0x200;
        }
        wire::fixed32(16, flags, b);
        wire::bytes(2, b, out);
    }
}

/// Attribute writer: each call appends one encoded `KeyValue` (`Span.attributes`).
pub struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    pub fn str(&mut self, key: &str, value: &str) {
        wire::attribute(key, wire::AnyValue::Str(value), self.0);
    }

    /// A string attribute given in pieces (`["http", "://", host, path]`).
    pub fn concat(&mut self, key: &str, parts: &[&str]) {
        wire::attribute(key, wire::AnyValue::Parts(parts), self.0);
    }

    pub fn int(&mut self, key: &str, value: i64) {
        wire::attribute(key, wire::AnyValue::Int(value), self.0);
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        wire::attribute(key, wire::AnyValue::Bool(value), self.0);
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
    rec: Option<Record>,
    /// The server span: ending it sends the trace's spans to the exporter.
    root: bool,
}

impl Span {
    pub fn none() -> Self {
        Span(None)
    }

    /// A child span. `attributes` is only called when it is recorded.
    pub fn child(
        &self,
        name: &Arc<str>,
        kind: SpanKind,
        attributes: impl FnOnce(&mut Attrs<'_>),
    ) -> Span {
        let Some(live) = &self.0 else {
            return Span(None);
        };
        let rec = live.trace.sampled.then(|| {
            Record::new(
                StringValue::from(name.clone()),
                kind,
                live.span_id,
                attributes,
            )
        });
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

    /// Adds attributes when the span records (`attributes` is not called otherwise).
    pub fn record(&mut self, attributes: impl FnOnce(&mut Attrs<'_>)) {
        if let Some(r) = self.0.as_mut().and_then(|l| l.rec.as_mut()) {
            attributes(&mut Attrs(&mut r.buf));
        }
    }

    pub fn rename(&mut self, name: &Arc<str>) {
        if let Some(r) = self.0.as_mut().and_then(|l| l.rec.as_mut()) {
            r.name = StringValue::from(name.clone());
        }
    }

    /// Marks the span failed, with `error.type` as the semantic conventions name it.
    pub fn fail(&mut self, error_type: &str, message: impl FnOnce() -> String) {
        if let Some(r) = self.0.as_mut().and_then(|l| l.rec.as_mut()) {
            wire::attribute("error.type", wire::AnyValue::Str(error_type), &mut r.buf);
            wire::status_error(&message(), &mut r.buf);
        }
    }

    /// Ends the span now (later calls change nothing).
    pub fn end(&mut self) {
        let Some(live) = &mut self.0 else { return };
        let Some(rec) = live.rec.take() else {
            return;
        };
        let trace = &*live.trace;
        let mut done = match trace.done.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if done.sent {
            drop(done);
            let mut late = Chunk::default();
            rec.finish(trace.trace_id, &trace.state, live.span_id, &mut late.bytes);
            late.count = 1;
            trace.tracing.exporter.send(late);
            return;
        }
        rec.finish(
            trace.trace_id,
            &trace.state,
            live.span_id,
            &mut done.spans.bytes,
        );
        done.spans.count += 1;
        if live.root {
            done.sent = true;
            let spans = std::mem::take(&mut done.spans);
            drop(done);
            trace.tracing.exporter.send(spans);
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
        // The client's own `tracestate` was copied along; it belongs to this trace
        // only if the propagator took it (a new trace, or an unreadable one, drops it).
        match HeaderValue::from_str(&live.trace.state.header()) {
            Ok(v) if !v.is_empty() => {
                headers.insert(TRACESTATE, v);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
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
                "the request ended first (another backend failed, or the client went away)"
                    .to_owned()
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

/// The server span's first name: the method, or `HTTP` for methods outside the
/// standard set (the semantic conventions' rule, which keeps names bounded).
fn method_name(m: &http::Method) -> StringValue {
    StringValue::from(known_method(m).unwrap_or("HTTP"))
}

fn known_method(m: &http::Method) -> Option<&'static str> {
    Some(match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => return None,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span as ProtoSpan, Status, span};
    use prost::Message;
    use std::time::Duration;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    fn record(name: &str, parent: u64, attributes: impl FnOnce(&mut Attrs<'_>)) -> Record {
        Record::new(
            StringValue::from(name.to_owned()),
            SpanKind::Client,
            SpanId::from(parent),
            attributes,
        )
    }

    /// Two spans as `Span::end` encodes them.
    pub fn two_encoded_spans() -> (Chunk, Chunk) {
        let mut out = Vec::new();
        for (i, name) in ["GET /users/{id}", "GET /a/{id}"].into_iter().enumerate() {
            let mut c = Chunk::default();
            record(name, 7, |a| a.str("k", "v")).finish(
                TraceId::from(TRACE),
                &TraceState::default(),
                SpanId::from(i as u64 + 1),
                &mut c.bytes,
            );
            c.count = 1;
            out.push(c);
        }
        let second = out.pop().unwrap();
        (out.pop().unwrap(), second)
    }

    #[test]
    fn a_span_decodes_as_the_otlp_span_it_records() {
        let mut r = record("GET /users/{id}", 7, |a| {
            a.str("url.full", "http://u:1/users/7");
            a.int("http.response.status_code", 503);
            a.bool("manifold.coalesced", true);
            a.int("negative", -3);
        });
        r.parent_remote = true;
        r.start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        // As `Span::fail` writes it.
        wire::attribute("error.type", wire::AnyValue::Str("error"), &mut r.buf);
        wire::status_error("answered 503", &mut r.buf);
        let state = TraceState::from_key_value([("vendor", "1")]).unwrap();
        let mut bytes = Vec::new();
        r.finish(
            TraceId::from(TRACE),
            &state,
            SpanId::from(0xb7u64),
            &mut bytes,
        );

        let decoded = ScopeSpans::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.spans.len(), 1);
        let got: &ProtoSpan = &decoded.spans[0];
        let attr = |k: &str, v| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        assert_eq!(got.trace_id, TRACE.to_be_bytes());
        assert_eq!(got.span_id, 0xb7u64.to_be_bytes());
        assert_eq!(got.parent_span_id, 7u64.to_be_bytes());
        assert_eq!(got.trace_state, "vendor=1");
        assert_eq!(got.name, "GET /users/{id}");
        assert_eq!(got.kind, span::SpanKind::Client as i32);
        assert_eq!(got.flags, 0x301, "sampled, parent known to be remote");
        assert_eq!(got.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert!(got.end_time_unix_nano > got.start_time_unix_nano);
        assert_eq!(
            got.attributes,
            vec![
                attr(
                    "url.full",
                    any_value::Value::StringValue("http://u:1/users/7".into())
                ),
                attr("http.response.status_code", any_value::Value::IntValue(503)),
                attr("manifold.coalesced", any_value::Value::BoolValue(true)),
                attr("negative", any_value::Value::IntValue(-3)),
                attr("error.type", any_value::Value::StringValue("error".into())),
            ]
        );
        assert_eq!(
            got.status,
            Some(Status {
                message: "answered 503".into(),
                code: 2,
            })
        );
    }

    #[test]
    fn traceparent_is_formatted_as_w3c_says() {
        let mut buf = [0u8; 4];
        hex_into(&mut buf, &[0x0a, 0xf1]);
        assert_eq!(&buf, b"0af1");
    }

    #[test]
    fn methods_outside_the_standard_set_do_not_name_spans() {
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_name(&purge).as_str(), "HTTP");
        assert_eq!(known_method(&purge), None);
        assert_eq!(method_name(&http::Method::GET).as_str(), "GET");
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
