//! Keep-alive HTTP/1.1 connections to one upstream, one idle list per worker loop.
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

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::body::{BoxError, RequestBody};

/// How long an unused connection stays open (give or take a tenth).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Sweeps per `IDLE_TIMEOUT`.
const SWEEPS: u32 = 10;
/// Idle connections kept per worker; more than this are closed when given back.
const MAX_IDLE: usize = 512;

type Sender = SendRequest<RequestBody>;

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
        let shown = crate::redact::url(url.as_str());
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
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// The upstream's `urls`, in order; a connection goes to one of them.
    bases: Vec<Base>,
    /// One list per worker loop.
    idle: Vec<Mutex<List>>,
}

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
    pub fn new(connector: HttpsConnector<HttpConnector>, bases: Vec<Base>, workers: usize) -> Self {
        Pool {
            connector,
            bases,
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn bases(&self) -> &[Base] {
        &self.bases
    }

    fn list(&self) -> (usize, &Mutex<List>) {
        let slot = crate::worker::index() % self.idle.len();
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
        let to = &self.bases[base];
        req.headers_mut().insert(header::HOST, to.host.clone());
        if let Some(auth) = &to.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
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
        req.headers_mut().insert(header::HOST, to.host.clone());
        if let Some(auth) = &to.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(to.origin.clone()).await?;
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
    /// answer (health probes: nothing shared with calls).
    pub async fn send_once(
        &self,
        base: usize,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let to = &self.bases[base];
        req.headers_mut().insert(header::HOST, to.host.clone());
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Some(auth) = &to.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        let mut sender = self.connect(&to.origin).await?;
        Ok(sender.send_request(req).await?)
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
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(origin.clone()).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        // The connection's I/O runs on this loop, next to the calls that use it.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
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
