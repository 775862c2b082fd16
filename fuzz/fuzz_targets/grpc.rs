//! gRPC answers: manifold's direct protobuf-to-JSON writer (src/upstream/proto_json.rs)
//! against prost-reflect's decode-then-serialize, on any bytes (what it writes is what
//! prost-reflect writes, and it never accepts what prost-reflect refuses; the rest is
//! prost-reflect's to judge), then the whole answer path (`GrpcMethod::read`) on the
//! same bytes framed, which must never panic.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use manifold::upstream::grpc::{GrpcMethod, frame};
use manifold::upstream::proto_json::{Outcome, Plan};
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

struct Fixture {
    user: MessageDescriptor,
    kinds: MessageDescriptor,
    plans: (Plan, Plan),
    method: GrpcMethod,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/protos");
        let mut c = protox::Compiler::new([&dir]).expect("include path");
        c.include_imports(true)
            .open_files([dir.join("users.proto")])
            .expect("tests/protos/users.proto compiles");
        let pool = c.descriptor_pool();
        let user = pool.get_message_by_name("acme.users.v1.User").expect("User");
        let kinds = pool.get_message_by_name("acme.users.v1.Kinds").expect("Kinds");
        let get = pool
            .get_service_by_name("acme.users.v1.UserService")
            .and_then(|s| s.methods().find(|m| m.name() == "GetUser"))
            .expect("GetUser");
        Fixture {
            plans: (
                Plan::new(&user).expect("proto3"),
                Plan::new(&kinds).expect("proto3"),
            ),
            user,
            kinds,
            method: GrpcMethod::new(&get),
        }
    })
}

fn theirs(m: &MessageDescriptor, bytes: &[u8]) -> Option<Value> {
    let message = DynamicMessage::decode(m.clone(), bytes).ok()?;
    let mut ser = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut ser, &SerializeOptions::new().skip_default_fields(false))
        .ok()?;
    serde_json::from_slice(&ser.into_inner()).ok()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    for (m, plan) in [(&f.user, &f.plans.0), (&f.kinds, &f.plans.1)] {
        let mut out = Vec::new();
        // What the writer writes is what prost-reflect writes; it never accepts what
        // prost-reflect refuses; what it does not write, prost-reflect judges.
        match (plan.write(data, &mut out), theirs(m, data)) {
            (Ok(()), Some(expected)) => {
                let ours: Value = serde_json::from_slice(&out).expect("valid JSON");
                assert_eq!(ours, expected);
            }
            (Ok(()), None) => panic!("written, but prost-reflect refuses it"),
            (Err(Outcome::Invalid | Outcome::Fallback), _) => {}
        }
    }
    let buffers = manifold::state::buffers::Buffers::new(1 << 20);
    let charge = buffers.start(None);
    let mut head = HeaderMap::new();
    head.insert("content-type", HeaderValue::from_static("application/grpc"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = f
        .method
        .read(&head, Some(&trailers), frame(data), 1 << 16, &charge);
});
