//! gRPC backends (docs/configuration.md#grpc-backends): a real tonic server in-process
//! (its descriptors compiled by protox from tests/protos, no protoc), called over h2c
//! by the real gateway; a hand-made HTTP/2 server for answers tonic would never send
//! (a status in trailers after headers, broken frames, gzip messages).

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Status;

use crate::bytes_codec::BytesCodec;
use crate::support::*;

pub const SERVICE: &str = "acme.users.v1.UserService";

/// The test protos, compiled as the gateway compiles them.
pub fn pool() -> DescriptorPool {
    let mut c = protox::Compiler::new(["tests/protos"]).unwrap();
    c.include_imports(true)
        .open_files(["tests/protos/users.proto"])
        .unwrap();
    c.descriptor_pool()
}

/// One call the server took: its method, its metadata, its message as JSON (proto3
/// mapping, defaults left out).
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub metadata: HeaderMap,
    pub message: Value,
}

/// What the server answers a call with: after a delay, a message (as JSON) or a status.
pub type Handler = Arc<dyn Fn(&str, &Value) -> (Duration, Result<Value, Status>) + Send + Sync>;

/// A tonic server of `acme.users.v1.UserService` (and grpc.health.v1.Health) on
/// 127.0.0.1:0, answering every method with `handler`.
pub struct GrpcServer {
    pub addr: std::net::SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    pub health: tonic_health::server::HealthReporter,
}

impl GrpcServer {
    pub async fn start(handler: Handler) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler).await
    }

    pub async fn serve(listener: TcpListener, handler: Handler) -> GrpcServer {
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let svc = Svc {
            pool: pool(),
            handler,
            calls: calls.clone(),
        };
        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(health_svc)
                .serve_with_incoming(incoming),
        );
        GrpcServer {
            addr,
            calls,
            health,
        }
    }

    /// A server answering every method with the user its request names.
    pub async fn users() -> GrpcServer {
        Self::start(Arc::new(|method, req| {
            (Duration::ZERO, Ok(user(method, req)))
        }))
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

/// The user a request names: its id, a display name, and fields that show the JSON
/// mapping (a timestamp, a map, a wrapper, a 64-bit number, an enum).
pub fn user(method: &str, req: &Value) -> Value {
    let id = req["id"].as_str().unwrap_or("0").to_string();
    json!({
        "id": id,
        "displayName": req.get("displayName").cloned().unwrap_or(json!(format!("user {id}"))),
        "view": req.get("view").cloned().unwrap_or(json!("BASIC")),
        "tags": ["a", "b"],
        "created": "2024-05-01T12:00:00Z",
        "labels": {"team": "core"},
        "nickname": format!("via {method}"),
        "big": "18446744073709551615",
        "active": req.get("active").cloned().unwrap_or(json!(false)),
        "lang": req.get("lang").cloned().unwrap_or(json!("")),
    })
}

#[derive(Clone)]
struct Svc {
    pool: DescriptorPool,
    handler: Handler,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl tonic::server::NamedService for Svc {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<Request<tonic::body::Body>> for Svc {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let name = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let method = svc
                .pool
                .get_service_by_name(SERVICE)
                .and_then(|s| s.methods().find(|m| m.name() == name));
            let Some(method) = method else {
                return Ok(Status::unimplemented("no such method").into_http());
            };
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(grpc.unary(Unary { svc, method }, req).await)
        })
    }
}

struct Unary {
    svc: Svc,
    method: MethodDescriptor,
}

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let metadata = request.metadata().clone().into_headers();
        let message = DynamicMessage::decode(self.method.input(), request.into_inner())
            .expect("the gateway sends messages of the request type");
        let json = serde_json::to_value(&message).unwrap();
        let name = self.method.name().to_string();
        self.svc.calls.lock().unwrap().push(Call {
            method: name.clone(),
            metadata,
            message: json.clone(),
        });
        let (delay, result) = (self.svc.handler)(&name, &json);
        let output = self.method.output();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let answer = result?;
            let out = DynamicMessage::deserialize(output, &answer).expect("a valid answer");
            Ok(tonic::Response::new(Bytes::from(out.encode_to_vec())))
        })
    }
}

/// The upstream block of a gRPC service at `url`, with the test protos.
pub fn grpc_upstream(name: &str, urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[upstreams.{name}]\nurls = [{}]\nprotocol = \"h2c\"\ngrpc = {{ protos = [\"tests/protos/users.proto\"], import_paths = [\"tests/protos\"] }}\n{extra}\n",
        urls.join(", ")
    )
}

/// A JSON backend and a gRPC one merged: the request message made from a path
/// parameter (a 64-bit id from text), a literal enum by name, a query value and a
/// boolean parameter; the answer in the proto3 JSON mapping (lowerCamelCase, defaults
/// included, enums by name, 64-bit integers as strings, a Timestamp as RFC 3339, an
/// unset message left out), then shaped; the call carries the gRPC headers, the
/// request id, the trace context and the forwarded headers as metadata.
#[tokio::test]
async fn a_grpc_answer_merges_with_json_ones_in_the_proto3_mapping() {
    let grpc = GrpcServer::users().await;
    let orders = Upstream::json(json!({"items": [1, 2]})).await;
    let gw = Gateway::start(&format!(
        "{}{}\n[[routes]]\nname = \"grpc_profile\"\npath = \"/profile/{{user_id}}/{{active}}\"\nforward_headers = [\"x-tenant\"]\n  [[routes.backends]]\n  upstream = \"users\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  message = {{ id = \"{{user_id}}\", view = \"FULL\", active = \"{{active}}\", lang = \"{{query.lang}}\" }}\n  group = \"user\"\n  deny = [\"labels\"]\n  rename = {{ displayName = \"name\" }}\n  [[routes.backends]]\n  upstream = \"orders\"\n  path = \"/orders\"\n  group = \"orders\"\n",
        grpc_upstream("users", &[grpc.url()], "timeout = \"800ms\""),
        upstream("orders", &orders.url(), ""),
    ))
    .await;
    let r = gw
        .send(
            gw.client
                .get(format!("{}/profile/9007199254740993/true?lang=de", gw.base))
                .header("x-tenant", "t1")
                .header("x-other", "nope"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = r.json();
    assert_eq!(
        body["user"],
        json!({
            "id": "9007199254740993",
            "name": "user 9007199254740993",
            "view": "FULL",
            "tags": ["a", "b"],
            "created": "2024-05-01T12:00:00Z",
            "age": 0,
            "nickname": "via GetUser",
            "big": "18446744073709551615",
            "active": true,
            "lang": "de",
            "score": 0.0,
        }),
        "defaults included (age, score), the unset address left out"
    );
    assert_eq!(body["orders"], json!({"items": [1, 2]}));
    let calls = grpc.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "GetUser");
    assert_eq!(
        call.message,
        json!({"id": "9007199254740993", "view": "FULL", "active": true, "lang": "de"})
    );
    let m = &call.metadata;
    assert_eq!(m["content-type"], "application/grpc");
    assert_eq!(m["te"], "trailers");
    let timeout = m["grpc-timeout"].to_str().unwrap();
    let ms: u64 = timeout.strip_suffix('m').unwrap().parse().unwrap();
    assert!(ms > 0 && ms <= 800, "the attempt's time left: {timeout}");
    assert_eq!(m["x-request-id"], r.header("x-request-id").unwrap());
    assert_eq!(m["x-tenant"], "t1", "forwarded headers are metadata");
    assert!(
        !m.contains_key("x-other"),
        "what is not forwarded stays out"
    );
}

/// A server whose every call fails with the code its `FailRequest` names.
async fn failing() -> GrpcServer {
    GrpcServer::start(Arc::new(|_, req| {
        let code = req["code"].as_i64().unwrap_or(0) as i32;
        (
            Duration::ZERO,
            Err(Status::new(
                tonic::Code::from_i32(code),
                format!("failed with {code}: ünïcode"),
            )),
        )
    }))
    .await
}

fn fail_route(name: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath = \"/{name}/{{code}}\"\n  [[routes.backends]]\n  upstream = \"{upstream}\"\n  grpc = \"acme.users.v1.UserService/Fail\"\n  message = {{ code = \"{{code}}\" }}\n"
    )
}

/// Every row of the status table (tonic sends errors as trailers-only answers: the
/// status in the head): the status and code the client gets, the upstream's
/// `grpc-message` (percent-decoded) in the error's message, the backend blamed.
#[tokio::test]
async fn every_grpc_status_is_answered_as_the_table_says() {
    let grpc = failing().await;
    let gw = Gateway::start(&format!(
        "{}{}",
        grpc_upstream("fails", &[grpc.url()], ""),
        fail_route("grpc_table", "fails")
    ))
    .await;
    let table = [
        (1, 502, "UPSTREAM_ERROR"),
        (2, 502, "UPSTREAM_ERROR"),
        (3, 400, "UPSTREAM_REJECTED"),
        (4, 504, "UPSTREAM_TIMEOUT"),
        (5, 404, "UPSTREAM_REJECTED"),
        (6, 409, "UPSTREAM_REJECTED"),
        (7, 403, "UPSTREAM_REJECTED"),
        (8, 429, "UPSTREAM_REJECTED"),
        (9, 400, "UPSTREAM_REJECTED"),
        (10, 409, "UPSTREAM_REJECTED"),
        (11, 400, "UPSTREAM_REJECTED"),
        (12, 502, "UPSTREAM_ERROR"),
        (13, 502, "UPSTREAM_ERROR"),
        (14, 502, "UPSTREAM_ERROR"),
        (15, 502, "UPSTREAM_ERROR"),
        (16, 401, "UPSTREAM_REJECTED"),
    ];
    for (code, status, error) in table {
        let r = gw.get(&format!("/grpc_table/{code}")).await;
        let e = r.error(status, error);
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("failed with {code}: ünïcode")),
            "code {code}: {message}"
        );
        assert_eq!(e["backend"], "fails");
    }
    assert_eq!(
        grpc.hits(),
        16,
        "one call each: none is retried without `retry`"
    );
    // grpc-status 0 without a message is no unary answer.
    gw.get("/grpc_table/0")
        .await
        .error(502, "UPSTREAM_BAD_RESPONSE");
}

/// What a hand-made HTTP/2 server answers: head, body and trailers as given.
#[derive(Clone)]
struct Raw {
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    trailers: Option<Vec<(&'static str, String)>>,
}

/// An h2c server answering every request with what `answer` makes of its path.
async fn raw_server(answer: fn(&str) -> Raw) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let raw = answer(req.uri().path());
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut frames =
                            vec![Ok::<_, Infallible>(http_body::Frame::data(raw.body))];
                        if let Some(t) = raw.trailers {
                            let mut map = HeaderMap::new();
                            for (k, v) in t {
                                map.insert(k, v.parse().unwrap());
                            }
                            frames.push(Ok(http_body::Frame::trailers(map)));
                        }
                        let mut resp = Response::new(http_body_util::StreamBody::new(
                            futures_util::stream::iter(frames),
                        ));
                        for (k, v) in raw.headers {
                            resp.headers_mut().insert(k, v.parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, hits)
}

fn framed(flag: u8, message: &[u8]) -> Bytes {
    let mut b = bytes::BytesMut::new();
    b.put_u8(flag);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

fn encoded_user(id: i64) -> Vec<u8> {
    let pool = pool();
    let m = pool.get_message_by_name("acme.users.v1.User").unwrap();
    let v = json!({"id": id.to_string(), "displayName": "raw"});
    DynamicMessage::deserialize(m, &v).unwrap().encode_to_vec()
}

fn grpc_head() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/grpc".to_string())]
}

/// Answers tonic never gives: a status in trailers after a head, a code outside 0-16,
/// a gzip-compressed message, and broken answers (not gRPC, bad frames, a message of
/// another shape, no status): each read or refused as the contract says.
#[tokio::test]
async fn trailers_compressed_messages_and_broken_answers() {
    let (url, hits) = raw_server(|path| {
        let ok = |body: Bytes| Raw {
            headers: grpc_head(),
            body,
            trailers: Some(vec![("grpc-status", "0".into())]),
        };
        match path.rsplit('/').next().unwrap() {
            // A status in the trailers after the head, with a message.
            "Fail" => Raw {
                headers: grpc_head(),
                body: Bytes::new(),
                trailers: Some(vec![
                    ("grpc-status", "5".into()),
                    ("grpc-message", "no%20such%20user".into()),
                ]),
            },
            "Rename" => Raw {
                headers: grpc_head(),
                body: Bytes::new(),
                trailers: Some(vec![("grpc-status", "17".into())]),
            },
            "GetUser" => {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&encoded_user(7)).unwrap();
                let mut r = ok(framed(1, &gz.finish().unwrap()));
                r.headers.push(("grpc-encoding", "gzip".into()));
                r
            }
            "CreateUser" => Raw {
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from_static(b"{}"),
                trailers: Some(vec![("grpc-status", "0".into())]),
            },
            _ => unreachable!("no other method is routed"),
        }
    })
    .await;
    let (no_status, _) = raw_server(|_| Raw {
        headers: grpc_head(),
        body: framed(0, &encoded_user(1)),
        trailers: None,
    })
    .await;
    let route = |name: &str, upstream: &str, method: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\n  [[routes.backends]]\n  upstream = \"{upstream}\"\n  grpc = \"acme.users.v1.UserService/{method}\"\n"
        )
    };
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}{}{}",
        grpc_upstream(
            "raw",
            std::slice::from_ref(&url),
            "max_response_body = \"1KiB\""
        ),
        grpc_upstream("nostatus", &[no_status], ""),
        route("raw_trailers", "raw", "Fail"),
        route("raw_17", "raw", "Rename"),
        route("raw_gzip", "raw", "GetUser"),
        route("raw_json", "raw", "CreateUser"),
        route("raw_nostatus", "nostatus", "GetUser"),
    ))
    .await;
    let e = gw
        .get("/raw_trailers")
        .await
        .error(404, "UPSTREAM_REJECTED");
    assert!(
        e["message"].as_str().unwrap().contains("no such user"),
        "{e}"
    );
    gw.get("/raw_17").await.error(502, "UPSTREAM_ERROR");
    let r = gw.get("/raw_gzip").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["id"], "7");
    assert_eq!(r.json()["displayName"], "raw");
    gw.get("/raw_json")
        .await
        .error(502, "UPSTREAM_BAD_RESPONSE");
    gw.get("/raw_nostatus")
        .await
        .error(502, "UPSTREAM_BAD_RESPONSE");
    assert!(hits.load(Ordering::SeqCst) >= 4);
    // A frame shorter than its prefix says, a message that does not decode, a
    // gRPC-Web answer.
    let (broken, _) = raw_server(|path| {
        let ok = |body: Bytes| Raw {
            headers: grpc_head(),
            body,
            trailers: Some(vec![("grpc-status", "0".into())]),
        };
        match path.rsplit('/').next().unwrap() {
            "GetUser" => ok(Bytes::from_static(b"\0\0\0\0\x09abc")),
            "Fail" => ok(framed(0, b"\xff\xff\xff")),
            _ => Raw {
                headers: vec![("content-type", "application/grpc-web".into())],
                body: framed(0, &encoded_user(1)),
                trailers: Some(vec![("grpc-status", "0".into())]),
            },
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        grpc_upstream("broken", &[broken], ""),
        route("broken_frame", "broken", "GetUser"),
        route("broken_message", "broken", "Fail"),
        route("broken_web", "broken", "Rename"),
    ))
    .await;
    for path in ["/broken_frame", "/broken_message", "/broken_web"] {
        gw.get(path).await.error(502, "UPSTREAM_BAD_RESPONSE");
    }
}

/// Retries (with `retry`): UNAVAILABLE and connect errors for every method; a timeout
/// only for methods marked NO_SIDE_EFFECTS or IDEMPOTENT; other codes never.
#[tokio::test]
async fn retries_follow_the_methods_idempotency_level() {
    let grpc = GrpcServer::start(Arc::new(|method, req| match method {
        "Fail" => {
            let code = req["code"].as_i64().unwrap_or(0) as i32;
            (
                Duration::ZERO,
                Err(Status::new(tonic::Code::from_i32(code), "no")),
            )
        }
        // Slower than the attempt timeout.
        _ => (Duration::from_millis(400), Ok(user(method, req))),
    }))
    .await;
    let gw = Gateway::start(&format!(
        "{}{}[[routes]]\nname = \"grpc_retry_read\"\npath = \"/read\"\n  [[routes.backends]]\n  upstream = \"retried\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n[[routes]]\nname = \"grpc_retry_write\"\npath = \"/write\"\n  [[routes.backends]]\n  upstream = \"retried\"\n  grpc = \"acme.users.v1.UserService/CreateUser\"\n",
        grpc_upstream(
            "retried",
            &[grpc.url()],
            "timeout = \"100ms\"\nretry = { attempts = 3 }"
        ),
        fail_route("grpc_retry", "retried"),
    ))
    .await;
    gw.get("/grpc_retry/14").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(grpc.hits(), 3, "UNAVAILABLE: every attempt");
    gw.get("/grpc_retry/13").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(grpc.hits(), 4, "INTERNAL: not retried");
    gw.get("/grpc_retry/5")
        .await
        .error(404, "UPSTREAM_REJECTED");
    assert_eq!(grpc.hits(), 5, "NOT_FOUND: not retried");
    gw.get("/read").await.error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(
        grpc.hits(),
        8,
        "a NO_SIDE_EFFECTS method is retried after a timeout"
    );
    gw.get("/write").await.error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(grpc.hits(), 9, "a method without a level is not");
    // A connect error is retried for any method: the call never reached a server.
    let dead = dead_addr().await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_retry_connect\"\npath = \"/c\"\n  [[routes.backends]]\n  upstream = \"two\"\n  grpc = \"acme.users.v1.UserService/CreateUser\"\n",
        grpc_upstream(
            "two",
            &[format!("http://{dead}"), grpc.url()],
            "timeout = \"1s\"\nretry = { attempts = 2 }"
        ),
    ))
    .await;
    for _ in 0..2 {
        let r = gw.get("/c").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

/// Hedging sends a second attempt only for a method marked NO_SIDE_EFFECTS or
/// IDEMPOTENT; a method without a level waits for its one attempt.
#[tokio::test]
async fn only_idempotent_methods_are_hedged() {
    // The first call to either server is slow, the rest are quick.
    let slow_first = || -> Handler {
        let n = Arc::new(AtomicUsize::new(0));
        Arc::new(move |method, req| {
            let delay = if n.fetch_add(1, Ordering::SeqCst) == 0 {
                Duration::from_millis(400)
            } else {
                Duration::ZERO
            };
            (delay, Ok(user(method, req)))
        })
    };
    let hedge_upstream = |name: &str, urls: &[String]| {
        grpc_upstream(
            name,
            urls,
            "timeout = \"2s\"\nretry = { attempts = 2 }\nhedge = { after = \"50ms\" }",
        )
    };
    let hedges = |metrics: &str, upstream: &str, result: &str| {
        series(
            metrics,
            &format!("manifold_hedges_total{{upstream=\"{upstream}\",result=\"{result}\"}}"),
        )
    };
    let first = slow_first();
    let a = GrpcServer::start(first.clone()).await;
    let b = GrpcServer::start(first).await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_hedge_read\"\npath = \"/read/{{id}}\"\n  [[routes.backends]]\n  upstream = \"hedged_read\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
        hedge_upstream("hedged_read", &[a.url(), b.url()]),
    ))
    .await;
    assert_eq!(gw.get("/read/1").await.status, 200);
    assert_eq!(a.hits() + b.hits(), 2, "one attempt and one hedge");
    let metrics = gw.metrics().await;
    assert_eq!(
        hedges(&metrics, "hedged_read", "won"),
        1.0,
        "the hedge's answer was used"
    );
    // Two new servers, slow first again, for a method without a level.
    let first = slow_first();
    let c = GrpcServer::start(first.clone()).await;
    let d = GrpcServer::start(first).await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_hedge_write\"\npath = \"/write/{{id}}\"\n  [[routes.backends]]\n  upstream = \"hedged_write\"\n  grpc = \"acme.users.v1.UserService/CreateUser\"\n",
        hedge_upstream("hedged_write", &[c.url(), d.url()]),
    ))
    .await;
    assert_eq!(gw.get("/write/1").await.status, 200);
    assert_eq!(
        c.hits() + d.hits(),
        1,
        "one attempt only: it waited for the slow one"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        hedges(&metrics, "hedged_write", "won") + hedges(&metrics, "hedged_write", "lost"),
        0.0
    );
}

/// UNAVAILABLE counts for the breaker as a 503 does: it opens, and then refuses
/// without calling.
#[tokio::test]
async fn unavailable_opens_the_breaker() {
    let grpc = failing().await;
    let gw = Gateway::start(&format!(
        "{}{}",
        grpc_upstream(
            "brk",
            &[grpc.url()],
            "circuit_breaker = { consecutive_failures = 2, open_for = \"30s\" }"
        ),
        fail_route("grpc_breaker", "brk"),
    ))
    .await;
    // NOT_FOUND is the upstream's answer, not its fault.
    for _ in 0..3 {
        gw.get("/grpc_breaker/5")
            .await
            .error(404, "UPSTREAM_REJECTED");
    }
    for _ in 0..2 {
        gw.get("/grpc_breaker/14")
            .await
            .error(502, "UPSTREAM_ERROR");
    }
    gw.get("/grpc_breaker/14").await.error(503, "CIRCUIT_OPEN");
    assert_eq!(grpc.hits(), 5, "the open breaker made no call");
    assert_eq!(gw.breaker("brk").await, "open");
}

/// `health_check = { grpc = true }` asks grpc.health.v1.Health/Check: a host that
/// says NOT_SERVING leaves the rotation, and comes back when it serves again.
/// Outlier ejection hears gRPC failures as it hears HTTP ones.
#[tokio::test]
async fn grpc_health_checks_and_outlier_ejection_take_hosts_out() {
    let a = GrpcServer::users().await;
    let b = GrpcServer::users().await;
    a.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_health\"\npath = \"/u/{{id}}\"\n  [[routes.backends]]\n  upstream = \"checked\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
        grpc_upstream(
            "checked",
            &[a.url(), b.url()],
            "health_check = { grpc = true, interval = \"50ms\", unhealthy = 1, healthy = 1 }"
        ),
    ))
    .await;
    host_state(&gw, "checked", 0, "unhealthy").await;
    for i in 0..6 {
        assert_eq!(gw.get(&format!("/u/{i}")).await.status, 200);
    }
    assert_eq!(a.hits(), 0, "the NOT_SERVING host got no call");
    assert_eq!(b.hits(), 6);
    a.health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    host_state(&gw, "checked", 0, "ok").await;
    for i in 0..6 {
        assert_eq!(gw.get(&format!("/u/{i}")).await.status, 200);
    }
    assert!(a.hits() > 0, "back in the rotation");

    // A host that answers UNAVAILABLE is ejected.
    let bad = failing().await;
    let good = failing().await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_outlier\"\npath = \"/o/{{code}}\"\n  [[routes.backends]]\n  upstream = \"ejecting\"\n  grpc = \"acme.users.v1.UserService/Fail\"\n  message = {{ code = \"{{code}}\" }}\n",
        grpc_upstream(
            "ejecting",
            &[bad.url(), good.url()],
            "outlier = { consecutive_failures = 2, eject_for = \"30s\" }"
        ),
    ))
    .await;
    for _ in 0..4 {
        gw.get("/o/14").await;
    }
    let before = (bad.hits(), good.hits());
    for _ in 0..4 {
        gw.get("/o/14").await;
    }
    // Both fail, so both are ejected in turn, within max_ejected (50%: one of two).
    let after = (bad.hits(), good.hits());
    assert_eq!(
        (after.0 - before.0) + (after.1 - before.1),
        4,
        "every request still reaches one host"
    );
    assert!(
        after.0 == before.0 || after.1 == before.1,
        "one host is out of the rotation: {before:?} -> {after:?}"
    );
}

/// Waits (up to 5 s) until `/routes` shows host `i` of `upstream` in `state`.
async fn host_state(gw: &Gateway, upstream: &str, i: usize, state: &str) {
    for _ in 0..250 {
        if gw.routes().await["upstreams"][upstream]["hosts"][i]["state"] == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("host {i} of {upstream} never became {state}");
}

/// A value that does not convert to its field's type is the client's error: 400
/// BAD_PARAMETER naming the field (never the value), and no call.
#[tokio::test]
async fn a_value_that_does_not_convert_is_bad_parameter() {
    let grpc = GrpcServer::users().await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_convert\"\npath = \"/u/{{id}}/{{view}}\"\n  [[routes.backends]]\n  upstream = \"conv\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  message = {{ id = \"{{id}}\", view = \"{{view}}\" }}\n",
        grpc_upstream("conv", &[grpc.url()], ""),
    ))
    .await;
    let e = gw
        .get("/u/secret-text/FULL")
        .await
        .error(400, "BAD_PARAMETER");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("`id`"), "{message}");
    assert!(!message.contains("secret-text"), "{message}");
    let e = gw.get("/u/1/NOPE").await.error(400, "BAD_PARAMETER");
    assert!(e["message"].as_str().unwrap().contains("`view`"), "{e}");
    assert_eq!(grpc.hits(), 0);
    // Enums by name or by number.
    let r = gw.get("/u/1/2").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["view"], "FULL");
    let r = gw.get("/u/-5/BASIC").await;
    assert_eq!(r.json()["id"], "-5");
}

/// `message = "body"` sends the client's JSON body; the default message takes the
/// path parameters named like fields; `{backend.field}` waits for that backend and
/// keeps its value's type; `{jwt.CLAIM}` reads the token.
#[tokio::test]
async fn messages_from_the_body_defaults_other_backends_and_claims() {
    let grpc = GrpcServer::users().await;
    let owners = Upstream::json(json!({"owner": {"id": 77, "lang": "fr"}})).await;
    let secret = "a-grpc-test-secret-of-32-bytes-at-least!";
    let gw = Gateway::start(&format!(
        "[auth.jwt.t]\nsecret = \"{secret}\"\nalgorithms = [\"HS256\"]\n{}{}\
         [[routes]]\nname = \"grpc_body\"\nmethod = \"POST\"\npath = \"/users\"\n  [[routes.backends]]\n  upstream = \"msgs\"\n  grpc = \"acme.users.v1.UserService/CreateUser\"\n  message = \"body\"\n\
         [[routes]]\nname = \"grpc_default\"\npath = \"/users/{{id}}/{{lang}}/{{nothing}}\"\n  [[routes.backends]]\n  upstream = \"msgs\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n\
         [[routes]]\nname = \"grpc_dep\"\npath = \"/owner\"\n  [[routes.backends]]\n  name = \"lookup\"\n  upstream = \"owners\"\n  path = \"/owner\"\n  group = \"lookup\"\n  [[routes.backends]]\n  upstream = \"msgs\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  message = {{ id = \"{{lookup.owner.id}}\", lang = \"lang-{{lookup.owner.lang}}\" }}\n  group = \"user\"\n\
         [[routes]]\nname = \"grpc_claim\"\npath = \"/me\"\nauth = {{ jwt = \"t\" }}\n  [[routes.backends]]\n  upstream = \"msgs\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  message = {{ id = \"{{jwt.sub}}\" }}\n",
        grpc_upstream("msgs", &[grpc.url()], ""),
        upstream("owners", &owners.url(), ""),
    ))
    .await;
    let r = gw
        .send(gw.client.post(format!("{}/users", gw.base)).json(
            &json!({"id": "12", "displayName": "Ann", "tags": ["x"], "score": 1.5, "age": 30}),
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["displayName"], "Ann");
    assert_eq!(
        grpc.calls()[0].message,
        json!({"id": "12", "displayName": "Ann", "tags": ["x"], "score": 1.5, "age": 30}),
        "numbers reach number fields, a double's fraction too"
    );
    let e = gw
        .send(
            gw.client
                .post(format!("{}/users", gw.base))
                .body("not json"),
        )
        .await
        .error(400, "BAD_PARAMETER");
    assert!(e["message"].as_str().unwrap().contains("not JSON"), "{e}");
    let e = gw
        .send(
            gw.client
                .post(format!("{}/users", gw.base))
                .json(&json!({"unknownField": 1})),
        )
        .await
        .error(400, "BAD_PARAMETER");
    assert!(
        e["message"].as_str().unwrap().contains("unknownField"),
        "{e}"
    );

    let r = gw.get("/users/5/de/zzz").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        grpc.calls().last().unwrap().message,
        json!({"id": "5", "lang": "de"})
    );

    let r = gw.get("/owner").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["user"]["id"], "77");
    assert_eq!(
        grpc.calls().last().unwrap().message,
        json!({"id": "77", "lang": "lang-fr"})
    );

    // Another backend reads a gRPC answer by its JSON names.
    let gw2 = Gateway::start(&format!(
        "{}{}[[routes]]\nname = \"grpc_read_by\"\npath = \"/after/{{id}}\"\n  [[routes.backends]]\n  name = \"user\"\n  upstream = \"msgs\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  group = \"user\"\n  [[routes.backends]]\n  upstream = \"owners\"\n  path = \"/by-name/{{user.displayName}}?big={{user.big}}\"\n  group = \"owner\"\n",
        grpc_upstream("msgs", &[grpc.url()], ""),
        upstream("owners", &owners.url(), ""),
    ))
    .await;
    let r = gw2.get("/after/6").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        owners.last().uri.to_string(),
        "/by-name/user%206?big=18446744073709551615",
        "a lowerCamelCase name, a 64-bit string"
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "31", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let r = gw
        .send(gw.client.get(format!("{}/me", gw.base)).bearer_auth(token))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["id"], "31");
}

/// A NO_SIDE_EFFECTS method's answers are cached with `cache_ttl`, keyed by their
/// message; the failure's log line names the grpc-status and message; the upstream's
/// metrics count gRPC calls by outcome as they count HTTP ones.
#[tokio::test]
async fn cached_reads_log_lines_and_metrics() {
    let grpc = GrpcServer::start(Arc::new(|method, req| {
        if req["id"] == "404" {
            (Duration::ZERO, Err(Status::not_found("no user 404")))
        } else {
            (Duration::ZERO, Ok(user(method, req)))
        }
    }))
    .await;
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"grpc_cached\"\npath = \"/u/{{id}}\"\n  [[routes.backends]]\n  upstream = \"grpc_metered\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n  cache_ttl = \"10s\"\n",
        grpc_upstream("grpc_metered", &[grpc.url()], ""),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("/u/1").await.json()["id"], "1");
    }
    assert_eq!(grpc.hits(), 1, "cached by its message");
    assert_eq!(gw.get("/u/2").await.json()["id"], "2");
    assert_eq!(grpc.hits(), 2, "another message, another entry");
    let r = gw.get("/u/404").await;
    r.error(404, "UPSTREAM_REJECTED");
    let id = r.header("x-request-id").unwrap();
    let events = events_for(id, 1).await;
    let line = events
        .iter()
        .find(|e| e["message"] == "backend failed")
        .expect("a backend failed line");
    assert_eq!(line["cause"], "grpc-status 5 NOT_FOUND: no user 404");
    assert_eq!(line["route"], "grpc_cached");
    assert_eq!(line["host"], grpc.addr.to_string());
    let access = gw.access_line(id).await;
    assert_eq!(
        access["backends"]["grpc_metered"]["outcome"], "rejected",
        "{access}"
    );
    // `/routes` says which method, what its message is made of, and its level.
    let routes = gw.routes().await;
    let backend = &routes["routes"][0]["backends"][0];
    assert_eq!(
        backend["grpc"]["method"],
        "acme.users.v1.UserService/GetUser"
    );
    assert_eq!(backend["grpc"]["message"], "default");
    assert_eq!(backend["grpc"]["idempotency_level"], "NO_SIDE_EFFECTS");
    assert_eq!(
        routes["upstreams"]["grpc_metered"]["grpc_services"],
        json!(["acme.users.v1.UserService"])
    );
    let metrics = gw.metrics().await;
    for (outcome, n) in [("ok", 2.0), ("rejected", 1.0)] {
        assert_eq!(
            series(
                &metrics,
                &format!(
                    "manifold_upstream_request_duration_seconds_count{{upstream=\"grpc_metered\",outcome=\"{outcome}\"}}"
                )
            ),
            n
        );
    }
}

/// A reload re-reads the `.proto` files: a renamed field shows under its new name;
/// a `.proto` that no longer compiles refuses the reload, and the gateway keeps
/// serving with the last good one.
#[tokio::test]
async fn a_reload_rereads_the_protos_and_a_broken_one_is_refused() {
    let grpc = GrpcServer::users().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("protos")).unwrap();
    for f in ["users.proto", "common.proto"] {
        std::fs::copy(
            Path::new("tests/protos").join(f),
            dir.path().join("protos").join(f),
        )
        .unwrap();
    }
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "{SERVER}[upstreams.users]\nurls = [\"{}\"]\nprotocol = \"h2c\"\ngrpc = {{ protos = [\"protos/users.proto\"], import_paths = [\"protos\"] }}\n[[routes]]\nname = \"grpc_reload\"\npath = \"/u/{{id}}\"\n  [[routes.backends]]\n  upstream = \"users\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
            grpc.url()
        ),
    )
    .unwrap();
    let gw = Gateway::start_file(&config).await;
    assert_eq!(gw.get("/u/3").await.json()["displayName"], "user 3");
    let proto = dir.path().join("protos/users.proto");
    let text = std::fs::read_to_string(&proto).unwrap();
    std::fs::write(
        &proto,
        text.replace("string display_name = 2;", "string full_name = 2;"),
    )
    .unwrap();
    gw.server
        .reload_file(&config)
        .await
        .expect("the changed .proto loads");
    let body = gw.get("/u/3").await.json();
    assert_eq!(body["fullName"], "user 3", "{body}");
    assert!(body.get("displayName").is_none(), "{body}");
    std::fs::write(&proto, text.replace("int64 id = 1;", "int64 id = 1")).unwrap();
    let refused = gw.server.reload_file(&config).await.unwrap_err();
    assert!(refused.contains("error"), "{refused}");
    let said = all_events()
        .into_iter()
        .filter(|e| e["message"] == "config reload refused")
        .filter_map(|e| e["error"].as_str().map(str::to_string))
        .find(|e| e.contains(&*config.to_string_lossy()))
        .expect("the refusal is logged");
    assert!(said.contains("protos/users.proto:34:3: expected"), "{said}");
    assert_eq!(
        gw.get("/u/4").await.json()["fullName"],
        "user 4",
        "the last good protos serve"
    );
}

/// Messages larger than the body limits fail as those limits do: one going out past
/// `max_request_body` (413, no call), one coming back past `max_response_body` (502).
#[tokio::test]
async fn messages_are_bounded_by_the_body_limits() {
    let grpc = GrpcServer::start(Arc::new(|method, req| {
        let mut u = user(method, req);
        if req["id"] == "2" {
            u["displayName"] = json!("x".repeat(4096));
        }
        (Duration::ZERO, Ok(u))
    }))
    .await;
    let big = Upstream::json(json!({"text": "y".repeat(4096)})).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_request_body = \"1KiB\"\n{}{}\
         [[routes]]\nname = \"grpc_limits_out\"\npath = \"/out\"\n  [[routes.backends]]\n  name = \"big\"\n  upstream = \"big\"\n  path = \"/\"\n  group = \"big\"\n  [[routes.backends]]\n  upstream = \"limited\"\n  grpc = \"acme.users.v1.UserService/CreateUser\"\n  message = {{ displayName = \"{{big.text}}\" }}\n\
         [[routes]]\nname = \"grpc_limits_in\"\npath = \"/in/{{id}}\"\n  [[routes.backends]]\n  upstream = \"limited\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
        grpc_upstream("limited", &[grpc.url()], "max_response_body = \"2KiB\""),
        upstream("big", &big.url(), ""),
    ))
    .await;
    gw.get("/out").await.error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(grpc.hits(), 0);
    assert_eq!(gw.get("/in/1").await.status, 200);
    gw.get("/in/2").await.error(502, "UPSTREAM_BAD_RESPONSE");
}

/// An upstream may name a compiled `FileDescriptorSet` instead of `.proto` files.
#[tokio::test]
async fn a_descriptor_set_serves_as_the_protos_do() {
    let grpc = GrpcServer::users().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = protox::Compiler::new(["tests/protos"]).unwrap();
    c.include_imports(true)
        .open_files(["tests/protos/users.proto"])
        .unwrap();
    std::fs::write(dir.path().join("users.pb"), c.encode_file_descriptor_set()).unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "{SERVER}[upstreams.users]\nurls = [\"{}\"]\nprotocol = \"h2c\"\ngrpc = {{ descriptor_set = \"users.pb\" }}\n[[routes]]\nname = \"grpc_set\"\npath = \"/u/{{id}}\"\n  [[routes.backends]]\n  upstream = \"users\"\n  grpc = \"acme.users.v1.UserService/GetUser\"\n",
            grpc.url()
        ),
    )
    .unwrap();
    let gw = Gateway::start_file(&config).await;
    assert_eq!(gw.get("/u/8").await.json()["displayName"], "user 8");
    // Not a descriptor set: a load error at the key.
    std::fs::write(dir.path().join("users.pb"), b"not protobuf").unwrap();
    let err = manifold::config::Config::load(&config)
        .unwrap_err()
        .render();
    assert!(err.contains("is not a usable FileDescriptorSet"), "{err}");
}
