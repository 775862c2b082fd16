//! `[shared]` (docs/configuration.md#shared), on a real `redis-server` started per test:
//! replicas share one rate-limit budget; Redis down, hung or refusing never fails a request.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;

use crate::support::{Gateway, Pki, SERVER, Upstream, all_events, series};

/// A `redis-server` on 127.0.0.1, killed when dropped.
///
/// Redis cannot listen on port 0 and say which port it got, as every server of ours
/// does, so a port is found free for it; if another process takes that port before
/// redis-server binds it, redis-server exits and another port is tried
/// ([`Redis::start`]). Only the tests that restart Redis on the port a gateway already
/// names ask for one port up front ([`Redis::start_on`]).
struct Redis {
    port: u16,
    child: Option<Child>,
    password: Option<String>,
}

/// A port nothing listens on now (see [`Redis`] for why Redis needs one).
fn unused_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name no other test of this binary uses (Redis key prefixes).
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Redis {
    /// On a port of its own.
    fn start(password: Option<&str>) -> Redis {
        Self::start_with(password, &[]).0
    }

    /// On `port` (a Redis restarted where a gateway expects it).
    fn start_on(port: u16, password: Option<&str>) -> Redis {
        Self::try_start(port, password, &[])
            .unwrap_or_else(|| panic!("redis-server did not listen on {port}"))
    }

    /// `extra`: more redis-server arguments (TLS: then the port is the TLS port).
    /// Returns the port too.
    fn start_with(password: Option<&str>, extra: &[&str]) -> (Redis, u16) {
        for _ in 0..5 {
            let port = unused_port();
            if let Some(r) = Self::try_start(port, password, extra) {
                return (r, port);
            }
        }
        panic!("redis-server did not start on any of five ports");
    }

    fn try_start(port: u16, password: Option<&str>, extra: &[&str]) -> Option<Redis> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if extra.is_empty() {
            cmd.args(["--port", &port.to_string()]);
        } else {
            cmd.args(["--port", "0", "--tls-port", &port.to_string()]);
            cmd.args(extra);
        }
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does it)");
        let mut r = Redis {
            port,
            child: Some(child),
            password: password.map(str::to_string),
        };
        for _ in 0..200 {
            // Exited: the port was taken after all.
            if r.child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Whoever answers there must be this child, not another process that
                // took the port first (this child then exits, seen above).
                return (!extra.is_empty() || r.is_ours()).then_some(r);
            }
            #[allow(clippy::disallowed_methods)] // a plain process wait, no event loop here
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The server on this port is this child: `INFO server` names its pid. (Over TLS
    /// the test's own client set-up is needed; the child still running is the check.)
    fn is_ours(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut ask = String::new();
        if let Some(p) = &self.password {
            ask.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
        }
        ask.push_str("*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
        use std::io::{Read, Write};
        if conn.write_all(ask.as_bytes()).is_err() {
            return false;
        }
        let want = format!("process_id:{pid}\r\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains(&want) {
                return true;
            }
        }
        false
    }

    fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// A route `/limited` with a global limit, on a gateway sharing through `redis_url`.
fn config(redis_url: &str, upstream: &str, per_second: u32, burst: u32) -> String {
    format!(
        r#"{SERVER}
[shared]
redis = "{redis_url}"
key_prefix = "{prefix}"
timeout = "50ms"

[upstreams.u]
urls = ["{upstream}"]

[[routes]]
name = "limited"
path = "/limited"
rate_limit = {{ per_second = {per_second}, burst = {burst}, key = "global" }}
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#,
        prefix = unique("test")
    )
}

/// Redis as `/routes` shows it, which the console's `/stats` must agree with.
async fn redis_state(gw: &Gateway) -> String {
    let state = gw.routes().await["shared"]["redis"]
        .as_str()
        .unwrap_or("absent")
        .to_string();
    let (_, stats) = gw.admin_json("/stats").await;
    let console = stats["shared"]["redis"].as_str().unwrap_or("absent");
    // A transition may fall between the two reads; settle on the later one then.
    if console != state {
        return console.to_string();
    }
    state
}

async fn until_state(gw: &Gateway, want: &str) {
    for _ in 0..400 {
        if redis_state(gw).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis never became {want} for the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_what_one_would() {
    let redis = Redis::start(None);
    let up = Upstream::json(json!({"ok": true})).await;
    // A generous timeout: on a loaded test machine a slow answer must not hand the
    // decisions to each replica (that is another test's subject).
    let text =
        config(&redis.url(), &up.url(), 100, 20).replace("timeout = \"50ms\"", "timeout = \"2s\"");
    let replicas = [
        Gateway::start(&text).await,
        Gateway::start(&text).await,
        Gateway::start(&text).await,
    ];
    for gw in &replicas {
        until_state(gw, "up").await;
    }
    let replicas = Arc::new(replicas);
    let admitted = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut clients = Vec::new();
    for c in 0..12 {
        let (replicas, admitted, sent) = (replicas.clone(), admitted.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while started.elapsed() < run_for {
                // Round robin over the replicas, as a Service's balancing would.
                let gw = &replicas[i % 3];
                i += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if gw.get("/limited").await.status == 200 {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let budget = 20.0 + 100.0 * elapsed;
    let offered = sent.load(Ordering::Relaxed) as f64;
    eprintln!(
        "admitted {admitted} of {budget:.1} ({:+.2} %), offered {offered}",
        (admitted / budget - 1.0) * 100.0
    );
    assert!(
        offered > 2.0 * budget,
        "the offered load ({offered}) must pass the limit"
    );
    // One replica alone admits the budget; three sharing must not admit three times it.
    assert!(
        admitted <= budget * 1.05 + 2.0 && admitted >= budget * 0.9,
        "admitted {admitted} of a budget of {budget:.0} over {elapsed:.2} s"
    );
    let m = replicas[0].metrics().await;
    // (manifold_shared_up is the process's: other tests' gateways move it too.)
    assert!(
        series(
            &m,
            r#"manifold_shared_ops_total{op="rate_limit",result="ok"}"#
        ) > 0.0
    );
    drop(redis);
}

#[tokio::test]
async fn redis_down_at_start_then_up_then_hung_never_holds_a_request() {
    let port = unused_port();
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&config(
        &format!("redis://127.0.0.1:{port}/0"),
        &up.url(),
        1,
        3,
    ))
    .await;
    // Down at start: this replica limits alone, at once.
    assert_eq!(redis_state(&gw).await, "down");
    let mut statuses = Vec::new();
    let t0 = Instant::now();
    for _ in 0..4 {
        statuses.push(gw.get("/limited").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429], "the same limit, alone");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "no waiting on a dead Redis"
    );

    // Redis comes: the shared budget resumes within 5 s.
    let redis = Redis::start_on(port, None);
    let t0 = Instant::now();
    until_state(&gw, "up").await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "up after {:?}",
        t0.elapsed()
    );
    // (`manifold_shared_up` is the process's, which other tests' gateways move too:
    // `/routes` is this gateway's own word.)

    // Hung (SIGSTOP): each request waits at most the timeout (50 ms) once, then none.
    redis.signal("-STOP");
    let t0 = Instant::now();
    let first = gw.get("/limited").await.status;
    assert!(first == 200 || first == 429);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "waited {:?}",
        t0.elapsed()
    );
    until_state(&gw, "down").await;
    let t0 = Instant::now();
    for _ in 0..5 {
        gw.get("/limited").await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "down: no attempt, no wait"
    );
    let m = gw.metrics().await;
    assert!(
        series(
            &m,
            r#"manifold_shared_ops_total{op="rate_limit",result="timeout"}"#
        ) >= 1.0
    );
    redis.signal("-CONT");
    until_state(&gw, "up").await;

    // Killed: the same.
    let mut redis = redis;
    redis.kill();
    gw.get("/limited").await;
    until_state(&gw, "down").await;
    // One line per change of state (down at start, up, down, up, down), this Redis's only.
    let ours = format!(":{port}/");
    let changes: Vec<String> = all_events()
        .iter()
        .filter(|e| e["redis"].as_str().is_some_and(|r| r.contains(&ours)))
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .filter(|m| m.starts_with("shared state: redis is"))
        .collect();
    assert_eq!(changes.len(), 5, "{changes:?}");
}

#[tokio::test]
async fn the_redis_password_is_never_shown() {
    let redis = Redis::start(Some("s3cret-pass-word"));
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&config(&redis.url(), &up.url(), 10, 10)).await;
    until_state(&gw, "up").await;
    assert_eq!(gw.get("/limited").await.status, 200);
    // A wrong password: down, and still nothing of either password anywhere.
    let wrong = format!("redis://:not-the-pass-word@127.0.0.1:{}/0", redis.port);
    let gw2 = Gateway::start(&config(&wrong, &up.url(), 10, 10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis_state(&gw2).await, "down");
    assert_eq!(gw2.get("/limited").await.status, 200, "decided alone");
    for g in [&gw, &gw2] {
        let routes = g.routes_text().await;
        let metrics = g.metrics().await;
        for text in [&routes, &metrics] {
            assert!(!text.contains("s3cret-pass-word") && !text.contains("not-the-pass-word"));
        }
    }
    for e in all_events() {
        let line = e.to_string();
        assert!(
            !line.contains("s3cret-pass-word") && !line.contains("not-the-pass-word"),
            "{line}"
        );
    }
    // check's output for a bad [shared] never shows it either.
    let bad = "[shared]\nredis = \"http://:s3cret-pass-word@host/\"\n[upstreams.u]\nurls = [\"http://127.0.0.1:1\"]\n[[routes]]\npath = \"/x\"\n  [[routes.backends]]\n  upstream = \"u\"\n  path = \"/x\"\n";
    let e = manifold::config::parse("shared.toml", bad)
        .unwrap_err()
        .render();
    assert!(
        e.contains("not a redis:// URL") && !e.contains("s3cret-pass-word"),
        "{e}"
    );
}

/// Two replicas of a gateway with a route cache and a backend cache, sharing Redis.
fn cached(redis_url: &str, upstream: &str, max_entry: &str) -> String {
    format!(
        r#"{SERVER}
[shared]
redis = "{redis_url}"
key_prefix = "{prefix}"
timeout = "2s"
max_entry = "{max_entry}"

[upstreams.u]
urls = ["{upstream}"]

[[routes]]
name = "cached"
path = "/cached/{{id}}"
cache = {{ ttl = "60s" }}
forward_headers = ["x-tenant"]
  [[routes.backends]]
  upstream = "u"
  path = "/things/{{id}}"

[[routes]]
name = "limited-cached"
path = "/lc/{{id}}"
cache = {{ ttl = "60s" }}
rate_limit = {{ per_second = 1000, burst = 1000, key = "client_ip" }}
  [[routes.backends]]
  upstream = "u"
  path = "/things/{{id}}"

[[routes]]
name = "backend-cached"
path = "/b/{{id}}"
  [[routes.backends]]
  upstream = "u"
  path = "/parts/{{id}}"
  cache_ttl = "60s"
"#,
        prefix = unique("test")
    )
}

#[tokio::test]
async fn a_cached_answer_is_served_by_every_replica() {
    let redis = Redis::start(None);
    let up = Upstream::start(|seen| async move {
        let tenant = seen
            .headers
            .get("x-tenant")
            .map(|v| v.to_str().unwrap().to_string());
        crate::support::json(
            200,
            json!({"path": seen.uri.path(), "tenant": tenant, "pad": "x".repeat(2000)}),
        )
    })
    .await;
    let text = cached(&redis.url(), &up.url(), "1KiB");
    let small = cached(&redis.url(), &up.url(), "64KiB");
    // The answers are ~2 KB: over `max_entry` for the first pair, under it for the second.
    let (a, b) = (Gateway::start(&small).await, Gateway::start(&small).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    let first = a
        .send(
            a.client
                .get(format!("{}/cached/1", a.base))
                .header("x-tenant", "t1"),
        )
        .await;
    assert_eq!(first.header("x-manifold-cache"), Some("miss"));
    assert_eq!(up.hits(), 1);
    // The set happens after the answer: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = b
        .send(
            b.client
                .get(format!("{}/cached/1", b.base))
                .header("x-tenant", "t1"),
        )
        .await;
    assert_eq!(
        other.header("x-manifold-cache"),
        Some("hit"),
        "served from Redis"
    );
    assert_eq!(other.body, first.body);
    assert_eq!(up.hits(), 1, "no second upstream call");
    // Another tenant (a forwarded header) never gets it.
    let t2 = b
        .send(
            b.client
                .get(format!("{}/cached/1", b.base))
                .header("x-tenant", "t2"),
        )
        .await;
    assert_eq!(t2.header("x-manifold-cache"), Some("miss"));
    assert_eq!(t2.json()["tenant"], "t2");
    assert_eq!(up.hits(), 2);

    // A limited route: its entry comes back with the limit's decision, one round trip.
    let before = series(
        &b.metrics().await,
        r#"manifold_shared_ops_total{op="cache_get",result="ok"}"#,
    );
    assert_eq!(
        a.get("/lc/5").await.header("x-manifold-cache"),
        Some("miss")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = up.hits();
    let lc = b.get("/lc/5").await;
    assert_eq!(
        lc.header("x-manifold-cache"),
        Some("hit"),
        "read with the limit"
    );
    assert_eq!(up.hits(), hits);
    let after = series(
        &b.metrics().await,
        r#"manifold_shared_ops_total{op="cache_get",result="ok"}"#,
    );
    assert!(after > before);

    // A backend's cache_ttl answer, the same.
    a.get("/b/7").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = up.hits();
    assert_eq!(b.get("/b/7").await.status, 200);
    assert_eq!(up.hits(), hits, "the backend answer came from Redis");
    let m = b.metrics().await;
    assert!(
        series(
            &m,
            r#"manifold_shared_ops_total{op="cache_get",result="ok"}"#
        ) >= 2.0
    );

    // Answers over max_entry stay local.
    let (c, d) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&c, &d] {
        until_state(gw, "up").await;
    }
    c.get("/cached/9").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = up.hits();
    assert_eq!(
        d.get("/cached/9").await.header("x-manifold-cache"),
        Some("miss")
    );
    assert_eq!(up.hits(), hits + 1);
    assert_eq!(
        c.get("/cached/9").await.header("x-manifold-cache"),
        Some("hit"),
        "local"
    );
    drop(redis);
}

#[tokio::test]
async fn an_upstream_limit_is_one_budget_across_replicas() {
    let redis = Redis::start(None);
    let up = Upstream::json(json!({"ok": true})).await;
    let text = format!(
        r#"{SERVER}
[shared]
redis = "{}"
key_prefix = "{}"
timeout = "2s"

[upstreams.u]
urls = ["{}"]
rate_limit = {{ per_second = 0.01, burst = 10 }}

[[routes]]
path = "/x"
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#,
        redis.url(),
        unique("test"),
        up.url()
    );
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    let mut ok = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get("/x").await;
        match r.status {
            200 => ok += 1,
            503 => {
                r.error(503, "OVERLOADED");
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(
        ok, 10,
        "one burst of 10 for both replicas together, not 10 each"
    );
    assert_eq!(up.hits(), 10);
}

#[tokio::test]
async fn rediss_with_a_ca_file_shares_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    let path = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(path("ca.pem"), &pki.root_pem).unwrap();
    std::fs::write(path("cert.pem"), &pair.cert).unwrap();
    std::fs::write(path("key.pem"), &pair.key).unwrap();
    let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
    let (_redis, port) = Redis::start_with(
        None,
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    let up = Upstream::json(json!({"ok": true})).await;
    let text = format!(
        r#"{SERVER}
[shared]
redis = "rediss://127.0.0.1:{port}/0"
ca_file = "{ca}"
key_prefix = "{prefix}"
timeout = "2s"

[upstreams.u]
urls = ["{}"]
rate_limit = {{ per_second = 0.01, burst = 4 }}

[[routes]]
path = "/x"
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#,
        up.url(),
        prefix = unique("test")
    );
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    let mut ok = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if gw.get("/x").await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "one budget over TLS");
    // Without the CA, the server's certificate is not trusted: down, decided alone.
    let untrusted = text.replace(&format!("ca_file = \"{ca}\"\n"), "");
    let c = Gateway::start(&untrusted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis_state(&c).await, "down");
    assert_eq!(c.get("/x").await.status, 200);
}

#[tokio::test]
async fn stale_if_error_holds_across_replicas() {
    let redis = Redis::start(None);
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let up = Upstream::start(move |_| {
        let f = f.clone();
        async move {
            if f.load(Ordering::SeqCst) {
                crate::support::json(503, json!({"down": true}))
            } else {
                crate::support::json(200, json!({"fresh": true}))
            }
        }
    })
    .await;
    let text = format!(
        r#"{SERVER}
[shared]
redis = "{}"
key_prefix = "{}"
timeout = "2s"

[upstreams.u]
urls = ["{}"]

[[routes]]
path = "/s"
cache = {{ ttl = "1s", stale_if_error = "60s" }}
  [[routes.backends]]
  upstream = "u"
  path = "/s"
"#,
        redis.url(),
        unique("test"),
        up.url()
    );
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    assert_eq!(a.get("/s").await.header("x-manifold-cache"), Some("miss"));
    // Past its ttl (Redis keeps it for ttl + stale_if_error, on its own clock).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    failing.store(true, Ordering::SeqCst);
    let stale = b.get("/s").await;
    assert_eq!(stale.status, 200);
    assert_eq!(
        stale.header("x-manifold-cache"),
        Some("stale"),
        "B stood in with A's answer"
    );
    assert_eq!(stale.json()["fresh"], true);
}

/// Under load, Redis stopped (SIGSTOP), resumed, killed and restarted: not one request
/// fails or waits much past `timeout`, and the shared budget comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failing_under_load_fails_no_request() {
    let (mut redis, port) = Redis::start_with(None, &[]);
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Arc::new(Gateway::start(&config(&redis.url(), &up.url(), 100_000, 100_000)).await);
    until_state(&gw, "up").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (gw, stop, slowest, served) =
            (gw.clone(), stop.clone(), slowest.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let status = gw.get("/limited").await.status;
                assert_eq!(status, 200, "no request fails because of Redis");
                let took = t0.elapsed();
                let mut s = slowest.lock().unwrap();
                *s = (*s).max(took);
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-CONT");
    until_state(&gw, "up").await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _again = Redis::start_on(port, None);
    until_state(&gw, "up").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let slowest = *slowest.lock().unwrap();
    // timeout is 50 ms; the rest is the gateway and the test machine.
    assert!(
        slowest < Duration::from_millis(1000),
        "slowest request {slowest:?}"
    );
    assert!(served.load(Ordering::Relaxed) > 100);
}

// === A neighbour that can write to Redis (docs/operations.md "Abuse and limits") ===

/// Replicas with a route cache of a 2 s ttl (`/t/{id}`) and a limited route
/// (`/limited`, one a second), sharing `redis_url`; `secret`: the `[shared] secret`.
fn trusting(redis_url: &str, upstream: &str, prefix: &str, secret: Option<&str>) -> String {
    let secret = secret.map_or(String::new(), |s| format!("secret = \"{s}\"\n"));
    format!(
        r#"{SERVER}
[shared]
redis = "{redis_url}"
key_prefix = "{prefix}"
timeout = "2s"
{secret}
[upstreams.u]
urls = ["{upstream}"]

[[routes]]
name = "trusting"
path = "/t/{{id}}"
cache = {{ ttl = "2s" }}
  [[routes.backends]]
  upstream = "u"
  path = "/things/{{id}}"

[[routes]]
name = "limited"
path = "/limited"
rate_limit = {{ per_second = 1, burst = 1, key = "global" }}
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#
    )
}

/// A connection to the test's Redis, as a neighbour would have.
async fn neighbour(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async::<Vec<String>>(conn)
        .await
        .unwrap()
}

async fn set(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .unwrap();
}

/// An entry as manifold writes it without a secret: stored (Unix ms), fresh and stale
/// (ms), then the body.
fn forged_entry(fresh_ms: u64, body: &[u8]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut v = Vec::new();
    v.extend_from_slice(&now.to_be_bytes());
    v.extend_from_slice(&fresh_ms.to_be_bytes());
    v.extend_from_slice(&0u64.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An upstream that counts its answers: `{"n": 0}`, `{"n": 1}`...
async fn counting() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move { crate::support::json(200, json!({ "n": i })) }
    })
    .await
}

/// An entry rewritten in Redis with an endless lifetime is kept no longer than the
/// route's own ttl by the replica that reads it.
#[tokio::test]
async fn an_entry_from_redis_lives_no_longer_than_the_routes_ttl() {
    let redis = Redis::start(None);
    let up = counting().await;
    let prefix = unique("life");
    let text = trusting(&redis.url(), &up.url(), &prefix, None);
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    assert_eq!(a.get("/t/1").await.json(), json!({"n": 0}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = neighbour(&redis).await;
    let entries = keys(&mut conn, &format!("{prefix}c:*")).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    set(
        &mut conn,
        &entries[0],
        &forged_entry(u64::MAX, b"{\"forged\":true}"),
    )
    .await;
    // Within the ttl a writer to Redis can still be believed (without a secret)...
    assert_eq!(b.get("/t/1").await.json(), json!({"forged": true}));
    // ...but past it, the entry is gone from this replica and not believed again.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let later = b.get("/t/1").await;
    assert_eq!(later.header("x-manifold-cache"), Some("miss"));
    assert_eq!(later.json(), json!({"n": 1}), "the upstream's answer");
}

/// With `[shared] secret`, replicas sign their entries: an unsigned entry, a forged
/// one and one moved from another key (another identity's) are dropped.
#[tokio::test]
async fn with_a_secret_forged_and_moved_entries_are_dropped() {
    let redis = Redis::start(None);
    let up = counting().await;
    let prefix = unique("signed");
    let text = trusting(
        &redis.url(),
        &up.url(),
        &prefix,
        Some("a-shared-secret-of-at-least-32-bytes!"),
    );
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    let mut conn = neighbour(&redis).await;
    // Signed entries have keys of their own, which builds that cannot check them never
    // read.
    let pattern = format!("{prefix}cs:*");
    assert_eq!(a.get("/t/1").await.json(), json!({"n": 0}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = keys(&mut conn, &pattern).await;
    // A signed entry is believed by the other replica.
    let hit = b.get("/t/1").await;
    assert_eq!(hit.header("x-manifold-cache"), Some("hit"));
    assert_eq!(hit.json(), json!({"n": 0}));
    assert_eq!(a.get("/t/2").await.json(), json!({"n": 1}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second: Vec<String> = keys(&mut conn, &pattern)
        .await
        .into_iter()
        .filter(|k| !first.contains(k))
        .collect();
    assert_eq!((first.len(), second.len()), (1, 1));
    let signed_1: Vec<u8> = redis::cmd("GET")
        .arg(&first[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    // /t/1's signed entry put at /t/2's key; an unsigned forged one at a third.
    set(&mut conn, &second[0], &signed_1).await;
    let c = Gateway::start(&text).await;
    until_state(&c, "up").await;
    let moved = c.get("/t/2").await;
    assert_eq!(moved.header("x-manifold-cache"), Some("miss"));
    assert_eq!(moved.json(), json!({"n": 2}), "not /t/1's answer");
    assert_eq!(c.get("/t/3").await.json(), json!({"n": 3}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third: Vec<String> = keys(&mut conn, &pattern)
        .await
        .into_iter()
        .filter(|k| !first.contains(k) && !second.contains(k))
        .collect();
    assert_eq!(third.len(), 1);
    set(
        &mut conn,
        &third[0],
        &forged_entry(60_000, b"{\"forged\":true}"),
    )
    .await;
    let d = Gateway::start(&text).await;
    until_state(&d, "up").await;
    let unsigned = d.get("/t/3").await;
    assert_eq!(unsigned.header("x-manifold-cache"), Some("miss"));
    assert_eq!(unsigned.json(), json!({"n": 4}));
    let m = d.metrics().await;
    for reason in ["forged", "unsigned"] {
        let counted = format!("manifold_shared_entries_dropped_total{{reason=\"{reason}\"}}");
        assert!(series(&m, &counted) >= 1.0, "{counted}");
    }
    // The secret is shown nowhere.
    let routes = d.routes_text().await;
    assert!(!routes.contains("a-shared-secret"), "{routes}");
}

/// A value at a cache key far over `max_entry` is refused without being read whole:
/// the replica answers from the upstream and Redis stays up.
#[tokio::test]
async fn a_huge_value_at_a_cache_key_is_not_read() {
    let redis = Redis::start(None);
    let up = counting().await;
    let prefix = unique("huge");
    let text = trusting(&redis.url(), &up.url(), &prefix, None).replace("\"2s\"", "\"200ms\"");
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    for gw in [&a, &b] {
        until_state(gw, "up").await;
    }
    assert_eq!(a.get("/t/1").await.json(), json!({"n": 0}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = neighbour(&redis).await;
    let entries = keys(&mut conn, &format!("{prefix}c:*")).await;
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(64 << 20, b'x');
    body.extend_from_slice(b"\"}");
    set(&mut conn, &entries[0], &forged_entry(60_000, &body)).await;
    let answer = b.get("/t/1").await;
    assert_eq!(answer.json(), json!({"n": 1}), "the upstream's answer");
    assert_eq!(redis_state(&b).await, "up");
    assert!(
        series(
            &b.metrics().await,
            r#"manifold_shared_entries_dropped_total{reason="too_large"}"#
        ) >= 1.0
    );
}

/// A rate-limit state rewritten to a wait of 2^63 µs gives what the limit can mean:
/// `retry-after` of at most its interval, not 9223372036855 s.
#[tokio::test]
async fn a_forged_rate_limit_wait_is_clamped() {
    let redis = Redis::start(None);
    let up = counting().await;
    let prefix = unique("rl");
    let gw = Gateway::start(&trusting(&redis.url(), &up.url(), &prefix, None)).await;
    until_state(&gw, "up").await;
    assert_eq!(gw.get("/limited").await.status, 200);
    let mut conn = neighbour(&redis).await;
    let limits: Vec<String> = keys(&mut conn, &format!("{prefix}*"))
        .await
        .into_iter()
        .filter(|k| !k.starts_with(&format!("{prefix}c:")))
        .collect();
    assert_eq!(limits.len(), 1, "{limits:?}");
    set(&mut conn, &limits[0], b"9223372036854775807").await;
    let refused = gw.get("/limited").await;
    refused.error(429, "RATE_LIMITED");
    assert_eq!(refused.header("retry-after"), Some("1"));
}

// === Idempotency keys across replicas (docs/configuration.md#idempotency-keys) ===

/// Three `manifold` processes sharing `redis`, with `POST /pay` (fast) and `POST /slow`
/// (its upstream takes 600 ms; route deadline 800 ms), both with `idempotency`.
async fn idempotent_replicas(
    redis: &Redis,
    upstream: &str,
    dir: &std::path::Path,
) -> Vec<crate::support::Process> {
    let text = format!(
        r#"{SERVER}
[telemetry]
access_log = false

[shared]
redis = "{redis}"
key_prefix = "{prefix}"
timeout = "500ms"

[upstreams.pay]
urls = ["{upstream}"]
timeout = "2s"

[[routes]]
path = "/pay"
method = "POST"
idempotency = {{ ttl = "1h" }}
  [[routes.backends]]
  upstream = "pay"
  path = "/pay"

[[routes]]
path = "/slow"
method = "POST"
timeout = "800ms"
idempotency = {{ ttl = "1h" }}
  [[routes.backends]]
  upstream = "pay"
  path = "/slow"
"#,
        redis = redis.url(),
        prefix = unique("idem")
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        let p = crate::support::Process::start(&path, None).await;
        // Each replica has Redis before the test begins.
        for _ in 0..200 {
            if p.admin_get("/routes", Duration::from_secs(1))
                .await
                .is_some_and(|(_, body)| body.contains("\"redis\": \"up\""))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        out.push(p);
    }
    out
}

async fn post_to(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .post(format!("http://{addr}{path}"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_string());
    (status, replayed, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_replicas_and_a_killed_replica_frees_its_key() {
    let redis = Redis::start(None);
    let up = Upstream::start(|s| async move {
        if s.uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        crate::support::json(
            201,
            json!({"path": s.uri.path(), "body": String::from_utf8_lossy(&s.body)}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = idempotent_replicas(&redis, &up.url(), dir.path()).await;
    let order = json!({"amount": 100});

    // Replay on another replica: the payment service is called once.
    let first = post_to(replicas[0].addr, "/pay", "k-1", &order).await;
    assert_eq!((first.0, first.1.as_deref()), (201, None));
    for r in &replicas[1..] {
        let again = post_to(r.addr, "/pay", "k-1", &order).await;
        assert_eq!((again.0, again.1.as_deref()), (201, Some("true")));
        assert_eq!(again.2, first.2, "the first answer, byte for byte");
    }
    assert_eq!(up.hits(), 1);
    let other = post_to(replicas[2].addr, "/pay", "k-1", &json!({"amount": 1})).await;
    assert_eq!(other.0, 422);

    // In flight on one replica: 409 on the others (422 for another body).
    let addr = replicas[0].addr;
    let o = order.clone();
    let running = tokio::spawn(async move { post_to(addr, "/slow", "s-1", &o).await });
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        post_to(replicas[1].addr, "/slow", "s-1", &order).await.0,
        409
    );
    assert_eq!(
        post_to(replicas[2].addr, "/slow", "s-1", &json!({"amount": 2}))
            .await
            .0,
        422
    );
    assert_eq!(running.await.unwrap().0, 201);
    assert_eq!(
        post_to(replicas[1].addr, "/slow", "s-1", &order)
            .await
            .1
            .as_deref(),
        Some("true")
    );
    assert_eq!(up.hits(), 2);

    // The replica holding a mark dies: the key stays held until the route deadline
    // (800 ms) + 5 s, then another replica may serve it.
    let addr = replicas[2].addr;
    let o = order.clone();
    let doomed = tokio::spawn(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        client
            .post(format!("http://{addr}/slow"))
            .header("idempotency-key", "s-2")
            .json(&o)
            .send()
            .await
            .is_err()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let marked_at = Instant::now();
    replicas[2].child.start_kill().unwrap();
    let _ = replicas[2].child.wait().await;
    assert!(
        doomed.await.unwrap(),
        "the client lost its answer with the replica"
    );
    assert_eq!(
        post_to(replicas[0].addr, "/slow", "s-2", &order).await.0,
        409
    );
    let freed = loop {
        let (status, replayed, _) = post_to(replicas[1].addr, "/slow", "s-2", &order).await;
        if status != 409 {
            break (status, replayed, marked_at.elapsed());
        }
        assert!(
            marked_at.elapsed() < Duration::from_secs(9),
            "the mark never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((freed.0, freed.1.as_deref()), (201, None), "served afresh");
    assert!(
        freed.2 >= Duration::from_millis(4500),
        "held until the deadline + 5 s, not freed early: {:?}",
        freed.2
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_resumed_under_load_fails_no_keyed_request() {
    let redis = Redis::start(None);
    let up = Upstream::start(|s| async move {
        crate::support::json(201, json!({"body": String::from_utf8_lossy(&s.body)}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = idempotent_replicas(&redis, &up.url(), dir.path()).await;
    let addrs: Vec<std::net::SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (stop, sent, addrs) = (stop.clone(), sent.clone(), addrs.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("c{c}-{n}");
                let body = json!({"n": n});
                // A payment and its retry, to the same replica (Redis may be stopped:
                // the replica's own store answers then).
                let addr = addrs[(c + n) % addrs.len()];
                let (status, replayed, _) = post_to(addr, "/pay", &key, &body).await;
                assert_eq!(
                    (status, replayed),
                    (201, None),
                    "no keyed request fails because of Redis"
                );
                let (status, replayed, _) = post_to(addr, "/pay", &key, &body).await;
                assert_eq!((status, replayed.as_deref()), (201, Some("true")), "{key}");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let payments = sent.load(Ordering::Relaxed);
    assert!(payments > 50, "{payments}");
    assert_eq!(
        up.hits(),
        payments,
        "each payment reached the upstream once"
    );
    // The outage was one: replicas went on alone, and Redis came back for every one.
    assert!(
        replicas.iter().any(|r| r.log().contains("redis is down")),
        "a replica noticed Redis stopped"
    );
    for r in &replicas {
        let (_, body) = r
            .admin_get("/routes", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(body.contains("\"redis\": \"up\""), "{body}");
    }
}

/// An entry at an idempotency key that a replica cannot use (written by someone else,
/// or too large to read back) never holds the key: the request is decided by the
/// replica's own store. And an answer whose entry would not fit `max_entry` is not kept.
#[tokio::test]
async fn an_unusable_idempotency_entry_holds_no_key() {
    let redis = Redis::start(None);
    let up = Upstream::start(|s| async move {
        let pad = if s.uri.path() == "/big" { 990 } else { 1 };
        crate::support::json(201, json!({"pad": "x".repeat(pad)}))
    })
    .await;
    let prefix = unique("idem-junk");
    let text = format!(
        r#"{SERVER}
[shared]
redis = "{}"
key_prefix = "{prefix}"
timeout = "2s"
max_entry = "1KiB"

[upstreams.pay]
urls = ["{}"]

[[routes]]
path = "/pay"
method = "POST"
idempotency = {{ ttl = "1h" }}
  [[routes.backends]]
  upstream = "pay"
  path = "/pay"

[[routes]]
name = "big-junk"
path = "/big"
method = "POST"
idempotency = {{ ttl = "1h" }}
  [[routes.backends]]
  upstream = "pay"
  path = "/big"
"#,
        redis.url(),
        up.url()
    );
    let a = Gateway::start(&text).await;
    let b = Gateway::start(&text).await;
    until_state(&a, "up").await;
    until_state(&b, "up").await;
    assert_eq!(send(&a, "/pay").await.status, 201);
    assert_eq!(
        send(&b, "/pay").await.header("idempotent-replayed"),
        Some("true")
    );
    let mut conn = neighbour(&redis).await;
    let stored = keys(&mut conn, &format!("{prefix}i:*")).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    set(&mut conn, &stored[0], b"Dnot an entry").await;
    // Replica a still has its own copy; replica b, seeing junk, serves afresh.
    assert_eq!(
        send(&a, "/pay").await.header("idempotent-replayed"),
        Some("true")
    );
    let fresh = send(&b, "/pay").await;
    assert_eq!(
        (fresh.status, fresh.header("idempotent-replayed")),
        (201, None)
    );
    assert_eq!(up.hits(), 2);

    // A 990-byte body with its headers and framing does not fit 1 KiB: not kept.
    assert_eq!(send(&a, "/big").await.status, 201);
    // Its mark was freed in Redis before the answer went out: the other replica
    // serves the key afresh at once.
    let again = send(&b, "/big").await;
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (201, None)
    );
    assert_eq!(up.hits(), 4);
    let m = a.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"manifold_idempotency_total{route="big-junk",result="too_large"}"#
        ),
        2.0,
        "both replicas' answers (the metrics are this test process's)"
    );
}

async fn send(gw: &Gateway, path: &str) -> crate::support::Answer {
    gw.send(
        gw.client
            .post(format!("{}{path}", gw.base))
            .header("idempotency-key", "j-1")
            .json(&json!({"amount": 1})),
    )
    .await
}
