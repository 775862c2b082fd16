//! Route and backend caches, and coalescing (docs/configuration.md#caching-and-coalescing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, Upstream, json, upstream};

fn cached_route(url: &str, route_extra: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/c/{{id}}\"
{route_extra}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/items/{{id}}\"
",
        upstream("svc", url, "")
    )
}

/// Answers with a counter, so a cached answer is told apart from a fresh one.
async fn counting(cache_control: Option<&'static str>) -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = json(200, json!({"n": i}));
            if let Some(cc) = cache_control {
                r.headers_mut().insert("cache-control", cc.parse().unwrap());
            }
            r
        }
    })
    .await
}

#[tokio::test]
async fn route_cache_hits_and_misses() {
    let up = counting(None).await;
    let gw = Gateway::start(&cached_route(&up.url(), "cache = { ttl = \"30s\" }")).await;
    let a = gw.get("/c/1").await;
    assert_eq!(
        (a.status, a.header("x-manifold-cache")),
        (200, Some("miss"))
    );
    let b = gw.get("/c/1").await;
    assert_eq!(b.header("x-manifold-cache"), Some("hit"));
    assert_eq!(b.json(), a.json());
    assert_eq!(b.header("x-manifold-completed"), Some("true"));
    assert!(b.header("x-request-id").is_some());
    assert_eq!(
        gw.get("/c/2").await.header("x-manifold-cache"),
        Some("miss"),
        "another path, another key"
    );
    assert_eq!(up.hits(), 2);
    let last = gw.access_lines().pop().unwrap();
    assert_eq!(last["cache"], "miss");
}

#[tokio::test]
async fn one_credential_never_sees_anothers_answer() {
    let up = Upstream::start(|s| async move {
        let who = s
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        json(200, json!({"for": who}))
    })
    .await;
    let gw = Gateway::start(&cached_route(
        &up.url(),
        "forward_headers = [\"authorization\"]\ncache = { ttl = \"30s\" }",
    ))
    .await;
    let get = |auth: &'static str| {
        gw.send(
            gw.client
                .get(format!("{}/c/1", gw.base))
                .header("authorization", auth),
        )
    };
    assert_eq!(
        get("Bearer alice").await.json(),
        json!({"for": "Bearer alice"})
    );
    let bob = get("Bearer bob").await;
    assert_eq!(bob.header("x-manifold-cache"), Some("miss"));
    assert_eq!(bob.json(), json!({"for": "Bearer bob"}));
    let alice = get("Bearer alice").await;
    assert_eq!(alice.header("x-manifold-cache"), Some("hit"));
    assert_eq!(alice.json(), json!({"for": "Bearer alice"}));
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn upstream_cache_control_is_obeyed() {
    for cc in ["no-store", "private, max-age=60", "max-age=0"] {
        let up = counting(Some(cc)).await;
        let gw = Gateway::start(&cached_route(&up.url(), "cache = { ttl = \"30s\" }")).await;
        gw.get("/c/1").await;
        let r = gw.get("/c/1").await;
        assert_eq!(r.header("x-manifold-cache"), Some("miss"), "{cc}");
        assert_eq!(up.hits(), 2, "{cc}: not cached");
    }
}

#[tokio::test]
async fn partial_answers_are_never_cached() {
    let ok = counting(None).await;
    let broken = Upstream::start(|_| async { json(500, json!({})) }).await;
    let gw = Gateway::start(&format!(
        "{}{}
[[routes]]
path = \"/p\"
cache = {{ ttl = \"30s\" }}
  [[routes.backends]]
  upstream = \"ok\"
  path = \"/\"
  [[routes.backends]]
  upstream = \"broken\"
  path = \"/\"
  optional = true
",
        upstream("ok", &ok.url(), ""),
        upstream("broken", &broken.url(), "")
    ))
    .await;
    for _ in 0..2 {
        let r = gw.get("/p").await;
        assert_eq!(r.header("x-manifold-completed"), Some("false"));
        assert_eq!(r.header("x-manifold-cache"), Some("miss"));
    }
    assert_eq!(ok.hits(), 2);
}

#[tokio::test]
async fn a_stale_answer_stands_in_when_the_fresh_attempt_fails() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let up = Upstream::start(move |_| {
        let fail = f.load(Ordering::SeqCst);
        async move {
            if fail {
                json(503, json!({}))
            } else {
                json(200, json!({"v": "good"}))
            }
        }
    })
    .await;
    let gw = Gateway::start(&cached_route(
        &up.url(),
        "cache = { ttl = \"150ms\", stale_if_error = \"10s\" }",
    ))
    .await;
    assert_eq!(
        gw.get("/c/1").await.header("x-manifold-cache"),
        Some("miss")
    );
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = gw.get("/c/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-manifold-cache"), Some("stale"));
    assert_eq!(r.json(), json!({"v": "good"}));
    assert_eq!(up.hits(), 2, "a fresh attempt was made first");
    // Its log line is the request's: it carries the request id.
    let id = r.header("x-request-id").unwrap();
    let events = crate::support::events_for(id, 2).await;
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "serving a stale answer"),
        "{events:#?}"
    );

    // Without stale_if_error, the error goes through (and still says miss).
    let gw = Gateway::start(&cached_route(&up.url(), "cache = { ttl = \"150ms\" }")).await;
    let r = gw.get("/c/1").await;
    r.error(502, "UPSTREAM_ERROR");
    assert_eq!(r.header("x-manifold-cache"), Some("miss"));
}

#[tokio::test]
async fn backend_cache_ttl_keeps_upstream_answers_across_routes() {
    let up = counting(None).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/a\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/shared\"
  cache_ttl = \"30s\"
[[routes]]
path = \"/b\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/shared\"
  cache_ttl = \"30s\"
",
        upstream("svc", &up.url(), "")
    ))
    .await;
    let a = gw.get("/a").await;
    let b = gw.get("/b").await;
    assert_eq!(a.json(), json!({"n": 0}));
    assert_eq!(
        b.json(),
        json!({"n": 0}),
        "the same upstream answer, from the cache"
    );
    assert!(
        a.header("x-manifold-cache").is_none(),
        "only routes with `cache` say x-manifold-cache"
    );
    assert_eq!(up.hits(), 1);
    let lines = gw.access_lines();
    assert_eq!(lines[0]["backends"]["svc"]["cache"], "miss");
    assert_eq!(lines[1]["backends"]["svc"]["cache"], "hit");
}

#[tokio::test]
async fn identical_concurrent_gets_share_one_upstream_call() {
    let up = Upstream::slow(Duration::from_millis(300), json!({"slow": true})).await;
    let gw = Arc::new(Gateway::start(&cached_route(&up.url(), "")).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.get("/c/7").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"slow": true}));
    }
    assert!(
        up.hits() <= 2,
        "20 identical GETs made {} upstream calls",
        up.hits()
    );
    // Different keys are not merged.
    let (a, b) = tokio::join!(gw.get("/c/8"), gw.get("/c/9"));
    assert_eq!((a.status, b.status), (200, 200));
    assert!(up.hits() >= 3);
}

#[tokio::test]
async fn a_bad_body_is_not_kept_by_the_backend_cache() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(move |_| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                crate::support::raw(200, "application/json", "not json")
            } else {
                json(200, json!({"ok": true}))
            }
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/a\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/x\"
  cache_ttl = \"30s\"
",
        upstream("svc", &up.url(), "")
    ))
    .await;
    gw.get("/a").await.error(502, "UPSTREAM_BAD_RESPONSE");
    assert_eq!(gw.get("/a").await.json(), json!({"ok": true}));
    assert_eq!(gw.get("/a").await.json(), json!({"ok": true}));
    assert_eq!(
        up.hits(),
        2,
        "the good answer is cached, the bad one was not"
    );
}

#[tokio::test]
async fn a_shared_call_that_times_out_for_one_route_does_not_fail_a_more_patient_one() {
    let up = Upstream::slow(Duration::from_millis(300), json!({"ok": true})).await;
    let gw = Arc::new(
        Gateway::start(&format!(
            "{}
[[routes]]
path = \"/impatient\"
timeout = \"100ms\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/same\"
[[routes]]
path = \"/patient\"
timeout = \"1s\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/same\"
",
            upstream("svc", &up.url(), "")
        ))
        .await,
    );
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("/impatient").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let patient = gw.get("/patient").await;
    first.await.unwrap().error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(patient.status, 200, "{:?}", patient.body);
    assert_eq!(patient.json(), json!({"ok": true}));
}
