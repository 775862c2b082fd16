//! Connections to one upstream's hosts, per worker loop: kept-alive HTTP/1.1
//! connections in an idle list, or (`protocol = "h2"`/`"h2c"`) one HTTP/2 connection
//! per host whose streams every call of the loop shares.
//!
//! Built on `hyper::client::conn::http1` rather than hyper-util's pooled client: that
//! client keys its pool by hashing the scheme and authority, takes a lock shared by
//! every loop, and spawns a task per response to put the connection back. Here a
//! worker takes the most recently used idle connection of its own list (a short,
//! uncontended lock: tasks never leave their loop) and gives it back when the call
//! lets go of its [`Lease`]. The difference was 2–3.5 µs of CPU per pass-through
//! request (benches/passthrough_ab.py).
//!
//! A connection is taken only if hyper says it can send now: one whose previous
//! answer is still being read, or that the upstream closed, is skipped (closed ones
//! are dropped). Idle connections are closed after `IDLE_TIMEOUT` by a sweep that runs
//! while any are idle, so an upstream that keeps sockets open forever does not keep
//! them open forever here. The sweeps are the idle clock: taking and giving back a
//! connection read no time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::base::body::{Body, BoxError, RequestBody};
use crate::config::Protocol;
use crate::state::descriptors::{Descriptors, Exhausted, Holder, Permit};

/// How long an unused connection stays open (give or take a tenth).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Sweeps per `IDLE_TIMEOUT`.
const SWEEPS: u32 = 10;
/// Idle connections kept per worker; more than this are closed when given back.
const MAX_IDLE: usize = 512;

type Sender = SendRequest<RequestBody>;
type H2Sender = http2::SendRequest<RequestBody>;
type Connecting = Shared<BoxFuture<'static, Result<(u64, H2Sender), SharedError>>>;

/// Names HTTP/2 connections, so a failed call drops the one it used, not its successor.
static H2_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// HTTP/2 pings on a connection with calls in flight, and how long one may go
/// unanswered before the connection is taken for dead (its calls fail, the next
/// call opens a new one).
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a call goes: one of an upstream's `urls`.
#[derive(Debug)]
pub struct Base {
    /// `scheme://authority`, what a connection is opened to.
    pub(super) origin: Uri,
    /// The URL's own path (empty for most), prepended to every backend path.
    prefix: String,
    /// The `host` header every request to it carries (never the userinfo).
    host: HeaderValue,
    /// `authorization: Basic ...` from the URL's userinfo (`https://user:pass@host`),
    /// sent with every request to it in place of any forwarded `authorization`.
    auth: Option<HeaderValue>,
}

impl Base {
    pub fn new(url: &url::Url) -> Result<Self, String> {
        let shown = crate::base::redact::url(url.as_str());
        let text = shown.trim_end_matches('/');
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(format!("`{text}` has no host")),
        };
        let origin = format!("{}://{host}", url.scheme());
        Ok(Base {
            origin: origin
                .parse()
                .map_err(|e| format!("`{text}` is not a valid URL: {e}"))?,
            prefix: url.path().trim_end_matches('/').to_owned(),
            host: HeaderValue::from_str(&host).map_err(|e| format!("`{text}`: {e}"))?,
            auth: basic_auth(url),
        })
    }

    /// `host:port`, as `/routes` and the host metrics name it.
    pub fn label(&self) -> String {
        let port = self
            .origin
            .port_u16()
            .unwrap_or(match self.origin.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
        format!("{}:{port}", self.origin.host().unwrap_or_default())
    }

    /// Addresses an HTTP/1.1 request to this host: `host`, and the URL's credentials
    /// if any.
    #[inline]
    fn address(&self, headers: &mut http::HeaderMap) {
        headers.insert(header::HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
    }

    /// Addresses an HTTP/2 request to this host: an absolute target, whose authority
    /// goes as `:authority`, and the URL's credentials if any.
    fn address_h2(&self, req: &mut Request<RequestBody>) -> Result<(), BoxError> {
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts)?;
        req.headers_mut().remove(header::HOST);
        if let Some(auth) = &self.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        Ok(())
    }

    /// The request target for a rendered path and query (`/users/42?x=1`).
    pub fn target(&self, path_and_query: String) -> Option<Uri> {
        if self.prefix.is_empty() {
            Uri::try_from(path_and_query).ok()
        } else {
            Uri::try_from(format!("{}{path_and_query}", self.prefix)).ok()
        }
    }
}

/// The URL's userinfo as a basic `authorization` value (RFC 7617), marked sensitive so
/// that no log or trace of the headers shows it.
fn basic_auth(url: &url::Url) -> Option<HeaderValue> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or("")));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

struct Idle {
    base: usize,
    sender: Sender,
    /// The sweep count when it was given back.
    since: u32,
}

#[derive(Default)]
struct List {
    /// Most recently given back last.
    conns: Vec<Idle>,
    /// Sweeps so far.
    sweeps: u32,
    /// A sweep task runs on this loop.
    sweeping: bool,
    /// HTTP/2: this loop's one connection per host (by base), or the one being made.
    h2: Vec<H2Slot>,
}

#[derive(Default)]
enum H2Slot {
    #[default]
    Empty,
    Ready(u64, H2Sender),
    /// Every call that finds the connection being made waits for that one.
    Connecting(Connecting),
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// HTTP/1.1 only (ALPN `http/1.1`): WebSocket handshakes, whatever `protocol` says.
    upgrade_connector: HttpsConnector<HttpConnector>,
    /// Bounds making an HTTP/2 connection whole (connect, TLS, preface): calls waiting
    /// for a host that accepts and then stalls are not held past it.
    connect_bound: Duration,
    /// The upstream's `urls`, in order; a connection goes to one of them.
    bases: Vec<Base>,
    /// One list per worker loop.
    idle: Vec<Mutex<List>>,
    protocol: Protocol,
    /// Per base: `h2` was answered with ALPN `http/1.1`, so calls there use HTTP/1.1.
    fallback: Vec<AtomicBool>,
    /// Each connection opened holds one of these for its life (a WebSocket
    /// handshake's is the tunnel's).
    descriptors: Arc<Descriptors>,
}

/// A connect failure every caller waiting on one HTTP/2 connection gets.
#[derive(Clone, Debug)]
struct SharedError(Arc<BoxError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// The connection a `h2` host negotiated is HTTP/1.1: given to the pool; call again.
const FELL_BACK: &str = "the host negotiated HTTP/1.1";

/// A connection out of the pool for one call, given back to its loop's list when
/// dropped, whether its answer was read or not. hyper is the guard against reuse too
/// early: it marks a connection ready only once the whole response is off the wire,
/// and closes one whose answer was left midway (a body dropped, a call cut short).
pub struct Lease {
    pool: Arc<Pool>,
    base: usize,
    sender: Option<Sender>,
    /// False for a connection that is never given back (an upgrade's): its sender
    /// only keeps it open while the call needs it.
    reuse: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && self.reuse
        {
            self.pool.put(self.base, sender);
        }
    }
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        upgrade_connector: HttpsConnector<HttpConnector>,
        connect_bound: Duration,
        bases: Vec<Base>,
        workers: usize,
        protocol: Protocol,
        descriptors: Arc<Descriptors>,
    ) -> Self {
        Pool {
            descriptors,
            connector,
            upgrade_connector,
            connect_bound,
            fallback: bases.iter().map(|_| AtomicBool::new(false)).collect(),
            bases,
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            protocol,
        }
    }

    pub fn bases(&self) -> &[Base] {
        &self.bases
    }

    fn list(&self) -> (usize, &Mutex<List>) {
        let slot = crate::base::worker::index() % self.idle.len();
        (slot, &self.idle[slot])
    }

    /// Sends `req` (its target from [`Base::target`]) to `bases()[base]`, on an idle
    /// connection that can send now, else on a new one. A request that an idle
    /// connection's close beat to the wire goes again on a new connection: the
    /// upstream never saw it. Hold the lease until done with the answer.
    pub async fn send(
        self: &Arc<Self>,
        base: usize,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), BoxError> {
        if self.protocol != Protocol::Http1 && !self.fallback[base].load(Ordering::Relaxed) {
            // Boxed: HTTP/1.1 upstreams do not carry the room for it.
            return Box::pin(self.send_h2(base, req)).await;
        }
        let to = &self.bases[base];
        to.address(req.headers_mut());
        let lease = |sender| Lease {
            pool: self.clone(),
            base,
            sender: Some(sender),
            reuse: true,
        };
        let req = match self.checkout(base) {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, lease(sender))),
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(e.into_error().into()),
                },
            },
            None => req,
        };
        // Boxed: a new connection is the rare path, and its future is most of this
        // one's size, which every caller up to the request would otherwise copy.
        let mut sender = Box::pin(self.connect(&to.origin)).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, lease(sender)))
    }

    /// Sends an upgrade request (`upgrade: websocket`) to `bases()[base]` on a new
    /// connection that can be handed over after a 101 (`hyper::upgrade::on` on the
    /// answer); it never goes back to the pool.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        base: usize,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), BoxError> {
        let to = &self.bases[base];
        to.address(req.headers_mut());
        let io = dial(&self.upgrade_connector, &to.origin).await?;
        let (mut sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended");
            }
        });
        let resp = sender.send_request(req).await?;
        Ok((
            resp,
            Lease {
                pool: self.clone(),
                base,
                sender: Some(sender),
                reuse: false,
            },
        ))
    }

    /// Sends `req` to `bases()[base]` on a connection of its own, closed after the
    /// answer (health probes: nothing shared with calls), in the upstream's protocol.
    pub async fn send_once(
        &self,
        base: usize,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let to = &self.bases[base];
        let permit = self.permit()?;
        let io = dial(&self.connector, &to.origin).await?;
        let h2 = match self.protocol {
            Protocol::Http1 => false,
            Protocol::H2c => true,
            Protocol::H2 => io.connected().is_negotiated_h2(),
        };
        if h2 {
            to.address_h2(&mut req)?;
            let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _permit = permit;
                let _ = conn.await;
            });
            return Ok(sender.send_request(req).await?);
        }
        to.address(req.headers_mut());
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (mut sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            let _permit = permit;
            let _ = conn.await;
        });
        Ok(sender.send_request(req).await?)
    }

    /// An HTTP/2 call: a stream on this loop's connection to the host (made by the
    /// first call that needs it; the others wait for it). A call the connection never
    /// sent (it was closed or dead), or that the upstream refused unprocessed (a
    /// GOAWAY whose last stream id is below it, or REFUSED_STREAM), goes once more on
    /// a new connection, when its body can be sent again.
    async fn send_h2(
        self: &Arc<Self>,
        base: usize,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), BoxError> {
        self.bases[base].address_h2(&mut req)?;
        // A refused stream's body may have been read (and acted on) by an upstream
        // that lies or fails in between: only a call that may be repeated is kept to
        // send again. One hyper never sent at all comes back whatever it is.
        let repeatable = may_repeat(&req);
        let mut spare = if repeatable { replayable(&req) } else { None };
        let mut again = true;
        loop {
            let (id, mut sender) = match self.h2_sender(base).await {
                Ok(conn) => conn,
                Err(e) if e.to_string() == FELL_BACK => {
                    // HTTP/1.1 wants the origin form (`/path?query`).
                    if let Some(pq) = req.uri().path_and_query().cloned() {
                        *req.uri_mut() = Uri::from(pq);
                    }
                    return Box::pin(self.send(base, req)).await;
                }
                Err(e) => return Err(e.into()),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: self.clone(),
                        base,
                        sender: None,
                        reuse: false,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => {
                    let unsent = e
                        .take_message()
                        .or_else(|| not_processed(e.error()).then(|| spare.take()).flatten());
                    // A stream the upstream reset for its own reasons leaves the
                    // connection be; a closed one, or one that takes no calls, goes.
                    if unsent.is_some() || sender.is_closed() {
                        self.forget_h2(base, id);
                    }
                    if unsent.is_none() && !repeatable && not_processed(e.error()) {
                        return Err(Box::new(Unprocessed(e.into_error())));
                    }
                    match unsent {
                        Some(r) if again => {
                            tracing::debug!(error = %e.error(), "HTTP/2 call not taken; sending it on a new connection");
                            again = false;
                            spare = if repeatable { replayable(&r) } else { None };
                            req = r;
                        }
                        _ => return Err(e.into_error().into()),
                    }
                }
            }
        }
    }

    /// This loop's HTTP/2 connection to `base`, made if there is none (or it closed).
    async fn h2_sender(self: &Arc<Self>, base: usize) -> Result<(u64, H2Sender), SharedError> {
        // A call that only joined another's connect, and saw it fail, makes one of its
        // own: the failure may be older than the call (a connect that stalled).
        match self.h2_sender_once(base).await {
            Err((_, true)) => self.h2_sender_once(base).await.map_err(|(e, _)| e),
            Err((e, false)) => Err(e),
            Ok(conn) => Ok(conn),
        }
    }

    /// One try at [`Pool::h2_sender`]; a failure says whether the call joined a
    /// connect another call had started.
    async fn h2_sender_once(
        self: &Arc<Self>,
        base: usize,
    ) -> Result<(u64, H2Sender), (SharedError, bool)> {
        let mut joined = false;
        let connecting = {
            let mut list = self.list().1.lock().unwrap_or_else(PoisonError::into_inner);
            if list.h2.len() < self.bases.len() {
                list.h2.resize_with(self.bases.len(), H2Slot::default);
            }
            match &list.h2[base] {
                H2Slot::Ready(id, s) if !s.is_closed() => return Ok((*id, s.clone())),
                H2Slot::Connecting(f) => {
                    joined = true;
                    f.clone()
                }
                _ => {
                    let bound = self.connect_bound;
                    let connect = self.clone().connect_h2(base);
                    let f = async move {
                        match tokio::time::timeout(bound, connect).await {
                            Ok(r) => r,
                            Err(_) => Err(SharedError(Arc::new(
                                format!(
                                    "no HTTP/2 connection within {}",
                                    humantime::format_duration(bound)
                                )
                                .into(),
                            ))),
                        }
                    }
                    .boxed()
                    .shared();
                    list.h2[base] = H2Slot::Connecting(f.clone());
                    f
                }
            }
        };
        let result = connecting.clone().await;
        let mut list = self.list().1.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = list.h2.get_mut(base)
            && matches!(slot, H2Slot::Connecting(f) if f.ptr_eq(&connecting))
        {
            *slot = match &result {
                Ok((id, s)) => H2Slot::Ready(*id, s.clone()),
                Err(_) => H2Slot::Empty,
            };
        }
        result.map_err(|e| (e, joined))
    }

    /// Drops this loop's HTTP/2 connection `id` to `base` (a call on it failed): the
    /// next call opens a new one. One made since by another call stays.
    fn forget_h2(&self, base: usize, id: u64) {
        let mut list = self.list().1.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = list.h2.get_mut(base)
            && matches!(slot, H2Slot::Ready(current, _) if *current == id)
        {
            *slot = H2Slot::Empty;
        }
    }

    /// Opens an HTTP/2 connection to `base` (h2c, or h2 by ALPN). A `h2` host that
    /// answers ALPN with HTTP/1.1 is called over HTTP/1.1 from then on (logged once):
    /// this connection goes to the idle list and the caller is told [`FELL_BACK`].
    async fn connect_h2(self: Arc<Self>, base: usize) -> Result<(u64, H2Sender), SharedError> {
        let shared = |e: BoxError| SharedError(Arc::new(e));
        let permit = self.permit().map_err(shared)?;
        let io = dial(&self.connector, &self.bases[base].origin)
            .await
            .map_err(shared)?;
        if self.protocol == Protocol::H2 && !io.connected().is_negotiated_h2() {
            if !self.fallback[base].swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    host = %self.bases[base].label(),
                    "upstream host offers no h2 in ALPN; calling it over HTTP/1.1"
                );
            }
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| shared(e.into()))?;
            tokio::spawn(async move {
                let _permit = permit;
                let _ = conn.await;
            });
            self.put(base, sender);
            return Err(shared(FELL_BACK.into()));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .handshake(io)
            .await
            .map_err(|e| shared(e.into()))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok((H2_IDS.fetch_add(1, Ordering::Relaxed), sender))
    }

    /// Gives a connection back for the next call on this loop.
    fn put(self: &Arc<Self>, base: usize, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let (slot, list) = self.list();
        let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.conns.len() >= MAX_IDLE {
            return;
        }
        let since = list.sweeps;
        list.conns.push(Idle {
            base,
            sender,
            since,
        });
        if !list.sweeping && tokio::runtime::Handle::try_current().is_ok() {
            list.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), slot));
        }
    }

    fn checkout(&self, base: usize) -> Option<Sender> {
        let mut list = self.list().1.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = list.conns.len();
        while i > 0 {
            i -= 1;
            let conn = &list.conns[i];
            if conn.sender.is_closed() {
                list.conns.remove(i);
            } else if conn.base == base && conn.sender.is_ready() {
                return Some(list.conns.remove(i).sender);
            }
        }
        None
    }

    async fn connect(&self, origin: &Uri) -> Result<Sender, BoxError> {
        let permit = self.permit()?;
        let io = dial(&self.connector, origin).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        // The connection's I/O runs on this loop, next to the calls that use it; its
        // descriptor is given back when it ends.
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

impl Pool {
    /// A descriptor for a new upstream connection, or [`Exhausted`].
    fn permit(&self) -> Result<Permit, BoxError> {
        self.descriptors
            .take(Holder::Upstream)
            .ok_or_else(|| Box::new(Exhausted) as BoxError)
    }
}

/// Opens a connection to `origin` (TCP, and TLS for https) with `connector`.
async fn dial(
    connector: &HttpsConnector<HttpConnector>,
    origin: &Uri,
) -> Result<hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>, BoxError>
{
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    connector.call(origin.clone()).await
}

/// Sending the request twice is harmless (RFC 9110 §9.2.2): an idempotent method, or a
/// POST the client marked with `idempotency-key`, as for retries (docs/configuration.md,
/// `retry`).
fn may_repeat(req: &Request<RequestBody>) -> bool {
    use http::Method;
    match *req.method() {
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS => true,
        Method::POST => req
            .headers()
            .contains_key(crate::base::forward::IDEMPOTENCY_KEY),
        _ => false,
    }
}

/// A call the upstream refused unprocessed (GOAWAY, REFUSED_STREAM) that is not sent
/// again because it may not be repeated.
#[derive(Debug)]
struct Unprocessed(hyper::Error);

impl std::fmt::Display for Unprocessed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream refused the call unprocessed, and it may not be repeated")
    }
}

impl std::error::Error for Unprocessed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The error, or one of its sources, is a refused call not sent again.
pub(super) fn is_unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<Unprocessed>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A copy of a request whose body is whole (or absent), to send again.
fn replayable(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let Body::Full(bytes) = req.body() else {
        return None;
    };
    let mut copy = Request::new(Body::Full(bytes.clone()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// The upstream did not process the stream (RFC 9113 §6.8, §8.7): it was above the
/// last stream id of a GOAWAY, or refused with REFUSED_STREAM. h2 fails a stream with
/// the remote GOAWAY's error only when it was above that id, or opened after the
/// GOAWAY came (so above it too); streams the upstream took and lost later fail with
/// the connection's I/O error instead, and are never sent again here.
fn not_processed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Closes a loop's connections idle past `IDLE_TIMEOUT`, looking every tenth of it
/// while any are idle. Holds the pool weakly: a reload that drops the upstream ends it.
async fn sweep(pool: Weak<Pool>, slot: usize) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / SWEEPS).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut list = pool.idle[slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.sweeps = list.sweeps.wrapping_add(1);
        let now = list.sweeps;
        list.conns
            .retain(|c| !c.sender.is_closed() && now.wrapping_sub(c.since) < SWEEPS);
        if list.conns.is_empty() {
            list.sweeping = false;
            return;
        }
    }
}
