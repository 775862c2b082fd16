//! `websocket = true` (docs/configuration.md#websocket-routes): an HTTP/1.1 `upgrade:
//! websocket` request, once the route's rate limit, token and CORS origin let it through, goes
//! to the upstream on a connection of its own; on the upstream's 101 the client gets the 101
//! and the two connections are spliced, bytes unchanged both ways, in a task of their own.
//! Any other answer is passed on as a passthrough answer.
//!
//! A tunnel ends when either side closes, when no byte has gone either way for the
//! route's `idle_timeout`, or when the drain's grace ends; then both connections are
//! closed. The route deadline bounds only the handshake. A tunnel keeps its client
//! connection's place under `max_connections` but not a place under the upstream's
//! `max_concurrency` (which bounds calls, and a tunnel is not one).
//!
//! No frame is parsed: each direction is a `copy_buf` through a small buffer, which
//! is most of what an idle tunnel costs (see docs/operations.md).

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::base::body::{Body, RequestBody};
use crate::base::error::GatewayError;
use crate::base::forward::{X_FORWARDED_HOST, X_REQUEST_ID};
use crate::request::gateway::Route;
use crate::request::outbound::Outbound;
use crate::request::passthrough;
use crate::request::wire::Answer;
use crate::state::connections::{TunnelHome, TunnelPlace};
use crate::state::descriptors::Holder;

/// Bytes each direction's copy reads at once: an idle tunnel holds two of these.
const SPLICE_BUFFER: usize = 4096;
/// How long both connections may take to be handed over after the 101.
const HANDOVER: Duration = Duration::from_secs(10);

/// The request asks to become a WebSocket (`upgrade: websocket`, HTTP/1.1).
pub fn is_upgrade(parts: &Parts) -> bool {
    parts.extensions.get::<TunnelHome>().is_some()
        && parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// The handshake's headers beyond what every call forwards
/// (docs/configuration.md#what-reaches-an-upstream): the client's `sec-websocket-*`
/// and `origin`, in place of any copy `forward_headers` already made (a repeated
/// `sec-websocket-key` fails the handshake at most servers).
fn handshake_headers(client: &HeaderMap, out: &mut HeaderMap) {
    let wanted = |name: &http::HeaderName| {
        name.as_str().starts_with("sec-websocket-") || name == header::ORIGIN
    };
    for name in client.keys().filter(|n| wanted(n)) {
        out.remove(name);
    }
    for (name, value) in client {
        if wanted(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// An upgrade request's connection side: the client's socket once hyper hands it over,
/// and the connection's place among the open ones.
pub struct Upgrading {
    client: Option<OnUpgrade>,
    home: Option<TunnelHome>,
}

/// Whether the request asks to become a WebSocket; refused when its route does not
/// tunnel.
pub fn wants_upgrade(route: &Route, parts: &Parts) -> Result<bool, GatewayError> {
    // Only HTTP/1.1 requests with an `upgrade` header carry the mark looked at here.
    let upgrade = is_upgrade(parts);
    if upgrade && route.websocket.is_none() {
        return Err(GatewayError::BadRequest {
            reason: "this route does not accept WebSocket upgrades",
        });
    }
    Ok(upgrade)
}

/// The request's upgrade, taken out of it for [`tunnel`].
pub fn take_upgrade(parts: &mut Parts) -> Upgrading {
    Upgrading {
        client: parts.extensions.remove::<OnUpgrade>(),
        home: parts.extensions.remove::<TunnelHome>(),
    }
}

/// Whether a page of `origin` may open a tunnel on `route`: the origins of its
/// `websocket.allow_origins`, else of its CORS; without either, only its own origin,
/// told by the `host` the request was sent to (or, from a trusted proxy, the
/// `x-forwarded-host` it names), as most WebSocket servers check it. A proxy that
/// terminates TLS changes the scheme, not the host, so the scheme is not compared.
///
/// A browser applies no CORS to WebSockets and sends its cookies with any page's
/// upgrade: without this check, any site could open one as its visitor (cross-site
/// WebSocket hijacking).
pub fn origin_allowed(
    route: &Route,
    origin: &HeaderValue,
    headers: &HeaderMap,
    via_proxy: bool,
) -> bool {
    if let Some(listed) = route.tunnel_origins.as_ref().or(route.cors.as_deref()) {
        return listed.allows(origin);
    }
    let Some(authority) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'))
    else {
        return false;
    };
    let same = |host: &[u8]| authority.as_bytes().eq_ignore_ascii_case(host);
    let forwarded = via_proxy
        .then(|| headers.get(X_FORWARDED_HOST))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    headers
        .get(header::HOST)
        .is_some_and(|h| same(h.as_bytes()))
        || forwarded.is_some_and(|h| same(h.as_bytes()))
}

/// Carries an upgrade request to the route's upstream; see the module docs.
pub async fn tunnel(mut out: Outbound<'_>, upgrading: Upgrading) -> Result<Answer, GatewayError> {
    let Upgrading {
        client: Some(client),
        home: Some(home),
    } = upgrading
    else {
        return Err(GatewayError::BadRequest {
            reason: "this connection cannot be upgraded",
        });
    };
    // A tunnel holds a second descriptor, its upstream side, for as long as it lasts:
    // past the tunnels' share of the descriptor limit it is refused here, before
    // any call.
    let upstream_descriptor = match &home.descriptors {
        Some(d) => Some(d.take(Holder::Tunnel).ok_or(GatewayError::NoDescriptor)?),
        None => None,
    };
    let (mut span, base, uri) = passthrough::begin(&mut out)?;
    let Outbound {
        route,
        parts,
        mut headers,
        deadline,
        record,
        ..
    } = out;
    let backend = &route.backends[0];
    let upstream = &backend.upstream;
    handshake_headers(&parts.headers, &mut headers);
    let mut req = Request::new(RequestBody::Full(None));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let tried = upstream
        .call_upgrade(base, req, deadline, &span.span, &backend.span_name)
        .await;
    let (mut resp, held) = passthrough::report(route, base, tried, record, &mut span)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: the client hears why, as the upstream said it.
        return Ok(passthrough::answer(resp, held, route, &record.request_id));
    }
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in resp.headers() {
        if name.as_str().starts_with("sec-websocket-") {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.headers_mut()
        .insert(X_REQUEST_ID, record.request_id.clone());
    let upstream_side = hyper::upgrade::on(&mut resp);
    // The client's socket outlives its connection's place once hyper hands it over:
    // counted from now (for a moment twice, never not at all).
    let client_descriptor = home
        .descriptors
        .as_ref()
        .map(|d| d.take_open(Holder::Connection));
    let gauge = route.websocket.clone();
    let idle = route.tunnel_idle;
    let name = route.name.clone();
    let request_id = record.request_id.clone();
    tokio::spawn(async move {
        let both =
            tokio::time::timeout(HANDOVER, async { tokio::try_join!(client, upstream_side) }).await;
        // Handed over: the call is done, its place under max_concurrency free.
        drop(held);
        drop(resp);
        let (client, upstream) = match both {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(
                    request_id = request_id.to_str().unwrap_or_default(),
                    route = %name,
                    error = %e,
                    "WebSocket handover failed"
                );
                return;
            }
            Err(_) => {
                tracing::debug!(
                    request_id = request_id.to_str().unwrap_or_default(),
                    route = %name,
                    "WebSocket handover timed out"
                );
                return;
            }
        };
        // Counted as a tunnel from here (its connection's own place goes as hyper lets
        // go of it): a drain ending now cuts a tunnel, not a request.
        let place = home.conns.tunnel([client_descriptor, upstream_descriptor]);
        if let Some(g) = &gauge {
            g.inc();
        }
        let ended = splice(client, upstream, idle, place).await;
        if let Some(g) = &gauge {
            g.dec();
        }
        tracing::debug!(
            route = %name,
            request_id = request_id.to_str().unwrap_or_default(),
            ended,
            "WebSocket tunnel closed"
        );
    });
    Ok(out)
}

/// Copies both ways until a side closes, `idle` passes with no byte either way, or
/// the drain cuts the tunnel; says which. Both connections are closed (dropped) when
/// it returns.
async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    idle: Duration,
    place: TunnelPlace,
) -> &'static str {
    let started = Instant::now();
    // Milliseconds since `started` of the last byte either way.
    let last = AtomicU64::new(0);
    let mut client = Active {
        io: TokioIo::new(client),
        last: &last,
        started,
    };
    let mut upstream = Active {
        io: TokioIo::new(upstream),
        last: &last,
        started,
    };
    let mut cut: watch::Receiver<bool> = place.cut.clone();
    let (client_read, mut client_write) = tokio::io::split(&mut client);
    let (upstream_read, mut upstream_write) = tokio::io::split(&mut upstream);
    let mut client_read = BufReader::with_capacity(SPLICE_BUFFER, client_read);
    let mut upstream_read = BufReader::with_capacity(SPLICE_BUFFER, upstream_read);
    let mut up = pin!(tokio::io::copy_buf(&mut client_read, &mut upstream_write));
    let mut down = pin!(tokio::io::copy_buf(&mut upstream_read, &mut client_write));
    let mut wake = started + idle;
    // Either side closing ends the tunnel: a WebSocket has no use for half a
    // connection. What was read before the close has been written by then.
    loop {
        tokio::select! {
            done = &mut up => return if done.is_ok() { "client_closed" } else { "error" },
            done = &mut down => return if done.is_ok() { "upstream_closed" } else { "error" },
            () = tokio::time::sleep_until(wake) => {
                let at = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if at + idle <= Instant::now() {
                    return "idle_timeout";
                }
                wake = at + idle;
            }
            _ = cut.wait_for(|cut| *cut) => return "drain",
        }
    }
}

/// One side of a tunnel, noting when bytes last moved.
struct Active<'a, T> {
    io: T,
    last: &'a AtomicU64,
    started: Instant,
}

impl<T> Active<'_, T> {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
