//! Hot reload (docs/operations.md#configuration-changes-and-hot-reload): atomic swaps under
//! load, state of unchanged upstreams kept, invalid files refused while the old config serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{Gateway, SERVER, Upstream, json, upstream};

fn config(steady: &str, flaky: &str, extra_routes: usize) -> String {
    let mut text = format!(
        "{SERVER}{}{}
[[routes]]
path = \"/a\"
  [[routes.backends]]
  upstream = \"steady\"
  path = \"/\"

[[routes]]
path = \"/flaky\"
  [[routes.backends]]
  upstream = \"flaky\"
  path = \"/\"
",
        upstream("steady", steady, ""),
        upstream(
            "flaky",
            flaky,
            "circuit_breaker = { consecutive_failures = 1, open_for = \"60s\" }"
        )
    );
    for i in 0..extra_routes {
        text.push_str(&format!(
            "
[[routes]]
path = \"/new/{i}\"
  [[routes.backends]]
  upstream = \"steady\"
  path = \"/\"
"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_keep_breaker_state() {
    let steady = Upstream::json(json!({"ok": true})).await;
    let flaky = Upstream::start(|_| async { json(500, json!({})) }).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let first = config(&steady.url(), &flaky.url(), 0);
    std::fs::write(&path, &first).unwrap();
    let gw = Arc::new(Gateway::start(&first).await);
    gw.get("/flaky").await.error(502, "UPSTREAM_ERROR");
    assert_eq!(gw.breaker("flaky").await, "open");

    // Steady load on /a during every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match gw.client.get(format!("{}/a", gw.base)).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }

    let mut routes = 0;
    for round in 0..10 {
        let valid = round % 3 != 2;
        let text = if valid {
            routes += 1;
            config(&steady.url(), &flaky.url(), routes)
        } else {
            format!(
                "{}\n[[routes]]\npath = \"/broken\"\n  [[routes.backends]]\n  upstream = \"nope\"\n  path = \"/\"\n",
                config(&steady.url(), &flaky.url(), routes)
            )
        };
        if round % 2 == 0 {
            std::fs::write(&path, &text).unwrap(); // in place
        } else {
            let tmp = dir.path().join(".routes.toml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap(); // as editors and ConfigMaps do
        }
        let result = gw.server.reload_file(&path).await;
        assert_eq!(result.is_ok(), valid, "round {round}: {result:?}");
        if valid {
            let r = gw.get(&format!("/new/{}", routes - 1)).await;
            assert_eq!(
                r.status, 200,
                "round {round}: the new route is served at once"
            );
        } else {
            gw.get("/broken").await.error(404, "ROUTE_NOT_FOUND");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request fails because of a reload"
    );
    assert!(ok.load(Ordering::SeqCst) > 50);
    assert_eq!(
        gw.breaker("flaky").await,
        "open",
        "an unchanged upstream keeps its breaker"
    );
    gw.get("/flaky").await.error(503, "CIRCUIT_OPEN");
    assert_eq!(flaky.hits(), 1);
    let ready = gw
        .client
        .get(format!("{}/ready", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// The real binary: SIGHUP after an in-place edit, the file watcher after a replace,
/// and an invalid file refused while the old config serves.
#[tokio::test]
async fn the_binary_reloads_on_sighup_and_on_file_change() {
    let steady = Upstream::json(json!({"ok": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let body = |n: usize| {
        let mut t = config(&steady.url(), &steady.url(), n);
        t.push('\n');
        t
    };
    std::fs::write(&path, body(0)).unwrap();
    // Both listeners on port 0: the addresses come from its "manifold is serving" line.
    let gw = crate::support::Process::start(&path, None).await;
    let (port, admin_port) = (gw.addr.port(), gw.admin.port());
    let mut child = gw.child;
    let client = reqwest::Client::new();
    let get = |p: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}{p}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let until_served = |p: String| async move {
        for _ in 0..40 {
            if get(p.clone()).await == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(until_served("/a".into()).await, "the binary never served");
    // Which file version serves: the start of its SHA-256, as `sha256sum` prints it.
    let sha = |path: &std::path::Path| -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..16].to_string()
    };
    let scrape = || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{admin_port}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let first_version = sha(&path);
    let at_start = scrape().await;
    let series = |m: &str, s: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(s) && l[s.len()..].starts_with(' '))
            .and_then(|l| l[s.len()..].trim().parse().ok())
    };
    assert_eq!(
        series(
            &at_start,
            &format!("manifold_config_info{{fingerprint=\"{first_version}\"}}")
        ),
        Some(1.0),
        "{at_start}"
    );
    let loaded_at = series(
        &at_start,
        "manifold_config_last_reload_success_timestamp_seconds",
    )
    .expect("a load time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - loaded_at).abs() < 60.0, "{loaded_at} vs {now}");
    assert_eq!(
        series(
            &at_start,
            &format!(
                "manifold_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    // The standard process metrics, read from /proc at scrape time.
    let rss = series(&at_start, "process_resident_memory_bytes").unwrap_or(0.0);
    assert!(rss > 1e6, "RSS {rss}");
    let fds = series(&at_start, "process_open_fds").unwrap_or(0.0);
    let max_fds = series(&at_start, "process_max_fds").unwrap_or(0.0);
    assert!(fds > 5.0 && max_fds > fds, "fds {fds} of {max_fds}");
    let started = series(&at_start, "process_start_time_seconds").unwrap_or(0.0);
    assert!((now - started).abs() < 60.0, "started {started}, now {now}");
    assert!(series(&at_start, "process_cpu_seconds_total").is_some_and(|c| c > 0.0));

    // In place, then SIGHUP.
    std::fs::write(&path, body(1)).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        until_served("/new/0".into()).await,
        "SIGHUP reload within 2 s"
    );

    // Replaced by rename, no signal: the watcher notices.
    let tmp = dir.path().join("routes.toml.new");
    std::fs::write(&tmp, body(2)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        until_served("/new/1".into()).await,
        "file-change reload within 2 s"
    );

    // Invalid: refused, the last good config keeps serving.
    std::fs::write(&path, "this is = not [valid").unwrap();
    // The in-place edit may be seen by both the watcher and SIGHUP: at least, not exactly.
    let count = |m: &str, s: &str| series(m, s).unwrap_or(0.0);
    // The watcher reads it once settled (300 ms quiet), then refuses it.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = scrape().await;
        if count(&metrics, "manifold_config_reloads_total{result=\"error\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        count(&metrics, "manifold_config_reloads_total{result=\"error\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(get("/new/1".into()).await, 200);
    assert!(
        count(&metrics, "manifold_config_reloads_total{result=\"ok\"}") >= 2.0,
        "{metrics}"
    );
    // After the refused file, the metrics still name the version that serves: the last
    // good one, loaded after the first.
    let good = body(2);
    let good_path = dir.path().join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let served = sha(&good_path);
    assert_ne!(served, first_version);
    assert_eq!(
        count(
            &metrics,
            &format!("manifold_config_info{{fingerprint=\"{served}\"}}")
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(&first_version),
        "only the config serving now is listed"
    );
    assert!(
        series(
            &metrics,
            "manifold_config_last_reload_success_timestamp_seconds"
        )
        .is_some_and(|t| t >= loaded_at)
    );
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{admin_port}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A writer that truncates the file and writes the new one 200 ms later (`render >
/// routes.toml`): the watcher waits for the file to settle, so no request meets an
/// empty config, and no reload is refused or counted for the empty file.
#[tokio::test]
async fn the_watcher_waits_for_a_file_being_written() {
    let steady = Upstream::json(json!({"ok": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let body = |n: usize| config(&steady.url(), &steady.url(), n);
    std::fs::write(&path, body(0)).unwrap();
    // Both listeners on port 0: the addresses come from its "manifold is serving" line.
    let gw = crate::support::Process::start(&path, None).await;
    let (port, admin_port) = (gw.addr.port(), gw.admin.port());
    let mut child = gw.child;
    let client = reqwest::Client::new();
    let status = move |p: &str| {
        let url = format!("http://127.0.0.1:{port}{p}");
        let client = reqwest::Client::new();
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    for _ in 0..100 {
        if status("/a").await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status("/a").await, 200, "the binary never served");

    // Requests all along, while the file is truncated and then written.
    let stop = Arc::new(AtomicBool::new(false));
    let not_ok = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, not_ok) = (stop.clone(), not_ok.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                if status("/a").await != 200 {
                    not_ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::io::Write::write_all(&mut &file, body(1).as_bytes()).unwrap();
    drop(file);
    let mut served = false;
    for _ in 0..60 {
        if status("/new/0").await == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(served, "the new file was loaded");
    assert_eq!(
        not_ok.load(Ordering::SeqCst),
        0,
        "no request met the empty file"
    );
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("manifold_config_reloads_total{result=\"error\"} 0"),
        "{metrics}"
    );
    child.kill().await.unwrap();
}
