//! The admin console (docs/operations.md#the-console): its JSON (`/stats`,
//! `/requests`), bounded and without secrets, only on the admin listener, off with
//! `[admin] console = false`; and the page itself in a real headless Chromium.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::chromium;
use crate::support::{Gateway, Upstream, dead_addr, upstream};

/// Routes that succeed, fail (500), retry past a dead host, hedge past a slow one,
/// and an optional backend that fails (a partial answer). The retried and hedged
/// calls end on hosts that take 200 ms or more: past `slow`, so they are kept.
async fn gateway() -> (Gateway, Vec<Upstream>) {
    let ok = Upstream::json(json!({"id": 1, "name": "Ada"})).await;
    let broken = Upstream::start(|_| async { crate::support::json(500, json!({"oops": 1})) }).await;
    let slow = Upstream::slow(Duration::from_millis(400), json!({"slow": true})).await;
    let fast = Upstream::slow(Duration::from_millis(200), json!({"fast": true})).await;
    let dead = dead_addr().await;
    let retried = format!(
        "[upstreams.con_retried]\nurls = [\"http://{dead}\", \"{}\"]\nbalance = \"round_robin\"\nretry = {{ attempts = 2 }}\n",
        fast.url()
    );
    let hedged = format!(
        "[upstreams.con_hedged]\nurls = [\"{}\", \"{}\"]\nbalance = \"round_robin\"\nretry = {{ attempts = 2 }}\nhedge = {{ after = \"30ms\" }}\n",
        slow.url(),
        fast.url()
    );
    let config = format!(
        r#"[admin]
slow = "150ms"

{}{}{}{}
[[routes]]
name = "con-ok"
path = "/con/ok/{{id}}"
  [[routes.backends]]
  upstream = "con_ok"
  path = "/users/{{id}}"

[[routes]]
name = "con-cached"
path = "/con/cached"
cache = {{ ttl = "1m" }}
  [[routes.backends]]
  upstream = "con_ok"
  path = "/users/7"

[[routes]]
name = "con-broken"
path = "/con/broken"
  [[routes.backends]]
  name = "users"
  upstream = "con_ok"
  path = "/users/1"
  [[routes.backends]]
  name = "orders"
  upstream = "con_broken"
  path = "/orders"

[[routes]]
name = "con-partial"
path = "/con/partial"
  [[routes.backends]]
  name = "users"
  upstream = "con_ok"
  path = "/users/1"
  [[routes.backends]]
  name = "extras"
  upstream = "con_broken"
  path = "/extras"
  optional = true

[[routes]]
name = "con-retried"
path = "/con/retried"
  [[routes.backends]]
  name = "flaky"
  upstream = "con_retried"
  path = "/x"

[[routes]]
name = "con-hedged"
path = "/con/hedged"
  [[routes.backends]]
  name = "racer"
  upstream = "con_hedged"
  path = "/x"
"#,
        upstream("con_ok", &ok.url(), ""),
        upstream("con_broken", &broken.url(), ""),
        retried,
        hedged,
    );
    (Gateway::start(&config).await, vec![ok, broken, slow, fast])
}

async fn admin_json(gw: &Gateway, path: &str) -> (u16, Value) {
    gw.admin_json(path).await
}

fn route<'v>(stats: &'v Value, name: &str) -> &'v Value {
    stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {stats}"))
}

/// The request id of a request sent to the public listener, and its status.
async fn send(gw: &Gateway, path: &str) -> (String, u16) {
    let r = gw.get(path).await;
    let id = r.header("x-request-id").unwrap().to_string();
    (id, r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_routes_upstreams_and_the_failures_with_their_causes() {
    let (gw, _ups) = gateway().await;
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/con/ok/{i}")).await.status, 200);
    }
    let (broken, status) = send(&gw, "/con/broken").await;
    assert_eq!(status, 502);
    let (stats_status, stats) = admin_json(&gw, "/stats").await;
    assert_eq!(stats_status, 200);

    let p = &stats["process"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["fingerprint"], gw.routes().await["config"]["fingerprint"]);
    assert_eq!(p["last_reload"]["result"], "ok");
    assert!(
        p["last_reload"]["at"].as_str().unwrap().ends_with('Z'),
        "{p}"
    );
    assert!(p["workers"].as_u64().unwrap() >= 1);
    assert!(p["uptime_s"].is_u64() && p["connections"].is_u64(), "{p}");

    let ok = route(&stats, "con-ok");
    assert!(ok["requests_per_s"].as_f64().unwrap() > 0.0, "{ok}");
    assert_eq!(ok["error_pct"], 0.0);
    assert!(ok["p50_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert!(ok["p99_ms"].as_f64().unwrap() >= ok["p50_ms"].as_f64().unwrap());
    assert_eq!(ok["rate_limited"], 0);
    assert_eq!(ok["cache_hit_pct"], Value::Null, "no cache: no hit rate");
    let spark = ok["sparkline"].as_array().unwrap();
    assert!(!spark.is_empty() && spark.len() <= 30, "{ok}");
    assert!(spark.iter().any(|v| v.as_f64().unwrap() > 0.0), "{ok}");
    assert_eq!(route(&stats, "con-broken")["error_pct"], 100.0);
    // A miss, then hits: the route cache's share of answers.
    for _ in 0..4 {
        assert_eq!(gw.get("/con/cached").await.status, 200);
    }
    let (_, stats) = admin_json(&gw, "/stats").await;
    assert_eq!(route(&stats, "con-cached")["cache_hit_pct"], 75.0);

    let up = &stats["upstreams"]["con_broken"];
    assert_eq!(up["breaker"], "closed");
    assert_eq!(up["hosts"][0]["state"], "ok");
    assert_eq!(up["error_pct"], 100.0, "{up}");
    assert!(up["calls_per_s"].as_f64().unwrap() > 0.0, "{up}");
    assert_eq!(up["in_flight"], 0);
    assert_eq!(
        (up["hedges"].as_u64(), up["retry_budget_refused"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        stats.get("shared").is_none() && stats.get("auth").is_none(),
        "neither is set"
    );

    let failure = stats["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["request_id"] == broken.as_str())
        .unwrap_or_else(|| panic!("the failed backend of {broken} in {stats}"));
    assert_eq!(failure["route"], "con-broken");
    assert_eq!(failure["backend"], "orders");
    assert_eq!(failure["upstream"], "con_broken");
    assert_eq!(failure["outcome"], "error");
    // The `backend failed` log line's cause, word for word.
    let logged = crate::support::events_for(&broken, 1)
        .await
        .into_iter()
        .find(|e| e["message"] == "backend failed")
        .unwrap();
    assert_eq!(failure["cause"], logged["cause"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_failed_requests_are_kept_with_their_waterfalls() {
    let (gw, _ups) = gateway().await;
    let (broken, _) = send(&gw, "/con/broken").await;
    let (partial, status) = send(&gw, "/con/partial").await;
    assert_eq!(status, 200, "an optional backend failed: a partial answer");
    let (fine, _) = send(&gw, "/con/ok/1").await;
    // Round robin: of two calls, one begins on the dead host and is retried, one
    // begins on the slow host and is hedged.
    let mut retried = Vec::new();
    let mut hedged = Vec::new();
    for _ in 0..2 {
        retried.push(send(&gw, "/con/retried").await.0);
        hedged.push(send(&gw, "/con/hedged").await.0);
    }

    let (_, failed) = admin_json(&gw, "/requests?kind=failed").await;
    let failed = failed["requests"].as_array().unwrap();
    let ids: Vec<&str> = failed
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&broken.as_str()) && ids.contains(&partial.as_str()),
        "{ids:?}"
    );
    assert!(!ids.contains(&fine.as_str()));
    // Newest first, with the §14 fields.
    assert_eq!(ids.iter().position(|i| *i == partial), Some(0), "{ids:?}");
    let b = failed
        .iter()
        .find(|r| r["request_id"] == broken.as_str())
        .unwrap();
    assert_eq!(
        (b["route"].as_str(), b["status"].as_u64()),
        (Some("con-broken"), Some(502))
    );
    assert!(
        b["duration_ms"].as_f64().unwrap() > 0.0 && b["at"].is_string(),
        "{b}"
    );

    // The broken request's waterfall: both backends, each attempt, on the host called.
    let (status, w) = admin_json(&gw, &format!("/requests/{broken}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (w["route"].as_str(), w["status"].as_u64()),
        (Some("con-broken"), Some(502))
    );
    let orders = w["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "orders")
        .unwrap();
    assert_eq!(
        (orders["upstream"].as_str(), orders["outcome"].as_str()),
        (Some("con_broken"), Some("error"))
    );
    let attempt = &orders["attempts"][0];
    assert_eq!(attempt["outcome"], "error");
    assert_eq!(attempt["hedge"], false);
    assert!(
        attempt["host"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{attempt}"
    );
    assert!(attempt["start_ms"].as_f64().unwrap() >= orders["start_ms"].as_f64().unwrap());
    assert!(w["duration_ms"].as_f64().unwrap() >= orders["duration_ms"].as_f64().unwrap());

    // Kept as slow: the retried and hedged requests, not the quick one.
    let (_, slow) = admin_json(&gw, "/requests?kind=slow").await;
    let slow: Vec<&str> = slow["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    for id in retried.iter().chain(&hedged) {
        assert!(slow.contains(&id.as_str()), "{id} in {slow:?}");
    }
    assert!(!slow.contains(&fine.as_str()));

    // A retry: the dead host's connect error, then the other host's answer.
    let mut retries = 0;
    for id in &retried {
        let (_, w) = admin_json(&gw, &format!("/requests/{id}")).await;
        let attempts = w["backends"][0]["attempts"].as_array().unwrap();
        if attempts.len() == 2 {
            assert_eq!(attempts[0]["outcome"], "error", "{w}");
            assert_eq!(attempts[1]["outcome"], "ok", "{w}");
            assert_ne!(attempts[0]["host"], attempts[1]["host"]);
            assert!(attempts[1]["start_ms"].as_f64() >= attempts[0]["start_ms"].as_f64());
            retries += 1;
        }
    }
    assert_eq!(
        retries, 1,
        "round robin starts one of the two on the dead host"
    );

    // A hedge: both attempts of the round, the one that lost cancelled.
    for id in &hedged {
        let (_, w) = admin_json(&gw, &format!("/requests/{id}")).await;
        let b = &w["backends"][0];
        assert_eq!(
            (b["name"].as_str(), b["outcome"].as_str()),
            (Some("racer"), Some("ok"))
        );
        let attempts = b["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{w}");
        let hedge = attempts
            .iter()
            .find(|a| a["hedge"] == true)
            .expect("a hedge");
        assert!(hedge["start_ms"].as_f64().unwrap() >= 30.0, "{w}");
        let outcomes: Vec<&str> = attempts
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert!(
            outcomes.contains(&"ok") && outcomes.contains(&"cancelled"),
            "{w}"
        );
    }
    let (_, stats) = admin_json(&gw, "/stats").await;
    assert!(
        stats["upstreams"]["con_hedged"]["hedges"].as_u64().unwrap() >= 2,
        "{stats}"
    );

    let (status, missing) = admin_json(&gw, "/requests/not-a-kept-request").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "ROUTE_NOT_FOUND");
    let (status, bad) = admin_json(&gw, "/requests?kind=everything").await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_holds_no_header_value_query_or_credential_and_is_admin_only() {
    let (gw, _ups) = gateway().await;
    let secret = "s3cr3t-value-nobody-may-see";
    let r = gw
        .send(
            gw.client
                .get(format!("{}/con/broken?token={secret}&x={secret}", gw.base))
                .header("authorization", format!("Bearer {secret}"))
                .header("cookie", format!("session={secret}"))
                .header("x-api-key", secret),
        )
        .await;
    assert_eq!(r.status, 502);
    let id = r.header("x-request-id").unwrap().to_string();
    for path in [
        "/stats".to_string(),
        "/requests?kind=failed".to_string(),
        format!("/requests/{id}"),
    ] {
        let text = gw
            .client
            .get(format!("{}{path}", gw.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(&id), "{path} keeps the request: {text}");
        assert!(!text.contains(secret), "{path} shows a secret: {text}");
    }
    // Only on the admin listener.
    for path in [
        "/",
        "/stats",
        "/requests?kind=failed",
        &format!("/requests/{id}"),
    ] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 404, "{path} on the public listener");
        assert!(!String::from_utf8_lossy(&r.body).contains(&id), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_false_turns_the_page_and_the_record_off() {
    let ok = Upstream::json(json!({"id": 1})).await;
    let gw = Gateway::start(&format!(
        "[admin]\nconsole = false\n{}\n[[routes]]\nname = \"con-off\"\npath = \"/off\"\n  [[routes.backends]]\n  upstream = \"con_off\"\n  path = \"/\"\n",
        upstream("con_off", &ok.url(), "")
    ))
    .await;
    assert_eq!(gw.get("/off").await.status, 200);
    assert!(gw.server.live.gateway.load().console.is_none());
    assert!(gw.server.live.gateway.load().routes[0].console.is_none());
    for path in ["/", "/stats", "/requests?kind=slow", "/requests/x"] {
        let (status, _) = admin_json(&gw, path).await;
        assert_eq!(status, 404, "{path}");
    }
    // The rest of the admin listener is as it was.
    let (status, _) = admin_json(&gw, "/routes").await;
    assert_eq!(status, 200);
}

/// The page in a real headless Chromium: it loads with no console error and no
/// request but its own JSON, shows the routes, its numbers move under traffic, a
/// failure shows its cause, and a slow request opens to its waterfall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_console_live() {
    let (gw, _ups) = gateway().await;
    let profile = tempfile::tempdir().unwrap();
    let (_browser, mut page) = chromium(profile.path()).await;
    for domain in [
        "Runtime.enable",
        "Log.enable",
        "Network.enable",
        "Page.enable",
    ] {
        page.call(domain, json!({})).await;
    }
    page.call("Page.navigate", json!({"url": format!("{}/", gw.admin)}))
        .await;
    page.wait_for("Page.loadEventFired").await;
    // The page asks every second; give it its first answer.
    let shown = |route: &str| {
        format!(
            r#"document.querySelector('#routes tr[data-route="{route}"] .rps')?.textContent ?? null"#
        )
    };
    let mut first = Value::Null;
    for _ in 0..50 {
        first = page.eval(&shown("con-ok")).await;
        if first.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first, "0.00", "the routes are shown, none has traffic yet");
    for name in ["con-broken", "con-partial", "con-retried", "con-hedged"] {
        assert!(page.eval(&shown(name)).await.is_string(), "{name} is shown");
    }
    assert_eq!(
        page.eval("document.querySelector('#live-text').textContent")
            .await,
        "live"
    );

    // Traffic: the numbers move within a refresh or two.
    for i in 0..30 {
        gw.get(&format!("/con/ok/{i}")).await;
    }
    let (broken, _) = send(&gw, "/con/broken").await;
    let (hedged, _) = send(&gw, "/con/hedged").await;
    let mut moved = Value::Null;
    for _ in 0..50 {
        moved = page.eval(&shown("con-ok")).await;
        if moved != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(moved, first, "requests/s moved under traffic");
    let p99 = page
        .eval(r#"document.querySelector('#routes tr[data-route="con-ok"] .p99').textContent"#)
        .await;
    assert!(p99.as_str().unwrap().ends_with("ms"), "{p99}");

    // The failure and its cause.
    let cause_of = format!(
        r#"document.querySelector('#failures tr[data-request-id="{broken}"] td.cause')?.textContent ?? null"#
    );
    let mut cause = Value::Null;
    for _ in 0..30 {
        cause = page.eval(&cause_of).await;
        if cause.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, stats) = admin_json(&gw, "/stats").await;
    let expected = stats["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["request_id"] == broken.as_str())
        .unwrap()["cause"]
        .clone();
    assert_eq!(cause, expected);
    assert!(cause.as_str().unwrap().contains("500"), "{cause}");

    // A slow request, clicked, opens to its waterfall: a bar per backend and attempt.
    let row = format!(r#"document.querySelector('#slow tr[data-request-id="{hedged}"]')"#);
    for _ in 0..30 {
        if page.eval(&format!("{row} !== null")).await == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.eval(&format!("{row}.click(), true")).await;
    let bars = r#"[...document.querySelectorAll('#waterfall .bar[data-backend="racer"]')].map(b => b.className)"#;
    let mut shown_bars = Value::Null;
    for _ in 0..30 {
        shown_bars = page.eval(bars).await;
        if shown_bars.as_array().is_some_and(|b| b.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let classes: Vec<&str> = shown_bars
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        classes.len(),
        3,
        "the backend and its two attempts: {classes:?}"
    );
    assert!(
        classes.iter().any(|c| c.contains("o-cancelled")),
        "{classes:?}"
    );
    let heading = page
        .eval("document.querySelector('#waterfall h3').textContent")
        .await;
    assert!(heading.as_str().unwrap().contains(&hedged), "{heading}");

    // A link to a request no longer kept says so, without a failed request.
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/?again#request=not-kept", gw.admin)}),
    )
    .await;
    page.wait_for("Page.loadEventFired").await;
    let mut said = Value::Null;
    for _ in 0..30 {
        said = page
            .eval("document.querySelector('#waterfall:not([hidden]) .empty')?.textContent ?? null")
            .await;
        if said.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        said.as_str().is_some_and(|t| t.starts_with("not kept")),
        "{said}"
    );

    // Nothing went wrong, and nothing was asked of anyone but the admin listener.
    let events = std::mem::take(&mut page.events);
    for e in &events {
        let method = e["method"].as_str().unwrap_or_default();
        let p = &e["params"];
        match method {
            "Runtime.exceptionThrown" => panic!("a script error: {p}"),
            "Runtime.consoleAPICalled" => {
                assert!(
                    !matches!(p["type"].as_str(), Some("error" | "warning" | "assert")),
                    "console: {p}"
                )
            }
            "Log.entryAdded" => {
                assert!(
                    !matches!(p["entry"]["level"].as_str(), Some("error" | "warning")),
                    "log: {p}"
                )
            }
            "Network.requestWillBeSent" => {
                let url = p["request"]["url"].as_str().unwrap_or_default();
                assert!(
                    url.starts_with(&gw.admin) || url.starts_with("data:"),
                    "asked elsewhere: {url}"
                );
            }
            _ => {}
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e["method"] == "Network.requestWillBeSent"
                && e["params"]["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/stats"))),
        "the page read /stats"
    );
}

/// A reload keeps each route's and upstream's figures and the kept requests; the
/// last reload's result is shown, a refused one as `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_record_and_show_their_result() {
    let ok = Upstream::json(json!({"id": 1})).await;
    let broken = Upstream::start(|_| async { crate::support::json(503, json!({})) }).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let text = |timeout: &str| {
        format!(
            "{}{}{}\n[[routes]]\nname = \"con-reload\"\npath = \"/reload\"\ntimeout = \"{timeout}\"\n  [[routes.backends]]\n  upstream = \"con_reload\"\n  path = \"/\"\n\n[[routes]]\nname = \"con-reload-broken\"\npath = \"/reload/broken\"\n  [[routes.backends]]\n  upstream = \"con_reload_broken\"\n  path = \"/\"\n",
            crate::support::SERVER,
            upstream("con_reload", &ok.url(), ""),
            upstream("con_reload_broken", &broken.url(), "")
        )
    };
    std::fs::write(&path, text("2s")).unwrap();
    let gw = Gateway::start_file(&path).await;
    for _ in 0..10 {
        assert_eq!(gw.get("/reload").await.status, 200);
    }
    let (failed, _) = send(&gw, "/reload/broken").await;
    let (_, before) = admin_json(&gw, "/stats").await;
    let started_at = before["process"]["last_reload"]["at"].clone();

    // A changed route and the same upstream: the figures go on under their names.
    std::fs::write(&path, text("3s")).unwrap();
    gw.server.reload_file(&path).await.unwrap();
    let (_, after) = admin_json(&gw, "/stats").await;
    assert_eq!(after["process"]["last_reload"]["result"], "ok");
    assert_ne!(after["process"]["last_reload"]["at"], started_at);
    assert_ne!(
        after["process"]["fingerprint"],
        before["process"]["fingerprint"]
    );
    assert!(
        route(&after, "con-reload")["requests_per_s"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{after}"
    );
    assert!(
        after["upstreams"]["con_reload"]["calls_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (status, _) = admin_json(&gw, &format!("/requests/{failed}")).await;
    assert_eq!(status, 200, "a kept request outlives the reload");

    // A refused reload: the old config serves, the console says so.
    std::fs::write(&path, "[[routes]]\npath = 1\n").unwrap();
    assert!(gw.server.reload_file(&path).await.is_err());
    let (_, refused) = admin_json(&gw, "/stats").await;
    assert_eq!(refused["process"]["last_reload"]["result"], "error");
    assert_eq!(
        refused["process"]["fingerprint"],
        after["process"]["fingerprint"]
    );
}
