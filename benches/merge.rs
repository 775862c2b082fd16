//! The merge/shaping step on the benchmark's payloads: three upstream bodies in, one
//! response body out, exactly as `/api/dashboard/{id}` of `../shared/bench` does it.
//!
//!     cargo bench --bench merge

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use manifold::gateway::Gateway;

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
    let bodies = [USER, ORDERS, RECS];

    let mut group = c.benchmark_group("dashboard");
    group.throughput(criterion::Throughput::Bytes(
        bodies.iter().map(|b| b.len() as u64).sum(),
    ));
    group.bench_function("decode+shape+merge+serialize", |b| {
        b.iter(|| {
            let results = route
                .backends
                .iter()
                .zip(bodies)
                .map(|(backend, body)| Some(manifold::merge::decode(backend, black_box(body))))
                .collect();
            black_box(manifold::merge::assemble(route, results).expect("merges"))
        })
    });
    group.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
