//! The gRPC upstream of `benches/grpc_ab.py`: `bench.users.v1.Users/GetUser` on
//! 127.0.0.1:7005 (h2c, tonic, one thread), answering the benchmark's user
//! (../shared/bench/upstream/user.json) as a protobuf message. Not part of the product.
//!
//!     cargo build --release --example bench_grpc_upstream

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use prost::Message as _;
use tonic::Status;

// The tests' codec: messages handed over as bytes.
#[path = "../tests/gateway/bytes_codec.rs"]
mod bytes_codec;
use bytes_codec::BytesCodec;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/grpc");
    let mut c = protox::Compiler::new([&here]).expect("include path");
    c.open_files([here.join("users.proto")])
        .expect("users.proto compiles");
    let pool = c.descriptor_pool();
    let user = pool
        .get_message_by_name("bench.users.v1.User")
        .expect("User");
    let json = serde_json::json!({
        "id": "42", "name": "Ada Lovelace", "avatar": "https://img.example/42.png",
        "customerId": "c-42", "email": "ada@example.com", "plan": "pro",
        "createdAt": "2024-01-02T03:04:05Z", "internalScore": 0.93
    });
    let answer = prost_reflect::DynamicMessage::deserialize(user, &json)
        .expect("a User")
        .encode_to_vec();
    let addr = std::env::var("GRPC_LISTEN").unwrap_or_else(|_| "127.0.0.1:7005".into());
    tonic::transport::Server::builder()
        .add_service(Users(Bytes::from(answer)))
        .serve(addr.parse().expect("GRPC_LISTEN is host:port"))
        .await
        .expect("serves");
}

/// Answers every call with the one user message.
#[derive(Clone)]
struct Users(Bytes);

impl tonic::server::NamedService for Users {
    const NAME: &'static str = "bench.users.v1.Users";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Users {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(grpc.unary(Fixed(answer), req).await)
        })
    }
}

struct Fixed(Bytes);

impl tonic::server::UnaryService<Bytes> for Fixed {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, _: tonic::Request<Bytes>) -> Self::Future {
        let answer = self.0.clone();
        Box::pin(async move { Ok(tonic::Response::new(answer)) })
    }
}
