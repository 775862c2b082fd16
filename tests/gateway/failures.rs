//! Failures (docs/operations.md#status-codes-a-client-can-get) that need more than a scenario
//! file can say (large bodies, slow or cut-off uploads); the rest are in tests/scenarios/failures.

use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, raw, upstream};

#[tokio::test]
async fn oversized_upstream_body_is_refused_not_buffered() {
    let big =
        Upstream::start(|_| async { raw(200, "application/json", vec![b' '; 3 << 20]) }).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  upstream = \"big\"
  path = \"/\"
",
        upstream("big", &big.url(), "max_response_body = \"1MiB\"")
    ))
    .await;
    gw.get("/r").await.error(502, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
max_request_body = \"1KiB\"
{}
[[routes]]
method = \"POST\"
path = \"/w\"
  [[routes.backends]]
  upstream = \"u\"
  path = \"/\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    let url = format!("{}/w", gw.base);
    gw.send(gw.client.post(&url).body(vec![b'x'; 2048]))
        .await
        .error(413, "PAYLOAD_TOO_LARGE");
    // Chunked (no content-length): refused once the limit is passed.
    let stream =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    gw.send(
        gw.client
            .post(&url)
            .body(reqwest::Body::wrap_stream(stream)),
    )
    .await
    .error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(up.hits(), 0);
    let r = gw.send(gw.client.post(&url).body(vec![b'x'; 100])).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_bounded_by_the_deadline() {
    // A lying upstream: promises 1000 bytes, sends 10, then goes quiet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"a\": [1, ")
                    .await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/r\"
timeout = \"150ms\"
  [[routes.backends]]
  upstream = \"u\"
  path = \"/\"
",
        upstream("u", &format!("http://{addr}"), "")
    ))
    .await;
    let r = gw.get("/r").await;
    r.error(504, "UPSTREAM_TIMEOUT");
    assert!(
        r.elapsed >= Duration::from_millis(150) && r.elapsed < Duration::from_millis(160),
        "{:?}",
        r.elapsed
    );
}

#[tokio::test]
async fn an_unread_body_over_the_limit_is_still_413() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
max_request_body = \"1KiB\"
{}
[[routes]]
method = \"DELETE\"
path = \"/d\"
  [[routes.backends]]
  upstream = \"u\"
  method = \"GET\"
  path = \"/\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    let url = format!("{}/d", gw.base);
    let stream =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'z'; 512])));
    gw.send(
        gw.client
            .delete(&url)
            .body(reqwest::Body::wrap_stream(stream)),
    )
    .await
    .error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(up.hits(), 0);
    assert_eq!(
        gw.send(gw.client.delete(&url).body("small")).await.status,
        200
    );
}

#[tokio::test(start_paused = true)]
async fn a_trickling_request_body_is_cut_at_the_deadline() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
method = \"POST\"
path = \"/w\"
timeout = \"200ms\"
  [[routes.backends]]
  upstream = \"u\"
  path = \"/\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"partial\":".to_vec())).await.unwrap();
    let mut rx = rx;
    let body =
        reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let r = gw
        .send(gw.client.post(format!("{}/w", gw.base)).body(body))
        .await;
    r.error(408, "REQUEST_TIMEOUT");
    assert!(
        r.elapsed >= Duration::from_millis(200) && r.elapsed < Duration::from_millis(210),
        "{:?}",
        r.elapsed
    );
    assert_eq!(up.hits(), 0);
    drop(tx);
}
