//! A passthrough answer's body, streamed to the client as the upstream sends it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use super::hosts::Load;
use super::limit::Ticket;
use super::pool::Lease;
use crate::base::body::{BoxError, IdleTimeout};

/// What a streamed answer holds until its body ends: its place under
/// `max_concurrency`, and its connection.
pub struct Held {
    pub(super) _ticket: Option<Ticket>,
    pub(super) _conn: Lease,
    /// The call's count in its host's in-flight calls (least_request).
    pub(super) _load: Option<Load>,
}

/// The upstream's body on its way to the client. It keeps the call's place under the
/// upstream's `max_concurrency`, and its connection, until it ends; a silence longer
/// than the upstream's `timeout` fails it (see [`IdleTimeout`]).
pub struct Streamed {
    body: IdleTimeout<Incoming>,
    _held: Held,
}

impl Streamed {
    pub fn new(body: IdleTimeout<Incoming>, held: Held) -> Self {
        Streamed { body, _held: held }
    }
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
