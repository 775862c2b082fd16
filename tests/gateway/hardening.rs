//! Hostile clients (CONTRACT §4, §5): what a client does wrong is the client's, never an
//! upstream's; every connection and every buffer has a bound.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Gateway, Upstream, json};

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

fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
        .unwrap_or(0.0)
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
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
