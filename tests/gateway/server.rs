//! The server: h2c, the admin listener, access logs, graceful drain, signals.

use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, upstream};

fn simple(url: &str, extra: &str) -> String {
    format!(
        "{extra}
{}
[[routes]]
name = \"simple\"
path = \"/s/{{id}}\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/x/{{id}}\"
",
        upstream("svc", url, "")
    )
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let gw = Gateway::start(&simple(&up.url(), "")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{}/s/1", gw.base)).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"ok": 1})
    );
}

/// The access line says who asked (the client's address after `trusted_proxies`, its
/// `user-agent`, cut at 256 bytes) and how large the answer was.
#[tokio::test]
async fn the_access_line_names_the_client_and_the_answers_size() {
    let up = Upstream::json(json!({"hello": "world"})).await;
    let gw = Gateway::start(&simple(
        &up.url(),
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    ))
    .await;
    let r = gw
        .send(
            gw.client
                .get(format!("{}/s/1", gw.base))
                .header("user-agent", "acme-app/7.1 (iPhone)")
                .header("x-forwarded-for", "203.0.113.9"),
        )
        .await;
    assert_eq!(r.status, 200);
    let line = gw.access_line(r.header("x-request-id").unwrap()).await;
    assert_eq!(
        line["client"], "203.0.113.9",
        "after the trusted proxy: {line}"
    );
    assert_eq!(line["user_agent"], "acme-app/7.1 (iPhone)");
    assert_eq!(line["bytes"], r.body.len(), "{line}");
    // An error answer's size too; a long user-agent is cut.
    let r = gw
        .send(
            gw.client
                .get(format!("{}/nope", gw.base))
                .header("user-agent", "x".repeat(1000)),
        )
        .await;
    let line = gw.access_line(r.header("x-request-id").unwrap()).await;
    assert_eq!(line["bytes"], r.body.len());
    assert_eq!(line["user_agent"].as_str().unwrap().len(), 256);
    assert_eq!(line["client"], "127.0.0.1", "no forwarded-for: the peer");
}

/// `/routes` shows every policy a route has, as `manifold routes` does: rate limit,
/// CORS (its own or `[cors]`'s), forwarded headers and query, the cache with its
/// `stale_if_error`, auth, validation and idempotency.
#[tokio::test]
async fn routes_shows_every_policy_of_a_route() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "[cors]\nallow_origins = [\"https://app.test\"]\n[auth.jwt.app]\nsecret = \"a-routes-test-secret-of-32-bytes-at-least\"\nalgorithms = [\"HS256\"]\n{}\
         [[routes]]\nname = \"policies\"\npath = \"/p/{{id}}\"\nforward_headers = [\"accept-language\"]\nforward_query = [\"lang\"]\n\
         rate_limit = {{ per_second = 5, burst = 10, key = \"header:x-api-key\" }}\ncache = {{ ttl = \"2s\", stale_if_error = \"1m\" }}\n\
         auth = {{ jwt = \"app\" }}\nvalidate = {{ params = {{ type = \"object\" }} }}\n\
           [[routes.backends]]\n  upstream = \"svc\"\n  path = \"/p/{{id}}\"\n\
         [[routes]]\nname = \"own_cors\"\npath = \"/o\"\nmethod = \"POST\"\ncors = {{ allow_origins = [\"https://other.test\"], allow_credentials = true }}\nidempotency = {{ ttl = \"1h\" }}\n\
           [[routes.backends]]\n  upstream = \"svc\"\n  path = \"/o\"\n",
        upstream("svc", &up.url(), ""),
    ))
    .await;
    let routes = gw.routes().await;
    let p = &routes["routes"][0];
    assert_eq!(
        p["rate_limit"],
        json!({"per_second": 5.0, "burst": 10, "key": "header:x-api-key", "max_keys": p["rate_limit"]["max_keys"]})
    );
    assert_eq!(p["cors"]["from"], "[cors]");
    assert_eq!(p["cors"]["allow_origins"], json!(["https://app.test"]));
    assert_eq!(p["forward_headers"], json!(["accept-language"]));
    assert_eq!(p["forward_query"], json!(["lang"]));
    assert_eq!(
        p["cache"],
        json!({"ttl_ms": 2000, "stale_if_error_ms": 60000})
    );
    assert_eq!(p["auth"]["jwt"], "app");
    assert_eq!(p["validate"]["params"], "inline");
    let o = &routes["routes"][1];
    assert_eq!(o["cors"]["from"], "route");
    assert_eq!(o["cors"]["allow_credentials"], true);
    assert_eq!(o["idempotency"]["ttl_ms"], 3_600_000);
    assert_eq!(o["rate_limit"], serde_json::Value::Null);
    // No secret: the validator's secret is nowhere in it.
    assert!(!routes.to_string().contains("a-routes-test-secret"));
}

#[tokio::test]
async fn admin_health_ready_and_routes() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&simple(&up.url(), "")).await;
    let c = &gw.client;
    assert_eq!(
        c.get(format!("{}/health", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let routes: serde_json::Value = c
        .get(format!("{}/routes", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes["routes"][0]["name"], "simple");
    assert_eq!(routes["routes"][0]["method"], "GET");
    assert_eq!(routes["routes"][0]["path"], "/s/{id}");
    assert_eq!(routes["routes"][0]["backends"][0]["upstream"], "svc");
    assert_eq!(routes["upstreams"]["svc"]["breaker"], "closed");
    // admin endpoints are not on the public port
    let r = gw.get("/health").await;
    r.error(404, "ROUTE_NOT_FOUND");
    // An unknown admin path gets the contract's error body, request id included.
    let r = gw.send(c.get(format!("{}/nothing", gw.admin))).await;
    r.error(404, "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn one_access_line_per_request_unless_turned_off() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&simple(&up.url(), "")).await;
    let r = gw.get("/s/1").await;
    gw.get("/missing").await;
    let lines = gw.access_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "simple");
    assert_eq!(l["status"], 200);
    assert_eq!(l["partial"], false);
    assert_eq!(l["request_id"].as_str(), r.header("x-request-id"));
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(l["backends"]["svc"]["outcome"], "ok");
    assert_eq!(lines[1]["route"], "unmatched");
    assert_eq!(lines[1]["status"], 404);

    let quiet = Gateway::start(&simple(&up.url(), "[telemetry]\naccess_log = false\n")).await;
    quiet.get("/s/1").await;
    assert!(quiet.logs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_ones() {
    let up = Upstream::slow(Duration::from_millis(400), json!({"done": true})).await;
    let gw = Gateway::start(&simple(&up.url(), "")).await;
    let in_flight = {
        let c = gw.client.clone();
        let url = format!("{}/s/1", gw.base);
        tokio::spawn(async move { c.get(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.server.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = gw
        .client
        .get(format!("{}/ready", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "/ready turns 503 at once");
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(format!("{}/s/2", gw.base)).send().await.is_err(),
        "new connections are refused"
    );
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request finishes");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"done": true})
    );
    assert!(gw.server.wait().await, "drained within the grace");
}

#[tokio::test(start_paused = true)]
async fn drain_reports_requests_cut_by_the_grace() {
    let up = Upstream::slow(Duration::from_secs(5), json!({})).await;
    let gw = Gateway::start(&simple(
        &up.url(),
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"200ms\"\ndefault_timeout = \"10s\"\n",
    ))
    .await;
    let c = gw.client.clone();
    let url = format!("{}/s/1", gw.base);
    let _in_flight = tokio::spawn(async move { c.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.server.shutdown();
    let started = tokio::time::Instant::now();
    assert!(!gw.server.wait().await, "a cut request is reported");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(210),
        "the grace, no more: {waited:?}"
    );
}

/// The real binary: SIGTERM drains and exits 0.
#[tokio::test]
async fn binary_exits_zero_on_sigterm() {
    let up = Upstream::json(json!({"ok": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, simple(&up.url(), crate::support::SERVER)).unwrap();
    let gw = crate::support::Process::start(&path, None).await;
    let port = gw.addr.port();
    let mut child = gw.child;
    let client = reqwest::Client::new();
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/s/1"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the binary never served");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // Every line, the access line and the gateway's own, carries one timestamp form:
    // RFC 3339, UTC, milliseconds.
    let lines = gw.lines.lock().unwrap().clone();
    let stamps: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["timestamp"].as_str().map(str::to_string))
        .collect();
    assert!(stamps.len() >= 3, "{lines:?}");
    for t in &stamps {
        let b = t.as_bytes();
        assert!(
            b.len() == 24 && b[10] == b'T' && b[19] == b'.' && b[23] == b'Z',
            "{t} in {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_request_the_client_abandons_is_still_logged() {
    let up = Upstream::slow(Duration::from_secs(2), json!({})).await;
    let gw = Gateway::start(&simple(&up.url(), "")).await;
    // HTTP/2: giving up resets the stream, and the gateway drops the request's work.
    let impatient = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(
        impatient
            .get(format!("{}/s/1", gw.base))
            .send()
            .await
            .is_err()
    );
    let mut line = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        line = gw.access_lines().into_iter().find(|l| l["path"] == "/s/1");
        if line.is_some() {
            break;
        }
    }
    let line = line.expect("one access line even for an abandoned request");
    assert_eq!(line["status"], 499);
    assert_eq!(line["route"], "simple");
}
