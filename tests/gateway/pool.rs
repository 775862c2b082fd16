//! Upstream connections: kept alive and reused, never reused when they cannot be.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{Gateway, Upstream, upstream};

fn routes(url: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/merged/{{id}}\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/users/{{id}}\"

[[routes]]
path = \"/raw/{{id}}\"
passthrough = true
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/users/{{id}}\"
",
        upstream("svc", url, "")
    )
}

#[tokio::test]
async fn calls_reuse_one_kept_alive_connection() {
    let up = Upstream::json(json!({"id": 1})).await;
    let gw = Gateway::start(&routes(&up.url())).await;
    for i in 0..5 {
        assert_eq!(gw.get(&format!("/merged/{i}")).await.status, 200);
        assert_eq!(gw.get(&format!("/raw/{i}")).await.status, 200);
    }
    assert_eq!(up.hits(), 10);
    assert_eq!(up.connections(), 1, "one connection carries every call");
}

#[tokio::test]
async fn a_url_path_prefixes_backend_paths_and_host_names_the_upstream() {
    let up = Upstream::json(json!({"id": 1})).await;
    let gw = Gateway::start(&routes(&format!("{}/v2/", up.url()))).await;
    assert_eq!(gw.get("/merged/7").await.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri.to_string(), "/v2/users/7");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    assert_eq!(gw.get("/raw/8").await.status, 200);
    assert_eq!(up.last().uri.to_string(), "/v2/users/8");
}

/// An upstream that answers one request per connection with keep-alive implied, then
/// closes the connection a moment later, as servers with a short idle timeout do.
async fn closes_when_idle() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tx.send(()).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = br#"{"id":1}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Dropping the socket closes it: the keep-alive the client assumed is over.
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let (addr, mut accepted) = closes_when_idle().await;
    let gw = Gateway::start(&routes(&format!("http://{addr}"))).await;
    for path in ["/merged/1", "/raw/1", "/merged/2", "/raw/2"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(r.json(), json!({"id": 1}));
        // Long enough for the close to arrive before the next call.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n = 0;
    while accepted.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 4, "each call needed a new connection");
}

#[tokio::test]
async fn a_passthrough_answer_the_client_left_half_read_does_not_come_back() {
    // The first answer is 8 MiB, so the client leaving after its head leaves most of it
    // on the upstream connection; the next call must not read that as its answer.
    let up = Upstream::start(|s| async move {
        if s.uri.path().ends_with("/big") {
            crate::support::raw(200, "application/octet-stream", vec![b'x'; 8 << 20])
        } else {
            crate::support::json(200, json!({"small": true}))
        }
    })
    .await;
    let gw = Gateway::start(&routes(&up.url())).await;
    let mut s = tokio::net::TcpStream::connect(gw.server.addr)
        .await
        .unwrap();
    s.write_all(b"GET /raw/big HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    for _ in 0..3 {
        let r = gw.get("/raw/small").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"small": true}));
        let r = gw.get("/merged/small").await;
        assert_eq!(r.json(), json!({"small": true}));
    }
}
