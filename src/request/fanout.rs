//! Runs a route's backends as a dependency graph under the route deadline.
//!
//! Every backend starts as soon as the backends it reads from have answered; the rest
//! run concurrently from the start. A required backend's failure ends the request at
//! once (the calls still running are dropped, which cancels them).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method};
use tokio::time::Instant;

use crate::base::alloc::pin_in_place;
use crate::base::cache_control::Hints;
use crate::base::error::{BackendError, Failure, Outcome};
use crate::request::backend;
use crate::request::gateway::{Backend, Route, carries_body, is_idempotent};
use crate::request::merge::{self, Answer, Input};
use crate::state::buffers::{Buffers, Charge, Share};
use crate::state::cache::{Cache, Lookup};
use crate::telemetry::access_log::Report;
use crate::telemetry::metrics::METRICS;
use crate::telemetry::metrics::labels::{CacheKind, CacheResult};
use crate::telemetry::trace::{Pending, Span};
use crate::upstream::{CallSpec, Called, Retry};

/// What a request brings to its backend calls.
pub struct Call<'a> {
    /// The route's name, for log lines.
    pub route: &'a str,
    /// Headers every upstream call carries (already filtered).
    pub headers: &'a HeaderMap,
    /// The forwarded part of the client's query string.
    pub query: Option<&'a str>,
    /// The client's whole query string (`{query.NAME}` in gRPC messages reads it).
    pub client_query: Option<&'a str>,
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
    pub buffers: &'a Arc<Buffers>,
    pub share: Option<&'a Arc<Share>>,
    pub request_id: &'a HeaderValue,
}

pub struct Fanout {
    /// One per backend: `None` when it never ran (the request ended first).
    pub results: Vec<Input>,
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
                let now = Instant::now();
                started[i] = Some(now);
                progressed = true;
                let mut span = Pending::new(backend::span(call.span, b), call.deadline);
                let rendered = backend::render(route, b, call.params, call.query, &out.results)
                    .and_then(|path| {
                        let message = backend::message(
                            route,
                            b,
                            call.params,
                            call.client_query,
                            call.body.as_ref().map(|(body, _)| body),
                            &out.results,
                        )?;
                        Ok((path, message))
                    });
                match rendered {
                    Ok((path, message)) => {
                        running.push(call_backend(i, b, path, message, call, span, now));
                    }
                    Err(failure) => {
                        let mut report = Report::new(failure.outcome(), None, Duration::ZERO, 0);
                        report.started = started[i];
                        out.reports[i] = Some(backend::end(
                            &route.name,
                            Some(&mut span),
                            b,
                            call.request_id,
                            Some(&failure),
                            report,
                        ));
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
                        // Its call is cut short with the request (the span says so).
                        let mut report = Report::new(Outcome::Timeout, None, now - *began, 1);
                        report.started = Some(*began);
                        out.reports[i] = Some(backend::end(
                            &route.name,
                            None,
                            &route.backends[i],
                            call.request_id,
                            Some(&Failure::Timeout),
                            report,
                        ));
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
            backend: b.plan.name.clone(),
            upstream: b.upstream.name.clone(),
            failure: failure.clone(),
        });
        out.results[i] = Some(result);
        return true;
    }
    out.results[i] = Some(result);
    false
}

/// The parts one after the other, in a string allocated once.
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

async fn call_backend(
    i: usize,
    b: &Backend,
    path: String,
    message: Option<(Bytes, HeaderValue)>,
    call: &Call<'_>,
    mut span: Pending,
    started: Instant,
) -> (usize, Result<Answer, Failure>, Report, Option<Charge>) {
    let body = match &message {
        Some(m) => Some(m),
        None if carries_body(&b.method) => call.body.as_ref(),
        None => None,
    };
    // GETs, and gRPC methods without side effects (by their message), are cached
    // (with `cache_ttl`) and coalesced under one key.
    let grpc = b.codec.grpc();
    let key = match (grpc, &message) {
        (Some(g), Some((bytes, _))) if g.side_effect_free => Some(format!(
            "{}GRPC {path} {:032x}{}",
            b.upstream.cache_prefix,
            xxhash_rust::xxh3::xxh3_128(bytes),
            call.vary
        )),
        (Some(_), _) => None,
        // Joined by hand: `format!` grew the string piece by piece (three reallocations),
        // 3.6 % of a fan-out's instructions for three keys.
        (None, _) => (b.method == Method::GET)
            .then(|| concat(&[&b.upstream.cache_prefix, "GET ", &path, call.vary])),
    };
    let retry = match grpc {
        Some(g) if g.idempotent => Retry::GrpcIdempotent,
        Some(_) => Retry::Unprocessed,
        None if is_idempotent(&b.method) || (b.method == Method::POST && call.idempotency_key) => {
            Retry::Idempotent
        }
        None => Retry::Never,
    };
    // The cache's and the upstream's futures are boxed where they are awaited: held
    // inline they made this future 4.5 KB, which `FuturesUnordered::push` copied three
    // times per backend before it ever ran (5.6 % of a fan-out's instructions).
    if let (Some(ttl), Some(key)) = (b.cache_ttl, &key)
        && let Lookup::Fresh(entry) = pin_in_place(|| {
            call.cache.lookup(
                key,
                crate::state::cache::Longest {
                    fresh: ttl,
                    stale: Duration::ZERO,
                },
            )
        })
        .await
    {
        let result = merge::decode(&b.plan, &entry.body);
        METRICS.cache_result(CacheKind::Backend, CacheResult::Hit);
        span.span
            .record(|a| a.str("manifold.cache", CacheResult::Hit.as_str()));
        let mut report = Report::new(Outcome::of(&result), None, started.elapsed(), 0);
        report.cache = Some(CacheResult::Hit);
        report.started = Some(started);
        // A route answer built on this one must not outlive it.
        let left = entry.fresh_for.saturating_sub(entry.stored.elapsed());
        report.hints = Hints {
            no_store: false,
            max_age: Some(left),
        };
        let failure = result.as_ref().err();
        let report = backend::end(
            call.route,
            Some(&mut span),
            b,
            call.request_id,
            failure,
            report,
        );
        return (i, result, report, None);
    }
    let cache_miss = b.cache_ttl.is_some() && key.is_some();
    if cache_miss {
        METRICS.cache_result(CacheKind::Backend, CacheResult::Miss);
        span.span
            .record(|a| a.str("manifold.cache", CacheResult::Miss.as_str()));
    }
    let spec = CallSpec {
        method: &b.method,
        path: &path,
        headers: call.headers,
        body,
        deadline: call.deadline,
        retry,
        span: &span.span,
        span_name: &b.span_name,
        cache_miss,
        share: call.share,
        request_id: call.request_id,
        backend: &b.plan.name,
        codec: &b.codec,
        pass_errors: b.pass_errors,
    };
    let upstream_call = || pin_in_place(|| b.upstream.call_buffered(&spec));
    let (mut called, mut made_call) = match &key {
        Some(key) => b.upstream.coalescer.run(key, upstream_call).await,
        None => (upstream_call().await, true),
    };
    // A shared call timed out on its leader's deadline; ours may be later.
    if !made_call && matches!(called.reply, Err(Failure::Timeout)) && Instant::now() < call.deadline
    {
        called = upstream_call().await;
        made_call = true;
    }
    let Called {
        reply,
        attempts,
        host,
        trail,
    } = called;
    let mut hints = Hints::default();
    let mut held = None;
    let (status, result) = match reply {
        Ok((status, body, h, charge)) => {
            held = Some(charge);
            hints = h;
            let decoded = merge::decode(&b.plan, &body).and_then(|answer| match &b.answer_schema {
                Some(schema) => check_answer(schema, &body).map(|()| answer),
                None => Ok(answer),
            });
            // Only answers that decoded are kept: a bad body is not served again.
            if let (Some(ttl), Some(key), true, true) =
                (b.cache_ttl, key, made_call, decoded.is_ok())
            {
                pin_in_place(|| call.cache.store(key, body, h.ttl(ttl), Duration::ZERO)).await;
            }
            (Some(status.as_u16()), decoded)
        }
        Err(f) => {
            let status = match &f {
                Failure::ServerError(s)
                | Failure::Rejected(s)
                | Failure::Passed { status: s, .. } => Some(s.as_u16()),
                _ => None,
            };
            (status, Err(f))
        }
    };
    // A coalesced caller made no call of its own: its answer came from an identical
    // call another request made.
    let attempts = if made_call { attempts } else { 0 };
    if !made_call {
        span.span.record(|a| a.bool("manifold.coalesced", true));
    }
    let mut report = Report::new(Outcome::of(&result), status, started.elapsed(), attempts);
    report.cache = b.cache_ttl.map(|_| CacheResult::Miss);
    report.hints = hints;
    report.host = host;
    report.started = Some(started);
    report.coalesced = !made_call;
    if made_call {
        report.trail = trail;
    }
    let report = backend::end(
        call.route,
        Some(&mut span),
        b,
        call.request_id,
        result.as_ref().err(),
        report,
    );
    (i, result, report, held)
}

/// `validate_response`: the upstream's answer, as it came (before shaping), against the
/// backend's `schema`; the first mismatch fails the backend.
fn check_answer(schema: &jsonschema::Validator, body: &[u8]) -> Result<(), Failure> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| Failure::BadResponse("the body is not JSON"))?;
    match schema.iter_errors(&json).next() {
        None => Ok(()),
        Some(e) => Err(Failure::Mismatch {
            at: Arc::from(e.instance_path().to_string()),
            why: Arc::from(e.masked().to_string()),
        }),
    }
}
