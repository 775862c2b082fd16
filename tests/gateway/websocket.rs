//! WebSockets on `websocket = true` routes (docs/configuration.md#websocket-routes): a real
//! echo upstream (hyper with its upgrade, tungstenite frames) and a real client
//! (tokio-tungstenite).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::support::{Gateway, Upstream, series};

/// An upstream that echoes WebSocket messages back, answers plain requests with
/// JSON, and refuses upgrades with `refuse` when set. Records each request's headers.
struct Echo {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    /// WebSocket sessions whose connection ended under the upstream.
    ended: Arc<AtomicUsize>,
}

impl Echo {
    async fn start(refuse: Option<u16>) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let ended = Arc::new(AtomicUsize::new(0));
        let ends = ended.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let ends = ends.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        let ends = ends.clone();
                        log.lock()
                            .unwrap()
                            .push((req.uri().to_string(), req.headers().clone()));
                        async move {
                            let key = req.headers().get("sec-websocket-key").cloned();
                            let Some(key) = key else {
                                let mut r = Response::new(Full::new(Bytes::from(
                                    json!({"plain": true}).to_string(),
                                )));
                                r.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                return Ok::<_, std::convert::Infallible>(r);
                            };
                            if let Some(status) = refuse {
                                let mut r = Response::new(Full::new(Bytes::from(
                                    json!({"refused": true}).to_string(),
                                )));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                return Ok(r);
                            }
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let io = TokioIo::new(on.await.unwrap());
                                let mut ws =
                                    WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                                while let Some(Ok(m)) = ws.next().await {
                                    if m.is_close() {
                                        break;
                                    }
                                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                                        break;
                                    }
                                }
                                ends.fetch_add(1, Ordering::SeqCst);
                            });
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            let h = r.headers_mut();
                            h.insert("upgrade", "websocket".parse().unwrap());
                            h.insert("connection", "Upgrade".parse().unwrap());
                            h.insert(
                                "sec-websocket-accept",
                                derive_accept_key(key.as_bytes()).parse().unwrap(),
                            );
                            h.insert("sec-websocket-protocol", "chat".parse().unwrap());
                            Ok(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Echo { addr, seen, ended }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last(&self) -> (String, HeaderMap) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// A `websocket = true` route `/ws/{room}` to the echo upstream; a `route_extra` that
/// sets `websocket` itself replaces that line.
fn config(echo: &Echo, route_extra: &str, extra: &str) -> String {
    let websocket = if route_extra.starts_with("websocket =") {
        ""
    } else {
        "websocket = true"
    };
    format!(
        "{extra}
[upstreams.notify]
urls = [\"{}\"]

[[routes]]
path = \"/ws/{{room}}\"
passthrough = true
{websocket}
{route_extra}
  [[routes.backends]]
  upstream = \"notify\"
  path = \"/socket/{{room}}\"
",
        echo.url()
    )
}

type Ws = WebSocketStream<TcpStream>;
type Handshake =
    Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error>;

/// Opens a WebSocket to the gateway at `path` with extra request headers.
async fn connect(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Handshake {
    connect_to(gw.server.addr, path, headers).await
}

async fn connect_to(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Handshake {
    let mut req = http::Request::builder()
        .uri(format!("ws://{addr}{path}"))
        .header("host", addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("sec-websocket-protocol", "chat");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    client_async(req.body(()).unwrap(), stream).await
}

/// The status and body of a refused handshake.
fn refused(r: Handshake) -> (u16, serde_json::Value) {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("the upgrade went through"),
    }
}

async fn echo_round(ws: &mut Ws, m: Message) {
    ws.send(m.clone()).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(back, m);
}

fn tunnels(metrics: &str, route: &str) -> f64 {
    let s = format!("manifold_websocket_tunnels{{route=\"{route}\"}}");
    assert!(metrics.contains(&s), "{s} in the metrics");
    series(metrics, &s)
}

#[tokio::test]
async fn messages_go_both_ways_unchanged_and_the_handshake_follows_the_header_rules() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(
        &echo,
        "websocket = { allow_origins = [\"https://app.test\"] }\nname = \"ws-echo\"",
        "",
    ))
    .await;
    let (mut ws, resp) = connect(
        &gw,
        "/ws/lobby",
        &[
            ("origin", "https://app.test"),
            ("cookie", "session=secret"),
            ("x-custom", "no"),
            // A tunnel is never compressed, whatever the client accepts.
            ("accept-encoding", "gzip, br"),
        ],
    )
    .await
    .expect("the upgrade goes through");
    assert_eq!(resp.status(), 101);
    assert!(!resp.headers().contains_key("content-encoding"));
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(tunnels(&gw.metrics().await, "ws-echo"), 1.0);

    echo_round(&mut ws, Message::text("hello")).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    echo_round(&mut ws, Message::binary(big)).await;
    for i in 0..50 {
        echo_round(&mut ws, Message::text(format!("n{i}"))).await;
    }

    let (target, h) = echo.last();
    assert_eq!(target, "/socket/lobby");
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["sec-websocket-version"], "13");
    assert_eq!(h["sec-websocket-protocol"], "chat");
    assert!(h.contains_key("sec-websocket-key"));
    assert_eq!(h["origin"], "https://app.test");
    assert!(h.contains_key("x-request-id"));
    assert!(h.contains_key("x-forwarded-for"));
    assert!(!h.contains_key("cookie"), "not forwarded unless configured");
    assert!(!h.contains_key("x-custom"));

    ws.close(None).await.unwrap();
    // The tunnel ends with the client's close.
    let mut gone = false;
    for _ in 0..100 {
        if tunnels(&gw.metrics().await, "ws-echo") == 0.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the gauge falls back to 0");
}

#[tokio::test]
async fn forwarding_every_header_sends_each_handshake_header_once() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(
        &echo,
        "websocket = { allow_origins = [\"https://app.test\"] }\nforward_headers = [\"*\"]",
        "",
    ))
    .await;
    let (mut ws, _) = connect(&gw, "/ws/a", &[("origin", "https://app.test")])
        .await
        .expect("the upgrade goes through");
    echo_round(&mut ws, Message::text("once")).await;
    let (_, h) = echo.last();
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "origin",
    ] {
        assert_eq!(h.get_all(name).iter().count(), 1, "{name}: {h:?}");
    }
}

#[tokio::test]
async fn a_plain_request_is_proxied_and_a_refused_upgrade_is_passed_on() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(&echo, "", "")).await;
    let r = gw.get("/ws/lobby").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"plain": true}));

    let refusing = Echo::start(Some(403)).await;
    let gw = Gateway::start(&config(&refusing, "", "")).await;
    let (status, body) = refused(connect(&gw, "/ws/lobby", &[]).await);
    assert_eq!(status, 403);
    assert_eq!(body, json!({"refused": true}));
}

#[tokio::test]
async fn an_upgrade_on_a_route_without_websocket_is_400() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&format!(
        "[upstreams.notify]
urls = [\"{}\"]
[[routes]]
path = \"/ws/{{room}}\"
passthrough = true
  [[routes.backends]]
  upstream = \"notify\"
  path = \"/socket/{{room}}\"
",
        echo.url()
    ))
    .await;
    let (status, body) = refused(connect(&gw, "/ws/lobby", &[]).await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
    assert!(echo.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cors_origin_rate_limit_and_token_apply_to_the_handshake() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(
        &echo,
        "cors = { allow_origins = [\"https://app.test\"] }\nrate_limit = { per_second = 0.001, burst = 2, key = \"global\" }",
        "",
    ))
    .await;
    let (status, body) = refused(connect(&gw, "/ws/a", &[("origin", "https://evil.test")]).await);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "CORS_REJECTED");
    let (ws, _) = connect(&gw, "/ws/a", &[("origin", "https://app.test")])
        .await
        .expect("an allowed origin passes");
    drop(ws);
    let (status, body) = refused(connect(&gw, "/ws/a", &[("origin", "https://app.test")]).await);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(echo.seen.lock().unwrap().len(), 1);

    // A token route: no token, no tunnel.
    let secret = "websocket-test-secret-of-enough-length";
    let gw = Gateway::start(&config(
        &echo,
        "auth = { jwt = \"idp\" }",
        &format!("[auth.jwt.idp]\nsecret = \"{secret}\"\nalgorithms = [\"HS256\"]\n"),
    ))
    .await;
    let (status, body) = refused(connect(&gw, "/ws/a", &[]).await);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ada", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let (mut ws, _) = connect(
        &gw,
        "/ws/a",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .expect("a valid token passes");
    echo_round(&mut ws, Message::text("with a token")).await;
}

/// Reads until the tunnel is closed under the client: true if it closed.
async fn closed(ws: &mut Ws) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(30), ws.next()).await,
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_))))
    )
}

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_closes_after_idle_timeout_and_the_route_deadline_covers_only_the_handshake()
 {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(
        &echo,
        "name = \"ws-idle\"\nidle_timeout = \"2s\"\ntimeout = \"100ms\"",
        "",
    ))
    .await;
    let (mut ws, _) = connect(&gw, "/ws/a", &[]).await.unwrap();
    // Talking every second for five: far past the 100 ms deadline and the 2 s idle bound.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        echo_round(&mut ws, Message::text(format!("{i}"))).await;
    }
    let quiet = tokio::time::Instant::now();
    assert!(closed(&mut ws).await, "a silent tunnel is closed");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        echo.ended.load(Ordering::SeqCst),
        1,
        "on the upstream's side too"
    );
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_millis(2100),
        "closed {after:?} after the last byte"
    );
    assert_eq!(tunnels(&gw.metrics().await, "ws-idle"), 0.0);
}

#[tokio::test]
async fn drain_closes_tunnels_when_the_grace_ends_without_failing_the_drain() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n{}",
        config(&echo, "", "")
    ))
    .await;
    let (mut ws, _) = connect(&gw, "/ws/a", &[]).await.unwrap();
    echo_round(&mut ws, Message::text("before")).await;
    let started = tokio::time::Instant::now();
    gw.server.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still carried during the grace.
    echo_round(&mut ws, Message::text("during the grace")).await;
    let Gateway { server, .. } = gw;
    let waiting = tokio::spawn(server.wait());
    assert!(closed(&mut ws).await, "closed at the end of the grace");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        echo.ended.load(Ordering::SeqCst),
        1,
        "on the upstream's side too"
    );
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert!(
        waiting.await.unwrap(),
        "cut tunnels do not make the drain fail"
    );
}

#[tokio::test]
async fn a_reload_that_adds_a_websocket_route_takes_upgrades_on_new_connections() {
    let echo = Echo::start(None).await;
    let plain = config(&echo, "", "").replace("websocket = true\n", "");
    let gw = Gateway::start(&plain).await;
    let (status, _) = refused(connect(&gw, "/ws/a", &[]).await);
    assert_eq!(status, 400);
    let with_ws = manifold::config::parse(
        "test.toml",
        &format!("{}{}", crate::support::SERVER, config(&echo, "", "")),
    )
    .unwrap();
    gw.server.reload(with_ws).unwrap();
    let (mut ws, _) = connect(&gw, "/ws/a", &[])
        .await
        .expect("upgraded after the reload");
    echo_round(&mut ws, Message::text("reloaded")).await;
}

#[tokio::test]
async fn upgrade_requests_need_websocket_and_passthrough_in_config() {
    let bad = "[upstreams.u]\nurls = [\"http://127.0.0.1:1\"]\n[[routes]]\npath = \"/a\"\nwebsocket = true\n  [[routes.backends]]\n  upstream = \"u\"\n  path = \"/\"\n[[routes]]\npath = \"/b\"\nidle_timeout = \"1m\"\npassthrough = true\n  [[routes.backends]]\n  upstream = \"u\"\n  path = \"/\"\n";
    let d = manifold::config::parse("ws.toml", bad)
        .unwrap_err()
        .render();
    assert!(
        d.contains("`websocket = true` needs `passthrough = true`"),
        "{d}"
    );
    assert!(
        d.contains("`idle_timeout` applies only to `websocket = true` routes"),
        "{d}"
    );
    let _ = Upstream::json(json!({})).await;
}

/// Cross-site WebSocket hijacking: a browser sends its cookies with any page's upgrade,
/// so a route takes upgrades only from the origins it names (`websocket.allow_origins`,
/// else its CORS origins), and without either only from its own origin or from
/// clients that send no `origin` (not browsers).
#[tokio::test]
async fn upgrades_come_only_from_allowed_origins() {
    let echo = Echo::start(None).await;
    let gw = Gateway::start(&config(&echo, "", "")).await;
    let own = format!("http://{}", gw.server.addr);
    for headers in [vec![], vec![("origin", own.as_str())]] {
        let (mut ws, _) = connect(&gw, "/ws/a", &headers)
            .await
            .expect("no origin, or the route's own, passes");
        echo_round(&mut ws, Message::text("same site")).await;
    }
    let seen = echo.seen.lock().unwrap().len();
    for evil in ["https://evil.test", "null", "http://127.0.0.1:1"] {
        let (status, body) = refused(connect(&gw, "/ws/a", &[("origin", evil)]).await);
        assert_eq!(status, 403, "{evil}");
        assert_eq!(body["error"]["code"], "CORS_REJECTED");
    }
    assert_eq!(echo.seen.lock().unwrap().len(), seen, "no upstream call");

    let gw = Gateway::start(&config(
        &echo,
        "websocket = { allow_origins = [\"https://chat.test\", \"https://*.chat.test\"] }",
        "",
    ))
    .await;
    for ok in ["https://chat.test", "https://eu.chat.test"] {
        let (mut ws, _) = connect(&gw, "/ws/a", &[("origin", ok)])
            .await
            .expect("a listed origin passes");
        echo_round(&mut ws, Message::text(ok)).await;
    }
    let own = format!("http://{}", gw.server.addr);
    for evil in ["https://evil.test", own.as_str()] {
        let (status, _) = refused(connect(&gw, "/ws/a", &[("origin", evil)]).await);
        assert_eq!(status, 403, "{evil}: only the listed origins");
    }
    let gw = Gateway::start(&config(
        &echo,
        "websocket = { allow_origins = [\"*\"] }",
        "",
    ))
    .await;
    let (mut ws, _) = connect(&gw, "/ws/a", &[("origin", "https://anywhere.test")])
        .await
        .expect("[\"*\"] allows every origin");
    echo_round(&mut ws, Message::text("any")).await;
    // Behind a trusted proxy that rewrites `host`, the page's host is the proxy's
    // `x-forwarded-host`; from anyone else that header means nothing.
    let proxied = |trusted: &str| {
        config(
            &echo,
            "",
            &format!(
                "{}trusted_proxies = [\"{trusted}\"]\n",
                crate::support::SERVER
            ),
        )
    };
    let behind = Gateway::start(&proxied("127.0.0.1")).await;
    let via = [
        ("origin", "https://app.test"),
        ("x-forwarded-host", "app.test"),
    ];
    let (mut ws, _) = connect(&behind, "/ws/a", &via)
        .await
        .expect("the proxy's x-forwarded-host is the page's host");
    echo_round(&mut ws, Message::text("proxied")).await;
    let direct = Gateway::start(&proxied("10.9.9.9")).await;
    let (status, _) = refused(connect(&direct, "/ws/a", &via).await);
    assert_eq!(status, 403, "x-forwarded-host from an untrusted peer");
    let bad = config(&echo, "websocket = { allow_origins = [\"app.test\"] }", "");
    let d = manifold::config::parse("ws.toml", &bad)
        .unwrap_err()
        .render();
    assert!(d.contains("`app.test` is not an origin pattern"), "{d}");
}

/// A tunnel holds two descriptors. Under a low descriptor limit, tunnels past their
/// share are refused with 503 (counted), while the admin listener, new client
/// connections and upstream calls keep working, and the process never runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_and_connections_never_exhaust_descriptors() {
    let echo = Echo::start(None).await;
    let plain = Upstream::json(json!({"ok": true})).await;
    let fresh = Upstream::json(json!({"fresh": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
workers = 1
{}
{}
[[routes]]
path = \"/plain\"
  [[routes.backends]]
  upstream = \"plain\"
  path = \"/p\"

[[routes]]
path = \"/fresh\"
  [[routes.backends]]
  upstream = \"fresh\"
  path = \"/f\"
",
            config(&echo, "", ""),
            crate::support::upstream("plain", &plain.url(), "")
                + &crate::support::upstream("fresh", &fresh.url(), ""),
        ),
    )
    .unwrap();
    let gw = crate::support::Process::start(&path, Some(256)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |p: &str| {
        let url = format!("http://{}{p}", gw.addr);
        let http = http.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(5), http.get(url).send())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(get("/plain").await, Some(200));
    // Tunnels until they are refused.
    let mut open = Vec::new();
    let mut refusals = 0;
    for _ in 0..150 {
        match tokio::time::timeout(Duration::from_secs(5), connect_to(gw.addr, "/ws/a", &[])).await
        {
            Ok(Ok((ws, _))) => open.push(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                assert_eq!(resp.status(), 503);
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.body().clone().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "OVERLOADED");
                refusals += 1;
            }
            other => panic!(
                "neither a tunnel nor a refusal: {:?}\n{}",
                other.map(|r| r.map(|_| ())),
                gw.log()
            ),
        }
    }
    eprintln!("{} tunnels open, {refusals} refused", open.len());
    assert!(open.len() >= 10, "some tunnels open: {}", open.len());
    assert!(refusals > 0, "tunnels past their share are refused");
    // Everything else still works: the admin listener, a new client connection, and a
    // call to an upstream that needs a new connection.
    let (status, metrics) = gw
        .admin_get("/metrics", Duration::from_secs(2))
        .await
        .expect("the admin listener answers");
    assert_eq!(status, 200);
    assert!(
        series(
            &metrics,
            r#"manifold_descriptors_refused_total{holder="tunnel"}"#
        ) >= refusals as f64,
        "{metrics}"
    );
    assert_eq!(get("/plain").await, Some(200));
    assert_eq!(get("/fresh").await, Some(200));
    // The tunnels still carry messages.
    echo_round(&mut open[0], Message::text("still here")).await;
    // Idle connections past the budget are closed at accept, counted; the rest works.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(gw.addr).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = gw
        .admin_get("/metrics", Duration::from_secs(2))
        .await
        .expect("the admin listener answers under a connection flood");
    assert!(
        series(
            &metrics,
            r#"manifold_descriptors_refused_total{holder="connection"}"#
        ) > 0.0,
        "{metrics}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("/plain").await, Some(200));
    assert!(
        !gw.log().contains("Too many open files"),
        "the process ran out of descriptors:\n{}",
        gw.log()
    );
}
