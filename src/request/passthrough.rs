//! `passthrough = true`: one upstream, bodies streamed both ways, never buffered.
//!
//! The request body is handed to the upstream as it arrives (capped at
//! `max_request_body`); the upstream's body is handed to the client the same way. The
//! route deadline bounds the wait for the response head; after that, the upstream's
//! `timeout` bounds each idle read, so a stalled upstream cannot pin a connection.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use crate::base::body::{Body, ClientBody, IdleTimeout, RequestBody};
use crate::base::error::{BackendError, Failure, GatewayError, Outcome};
use crate::base::forward::{
    CONDITIONAL, Forward, HOP_BY_HOP, X_REQUEST_ID, connection_named, content_length,
    is_forwarded_by_star, is_hop_by_hop,
};
use crate::request::backend;
use crate::request::gateway::Route;
use crate::request::outbound::{Inbound, Outbound};
use crate::request::wire::{Answer, Outgoing};
use crate::telemetry::access_log::{AccessRecord, Report};
use crate::telemetry::trace::Pending;
use crate::upstream::{Held, Streamed, Tried};

/// Sends the request to the route's one upstream, its body streamed; streams the
/// answer back.
pub async fn forward(mut out: Outbound<'_>, body: Inbound) -> Result<Answer, GatewayError> {
    // The body streams after the span ends.
    let (mut span, base, uri) = begin(&mut out)?;
    let Outbound {
        route,
        parts,
        mut headers,
        deadline,
        record,
        keep_whole,
        ..
    } = out;
    let backend = &route.backends[0];
    let upstream = &backend.upstream;
    // Revalidation, ranges and the client's codings go along whatever
    // `forward_headers` says: the upstream's validators and encodings pass back
    // unchanged, so only it can answer them.
    for (name, value) in &parts.headers {
        if passed_on(name) && !forwarded(&route.forward_headers, name) {
            headers.append(name.clone(), value.clone());
        }
        if (name == header::IF_MATCH || name == header::IF_RANGE)
            && route.wire.compression.is_some()
            && let Some(strong) = crate::request::wire::strengthened(value)
        {
            // The tag manifold weakened, made strong again (wire::strengthened).
            headers.remove(name);
            headers.insert(name.clone(), strong);
        }
    }
    let mut req = Request::new(RequestBody::Full(None));
    // HEAD on a GET route asks the upstream for the head alone.
    *req.method_mut() = if parts.method == Method::HEAD && backend.method == Method::GET {
        Method::HEAD
    } else {
        backend.method.clone()
    };
    *req.uri_mut() = uri;
    let mut watch = None;
    match body {
        // Read whole and checked by the route's `validate`: sent on as it came.
        Inbound::Read(Some((bytes, content_type))) => {
            headers.insert(header::CONTENT_TYPE, content_type);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            *req.body_mut() = RequestBody::Full(Some(bytes));
        }
        Inbound::Arriving(body) if !http_body::Body::is_end_stream(&body) => {
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                headers.insert(header::CONTENT_TYPE, ct.clone());
            }
            if let Some(len) = content_length(&parts.headers) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            let (body, w) = ClientBody::new(body, route.max_request_body);
            watch = Some(w);
            *req.body_mut() = RequestBody::Stream(body);
        }
        Inbound::Read(None) | Inbound::Arriving(_) => {}
    }
    *req.headers_mut() = headers;

    let tried = upstream
        .call_streamed(
            base,
            req,
            deadline,
            &span.span,
            &backend.span_name,
            watch.as_ref(),
        )
        .await;
    let (resp, held) = report(route, base, tried, record, &mut span)?;
    let out = answer(resp, held, route, &record.request_id);
    match keep_whole {
        Some(most) if keepable(&out, most) => whole(out, most, route).await,
        _ => Ok(out),
    }
}

/// An answer a request holding an idempotency key can keep: its length declared and
/// within `most`, and not in a content-coding (a replay sends what was kept, whatever
/// the replaying request accepts).
fn keepable(out: &Answer, most: u64) -> bool {
    content_length(out.headers()).is_some_and(|n| n <= most)
        && !out.headers().contains_key(header::CONTENT_ENCODING)
}

/// The answer read whole (a declared length, so bounded), to be kept.
async fn whole(out: Answer, most: u64, route: &Route) -> Result<Answer, GatewayError> {
    use http_body_util::BodyExt;
    let (parts, body) = out.into_parts();
    let limit = usize::try_from(most).unwrap_or(usize::MAX);
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| blame(route, Failure::BadResponse("the answer broke off")))?
        .to_bytes();
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// The client's headers a passthrough upstream always gets: its codings, and the
/// conditional and range headers ([`CONDITIONAL`]).
fn passed_on(name: &HeaderName) -> bool {
    name == header::ACCEPT_ENCODING || CONDITIONAL.contains(name)
}

/// `forward_headers` sent it already.
fn forwarded(forward: &Forward<HeaderName>, name: &HeaderName) -> bool {
    match forward {
        Forward::All => is_forwarded_by_star(name),
        Forward::Only(list) => list.contains(name),
    }
}

/// The failure of the route's one backend, blamed on it.
fn blame(route: &Route, failure: Failure) -> GatewayError {
    let backend = &route.backends[0];
    GatewayError::Backend(BackendError {
        backend: backend.plan.name.clone(),
        upstream: backend.upstream.name.clone(),
        failure,
    })
}

/// The route's one backend call begun: its span, which ends when the answer's head
/// is in (or the call failed), and where the call goes, its host and request target
/// (a failure is reported as the backend's).
pub(crate) fn begin(out: &mut Outbound<'_>) -> Result<(Pending, usize, http::Uri), GatewayError> {
    let route = out.route;
    let backend = &route.backends[0];
    let mut span = Pending::new(backend::span(out.span, backend), out.deadline);
    match backend::render(route, backend, &out.params, out.query.as_deref(), &[])
        .and_then(|path| backend.upstream.target(path, None))
    {
        Ok((base, uri)) => Ok((span, base, uri)),
        Err(f) => {
            let record = &mut *out.record;
            let report = Report::new(f.outcome(), None, std::time::Duration::ZERO, 0);
            let report = backend::end(
                &route.name,
                Some(&mut span),
                backend,
                &record.request_id,
                Some(&f),
                report,
            );
            record.backends.push((backend.plan.name.clone(), report));
            Err(blame(route, f))
        }
    }
}

/// Reports how the call went (access line, span) and hands back the answer, or the
/// failure that took its place.
pub(crate) fn report(
    route: &Route,
    base: usize,
    tried: Tried<(Response<Incoming>, Held)>,
    record: &mut AccessRecord,
    span: &mut Pending,
) -> Result<(Response<Incoming>, Held), GatewayError> {
    let backend = &route.backends[0];
    let status = tried
        .answer
        .as_ref()
        .map(|(resp, _)| resp.status().as_u16());
    let report = Report::new(
        Outcome::of(&tried.verdict),
        status,
        tried.elapsed,
        u32::from(tried.sent),
    );
    let mut report = report;
    report.host = Some(base);
    report.started = Some(tried.started);
    let failure = tried.verdict.as_ref().err();
    let report = backend::end(
        &route.name,
        Some(span),
        backend,
        &record.request_id,
        failure,
        report,
    );
    record.backends.push((backend.plan.name.clone(), report));
    match (tried.answer, tried.verdict) {
        (Some(answer), _) => Ok(answer),
        (None, Err(Failure::Client(fault))) => {
            Err(GatewayError::client(fault, route.max_request_body))
        }
        (None, Err(f)) => Err(blame(route, f)),
        (None, Ok(_)) => Err(blame(route, Failure::BadResponse("no answer"))),
    }
}

/// The upstream's answer as the client gets it: streamed, hop-by-hop headers gone,
/// with the request id.
pub(crate) fn answer(
    resp: Response<Incoming>,
    held: Held,
    route: &Route,
    request_id: &HeaderValue,
) -> Answer {
    let idle = route.backends[0].upstream.idle_timeout();
    let mut out = resp.map(|b| {
        Body::Stream(Outgoing::Plain(Streamed::new(
            IdleTimeout::new(b, idle),
            held,
        )))
    });
    // RFC 9112 §6.3: with `transfer-encoding`, `content-length` is not the length (the
    // chunked body was read as such); passed on, it would cut the body short.
    if out.headers().contains_key(header::TRANSFER_ENCODING) {
        out.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(out.headers_mut());
    out.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    out
}

/// Removes hop-by-hop headers, including any the `connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, then removals of only those present: most answers
    // carry none, or only `connection: keep-alive`. This runs per response.
    // Names are unique among `keys()`, so the list can hold every one found.
    let mut present: [Option<HeaderName>; HOP_BY_HOP.len()] = Default::default();
    let mut n = 0;
    for name in h.keys() {
        if is_hop_by_hop(name)
            && let Some(slot) = present.get_mut(n)
        {
            *slot = Some(name.clone());
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    let named: Vec<HeaderName> = connection_named(h).collect();
    for name in named {
        h.remove(name);
    }
    for name in present.into_iter().flatten() {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn strips_keep_alive_and_upgrade_and_leaves_clean_maps_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        h.append(header::CONNECTION, HeaderValue::from_static("x-internal"));
        h.insert("x-internal", HeaderValue::from_static("secret"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::ETAG]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
