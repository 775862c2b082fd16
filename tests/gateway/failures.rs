//! Every failure row of CONTRACT §4 that the core gateway owns, with the JSON error body.

use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, dead_addr, json, raw, upstream};

/// A route `/r` with one required backend on `url`.
fn one_backend(url: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  name = \"svc\"
  upstream = \"svc\"
  path = \"/\"
",
        upstream("svc", url, "")
    )
}

async fn status_of(
    reply: impl Fn() -> crate::support::Reply + Send + Sync + 'static,
) -> (crate::support::Answer, Gateway) {
    let up = Upstream::start(move |_| {
        let r = reply();
        async move { r }
    })
    .await;
    let gw = Gateway::start(&one_backend(&up.url())).await;
    (gw.get("/r").await, gw)
}

#[tokio::test]
async fn upstream_5xx_is_502_upstream_error() {
    let (r, _gw) = status_of(|| json(503, json!({"internal": "db-7.prod:5432 down"}))).await;
    let e = r.error(502, "UPSTREAM_ERROR");
    assert_eq!(e["backend"], "svc");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("svc") && msg.contains("503"), "{msg}");
    assert!(
        !r.body.windows(4).any(|w| w == b"db-7"),
        "upstream body leaked"
    );
}

#[tokio::test]
async fn upstream_4xx_keeps_its_status() {
    let (r, _gw) = status_of(|| json(404, json!({"error": "nope"}))).await;
    r.error(404, "UPSTREAM_REJECTED");
    let (r, _gw) = status_of(|| json(403, json!({}))).await;
    r.error(403, "UPSTREAM_REJECTED");
}

#[tokio::test]
async fn non_json_and_redirects_are_bad_responses() {
    let (r, _gw) = status_of(|| raw(200, "text/html", "<html>hi</html>")).await;
    r.error(502, "UPSTREAM_BAD_RESPONSE");
    let (r, _gw) = status_of(|| {
        let mut resp = raw(302, "text/plain", "");
        resp.headers_mut()
            .insert("location", "http://elsewhere.example/".parse().unwrap());
        resp
    })
    .await;
    r.error(502, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn connect_error_is_502_without_the_address() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&one_backend(&format!("http://{dead}"))).await;
    let r = gw.get("/r").await;
    let e = r.error(502, "UPSTREAM_ERROR");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&dead.port().to_string()),
        "address leaked: {body}"
    );
    assert_eq!(e["backend"], "svc");
}

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
async fn when_every_backend_fails_the_first_decides() {
    let a = Upstream::start(|_| async { json(404, json!({})) }).await;
    let b = Upstream::start(|_| async { json(500, json!({})) }).await;
    let gw = Gateway::start(&format!(
        "{}{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  upstream = \"a\"
  path = \"/\"
  optional = true
  [[routes.backends]]
  upstream = \"b\"
  path = \"/\"
  optional = true
",
        upstream("a", &a.url(), ""),
        upstream("b", &b.url(), "")
    ))
    .await;
    let e = gw.get("/r").await.error(404, "UPSTREAM_REJECTED");
    assert_eq!(e["backend"], "a");
}

#[tokio::test]
async fn a_failed_dependency_fails_its_dependents() {
    let user = Upstream::start(|_| async { json(500, json!({})) }).await;
    let orders = Upstream::json(json!({})).await;
    let no_field = Upstream::json(json!({"other": 1})).await;
    let gw = Gateway::start(&format!(
        "{}{}{}
[[routes]]
path = \"/dep-failed\"
  [[routes.backends]]
  name = \"user\"
  upstream = \"user\"
  path = \"/\"
  optional = true
  [[routes.backends]]
  name = \"orders\"
  upstream = \"orders\"
  path = \"/o/{{user.customer_id}}\"

[[routes]]
path = \"/no-field\"
  [[routes.backends]]
  name = \"user\"
  upstream = \"nofield\"
  path = \"/\"
  [[routes.backends]]
  name = \"orders\"
  upstream = \"orders\"
  path = \"/o/{{user.customer_id}}\"
",
        upstream("user", &user.url(), ""),
        upstream("orders", &orders.url(), ""),
        upstream("nofield", &no_field.url(), "")
    ))
    .await;
    let e = gw.get("/dep-failed").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(e["backend"], "user", "the dependency is to blame");
    let e = gw
        .get("/no-field")
        .await
        .error(502, "UPSTREAM_BAD_RESPONSE");
    assert!(
        e["message"].as_str().unwrap().contains("customer_id"),
        "{e}"
    );
    assert_eq!(
        orders.hits(),
        0,
        "a dependent with no input is never called"
    );
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/items/{{id}}\"
  [[routes.backends]]
  upstream = \"u\"
  path = \"/\"
[[routes]]
method = \"DELETE\"
path = \"/items/{{id}}\"
  [[routes.backends]]
  upstream = \"u\"
  path = \"/\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    gw.get("/nothing/here").await.error(404, "ROUTE_NOT_FOUND");
    let r = gw
        .send(gw.client.post(format!("{}/items/1", gw.base)))
        .await;
    r.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("GET, DELETE, HEAD"));
    assert_eq!(up.hits(), 0);
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

#[tokio::test]
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
    assert!(r.elapsed < Duration::from_millis(300), "{:?}", r.elapsed);
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

#[tokio::test]
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
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);
    assert_eq!(up.hits(), 0);
    drop(tx);
}
