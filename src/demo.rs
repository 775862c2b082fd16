//! `manifold demo`: three small JSON services and a gRPC one standing in for real upstreams, on the
//! ports the repository's `routes.toml` names, so the gateway has something to call.
//!
//! users (fast), orders (fast, answers by customer id), recommendations (a little slow,
//! ~120 ms, to show the deadline and optional backends at work), and profiles, a gRPC
//! service (protos/profiles.proto) merged with the JSON ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;

/// The upstream names the demo serves, and how slow each one is.
pub const SERVICES: [(&str, Duration); 3] = [
    ("users", Duration::ZERO),
    ("orders", Duration::ZERO),
    ("recommendations", Duration::from_millis(120)),
];

/// Starts the demo services on the addresses `config` gives their upstreams.
pub async fn start(config: &Config) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for (name, delay) in SERVICES {
        let upstream = config
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .ok_or_else(|| format!("the demo needs an upstream named `{name}` in the config"))?;
        let url = &upstream.settings.urls[0];
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port_or_known_default().unwrap_or(80);
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|e| format!("demo service `{name}` cannot listen on {host}:{port}: {e}"))?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(serve(listener, name, delay));
    }
    // The gRPC service, on the address and with the descriptors the config gives it.
    let profiles = config
        .upstreams
        .iter()
        .find(|u| u.name == GRPC_SERVICE)
        .ok_or_else(|| {
            format!("the demo needs an upstream named `{GRPC_SERVICE}` in the config")
        })?;
    let profile = profiles
        .grpc
        .as_ref()
        .and_then(|p| p.pool.get_message_by_name("demo.profiles.v1.Profile"))
        .ok_or_else(|| format!("upstream `{GRPC_SERVICE}` needs protos/profiles.proto"))?;
    let url = &profiles.settings.urls[0];
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let listener = TcpListener::bind((host, port)).await.map_err(|e| {
        format!("demo service `{GRPC_SERVICE}` cannot listen on {host}:{port}: {e}")
    })?;
    addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(serve_grpc(listener, profile));
    Ok(addrs)
}

/// The demo's gRPC upstream (protos/profiles.proto).
pub const GRPC_SERVICE: &str = "profiles";

/// `demo.profiles.v1.ProfileService/GetProfile` over h2c: a few lines of the gRPC
/// wire format (one length-prefixed message each way, the status in trailers), enough
/// for a demo; the tests call a real gRPC server (tonic).
async fn serve_grpc(listener: TcpListener, profile: prost_reflect::MessageDescriptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let profile = profile.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let profile = profile.clone();
                async move { Ok::<_, Infallible>(grpc_answer(req, &profile).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type GrpcBody = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>,
>;

async fn grpc_answer(
    req: Request<Incoming>,
    profile: &prost_reflect::MessageDescriptor,
) -> Response<GrpcBody> {
    use prost::Message as _;
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // GetProfileRequest { int64 user_id = 1 }: read by hand, one varint field.
    let user_id = body
        .get(5..)
        .and_then(|m| {
            #[derive(Clone, PartialEq, prost::Message)]
            struct GetProfileRequest {
                #[prost(int64, tag = "1")]
                user_id: i64,
            }
            GetProfileRequest::decode(m).ok()
        })
        .map_or(0, |r| r.user_id);
    let (status, message, frames) = if path != "/demo.profiles.v1.ProfileService/GetProfile" {
        ("12", "unknown method", Vec::new())
    } else if user_id == 404 {
        ("5", "no profile for user 404", Vec::new())
    } else {
        let json = json!({
            "userId": user_id.to_string(),
            "headline": format!("Stationery enthusiast #{user_id}"),
            "tier": if user_id % 2 == 0 { "PRO" } else { "FREE" },
            "badges": ["early adopter", "reviewer"],
            "followers": 128 + user_id % 1000,
            "memberSince": "2019-04-12T09:00:00Z",
        });
        let encoded = prost_reflect::DynamicMessage::deserialize(profile.clone(), &json)
            .map(|m| m.encode_to_vec())
            .unwrap_or_default();
        ("0", "", vec![crate::upstream::grpc::frame(&encoded)])
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    if !message.is_empty() {
        trailers.insert("grpc-message", http::HeaderValue::from_static(message));
    }
    let mut parts: Vec<Result<http_body::Frame<Bytes>, Infallible>> = frames
        .into_iter()
        .map(|f| Ok(http_body::Frame::data(f)))
        .collect();
    parts.push(Ok(http_body::Frame::trailers(trailers)));
    let mut resp = Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        parts,
    )));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, crate::upstream::grpc::CONTENT_TYPE);
    resp
}

async fn serve(listener: TcpListener, name: &'static str, delay: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let (parts, body) = req.into_parts();
                // The gateway bounds what it sends (max_request_body).
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok::<_, Infallible>(answer(name, &parts, &body))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(service: &str, req: &http::request::Parts, sent: &Bytes) -> Response<Full<Bytes>> {
    if service == "orders" && req.method == http::Method::POST && req.uri.path() == "/orders" {
        return place_order(sent);
    }
    let path = req.uri.path();
    let query = req.uri.query().unwrap_or("");
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    };
    let body = match (service, path.rsplit_once('/')) {
        ("users", Some(("/users", "404"))) => {
            return json_response(StatusCode::NOT_FOUND, json!({"error": "no such user"}));
        }
        ("users", Some(("/users", id))) => json!({
            "id": id,
            "name": format!("Demo User {id}"),
            "avatar": format!("https://img.example/{id}.png"),
            "customer_id": format!("c-{id}"),
            "email": format!("user{id}@example.com"),
            "plan": "pro",
            "lang": param("lang").unwrap_or_else(|| "en".into()),
            "member_since": "2019-04-12",
            "bio": "Collects fountain pens, writes long letters, and reviews every notebook the shop stocks. Prefers dotted paper and blue-black ink.",
            "addresses": [
                {"kind": "home", "line1": format!("{id} Harbour Street"), "city": "Bristol", "postcode": "BS1 4RW", "country": "GB"},
                {"kind": "work", "line1": "Floor 3, 1 Temple Quay", "city": "Bristol", "postcode": "BS1 6DZ", "country": "GB"}
            ],
            "preferences": {"newsletter": true, "currency": "GBP", "units": "metric", "theme": "system",
                            "notifications": {"email": true, "push": false, "sms": false}},
            "loyalty": {"tier": "gold", "points": 4210, "next_tier_at": 5000},
            "saved_searches": ["fountain pens under 50", "dotted notebooks A5", "blue-black ink", "desk lamps warm white"],
            "recently_viewed": recently_viewed()
        }),
        ("orders", Some(("", "orders"))) => {
            let customer = param("customer").unwrap_or_default();
            let limit: usize = param("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(10)
                .min(20);
            let items: Vec<Value> = (0..limit)
                .map(|i| {
                    const TITLES: [&str; 4] = ["Desk lamp", "Notebook, A5 dotted", "Fountain pen", "Wool blanket"];
                    const STATUS: [&str; 3] = ["delivered", "shipped", "processing"];
                    json!({"id": format!("o-{i}"), "customer": customer, "sku": format!("SKU-{}", 1000 + i),
                           "title": TITLES[i % 4], "qty": 1 + i % 3, "price_cents": 1999 + 10 * i,
                           "status": STATUS[i % 3], "placed_at": format!("2026-11-{:02}T09:30:00Z", 1 + i),
                           "image_url": format!("https://img.example/sku/{}.jpg", 1000 + i)})
                })
                .collect();
            json!({"total": 12, "items": items})
        }
        ("recommendations", Some(("/recommendations", _))) => json!([
            {"sku": "SKU-2000", "title": "Lamp", "score": 0.97, "reason": "bought with your desk", "image_url": "https://img.example/sku/2000.jpg"},
            {"sku": "SKU-2001", "title": "Desk", "score": 0.91, "reason": "popular in your area", "image_url": "https://img.example/sku/2001.jpg"},
            {"sku": "SKU-2002", "title": "Chair", "score": 0.88, "reason": "goes with your lamp", "image_url": "https://img.example/sku/2002.jpg"}
        ]),
        _ => return json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    revalidated(req, Bytes::from(body.to_string()))
}

/// A user's recently viewed products: part of what makes a real profile a few KB.
fn recently_viewed() -> Vec<Value> {
    const TITLES: [&str; 6] = [
        "Brass pen clip",
        "Ink converter",
        "Leather pen case",
        "Blotting paper",
        "Nib, fine",
        "Desk pad",
    ];
    TITLES
        .iter()
        .enumerate()
        .map(|(i, title)| {
            json!({"sku": format!("SKU-{}", 3000 + i), "title": title,
                   "viewed_at": format!("2026-12-0{}T18:{:02}:00Z", 1 + i, i * 7)})
        })
        .collect()
}

/// What a well-behaved service does: a validator of its answer, `private, no-cache`
/// (keep it, ask again), and 304 when the client already holds it.
/// `POST /orders`: 201 with the new order, or the service's own field errors (422) for
/// a product that is sold out (`SKU-0000`), which the route passes to the form as they
/// are (`pass_errors`). The gateway checked the body's shape already.
fn place_order(sent: &Bytes) -> Response<Full<Bytes>> {
    let order: Value = serde_json::from_slice(sent).unwrap_or(Value::Null);
    let items = order["items"].as_array().cloned().unwrap_or_default();
    let sold_out: Vec<Value> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| i["sku"] == "SKU-0000")
        .map(|(n, _)| json!({"field": format!("items/{n}/sku"), "problem": "sold out"}))
        .collect();
    if !sold_out.is_empty() {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "some items cannot be ordered", "fields": sold_out}),
        );
    }
    json_response(
        StatusCode::CREATED,
        json!({"id": "o-1042", "status": "processing", "items": items,
               "note": order.get("note").cloned().unwrap_or(Value::Null)}),
    )
}

fn revalidated(req: &http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(&body));
    let etag =
        http::HeaderValue::from_str(&etag).unwrap_or(http::HeaderValue::from_static("\"0\""));
    let matched = req
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| crate::request::wire::matches_any(v, &etag));
    let mut resp = if matched {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, no-cache"),
    );
    resp
}

fn json_response(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The curl lines `manifold demo` prints.
pub fn curl_lines(public: SocketAddr) -> Vec<String> {
    vec![
        format!("curl -s http://{public}/api/dashboard/42"),
        format!("curl -s -H 'accept-language: de' 'http://{public}/api/dashboard/42?lang=de'"),
        format!("curl -s -i http://{public}/api/home/42"),
        format!("curl -s http://{public}/api/profile/42"),
        format!("curl -s -i http://{public}/api/users/42"),
        format!("curl -s -i http://{public}/api/users/404"),
        format!("curl -s -i http://{public}/api/nope"),
        format!(
            "curl -s -i -X POST -H 'content-type: application/json' -d '{{\"items\":[{{\"sku\":\"SKU-1001\",\"qty\":2}}]}}' http://{public}/api/orders"
        ),
        format!(
            "curl -s -i -X POST -H 'content-type: application/json' -d '{{\"items\":[{{\"sku\":\"pen\",\"qty\":0}}]}}' http://{public}/api/orders"
        ),
        format!(
            "curl -s -i -X POST -H 'content-type: application/json' -d '{{\"items\":[{{\"sku\":\"SKU-0000\",\"qty\":1}}]}}' http://{public}/api/orders"
        ),
    ]
}

/// What `manifold demo` prints once it serves: the curl lines, the admin endpoints,
/// and the console's address when it is on.
pub fn banner(public: SocketAddr, admin: Option<SocketAddr>, console: bool) -> String {
    let mut text = String::from("\nmanifold demo is up. Try:\n\n");
    for line in curl_lines(public) {
        text.push_str("  ");
        text.push_str(&line);
        text.push('\n');
    }
    if let Some(a) = admin {
        text.push_str(&format!("  curl -s http://{a}/routes\n"));
        if console {
            text.push_str(&format!(
                "\nThe console (live figures, the last slow and failed requests): http://{a}/\n"
            ));
        }
    }
    text
}
