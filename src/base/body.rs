//! Bodies: what the server sends a client, and what the client sends an upstream.
//!
//! Enums instead of boxed trait objects keep the hot paths free of an allocation per
//! message; the streamed variants carry passthrough bodies without buffering them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that is either buffered whole or streamed by `S`. One type for both
/// directions, so the buffered case (the hot path) is written once: a client's
/// answer streams an upstream's body (`upstream::Streamed`), an upstream's request a
/// passthrough client's ([`ClientBody`]), an admin answer nothing ([`Never`]).
pub enum Body<S> {
    Full(Option<Bytes>),
    Stream(S),
}

/// A stream that never exists: bodies that are always buffered.
pub enum Never {}

impl HttpBody for Never {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match *self.get_mut() {}
    }
}

/// A request body for an upstream: buffered, or a passthrough client's body, capped
/// at `max_request_body`.
pub type RequestBody = Body<ClientBody>;

impl<S> Body<S> {
    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl<S> From<Bytes> for Body<S> {
    fn from(b: Bytes) -> Self {
        Body::Full((!b.is_empty()).then_some(b))
    }
}

impl<S> From<Vec<u8>> for Body<S> {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl<S> From<&'static str> for Body<S> {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl<S> HttpBody for Body<S>
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
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(data) => data.is_none(),
            Body::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Stream(body) => body.size_hint(),
        }
    }
}

/// A failure the client caused while sending its request body. It is the client's,
/// never the upstream's: no breaker hears of it and no upstream error is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The body passed `max_request_body`.
    TooLarge,
    /// Malformed framing (a bad chunk, for instance).
    Malformed,
    /// The client closed the connection or reset the stream before its body ended.
    Gone,
    /// The body did not arrive before the deadline.
    Slow,
}

impl ClientFault {
    /// The fault behind a client body's read error.
    pub fn of(e: &hyper::Error) -> ClientFault {
        if e.is_incomplete_message() || e.is_canceled() || e.is_body_write_aborted() {
            return ClientFault::Gone;
        }
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                ) {
                    return ClientFault::Gone;
                }
            }
            cause = c.source();
        }
        ClientFault::Malformed
    }

    pub fn describe(self) -> &'static str {
        match self {
            ClientFault::TooLarge => "the client's body passed max_request_body",
            ClientFault::Malformed => "the client's body could not be read",
            ClientFault::Gone => "the client went away before its body ended",
            ClientFault::Slow => "the client's body did not arrive in time",
        }
    }
}

/// A passthrough client's body on its way upstream, capped at `max_request_body`.
///
/// It notes how reading it went, so that a failed upstream call can tell whether the
/// client caused it: a malformed, aborted, oversized or stalled upload is the client's
/// failure (400, 499, 413, 408), never the upstream's, so it must not open the breaker
/// every route shares or count as an upstream error. The note is shared with the
/// caller because hyper's connection task, not the call, owns the body once sent.
pub struct ClientBody {
    inner: Incoming,
    limit: u64,
    read: u64,
    watch: BodyWatch,
}

/// How reading a client's body is going, as seen from the upstream call.
#[derive(Clone)]
pub struct BodyWatch(Arc<AtomicU8>);

const READING: u8 = 0;
/// The last read found nothing: the upload waits on the client.
const WAITING: u8 = 1;
const DONE: u8 = 2;
const TOO_LARGE: u8 = 3;
const MALFORMED: u8 = 4;
const GONE: u8 = 5;

impl BodyWatch {
    /// Why the call failed, if the client's body was the cause. `timed_out`: the call
    /// ran out of time, which is the client's doing only while its upload was stalled.
    pub fn fault(&self, timed_out: bool) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            TOO_LARGE => Some(ClientFault::TooLarge),
            MALFORMED => Some(ClientFault::Malformed),
            GONE => Some(ClientFault::Gone),
            WAITING if timed_out => Some(ClientFault::Slow),
            _ => None,
        }
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64) -> (Self, BodyWatch) {
        let watch = BodyWatch(Arc::new(AtomicU8::new(READING)));
        let body = ClientBody {
            inner,
            limit,
            read: 0,
            watch: watch.clone(),
        };
        (body, watch)
    }

    fn note(&self, state: u8) {
        self.watch.0.store(state, Ordering::Release);
    }
}

/// Why a client's body could not be read to its end.
#[derive(Debug)]
pub struct ClientBodyError(pub ClientFault);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.describe())
    }
}

impl std::error::Error for ClientBodyError {}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.note(WAITING);
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.note(DONE);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.limit {
                        this.note(TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                            ClientFault::TooLarge,
                        )))));
                    }
                }
                this.note(READING);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = ClientFault::of(&e);
                this.note(match fault {
                    ClientFault::Gone => GONE,
                    _ => MALFORMED,
                });
                Poll::Ready(Some(Err(Box::new(ClientBodyError(fault)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a streamed body that stays silent for longer than `idle`, so a stalled
/// upstream cannot pin a client connection forever.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed at the first wait: most bodies arrive with the head and never need one.
    timer: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug)]
pub struct IdleTimedOut;

impl std::fmt::Display for IdleTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream body went idle")
    }
}

impl std::error::Error for IdleTimedOut {}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
        }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
