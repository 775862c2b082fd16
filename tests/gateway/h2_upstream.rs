//! HTTP/2 to upstreams (docs/configuration.md#protocol): `h2c` (prior knowledge) and `h2`
//! (TLS, ALPN), streams multiplexed on one connection per host per worker, GOAWAY and dead
//! connections replaced without failing calls that were not sent.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::{Gateway, all_events};

/// What an HTTP/2 test upstream counts: connections, and requests with their version.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    h2_requests: AtomicUsize,
}

/// A hyper upstream answering `{"path": ..., "authority": ...}` after `delay`. `tls`:
/// ALPN offers `alpn` (h2 and/or http/1.1) and the connection is served as negotiated;
/// else h2c with prior knowledge. `per_connection`: requests served on a connection
/// before the server closes it gracefully (GOAWAY).
async fn h2_upstream(
    tls: Option<Arc<rustls::ServerConfig>>,
    delay: Duration,
    per_connection: Option<usize>,
) -> (std::net::SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let done = Arc::new(tokio::sync::Notify::new());
                let svc = {
                    let (c, served, done) = (c.clone(), served.clone(), done.clone());
                    service_fn(move |req: Request<Incoming>| {
                        let (c, served, done) = (c.clone(), served.clone(), done.clone());
                        async move {
                            c.requests.fetch_add(1, Ordering::SeqCst);
                            if req.version() == http::Version::HTTP_2 {
                                c.h2_requests.fetch_add(1, Ordering::SeqCst);
                            }
                            let body = json!({
                                "path": req.uri().path(),
                                "authority": req.uri().authority().map(|a| a.to_string()),
                            });
                            let _ = req.into_body().collect().await;
                            tokio::time::sleep(delay).await;
                            if per_connection
                                .is_some_and(|n| served.fetch_add(1, Ordering::SeqCst) + 1 >= n)
                            {
                                done.notify_one();
                            }
                            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    })
                };
                match tls {
                    None => {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc);
                        let mut conn = std::pin::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            () = done.notified() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// A TLS server config for 127.0.0.1 offering `alpn`, and the CA's PEM.
fn tls_config(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, String) {
    use rustls_pki_types::pem::PemObject;
    let pki = crate::support::Pki::new();
    let pair = pki.pair();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pair.der], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(config), pki.root_pem)
}

/// A fan-out route `/f/{id}` of three backends and a passthrough `/p/{id}`, all on
/// upstream `svc`.
fn routes(url: &str, extra: &str) -> String {
    format!(
        "[upstreams.svc]
urls = [\"{url}\"]
{extra}

[[routes]]
path = \"/f/{{id}}\"
  [[routes.backends]]
  name = \"a\"
  group = \"a\"
  upstream = \"svc\"
  path = \"/a/{{id}}\"
  [[routes.backends]]
  name = \"b\"
  group = \"b\"
  upstream = \"svc\"
  path = \"/b/{{id}}\"
  [[routes.backends]]
  name = \"c\"
  group = \"c\"
  upstream = \"svc\"
  path = \"/c/{{id}}\"

[[routes]]
path = \"/p/{{id}}\"
passthrough = true
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/p/{{id}}\"
"
    )
}

/// Sends `n` fan-out requests at once; every one must be a whole 200.
async fn burst(gw: &Gateway, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = gw.client.clone();
        let url = format!("{}/f/{i}", gw.base);
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["a"]["path"], format!("/a/{i}"));
        assert_eq!(body["c"]["path"], format!("/c/{i}"));
    }
}

#[tokio::test]
async fn h2c_calls_share_one_connection() {
    let (addr, counts) = h2_upstream(None, Duration::from_millis(20), None).await;
    let gw = Gateway::start(&routes(&format!("http://{addr}"), "protocol = \"h2c\"")).await;
    burst(&gw, 30).await;
    assert_eq!(counts.requests.load(Ordering::SeqCst), 90);
    assert_eq!(counts.h2_requests.load(Ordering::SeqCst), 90);
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "90 concurrent calls, one connection"
    );
    // `:authority` names the host; passthrough streams over it too.
    let r = gw.get("/p/7").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"path": "/p/7", "authority": addr.to_string()})
    );
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    let routes = gw.routes().await;
    assert_eq!(routes["upstreams"]["svc"]["protocol"], "h2c");
}

#[tokio::test]
async fn http1_opens_a_connection_per_concurrent_call() {
    // The same burst over HTTP/1.1, for contrast: one connection per call in flight.
    let listener_upstream =
        crate::support::Upstream::slow(Duration::from_millis(20), json!({"path": "x"})).await;
    let gw = Gateway::start(&routes(&listener_upstream.url(), "")).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = gw.client.clone();
        let url = format!("{}/f/{i}", gw.base);
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(listener_upstream.connections() >= 10);
}

/// A TLS upstream offering `alpn`, and a gateway calling it with `protocol = "h2"`
/// (its CA in a file under `dir`).
async fn h2_over_tls(
    alpn: &[&[u8]],
    delay: Duration,
    dir: &std::path::Path,
) -> (Gateway, std::net::SocketAddr, Arc<Counts>) {
    let (config, ca) = tls_config(alpn);
    let (addr, counts) = h2_upstream(Some(config), delay, None).await;
    let ca_path = dir.join(format!("ca-{}.pem", addr.port()));
    std::fs::write(&ca_path, &ca).unwrap();
    let extra = format!("protocol = \"h2\"\nca_file = \"{}\"", ca_path.display());
    let gw = Gateway::start(&routes(
        &format!("https://127.0.0.1:{}", addr.port()),
        &extra,
    ))
    .await;
    (gw, addr, counts)
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_falls_back_to_http1() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _, counts) =
        h2_over_tls(&[b"h2", b"http/1.1"], Duration::from_millis(20), dir.path()).await;
    burst(&gw, 20).await;
    assert_eq!(counts.h2_requests.load(Ordering::SeqCst), 60);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);

    // A host whose TLS offers only http/1.1: called over HTTP/1.1, said once.
    let (gw, addr, counts) = h2_over_tls(&[b"http/1.1"], Duration::ZERO, dir.path()).await;
    for i in 0..5 {
        let r = gw.get(&format!("/f/{i}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 15);
    assert_eq!(counts.h2_requests.load(Ordering::SeqCst), 0);
    let said = all_events()
        .iter()
        .filter(|e| {
            e["message"] == "upstream host offers no h2 in ALPN; calling it over HTTP/1.1"
                && e["host"] == format!("127.0.0.1:{}", addr.port()).as_str()
        })
        .count();
    assert_eq!(said, 1, "logged once");
}

#[tokio::test]
async fn a_goaway_is_followed_by_a_new_connection_and_no_call_fails() {
    // The upstream takes two calls per connection, then sends GOAWAY and closes.
    let (addr, counts) = h2_upstream(None, Duration::from_millis(5), Some(2)).await;
    let gw = Gateway::start(&routes(&format!("http://{addr}"), "protocol = \"h2c\"")).await;
    for round in 0..5 {
        burst(&gw, 4).await;
        let _ = round;
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 60);
    assert!(
        counts.connections.load(Ordering::SeqCst) > 1,
        "connections were replaced"
    );
}

/// An h2c upstream whose first connection answers its first stream and refuses the
/// others unprocessed (REFUSED_STREAM, RFC 9113 §8.7); later connections answer all.
async fn refusing_upstream() -> (std::net::SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let first_connection = c.connections.fetch_add(1, Ordering::SeqCst) == 0;
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                let mut answered = 0;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if first_connection && answered > 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    answered += 1;
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"path": req.uri().path(), "authority": null}).to_string();
                    let resp = Response::builder()
                        .header("content-type", "application/json")
                        .body(())
                        .unwrap();
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(Bytes::from(body), true);
                    }
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn calls_the_upstream_did_not_process_go_out_again_on_a_new_connection() {
    let (addr, counts) = refusing_upstream().await;
    let gw = Gateway::start(&routes(&format!("http://{addr}"), "protocol = \"h2c\"")).await;
    // One request, three concurrent calls on one connection: the upstream answers the
    // first and refuses the other two, which go again on a new connection.
    let r = gw.get("/f/1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["b"]["path"], "/b/1");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 3);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
    let line = gw.access_lines().pop().unwrap();
    for b in ["a", "b", "c"] {
        assert_eq!(
            line["backends"][b]["attempts"], 1,
            "not sent counts as no attempt: {line}"
        );
    }
}

#[tokio::test]
async fn protocol_must_match_the_url_scheme() {
    let bad = "[upstreams.a]\nurls = [\"http://127.0.0.1:1\"]\nprotocol = \"h2\"\n[upstreams.b]\nurls = [\"https://127.0.0.1:1\"]\nprotocol = \"h2c\"\n[upstreams.c]\nurls = [\"http://127.0.0.1:1\"]\nprotocol = \"spdy\"\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"a\"\n  path = \"/\"\n  [[routes.backends]]\n  upstream = \"b\"\n  path = \"/\"\n  [[routes.backends]]\n  upstream = \"c\"\n  path = \"/\"\n";
    let d = manifold::config::parse("h2.toml", bad)
        .unwrap_err()
        .render();
    assert!(d.contains("protocol `h2` needs https:// urls"), "{d}");
    assert!(d.contains("protocol `h2c` needs http:// urls"), "{d}");
    assert!(d.contains("unknown protocol `spdy`"), "{d}");
}

#[tokio::test]
async fn a_host_that_accepts_and_stalls_the_handshake_does_not_hold_later_calls() {
    // The first connection is accepted and its TLS handshake never answered; later
    // ones are served (TLS, h2). The stalled connection is given up after the
    // upstream's timeout, and the next call makes a new one. (Real time: the TLS
    // server side does not get along with a paused clock.)
    let (config, ca) = tls_config(&[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                held.push(stream);
                continue;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(crate::support::json(200, json!({"ok": true})))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let gw = Gateway::start(&format!(
        "[upstreams.svc]
urls = [\"https://127.0.0.1:{}\"]
protocol = \"h2\"
ca_file = \"{}\"
timeout = \"1s\"

[[routes]]
path = \"/r/{{id}}\"
timeout = \"5s\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/x/{{id}}\"
",
        addr.port(),
        ca_path.display()
    ))
    .await;
    let first = gw.get("/r/1").await;
    // The connect bound and the attempt's timeout are both the upstream's 1 s.
    assert!(matches!(first.status, 502 | 504), "{:?}", first.body);
    assert!(
        first.elapsed < Duration::from_secs(3),
        "{:?}",
        first.elapsed
    );
    let second = gw.get("/r/2").await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An h2c upstream that reads each request's whole body, counts it, and then — on its
/// first connection — refuses the stream as unprocessed (REFUSED_STREAM), as a lying or
/// buggy upstream may after it already acted on the body. Later connections answer.
async fn reads_then_refuses() -> (std::net::SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let first_connection = c.connections.fetch_add(1, Ordering::SeqCst) == 0;
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        c.requests.fetch_add(1, Ordering::SeqCst);
                        if first_connection {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        let resp = Response::builder()
                            .header("content-type", "application/json")
                            .body(())
                            .unwrap();
                        if let Ok(mut send) = respond.send_response(resp, false) {
                            let _ = send.send_data(Bytes::from_static(b"{\"paid\":true}"), true);
                        }
                    });
                }
            });
        }
    });
    (addr, counts)
}

/// A POST is sent again after a refusal only when it may be repeated (it carries an
/// `idempotency-key`): an upstream that read the body may have acted on it, whatever
/// its REFUSED_STREAM or GOAWAY says.
#[tokio::test]
async fn a_post_the_upstream_may_have_read_is_not_sent_again() {
    let (addr, counts) = reads_then_refuses().await;
    let gw = Gateway::start(&format!(
        "[upstreams.pay]
urls = [\"http://{addr}\"]
protocol = \"h2c\"

[[routes]]
method = \"POST\"
path = \"/pay\"
  [[routes.backends]]
  upstream = \"pay\"
  path = \"/charge\"
"
    ))
    .await;
    let once = gw
        .send(
            gw.client
                .post(format!("{}/pay", gw.base))
                .body("{\"amount\":5}"),
        )
        .await;
    once.error(502, "UPSTREAM_ERROR");
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        1,
        "the upstream read the payment once"
    );
    // With an idempotency key the client says it may be repeated: sent again, on a new
    // connection (the refusing one is dropped).
    let again = gw
        .send(
            gw.client
                .post(format!("{}/pay", gw.base))
                .header("idempotency-key", "pay-1")
                .body("{\"amount\":5}"),
        )
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.json(), json!({"paid": true}));
}
