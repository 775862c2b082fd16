//! Every backend failure says why, once, in the log under its request id; attempts are
//! counted alike on fan-out and passthrough routes (one upstream attempt path).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Upstream, dead_addr, events_for, json, raw, upstream};

/// The "backend failed" events of a request.
async fn failures_of(id: &str, n: usize) -> Vec<Value> {
    let found: Vec<Value> = events_for(id, n)
        .await
        .into_iter()
        .filter(|e| e["message"] == "backend failed")
        .collect();
    assert_eq!(found.len(), n, "one line per failed backend: {found:#?}");
    found
}

#[tokio::test]
async fn a_call_the_breaker_refuses_counts_no_attempt_on_either_kind_of_route() {
    let dead = dead_addr().await;
    let config = format!(
        "{}
[[routes]]
name = \"merged\"
path = \"/m\"
  [[routes.backends]]
  name = \"svc\"
  upstream = \"svc\"
  path = \"/\"

[[routes]]
name = \"streamed\"
path = \"/p\"
passthrough = true
  [[routes.backends]]
  name = \"svc\"
  upstream = \"svc\"
  path = \"/\"
",
        upstream(
            "svc",
            &format!("http://{dead}"),
            "circuit_breaker = { consecutive_failures = 1, open_for = \"60s\" }"
        )
    );
    let gw = Gateway::start(&config).await;
    let first = gw.get("/m").await;
    first.error(502, "UPSTREAM_ERROR");
    let id = first.header("x-request-id").unwrap();
    assert_eq!(gw.access_line(id).await["backends"]["svc"]["attempts"], 1);
    // The line names the route and the host:port that was called.
    let called = failures_of(id, 1).await;
    assert_eq!(called[0]["route"], "merged");
    assert_eq!(called[0]["host"], dead.to_string());

    for path in ["/m", "/p"] {
        let r = gw.get(path).await;
        r.error(503, "CIRCUIT_OPEN");
        let id = r.header("x-request-id").unwrap();
        let line = gw.access_line(id).await;
        let svc = &line["backends"]["svc"];
        assert_eq!(svc["outcome"], "circuit_open", "{path}: {line}");
        assert_eq!(svc["attempts"], 0, "{path}: nothing was sent: {line}");
        let logged = failures_of(id, 1).await;
        assert_eq!(logged[0]["level"], "INFO", "a refusal is not a warning");
        assert_eq!(logged[0]["cause"], "circuit breaker open");
        let route = if path == "/m" { "merged" } else { "streamed" };
        assert_eq!(logged[0]["route"], route);
    }
}

#[tokio::test]
async fn a_failure_that_fails_the_request_is_a_warning_with_its_cause() {
    let dead = dead_addr().await;
    let failing = Upstream::start(|_| async { json(503, json!({})) }).await;
    let not_json =
        Upstream::start(|_| async { raw(200, "application/json", "{\"a\": tru}") }).await;
    let slow = Upstream::slow(Duration::from_secs(5), json!({})).await;
    let config = format!(
        "{}{}{}{}
[[routes]]
path = \"/dead\"
  [[routes.backends]]
  name = \"users\"
  upstream = \"dead\"
  path = \"/\"

[[routes]]
path = \"/failing\"
  [[routes.backends]]
  upstream = \"failing\"
  path = \"/\"

[[routes]]
path = \"/not-json\"
  [[routes.backends]]
  upstream = \"not_json\"
  path = \"/\"

[[routes]]
path = \"/slow\"
timeout = \"200ms\"
  [[routes.backends]]
  upstream = \"slow\"
  path = \"/\"
",
        upstream("dead", &format!("http://{dead}"), ""),
        upstream("failing", &failing.url(), ""),
        upstream("not_json", &not_json.url(), ""),
        upstream("slow", &slow.url(), ""),
    );
    let gw = Gateway::start(&config).await;
    let cases = [
        ("/dead", 502, "users", "dead", "refused"),
        ("/failing", 502, "failing", "failing", "answered 503"),
        ("/not-json", 502, "not_json", "not_json", "not JSON: "),
        ("/slow", 504, "slow", "slow", "no answer in time"),
    ];
    for (path, status, backend, upstream, cause) in cases {
        let r = gw.get(path).await;
        assert_eq!(r.status, status, "{path}");
        let id = r.header("x-request-id").unwrap();
        let e = &failures_of(id, 1).await[0];
        assert_eq!(e["level"], "WARN", "{path}: {e}");
        assert_eq!(e["backend"], backend, "{e}");
        assert_eq!(e["upstream"], upstream, "{e}");
        let said = e["cause"].as_str().unwrap_or_default();
        assert!(
            said.contains(cause),
            "{path}: cause {said:?} names {cause:?}"
        );
        assert!(
            !said.contains(&dead.port().to_string()),
            "no address in the cause: {said}"
        );
    }
    // The byte where the body stopped being JSON.
    let r = gw.get("/not-json").await;
    let e = &failures_of(r.header("x-request-id").unwrap(), 1).await[0];
    assert!(e["cause"].as_str().unwrap().ends_with("at byte 6"), "{e}");
    // The timeout's line says how long it waited: the route's 200 ms, less the moment
    // between the request's start (its deadline) and the backend's (milliseconds when
    // the whole suite loads the box).
    let r = gw.get("/slow").await;
    let e = &failures_of(r.header("x-request-id").unwrap(), 1).await[0];
    let waited = e["elapsed_ms"].as_u64().unwrap();
    assert!((150..1000).contains(&waited), "{e}");
}

#[tokio::test]
async fn a_retried_attempt_and_an_optional_backend_are_logged_below_warning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let flaky = Upstream::start(move |_| {
        let i = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if i == 0 {
                json(503, json!({}))
            } else {
                json(200, json!({"ok": true}))
            }
        }
    })
    .await;
    let dead = dead_addr().await;
    let config = format!(
        "{}{}
[[routes]]
path = \"/r\"
  [[routes.backends]]
  name = \"main\"
  upstream = \"flaky\"
  path = \"/\"
  group = \"main\"
  [[routes.backends]]
  name = \"extra\"
  upstream = \"dead\"
  path = \"/\"
  group = \"extra\"
  optional = true
",
        upstream(
            "flaky",
            &flaky.url(),
            "retry = { attempts = 2, backoff = \"1ms\" }"
        ),
        upstream("dead", &format!("http://{dead}"), ""),
    );
    let gw = Gateway::start(&config).await;
    let r = gw.get("/r").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-manifold-completed"), Some("false"));
    let id = r.header("x-request-id").unwrap();
    let events = events_for(id, 2).await;
    let retried: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "attempt failed; retrying")
        .collect();
    assert_eq!(retried.len(), 1, "{events:#?}");
    assert_eq!(retried[0]["level"], "INFO");
    assert_eq!(retried[0]["backend"], "main");
    assert_eq!(retried[0]["attempt"], 1);
    assert_eq!(retried[0]["cause"], "answered 503");
    let failed = failures_of(id, 1).await;
    assert_eq!(failed[0]["backend"], "extra");
    assert_eq!(
        failed[0]["level"], "INFO",
        "an optional backend: {failed:?}"
    );
    assert_eq!(gw.access_line(id).await["backends"]["main"]["attempts"], 2);
}
