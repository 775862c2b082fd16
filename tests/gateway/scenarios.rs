//! Scenarios as data: each file under `tests/scenarios/<family>/` starts scripted
//! upstreams and a gateway, sends requests and checks what came back (status, body,
//! headers, the contract's error), what each upstream saw and how often, and the
//! request's access line. The format is documented in `tests/scenarios/README.md`.
//!
//! One test finds every family on disk and runs them at once; within a family the
//! files run in name order, and a failure names the file and the request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::support::{Gateway, Upstream, dead_addr, raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// What the scenario shows, for whoever reads a failure.
    #[allow(dead_code)]
    description: String,
    /// Scripted upstreams by name: answers by request path (with its query), `*` for
    /// any other. A name listed in `dead` is an address nothing listens on.
    #[serde(default)]
    upstreams: BTreeMap<String, BTreeMap<String, Scripted>>,
    #[serde(default)]
    dead: Vec<String>,
    /// The gateway's routes.toml; `{name}` stands for an upstream's URL.
    config: String,
    #[serde(rename = "request")]
    requests: Vec<Req>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Scripted {
    #[serde(default = "ok")]
    status: u16,
    /// A JSON body (content-type application/json)...
    json: Option<toml::Value>,
    /// ...or a raw one.
    body: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Waits this long before answering (`"50ms"`).
    delay: Option<String>,
}

fn ok() -> u16 {
    200
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: u16,
    /// The whole body, as JSON.
    json: Option<toml::Value>,
    /// The contract's error body with this `error.code` (its `request_id` matching the
    /// header), and optionally its `error.backend`.
    error: Option<String>,
    backend: Option<String>,
    /// Text the error's message must hold.
    message_has: Option<String>,
    /// Text the body must not contain (an internal address, a secret).
    #[serde(default)]
    body_lacks: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    /// Each upstream's total requests so far.
    #[serde(default)]
    hits: BTreeMap<String, usize>,
    /// What an upstream's last request was.
    #[serde(default)]
    seen: BTreeMap<String, Seen>,
    /// Fields of this request's access line, by dot path (`backends.users.outcome`).
    #[serde(default)]
    access: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    /// The request target: path and query.
    target: Option<String>,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    body: Option<String>,
}

fn json_of(v: &toml::Value) -> Value {
    serde_json::to_value(v).expect("TOML is JSON")
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("bad duration {text:?}: {e}"))
}

async fn scripted(answers: BTreeMap<String, Scripted>) -> Upstream {
    let answers = Arc::new(answers);
    Upstream::start(move |seen| {
        let target = seen
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let answer = answers
            .get(&target)
            .or_else(|| answers.get("*"))
            .cloned()
            .unwrap_or_else(|| panic!("no scripted answer for {target}"));
        async move {
            if let Some(d) = &answer.delay {
                tokio::time::sleep(duration(d)).await;
            }
            let (content_type, body) = match (&answer.json, &answer.body) {
                (Some(j), _) => ("application/json".to_string(), json_of(j).to_string()),
                (None, Some(b)) => (
                    answer
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".into()),
                    b.clone(),
                ),
                (None, None) => ("application/json".to_string(), String::new()),
            };
            let mut r = raw(answer.status, &content_type, Bytes::from(body));
            for (k, v) in &answer.headers {
                r.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            r
        }
    })
    .await
}

/// The value at a dot path of a JSON value.
fn at<'v>(v: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(v, |v, k| &v[k])
}

async fn run(file: &Path) {
    let name = file.display();
    let text = std::fs::read_to_string(file).unwrap();
    let s: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut servers = BTreeMap::new();
    let mut config = s.config.clone();
    for (up, answers) in s.upstreams {
        let server = scripted(answers).await;
        config = config.replace(&format!("{{{up}}}"), &server.url());
        servers.insert(up, server);
    }
    for up in &s.dead {
        config = config.replace(
            &format!("{{{up}}}"),
            &format!("http://{}", dead_addr().await),
        );
    }
    let gw = Gateway::start(&config).await;
    for (i, req) in s.requests.iter().enumerate() {
        let what = format!("{name}, request {} ({} {})", i + 1, req.method, req.path);
        let method = http::Method::from_bytes(req.method.as_bytes()).unwrap();
        let mut builder = gw
            .client
            .request(method, format!("{}{}", gw.base, req.path));
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(b) = &req.body {
            builder = builder.body(b.clone());
        }
        let r = gw.send(builder).await;
        let e = &req.expect;
        assert_eq!(
            r.status,
            e.status,
            "{what}: status; body {}",
            String::from_utf8_lossy(&r.body)
        );
        if let Some(j) = &e.json {
            assert_eq!(r.json(), json_of(j), "{what}: body");
        }
        if let Some(code) = &e.error {
            let err = r.error(e.status, code);
            if let Some(b) = &e.backend {
                assert_eq!(err["backend"], b.as_str(), "{what}: error.backend");
            }
            if let Some(m) = &e.message_has {
                let message = err["message"].as_str().unwrap_or_default();
                assert!(message.contains(m.as_str()), "{what}: message {message:?}");
            }
        }
        for lack in &e.body_lacks {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(lack.as_str()),
                "{what}: the body holds {lack:?}"
            );
        }
        for (k, v) in &e.headers {
            assert_eq!(
                r.header_all(k).as_deref(),
                Some(v.as_str()),
                "{what}: header {k}"
            );
        }
        for k in &e.absent_headers {
            assert_eq!(r.header(k), None, "{what}: header {k} must be absent");
        }
        for (up, n) in &e.hits {
            assert_eq!(servers[up].hits(), *n, "{what}: hits of {up}");
        }
        for (up, want) in &e.seen {
            let got = servers[up].last();
            if let Some(t) = &want.target {
                let target = got.uri.path_and_query().map_or("", |pq| pq.as_str());
                assert_eq!(target, t, "{what}: {up} was asked for");
            }
            if let Some(m) = &want.method {
                assert_eq!(got.method.as_str(), m, "{what}: {up}'s method");
            }
            for (k, v) in &want.headers {
                // `$request_id`: the id the client got back.
                let v = match v.as_str() {
                    "$request_id" => r.header("x-request-id").unwrap_or("(none)"),
                    v => v,
                };
                assert_eq!(
                    got.headers.get(k).and_then(|v| v.to_str().ok()),
                    Some(v),
                    "{what}: {up} got header {k}"
                );
            }
            for k in &want.absent_headers {
                assert!(
                    !got.headers.contains_key(k),
                    "{what}: {up} must not get {k}"
                );
            }
            if let Some(b) = &want.body {
                assert_eq!(got.body, b.as_bytes(), "{what}: {up}'s body");
            }
        }
        if !e.access.is_empty() {
            let id = r.header("x-request-id").unwrap_or_default().to_string();
            let line = gw.access_line(&id).await;
            for (path, want) in &e.access {
                assert_eq!(at(&line, path), &json_of(want), "{what}: access {path}");
            }
        }
    }
}

/// Every scenario file of every folder of `tests/scenarios/`, found on disk: a new
/// folder or file runs without being named here. The folders run at once, each file
/// of a folder in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_family() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut families: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    families.sort();
    assert!(families.len() >= 5, "families found: {families:?}");
    let runs = families.into_iter().map(|dir| {
        tokio::spawn(async move {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no scenarios in {}", dir.display());
            for f in files {
                run(&f).await;
            }
        })
    });
    for r in futures_util::future::join_all(runs).await {
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
