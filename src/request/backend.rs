//! One backend as its request sees it: the path rendered for it, its span, and how
//! it ended — the access log's report, the span's outcome and, for a failure, one log
//! line with its cause. Fan-out and passthrough both end every backend here, so a
//! failure reads the same whichever route kind met it.

use serde_json::Value;

use http::HeaderValue;
use opentelemetry::trace::SpanKind;

use crate::base::error::Failure;
use crate::base::template::{Part, push_encoded};
use crate::request::gateway::{Backend, Route};
use crate::request::merge::{Answer, Input, lookup};
use crate::telemetry::access_log::Report;
use crate::telemetry::trace::{Pending, Span};

/// The backend's path and query with parameters and fields filled in, or why not.
pub fn render(
    route: &Route,
    b: &Backend,
    params: &[String],
    query: Option<&str>,
    results: &[Input],
) -> Result<String, Failure> {
    let mut s = String::with_capacity(64);
    for part in &b.template.parts {
        match part {
            Part::Lit(l) => s.push_str(l),
            Part::Param(i) => push_encoded(&mut s, params.get(*i).map_or("", String::as_str)),
            Part::Field { backend, path } => {
                let dep = &results[*backend];
                let value = match dep {
                    Some(Ok(Answer::Value(v))) => v,
                    // Backends others read from always decode to a value (see gateway.rs).
                    Some(Ok(Answer::Raw(_))) => &Value::Null,
                    Some(Err(cause)) => {
                        return Err(Failure::Dependency {
                            dep: route.backends[*backend].plan.name.clone(),
                            cause: Box::new(cause.clone()),
                        });
                    }
                    None => return Err(Failure::Timeout),
                };
                match lookup(value, path) {
                    Some(Value::String(v)) => push_encoded(&mut s, v),
                    // The upstream's exact text (`arbitrary_precision`), encoded like
                    // every value: `1E+5` must not put a raw `+` in a query.
                    Some(Value::Number(n)) => push_encoded(&mut s, n.as_str()),
                    Some(Value::Bool(v)) => s.push_str(if *v { "true" } else { "false" }),
                    _ => {
                        return Err(Failure::MissingField {
                            dep: route.backends[*backend].plan.name.clone(),
                            field: path.join(".").into(),
                        });
                    }
                }
            }
        }
    }
    if let Some(q) = query {
        let mut sep = if s.contains('?') { '&' } else { '?' };
        if b.own_query.is_empty() {
            s.push(sep);
            s.push_str(q);
        } else {
            for pair in q.split('&') {
                let name = pair.split('=').next().unwrap_or("");
                let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                if !b.own_query.iter().any(|own| *own == name) {
                    s.push(sep);
                    s.push_str(pair);
                    sep = '&';
                }
            }
        }
    }
    Ok(s)
}

/// A gRPC backend's request message, filled and framed (`None` for an HTTP backend).
/// `values`: the path parameters and claims; `query`: the client's whole query;
/// `body`: the client's body.
pub fn message(
    route: &Route,
    b: &Backend,
    values: &[String],
    query: Option<&str>,
    body: Option<&bytes::Bytes>,
    results: &[Input],
) -> Result<Option<(bytes::Bytes, HeaderValue)>, Failure> {
    let (Some(m), Some(method)) = (&b.message, b.codec.grpc()) else {
        return Ok(None);
    };
    let names = |i: usize| route.backends[i].plan.name.clone();
    let inputs = crate::request::message::Inputs {
        values,
        query,
        results,
        body,
        names: &names,
        limit: route.max_request_body,
    };
    crate::request::message::render(m, method, &inputs).map(Some)
}

/// The backend's span, under the request's server span.
pub fn span(parent: &Span, b: &Backend) -> Span {
    parent.child(&b.backend_span, SpanKind::Internal, |a| {
        a.str("manifold.backend", &b.plan.name);
        a.str("manifold.upstream", &b.upstream.name);
        if b.optional {
            a.bool("manifold.optional", true);
        }
    })
}

/// Ends a backend: its outcome on its span, its failure's cause in the log (once, with
/// the request id), and its report for the access line. `failure` is what failed it,
/// if anything did (a streamed 5xx is passed on and still a failure).
pub fn end(
    route: &str,
    span: Option<&mut Pending>,
    b: &Backend,
    request_id: &HeaderValue,
    failure: Option<&Failure>,
    mut report: Report,
) -> Report {
    if let Some(done) = span.map(Pending::finish)
        && done.is_on()
    {
        done.record(|a| {
            a.int("manifold.attempts", i64::from(report.attempts));
            a.str("manifold.outcome", report.outcome.as_str());
        });
        // The client's own doing is not the backend's error.
        if let Some(f) = failure.filter(|f| !matches!(f, Failure::Client(_))) {
            done.fail(f.outcome().as_str(), || f.describe());
        }
        done.end();
    }
    if let Some(f) = failure {
        log_failure(route, b, request_id, f, &report);
        if b.upstream.console.is_some() {
            report.cause = Some(f.describe().into());
        }
    }
    report
}

/// One line per failed backend: `warn` when it fails the request on the upstream's
/// account, `info` when the backend is optional, the upstream said no (4xx) or a
/// guard shed the call (an open breaker's refusals would otherwise flood the log: the
/// breaker logs its own opening at `warn`), `debug` for a backend that could not run
/// because one it reads from failed (that one's line says why).
fn log_failure(route: &str, b: &Backend, request_id: &HeaderValue, f: &Failure, r: &Report) {
    // The `host:port` called, as /routes names it (none when no call was made).
    let host = r.host.map_or("", |i| b.upstream.hosts.label(i));
    let level = match f {
        Failure::Dependency { .. } => tracing::Level::DEBUG,
        Failure::Rejected(_)
        | Failure::Passed { .. }
        | Failure::CircuitOpen { .. }
        | Failure::Overloaded
        | Failure::BufferFull
        | Failure::NoDescriptor
        | Failure::Client(_) => tracing::Level::INFO,
        _ if b.optional => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = request_id.to_str().unwrap_or_default(),
                route,
                backend = &*b.plan.name,
                upstream = &*b.upstream.name,
                host,
                outcome = r.outcome.as_str(),
                status = r.status,
                attempts = r.attempts,
                elapsed_ms = r.elapsed.as_millis() as u64,
                optional = b.optional,
                cause = %f.describe(),
                "backend failed"
            )
        };
    }
    match level {
        tracing::Level::WARN => line!(tracing::Level::WARN),
        tracing::Level::INFO => line!(tracing::Level::INFO),
        _ => line!(tracing::Level::DEBUG),
    }
}
