//! One attempt at an upstream, the one path every call takes: the guards, the call
//! within its deadline, then one verdict that the breaker, the metrics and the client
//! span all hear. A streamed call takes the answer as it comes; a buffered one reads
//! its body inside the same attempt (see [`Upstream::call_buffered`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::breaker::BreakerState;
use super::span::ClientSpan;
use super::stream::Held;
use super::{Try, Upstream};
use crate::base::body::RequestBody;
use crate::base::error::{Failure, Outcome};
use crate::state::buffers::{Buffers, Charge, Share};

/// The cause of an h2 call the upstream refused unprocessed and that may not be sent
/// again (see `pool::Unprocessed`): told apart from other connection failures, because
/// it is not held against the upstream.
const UNPROCESSED: &str =
    "the upstream refused the call unprocessed (GOAWAY or REFUSED_STREAM); it may not be repeated";

/// Whether the caller takes the answer as it streams or reads it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passthrough: any status is an answer to pass on (4xx and 5xx still count as
    /// failures), except an unsolicited 101.
    Streamed,
    /// Fan-out: the answer must be a 2xx, and its body is read within the attempt.
    Buffered,
    /// A WebSocket handshake: on a connection of its own, where a 101 is the answer
    /// hoped for (any other is passed on, like a streamed one).
    Upgrade,
}

/// How an attempt ended.
pub struct Tried<T> {
    /// What the caller gets: the answer, when there is one to use (a streamed 503 is an
    /// answer and a failure at once).
    pub answer: Option<T>,
    /// The verdict the breaker, the metrics and the span heard: the status, or why not.
    pub verdict: Result<StatusCode, Failure>,
    /// The call went past the guards (the breaker, limits and buffer capacity let it through).
    pub sent: bool,
    /// When it began, and how long it took.
    pub started: Instant,
    pub elapsed: Duration,
}

impl<T> Tried<T> {
    /// The answer, or the failure that took its place.
    pub fn into_result(self) -> Result<T, Failure> {
        match (self.answer, self.verdict) {
            (Some(answer), Ok(_)) => Ok(answer),
            (_, Err(f)) => Err(f),
            (None, Ok(_)) => Err(Failure::BadResponse("no answer")),
        }
    }
}

/// An answer's status as a verdict: 5xx and 4xx are failures, and so is a 101 that
/// nothing asked for; a buffered call wants a 2xx.
pub fn classify(status: StatusCode, mode: Mode) -> Result<StatusCode, Failure> {
    if status.is_server_error() {
        Err(Failure::ServerError(status))
    } else if status.is_client_error() {
        Err(Failure::Rejected(status))
    } else if status == StatusCode::SWITCHING_PROTOCOLS && mode == Mode::Upgrade {
        Ok(status)
    } else if status == StatusCode::SWITCHING_PROTOCOLS {
        Err(Failure::BadResponse(
            "an unsolicited 101 Switching Protocols",
        ))
    } else if mode == Mode::Buffered && status.is_redirection() {
        Err(Failure::BadResponse("a redirect"))
    } else if mode == Mode::Buffered && !status.is_success() {
        Err(Failure::BadResponse("an unexpected status"))
    } else {
        Ok(status)
    }
}

impl Upstream {
    /// One attempt: the guards (rate limit, `max_concurrency`, breaker; for a buffered
    /// call, room in `buffer_capacity`), the call until the attempt deadline with
    /// `then` taking the answer, and the verdict. With a breaker, the timer is the
    /// attempt's own even when it equals the route deadline, so the breaker hears of
    /// the timeout before the caller drops the call.
    pub(super) async fn attempt<T, F, Fut>(
        &self,
        mut req: Request<RequestBody>,
        t: Try<'_>,
        mode: Mode,
        then: F,
    ) -> Tried<T>
    where
        F: FnOnce(Response<Incoming>, Held) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let deadline = self.attempt_deadline(started, t.route_deadline);
        let mut span = ClientSpan::start(self, &t, &req, deadline);
        if t.hedge {
            span.hedge();
        }
        span.inject(req.headers_mut());
        // A limit shared in Redis is decided there first (boxed: only upstreams with
        // one carry that future).
        let shared = if self.shared_rate.is_some() {
            Box::pin(self.shared_rate()).await
        } else {
            None
        };
        let guards = if mode == Mode::Buffered && !self.buffers.has_room() {
            Err(Failure::BufferFull)
        } else {
            match shared {
                Some(Err(f)) => Err(f),
                decided => self.guards(decided.is_some()),
            }
        };
        span.breaker(match &guards {
            Ok((_, Some(permit))) => Some(permit.state()),
            Err(Failure::CircuitOpen { .. }) => Some(BreakerState::Open),
            // No breaker, or shed by a load guard before the breaker was asked.
            _ => self.breaker_state(),
        });
        let (ticket, permit) = match guards {
            Ok(g) => g,
            Err(f) => {
                let elapsed = started.elapsed();
                self.observe(f.outcome(), started, elapsed);
                span.finish(Err(&f));
                return Tried {
                    answer: None,
                    verdict: Err(f),
                    sent: false,
                    started,
                    elapsed,
                };
            }
        };
        let base = t.base;
        // No breaker needs to hear of a timeout, and the caller's timer already bounds
        // the call: one timer fewer per call on the hot path. (Each branch makes its
        // own future: one bound to a local first would be stored twice in this one.)
        let unbounded = permit.is_none() && t.bounded && deadline >= t.route_deadline;
        let load = self.hosts.start(base);
        let head = if mode == Mode::Upgrade {
            // Boxed: only tunnels carry this future.
            tokio::time::timeout_at(deadline, Box::pin(self.pool.send_upgrade(base, req))).await
        } else if unbounded {
            Ok(self.pool.send(base, req).await)
        } else {
            tokio::time::timeout_at(deadline, self.pool.send(base, req)).await
        };
        let (answer, verdict) = match head {
            Err(_) => (None, Err(Failure::Timeout)),
            Ok(Err(e)) if crate::state::descriptors::is_exhausted(&*e) => {
                (None, Err(Failure::NoDescriptor))
            }
            Ok(Err(e)) if super::pool::is_unprocessed(&*e) => {
                (None, Err(Failure::Connect(Arc::from(UNPROCESSED))))
            }
            Ok(Err(e)) => (None, Err(Failure::connect(&*e))),
            Ok(Ok((resp, lease))) => match classify(resp.status(), mode) {
                // `pass_errors`: the 4xx's body is the client's answer, if it is JSON.
                Err(Failure::Rejected(status)) if mode == Mode::Buffered && t.pass_errors => {
                    let kept = tokio::time::timeout_at(deadline, passed(resp, &self.buffers))
                        .await
                        .ok()
                        .flatten();
                    drop(lease);
                    let f = match kept {
                        Some(answer) => Failure::Passed {
                            status,
                            answer: Box::new(answer),
                        },
                        None => Failure::Rejected(status),
                    };
                    (None, Err(f))
                }
                // Nothing to read: the lease goes back now (a short error body is
                // usually in with the head, so the connection stays usable).
                Err(f) if mode == Mode::Buffered || matches!(f, Failure::BadResponse(_)) => {
                    (None, Err(f))
                }
                verdict => {
                    let held = Held {
                        _ticket: ticket,
                        _conn: lease,
                        _load: load,
                    };
                    // A streamed answer is taken as it is; a buffered one's body is
                    // read under the same deadline.
                    let taken = if mode != Mode::Buffered || unbounded {
                        then(resp, held).await
                    } else {
                        tokio::time::timeout_at(deadline, then(resp, held))
                            .await
                            .unwrap_or(Err(Failure::Timeout))
                    };
                    match taken {
                        Ok(answer) => (Some(answer), verdict),
                        Err(f) => (None, Err(f)),
                    }
                }
            },
        };
        // A transport error or timeout while the client's upload failed or stalled is
        // the client's doing.
        let verdict = match (verdict, t.client) {
            (Err(f @ (Failure::Connect(_) | Failure::Timeout)), Some(watch)) => {
                match watch.fault(f == Failure::Timeout) {
                    Some(fault) => Err(Failure::Client(fault)),
                    None => Err(f),
                }
            }
            (verdict, _) => verdict,
        };
        let elapsed = started.elapsed();
        if let Err(Failure::Client(fault)) = &verdict {
            // Dropped unrecorded: the breaker counts neither a success nor a fault, and
            // the upstream's metrics never see it.
            drop(permit);
            span.client_fault(*fault);
        } else if matches!(&verdict, Err(Failure::NoDescriptor))
            || matches!(&verdict, Err(Failure::Connect(c)) if &**c == UNPROCESSED)
        {
            // Not held against the upstream: the gateway's own descriptor limit stopped
            // the call before it was sent, or the upstream refused it unprocessed and
            // it may not be sent again (an h2 GOAWAY is how an upstream restarts
            // gracefully; the call failed for its method, not for the upstream).
            // Neither a success nor a fault for the breaker and the host; counted and
            // traced as what it was.
            drop(permit);
            self.observe(Outcome::of(&verdict), started, elapsed);
            span.finish(verdict.as_ref().copied());
        } else {
            let fault = matches!(&verdict, Err(f) if f.is_upstream_fault());
            if let Some(p) = permit {
                p.record(fault);
            }
            self.hosts.record(base, fault);
            self.observe(Outcome::of(&verdict), started, elapsed);
            span.finish(verdict.as_ref().copied());
        }
        Tried {
            answer,
            // A call the descriptor limit stopped never left: like a guard's refusal.
            sent: verdict != Err(Failure::NoDescriptor),
            verdict,
            started,
            elapsed,
        }
    }
}

/// The most of a 4xx body `pass_errors` passes on; a larger one is a plain
/// `UPSTREAM_REJECTED` (docs/configuration.md#errors-a-form-can-use).
pub const MAX_PASSED: u64 = 64 << 10;

/// A 4xx answer's body for `pass_errors`: JSON by its content-type and its bytes, its
/// content-encoding undone, within [`MAX_PASSED`]; `None` otherwise.
async fn passed(
    resp: Response<Incoming>,
    buffers: &Arc<Buffers>,
) -> Option<(Bytes, http::HeaderValue)> {
    let (head, incoming) = resp.into_parts();
    let content_type = head.headers.get(header::CONTENT_TYPE)?.clone();
    if !crate::base::forward::is_json(&content_type) {
        return None;
    }
    let (body, charge, _) = read_limited(&head.headers, incoming, MAX_PASSED, buffers, None)
        .await
        .ok()?;
    let body = super::codec::decode(&head.headers, body, MAX_PASSED, &charge).ok()?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&body).ok()?;
    Some((body, content_type))
}

/// Reads a whole body (and its trailers, if any), refusing one larger than `limit`
/// bytes without buffering it all, and one whose buffer would pass `buffer_capacity`
/// as it grows. What is charged is the memory taken, not the bytes read: a buffer
/// that doubles as an unannounced body arrives holds up to twice them (an announced
/// length is reserved exactly).
pub(super) async fn read_limited(
    headers: &http::HeaderMap,
    mut body: Incoming,
    limit: u64,
    buffers: &Arc<Buffers>,
    share: Option<&Arc<Share>>,
) -> Result<(Bytes, Charge, Option<http::HeaderMap>), Failure> {
    const TOO_LARGE: Failure = Failure::BadResponse("the body is larger than max_response_body");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(TOO_LARGE);
    }
    let charge = buffers.start(share);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    // A gRPC answer's status comes in its trailers.
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::connect(&e))?;
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        let total = buf.len() + first.as_ref().map_or(0, Bytes::len) + chunk.len();
        if total as u64 > limit {
            return Err(TOO_LARGE);
        }
        // Most JSON answers arrive in one chunk: keep it without copying.
        let held = match first.take() {
            None if buf.is_empty() => {
                first = Some(chunk);
                total
            }
            f => {
                let needed = f.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len();
                if buf.capacity() < needed {
                    buf.reserve(declared.map_or(needed, |d| d as usize).max(needed) - buf.len());
                }
                if let Some(f) = f {
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&chunk);
                buf.capacity()
            }
        };
        if !charge.grow((held as u64).saturating_sub(charge.bytes())) {
            return Err(Failure::BufferFull);
        }
    }
    let body = match first {
        Some(only) => only,
        // A buffer that doubled past the body is copied down to size, so the answer
        // holds (and is charged for) no more than itself while it waits to be merged.
        None if buf.capacity() > buf.len() + buf.len() / 4 => {
            let exact = Bytes::copy_from_slice(&buf);
            drop(buf);
            charge.shrink_to(exact.len() as u64);
            exact
        }
        None => buf.freeze(),
    };
    Ok((body, charge, trailers))
}
