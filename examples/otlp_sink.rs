//! A minimal OTLP/HTTP trace receiver for benchmarks: it takes every export and
//! answers 200, as a collector on another machine would, without spending this
//! machine's CPU on decoding. `--decode` decodes each export and counts its spans
//! (a collector on the same cores, the harder case).
//!
//!     cargo run --release --example otlp_sink -- 127.0.0.1:4318 [--decode]
//!     OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python3 ../shared/bench/run.py ...
//!
//! Prints what it received every five seconds (on stderr) while exports arrive.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let decode = args.iter().any(|a| a == "--decode");
    let addr = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:4318".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp_sink: listening on http://{addr}/v1/traces");
    // Spans (with --decode) or bytes, and exports.
    let spans = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let report = spans.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let exports = report.1.load(Ordering::Relaxed);
            if exports != last {
                let what = if decode { "spans" } else { "bytes" };
                let n = report.0.load(Ordering::Relaxed);
                eprintln!("otlp_sink: {exports} exports, {n} {what} received");
                last = exports;
            }
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let spans = spans.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let spans = spans.clone();
                async move {
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return Ok::<_, Infallible>(status(StatusCode::BAD_REQUEST)),
                    };
                    spans.1.fetch_add(1, Ordering::Relaxed);
                    if !decode {
                        spans.0.fetch_add(body.len() as u64, Ordering::Relaxed);
                        return Ok(status(StatusCode::OK));
                    }
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(export) => {
                            let n: usize = export
                                .resource_spans
                                .iter()
                                .flat_map(|r| &r.scope_spans)
                                .map(|s| s.spans.len())
                                .sum();
                            spans.0.fetch_add(n as u64, Ordering::Relaxed);
                            Ok(status(StatusCode::OK))
                        }
                        Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
                    }
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Full<bytes::Bytes>> {
    let mut r = Response::new(Full::new(bytes::Bytes::new()));
    *r.status_mut() = code;
    r
}
