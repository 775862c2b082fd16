//! Runs a route's backends as a dependency graph under the route deadline.
//!
//! Every backend starts as soon as the backends it reads from have answered; the rest
//! run concurrently from the start. A required backend's failure ends the request at
//! once (the calls still running are dropped, which cancels them).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;
use tokio::time::Instant;

use crate::budget::Charge;
use crate::cache::{Cache, Hints, Lookup};
use crate::error::{BackendError, Failure};
use crate::gateway::{Backend, Route, carries_body, is_idempotent};
use crate::merge::{self, Answer, lookup};
use crate::metrics::METRICS;
use crate::template::{Part, push_encoded};
use crate::trace::{Pending, Span};
use crate::upstream::CallSpec;
use opentelemetry::trace::SpanKind;

/// What a request brings to its backend calls.
pub struct Call<'a> {
    /// Headers every upstream call carries (already filtered).
    pub headers: &'a HeaderMap,
    /// The forwarded part of the client's query string.
    pub query: Option<&'a str>,
    /// The client's body and content-type, for backends whose method carries one.
    pub body: Option<(Bytes, HeaderValue)>,
    /// Decoded path parameters, in the route's order.
    pub params: &'a [String],
    /// The client sent `idempotency-key`, so its POST may be retried.
    pub idempotency_key: bool,
    /// The client-header part of cache and coalescing keys (see `cache::vary`).
    pub vary: &'a str,
    pub cache: &'a Cache,
    pub deadline: Instant,
    /// The server span: each backend's span goes under it.
    pub span: &'a Span,
    /// `buffer_capacity`, and the client connection's part of it (h2 connections).
    pub budget: &'a std::sync::Arc<crate::budget::Budget>,
    pub share: Option<&'a std::sync::Arc<crate::budget::Share>>,
}

/// How one backend went, for the access log and, later, metrics.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// Calls made (more than one when retried; 0 when the backend never called out).
    pub attempts: u32,
    /// For backends with `cache_ttl`: `hit` or `miss`.
    pub cache: Option<&'static str>,
    /// What the upstream's `cache-control` allows (for the route cache).
    pub hints: Hints,
}

pub type Slot = Option<Result<Answer, Failure>>;

pub struct Fanout {
    /// One per backend: `None` when it never ran (the request ended first).
    pub results: Vec<Slot>,
    pub reports: Vec<Option<Report>>,
    /// The first required backend to fail, which decides the request's error.
    pub required_failure: Option<BackendError>,
    /// The answers' bytes, held against `buffer_capacity` until the merge is done.
    pub charges: Vec<Charge>,
}

pub async fn run(route: &Route, call: &Call<'_>) -> Fanout {
    let n = route.backends.len();
    let mut out = Fanout {
        results: vec![None; n],
        reports: vec![None; n],
        required_failure: None,
        charges: Vec::new(),
    };
    // When each backend's call began (`None`: not started yet).
    let mut started: Vec<Option<Instant>> = vec![None; n];
    let mut running = FuturesUnordered::new();
    // One timer for the whole route, armed once (not per loop turn).
    let deadline = tokio::time::sleep_until(call.deadline);
    tokio::pin!(deadline);
    loop {
        // Start (or fail, when a dependency failed) every backend whose inputs are in.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for (i, b) in route.backends.iter().enumerate() {
                if started[i].is_some() || !b.deps.iter().all(|&d| out.results[d].is_some()) {
                    continue;
                }
                started[i] = Some(Instant::now());
                progressed = true;
                let span = backend_span(call.span, b);
                match render(route, b, call.params, call.query, &out.results) {
                    Ok(path) => {
                        let span = Pending::new(span, call.deadline);
                        running.push(call_backend(i, b, path, call, span));
                    }
                    Err(failure) => {
                        end_backend_span(&mut Pending::new(span, call.deadline), Err(&failure), 0);
                        out.reports[i] = Some(Report {
                            outcome: failure.outcome(),
                            status: None,
                            elapsed: Duration::ZERO,
                            attempts: 0,
                            cache: None,
                            hints: Hints::default(),
                        });
                        if settle(route, &mut out, i, Err(failure)) {
                            return out;
                        }
                    }
                }
            }
        }
        if running.is_empty() {
            return out;
        }
        let next = tokio::select! {
            biased;
            next = running.next() => Ok(next),
            () = &mut deadline => Err(()),
        };
        match next {
            Ok(Some((i, result, report, charge))) => {
                out.reports[i] = Some(report);
                out.charges.extend(charge);
                if settle(route, &mut out, i, result) {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(_) => {
                // The deadline passed: everything not yet answered timed out.
                let now = Instant::now();
                for (i, began) in started.iter().enumerate() {
                    if out.results[i].is_some() {
                        continue;
                    }
                    if let (Some(began), None) = (began, &out.reports[i]) {
                        out.reports[i] = Some(Report {
                            outcome: "timeout",
                            status: None,
                            elapsed: now - *began,
                            attempts: 1,
                            cache: None,
                            hints: Hints::default(),
                        });
                    }
                    if settle(route, &mut out, i, Err(Failure::Timeout)) {
                        return out;
                    }
                }
                return out;
            }
        }
    }
}

/// Records a result; true when a required backend failed and the request is over.
fn settle(route: &Route, out: &mut Fanout, i: usize, result: Result<Answer, Failure>) -> bool {
    let b = &route.backends[i];
    if let Err(failure) = &result
        && !b.optional
        && out.required_failure.is_none()
    {
        out.required_failure = Some(BackendError {
            backend: b.name.clone(),
            upstream: b.upstream.name.clone(),
            failure: failure.clone(),
        });
        out.results[i] = Some(result);
        return true;
    }
    out.results[i] = Some(result);
    false
}

/// The backend's path and query with parameters and fields filled in, or why not.
pub fn render(
    route: &Route,
    b: &Backend,
    params: &[String],
    query: Option<&str>,
    results: &[Slot],
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
                            dep: route.backends[*backend].name.clone(),
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
                            dep: route.backends[*backend].name.clone(),
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

pub fn backend_span(parent: &Span, b: &Backend) -> Span {
    parent.child(&b.backend_span, SpanKind::Internal, |a| {
        a.str("manifold.backend", &b.name);
        a.str("manifold.upstream", &b.upstream.name);
        if b.optional {
            a.bool("manifold.optional", true);
        }
    })
}

/// Records a backend's outcome on its span and ends it.
pub fn end_backend_span(pending: &mut Pending, result: Result<(), &Failure>, attempts: u32) {
    let span = pending.finish();
    if !span.is_on() {
        return;
    }
    span.record(|a| {
        a.int("manifold.attempts", i64::from(attempts));
        a.str(
            "manifold.outcome",
            result.map_or_else(Failure::outcome, |()| "ok"),
        );
    });
    if let Err(f) = result {
        span.fail(f.outcome(), || f.describe());
    }
    span.end();
}

async fn call_backend(
    i: usize,
    b: &Backend,
    path: String,
    call: &Call<'_>,
    mut span: Pending,
) -> (usize, Result<Answer, Failure>, Report, Option<Charge>) {
    let started = Instant::now();
    let body = if carries_body(&b.method) {
        call.body.as_ref()
    } else {
        None
    };
    // GETs are cached (with `cache_ttl`) and coalesced under one key.
    let key = (b.method == Method::GET)
        .then(|| format!("{}GET {path}{}", b.upstream.cache_prefix, call.vary));
    if let (Some(_), Some(key)) = (b.cache_ttl, &key)
        && let Lookup::Fresh(entry) = call.cache.lookup(key).await
    {
        let result = merge::decode(b, &entry.body);
        METRICS.cache_result("backend", "hit");
        span.span.record(|a| a.str("manifold.cache", "hit"));
        end_backend_span(&mut span, result.as_ref().map(|_| ()), 0);
        // A route answer built on this one must not outlive it.
        let left = entry.fresh_for.saturating_sub(entry.stored.elapsed());
        let report = Report {
            outcome: result.as_ref().map_or_else(Failure::outcome, |_| "ok"),
            status: None,
            elapsed: started.elapsed(),
            attempts: 0,
            cache: Some("hit"),
            hints: Hints {
                no_store: false,
                max_age: Some(left),
            },
        };
        return (i, result, report, None);
    }
    let cache_miss = b.cache_ttl.is_some() && key.is_some();
    if cache_miss {
        METRICS.cache_result("backend", "miss");
        span.span.record(|a| a.str("manifold.cache", "miss"));
    }
    let spec = CallSpec {
        method: &b.method,
        path: &path,
        headers: call.headers,
        body,
        deadline: call.deadline,
        retryable: is_idempotent(&b.method) || (b.method == Method::POST && call.idempotency_key),
        span: &span.span,
        span_name: &b.span_name,
        cache_miss,
        share: call.share,
    };
    let upstream_call = || b.upstream.call(&spec);
    let ((mut reply, mut attempts), mut made_call) = match &key {
        Some(key) => b.upstream.coalescer.run(key, upstream_call).await,
        None => (upstream_call().await, true),
    };
    // A shared call timed out on its leader's deadline; ours may be later.
    if !made_call && matches!(reply, Err(Failure::Timeout)) && Instant::now() < call.deadline {
        (reply, attempts) = upstream_call().await;
        made_call = true;
    }
    let mut hints = Hints::default();
    let mut held = None;
    let (status, result) = match reply {
        Ok((status, body, h, charge)) => {
            held = Some(charge);
            hints = h;
            let decoded = merge::decode(b, &body);
            // Only answers that decoded are kept: a bad body is not served again.
            if let (Some(ttl), Some(key), true, true) =
                (b.cache_ttl, key, made_call, decoded.is_ok())
            {
                call.cache
                    .store(key, body, h.ttl(ttl), Duration::ZERO)
                    .await;
            }
            (Some(status.as_u16()), decoded)
        }
        Err(f) => {
            let status = match &f {
                Failure::ServerError(s) | Failure::Rejected(s) => Some(s.as_u16()),
                _ => None,
            };
            (status, Err(f))
        }
    };
    let attempts = if made_call { attempts } else { 0 };
    if !made_call {
        // Its answer came from an identical call another request made.
        span.span.record(|a| a.bool("manifold.coalesced", true));
    }
    end_backend_span(&mut span, result.as_ref().map(|_| ()), attempts);
    let report = Report {
        outcome: result.as_ref().map_or_else(Failure::outcome, |_| "ok"),
        status,
        elapsed: started.elapsed(),
        // A coalesced caller made no call of its own.
        attempts,
        cache: b.cache_ttl.map(|_| "miss"),
        hints,
    };
    (i, result, report, held)
}
