//! The request path's share of tracing: the spans of one three-backend request (server,
//! three backends, three client attempts, with the attributes manifold sets), made,
//! ended and handed to the export thread.
//!
//!     cargo bench --bench trace

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use manifold::config::{LogFormat, TelemetryConfig};
use manifold::telemetry::trace::{TraceSettings, Tracing};
use opentelemetry::trace::SpanKind;

fn one_request(tracing: &Arc<Tracing>, route: &Arc<str>, names: &[(Arc<str>, Arc<str>)]) {
    let headers = HeaderMap::new();
    let mut server = tracing.server_span(&Method::GET, &headers);
    server.record(|a| {
        a.str("url.path", "/api/dashboard/42");
        a.str("client.address", "127.0.0.1");
    });
    server.rename(route);
    for (backend, client) in names {
        let mut b = server.child(backend, SpanKind::Internal, |a| {
            a.str("manifold.backend", backend);
            a.str("manifold.upstream", "svc");
        });
        let mut c = b.child(client, SpanKind::Client, |a| {
            a.str("http.request.method", "GET");
            a.str("url.full", "http://127.0.0.1:7001/users/42");
            a.str("server.address", "127.0.0.1");
            a.int("server.port", 7001);
            a.str("manifold.upstream", "svc");
            a.int("manifold.attempt", 1);
        });
        let mut h = HeaderMap::new();
        c.inject(&mut h);
        c.record(|a| a.int("http.response.status_code", 200));
        c.end();
        b.record(|a| a.str("manifold.outcome", "ok"));
        b.end();
        black_box(h);
    }
    server.record(|a| a.int("http.response.status_code", 200));
    server.end();
}

fn bench(c: &mut Criterion) {
    let telemetry = TelemetryConfig {
        service_name: "bench".into(),
        log_format: LogFormat::Json,
        access_log: false,
        // Nothing listens there: exports fail fast, off this thread.
        otlp_endpoint: Some("http://127.0.0.1:9".into()),
        sample_ratio: 1.0,
    };
    let settings = TraceSettings::from_config(&telemetry).expect("tracing on");
    let tracing = Arc::new(Tracing::build(settings).expect("exporter starts"));
    let route: Arc<str> = Arc::from("GET /api/dashboard/{id}");
    let names: Vec<(Arc<str>, Arc<str>)> = ["user", "orders", "recommendations"]
        .iter()
        .map(|n| {
            (
                Arc::from(format!("backend {n}")),
                Arc::from(format!("GET /{n}/{{id}}")),
            )
        })
        .collect();
    c.bench_function("spans_of_one_fanout_request", |b| {
        b.iter(|| one_request(&tracing, &route, &names))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
