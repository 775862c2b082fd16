//! `passthrough = true`: streamed both ways, status and headers kept, hop-by-hop removed.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::support::{Gateway, Upstream, json, upstream};

fn passthrough_route(url: &str, method: &str) -> String {
    format!(
        "{}
[[routes]]
method = \"{method}\"
path = \"/files/{{name}}\"
passthrough = true
  [[routes.backends]]
  upstream = \"files\"
  path = \"/store/{{name}}\"
",
        upstream("files", url, "")
    )
}

#[tokio::test]
async fn status_and_headers_are_kept_hop_by_hop_removed() {
    let up = Upstream::start(|_| async {
        let mut r = crate::support::raw(201, "text/plain; charset=utf-8", "plain text, not JSON");
        let h = r.headers_mut();
        h.insert("x-upstream-thing", "kept".parse().unwrap());
        h.insert("cache-control", "max-age=5".parse().unwrap());
        h.insert("connection", "x-hop-secret".parse().unwrap());
        h.insert("x-hop-secret", "removed".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&passthrough_route(&up.url(), "GET")).await;
    let r = gw.get("/files/a.txt").await;
    assert_eq!(r.status, 201);
    assert_eq!(&r.body[..], b"plain text, not JSON");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-upstream-thing"), Some("kept"));
    assert_eq!(r.header("cache-control"), Some("max-age=5"));
    assert!(r.header("x-hop-secret").is_none());
    assert!(r.header("keep-alive").is_none());
    assert!(r.header("x-request-id").is_some());
    assert_eq!(up.last().uri.path(), "/store/a.txt");
}

#[tokio::test]
async fn redirects_and_errors_are_passed_on() {
    let up = Upstream::start(|s| async move {
        if s.uri.path().ends_with("old") {
            let mut r = crate::support::raw(302, "text/plain", "");
            r.headers_mut()
                .insert("location", "/files/new".parse().unwrap());
            r
        } else {
            json(503, json!({"upstream": "says no"}))
        }
    })
    .await;
    let gw = Gateway::start(&passthrough_route(&up.url(), "GET")).await;
    let r = gw.get("/files/old").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/files/new"));
    let r = gw.get("/files/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"upstream": "says no"}));
}

/// An upstream that proves streaming: it answers with its first chunk as soon as the
/// request's first chunk arrives, then echoes the byte count once the request ends, and
/// only sends its final chunk after the test says so.
async fn streaming_upstream(release: oneshot::Receiver<()>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release)));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = service_fn(move |req: Request<Incoming>| {
            let release = release.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut total = 0usize;
                    let mut first = true;
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Some(d) = frame.data_ref() {
                            total += d.len();
                            if first {
                                first = false;
                                let _ = tx
                                    .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                                    .await;
                            }
                        }
                    }
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from(format!("received={total};")))))
                        .await;
                    if let Some(r) = release.lock().await.take() {
                        let _ = r.await;
                    }
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"end")))).await;
                });
                let body = StreamBody::new(tokio_stream_from(rx));
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    addr
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let (release_tx, release_rx) = oneshot::channel();
    let addr = streaming_upstream(release_rx).await;
    let gw = Gateway::start(&format!(
        "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
max_request_body = \"64MiB\"
{}",
        passthrough_route(&format!("http://{addr}"), "PUT")
    ))
    .await;

    // The client's body: one chunk now, the rest (8 MiB) only after the upstream has
    // already answered with its first chunk. A buffering gateway would deadlock here.
    let (body_tx, body_rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    body_tx.send(Ok(vec![b'a'; 1024])).await.unwrap();
    let req = gw
        .client
        .put(format!("{}/files/big.bin", gw.base))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(tokio_stream_from(body_rx)));
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("response head streamed")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first chunk streamed")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first;");
    for _ in 0..8 {
        body_tx.send(Ok(vec![b'b'; 1 << 20])).await.unwrap();
    }
    drop(body_tx);
    let mut rest = Vec::new();
    let count = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("count streamed")
        .unwrap()
        .unwrap();
    rest.extend_from_slice(&count);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        format!("received={};", 1024 + 8 * (1 << 20))
    );
    // A stream of no declared length: its access line waits for the end, to say how
    // many bytes went out.
    assert!(
        !gw.access_lines()
            .iter()
            .any(|l| l["request_id"] == id.as_str()),
        "no line before the stream ends"
    );
    // The upstream's last chunk is held back until now: the gateway streamed the rest already.
    release_tx.send(()).unwrap();
    let end = stream.next().await.unwrap().unwrap();
    assert_eq!(&end[..], b"end");
    assert!(stream.next().await.is_none());
    let line = gw.access_line(&id).await;
    let sent = first.len() + rest.len() + end.len();
    assert_eq!(line["bytes"], sent, "{line}");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn passthrough_body_limit_is_413() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
max_request_body = \"1KiB\"
{}",
        passthrough_route(&up.url(), "POST")
    ))
    .await;
    let url = format!("{}/files/x", gw.base);
    gw.send(gw.client.post(&url).body(vec![b'x'; 4096]))
        .await
        .error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(
        up.hits(),
        0,
        "declared-too-large bodies never reach the upstream"
    );
    let stream =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let r = gw
        .send(
            gw.client
                .post(&url)
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    r.error(413, "PAYLOAD_TOO_LARGE");
}
