//! One client stack per upstream, built once at load and shared by every route using it.
//!
//! The pool (keep-alive connections) lives here; so will the breaker, limiter and
//! cache, which is why a reload keeps an `Upstream` whose settings did not change.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::time::Instant;

use crate::config::UpstreamSettings;
use crate::error::Failure;

pub struct Upstream {
    pub name: Arc<str>,
    pub settings: UpstreamSettings,
    client: reqwest::Client,
    /// Base URLs without a trailing `/`, so a template path appends directly.
    bases: Vec<String>,
    next: AtomicUsize,
}

/// Idle-read bound for streamed (passthrough) bodies when the upstream sets no timeout.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn build(name: &str, settings: &UpstreamSettings) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            // A gateway passes redirects on (passthrough) or fails on them (merged routes).
            .redirect(reqwest::redirect::Policy::none())
            // Upstreams are internal services: an ambient HTTP_PROXY must not reroute them.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .connect_timeout(
                settings
                    .timeout
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(5)),
            )
            .read_timeout(
                settings
                    .timeout
                    .unwrap_or(DEFAULT_READ_TIMEOUT)
                    .max(Duration::from_secs(1)),
            );
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {} is not a PEM bundle: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the client of upstream {name}: {e}"))?;
        Ok(Upstream {
            name: Arc::from(name),
            settings: settings.clone(),
            client,
            bases: settings
                .urls
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_string())
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The full URL for a rendered path (`/users/42?x=1`), round-robin over `urls`.
    pub fn url(&self, path_and_query: &str) -> String {
        let i = if self.bases.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()
        };
        let base = &self.bases[i];
        let mut url = String::with_capacity(base.len() + path_and_query.len());
        url.push_str(base);
        url.push_str(path_and_query);
        url
    }

    /// When this attempt must end: `min(upstream timeout, route deadline)`.
    pub fn attempt_deadline(&self, route_deadline: Instant) -> Instant {
        match self.settings.timeout {
            Some(t) => route_deadline.min(Instant::now() + t),
            None => route_deadline,
        }
    }

    pub fn request(&self, method: Method, url: &str) -> Result<reqwest::Request, Failure> {
        let url =
            reqwest::Url::parse(url).map_err(|_| Failure::BadResponse("invalid upstream URL"))?;
        Ok(reqwest::Request::new(method, url))
    }

    /// Sends a request and waits for the response head, bounded by `deadline`.
    /// `Err(None)` is a timeout; the transport error is kept for the caller to inspect.
    pub async fn execute(
        &self,
        req: reqwest::Request,
        deadline: Instant,
    ) -> Result<reqwest::Response, Option<reqwest::Error>> {
        match tokio::time::timeout_at(deadline, self.client.execute(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        }
    }

    /// One call whose answer must be JSON: head and body both within `deadline`.
    pub async fn call_json(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<(Bytes, HeaderValue)>,
        deadline: Instant,
    ) -> Result<(StatusCode, serde_json::Value), Failure> {
        let mut req = self.request(method, url)?;
        *req.headers_mut() = headers;
        if let Some((bytes, content_type)) = body {
            req.headers_mut().insert(header::CONTENT_TYPE, content_type);
            *req.body_mut() = Some(reqwest::Body::from(bytes));
        }
        let limit = self.settings.max_response_body;
        let work = async {
            let resp = self.client.execute(req).await.map_err(|e| classify(&e))?;
            let status = resp.status();
            if status.is_server_error() {
                return Err(Failure::ServerError(status));
            }
            if status.is_client_error() {
                return Err(Failure::Rejected(status));
            }
            if status.is_redirection() {
                return Err(Failure::BadResponse("a redirect"));
            }
            if !status.is_success() {
                return Err(Failure::BadResponse("an unexpected status"));
            }
            let bytes = read_limited(resp, limit).await?;
            if bytes.is_empty() {
                return Ok((status, serde_json::Value::Null));
            }
            serde_json::from_slice(&bytes)
                .map(|v| (status, v))
                .map_err(|_| Failure::BadResponse("the body is not JSON"))
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// Reads a whole body, refusing one larger than `limit` bytes without buffering it all.
async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Bytes, Failure> {
    const TOO_LARGE: Failure = Failure::BadResponse("the body is larger than max_response_body");
    if let Some(len) = resp.content_length() {
        if len > limit {
            return Err(TOO_LARGE);
        }
        return resp.bytes().await.map_err(|e| classify(&e));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(TOO_LARGE);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Transport errors: a timeout, or (connect, reset, broken body) an upstream error.
pub fn classify(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connect
    }
}
