//! The client span of one attempt (docs/operations.md#traces).

use http::{HeaderMap, StatusCode};
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;

use super::Try;
use super::Upstream;
use super::breaker::BreakerState;
use crate::base::body::ClientFault;
use crate::base::error::Failure;
use crate::telemetry::metrics::labels::CacheResult;
use crate::telemetry::trace::Pending;

/// An attempt's span, marked as cut short if the attempt is dropped before it ends;
/// `grpc`: a gRPC call's (its `rpc.grpc.status_code` is recorded at its end).
pub(super) struct ClientSpan(Pending, bool);

impl ClientSpan {
    /// The span of attempt `t` of `req`, to `t.base` of `up`, ending by `deadline`.
    pub(super) fn start<B>(
        up: &Upstream,
        t: &Try<'_>,
        req: &http::Request<B>,
        deadline: Instant,
    ) -> ClientSpan {
        let (method, target, attempt) = (req.method(), req.uri(), t.n);
        let base = &up.pool.bases()[t.base];
        let span = t.parent.child(t.span_name, SpanKind::Client, |a| {
            a.str("http.request.method", method.as_str());
            // Pieces that are strings already, so no formatting here.
            let uri = &base.origin;
            let full = (uri.scheme_str(), uri.authority(), target.path_and_query());
            if let (Some(scheme), Some(authority), Some(pq)) = full {
                a.concat(
                    "url.full",
                    &[scheme, "://", authority.as_str(), pq.as_str()],
                );
            }
            if let Some(host) = uri.host() {
                a.str("server.address", host);
            }
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            a.int("server.port", i64::from(port));
            a.str("manifold.upstream", &up.name);
            a.int("manifold.attempt", i64::from(attempt));
            if attempt > 1 {
                a.int("http.request.resend_count", i64::from(attempt - 1));
            }
            if t.cache_miss {
                a.str("manifold.cache", CacheResult::Miss.as_str());
            }
            if let Some(g) = t.grpc {
                a.str("rpc.system", "grpc");
                a.str("rpc.service", &g.service);
                a.str("rpc.method", &g.method);
            }
        });
        ClientSpan(Pending::new(span, deadline), t.grpc.is_some())
    }

    /// The breaker's state as this attempt met it: `closed` or `half_open` (the
    /// probe) when let through, `open` when refused.
    pub(super) fn breaker(&mut self, state: Option<BreakerState>) {
        if let Some(state) = state {
            self.0
                .span
                .record(|a| a.str("manifold.breaker.state", state.as_str()));
        }
    }

    /// Marks a hedged attempt.
    pub(super) fn hedge(&mut self) {
        self.0.span.record(|a| a.bool("manifold.hedge", true));
    }

    pub(super) fn inject(&self, headers: &mut HeaderMap) {
        self.0.span.inject(headers);
    }

    /// Ends a call the client's body failed: not an error of the upstream's.
    pub(super) fn client_fault(&mut self, fault: ClientFault) {
        let span = self.0.finish();
        if span.is_on() {
            span.record(|a| a.str("manifold.client_fault", fault.describe()));
            span.end();
        }
    }

    /// Records how the attempt went and ends the span.
    pub(super) fn finish(&mut self, result: Result<StatusCode, &Failure>) {
        let span = self.0.finish();
        if !span.is_on() {
            return;
        }
        // A gRPC call's code, when the upstream gave one (not for a call that never
        // got an answer).
        let code = match (self.1, &result) {
            (true, Ok(_)) => Some(0),
            (true, Err(Failure::Grpc(g))) => Some(g.code.0),
            _ => None,
        };
        if let Some(code) = code {
            span.record(|a| a.int("rpc.grpc.status_code", i64::from(code)));
        }
        match result {
            Ok(status) => {
                span.record(|a| a.int("http.response.status_code", i64::from(status.as_u16())));
            }
            Err(f) => {
                if let Failure::ServerError(s)
                | Failure::Rejected(s)
                | Failure::Passed { status: s, .. } = f
                {
                    span.record(|a| a.int("http.response.status_code", i64::from(s.as_u16())));
                }
                span.fail(f.outcome().as_str(), || f.describe());
            }
        }
        span.end();
    }
}
