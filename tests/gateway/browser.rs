//! Answers on the wire as real clients see them (docs/configuration.md#answers-on-the-wire):
//! a headless Chromium (driven over the DevTools protocol) reads a compressed answer
//! and revalidates it with its own HTTP cache; REDbot, an HTTP linter, checks
//! negotiation, conditional requests and caching headers on the demo's merged and
//! passthrough routes. Both are installed by `.ci/run` (`apt-get install chromium`,
//! `pip install redbot`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Gateway, Upstream, upstream};

/// A JSON answer of about 20 KB: worth compressing.
fn dashboard() -> Value {
    let items: Vec<Value> = (0..200)
        .map(|i| json!({"id": i, "title": format!("order {i}"), "status": "shipped"}))
        .collect();
    json!({"user": {"id": 42, "name": "Ada"}, "items": items})
}

async fn gateway() -> (Gateway, Upstream) {
    let api = Upstream::json(dashboard()).await;
    let config = format!(
        "{}
[[routes]]
name = \"dashboard\"
path = \"/api/dashboard/{{id}}\"
  [[routes.backends]]
  upstream = \"api\"
  path = \"/dashboard/{{id}}\"
",
        upstream("api", &api.url(), ""),
    );
    (Gateway::start(&config).await, api)
}

/// One DevTools protocol connection to a page.
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
    pub events: Vec<Value>,
}

impl Page {
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from Chromium"))
                .expect("the DevTools connection stays open")
                .unwrap();
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    pub async fn wait_for(&mut self, event: &str) {
        if let Some(i) = self.events.iter().position(|e| e["method"] == event) {
            self.events.remove(i);
            return;
        }
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no {event} from Chromium"))
                .unwrap()
                .unwrap();
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["method"] == event {
                return;
            }
        }
    }

    /// A script's value, promises awaited.
    pub async fn eval(&mut self, script: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": script, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{script}: {r}");
        r["result"]["value"].clone()
    }
}

/// Headless Chromium with a fresh profile; its first page, connected.
pub async fn chromium(profile: &std::path::Path) -> (tokio::process::Child, Page) {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| which(b))
        .expect("Chromium is needed for this test: apt-get install chromium (.ci/run installs it)");
    let mut child = tokio::process::Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("ws://") {
                return line[at..].trim().to_string();
            }
        }
        panic!("Chromium exited without a DevTools address");
    })
    .await
    .expect("Chromium starts within 30 s");
    // Keep reading its stderr, or a full pipe would stall it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = url::Url::parse(&browser_ws).unwrap().port().unwrap();
    let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page_ws = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target")
        .to_string();
    let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
    (
        child,
        Page {
            ws,
            next: 0,
            events: Vec::new(),
        },
    )
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reads_a_compressed_answer_and_revalidates_it_with_304() {
    let (gw, api) = gateway().await;
    let profile = tempfile::tempdir().unwrap();
    let (_browser, mut page) = chromium(profile.path()).await;
    page.call("Page.enable", json!({})).await;
    let url = format!("{}/api/dashboard/42", gw.base);
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_for("Page.loadEventFired").await;
    // The document is the answer: the page reads it.
    let n = page
        .eval("JSON.parse(document.body.innerText).items.length")
        .await;
    assert_eq!(n, 200);
    let first = gw
        .access_lines()
        .into_iter()
        .find(|l| l["route"] == "dashboard")
        .expect("the navigation's access line");
    assert_eq!(first["status"], 200);
    let coding = first["encoding"]
        .as_str()
        .expect("sent compressed")
        .to_string();
    assert!(
        ["br", "zstd", "gzip"].contains(&coding.as_str()),
        "{coding}"
    );

    // The browser kept it (`private, no-cache`) and asks again with its etag: the
    // gateway says 304, and the page still reads the whole answer.
    let again = page
        .eval(&format!(
            "fetch('{url}').then(r => r.json()).then(j => [j.items.length, j.user.name])"
        ))
        .await;
    assert_eq!(again, json!([200, "Ada"]));
    let lines: Vec<Value> = gw
        .access_lines()
        .into_iter()
        .filter(|l| l["route"] == "dashboard")
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[1]["status"], 304,
        "the browser revalidated: {lines:?}"
    );
    assert!(lines[1].get("encoding").is_none());
    assert_eq!(
        api.hits(),
        2,
        "no route cache: the answer is made to know its etag"
    );
    let seen = api.last();
    assert_eq!(seen.headers["accept-encoding"], "identity");
}

/// REDbot's text report on `url` (run through python3, so a `pip install --user`
/// outside the PATH works too).
async fn redbot(url: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from redbot.cli import main; sys.argv[0] = 'redbot'; sys.exit(main())",
                "-o",
                "text",
            ])
            .arg(url)
            .output(),
    )
    .await
    .expect("REDbot finishes within 60 s")
    .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'redbot'"),
        "REDbot is needed for this test: python3 -m pip install redbot (.ci/run installs it)"
    );
    assert!(out.status.success(), "redbot failed: {text}{err}");
    text
}

/// On the demo (`cargo run -- demo`): its merged dashboard and its passthrough user
/// route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redbot_finds_negotiation_revalidation_and_no_caching_warnings_on_the_demo() {
    let demo = crate::support::start_demo().await;
    for path in ["/api/dashboard/42", "/api/users/42"] {
        let report = redbot(&format!("http://{}{path}", demo.addr)).await;
        let lower = report.to_lowercase();
        let has = |s: &str| lower.contains(&s.to_lowercase());
        assert!(
            has("content negotiation for gzip compression is supported"),
            "{path}:\n{report}"
        );
        assert!(
            has("If-None-Match conditional requests are supported"),
            "{path}:\n{report}"
        );
        for warning in [
            "allows caches to assign their own freshness lifetimes",
            "doesn't have a correct Vary header",
            "Vary header is inconsistent",
            "doesn't send Vary consistently",
            "ETag doesn't change between negotiated representations",
            "missing required headers",
            "The Content-Length header is incorrect",
        ] {
            assert!(!has(warning), "{path}: REDbot warns {warning:?}:\n{report}");
        }
    }
}
