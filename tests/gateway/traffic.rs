//! Upstream traffic (docs/configuration.md#upstreamsname): balancing, outlier ejection, health
//! checks, hedging and the retry budget, against several real upstream hosts with scripted failures
//! and delays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Answer, Gateway, Upstream, all_events, json, series};

/// An `[upstreams.NAME]` block over several hosts, with extra lines.
fn hosts(name: &str, ups: &[&Upstream], extra: &str) -> String {
    let urls: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.url())).collect();
    format!(
        "[upstreams.{name}]\nurls = [{}]\n{extra}\n",
        urls.join(", ")
    )
}

/// Upstream `name` (several hosts) and one route `/r/{id}` with one backend on it,
/// the id in its path (identical calls would be coalesced).
fn config(name: &str, ups: &[&Upstream], extra: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/r/{{id}}\"
  [[routes.backends]]
  upstream = \"{name}\"
  path = \"/x/{{id}}\"
",
        hosts(name, ups, extra)
    )
}

/// A host that answers `{"host": name}`, or 500 while `failing`.
async fn switchable(name: &'static str, failing: bool) -> (Upstream, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(failing));
    let f = flag.clone();
    let up = Upstream::start(move |_| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                json(500, json!({"error": "sick"}))
            } else {
                json(200, json!({"host": name}))
            }
        }
    })
    .await;
    (up, flag)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `GET /r/{a new id}`.
async fn call(gw: &Gateway) -> Answer {
    gw.get(&format!("/r/{}", NEXT.fetch_add(1, Ordering::Relaxed)))
        .await
}

fn host_state<'a>(routes: &'a Value, upstream: &str, up: &Upstream) -> &'a str {
    let label = up.addr.to_string();
    routes["upstreams"][upstream]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == label.as_str())
        .unwrap_or_else(|| panic!("{label} in {routes}"))["state"]
        .as_str()
        .unwrap()
}

fn state_gauge(metrics: &str, upstream: &str, up: &Upstream) -> f64 {
    let s = format!(
        "manifold_upstream_host_state{{upstream=\"{upstream}\",host=\"{}\"}}",
        up.addr
    );
    assert!(metrics.contains(&s), "{s} in the metrics");
    series(metrics, &s)
}

#[tokio::test]
async fn round_robin_spreads_calls_evenly() {
    let a = Upstream::json(json!({})).await;
    let b = Upstream::json(json!({})).await;
    let c = Upstream::json(json!({})).await;
    let gw = Gateway::start(&config("svc", &[&a, &b, &c], "")).await;
    for _ in 0..30 {
        assert_eq!(call(&gw).await.status, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10));
    let routes = gw.routes().await;
    assert_eq!(routes["upstreams"]["svc"]["balance"], "round_robin");
    assert_eq!(
        routes["upstreams"]["svc"]["hosts"],
        json!([
            {"host": a.addr.to_string(), "state": "ok"},
            {"host": b.addr.to_string(), "state": "ok"},
            {"host": c.addr.to_string(), "state": "ok"},
        ])
    );
}

/// Eight clients, each sending calls one after another, for `rounds` calls each.
async fn load(gw: &Gateway, clients: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = gw.client.clone();
        let base = gw.base.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let url = format!("{base}/r/{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn least_request_sends_a_slow_host_clearly_fewer_calls() {
    // Two quick hosts and one that takes 100 ms; eight clients at once.
    let run = |balance: &'static str| async move {
        let fast1 = Upstream::slow(Duration::from_millis(5), json!({})).await;
        let fast2 = Upstream::slow(Duration::from_millis(5), json!({})).await;
        let slow = Upstream::slow(Duration::from_millis(100), json!({})).await;
        let gw = Gateway::start(&config(
            "svc",
            &[&fast1, &slow, &fast2],
            &format!("balance = \"{balance}\""),
        ))
        .await;
        load(&gw, 8, 15).await;
        let total = fast1.hits() + fast2.hits() + slow.hits();
        assert_eq!(total, 120);
        slow.hits() as f64 / total as f64
    };
    let rr = run("round_robin").await;
    let lr = run("least_request").await;
    assert!(
        (0.3..0.37).contains(&rr),
        "round robin gives every host its third: {rr}"
    );
    assert!(
        lr < 0.12,
        "least_request sends the slow host far fewer calls than its third: {lr}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_host_is_ejected_comes_back_on_probation_and_stays_out_longer() {
    let (good1, _) = switchable("good1", false).await;
    let (bad, failing) = switchable("bad", true).await;
    let (good2, _) = switchable("good2", false).await;
    let gw = Gateway::start(&config(
        "ej",
        &[&good1, &bad, &good2],
        "outlier = { consecutive_failures = 2, eject_for = \"10s\", max_ejected = \"50%\" }
circuit_breaker = { consecutive_failures = 4, open_for = \"1s\" }",
    ))
    .await;
    let mut failed = 0;
    for _ in 0..6 {
        if call(&gw).await.status != 200 {
            failed += 1;
        }
    }
    // Round robin: the bad host had calls 2 and 5, and is out after the second.
    assert_eq!(failed, 2);
    assert_eq!(bad.hits(), 2);
    let routes = gw.routes().await;
    assert_eq!(host_state(&routes, "ej", &bad), "ejected");
    assert_eq!(host_state(&routes, "ej", &good1), "ok");
    // The breaker judges the upstream as a whole: two faults of four, still closed.
    assert_eq!(routes["upstreams"]["ej"]["breaker"], "closed");
    let metrics = gw.metrics().await;
    assert_eq!(state_gauge(&metrics, "ej", &bad), 1.0);
    assert_eq!(state_gauge(&metrics, "ej", &good2), 0.0);
    let ejected = all_events().into_iter().any(|e| {
        e["message"] == "upstream host ejected" && e["host"] == bad.addr.to_string().as_str()
    });
    assert!(ejected, "the ejection is logged");

    for _ in 0..10 {
        assert_eq!(call(&gw).await.status, 200);
    }
    assert_eq!(bad.hits(), 2, "an ejected host gets no calls");

    // Back after eject_for, on probation: one failure ejects it again, for 20 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(host_state(&gw.routes().await, "ej", &bad), "ok");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call(&gw).await.status);
    }
    assert_eq!(bad.hits(), 3);
    assert_eq!(statuses.iter().filter(|&&s| s != 200).count(), 1);
    assert_eq!(host_state(&gw.routes().await, "ej", &bad), "ejected");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        host_state(&gw.routes().await, "ej", &bad),
        "ejected",
        "the second ejection lasts twice as long"
    );
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(host_state(&gw.routes().await, "ej", &bad), "ok");
    for _ in 0..6 {
        assert_eq!(call(&gw).await.status, 200);
    }
    assert_eq!(bad.hits(), 5, "back in its turn");
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_host_than_the_one_that_failed() {
    let (good, _) = switchable("good", false).await;
    let (bad, _) = switchable("bad", true).await;
    let bad502 = Upstream::start(|_| async { json(502, json!({})) }).await;
    let gw = Gateway::start(&config(
        "retry1",
        &[&bad502, &good],
        "retry = { attempts = 2 }",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(call(&gw).await.status, 200);
    }
    assert_eq!(good.hits(), 10);
    assert_eq!(bad502.hits(), 5);
    drop(bad);
}

/// Two always-failing hosts, ejected after one failure with `max_ejected`, after ten
/// calls: their states and the calls each got.
async fn two_failing_hosts(name: &str, max_ejected: &str) -> ([String; 2], (usize, usize)) {
    let (a, _) = switchable("a", true).await;
    let (b, _) = switchable("b", true).await;
    let gw = Gateway::start(&config(
        name,
        &[&a, &b],
        &format!(
            "outlier = {{ consecutive_failures = 1, eject_for = \"30s\", max_ejected = \"{max_ejected}\" }}"
        ),
    ))
    .await;
    for _ in 0..10 {
        call(&gw).await.error(502, "UPSTREAM_ERROR");
    }
    let routes = gw.routes().await;
    let states = [
        host_state(&routes, name, &a).to_string(),
        host_state(&routes, name, &b).to_string(),
    ];
    (states, (a.hits(), b.hits()))
}

#[tokio::test(start_paused = true)]
async fn max_ejected_bounds_ejections_and_with_every_host_out_all_are_used() {
    let (states, (a, b)) = two_failing_hosts("maxej1", "50%").await;
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "50 % of two hosts: one at most: {states:?}"
    );
    assert_eq!(a + b, 10);

    // Every host may go: when all are out, all are still used.
    let (states, hits) = two_failing_hosts("maxej2", "100%").await;
    assert_eq!(states, ["ejected", "ejected"]);
    assert_eq!(hits, (5, 5), "bookkeeping never refuses a call");
}

#[tokio::test(start_paused = true)]
async fn health_checks_take_a_host_out_and_bring_it_back() {
    let a = Upstream::json(json!({"host": "a"})).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let b = Upstream::start(move |seen| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            if seen.uri.path() == "/healthz" && !ok {
                json(503, json!({}))
            } else {
                json(200, json!({"host": "b"}))
            }
        }
    })
    .await;
    // Two worker loops: still one prober (this replica's), not one per loop.
    let gw = Gateway::start_with_workers(
        &config("hc", &[&a, &b], "health_check = { path = \"/healthz\", interval = \"1s\", timeout = \"200ms\", unhealthy = 2, healthy = 3 }"
            ),
        2,
    )
    .await;
    // Probes at 0 s and 1 s fail: out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probes = |u: &Upstream| u.hits();
    assert_eq!(
        (probes(&a), probes(&b)),
        (2, 2),
        "one probe per host per interval"
    );
    let routes = gw.routes().await;
    assert_eq!(host_state(&routes, "hc", &b), "unhealthy");
    assert_eq!(host_state(&routes, "hc", &a), "ok");
    assert_eq!(state_gauge(&gw.metrics().await, "hc", &b), 2.0);
    let probe = b.last();
    assert_eq!(probe.uri.path(), "/healthz");
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.headers["user-agent"], "manifold-health-check");
    for name in ["traceparent", "x-request-id", "authorization", "cookie"] {
        assert!(!probe.headers.contains_key(name), "{name} in a probe");
    }
    assert!(
        all_events()
            .iter()
            .any(|e| e["message"] == "upstream host unhealthy"
                && e["host"] == b.addr.to_string().as_str()),
        "the change is logged"
    );

    // Healthy again after three good probes (at 2, 3 and 4 s).
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host_state(&gw.routes().await, "hc", &b), "unhealthy");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(host_state(&gw.routes().await, "hc", &b), "ok");
    assert_eq!(probes(&b), 5);
    assert_eq!(state_gauge(&gw.metrics().await, "hc", &b), 0.0);
}

#[tokio::test(start_paused = true)]
async fn calls_skip_an_unhealthy_host() {
    let a = Upstream::json(json!({"host": "a"})).await;
    let b = Upstream::start(|seen| async move {
        if seen.uri.path() == "/healthz" {
            json(500, json!({}))
        } else {
            json(200, json!({"host": "b"}))
        }
    })
    .await;
    let gw = Gateway::start(&config(
        "hc2",
        &[&a, &b],
        "health_check = { path = \"/healthz\", interval = \"1s\", unhealthy = 1 }",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..6 {
        assert_eq!(call(&gw).await.json(), json!({"host": "a"}));
    }
    assert_eq!(b.hits(), 1, "only the probe");
}

/// Host `a` answers after `delay`, `b` at once; both `{"host": ...}`.
async fn slow_and_quick(delay: Duration) -> (Upstream, Upstream) {
    let a = Upstream::slow(delay, json!({"host": "a"})).await;
    let b = Upstream::json(json!({"host": "b"})).await;
    (a, b)
}

fn hedge_count(metrics: &str, upstream: &str, result: &str) -> f64 {
    series(
        metrics,
        &format!("manifold_hedges_total{{upstream=\"{upstream}\",result=\"{result}\"}}"),
    )
}

#[tokio::test(start_paused = true)]
async fn a_hedge_races_a_slow_host_and_the_loser_is_cancelled() {
    let (a, b) = slow_and_quick(Duration::from_millis(500)).await;
    let gw = Gateway::start(&config(
        "hedge1",
        &[&a, &b],
        "hedge = { after = \"50ms\" }\nretry = { attempts = 2 }",
    ))
    .await;
    let before = gw.metrics().await;
    // Round robin: the first call goes to the slow host; the hedge, 50 ms on, to b.
    let r = call(&gw).await;
    assert_eq!(r.json(), json!({"host": "b"}));
    assert!(
        r.elapsed >= Duration::from_millis(50) && r.elapsed < Duration::from_millis(60),
        "answered by the hedge: {:?}",
        r.elapsed
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
    let after = gw.metrics().await;
    assert_eq!(
        hedge_count(&after, "hedge1", "won") - hedge_count(&before, "hedge1", "won"),
        1.0
    );
    let attempts = |m: &str| {
        series(
            m,
            "manifold_upstream_request_duration_seconds_count{upstream=\"hedge1\",outcome=\"ok\"}",
        )
    };
    // The loser was cancelled: only the hedge's attempt ended, as ok.
    assert_eq!(attempts(&after) - attempts(&before), 1.0);
    let line = gw.access_lines().pop().unwrap();
    assert_eq!(line["backends"]["hedge1"]["attempts"], 2, "{line}");

    // The slow host's connection was cut midway: never reused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = call(&gw).await; // b's turn
    assert_eq!(r.json(), json!({"host": "b"}));
    let r = call(&gw).await; // a's turn, hedged again
    assert_eq!(r.json(), json!({"host": "b"}));
    assert_eq!(
        a.connections(),
        2,
        "a new connection for the next call to a"
    );
}

/// Upstream `svc` over `a` and `b`, hedged after 50 ms with two attempts, and one route
/// `/r` with `route_line` on it.
fn hedged_route(a: &Upstream, b: &Upstream, route_line: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/r\"
{route_line}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/x\"
",
        hosts(
            "svc",
            &[a, b],
            "hedge = { after = \"50ms\" }\nretry = { attempts = 2 }"
        )
    )
}

#[tokio::test(start_paused = true)]
async fn hedges_only_for_retryable_calls_with_an_attempt_and_time_to_spare() {
    // POST without idempotency-key: never hedged.
    let (a, b) = slow_and_quick(Duration::from_millis(300)).await;
    let gw = Gateway::start(&hedged_route(&a, &b, "method = \"POST\"")).await;
    let r = gw
        .send(gw.client.post(format!("{}/r", gw.base)).body("{}"))
        .await;
    assert_eq!(r.json(), json!({"host": "a"}));
    assert!(r.elapsed >= Duration::from_millis(300));
    assert_eq!(b.hits(), 0);
    // With idempotency-key it may be retried, so hedged.
    let r = gw
        .send(
            gw.client
                .post(format!("{}/r", gw.base))
                .header("idempotency-key", "k1")
                .body("{}"),
        )
        .await;
    assert_eq!(r.json(), json!({"host": "b"}), "b's turn, quick");
    let r = gw
        .send(
            gw.client
                .post(format!("{}/r", gw.base))
                .header("idempotency-key", "k2")
                .body("{}"),
        )
        .await;
    assert_eq!(r.json(), json!({"host": "b"}), "a's turn, hedged to b");
    assert!(r.elapsed < Duration::from_millis(60));

    // attempts = 1: no attempt to spare, no hedge.
    let (a, b) = slow_and_quick(Duration::from_millis(300)).await;
    let gw = Gateway::start(&config("hedge3", &[&a, &b], "hedge = { after = \"50ms\" }")).await;
    assert_eq!(call(&gw).await.json(), json!({"host": "a"}));
    assert_eq!(b.hits(), 0);

    // Never past the route deadline: a 40 ms route never waits 50 ms to hedge.
    let (a, b) = slow_and_quick(Duration::from_millis(300)).await;
    let gw = Gateway::start(&hedged_route(&a, &b, "timeout = \"40ms\"")).await;
    gw.get("/r").await.error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(b.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_retries_and_counts_what_it_refused() {
    let sick = Upstream::start(|_| async { json(503, json!({})) }).await;
    let gw = Gateway::start(&config(
        "budget1",
        &[&sick],
        "retry = { attempts = 3, budget = \"10%\" }",
    ))
    .await;
    let exhausted = |m: &str| {
        series(
            m,
            "manifold_retry_budget_exhausted_total{upstream=\"budget1\"}",
        )
    };
    let before = exhausted(&gw.metrics().await);
    for _ in 0..10 {
        call(&gw).await.error(502, "UPSTREAM_ERROR");
    }
    // 10 first attempts; 10 % of them is 1, so the minimum of 3 retries per window.
    assert_eq!(sick.hits(), 13);
    assert_eq!(exhausted(&gw.metrics().await) - before, 9.0);

    // The window slides: ten seconds on, three retries again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    call(&gw).await.error(502, "UPSTREAM_ERROR");
    assert_eq!(sick.hits(), 16);

    // Without a budget: every call retried in full.
    let sick = Upstream::start(|_| async { json(503, json!({})) }).await;
    let gw = Gateway::start(&config("budget2", &[&sick], "retry = { attempts = 3 }")).await;
    for _ in 0..10 {
        call(&gw).await.error(502, "UPSTREAM_ERROR");
    }
    assert_eq!(sick.hits(), 30);
}

#[tokio::test(start_paused = true)]
async fn hedges_spend_the_retry_budget() {
    let (a, b) = slow_and_quick(Duration::from_millis(200)).await;
    let gw = Gateway::start(&config(
        "hedge2",
        &[&a, &b],
        "hedge = { after = \"20ms\" }\nretry = { attempts = 2, budget = \"0%\" }",
    ))
    .await;
    let before = gw.metrics().await;
    // Every other call starts on the slow host; three hedges, then no more.
    let mut hedged = 0;
    for _ in 0..10 {
        let r = call(&gw).await;
        assert_eq!(r.status, 200);
        if r.elapsed < Duration::from_millis(100) && a.hits() > 0 {
            hedged += 1;
        }
    }
    let after = gw.metrics().await;
    assert_eq!(
        hedge_count(&after, "hedge2", "won") - hedge_count(&before, "hedge2", "won"),
        3.0
    );
    let exhausted = series(
        &after,
        "manifold_retry_budget_exhausted_total{upstream=\"hedge2\"}",
    ) - series(
        &before,
        "manifold_retry_budget_exhausted_total{upstream=\"hedge2\"}",
    );
    assert_eq!(
        exhausted, 2.0,
        "the fourth and fifth slow calls were not hedged"
    );
    assert!(hedged >= 3);
}
