//! The merge/shaping step on the benchmark's payloads: three upstream bodies in, one
//! response body out, exactly as `/api/dashboard/{id}` of `../shared/bench` does it.
//!
//!     cargo bench --bench merge

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use manifold::request::gateway::Gateway;

const CONFIG: &str = r#"
[upstreams.svc]
urls = ["http://127.0.0.1:7001"]

[[routes]]
path = "/api/dashboard/{id}"

  [[routes.backends]]
  name = "user"
  upstream = "svc"
  path = "/users/{id}"
  group = "user"
  allow = ["id", "name", "avatar", "customer_id"]
  rename = { avatar = "avatar_url" }

  [[routes.backends]]
  name = "orders"
  upstream = "svc"
  path = "/orders?customer={id}"
  target = "items"
  group = "orders"

  [[routes.backends]]
  name = "recommendations"
  upstream = "svc"
  path = "/recommendations/{id}"
  group = "recommendations"
  default = []
"#;

const USER: &[u8] = include_bytes!("data/user.json");
const ORDERS: &[u8] = include_bytes!("data/orders.json");
const RECS: &[u8] = include_bytes!("data/recs.json");

fn merge(c: &mut Criterion) {
    let config = manifold::config::parse("bench.toml", CONFIG).expect("bench config is valid");
    let gateway = Gateway::build(config, None, 1).expect("builds");
    let route = &gateway.routes[0];
    let bodies = [USER, ORDERS, RECS].map(bytes::Bytes::from_static);

    let mut group = c.benchmark_group("dashboard");
    group.throughput(criterion::Throughput::Bytes(
        bodies.iter().map(|b| b.len() as u64).sum(),
    ));
    group.bench_function("decode+shape+merge+serialize", |b| {
        b.iter(|| {
            let results = route
                .backends
                .iter()
                .zip(&bodies)
                .map(|(backend, body)| {
                    Some(manifold::request::merge::decode(
                        &backend.plan,
                        black_box(body),
                    ))
                })
                .collect();
            black_box(manifold::request::merge::assemble(route.plans(), results).expect("merges"))
        })
    });
    group.finish();
}

/// A route-cache hit: the key from the request (path, query, client headers that
/// reach upstreams), the lookup, and the stored body handed back.
fn route_cache_hit(c: &mut Criterion) {
    use manifold::base::forward::Forward;
    use manifold::state::cache::{Cache, Lookup};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = Cache::new(64 << 20);
    let forward = Forward::Only(vec![
        http::header::AUTHORIZATION,
        http::HeaderName::from_static("accept-language"),
    ]);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer abc.def.ghi"),
    );
    headers.insert("accept-language", http::HeaderValue::from_static("de"));
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let body = bytes::Bytes::from_static(include_bytes!("data/orders.json"));
    let key = |h: &http::HeaderMap| {
        format!(
            "r|dashboard|/api/dashboard/42?lang=de{}",
            manifold::state::cache::vary(h, &forward)
        )
    };
    rt.block_on(cache.store(
        key(&headers),
        body,
        std::time::Duration::from_secs(60),
        std::time::Duration::ZERO,
    ));

    c.bench_function("route_cache_hit", |b| {
        b.iter(|| {
            let k = key(black_box(&headers));
            let longest = manifold::state::cache::Longest {
                fresh: std::time::Duration::from_secs(60),
                stale: std::time::Duration::ZERO,
            };
            match rt.block_on(cache.lookup(&k, longest)) {
                Lookup::Fresh(entry) => black_box(entry.body),
                _ => panic!("expected a hit"),
            }
        })
    });
}

/// The JSON rule every answer is checked by, beside serde_json reading the same text
/// without building anything (`IgnoredAny`) and building a tree (`Value`).
fn json_rule(c: &mut Criterion) {
    let mut group = c.benchmark_group("json");
    for (name, body) in [("user", USER), ("orders", ORDERS), ("recs", RECS)] {
        group.throughput(criterion::Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("validate/{name}"), |b| {
            b.iter(|| manifold::base::json::validate(black_box(body)))
        });
        group.bench_function(format!("serde_ignored/{name}"), |b| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).is_ok())
        });
        group.bench_function(format!("serde_value/{name}"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, merge, route_cache_hit, json_rule);
criterion_main!(benches);
