//! `manifold demo`: three small JSON services standing in for real upstreams, on the
//! ports the repository's `routes.toml` names, so the gateway has something to call.
//!
//! users (fast), orders (fast, answers by customer id), recommendations (a little slow,
//! ~120 ms, to show the deadline and optional backends at work).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
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
    Ok(addrs)
}

async fn serve(listener: TcpListener, name: &'static str, delay: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(answer(name, &req))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(service: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
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
        }),
        ("orders", Some(("", "orders"))) => {
            let customer = param("customer").unwrap_or_default();
            let limit: usize = param("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(10)
                .min(20);
            let items: Vec<Value> = (0..limit)
                .map(|i| json!({"id": format!("o-{i}"), "customer": customer, "sku": format!("SKU-{}", 1000 + i), "qty": 1 + i % 3, "price_cents": 1999 + 10 * i}))
                .collect();
            json!({"total": 12, "items": items})
        }
        ("recommendations", Some(("/recommendations", _))) => json!([
            {"sku": "SKU-2000", "title": "Lamp", "score": 0.97},
            {"sku": "SKU-2001", "title": "Desk", "score": 0.91},
            {"sku": "SKU-2002", "title": "Chair", "score": 0.88}
        ]),
        _ => return json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    json_response(StatusCode::OK, body)
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
        format!("curl -s -i http://{public}/api/users/42"),
        format!("curl -s -i http://{public}/api/users/404"),
        format!("curl -s -i http://{public}/api/nope"),
    ]
}
