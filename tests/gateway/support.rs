//! Real upstream servers on port 0 and a real gateway in-process, talked to over TCP.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use manifold::listener::Server;
use manifold::telemetry::access_log::LogSink;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

pub type Reply = Response<Full<Bytes>>;

/// An upstream HTTP server on 127.0.0.1:0 that records every request it gets.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    /// Serves `handler` for every request (after reading the whole request body).
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let log = seen.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let at = Instant::now();
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                                at,
                            };
                            log.lock().unwrap().push(s.clone());
                            Ok::<_, Infallible>(handler(s).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
        }
    }

    /// Always answers `body` as JSON with 200.
    pub async fn json(body: Value) -> Upstream {
        Self::start(move |_| {
            let body = body.clone();
            async move { json(200, body) }
        })
        .await
    }

    /// Answers `body` with 200 after `delay`.
    pub async fn slow(delay: Duration, body: Value) -> Upstream {
        Self::start(move |_| {
            let body = body.clone();
            async move {
                tokio::time::sleep(delay).await;
                json(200, body)
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

pub fn json(status: u16, v: Value) -> Reply {
    raw(status, "application/json", v.to_string())
}

pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

/// An address nothing listens on: bound and never listening, and kept bound for the
/// rest of the test binary, so no other test's listener can take the port meanwhile
/// (connecting gets a refusal).
pub async fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A gateway serving a config, with its access log captured.
pub struct Gateway {
    pub server: Server,
    pub base: String,
    pub admin: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

/// The gateway's own log events (not access lines) of every test in this binary, as
/// JSON: tests find theirs by request id. Installed once, at debug level for manifold.
static EVENTS: std::sync::OnceLock<Arc<Mutex<Vec<Value>>>> = std::sync::OnceLock::new();

fn capture_events() -> Arc<Mutex<Vec<Value>>> {
    EVENTS
        .get_or_init(|| {
            let events = Arc::new(Mutex::new(Vec::new()));
            let to = events.clone();
            let writer = move || Line {
                buf: Vec::new(),
                to: to.clone(),
            };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn,manifold=debug"))
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(writer)
                .try_init();
            events
        })
        .clone()
}

/// One formatted event, kept as JSON when dropped.
struct Line {
    buf: Vec<u8>,
    to: Arc<Mutex<Vec<Value>>>,
}

impl std::io::Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        for line in self.buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(v) = serde_json::from_slice(line) {
                self.to.lock().unwrap().push(v);
            }
        }
    }
}

/// The gateway's log events that carry `request_id`, waiting up to 2 s for `n`.
pub async fn events_for(request_id: &str, n: usize) -> Vec<Value> {
    let events = capture_events();
    for _ in 0..200 {
        let found: Vec<Value> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["request_id"] == request_id)
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} log events for request {request_id}");
}

/// The `[server]` block tests use: both listeners on ephemeral ports.
pub const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";

impl Gateway {
    /// Starts a gateway on `config` (a `[server]` block on port 0 is prepended unless present).
    pub async fn start(config: &str) -> Gateway {
        Self::start_on(config, &[]).await
    }

    /// As [`Gateway::start`], the public listener served by `n` worker loops of their
    /// own (real time), the rest (admin, probes, background tasks) on the test's.
    pub async fn start_with_workers(config: &str, n: usize) -> Gateway {
        let workers = manifold::base::worker::spawn(n).unwrap();
        Self::start_on(config, &workers).await
    }

    async fn start_on(config: &str, workers: &[tokio::runtime::Handle]) -> Gateway {
        let text = if config.contains("[server]") {
            config.to_string()
        } else {
            format!("{SERVER}{config}")
        };
        let config = match manifold::config::parse("test.toml", &text) {
            Ok(c) => c,
            Err(d) => panic!("test config is invalid:\n{}", d.render()),
        };
        Self::start_config(config, workers).await
    }

    /// Starts a gateway on the config file at `path` (relative paths in it are its
    /// neighbours).
    pub async fn start_file(path: &std::path::Path) -> Gateway {
        let config = manifold::config::Config::load(path)
            .unwrap_or_else(|d| panic!("test config is invalid:\n{}", d.render()));
        Self::start_config(config, &[]).await
    }

    async fn start_config(
        config: manifold::config::Config,
        workers: &[tokio::runtime::Handle],
    ) -> Gateway {
        capture_events();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink_logs = logs.clone();
        let sink: LogSink = Arc::new(move |line: &[u8]| {
            sink_logs
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).trim_end().to_string());
        });
        let server = Server::start_on(config, sink, workers)
            .await
            .expect("gateway starts");
        let base = format!("http://{}", server.addr);
        let admin = format!("http://{}", server.admin_addr.unwrap());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Gateway {
            server,
            base,
            admin,
            logs,
            client,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let started = Instant::now();
        let resp = req.send().await.expect("the gateway answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        Answer {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    /// The admin `/routes` answer, as sent.
    pub async fn routes_text(&self) -> String {
        self.client
            .get(format!("{}/routes", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// An admin listener path's status and JSON (`null` when the body is not JSON).
    pub async fn admin_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The admin `/routes` answer.
    pub async fn routes(&self) -> Value {
        serde_json::from_str(&self.routes_text().await).unwrap()
    }

    /// An upstream's breaker state as the admin `/routes` shows it.
    pub async fn breaker(&self, upstream: &str) -> String {
        let routes = self.routes().await;
        routes["upstreams"][upstream]["breaker"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The access line of the request with `id`, waiting up to 2 s for it.
    pub async fn access_line(&self, id: &str) -> Value {
        for _ in 0..200 {
            if let Some(l) = self
                .access_lines()
                .into_iter()
                .find(|l| l["request_id"] == id)
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access line for {id}");
    }

    pub fn access_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("access lines are JSON"))
            .collect()
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every line of a header, joined as one list (`vary: a` and `vary: b` read as
    /// `a, b`).
    pub fn header_all(&self, name: &str) -> Option<String> {
        let all: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// Asserts the contract's error shape and returns the error object.
    pub fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = v
            .get("error")
            .unwrap_or_else(|| panic!("no error object in {v}"))
            .clone();
        assert_eq!(e["code"], code, "{v}");
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{v}");
        assert_eq!(
            e["request_id"].as_str(),
            self.header("x-request-id"),
            "request_id matches the header: {v}"
        );
        e
    }
}

/// An `[upstreams.NAME]` block pointing at `url`, with extra lines.
pub fn upstream(name: &str, url: &str, extra: &str) -> String {
    format!("[upstreams.{name}]\nurls = [\"{url}\"]\n{extra}\n")
}

/// A GET sent byte for byte as written (no client-side path normalisation).
pub async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series (name and labels as exposed) in a metrics text; 0 if absent.
pub fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every log event the gateways of this test binary wrote so far.
pub fn all_events() -> Vec<Value> {
    capture_events().lock().unwrap().clone()
}

/// A test certificate authority, and certificates it signs for 127.0.0.1 and localhost.
pub struct Pki {
    pub root: rustls::pki_types::CertificateDer<'static>,
    /// The root as PEM (a `ca_file`).
    pub root_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// One certificate and its key, as PEM, and the certificate as DER.
pub struct Pair {
    pub cert: String,
    pub key: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let root = ca.self_signed(&key).unwrap();
        Pki {
            root_pem: root.pem(),
            root: root.der().clone(),
            issuer: Issuer::new(ca, key),
        }
    }

    pub fn pair(&self) -> Pair {
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// The manifold binary serving a config file in a process of its own (for what only a
/// process shows: its descriptor limit, signals, a blocked event loop). Both listeners
/// may be on port 0: the addresses are read from its "manifold is serving" log line.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Its log lines (stdout, JSON) so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `manifold serve --config path`; `nofile`: its descriptor limit (soft and
    /// hard), as `ulimit -n` would set it.
    pub async fn start(path: &std::path::Path, nofile: Option<u64>) -> Process {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_manifold"));
        cmd.args(["serve", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, n, n));
            }
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let started = Instant::now();
        loop {
            let serving = lines.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "manifold is serving").then(|| {
                    (
                        v["addr"].as_str().unwrap().parse().unwrap(),
                        v["admin"].as_str().unwrap().parse().unwrap(),
                    )
                })
            });
            if let Some((addr, admin)) = serving {
                return Process {
                    child,
                    addr,
                    admin,
                    lines,
                };
            }
            if started.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
                panic!(
                    "manifold did not start:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the admin listener within `within`: the status, or `None`.
    pub async fn admin_get(&self, path: &str, within: Duration) -> Option<(u16, String)> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://{}{path}", self.admin);
        let resp = tokio::time::timeout(within, client.get(url).send())
            .await
            .ok()?
            .ok()?;
        let status = resp.status().as_u16();
        let text = tokio::time::timeout(within, resp.text()).await.ok()?.ok()?;
        Some((status, text))
    }

    /// Sends a signal (`-HUP`, `-TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// `manifold demo` in-process: the repository's routes.toml with the built-in demo
/// services, every listener on an ephemeral port (tests must not depend on 7001-7003
/// and 8080 being free).
pub async fn start_demo() -> Server {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml")).unwrap();
    let mut config =
        manifold::config::parse("routes.toml", &text).expect("the shipped routes.toml is valid");
    for u in &mut config.upstreams {
        u.settings.urls = vec![url::Url::parse("http://127.0.0.1:0").unwrap()];
    }
    let addrs = manifold::demo::start(&config)
        .await
        .expect("demo services start");
    for ((name, _), addr) in manifold::demo::SERVICES.iter().zip(&addrs) {
        let u = config
            .upstreams
            .iter_mut()
            .find(|u| u.name == *name)
            .unwrap();
        u.settings.urls = vec![url::Url::parse(&format!("http://{addr}")).unwrap()];
    }
    // The gRPC service is started last.
    let grpc = addrs[manifold::demo::SERVICES.len()];
    let u = config
        .upstreams
        .iter_mut()
        .find(|u| u.name == manifold::demo::GRPC_SERVICE)
        .unwrap();
    u.settings.urls = vec![url::Url::parse(&format!("http://{grpc}")).unwrap()];
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    Server::start(config, Arc::new(|_: &[u8]| {}))
        .await
        .unwrap()
}
