//! What a gRPC backend's conversion costs per message (benches/grpc_ab.py measures the
//! whole request): the request made from JSON (proto3 mapping, then protobuf), and the
//! answer read into JSON (protobuf, then the proto3 mapping with defaults), for a 1 KB
//! and a 20 KB message (benches/grpc/users.proto's `Feed`).
//!
//!     cargo bench --bench grpc

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use manifold::upstream::grpc::GrpcMethod;
use prost::Message as _;
use serde_json::{Value, json};

fn feed(items: usize) -> Value {
    json!({"items": (0..items).map(|i| json!({
        "id": format!("item-{i:06}"),
        "title": format!("Fountain pen, fine nib, number {i}"),
        "priceCents": (1999 + i).to_string(),
        "score": 0.5 + (i as f64) / 1000.0,
        "tags": ["stationery", "gift"],
        "at": "2026-11-01T09:30:00Z",
        "kind": if i % 2 == 0 { "PEN" } else { "BOOK" },
    })).collect::<Vec<_>>()})
}

fn bench(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/grpc");
    let mut compiler = protox::Compiler::new([&dir]).unwrap();
    compiler.open_files([dir.join("users.proto")]).unwrap();
    let pool = compiler.descriptor_pool();
    let feed_desc = pool.get_message_by_name("bench.users.v1.Feed").unwrap();
    let echo = pool
        .get_service_by_name("bench.users.v1.Feeds")
        .and_then(|s| s.methods().next())
        .unwrap();
    let method = GrpcMethod::new(&echo);
    assert!(
        method.direct.is_some(),
        "Feed is written straight from its bytes"
    );
    // The same answers read the other way: decoded into a message, then written.
    let decoded = GrpcMethod {
        direct: None,
        ..GrpcMethod::new(&echo)
    };
    let buffers = manifold::state::buffers::Buffers::new(1 << 30);
    let mut head = HeaderMap::new();
    head.insert("content-type", "application/grpc".parse().unwrap());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    for (label, items) in [("1KB", 12), ("20KB", 240)] {
        let json = feed(items);
        let framed = method.encode(&json).unwrap();
        let size = framed.len() - 5;
        let message =
            prost_reflect::DynamicMessage::decode(feed_desc.clone(), &framed[5..]).unwrap();
        assert_eq!(message.encoded_len(), size);
        eprintln!(
            "{label}: {size} bytes of protobuf, {} of JSON",
            json.to_string().len()
        );
        c.bench_function(&format!("grpc request from JSON {label}"), |b| {
            b.iter(|| method.encode(std::hint::black_box(&json)).unwrap())
        });
        for (how, m) in [("direct", &method), ("decoded", &decoded)] {
            c.bench_function(&format!("grpc answer to JSON {label} {how}"), |b| {
                b.iter(|| {
                    let charge = buffers.start(None);
                    m.read(&head, Some(&trailers), framed.clone(), 1 << 30, &charge)
                        .unwrap()
                })
            });
        }
        let charge = buffers.start(None);
        let a = method
            .read(&head, Some(&trailers), framed.clone(), 1 << 30, &charge)
            .unwrap();
        let b = decoded
            .read(&head, Some(&trailers), framed.clone(), 1 << 30, &charge)
            .unwrap();
        assert_eq!(a, b, "both ways write the same JSON");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
