//! Breakers, retries and load shedding (docs/configuration.md#resilience-order-and-state)
//! against real upstreams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, json, upstream};

/// An upstream that answers 500 while `failing` is set, else 200.
async fn switchable() -> (Upstream, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let up = Upstream::start(move |_| {
        let fail = f.load(Ordering::SeqCst);
        async move {
            if fail {
                json(500, json!({}))
            } else {
                json(200, json!({"ok": true}))
            }
        }
    })
    .await;
    (up, failing)
}

fn breaker_route(url: &str, optional: bool) -> String {
    format!(
        "{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  name = \"svc\"
  upstream = \"svc\"
  path = \"/\"
  optional = {optional}
  [[routes.backends]]
  upstream = \"other\"
  path = \"/\"
  group = \"other\"
",
        upstream(
            "svc",
            url,
            "circuit_breaker = { consecutive_failures = 3, open_for = \"400ms\" }"
        )
    )
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_probes_and_closes() {
    let (up, failing) = switchable().await;
    let other = Upstream::json(json!({"x": 1})).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        breaker_route(&up.url(), false),
        upstream("other", &other.url(), "")
    ))
    .await;
    for _ in 0..3 {
        gw.get("/r").await.error(502, "UPSTREAM_ERROR");
    }
    assert_eq!(up.hits(), 3);
    assert_eq!(gw.breaker("svc").await, "open");

    // Open: fail at once, no call reaches the upstream.
    let r = gw.get("/r").await;
    let e = r.error(503, "CIRCUIT_OPEN");
    assert_eq!(e["backend"], "svc");
    assert_eq!(
        r.header("retry-after"),
        Some("1"),
        "whole seconds, at least 1"
    );
    assert!(
        r.elapsed < Duration::from_millis(1),
        "at once: {:?}",
        r.elapsed
    );
    assert_eq!(up.hits(), 3, "an open breaker sends nothing");

    // After open_for, one probe; its success closes the breaker.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(gw.get("/r").await.status, 200);
    assert_eq!(up.hits(), 4);
    assert_eq!(gw.breaker("svc").await, "closed");
    assert_eq!(gw.get("/r").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_again() {
    let (up, _failing) = switchable().await;
    let other = Upstream::json(json!({})).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        breaker_route(&up.url(), false),
        upstream("other", &other.url(), "")
    ))
    .await;
    for _ in 0..3 {
        gw.get("/r").await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    gw.get("/r").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(up.hits(), 4, "exactly one probe");
    assert_eq!(gw.breaker("svc").await, "open");
    gw.get("/r").await.error(503, "CIRCUIT_OPEN");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn an_open_breaker_on_an_optional_backend_gives_a_partial_answer() {
    let (up, _failing) = switchable().await;
    let other = Upstream::json(json!({"x": 1})).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        breaker_route(&up.url(), true),
        upstream("other", &other.url(), "")
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("/r").await.status, 200);
    }
    let r = gw.get("/r").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-manifold-completed"), Some("false"));
    assert_eq!(r.json(), json!({"other": {"x": 1}}));
    assert_eq!(up.hits(), 3);
    let last = gw.access_lines().pop().unwrap();
    assert_eq!(last["backends"]["svc"]["outcome"], "circuit_open");
}

#[tokio::test]
async fn client_errors_never_open_the_breaker() {
    let up = Upstream::start(|_| async { json(404, json!({})) }).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  name = \"svc\"
  upstream = \"svc\"
  path = \"/\"
",
        upstream(
            "svc",
            &up.url(),
            "circuit_breaker = { consecutive_failures = 2, open_for = \"10s\" }"
        )
    ))
    .await;
    for _ in 0..5 {
        gw.get("/r").await.error(404, "UPSTREAM_REJECTED");
    }
    assert_eq!(up.hits(), 5);
    assert_eq!(gw.breaker("svc").await, "closed");
}

/// Fails the first `n` calls with `status`, then answers 200; counts calls.
async fn flaky(n: usize, status: u16) -> Upstream {
    let calls = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_| {
        let i = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if i < n {
                json(status, json!({}))
            } else {
                json(200, json!({"ok": true}))
            }
        }
    })
    .await
}

fn retry_routes(url: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"

[[routes]]
method = \"POST\"
path = \"/r\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"
",
        upstream("svc", url, "retry = { attempts = 3, backoff = \"10ms\" }")
    )
}

#[tokio::test]
async fn idempotent_calls_are_retried_on_503() {
    let up = flaky(2, 503).await;
    let gw = Gateway::start(&retry_routes(&up.url())).await;
    let r = gw.get("/r").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 3);
    let line = gw.access_lines().pop().unwrap();
    assert_eq!(line["backends"]["svc"]["attempts"], 3);
}

#[tokio::test]
async fn attempts_are_a_total_and_500_is_not_retried() {
    let up = flaky(10, 503).await;
    let gw = Gateway::start(&retry_routes(&up.url())).await;
    gw.get("/r").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(up.hits(), 3, "attempts counts every try");

    let up = flaky(1, 500).await;
    let gw = Gateway::start(&retry_routes(&up.url())).await;
    gw.get("/r").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(up.hits(), 1, "500 is not among 502/503/504");
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key() {
    let up = flaky(1, 502).await;
    let gw = Gateway::start(&retry_routes(&up.url())).await;
    let url = format!("{}/r", gw.base);
    gw.send(gw.client.post(&url).body("{}"))
        .await
        .error(502, "UPSTREAM_ERROR");
    assert_eq!(
        up.hits(),
        1,
        "POST without idempotency-key is never retried"
    );

    let up = flaky(1, 502).await;
    let gw = Gateway::start(&retry_routes(&up.url())).await;
    let r = gw
        .send(
            gw.client
                .post(format!("{}/r", gw.base))
                .header("idempotency-key", "k-1")
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(
        up.last().headers["idempotency-key"],
        "k-1",
        "the key is forwarded"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_never_run_past_the_deadline() {
    let up = Upstream::slow(Duration::from_secs(2), json!({})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/r\"
timeout = \"250ms\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"
",
        upstream(
            "svc",
            &up.url(),
            "timeout = \"100ms\"\nretry = { attempts = 5, backoff = \"30ms\" }"
        )
    ))
    .await;
    let r = gw.get("/r").await;
    r.error(504, "UPSTREAM_TIMEOUT");
    // Attempt 1 times out at 100 ms, the backoff ends at 130, attempt 2 times out at
    // 230; a third would start at 260, past the 250 ms deadline.
    assert!(
        r.elapsed >= Duration::from_millis(230) && r.elapsed < Duration::from_millis(240),
        "{:?}",
        r.elapsed
    );
    assert_eq!(up.hits(), 2, "only what fits in the deadline");
}

#[tokio::test(start_paused = true)]
async fn past_max_concurrency_calls_fail_at_once() {
    let up = Upstream::slow(Duration::from_millis(300), json!({"ok": true})).await;
    let gw = Arc::new(
        Gateway::start(&format!(
            "{}
[[routes]]
path = \"/r/{{id}}\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/x/{{id}}\"
",
            upstream("svc", &up.url(), "max_concurrency = 2")
        ))
        .await,
    );
    let mut tasks = Vec::new();
    // Distinct paths: identical GETs would be coalesced into one call.
    for i in 0..5 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(
            async move { gw.get(&format!("/r/{i}")).await },
        ));
    }
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                r.error(503, "OVERLOADED");
                assert!(
                    r.elapsed < Duration::from_millis(1),
                    "shed at once, not queued: {:?}",
                    r.elapsed
                );
                shed += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, shed), (2, 3));
    assert_eq!(up.hits(), 2);
    // Slots come back: the next call goes through.
    assert_eq!(gw.get("/r/9").await.status, 200);
}

fn limited_route(url: &str, server_extra: &str, limit: &str) -> String {
    format!(
        "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
{server_extra}
{}
[[routes]]
path = \"/r\"
rate_limit = {limit}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"
",
        upstream("svc", url, "")
    )
}

#[tokio::test]
async fn over_the_route_limit_is_429_with_retry_after() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&limited_route(
        &up.url(),
        "",
        "{ per_second = 0.5, burst = 2 }",
    ))
    .await;
    assert_eq!(gw.get("/r").await.status, 200);
    assert_eq!(gw.get("/r").await.status, 200);
    let r = gw.get("/r").await;
    r.error(429, "RATE_LIMITED");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "whole seconds, at least 1: {secs}");
    assert_eq!(up.hits(), 2, "a limited request never reaches the upstream");
}

#[tokio::test]
async fn header_keys_get_their_own_buckets() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&limited_route(
        &up.url(),
        "",
        "{ per_second = 0.1, burst = 1, key = \"header:x-api-key\" }",
    ))
    .await;
    let get = |key: &'static str| {
        gw.send(
            gw.client
                .get(format!("{}/r", gw.base))
                .header("x-api-key", key),
        )
    };
    assert_eq!(get("a").await.status, 200);
    assert_eq!(get("a").await.status, 429);
    assert_eq!(get("b").await.status, 200, "another key has its own bucket");
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_buy_a_fresh_bucket() {
    let up = Upstream::json(json!({})).await;
    // The test client is 127.0.0.1; trusting only 10.0.0.0/8 makes it an ordinary client.
    let gw = Gateway::start(&limited_route(
        &up.url(),
        "trusted_proxies = [\"10.0.0.0/8\"]",
        "{ per_second = 0.1, burst = 1 }",
    ))
    .await;
    let get = |xff: &'static str| {
        gw.send(
            gw.client
                .get(format!("{}/r", gw.base))
                .header("x-forwarded-for", xff),
        )
    };
    assert_eq!(get("198.51.100.1").await.status, 200);
    assert_eq!(
        get("198.51.100.2").await.status,
        429,
        "the header is not believed from an untrusted peer"
    );

    // From a trusted proxy, each forwarded client has its own bucket.
    let gw = Gateway::start(&limited_route(
        &up.url(),
        "trusted_proxies = [\"127.0.0.1\"]",
        "{ per_second = 0.1, burst = 1 }",
    ))
    .await;
    let get = |xff: &'static str| {
        gw.send(
            gw.client
                .get(format!("{}/r", gw.base))
                .header("x-forwarded-for", xff),
        )
    };
    assert_eq!(get("198.51.100.1").await.status, 200);
    assert_eq!(get("198.51.100.1").await.status, 429);
    assert_eq!(get("198.51.100.2").await.status, 200);
}

#[tokio::test]
async fn the_upstream_limit_fails_the_backend_with_overloaded() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/a\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"
[[routes]]
path = \"/b\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/\"
",
        upstream(
            "svc",
            &up.url(),
            "rate_limit = { per_second = 0.1, burst = 2 }"
        )
    ))
    .await;
    assert_eq!(gw.get("/a").await.status, 200);
    assert_eq!(gw.get("/b").await.status, 200);
    let e = gw.get("/a").await.error(503, "OVERLOADED");
    assert_eq!(e["backend"], "svc");
    gw.get("/b").await.error(503, "OVERLOADED");
    assert_eq!(
        up.hits(),
        2,
        "the limit is shared by every route using the upstream"
    );
}
