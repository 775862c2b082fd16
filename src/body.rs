//! Bodies: what the server sends a client, and what the client sends an upstream.
//!
//! Enums instead of boxed trait objects keep the hot paths free of an allocation per
//! message; the streamed variants carry passthrough bodies without buffering them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body for the client.
pub enum Body {
    Full(Option<Bytes>),
    /// A passthrough route's upstream body, streamed as it arrives. The call holds its
    /// place under the upstream's `max_concurrency` until the body ends.
    Upstream(IdleTimeout<Incoming>, Option<crate::upstream::limit::Slot>),
}

impl Body {
    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full((!b.is_empty()).then_some(b))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Upstream(body, _) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(data) => data.is_none(),
            Body::Upstream(body, _) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Upstream(body, _) => body.inner.size_hint(),
        }
    }
}

/// A request body for an upstream.
pub enum RequestBody {
    Full(Option<Bytes>),
    /// A passthrough route's client body, capped at `max_request_body`.
    Stream(Limited<Incoming>),
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream(body) => body.size_hint(),
        }
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
}
