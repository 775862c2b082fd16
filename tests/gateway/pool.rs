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

/// A CA and a server certificate it signed for 127.0.0.1, the CA as PEM.
fn certificates() -> (
    String,
    rustls_pki_types::CertificateDer<'static>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    use rustls_pki_types::pem::PemObject;
    let pki = crate::support::Pki::new();
    let pair = pki.pair();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    (pki.root_pem, pair.der, key)
}

/// An HTTPS upstream answering `{"tls": true}`, counting its TLS connections.
async fn https_upstream(
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(crate::support::json(
                        200,
                        json!({"tls": true}),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, handshakes)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_ca_file_and_kept_alive() {
    let (ca_pem, cert, key) = certificates();
    let (addr, handshakes) = https_upstream(cert, key).await;
    let dir = tempfile_dir();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let url = format!("https://{addr}");
    let trusted = routes(&url).replacen(
        "urls = [",
        &format!("ca_file = \"{}\"\nurls = [", ca_path.display()),
        1,
    );
    let gw = Gateway::start(&trusted).await;
    for path in ["/merged/1", "/raw/1", "/merged/2", "/raw/2"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(r.json(), json!({"tls": true}));
    }
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the CA the certificate is not trusted: no answer reaches the client.
    let gw = Gateway::start(&routes(&url)).await;
    let r = gw.get("/merged/1").await;
    r.error(502, "UPSTREAM_ERROR");
    assert_eq!(gw.get("/raw/1").await.status, 502);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "manifold-pool-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An upstream answering `{"chunked": true}` in two chunks (no content-length), or 404
/// with a short JSON body for paths ending in `/missing`; counts its connections.
async fn chunked_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut resp = if req.uri().path().ends_with("/missing") {
                            let chunks =
                                vec![Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                    bytes::Bytes::from_static(br#"{"error":"no"}"#),
                                ))];
                            let mut r = http::Response::new(http_body_util::StreamBody::new(
                                futures_util::stream::iter(chunks),
                            ));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        } else {
                            let chunks = vec![
                                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                    bytes::Bytes::from_static(br#"{"chunked":"#),
                                )),
                                Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                                    b"true}",
                                ))),
                            ];
                            http::Response::new(http_body_util::StreamBody::new(
                                futures_util::stream::iter(chunks),
                            ))
                        };
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn chunked_answers_and_error_answers_keep_their_connection() {
    let (addr, accepted) = chunked_upstream().await;
    let gw = Gateway::start(&routes(&format!("http://{addr}"))).await;
    for i in 0..4 {
        let r = gw.get(&format!("/raw/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), None, "streamed as it came");
        assert_eq!(r.json(), json!({"chunked": true}));
        let r = gw.get(&format!("/merged/{i}")).await;
        assert_eq!(r.json(), json!({"chunked": true}));
        // A backend's 404 fails the call but not the connection.
        gw.get("/merged/missing")
            .await
            .error(404, "UPSTREAM_REJECTED");
        assert_eq!(gw.get("/raw/missing").await.status, 404);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
