//! `/metrics` after known traffic: names, labels and counts (docs/operations.md#metrics).
//! The registry is process-wide and tests run in parallel, so this test uses route and
//! upstream names nobody else does and reads only their series.

use serde_json::json;

use crate::support::{Gateway, Upstream, json, upstream};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_upstream_calls_breakers_limits_and_caches() {
    let ok = Upstream::json(json!({"ok": true})).await;
    let bad = Upstream::start(|_| async { json(500, json!({})) }).await;
    let gw = Gateway::start(&format!(
        "{}{}
[[routes]]
name = \"metrics-route\"
path = \"/m\"
  [[routes.backends]]
  upstream = \"metrics_up\"
  path = \"/\"

[[routes]]
name = \"metrics-limited\"
path = \"/limited\"
rate_limit = {{ per_second = 0.1, burst = 1, key = \"global\" }}
  [[routes.backends]]
  upstream = \"metrics_up\"
  path = \"/l\"

[[routes]]
name = \"metrics-failing\"
path = \"/failing\"
  [[routes.backends]]
  upstream = \"metrics_bad\"
  path = \"/\"

[[routes]]
name = \"metrics-cached\"
path = \"/cached\"
cache = {{ ttl = \"30s\" }}
  [[routes.backends]]
  upstream = \"metrics_up\"
  path = \"/c\"
",
        upstream("metrics_up", &ok.url(), ""),
        upstream(
            "metrics_bad",
            &bad.url(),
            "circuit_breaker = { consecutive_failures = 1, open_for = \"30s\" }"
        )
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("/m").await.status, 200);
    }
    assert_eq!(gw.get("/limited").await.status, 200);
    assert_eq!(gw.get("/limited").await.status, 429);
    assert_eq!(gw.get("/failing").await.status, 502);
    assert_eq!(gw.get("/failing").await.status, 503, "breaker open");
    gw.get("/cached").await;
    gw.get("/cached").await;
    gw.get("/no-such-route").await;

    // What Prometheus asks for: OpenMetrics.
    let resp = gw
        .client
        .get(format!("{}/metrics", gw.admin))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends so");
    // What curl and promtool get: the text format 0.0.4, which promtool's linter passes.
    for accept in [None, Some("text/plain")] {
        let mut req = gw.client.get(format!("{}/metrics", gw.admin));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let plain = resp.text().await.unwrap();
        assert!(!plain.contains("# EOF"));
        assert!(
            plain.contains("# TYPE manifold_cache_requests_total counter"),
            "{plain}"
        );
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (.ci/run installs it: apt-get install prometheus)");
        std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), plain.as_bytes()).unwrap();
        let checked = promtool.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    let requests = |route: &str, status: &str| {
        value(
            &text,
            &format!(
                "http_server_request_duration_seconds_count{{route=\"{route}\",method=\"GET\",status=\"{status}\"}}"
            ),
        )
    };
    // `status` is the code sent, as OpenTelemetry's http.response.status_code: a 429
    // and a 404 are told apart, and so are a 502 and the breaker's 503.
    assert_eq!(requests("metrics-route", "200"), Some(3.0), "{text}");
    assert_eq!(requests("metrics-limited", "200"), Some(1.0));
    assert_eq!(requests("metrics-limited", "429"), Some(1.0));
    assert_eq!(requests("metrics-failing", "502"), Some(1.0));
    assert_eq!(requests("metrics-failing", "503"), Some(1.0));
    assert!(
        requests("unmatched", "404").unwrap_or(0.0) >= 1.0,
        "unmatched requests are labelled, never by raw path"
    );
    assert!(
        !text.contains("status=\"2xx\"") && !text.contains("status=\"5xx\""),
        "no status classes: {text}"
    );
    assert!(
        !text.contains("route=\"metrics-route\",method=\"GET\",status=\"404\""),
        "no series for a code a route never sent"
    );
    assert!(
        !text.contains("no-such-route"),
        "raw paths never become labels"
    );

    let upstream = |name: &str, outcome: &str| {
        value(
            &text,
            &format!(
                "manifold_upstream_request_duration_seconds_count{{upstream=\"{name}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(
        upstream("metrics_up", "ok"),
        Some(5.0),
        "3 + 1 limited-route call + 1 cache miss"
    );
    assert_eq!(upstream("metrics_bad", "error"), Some(1.0));
    assert_eq!(upstream("metrics_bad", "circuit_open"), Some(1.0));

    assert_eq!(
        value(
            &text,
            "manifold_circuit_breaker_state{upstream=\"metrics_bad\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "manifold_circuit_breaker_state{upstream=\"metrics_up\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "manifold_rate_limited_total{route=\"metrics-limited\"}"
        ),
        Some(1.0)
    );
    assert!(
        value(
            &text,
            "manifold_cache_requests_total{cache=\"route\",result=\"hit\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        value(
            &text,
            "manifold_cache_requests_total{cache=\"route\",result=\"miss\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(value(&text, "manifold_inflight_requests").is_some());
    assert!(value(&text, "manifold_config_reloads_total{result=\"ok\"}").is_some());
    assert!(
        text.contains("http_server_request_duration_seconds_bucket{"),
        "latency is a histogram"
    );
}
