//! OpenTelemetry traces (docs/operations.md#traces), read back by an in-process OTLP/HTTP receiver
//! that decodes what the gateway's exporter really sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::*;

/// One received span, flattened for assertions.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent: String,
    /// The parent came from another process (OTLP span flags).
    remote_parent: bool,
    error: bool,
    attrs: HashMap<String, String>,
    service: String,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "span {} has no attribute {key}: {:?}",
                self.name, self.attrs
            )
        })
    }
}

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1:0.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            store.lock().unwrap().extend(flatten(export));
                            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::new())))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { url, spans }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref().map(text))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(got(s, &service));
            }
        }
    }
    out
}

fn got(s: ProtoSpan, service: &str) -> Got {
    Got {
        name: s.name.clone(),
        kind: SpanKind::try_from(s.kind).unwrap(),
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent: hex(&s.parent_span_id),
        remote_parent: s.flags & 0x300 == 0x300,
        error: s
            .status
            .as_ref()
            .is_some_and(|st| st.code == StatusCode::Error as i32),
        attrs: s
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?))))
            .collect(),
        service: service.to_string(),
    }
}

fn text(v: &Any) -> String {
    match v {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn telemetry(collector: &str, ratio: f64) -> String {
    format!(
        "[telemetry]\nservice_name = \"edge\"\notlp_endpoint = \"{collector}\"\nsample_ratio = {ratio}\n"
    )
}

/// Waits (briefly) until the collector holds at least `n` spans.
async fn spans_at_least(gw: &Gateway, c: &Collector, n: usize) -> Vec<Got> {
    gw.server.flush_traces().await;
    for _ in 0..50 {
        let spans = c.spans();
        if spans.len() >= n {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} spans, got {:#?}", c.spans());
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

const BREAKER: &str = "circuit_breaker = { consecutive_failures = 5, open_for = \"5s\" }";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_is_a_server_span_with_backend_and_client_spans_continuing_the_client_trace() {
    let collector = Collector::start().await;
    let users = Upstream::json(json!({"id": 7, "team": 3})).await;
    let teams = Upstream::json(json!({"name": "core"})).await;
    let gw = Gateway::start(&format!(
        r#"{telemetry}
{u}
{t}
[[routes]]
path = "/api/users/{{id}}"
  [[routes.backends]]
  name = "user"
  upstream = "users"
  path = "/users/{{id}}"
  [[routes.backends]]
  name = "team"
  upstream = "teams"
  path = "/teams/{{user.team}}"
  group = "team"
"#,
        telemetry = telemetry(&collector.url, 1.0),
        u = upstream("users", &users.url(), BREAKER),
        t = upstream("teams", &teams.url(), BREAKER),
    ))
    .await;

    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let answer = gw
        .send(
            gw.client
                .get(format!("{}/api/users/7", gw.base))
                .header("traceparent", &traceparent),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let spans = spans_at_least(&gw, &collector, 5).await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == TRACE && s.service == "edge")
    );

    let server = one(&spans, "GET /api/users/{id}");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(
        server.parent, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert!(server.remote_parent);
    assert_eq!(server.attr("http.route"), "/api/users/{id}");
    assert_eq!(server.attr("http.request.method"), "GET");
    assert_eq!(server.attr("url.path"), "/api/users/7");
    assert_eq!(server.attr("client.address"), "127.0.0.1");
    assert_eq!(server.attr("network.protocol.version"), "1.1");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert!(!server.error);

    for (backend, client, upstream_name, url) in [
        (
            "backend user",
            "GET /users/{id}",
            "users",
            format!("{}/users/7", users.url()),
        ),
        (
            "backend team",
            "GET /teams/{user.team}",
            "teams",
            format!("{}/teams/3", teams.url()),
        ),
    ] {
        let b = one(&spans, backend);
        assert_eq!(b.kind, SpanKind::Internal);
        assert_eq!(b.parent, server.span_id);
        assert!(!b.remote_parent);
        assert_eq!(b.attr("manifold.outcome"), "ok");
        let c = one(&spans, client);
        assert_eq!(c.kind, SpanKind::Client);
        assert_eq!(c.parent, b.span_id, "{client} sits under {backend}");
        assert!(!c.remote_parent);
        assert_eq!(c.attr("manifold.upstream"), upstream_name);
        assert_eq!(c.attr("url.full"), url);
        assert_eq!(c.attr("http.response.status_code"), "200");
        assert_eq!(c.attr("manifold.attempt"), "1");
        assert_eq!(c.attr("manifold.breaker.state"), "closed");
    }

    // Each upstream got the trace, with its own client span as the parent.
    for (up, client) in [
        (&users, "GET /users/{id}"),
        (&teams, "GET /teams/{user.team}"),
    ] {
        let sent = up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        let c = one(&spans, client);
        assert_eq!(sent, format!("00-{TRACE}-{}-01", c.span_id));
    }

    // The access line carries the trace id.
    let line = gw.access_lines().pop().unwrap();
    assert_eq!(line["trace_id"], TRACE);
}

#[tokio::test]
async fn every_attempt_is_a_client_span_and_failures_mark_spans_as_errors() {
    let collector = Collector::start().await;
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    // 503, then 200: one retry.
    let flaky = Upstream::start(move |_| {
        let n = {
            let mut c = counter.lock().unwrap();
            *c += 1;
            *c
        };
        async move {
            if n == 1 {
                json(503, json!({}))
            } else {
                json(200, json!({"ok": true}))
            }
        }
    })
    .await;
    let broken = Upstream::start(|_| async { json(500, json!({})) }).await;
    let gw = Gateway::start(&format!(
        r#"{telemetry}
{f}
{b}
[[routes]]
path = "/flaky"
  [[routes.backends]]
  upstream = "flaky"
  path = "/x"
[[routes]]
path = "/broken"
  [[routes.backends]]
  upstream = "broken"
  path = "/y"
"#,
        telemetry = telemetry(&collector.url, 1.0),
        f = upstream(
            "flaky",
            &flaky.url(),
            "retry = { attempts = 3, backoff = \"1ms\" }"
        ),
        b = upstream("broken", &broken.url(), ""),
    ))
    .await;

    assert_eq!(gw.get("/flaky").await.status, 200);
    let spans = spans_at_least(&gw, &collector, 4).await;
    let mut attempts: Vec<&Got> = spans.iter().filter(|s| s.name == "GET /x").collect();
    attempts.sort_by_key(|s| s.attr("manifold.attempt").to_string());
    assert_eq!(attempts.len(), 2, "one client span per attempt: {spans:#?}");
    assert_eq!(attempts[0].attr("http.response.status_code"), "503");
    assert!(attempts[0].error);
    assert_eq!(attempts[0].attr("error.type"), "error");
    assert_eq!(attempts[1].attr("manifold.attempt"), "2");
    assert_eq!(attempts[1].attr("http.request.resend_count"), "1");
    assert!(!attempts[1].error);
    let backend = one(&spans, "backend flaky");
    assert!(attempts.iter().all(|a| a.parent == backend.span_id));
    assert_eq!(backend.attr("manifold.attempts"), "2");

    let answer = gw.get("/broken").await;
    assert_eq!(answer.status, 502);
    let spans = spans_at_least(&gw, &collector, 7).await;
    let server = one(&spans, "GET /broken");
    assert!(server.error);
    assert_eq!(server.attr("http.response.status_code"), "502");
    assert_eq!(server.attr("error.type"), "UPSTREAM_ERROR");
    assert!(one(&spans, "backend broken").error);
    assert!(one(&spans, "GET /y").error);
}

#[tokio::test]
async fn sampling_is_parent_based() {
    let collector = Collector::start().await;
    let up = Upstream::json(json!({"a": 1})).await;
    let gw = Gateway::start(&format!(
        "{}\n{}\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/a\"\n",
        telemetry(&collector.url, 0.0),
        upstream("up", &up.url(), ""),
    ))
    .await;

    // No parent, ratio 0: not sampled, but the trace still reaches the upstream.
    assert_eq!(gw.get("/a").await.status, 200);
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
    // A sampled parent: kept whatever the ratio.
    let answer = gw
        .send(
            gw.client
                .get(format!("{}/a", gw.base))
                .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01")),
        )
        .await;
    assert_eq!(answer.status, 200);
    // An unsampled parent: dropped.
    let other = "11111111111111111111111111111111";
    gw.send(
        gw.client
            .get(format!("{}/a", gw.base))
            .header("traceparent", format!("00-{other}-{CLIENT_SPAN}-00")),
    )
    .await;
    let spans = spans_at_least(&gw, &collector, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == TRACE));
}

#[tokio::test]
async fn passthrough_routes_are_traced_too() {
    let collector = Collector::start().await;
    let up = Upstream::json(json!({"raw": true})).await;
    let gw = Gateway::start(&format!(
        "{}\n{}\n[[routes]]\npath = \"/raw/{{id}}\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/things/{{id}}\"\n  passthrough = true\n",
        telemetry(&collector.url, 1.0),
        upstream("up", &up.url(), ""),
    ))
    .await;
    assert_eq!(gw.get("/raw/9").await.status, 200);
    let spans = spans_at_least(&gw, &collector, 3).await;
    let server = one(&spans, "GET /raw/{id}");
    let backend = one(&spans, "backend up");
    let client = one(&spans, "GET /things/{id}");
    assert_eq!(backend.parent, server.span_id);
    assert_eq!(client.parent, backend.span_id);
    assert_eq!(client.attr("http.response.status_code"), "200");
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sent,
        format!("00-{}-{}-01", client.trace_id, client.span_id)
    );
}

#[tokio::test]
async fn shutdown_flushes_the_last_spans() {
    let collector = Collector::start().await;
    let up = Upstream::json(json!({"a": 1})).await;
    let gw = Gateway::start(&format!(
        "{}\n{}\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/a\"\n",
        telemetry(&collector.url, 1.0),
        upstream("up", &up.url(), ""),
    ))
    .await;
    assert_eq!(gw.get("/a").await.status, 200);
    gw.server.shutdown();
    assert!(gw.server.wait().await);
    // No waiting: the drain's flush, not the batch timer, delivered them.
    assert_eq!(collector.spans().len(), 3, "{:#?}", collector.spans());
}

/// A collector that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

#[tokio::test]
async fn a_dead_or_stuck_collector_changes_no_answer() {
    let up = Upstream::json(json!({"a": 1})).await;
    for collector in [black_hole().await, format!("http://{}", dead_addr().await)] {
        let gw = Gateway::start(&format!(
            "{}\n{}\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/a\"\n",
            telemetry(&collector, 1.0),
            upstream("up", &up.url(), ""),
        ))
        .await;
        // Enough requests to fill several export batches while the collector stalls.
        for _ in 0..400 {
            let started = tokio::time::Instant::now();
            let answer = gw.get("/a").await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.json(), json!({"a": 1}));
            // An export waiting on the collector (10 s timeout) would show here.
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }
}

#[tokio::test]
async fn a_reload_that_moves_the_collector_flushes_the_old_one_and_uses_the_new() {
    let first = Collector::start().await;
    let second = Collector::start().await;
    let up = Upstream::json(json!({"a": 1})).await;
    let config = |collector: &str| {
        format!(
            "{SERVER}{}\n{}\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/a\"\n",
            telemetry(collector, 1.0),
            upstream("up", &up.url(), ""),
        )
    };
    let gw = Gateway::start(&config(&first.url)).await;
    assert_eq!(gw.get("/a").await.status, 200);

    let moved = manifold::config::parse("test.toml", &config(&second.url)).unwrap();
    gw.server.reload(moved).unwrap();
    assert_eq!(gw.get("/a").await.status, 200);
    gw.server.flush_traces().await;

    // The replaced exporter flushes on its own thread once the old config is let go.
    for _ in 0..100 {
        if first.spans().len() >= 3 && second.spans().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.spans().len(), 3, "{:#?}", first.spans());
    assert_eq!(second.spans().len(), 3, "{:#?}", second.spans());
    assert_ne!(first.spans()[0].trace_id, second.spans()[0].trace_id);
}

#[tokio::test]
async fn with_tracing_off_the_access_log_still_carries_the_clients_trace_id() {
    let up = Upstream::json(json!({"a": 1})).await;
    let gw = Gateway::start(&format!(
        "{}\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/a\"\n",
        upstream("up", &up.url(), ""),
    ))
    .await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    gw.send(
        gw.client
            .get(format!("{}/a", gw.base))
            .header("traceparent", &traceparent),
    )
    .await;
    // Passed on untouched: no span of ours to be the parent.
    assert_eq!(up.last().headers["traceparent"], traceparent.as_str());
    assert_eq!(gw.access_lines().pop().unwrap()["trace_id"], TRACE);

    gw.get("/a").await;
    assert!(up.last().headers.get("traceparent").is_none());
    assert!(gw.access_lines().pop().unwrap().get("trace_id").is_none());
}

#[tokio::test]
async fn a_refused_attempt_says_the_breaker_was_open_and_a_dropped_trace_takes_its_state_along() {
    let collector = Collector::start().await;
    let broken = Upstream::start(|_| async { json(500, json!({})) }).await;
    let gw = Gateway::start(&format!(
        "{}\n{}\n[[routes]]\npath = \"/b\"\n  [[routes.backends]]\n  upstream = \"broken\"\n  path = \"/b\"\n",
        telemetry(&collector.url, 1.0),
        upstream(
            "broken",
            &broken.url(),
            "circuit_breaker = { consecutive_failures = 1, open_for = \"60s\" }"
        ),
    ))
    .await;
    assert_eq!(gw.get("/b").await.status, 502);
    // The breaker is open now: refused without a call.
    // An invalid traceparent starts a new trace; its tracestate must not go along.
    let answer = gw
        .send(
            gw.client
                .get(format!("{}/b", gw.base))
                .header("traceparent", "00-not-a-trace-01")
                .header("tracestate", "vendor=stale"),
        )
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(broken.hits(), 1);
    let spans = spans_at_least(&gw, &collector, 6).await;
    let mut attempts: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect();
    attempts.sort_by_key(|s| s.attr("manifold.breaker.state").to_string());
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert_eq!(attempts[0].attr("manifold.breaker.state"), "closed");
    assert_eq!(attempts[1].attr("manifold.breaker.state"), "open");
    assert_eq!(attempts[1].attr("error.type"), "circuit_open");

    // The same with a call that goes out: the stale tracestate stays behind.
    let ok = Upstream::json(json!({})).await;
    let gw2 = Gateway::start(&format!(
        "{}\n{}\n[[routes]]\npath = \"/ok\"\n  [[routes.backends]]\n  upstream = \"ok\"\n  path = \"/ok\"\n",
        telemetry(&collector.url, 1.0),
        upstream("ok", &ok.url(), ""),
    ))
    .await;
    gw2.send(
        gw2.client
            .get(format!("{}/ok", gw2.base))
            .header("traceparent", "00-not-a-trace-01")
            .header("tracestate", "vendor=stale"),
    )
    .await;
    let seen = ok.last();
    assert!(
        seen.headers.get("tracestate").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen.headers.contains_key("traceparent"));
}

#[tokio::test]
async fn the_token_checks_result_is_on_the_server_span() {
    let collector = Collector::start().await;
    let up = Upstream::json(json!({"ok": true})).await;
    // SAFETY: a name no other test reads, set before the gateway starts.
    unsafe {
        std::env::set_var(
            "MANIFOLD_TEST_JWT_SECRET_SPAN",
            "a-span-test-secret-of-32-bytes-or-more",
        )
    };
    let gw = Gateway::start(&format!(
        "{}\n[auth.jwt.s]\nsecret = \"${{MANIFOLD_TEST_JWT_SECRET_SPAN}}\"\nalgorithms = [\"HS256\"]\n{}\n[[routes]]\npath = \"/guarded\"\nauth = {{ jwt = \"s\" }}\n  [[routes.backends]]\n  upstream = \"up\"\n  path = \"/x\"\n",
        telemetry(&collector.url, 1.0),
        upstream("up", &up.url(), ""),
    ))
    .await;
    let denied = gw.get("/guarded").await;
    assert_eq!(denied.status, 401);
    let spans = spans_at_least(&gw, &collector, 1).await;
    let server = one(&spans, "GET /guarded");
    assert_eq!(server.attr("manifold.auth"), "missing");
    assert_eq!(server.attr("http.response.status_code"), "401");
    assert!(!server.error, "a 401 is the client's, not a server error");
}

/// A gRPC call's client span (docs/operations.md#traces): named `Service/Method`, with
/// `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code` (an integer);
/// the call carries the span's `traceparent` as metadata.
#[tokio::test]
async fn grpc_calls_have_rpc_spans_and_carry_the_trace() {
    use crate::grpc::{GrpcServer, grpc_upstream, user};
    let collector = Collector::start().await;
    let grpc = GrpcServer::start(std::sync::Arc::new(|method, req| {
        if req["id"] == "404" {
            (Duration::ZERO, Err(tonic::Status::not_found("none")))
        } else {
            (Duration::ZERO, Ok(user(method, req)))
        }
    }))
    .await;
    let gw = Gateway::start(&format!(
        "{}{}[[routes]]\npath = \"/u/{{id}}\"\n  [[routes.backends]]\n  name = \"user\"\n  upstream = \"users\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
        telemetry(&collector.url, 1.0),
        grpc_upstream("users", &[grpc.url()], ""),
    ))
    .await;
    assert_eq!(gw.get("/u/1").await.status, 200);
    let spans = spans_at_least(&gw, &collector, 3).await;
    let client = one(&spans, "acme.users.v1.UserService/GetUser");
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(client.attr("rpc.system"), "grpc");
    assert_eq!(client.attr("rpc.service"), "acme.users.v1.UserService");
    assert_eq!(client.attr("rpc.method"), "GetUser");
    assert_eq!(client.attr("rpc.grpc.status_code"), "0");
    let sent = grpc.calls()[0].metadata["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sent.contains(&format!("-{}-", client.span_id)),
        "{sent} names the client span"
    );
    assert_eq!(gw.get("/u/404").await.status, 404);
    let spans = spans_at_least(&gw, &collector, 6).await;
    let failed = spans
        .iter()
        .find(|s| s.name == "acme.users.v1.UserService/GetUser" && s.error)
        .expect("the failed call's span");
    assert_eq!(failed.attr("rpc.grpc.status_code"), "5");
}
