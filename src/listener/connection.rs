//! One client connection and its bounds, on the public and the admin listener alike.
//!
//! A connection that costs descriptors and memory must also be doing something. Each
//! one is watched against four bounds (`[server]` keys, read at accept):
//!
//! - **`header_read_timeout`**: a new connection must send a whole request head within
//!   it, counted from accept (whatever the protocol turns out to be: a connection that
//!   sends nothing, or only the h2 preface, is closed); a kept-alive HTTP/1 connection
//!   likewise, counted from the first byte of its next head.
//! - **`idle_timeout`**: an HTTP/1 connection with no request, or an h2 connection with
//!   no open stream, is shut down gracefully after it (h2: GOAWAY).
//! - **`send_timeout`**: an answer the client takes none of for that long — its TCP
//!   window or h2 stream window stays shut — closes the connection, as nginx's
//!   `send_timeout` does. (hyper has no way to reset one h2 stream from outside, so the
//!   whole connection goes; it frees every answer the connection pins.)
//! - **`buffer_per_connection`**: what an h2 connection's requests buffer — answers
//!   being read and answers its client has not taken — counts against its own share of
//!   `buffer_capacity`; past it its new requests get 503 until it takes them, so one
//!   h2 client cannot pin the whole capacity.
//!
//! The requests keep a few counters per connection ([`Activity`]); one timer per
//! connection, in the connection's own task, acts on them. The request path reads no
//! clock except when a connection goes quiet. `max_connections` bounds how many are
//! open at once ([`Connections`]): past it a new connection is closed at once.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::base::alloc::pin_in_place;
use crate::base::body::{Body, BoxError};
use crate::base::forward::Peer;
use crate::config::ServerConfig;
use crate::request::handler::Crowded;
use crate::state::buffers::{Buffers, Charge, Share};
use crate::state::connections::Admitted;
use crate::telemetry::metrics::labels::CloseReason;

/// h2 streams one connection may have open at once (hyper's default is 200; nginx
/// allows 128): with `send_timeout`, this bounds what one connection can pin.
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The bounds one connection is held to, taken from `[server]` when it is accepted.
#[derive(Clone)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub send: Duration,
    /// Bytes one connection's requests may buffer (see [`crate::state::buffers::Share`]).
    pub per_connection: u64,
    pub max_header_size: usize,
    pub buffers: Arc<Buffers>,
    /// Some route takes WebSocket upgrades: connections are served with hyper's
    /// upgrade support (which costs every request a little, so only then).
    pub upgrades: bool,
}

impl Limits {
    pub fn new(server: &ServerConfig, buffers: Arc<Buffers>) -> Self {
        Limits {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
            send: server.send_timeout,
            per_connection: server.buffer_per_connection,
            max_header_size: usize::try_from(server.max_header_size).unwrap_or(usize::MAX),
            buffers,
            upgrades: false,
        }
    }
}

/// The hyper connection builder for these limits: HTTP/1.1 and h2c on one port. The
/// header-read bound is ours (see the module docs), so hyper's own timer is off. The
/// parsers stop heads at twice `max_header_size` (HTTP/1.1: the read buffer's size),
/// so the request handler sees every head up to the limit and some way past it, and
/// answers the ones over it with a JSON 414 or 431.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let hard = limits.max_header_size.saturating_mul(2);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(None)
        // The read buffer bounds a head (past it: a bare 431) and is what a half-sent
        // head costs; bodies stream through it in pieces.
        .max_buf_size(hard.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// `max_connections` when the config sets none: half the descriptor limit (which
/// manifold raises to its hard limit at start), leaving the other half for upstream
/// connections, the admin listener and files.
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 2).unwrap_or(usize::MAX).max(64)
}

// === impl Activity ===

/// What a connection's requests tell its watchdog. Times are milliseconds since the
/// connection was accepted, on tokio's clock.
pub struct Activity {
    accepted: Instant,
    /// Requests begun and not finished (their answer not yet dropped by hyper).
    open: AtomicU32,
    /// Requests begun in all.
    begun: AtomicU64,
    /// When `open` last fell to zero.
    quiet_since: AtomicU64,
    /// One more than when the first byte of a new HTTP/1 head arrived while quiet; 0:
    /// none since the last request began.
    head_since: AtomicU64,
    /// The connection speaks h2 (frames arrive whatever the requests do).
    h2: AtomicBool,
    /// Answers waiting for the client to take more, by the watchdog's epoch parity.
    waiting: [AtomicU32; 2],
    epoch: AtomicU32,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            accepted: Instant::now(),
            open: AtomicU32::new(0),
            begun: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            waiting: [AtomicU32::new(0), AtomicU32::new(0)],
            epoch: AtomicU32::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// A request begins; the guard ends it when dropped.
    fn begin(self: &Arc<Self>, version: Version) -> RequestGuard {
        if version == Version::HTTP_2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// A read of `n` bytes arrived: the start of a new HTTP/1 head, if the connection
    /// was quiet and none had started.
    fn on_read(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0
            && self.open.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn wait(&self) -> usize {
        let slot = (self.epoch.load(Ordering::Relaxed) % 2) as usize;
        self.waiting[slot].fetch_add(1, Ordering::Relaxed);
        slot
    }
}

/// A request's place in its connection's count, held by its answer until hyper drops it.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.quiet_since.store(a.now_ms(), Ordering::Relaxed);
        }
    }
}

// === impl Tracked ===

/// An answer on its way to the client: it tells the connection while it waits for
/// the client to take it, and holds its bytes against `buffer_capacity` (and the
/// connection's share of it) until hyper is done with it.
pub struct Tracked<S> {
    body: Body<S>,
    /// The most of a buffered answer handed to hyper at once.
    piece: usize,
    /// The epoch slot this answer waits in, while it waits on the client.
    waiting: Option<usize>,
    _charge: Option<Charge>,
    request: RequestGuard,
}

impl<S> Tracked<S>
where
    S: HttpBody<Data = Bytes> + Unpin,
    S::Error: Into<BoxError>,
{
    fn new(
        body: Body<S>,
        request: RequestGuard,
        buffers: &Arc<Buffers>,
        share: &Arc<Share>,
        version: Version,
    ) -> Self {
        let a = &request.0;
        let charge = match &body {
            Body::Full(Some(bytes)) => Some(buffers.charge(bytes.len() as u64, Some(share))),
            _ => None,
        };
        // Until hyper first polls it, the answer waits on the client: with an h2
        // stream window of zero, hyper never does.
        let waiting = (!body.is_end_stream()).then(|| a.wait());
        // h2 buffers up to 400 KB a stream beyond its window, for up to 100 streams:
        // pieces of one DATA frame keep that small. HTTP/1.1's write queue holds a few
        // pieces; larger ones there mean fewer, larger writes.
        let piece = if version == Version::HTTP_2 {
            16 << 10
        } else {
            64 << 10
        };
        Tracked {
            body,
            piece,
            waiting,
            _charge: charge,
            request,
        }
    }
}

impl<S> HttpBody for Tracked<S>
where
    S: HttpBody<Data = Bytes> + Unpin,
    S::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let a = &this.request.0;
        // Asked again: the frame before went out (hyper asks for the next one only once
        // it has sent the last, past the client's flow-control window).
        if let Some(slot) = this.waiting.take() {
            a.waiting[slot].fetch_sub(1, Ordering::Relaxed);
        }
        // A buffered answer goes out a piece at a time: given whole, hyper would move
        // all of it into its own write queue (HTTP/1.1) or into h2's send buffer at the
        // first byte of window, where neither `buffer_capacity` nor `send_timeout`
        // sees it. In pieces, what the client has not taken stays here, counted.
        let frame = match &mut this.body {
            Body::Full(Some(bytes)) if bytes.len() > this.piece => {
                Poll::Ready(Some(Ok(Frame::data(bytes.split_to(this.piece)))))
            }
            body => Pin::new(body).poll_frame(cx),
        };
        // A frame handed over waits on the client until hyper asks again or, if it was
        // the last, lets the answer go. Pending waits on the upstream, not the client.
        if matches!(frame, Poll::Ready(Some(Ok(_)))) {
            this.waiting = Some(a.wait());
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        let a = &self.request.0;
        if let Some(slot) = self.waiting.take() {
            a.waiting[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

// === impl Watched ===

/// The client's socket (or its TLS session), noting when a new HTTP/1 head starts to
/// arrive; what [`first_head`] read comes first.
struct Watched<I> {
    io: I,
    first: Bytes,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === the connection's task ===

/// Reads a new connection's first request head (or the h2 preface) into a buffer the
/// size of what arrived, as nginx does: a client that sends half a head, or nothing,
/// costs a small task and a few hundred bytes until `header_read_timeout`, where
/// hyper's connection would hold two 8 KB buffers. Stops at `limit` bytes (hyper then
/// refuses the head). `Err(true)`: no head by `deadline`.
async fn first_head(
    stream: &TcpStream,
    limit: usize,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<Bytes, bool> {
    let mut buf = BytesMut::new();
    let timer = tokio::time::sleep_until(deadline);
    let mut timer = pin!(timer);
    loop {
        tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return Err(false);
                }
            }
            () = &mut timer => return Err(true),
            _ = stop.changed() => return Err(false),
        }
        // Grows with what arrives: a few hundred bytes for most heads.
        buf.reserve(buf.len().max(512));
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Err(false),
            Ok(_) if head_is_in(&buf) || buf.len() >= limit => return Ok(buf.freeze()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(false),
        }
    }
}

/// A whole HTTP/1 head, or the start of the h2 preface (hyper takes h2 from there).
fn head_is_in(buf: &[u8]) -> bool {
    buf.starts_with(b"PRI ")
        || buf.windows(4).any(|w| w == b"\r\n\r\n")
        || buf.windows(2).any(|w| w == b"\n\n")
}

/// Why the watchdog ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Quiet for `idle_timeout`: shut down gracefully.
    Idle,
    /// No whole request head in time ([`CloseReason::HeaderTimeout`]), or an answer
    /// untaken for `send_timeout` ([`CloseReason::SendTimeout`]): close.
    Cut(CloseReason),
}

/// The watchdog's own state, next to the connection's [`Activity`].
struct Watchdog {
    limits: Limits,
    activity: Arc<Activity>,
    /// When the last send check ran (each check needs a full `send` since the last).
    last_tick: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Watchdog {
    /// When (ms since accept) the connection must next be looked at.
    fn next_check(&self) -> u64 {
        let a = &self.activity;
        if a.begun.load(Ordering::Relaxed) == 0 {
            return ms(self.limits.header_read);
        }
        if a.open.load(Ordering::Acquire) > 0 {
            return self.last_tick.saturating_add(ms(self.limits.send));
        }
        let idle = a
            .quiet_since
            .load(Ordering::Relaxed)
            .saturating_add(ms(self.limits.idle));
        match a.head_since.load(Ordering::Relaxed) {
            0 => idle,
            since => idle.min(since - 1 + ms(self.limits.header_read)),
        }
    }

    fn check(&mut self, now: u64) -> Verdict {
        let a = &self.activity;
        if a.begun.load(Ordering::Relaxed) == 0 {
            return if now >= ms(self.limits.header_read) {
                Verdict::Cut(CloseReason::HeaderTimeout)
            } else {
                Verdict::Keep
            };
        }
        if a.open.load(Ordering::Acquire) > 0 {
            if now < self.last_tick.saturating_add(ms(self.limits.send)) {
                return Verdict::Keep;
            }
            // Answers still waiting in the slot of the epoch before the current one
            // have waited at least one whole `send` (between one and two).
            let epoch = a.epoch.load(Ordering::Relaxed);
            let stale = ((epoch + 1) % 2) as usize;
            if a.waiting[stale].load(Ordering::Relaxed) > 0 {
                return Verdict::Cut(CloseReason::SendTimeout);
            }
            a.epoch.store(epoch.wrapping_add(1), Ordering::Relaxed);
            self.last_tick = now;
            return Verdict::Keep;
        }
        let head = a.head_since.load(Ordering::Relaxed);
        if head != 0 && now >= head - 1 + ms(self.limits.header_read) {
            return Verdict::Cut(CloseReason::HeaderTimeout);
        }
        if now >= a.quiet_since.load(Ordering::Relaxed) + ms(self.limits.idle) {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// How a listener serves a connection: the bounds and HTTP settings of the config
/// live when it was accepted, the drain signal, TLS (the public listener's, if any),
/// and the handler of its requests.
#[derive(Clone)]
pub struct Serving<F> {
    pub limits: Limits,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub stop: watch::Receiver<bool>,
    pub tls: Option<Arc<crate::listener::handshake::Handshakes>>,
    pub handler: F,
}

/// Serves one accepted connection until it ends, is ended by its bounds, or is
/// drained. With TLS, the handshake comes first and counts against
/// `header_read_timeout` like the head after it.
pub async fn serve<F, Fut, S>(
    stream: TcpStream,
    mut peer: Peer,
    place: Admitted,
    mut how: Serving<F>,
) where
    F: Fn(Request<Incoming>, Peer, Option<Arc<Share>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body<S>>> + Send + 'static,
    S: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    S::Error: Into<BoxError>,
{
    let activity = Activity::new();
    let metrics = &place.metrics();
    let deadline = activity.accepted + how.limits.header_read;
    let Some(acceptor) = how.tls.take() else {
        let limit = how.limits.max_header_size * 2;
        let first = match first_head(&stream, limit, deadline, &mut how.stop).await {
            Ok(head) => head,
            Err(timed_out) => {
                if timed_out {
                    metrics.closed(CloseReason::HeaderTimeout);
                }
                return;
            }
        };
        let io = Watched {
            io: stream,
            first,
            activity: activity.clone(),
        };
        return run(io, activity, peer, place, how).await;
    };
    // Boxed: a TLS session is kilobytes, and a plain connection's task must not carry
    // room for it (nor for the TLS variant of `run`).
    Box::pin(async move {
        let addr = peer.addr;
        let metrics = &place.metrics();
        let handshake = tokio::select! {
            r = acceptor.accept(stream) => r,
            () = tokio::time::sleep_until(deadline) => {
                metrics.closed(CloseReason::HeaderTimeout);
                return;
            }
            _ = how.stop.changed() => return,
        };
        let session = match handshake {
            Ok(session) => session,
            Err(e) => {
                // A scanner, a client that does not trust the certificate, plain HTTP
                // on the TLS port: the client's problem, counted, not logged above debug.
                metrics.closed(CloseReason::TlsHandshake);
                tracing::debug!(error = %e, peer = %addr, "TLS handshake failed");
                return;
            }
        };
        peer.tls = true;
        // The protocol ALPN chose is the one to speak: h2 negotiated and HTTP/1.1 sent
        // (or the reverse) is not served.
        let mut session = session;
        let h2 = session.get_ref().1.alpn_protocol() == Some(b"h2");
        let first = match first_bytes(&mut session, deadline, &mut how.stop).await {
            Ok(first) => first,
            Err(timed_out) => {
                if timed_out {
                    metrics.closed(CloseReason::HeaderTimeout);
                }
                return;
            }
        };
        if first.starts_with(H2_PREFACE) != h2 {
            metrics.closed(CloseReason::AlpnMismatch);
            tracing::debug!(peer = %addr, alpn_h2 = h2, "a TLS connection spoke another protocol than it negotiated");
            return;
        }
        let io = Watched {
            io: session,
            first,
            activity: activity.clone(),
        };
        run(io, activity, peer, place, how).await;
    })
    .await;
}

/// What an h2 connection sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a TLS connection's first bytes, until they are the whole h2 preface or
/// cannot be (HTTP/1). `Err(true)`: not enough by `deadline`.
async fn first_bytes<I: AsyncRead + Unpin>(
    io: &mut I,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<Bytes, bool> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        tokio::select! {
            read = io.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return Err(false),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => return Err(true),
            _ = stop.changed() => return Err(false),
        }
    }
    Ok(buf.freeze())
}

/// Serves the connection once it is readable as HTTP (plain, or TLS once shaken hands).
async fn run<I, F, Fut, S>(
    io: Watched<I>,
    activity: Arc<Activity>,
    peer: Peer,
    place: Admitted,
    how: Serving<F>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Peer, Option<Arc<Share>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body<S>>> + Send + 'static,
    S: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    S::Error: Into<BoxError>,
{
    let Serving {
        limits,
        builder,
        mut stop,
        handler,
        ..
    } = how;
    let metrics = &place.metrics();
    let addr = peer.addr;
    let service = {
        let home = place.home();
        let activity = activity.clone();
        let buffers = limits.buffers.clone();
        let share = Share::new(limits.per_connection);
        service_fn(move |mut req: Request<Incoming>| {
            let version = req.version();
            let request = activity.begin(version);
            if share.is_full() {
                req.extensions_mut().insert(Crowded);
            }
            // Only HTTP/1 upgrades: h2c upgrades are the listener's own business.
            if version == Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE) {
                req.extensions_mut().insert(home.clone());
            }
            // An HTTP/1.1 connection has one request at a time, bounded by its answers'
            // max_response_body; only h2 multiplexes enough to need the share.
            let own_share = (version == Version::HTTP_2).then(|| share.clone());
            // Boxed: the request future is kilobytes, and hyper moves what the service
            // returns twice on its way in; a pointer moves for free.
            let answer = pin_in_place(|| handler(req, peer.clone(), own_share));
            let (buffers, share) = (buffers.clone(), share.clone());
            async move {
                let resp = answer.await;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|body| Tracked::new(body, request, &buffers, &share, version)),
                )
            }
        })
    };
    // Boxed: made only once a head is in, so a connection that never sends one costs
    // a small task, not hyper's connection state.
    let upgrades = limits.upgrades;
    let mut conn = if upgrades {
        Served::Upgradeable(Box::pin(
            builder.serve_connection_with_upgrades(TokioIo::new(io), service),
        ))
    } else {
        Served::Plain(Box::pin(
            builder.serve_connection(TokioIo::new(io), service),
        ))
    };
    let mut dog = Watchdog {
        limits,
        activity: activity.clone(),
        last_tick: 0,
    };
    let mut armed = dog.next_check();
    let mut sleep = pin!(tokio::time::sleep_until(activity.at(armed)));
    let mut stopping = pin!(stop.changed());
    let mut draining = false;
    // After a graceful shutdown began: when to stop waiting for it.
    let mut closing_by: Option<u64> = None;
    loop {
        enum Step {
            Done(Result<(), BoxError>),
            Drain,
            Check,
        }
        let step = poll_fn(|cx| {
            if let Poll::Ready(r) = conn.poll(cx) {
                return Poll::Ready(Step::Done(r));
            }
            if !draining && stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Drain);
            }
            // A new head may have started since the timer was set: look sooner.
            if closing_by.is_none() {
                let want = dog.next_check();
                if want < armed {
                    armed = want;
                    sleep.as_mut().reset(activity.at(armed));
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Check);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Done(r) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, peer = %addr, "connection ended with an error");
                }
                return;
            }
            Step::Drain => {
                draining = true;
                conn.graceful_shutdown();
            }
            Step::Check => {
                let now = activity.now_ms();
                if let Some(by) = closing_by {
                    if now >= by {
                        // A graceful close that never finished (the client stopped
                        // reading): cut it.
                        return;
                    }
                    sleep.as_mut().reset(activity.at(by));
                    continue;
                }
                match dog.check(now) {
                    Verdict::Keep => {
                        armed = dog.next_check().max(now + 1);
                        sleep.as_mut().reset(activity.at(armed));
                    }
                    Verdict::Idle => {
                        metrics.closed(CloseReason::Idle);
                        conn.graceful_shutdown();
                        let by = now.saturating_add(ms(dog.limits.send));
                        closing_by = Some(by);
                        sleep.as_mut().reset(activity.at(by));
                    }
                    Verdict::Cut(reason) => {
                        metrics.closed(reason);
                        tracing::debug!(reason = reason.as_str(), peer = %addr, "closing a client connection");
                        return;
                    }
                }
            }
        }
    }
}

/// hyper's connection, with upgrade support or without.
enum Served<P, U> {
    Plain(Pin<Box<P>>),
    Upgradeable(Pin<Box<U>>),
}

impl<P, U> Served<P, U>
where
    P: GracefulConnection<Error = BoxError>,
    U: GracefulConnection<Error = BoxError>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Served::Plain(c) => c.as_mut().poll(cx),
            Served::Upgradeable(c) => c.as_mut().poll(cx),
        }
    }

    fn graceful_shutdown(&mut self) {
        match self {
            Served::Plain(c) => c.as_mut().graceful_shutdown(),
            Served::Upgradeable(c) => c.as_mut().graceful_shutdown(),
        }
    }
}
