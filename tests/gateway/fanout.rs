//! Concurrent fan-out, the dependency graph and deadlines
//! (docs/configuration.md#how-a-merged-response-is-built,
//! docs/operations.md#status-codes-a-client-can-get); shaping and merging are in
//! tests/scenarios/shaping.

use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, json, upstream};

#[tokio::test(start_paused = true)]
async fn three_slow_backends_run_concurrently() {
    let a = Upstream::slow(Duration::from_millis(300), json!({"a": 1})).await;
    let b = Upstream::slow(Duration::from_millis(300), json!({"b": 2})).await;
    let c = Upstream::slow(Duration::from_millis(300), json!({"c": 3})).await;
    let gw = Gateway::start(&format!(
        "{}{}{}
[[routes]]
path = \"/x\"
  [[routes.backends]]
  upstream = \"a\"
  path = \"/a\"
  [[routes.backends]]
  upstream = \"b\"
  path = \"/b\"
  [[routes.backends]]
  upstream = \"c\"
  path = \"/c\"
",
        upstream("a", &a.url(), ""),
        upstream("b", &b.url(), ""),
        upstream("c", &c.url(), "")
    ))
    .await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"a": 1, "b": 2, "c": 3}));
    assert_eq!(r.header("x-manifold-completed"), Some("true"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Paused time: the 300 ms are the upstreams' sleeps, run together.
    assert!(
        r.elapsed >= Duration::from_millis(300) && r.elapsed < Duration::from_millis(310),
        "three 300 ms backends took {:?}",
        r.elapsed
    );
}

#[tokio::test(start_paused = true)]
async fn dependent_backend_waits_only_for_its_input() {
    let users = Upstream::slow(
        Duration::from_millis(200),
        json!({"customer_id": "c 7/x", "name": "Ada"}),
    )
    .await;
    let orders = Upstream::json(json!({"items": [1, 2]})).await;
    let recs = Upstream::json(json!(["r1"])).await;
    let gw = Gateway::start(&format!(
        "{}{}{}
[[routes]]
path = \"/d/{{id}}\"
  [[routes.backends]]
  name = \"user\"
  upstream = \"users\"
  path = \"/users/{{id}}\"
  allow = [\"name\"]
  group = \"user\"
  [[routes.backends]]
  name = \"orders\"
  upstream = \"orders\"
  path = \"/orders?customer={{user.customer_id}}&limit=5\"
  target = \"items\"
  group = \"orders\"
  [[routes.backends]]
  upstream = \"recs\"
  path = \"/recs/{{id}}\"
",
        upstream("users", &users.url(), ""),
        upstream("orders", &orders.url(), ""),
        upstream("recs", &recs.url(), "")
    ))
    .await;
    let r = gw.get("/d/7").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // `customer_id` fed the orders call without reaching the client (allow = ["name"]).
    assert_eq!(
        r.json(),
        json!({"user": {"name": "Ada"}, "orders": [1, 2], "recs": ["r1"]})
    );
    assert_eq!(
        orders.last().uri.to_string(),
        "/orders?customer=c%207%2Fx&limit=5"
    );
    // recs did not wait for users; orders did.
    let users_at = users.last().at;
    assert!(
        recs.last().at < users_at + Duration::from_millis(5),
        "independent backend started late"
    );
    assert!(
        orders.last().at >= users_at + Duration::from_millis(200),
        "dependent backend started before its input"
    );
}

#[tokio::test(start_paused = true)]
async fn the_route_deadline_bounds_the_answer() {
    let fast = Upstream::json(json!({"fast": true})).await;
    let slow = Upstream::slow(Duration::from_secs(3), json!({"slow": true})).await;
    let gw = Gateway::start(&format!(
        "{}{}
[[routes]]
path = \"/required\"
timeout = \"200ms\"
  [[routes.backends]]
  upstream = \"fast\"
  path = \"/\"
  [[routes.backends]]
  upstream = \"slow\"
  path = \"/\"

[[routes]]
path = \"/optional\"
timeout = \"200ms\"
  [[routes.backends]]
  upstream = \"fast\"
  path = \"/\"
  [[routes.backends]]
  upstream = \"slow\"
  path = \"/\"
  optional = true
",
        upstream("fast", &fast.url(), ""),
        upstream("slow", &slow.url(), "")
    ))
    .await;
    let r = gw.get("/required").await;
    let e = r.error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(e["backend"], "slow");
    assert!(
        r.elapsed >= Duration::from_millis(200) && r.elapsed < Duration::from_millis(210),
        "took {:?}",
        r.elapsed
    );

    let r = gw.get("/optional").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"fast": true}));
    assert_eq!(r.header("x-manifold-completed"), Some("false"));
    assert!(
        r.elapsed >= Duration::from_millis(200) && r.elapsed < Duration::from_millis(210),
        "took {:?}",
        r.elapsed
    );
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_upstream_timeout_when_shorter() {
    let slow = Upstream::slow(Duration::from_secs(2), json!({})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/t\"
timeout = \"2s\"
  [[routes.backends]]
  upstream = \"slow\"
  path = \"/\"
",
        upstream("slow", &slow.url(), "timeout = \"100ms\"")
    ))
    .await;
    let r = gw.get("/t").await;
    r.error(504, "UPSTREAM_TIMEOUT");
    assert!(
        r.elapsed >= Duration::from_millis(100) && r.elapsed < Duration::from_millis(110),
        "took {:?}",
        r.elapsed
    );
}

#[tokio::test]
async fn client_body_goes_to_backends_whose_method_carries_one() {
    let writer = Upstream::start(|s| async move {
        json(201, json!({"got": String::from_utf8_lossy(&s.body), "ct": s.headers.get("content-type").unwrap().to_str().unwrap()}))
    })
    .await;
    let reader = Upstream::json(json!({"read": true})).await;
    let gw = Gateway::start(&format!(
        "{}{}
[[routes]]
method = \"POST\"
path = \"/orders\"
  [[routes.backends]]
  upstream = \"writer\"
  path = \"/w\"
  group = \"created\"
  [[routes.backends]]
  upstream = \"reader\"
  method = \"GET\"
  path = \"/r\"
",
        upstream("writer", &writer.url(), ""),
        upstream("reader", &reader.url(), "")
    ))
    .await;
    let r = gw
        .send(
            gw.client
                .post(format!("{}/orders", gw.base))
                .header("content-type", "application/json")
                .body(r#"{"sku":"a"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"created": {"got": "{\"sku\":\"a\"}", "ct": "application/json"}, "read": true})
    );
    assert_eq!(reader.last().method, http::Method::GET);
    assert!(reader.last().body.is_empty());
    assert!(reader.last().headers.get("content-type").is_none());
}
