//! Hostile clients (docs/operations.md#abuse-and-limits): what a client does wrong is the
//! client's, never an upstream's; every connection and every buffer has a bound.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Gateway, Upstream, json, series};

/// Reads what the gateway sends until it closes the connection (at most 10 s).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `bytes` as written on a new connection and returns everything the gateway
/// answered; with `hang_up`, the client closes its side right after sending.
async fn exchange(gw: &Gateway, bytes: &[u8], hang_up: bool) -> String {
    let mut s = TcpStream::connect(gw.server.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if hang_up {
        drop(s);
        return String::new();
    }
    read_to_close(&mut s).await
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The access lines of `route`, waiting (up to 5 s) until there are `n`.
async fn lines_of(gw: &Gateway, route: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let lines: Vec<Value> = gw
            .access_lines()
            .into_iter()
            .filter(|l| l["route"] == route)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} access lines for {route}");
}

fn upload_routes(url: &str, upstream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_request_body = "1KiB"

[upstreams.{upstream}]
urls = ["{url}"]
circuit_breaker = {{ consecutive_failures = 2, open_for = "1m" }}

[[routes]]
name = "upload"
method = "POST"
path = "/upload"
passthrough = true
  [[routes.backends]]
  upstream = "{upstream}"
  path = "/upload"

[[routes]]
name = "merged-upload"
method = "POST"
path = "/merged"
  [[routes.backends]]
  upstream = "{upstream}"
  path = "/merged"

[[routes]]
name = "read"
path = "/read"
  [[routes.backends]]
  upstream = "{upstream}"
  path = "/read"
"#
    )
}

#[tokio::test]
async fn a_client_cannot_open_an_upstreams_breaker_with_bad_uploads() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&upload_routes(&up.url(), "blameless")).await;

    let malformed = b"POST /upload HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let mut oversized =
        b"POST /upload HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        oversized.extend_from_slice(b"200\r\n");
        oversized.extend_from_slice(&[b'x'; 0x200]);
        oversized.extend_from_slice(b"\r\n");
    }
    oversized.extend_from_slice(b"0\r\n\r\n");
    let aborted = b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nonly ten b";
    for _ in 0..3 {
        assert_eq!(status_of(&exchange(&gw, malformed, false).await), 400);
        assert_eq!(status_of(&exchange(&gw, &oversized, false).await), 413);
        exchange(&gw, aborted, true).await;
    }
    // The same on a merged route, which reads the body before calling out.
    for _ in 0..3 {
        let merged = String::from_utf8_lossy(malformed).replace("/upload", "/merged");
        assert_eq!(
            status_of(&exchange(&gw, merged.as_bytes(), false).await),
            400
        );
        let merged = String::from_utf8_lossy(&oversized).replace("/upload", "/merged");
        assert_eq!(
            status_of(&exchange(&gw, merged.as_bytes(), false).await),
            413
        );
    }

    let lines = lines_of(&gw, "upload", 9).await;
    let mut statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [400, 400, 400, 413, 413, 413, 499, 499, 499]);
    for l in &lines {
        // The client's failure, not the upstream's.
        assert_eq!(l["backends"]["blameless"]["outcome"], "client_error", "{l}");
    }

    // Healthy traffic still flows: the breaker every route shares stayed closed.
    let r = gw.get("/read").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(gw.breaker("blameless").await, "closed");
    let metrics = gw.metrics().await;
    let errors = series(
        &metrics,
        r#"manifold_upstream_request_duration_seconds_count{upstream="blameless",outcome="error"}"#,
    );
    assert_eq!(errors, 0.0, "no upstream error counted");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_is_the_clients_timeout_not_the_upstreams() {
    let up = Upstream::start(|_| async { json(200, json!({"ok": true})) }).await;
    let gw = Gateway::start(&upload_routes(&up.url(), "patient")).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.server.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nstart")
            .await
            .unwrap();
        stalled.push(s);
    }
    for s in &mut stalled {
        let answer = read_to_close(s).await;
        assert_eq!(status_of(&answer), 408, "{answer}");
    }
    assert_eq!(gw.breaker("patient").await, "closed");
    assert_eq!(gw.get("/read").await.status, 200);
}

/// An upstream that answers every request with `response`, byte for byte, and closes;
/// the heads it read come back on the channel.
async fn canned_upstream(
    response: &'static [u8],
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, rx)
}

fn passthrough(url: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"[upstreams.{upstream}]
urls = ["{url}"]

[[routes]]
name = "{upstream}-route"
path = "/p"
passthrough = true
{extra}
  [[routes.backends]]
  upstream = "{upstream}"
  path = "/p"
"#
    )
}

#[tokio::test]
async fn a_passthrough_answer_with_both_lengths_keeps_its_chunked_body() {
    let (url, _) = canned_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&passthrough(&url, "both_lengths", "")).await;
    let r = gw.get("/p").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello world", "not cut to the content-length");
}

#[tokio::test]
async fn an_unsolicited_101_is_a_bad_response() {
    let (url, _) = canned_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&passthrough(&url, "switcher", "")).await;
    gw.get("/p").await.error(502, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn headers_named_by_connection_never_reach_the_upstream() {
    let (url, mut heads) = canned_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let gw = Gateway::start(&passthrough(
        &url,
        "conn_named",
        "forward_headers = [\"*\"]",
    ))
    .await;
    let answer = exchange(
        &gw,
        b"GET /p HTTP/1.1\r\nhost: t\r\nconnection: keep-alive, authorization, close\r\nauthorization: Bearer secret\r\nx-other: kept\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(!head.contains("authorization"), "{head}");
    assert!(head.contains("x-other: kept"), "{head}");
}

#[tokio::test]
async fn http11_needs_exactly_one_host() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&passthrough(&up.url(), "hosted", "")).await;
    for head in [
        "GET /p HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /p HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(&gw, head.as_bytes(), false).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(answer.contains(r#""code":"BAD_REQUEST""#), "{answer}");
    }
    // HTTP/1.0 may leave it out.
    let answer = exchange(&gw, b"GET /p HTTP/1.0\r\n\r\n", false).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn head_is_answered_where_get_is_served() {
    let up = Upstream::json(json!({"id": 7, "name": "Ada"})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
name = \"head-merged\"
path = \"/m\"
  [[routes.backends]]
  upstream = \"heads\"
  path = \"/m\"
  group = \"user\"

[[routes]]
name = \"head-passthrough\"
path = \"/p\"
passthrough = true
  [[routes.backends]]
  upstream = \"heads\"
  path = \"/p\"
",
        crate::support::upstream("heads", &up.url(), "")
    ))
    .await;
    let get = gw.get("/m").await;
    assert_eq!(get.status, 200);
    let head = gw.send(gw.client.head(format!("{}/m", gw.base))).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("x-manifold-completed"), Some("true"));
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(up.last().method, "GET", "merged backends still GET");

    let head = gw.send(gw.client.head(format!("{}/p", gw.base))).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        up.last().method,
        "HEAD",
        "passthrough asks for the head alone"
    );

    let r = gw.send(gw.client.delete(format!("{}/m", gw.base))).await;
    r.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let lines = lines_of(&gw, "head-merged", 3).await;
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 405 && l["method"] == "DELETE")
    );
    let metrics = gw.metrics().await;
    let counted = series(
        &metrics,
        r#"http_server_request_duration_seconds_count{route="head-merged",method="DELETE",status="405"}"#,
    );
    assert_eq!(counted, 1.0, "the 405 counts under its route");
}

#[tokio::test]
async fn one_head_size_limit_for_http1_and_h2_with_a_json_error() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_header_size = \"4KiB\"\n{}",
        passthrough(&up.url(), "heads_limited", "")
    ))
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let big = "x".repeat(5000);
    for client in [&gw.client, &h2] {
        let r = gw
            .send(client.get(format!("{}/p", gw.base)).header("x-big", &big))
            .await;
        r.error(431, "HEADERS_TOO_LARGE");
        let r = gw.send(client.get(format!("{}/p?q={big}", gw.base))).await;
        r.error(414, "URI_TOO_LONG");
        let fits = "x".repeat(3000);
        let r = gw
            .send(client.get(format!("{}/p", gw.base)).header("x-fits", &fits))
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.hits(), 2);
}

/// Reads until the gateway closes the connection (failing after `within`); what it
/// sent, and when (tokio's clock) it closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> (String, tokio::time::Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .expect("the gateway kept the connection open");
    (
        String::from_utf8_lossy(&out).into_owned(),
        tokio::time::Instant::now(),
    )
}

fn bounded(url: &str, server: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
header_read_timeout = "10s"
idle_timeout = "60s"
send_timeout = "30s"
{server}

[upstreams.bounded]
urls = ["{url}"]

[[routes]]
name = "bounded"
path = "/b"
  [[routes.backends]]
  upstream = "bounded"
  path = "/b"
  group = "data"
"#
    )
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// Paused time: the timeouts pass at once, measured on tokio's clock.
#[tokio::test(start_paused = true)]
async fn every_http1_connection_has_a_bounded_life() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&bounded(&up.url(), "")).await;
    let t0 = tokio::time::Instant::now();

    // Never a byte: closed at header_read_timeout from accept.
    let mut silent = TcpStream::connect(gw.server.addr).await.unwrap();
    // Half a head: the same bound.
    let mut half = TcpStream::connect(gw.server.addr).await.unwrap();
    half.write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let (_, at) = closed_within(&mut silent, Duration::from_secs(120)).await;
    assert!(
        (10.0..11.0).contains(&secs(at - t0)),
        "silent: {:?}",
        at - t0
    );
    let (_, at) = closed_within(&mut half, Duration::from_secs(120)).await;
    assert!(
        (10.0..11.0).contains(&secs(at - t0)),
        "half a head: {:?}",
        at - t0
    );

    // A kept-alive connection is answered, then may idle for idle_timeout (not the
    // header bound), and a next head it starts has header_read_timeout to finish.
    let mut kept = TcpStream::connect(gw.server.addr).await.unwrap();
    kept.write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = kept.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let answered = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(40)).await;
    kept.write_all(b"GET /b HTTP/1.1\r\n").await.unwrap();
    let (rest, at) = closed_within(&mut kept, Duration::from_secs(120)).await;
    assert!(rest.is_empty(), "no answer to half a head: {rest}");
    assert!(
        (50.0..51.0).contains(&secs(at - answered)),
        "40 s idle + 10 s for the head: {:?}",
        at - answered
    );

    let mut idle = TcpStream::connect(gw.server.addr).await.unwrap();
    idle.write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (answer, at) = closed_within(&mut idle, Duration::from_secs(120)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"data":{"ok":1}}"#), "{answer}");
    let idled = secs(at - answered) - 40.0 - 10.0;
    assert!((60.0..61.5).contains(&idled), "closed after {idled} s idle");

    let metrics = gw.metrics().await;
    assert!(
        series(
            &metrics,
            r#"manifold_connections_closed_total{listener="public",reason="header_timeout"}"#
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        series(
            &metrics,
            r#"manifold_connections_closed_total{listener="public",reason="idle"}"#
        ) >= 1.0
    );
}

/// An h2c connection (prior knowledge) with the given initial stream window.
async fn h2_client(
    gw: &Gateway,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let io = TcpStream::connect(gw.server.addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(io)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

#[tokio::test(start_paused = true)]
async fn every_h2_connection_has_a_bounded_life() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&bounded(&up.url(), "")).await;
    let t0 = tokio::time::Instant::now();

    // Only the preface: no request within header_read_timeout, closed.
    let (_send, conn) = h2_client(&gw, 65_535).await;
    let _ = tokio::time::timeout(Duration::from_secs(120), conn)
        .await
        .expect("closed");
    let waited = secs(t0.elapsed());
    assert!((10.0..11.0).contains(&waited), "preface only: {waited}");

    // One answered stream, then nothing open: GOAWAY after idle_timeout.
    let (mut send, conn) = h2_client(&gw, 65_535).await;
    let req = http::Request::get(format!("{}/b", gw.base))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let answered = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(120), conn)
        .await
        .expect("closed");
    assert!(ended.unwrap().is_ok(), "a graceful GOAWAY, not an error");
    let idled = secs(answered.elapsed());
    assert!((60.0..61.5).contains(&idled), "idle for {idled} s");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_takes_no_answer_is_cut_off_and_cannot_pin_more() {
    // 300 KB answers, 1 MiB for each h2 connection.
    let big = json!({"blob": "x".repeat(300_000)});
    let up = Upstream::json(big).await;
    let gw = Gateway::start(&bounded(&up.url(), "buffer_per_connection = \"1MiB\"")).await;
    let (mut send, conn) = h2_client(&gw, 0).await;
    let started = tokio::time::Instant::now();
    // All at once, held open and unread: an attacker's streams.
    let mut pending = Vec::new();
    for _ in 0..8 {
        let req = http::Request::get(format!("{}/b", gw.base))
            .body(())
            .unwrap();
        pending.push(send.send_request(req, true).unwrap().0);
    }
    let mut pinned = Vec::new();
    for resp in pending {
        // Heads pass a shut window; bodies do not.
        pinned.push(resp.await.unwrap());
    }
    let mut statuses: Vec<u16> = pinned.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    // Two answers (600 KB) fit the connection's 1 MiB; a third would need 300 KB for
    // itself and as much for its merged copy, which would pass it: it and the others
    // are let go, 503 in their place.
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503, 503, 503]);
    let _ = tokio::time::timeout(Duration::from_secs(200), conn)
        .await
        .expect("the gateway closed the connection");
    let waited = secs(started.elapsed());
    let cut = pinned[0].body_mut().data().await;
    assert!(
        matches!(cut, Some(Err(_))),
        "the pinned answer was cut: {cut:?}"
    );
    assert!(
        (30.0..61.0).contains(&waited),
        "send_timeout 30s: cut after {waited} s"
    );
    // The pinned answers were let go.
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "manifold_buffered_bytes"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn past_max_connections_new_ones_are_refused_and_admin_still_answers() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&bounded(&up.url(), "max_connections = 3")).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.server.addr).await.unwrap();
        s.write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut fourth = TcpStream::connect(gw.server.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let (answer, _) = closed_within(&mut fourth, Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "refused without an answer: {answer}");
    let health = gw
        .client
        .get(format!("{}/health", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = health.text().await.unwrap_or_default();
    let _ = metrics;
    let metrics = gw.metrics().await;
    assert!(
        series(
            &metrics,
            r#"manifold_connections_refused_total{listener="public"}"#
        ) >= 1.0
    );
    // One closes; a new one is served again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.get("/b").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn buffered_answers_share_one_budget_past_which_calls_fail_at_once() {
    // `/big/N`: N × 100 KB of JSON sent at once, then the rest when `release` says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = release.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let size: usize = head
                    .split_once("/big/")
                    .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                    .unwrap_or(1)
                    * 100_000;
                let mut start = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{{\"a\":\"",
                    size + 6
                )
                .into_bytes();
                start.extend(std::iter::repeat_n(b'x', size));
                start.extend_from_slice(b"\r\n");
                if s.write_all(&start).await.is_err() {
                    return;
                }
                go.notified().await;
                let _ = s.write_all(b"2\r\n\"}\r\n0\r\n\r\n").await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nbuffer_capacity = \"1MiB\"\n{}
[[routes]]
name = \"budgeted\"
path = \"/big/{{n}}\"
  [[routes.backends]]
  upstream = \"budgeted\"
  path = \"/big/{{n}}\"
",
        crate::support::upstream("budgeted", &url, "max_response_body = \"4MiB\"")
    ))
    .await;
    let metrics = async |gw: &Gateway| series(&gw.metrics().await, "manifold_buffered_bytes");
    let first = tokio::spawn({
        let (client, base) = (gw.client.clone(), gw.base.clone());
        async move { client.get(format!("{base}/big/5")).send().await.unwrap() }
    });
    // Wait until the first answer's 500 KB are held.
    let mut held = 0.0;
    for _ in 0..500 {
        held = metrics(&gw).await;
        if held >= 500_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held >= 500_000.0, "held {held}");
    // A second answer of 800 KB would pass 1 MiB: it fails as it arrives, at once.
    let second = gw.get("/big/8").await;
    second.error(503, "OVERLOADED");
    assert!(
        second.elapsed < Duration::from_millis(1),
        "{:?}",
        second.elapsed
    );
    release.notify_waiters();
    // The first has room for itself and its merged copy (1 MB of 1 MiB).
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.unwrap().len(), 500_008);
    // Let go once answered: room again.
    let mut left = 1.0;
    for _ in 0..500 {
        left = metrics(&gw).await;
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0.0);
    let line = lines_of(&gw, "budgeted", 2)
        .await
        .into_iter()
        .find(|l| l["status"] == 503)
        .unwrap();
    assert_eq!(line["backends"]["budgeted"]["outcome"], "overloaded");
}

#[tokio::test]
async fn upstreams_without_max_concurrency_get_a_default_cap() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&bounded(&up.url(), "")).await;
    let routes: Value = gw
        .client
        .get(format!("{}/routes", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes["upstreams"]["bounded"]["max_concurrency"], 1024);
}

#[tokio::test]
async fn url_credentials_go_as_basic_auth_and_are_never_shown() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let with_auth = up.url().replace("http://", "http://svc%40corp:s3cret@");
    let gw = Gateway::start(&format!(
        r#"[upstreams.secretive]
urls = ["{with_auth}"]

[[routes]]
name = "secretive"
path = "/s"
forward_headers = ["authorization"]
  [[routes.backends]]
  upstream = "secretive"
  path = "/s?key=${{PATH}}"
"#
    ))
    .await;
    let r = gw
        .send(
            gw.client
                .get(format!("{}/s", gw.base))
                .header("authorization", "Bearer the-clients"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    // "svc@corp:s3cret", base64.
    assert_eq!(seen.headers["authorization"], "Basic c3ZjQGNvcnA6czNjcmV0");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);

    let routes = gw
        .client
        .get(format!("{}/routes", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!routes.contains("s3cret"), "{routes}");
    let routes: Value = serde_json::from_str(&routes).unwrap();
    let url = routes["upstreams"]["secretive"]["urls"][0]
        .as_str()
        .unwrap();
    assert!(url.starts_with("http://***@127.0.0.1:"), "{url}");
    let path = &routes["routes"][0]["backends"][0]["path"];
    assert_eq!(
        path, "/s?key=${PATH}",
        "as written, the environment's value not shown"
    );
}

#[tokio::test]
async fn an_invalid_answer_is_refused_alike_on_shaped_and_unshaped_routes() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies = [
        deep,
        r#"{"n": 1e999999}"#.to_string(),
        r#"{"s": "\ud800"}"#.to_string(),
    ];
    for body in bodies {
        let up = Upstream::start(move |_| {
            let body = body.clone();
            async move { crate::support::raw(200, "application/json", body) }
        })
        .await;
        let gw = Gateway::start(&format!(
            "{}
[[routes]]
name = \"unshaped\"
path = \"/unshaped\"
  [[routes.backends]]
  upstream = \"bad_json\"
  path = \"/\"
  group = \"data\"

[[routes]]
name = \"shaped\"
path = \"/shaped\"
  [[routes.backends]]
  upstream = \"bad_json\"
  path = \"/\"
  group = \"data\"
  deny = [\"secret\"]
",
            crate::support::upstream("bad_json", &up.url(), "")
        ))
        .await;
        gw.get("/unshaped")
            .await
            .error(502, "UPSTREAM_BAD_RESPONSE");
        gw.get("/shaped").await.error(502, "UPSTREAM_BAD_RESPONSE");
    }
}

#[tokio::test]
async fn numbers_keep_their_exact_text_and_rendered_values_are_encoded() {
    let up = Upstream::start(|s| async move {
        if s.uri.path() == "/a" {
            crate::support::raw(
                200,
                "application/json",
                r#"{"id": 12345678901234567890123456789, "big": 1E+308, "price": 0.10, "name": "x"}"#,
            )
        } else {
            json(200, json!({"ok": true}))
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
name = \"exact\"
path = \"/exact\"
forward_query = [\"limit\", \"lang\"]
  [[routes.backends]]
  name = \"a\"
  upstream = \"numbers\"
  path = \"/a\"
  group = \"a\"
  allow = [\"id\", \"big\", \"price\"]

  [[routes.backends]]
  name = \"b\"
  upstream = \"numbers\"
  path = \"/b/{{a.id}}?big={{a.big}}&limit=5\"
  group = \"b\"
",
        crate::support::upstream("numbers", &up.url(), "")
    ))
    .await;
    let r = gw.get("/exact?limit=100&lang=de").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(r#""id":12345678901234567890123456789"#),
        "{text}"
    );
    // Exact but for the exponent letter, which serde_json writes as `e`.
    assert!(text.contains(r#""big":1e+308"#), "{text}");
    assert!(text.contains(r#""price":0.10"#), "{text}");
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/b/12345678901234567890123456789");
    // The backend's own `limit` wins; the client's is not added beside it.
    assert_eq!(seen.uri.query(), Some("big=1e%2B308&limit=5&lang=de"));
}

// A window of one byte lets hyper start on an answer; what the client has not taken
// must still be counted and still time out.
#[tokio::test(start_paused = true)]
async fn a_client_that_opens_its_window_a_crack_is_still_bounded() {
    let big = json!({"blob": "x".repeat(300_000)});
    let up = Upstream::json(big).await;
    let gw = Gateway::start(&bounded(&up.url(), "buffer_per_connection = \"1MiB\"")).await;
    let (mut send, conn) = h2_client(&gw, 1).await;
    let started = tokio::time::Instant::now();
    let mut pinned = Vec::new();
    for _ in 0..2 {
        let req = http::Request::get(format!("{}/b", gw.base))
            .body(())
            .unwrap();
        let resp = send.send_request(req, true).unwrap().0.await.unwrap();
        assert_eq!(resp.status(), 200);
        pinned.push(resp);
    }
    // Both answers are still held, and counted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = gw.metrics().await;
    assert!(
        series(&metrics, "manifold_buffered_bytes") >= 600_000.0,
        "{metrics}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(200), conn)
        .await
        .expect("the gateway closed the connection");
    let waited = secs(started.elapsed());
    assert!((30.0..61.0).contains(&waited), "cut after {waited} s");
}
