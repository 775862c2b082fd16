//! The export thread: batches finished spans and posts them to the collector as
//! OTLP/HTTP protobuf (`POST {endpoint}`, `content-type: application/x-protobuf`).
//!
//! Requests hand over their spans with a non-blocking send into a bounded queue; a
//! full queue drops them (counted), so a slow or dead collector never holds a
//! request back. The thread sleeps rather than waits on the queue, so a send wakes
//! nobody (a wake-up per request cost more than the spans themselves); it is woken
//! once a batch's worth (512 spans) is queued, and otherwise looks every second.

// The exporter is an OS thread of its own, off the event loops: it keeps time and
// sleeps with std, which paused-time tests have no reason to drive.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{Chunk, wire};
use crate::config::TelemetryConfig;
use crate::telemetry::metrics::METRICS;
use crate::telemetry::metrics::labels::SpanExport;

/// Requests' span lists waiting for the export thread (about 7 spans each).
const QUEUE: usize = 16_384;
const MAX_BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// A flush (the drain's last one included) waits this long at most.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go, resolved from the config and the standard `OTEL_EXPORTER_OTLP_*`
/// variables.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The full URL spans are posted to (`.../v1/traces`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    /// Per export request.
    pub timeout: Duration,
    pub service_name: String,
}

impl ExportSettings {
    /// `None` when nothing asks for export. `env` reads a variable (a parameter so
    /// tests need not touch the process environment).
    pub fn resolve(t: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let base = |b: &str| format!("{}/v1/traces", b.trim().trim_end_matches('/'));
        let endpoint = match &t.otlp_endpoint {
            Some(b) => base(b),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(full) => full.trim().to_string(),
                None => base(&env("OTEL_EXPORTER_OTLP_ENDPOINT")?),
            },
        };
        let headers = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| parse_headers(&h))
            .unwrap_or_default();
        let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        Some(ExportSettings {
            endpoint,
            headers,
            timeout,
            service_name: t.service_name.clone(),
        })
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the OTLP exporter spec).
fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let v = percent_encoding::percent_decode_str(v.trim())
                .decode_utf8()
                .ok()?;
            Some((k.trim().to_string(), v.into_owned()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

enum Msg {
    Spans(Chunk),
    Flush(SyncSender<()>),
}

/// The sending side; the thread ends (after a last export) when this is dropped.
pub struct Exporter {
    tx: SyncSender<Msg>,
    /// Spans sent since the thread last drained the queue.
    queued: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

impl Exporter {
    pub fn start(settings: &ExportSettings) -> Result<Exporter, String> {
        let uri: Uri = settings.endpoint.parse().map_err(|e| {
            format!(
                "OTLP endpoint `{}`: {e}",
                crate::base::redact::url(&settings.endpoint)
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "OTLP endpoint `{}` is not an http(s) URL",
                crate::base::redact::url(&settings.endpoint)
            ));
        }
        let mut headers = Vec::new();
        for (k, v) in &settings.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("OTLP header name `{k}` is not valid"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("OTLP header `{k}` has a value that is not valid"))?;
            headers.push((name, value));
        }
        let tls = crate::base::tls::client_config(None)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let resource = Resource {
            attributes: vec![
                kv("service.name", settings.service_name.clone()),
                kv("service.version", env!("CARGO_PKG_VERSION").to_string()),
                kv("telemetry.sdk.name", "manifold".to_string()),
                kv("telemetry.sdk.language", "rust".to_string()),
            ],
            ..Default::default()
        };
        let post = Post {
            uri,
            headers,
            timeout: settings.timeout,
            encoder: Encoder::new(&resource),
            failed_this_round: false,
            failing: false,
        };
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = queued.clone();
        let thread = std::thread::Builder::new()
            .name("manifold-otlp".into())
            .spawn(move || run(rx, &drained, post, tls))
            .map_err(|e| format!("cannot start the trace export thread: {e}"))?
            .thread()
            .clone();
        Ok(Exporter { tx, queued, thread })
    }

    /// Hands a request's spans over, or drops them if the queue is full.
    pub fn send(&self, spans: Chunk) {
        let n = spans.count;
        match self.tx.try_send(Msg::Spans(spans)) {
            Ok(()) => {
                let before = self.queued.fetch_add(n, Ordering::Relaxed);
                if before < MAX_BATCH && before + n >= MAX_BATCH {
                    self.thread.unpark();
                }
            }
            Err(_) => METRICS.trace_spans(SpanExport::Dropped, n as u64),
        }
    }

    /// Exports everything queued so far and waits for it (at most a few seconds).
    pub fn flush(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        // The queue may be full: wait for room, but not past the flush timeout.
        let until = Instant::now() + FLUSH_TIMEOUT;
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.thread.unpark();
                    break;
                }
                Err(TrySendError::Full(m)) if Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(until.saturating_duration_since(Instant::now()));
    }
}

impl Drop for Exporter {
    /// Closes the queue and wakes the thread, which exports what is left and ends.
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, closed));
        self.thread.unpark();
    }
}

struct Post {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    encoder: Encoder,
    /// A post of the current `export` call failed.
    failed_this_round: bool,
    /// Whether the last export failed (to log changes, not every failure).
    failing: bool,
}

fn run(rx: Receiver<Msg>, queued: &AtomicUsize, mut post: Post, tls: rustls::ClientConfig) {
    // A small runtime of this thread's own drives the HTTP client.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("cannot start the trace export runtime; spans are dropped");
        return;
    };
    let https = crate::base::tls::connector(tls, None, None, false);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https);

    // Requests' span lists as they came (not flattened: no copying), and their count.
    let mut batch = Batch::default();
    // When the oldest span of `batch` must go out.
    let mut due: Option<Instant> = None;
    // When the thread last went to sleep with nothing batched: a span drained after
    // it may have been sent any time since, so its second counts from there.
    let mut idle_since = Instant::now();
    let mut acks = Vec::new();
    loop {
        queued.store(0, Ordering::Relaxed);
        let mut closed = false;
        // Drain at most a few batches per round: the queue, not this thread, is the
        // buffer (so memory stays bounded by it).
        let mut more = false;
        loop {
            if batch.spans >= 4 * MAX_BATCH {
                more = true;
                break;
            }
            match rx.try_recv() {
                Ok(Msg::Spans(spans)) => {
                    if batch.spans == 0 {
                        due = Some(idle_since + BATCH_DELAY);
                    }
                    batch.spans += spans.count;
                    batch.groups.push(spans);
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let now = Instant::now();
        if closed || !acks.is_empty() || due.is_some_and(|d| d <= now) {
            export(&rt, &client, &mut post, &mut batch);
            due = None;
            for ack in acks.drain(..) {
                let _ = ack.try_send(());
            }
        } else if batch.spans >= MAX_BATCH {
            export(&rt, &client, &mut post, &mut batch);
            due = None;
        }
        if closed {
            return;
        }
        if more {
            // More is queued than one round takes: no sleep.
            continue;
        }
        if batch.spans == 0 {
            idle_since = Instant::now();
        }
        let wait = due.map_or(BATCH_DELAY, |d| d.saturating_duration_since(Instant::now()));
        std::thread::park_timeout(wait);
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Default)]
struct Batch {
    groups: Vec<Chunk>,
    spans: usize,
}

/// Posts `batch` in requests of about `MAX_BATCH` spans (whole requests' lists) and
/// empties it. After a failed post the rest is counted failed and dropped, so a
/// collector that never answers costs one timeout per round, not one per batch.
fn export(rt: &tokio::runtime::Runtime, client: &HttpsClient, post: &mut Post, batch: &mut Batch) {
    batch.spans = 0;
    post.failed_this_round = false;
    let mut groups = std::mem::take(&mut batch.groups).into_iter().peekable();
    while groups.peek().is_some() {
        if post.failed_this_round {
            let rest: usize = groups.by_ref().map(|g| g.count).sum();
            METRICS.trace_spans(SpanExport::Failed, rest as u64);
            break;
        }
        let mut chunk = Vec::new();
        let mut n = 0;
        while n < MAX_BATCH
            && let Some(g) = groups.next()
        {
            n += g.count;
            chunk.push(g);
        }
        let body = post.encoder.encode(&chunk);
        drop(chunk);
        let n = n as u64;
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = post.uri.clone();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (k, v) in &post.headers {
            h.insert(k.clone(), v.clone());
        }
        let result = rt.block_on(async {
            tokio::time::timeout(post.timeout, async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read the (small) answer so the connection can be kept.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {status}"))
                }
            })
            .await
            .unwrap_or_else(|_| Err("the collector did not answer in time".into()))
        });
        match result {
            Ok(()) => {
                METRICS.trace_spans(SpanExport::Exported, n);
                if std::mem::replace(&mut post.failing, false) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                METRICS.trace_spans(SpanExport::Failed, n);
                post.failed_this_round = true;
                if !std::mem::replace(&mut post.failing, true) {
                    tracing::warn!(error = %e, endpoint = %crate::base::redact::url(&post.uri.to_string()), "trace export failing; spans are dropped until the collector answers");
                }
            }
        }
    }
}

/// Wraps already encoded spans in one `ExportTraceServiceRequest`:
/// `{ resource_spans = 1: { resource = 1, scope_spans = 2: { scope = 1, spans = 2... } } }`.
/// The resource and scope are encoded once; the spans are copied in as they are.
struct Encoder {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Encoder {
    fn new(resource: &Resource) -> Encoder {
        let scope = InstrumentationScope {
            name: "manifold".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        Encoder {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
        }
    }

    fn encode(&self, chunks: &[Chunk]) -> Vec<u8> {
        let spans: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        let scope_spans = wire::field_len(self.scope.len()) + spans;
        let resource_spans = wire::field_len(self.resource.len()) + wire::field_len(scope_spans);
        let mut out = Vec::with_capacity(wire::field_len(resource_spans));
        wire::header(1, resource_spans, &mut out);
        wire::bytes(1, &self.resource, &mut out);
        wire::header(2, scope_spans, &mut out);
        wire::bytes(1, &self.scope, &mut out);
        for c in chunks {
            out.extend_from_slice(&c.bytes);
        }
        out
    }
}

fn kv(key: &str, value: String) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use std::collections::HashMap;

    fn telemetry(endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            service_name: "edge".into(),
            log_format: LogFormat::Json,
            access_log: true,
            otlp_endpoint: endpoint.map(str::to_string),
            sample_ratio: 1.0,
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_config_wins_and_gets_the_traces_path() {
        let s = ExportSettings::resolve(
            &telemetry(Some("http://collector:4318/")),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")]),
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn the_standard_variables_turn_export_on() {
        assert!(ExportSettings::resolve(&telemetry(None), env(&[])).is_none());
        let s = ExportSettings::resolve(
            &telemetry(None),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, tenant=7"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://base:4318/v1/traces");
        assert_eq!(
            s.headers,
            vec![
                ("x-api-key".to_string(), "a b".to_string()),
                ("tenant".to_string(), "7".to_string())
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(2500));
        let s = ExportSettings::resolve(
            &telemetry(None),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
            ]),
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://t:9/custom", "used as given");
    }

    #[test]
    fn what_is_encoded_decodes_as_otlp() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;

        let resource = Resource {
            attributes: vec![kv("service.name", "edge".into())],
            ..Default::default()
        };
        let (first, second) = super::super::tests::two_encoded_spans();
        let bytes = Encoder::new(&resource).encode(&[first, second]);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        let rs = &decoded.resource_spans[0];
        assert_eq!(rs.resource.as_ref().unwrap(), &resource);
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "manifold");
        let names: Vec<&str> = ss
            .spans
            .iter()
            .map(|s: &ProtoSpan| s.name.as_str())
            .collect();
        assert_eq!(names, ["GET /users/{id}", "GET /a/{id}"]);
    }

    #[test]
    fn a_bad_endpoint_or_header_is_refused_with_the_reason() {
        let settings = |endpoint: &str, headers: Vec<(String, String)>| ExportSettings {
            endpoint: endpoint.into(),
            headers,
            timeout: DEFAULT_TIMEOUT,
            service_name: "edge".into(),
        };
        let err = |s: ExportSettings| Exporter::start(&s).err().unwrap_or_default();
        assert!(err(settings("localhost:4318/v1/traces", vec![])).contains("OTLP endpoint"));
        assert!(err(settings("ftp://c/v1/traces", vec![])).contains("not an http(s) URL"));
        let hidden = err(settings("ftp://u:s3cret@c/v1/traces", vec![]));
        assert!(
            hidden.contains("ftp://***@c") && !hidden.contains("s3cret"),
            "{hidden}"
        );
        assert!(
            err(settings(
                "http://c:4318/v1/traces",
                vec![("bad key".into(), "v".into())]
            ))
            .contains("header name")
        );
        assert!(Exporter::start(&settings("http://c:4318/v1/traces", vec![])).is_ok());
    }

    #[test]
    fn otel_sdk_disabled_turns_export_off() {
        assert!(
            ExportSettings::resolve(
                &telemetry(Some("http://collector:4318")),
                env(&[("OTEL_SDK_DISABLED", "true")]),
            )
            .is_none()
        );
    }
}
