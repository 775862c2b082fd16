//! The request handler: one client request through a route — match, check, fan out
//! (or stream), merge, answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::alloc::pin_in_place;
use crate::base::body::Body;
use crate::base::cache_control::Hints;
use crate::base::error::{BackendError, CLIENT_CLOSED_REQUEST, Failure, GatewayError};
use crate::base::forward::{self, Peer, X_MANIFOLD_CACHE, X_MANIFOLD_COMPLETED, X_REQUEST_ID};
use crate::edge::validation::Validation;
use crate::request::fanout::{self, Call};
use crate::request::gateway::{Gateway, Live, Route};
use crate::request::outbound::{Inbound, Outbound, decode_params, read_body};
use crate::request::router::{Match, Params};
use crate::request::wire::{self, Answer, Asked, Counted, Made, Outgoing};
use crate::request::{merge, passthrough, websocket};
use crate::state::buffers::{Charge, Share};
use crate::state::cache::{self, Through};
use crate::telemetry::access_log::{self, AccessRecord, Deferred, Report};
use crate::telemetry::metrics::METRICS;
use crate::telemetry::metrics::labels::{CacheKind, CacheResult};
use crate::telemetry::trace::{self, Span};

const IDENTITY: HeaderValue = HeaderValue::from_static("identity");

/// A marker in the request's extensions: its connection holds more than its share of
/// `buffer_capacity`, so the request is refused (503) before it costs more.
#[derive(Clone, Copy, Debug)]
pub struct Crowded;

/// Serves one request on the public listener. Never fails: errors become responses.
/// `share`: on h2, the connection's part of `buffer_capacity` (see
/// [`crate::state::buffers`]), which what its requests buffer counts against.
pub async fn handle(
    live: Arc<Live>,
    req: Request<Incoming>,
    peer: Peer,
    share: Option<Arc<Share>>,
) -> Answer {
    let gateway = live.gateway.load_full();
    let request_id = forward::request_id(req.headers());
    let mut span = match &gateway.tracing {
        Some(t) => t.server_span(req.method(), req.headers()),
        None => Span::none(),
    };
    if span.is_on() {
        let version = match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        // An address fits in 45 bytes; formatted on the stack.
        let mut ip = [0u8; 48];
        let ip_len = {
            use std::io::Write;
            let mut w = &mut ip[..];
            let _ = write!(w, "{}", peer.addr.ip());
            48 - w.len()
        };
        let client = std::str::from_utf8(&ip[..ip_len]).unwrap_or_default();
        span.record(|a| {
            a.str("url.path", req.uri().path());
            a.str("url.scheme", if peer.tls { "https" } else { "http" });
            a.str("network.protocol.version", version);
            a.str("client.address", client);
            a.str(
                "manifold.request_id",
                request_id.to_str().unwrap_or_default(),
            );
        });
    }
    let access_log = gateway.config.telemetry.access_log;
    let trace_id = match span.trace_id() {
        Some(id) => Some(id),
        // Tracing off: the client's trace id still ties the line to its trace.
        None if access_log => trace::client_trace_id(req.headers()),
        None => None,
    };
    let record = AccessRecord {
        method: req.method().clone(),
        // Only paid for when the line is written.
        path: if access_log {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        route: None,
        route_index: None,
        status: 0,
        duration: Default::default(),
        request_id: request_id.clone(),
        trace_id,
        error: None,
        partial: false,
        cache: None,
        auth: None,
        encoding: None,
        validation_failed: false,
        idempotency: None,
        backends: Vec::new(),
        // Who asked, read only when a line will say so.
        client: access_log.then(|| {
            crate::edge::ratelimit::client_ip(
                req.headers(),
                peer.addr.ip(),
                &gateway.config.server.trusted_proxies,
            )
        }),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .filter(|_| access_log)
            .map(|ua| {
                let text = String::from_utf8_lossy(ua.as_bytes());
                let mut end = text.len().min(access_log::MAX_USER_AGENT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text[..end].to_string()
            }),
        bytes: None,
    };
    let head = req.method() == Method::HEAD;
    let asked = Asked::of(req.method(), req.headers(), peer.tls);
    // Looked at only when some route has CORS: a gateway without it pays nothing.
    let (origin, preflight) = if gateway.any_cors {
        let h = req.headers();
        let preflight = req.method() == Method::OPTIONS
            && h.contains_key(header::ORIGIN)
            && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        (h.get(header::ORIGIN).cloned(), preflight)
    } else {
        (None, false)
    };
    let mut done = Finish::new(live, gateway.clone(), record, span);
    let served = if gateway.redis.is_some() {
        // Boxed: held inline, the deadline's scope around `serve` made every request's
        // future 1.3 KB larger, gateways without Redis included (hyper boxes and
        // copies it whole per request).
        pin_in_place(|| {
            crate::state::redis::with_redis_deadline(serve(
                &gateway,
                req,
                peer,
                share.as_ref(),
                &mut done,
            ))
        })
        .await
    } else {
        serve(&gateway, req, peer, share.as_ref(), &mut done).await
    };
    let (response, made) = match served {
        // An h2 connection whose client leaves its answers unread gets no more than its
        // share pinned: an answer that would pass it is let go, and 503 sent instead.
        Ok(r)
            if share
                .as_ref()
                .is_some_and(|s| s.would_pass(buffered_len(&r))) =>
        {
            let e = GatewayError::Crowded;
            done.record.error = Some(e.code());
            (e.into_response(&request_id), Made::Own)
        }
        Ok(r) => {
            let made = match done.record.route_index.map(|i| &gateway.routes[i]) {
                _ if preflight && r.status() == StatusCode::NO_CONTENT => Made::Own,
                Some(route) if route.passthrough => Made::Upstream,
                Some(_) => Made::Merged,
                None => Made::Own,
            };
            (r, made)
        }
        Err(e) => {
            done.record.error = Some(e.code());
            (e.into_response(&request_id), Made::Own)
        }
    };
    // The key this request held decides by its answer: kept when final, else freed.
    if let Some(held) = done.idempotency.take()
        && let Some(idem) = done
            .record
            .route_index
            .and_then(|i| gateway.routes[i].idempotency.as_ref())
    {
        let max = gateway.idempotency.max_entry();
        // Boxed: only requests that hold a key carry this future.
        done.record.idempotency = Some(pin_in_place(|| idem.settle(*held, &response, max)).await);
    }
    let wire = match done.record.route_index {
        Some(i) => &gateway.routes[i].wire,
        None => &gateway.wire,
    };
    let mut response = wire::finish(wire, &asked, made, response, &mut done.record);
    done.record.status = response.status().as_u16();
    // Every answer of a route with CORS, errors included, except a preflight's own 204.
    if gateway.any_cors
        && let Some(cors) = done
            .record
            .route_index
            .and_then(|i| gateway.routes[i].cors.as_deref())
        && !(preflight && response.status() == StatusCode::NO_CONTENT)
    {
        cors.decorate(origin.as_ref(), response.headers_mut());
    }
    if head {
        // The GET answer's headers, with the length it would have, and no body.
        if let Body::Full(Some(bytes)) = response.body() {
            let len = HeaderValue::from(bytes.len());
            response.headers_mut().insert(header::CONTENT_LENGTH, len);
            *response.body_mut() = Body::empty();
        }
    }
    done.record.bytes = match response.body() {
        Body::Full(body) => Some(body.as_ref().map_or(0, |b| b.len() as u64)),
        Body::Stream(_) if head => Some(0),
        Body::Stream(_) => response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    // A stream of no declared length: its line waits for its end, to say its bytes.
    if done.record.bytes.is_none() && gateway.config.telemetry.access_log {
        let line = Deferred::new(
            done.live.log_sink.clone(),
            gateway.config.telemetry.log_format,
        );
        done.deferred = Some(line.clone());
        response = response.map(|body| match body {
            Body::Stream(s) => Body::Stream(Outgoing::Counted(Box::new(Counted::new(s, line)))),
            full => full,
        });
    }
    response
}

/// A CORS preflight (docs/configuration.md#cors), answered here: it reaches no upstream, needs no
/// token and is not rate limited. `None` when the request is not one, or the route it
/// asks about has no CORS (then the OPTIONS request is routed like any other).
fn preflight(
    gateway: &Gateway,
    parts: &http::request::Parts,
    record: &mut AccessRecord,
) -> Result<Option<Answer>, GatewayError> {
    let h = &parts.headers;
    let (Some(origin), Some(wanted)) = (
        h.get(header::ORIGIN),
        h.get(header::ACCESS_CONTROL_REQUEST_METHOD),
    ) else {
        return Ok(None);
    };
    let path = parts.uri.path();
    let Ok(wanted) = Method::from_bytes(wanted.as_bytes()) else {
        return Err(GatewayError::CorsRejected);
    };
    let (route, served) = match gateway.router.find(&wanted, path) {
        Match::NotFound => return Err(GatewayError::RouteNotFound),
        Match::Found { route, .. } => (route, true),
        Match::MethodNotAllowed { route, .. } => (route, false),
    };
    let r = &gateway.routes[route];
    let Some(cors) = &r.cors else {
        return Ok(None);
    };
    record.route_index = Some(route);
    record.route = Some(r.name.clone());
    if !served || !cors.allows(origin) {
        return Err(GatewayError::CorsRejected);
    }
    let methods = allowed_methods(gateway, path, origin).ok_or(GatewayError::CorsRejected)?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    cors.preflight(origin, &methods, resp.headers_mut());
    resp.headers_mut()
        .insert(X_REQUEST_ID, record.request_id.clone());
    Ok(Some(resp))
}

/// `access-control-allow-methods` for `origin` at `path`: the methods whose own route
/// allows that origin (HEAD where GET is). A browser caches a preflight's answer per
/// listed method, so a method whose route refuses the origin must not be listed: its
/// request would later go out without a preflight of its own.
fn allowed_methods(gateway: &Gateway, path: &str, origin: &HeaderValue) -> Option<HeaderValue> {
    let routes = gateway.router.routes_at(path);
    let mut listed: Vec<&str> = Vec::new();
    for (method, route) in routes {
        if gateway.routes[*route]
            .cors
            .as_deref()
            .is_some_and(|c| c.allows(origin))
        {
            listed.push(method.as_str());
        }
    }
    // HEAD is answered by the GET route unless a route serves HEAD itself (and then
    // that route's CORS decided above).
    if listed.contains(&"GET") && !routes.iter().any(|(m, _)| m == Method::HEAD) {
        listed.push("HEAD");
    }
    HeaderValue::from_str(&listed.join(", ")).ok()
}

/// Bytes of a buffered answer (0 for a streamed one).
fn buffered_len(r: &Answer) -> u64 {
    match r.body() {
        Body::Full(Some(b)) => b.len() as u64,
        _ => 0,
    }
}

/// Counts, measures and logs a request however it ends: answered, or dropped midway
/// (client gone, HTTP/2 stream reset, drain cut short) — then with status 499, as
/// nginx logs a client that closed the request.
pub struct Finish {
    live: Arc<Live>,
    gateway: Arc<Gateway>,
    pub record: AccessRecord,
    /// The server span; it ends with the request.
    pub span: Span,
    /// When the request came in: the route deadline counts from here.
    pub started: Instant,
    /// The idempotency key this request holds in flight, settled with its answer (or
    /// freed when the request is dropped). Boxed: every request's future holds this
    /// field, and most never use it.
    idempotency: Option<Box<crate::edge::idempotency::Held>>,
    /// Where the access line goes when the answer's stream ends (a stream of no
    /// declared length), instead of now.
    deferred: Option<Arc<Deferred>>,
}

impl Finish {
    fn new(live: Arc<Live>, gateway: Arc<Gateway>, record: AccessRecord, span: Span) -> Self {
        METRICS.inflight.inc();
        Finish {
            live,
            gateway,
            record,
            span,
            started: Instant::now(),
            idempotency: None,
            deferred: None,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        METRICS.inflight.dec();
        if self.record.status == 0 {
            self.record.status = CLIENT_CLOSED_REQUEST.as_u16();
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let status = self.record.status;
        if self.span.is_on() {
            self.span
                .record(|a| a.int("http.response.status_code", i64::from(status)));
            if status >= 500 {
                // A passthrough route streams the upstream's own 5xx: no error code of
                // ours, so the status names the error (the semantic conventions' rule).
                let status_text = status.to_string();
                let code = self.record.error.unwrap_or(&status_text);
                self.span.fail(code, || format!("answered {status} {code}"));
            } else if status == CLIENT_CLOSED_REQUEST.as_u16() {
                self.span.fail("cancelled", || {
                    "the client went away before the answer".to_owned()
                });
            }
            let (cache, partial, auth) = (self.record.cache, self.record.partial, self.record.auth);
            self.span.record(|a| {
                if let Some(c) = cache {
                    a.str("manifold.cache", c.as_str());
                }
                if let Some(r) = auth {
                    a.str("manifold.auth", r.as_str());
                }
                if partial {
                    a.bool("manifold.partial", true);
                }
            });
            self.span.end();
        }
        let secs = elapsed.as_secs_f64();
        let route = self.record.route_index.map(|i| &self.gateway.routes[i]);
        let metrics = match route {
            Some(route) => &route.metrics,
            None => METRICS.unmatched(),
        };
        if let Some(route) = route {
            crate::request::record::finished(&self.gateway, route, &self.record, self.started, now);
        }
        metrics.observe(&self.record.method, status, secs);
        let telemetry = &self.gateway.config.telemetry;
        if telemetry.access_log {
            self.record.duration = elapsed;
            match self.deferred.take() {
                Some(line) => line.put(self.record.clone()),
                None => access_log::write(&self.live.log_sink, telemetry.log_format, &self.record),
            }
        }
    }
}

/// The steps of one request, in the order it meets them; each may end it with an
/// answer or an error.
async fn serve(
    gateway: &Gateway,
    req: Request<Incoming>,
    peer: Peer,
    share: Option<&Arc<Share>>,
    done: &mut Finish,
) -> Result<Answer, GatewayError> {
    let (mut parts, body) = req.into_parts();
    // 1. The head: well-formed, within bounds, its connection not over its share.
    check_head(&parts, gateway.config.server.max_header_size)?;
    if parts.extensions.get::<Crowded>().is_some() {
        return Err(GatewayError::Crowded);
    }
    // 2. A CORS preflight, answered here.
    if gateway.any_cors
        && parts.method == Method::OPTIONS
        && let Some(answer) = preflight(gateway, &parts, &mut done.record)?
    {
        return Ok(answer);
    }
    // 3. The route.
    let (route, raw_params) = find_route(gateway, &parts, done)?;
    // 4. An upgrade only where the route tunnels.
    let upgrade = websocket::wants_upgrade(route, &parts)?;
    // 5. The rate limit; with `[shared]`, the route's cache entry is read in its
    //    round trip.
    let prefetched = rate_limit(gateway, route, &parts, &peer).await?;
    // 6. The token, after the rate limit (a flood of bad tokens is limited) and
    //    before the cache (a cached answer never reaches a client whose token
    //    failed); then a limit keyed on its claims. Boxed: a key fetch may be
    //    awaited in there, and a route without auth must not carry (and copy) that
    //    future's room.
    let claims = match &route.auth {
        None => None,
        Some(auth) => pin_in_place(|| authorize(route, auth, &parts.headers, done)).await?,
    };
    // 7. What goes upstream.
    let mut params = decode_params(raw_params.iter())?;
    let upgrading = upgrade.then(|| websocket::take_upgrade(&mut parts));
    if forward::content_length(&parts.headers).is_some_and(|n| n > route.max_request_body) {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_request_body,
        });
    }
    // 8. The request against the route's schemas (the token's claims are not in
    //    `params` yet: only what the client sent is checked). A body schema reads the
    //    body whole first. Boxed: only routes with `validate` carry that future.
    let body = match (&route.validation, &route.idempotency) {
        (None, None) => Inbound::Arriving(body),
        (v, i) => {
            // Idempotency fingerprints the body: it is read whole first too.
            let read =
                upgrading.is_none() && (i.is_some() || v.as_ref().is_some_and(|v| v.reads_body()));
            pin_in_place(|| read_and_validate(v.as_ref(), route, &parts, &params, body, read, done))
                .await?
        }
    };
    // 9. The idempotency key, after the token and validation: a replay needs both.
    if let Some(idem) = &route.idempotency
        && upgrading.is_none()
    {
        let identity = match &route.auth {
            Some(_) => claims
                .as_deref()
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
            None => cache::vary(&parts.headers, &route.forward_headers),
        };
        let bytes = match &body {
            Inbound::Read(Some((b, _))) => Some(b),
            _ => None,
        };
        let request = crate::edge::idempotency::Request {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            body: bytes,
        };
        let begun = pin_in_place(|| {
            idem.begin(
                &gateway.idempotency,
                &parts.headers,
                &identity,
                request,
                route.deadline,
                &mut done.record.idempotency,
            )
        })
        .await?;
        match begun {
            crate::edge::idempotency::Begun::Replay(kept) => {
                return Ok(crate::edge::idempotency::replay(
                    &kept,
                    &done.record.request_id,
                ));
            }
            crate::edge::idempotency::Begun::Proceed(held) => {
                done.idempotency = held.map(Box::new);
            }
        }
    }
    let mut headers = forward::upstream_headers(
        &parts.headers,
        &route.forward_headers,
        &done.record.request_id,
        &peer,
    );
    let identity = match &route.auth {
        None => String::new(),
        Some(auth) => auth.apply(claims.as_deref(), &mut params, &mut headers),
    };
    drop(claims);
    let keep_whole = done
        .idempotency
        .is_some()
        .then(|| gateway.idempotency.max_entry());
    let out = Outbound {
        route,
        parts: &parts,
        headers,
        query: forward::forwarded_query(parts.uri.query(), &route.forward_query),
        params,
        identity,
        deadline: done.started + route.deadline,
        share,
        keep_whole,
        record: &mut done.record,
        span: &mut done.span,
    };
    // 10. Sent as the route's kind says: a tunnel, one streamed call, or a fan-out.
    if let Some(upgrading) = upgrading {
        if let Some(origin) = parts.headers.get(header::ORIGIN) {
            let peer_ip = peer.addr.ip().to_canonical();
            let via_proxy = gateway
                .config
                .server
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer_ip));
            if !websocket::origin_allowed(route, origin, &parts.headers, via_proxy) {
                return Err(GatewayError::CorsRejected);
            }
        }
        return Box::pin(websocket::tunnel(out, upgrading)).await;
    }
    // Each kind's future is boxed: they are kilobytes (the pool checkout, the attempt,
    // the merge), and inline they would make the request's own future that large,
    // which hyper copies whole when it boxes it, and every level above copies again.
    // One allocation is cheaper: boxing the pass-through call took a pass-through
    // request from 66,350 to 55,899 instructions (benches/callgrind.sh), most of the
    // difference memcpy. Boxed where made, so not even the box's own fill is a copy.
    if route.passthrough {
        return pin_in_place(|| passthrough::forward(out, body)).await;
    }
    pin_in_place(|| aggregate(gateway, out, body, prefetched)).await
}

/// The route the request's method and path name, noted for its access line, span
/// and metrics; 404 or 405 when there is none.
fn find_route<'g, 'p>(
    gateway: &'g Gateway,
    parts: &'p http::request::Parts,
    done: &mut Finish,
) -> Result<(&'g Route, Params<'g, 'p>), GatewayError> {
    let record = &mut done.record;
    let (route, params) = match gateway.router.find(&parts.method, parts.uri.path()) {
        Match::Found { route, params } => {
            record.route_index = Some(route);
            (&gateway.routes[route], params)
        }
        Match::NotFound => return Err(GatewayError::RouteNotFound),
        Match::MethodNotAllowed { allow, route } => {
            record.route_index = Some(route);
            record.route = Some(gateway.routes[route].name.clone());
            return Err(GatewayError::MethodNotAllowed { allow });
        }
    };
    record.route = Some(route.name.clone());
    done.span.rename(&route.span_name);
    done.span.record(|a| a.str("http.route", &route.template));
    Ok((route, params))
}

/// The route's rate limit (429 past it). With `[shared]`, a limited route's cache
/// entry is read in the limit's round trip when its key is known now (no token's
/// claims in it): handed back for the route cache.
async fn rate_limit(
    gateway: &Gateway,
    route: &Route,
    parts: &http::request::Parts,
    peer: &Peer,
) -> Result<Option<cache::Prefetched>, GatewayError> {
    let Some(limiter) = &route.limiter else {
        return Ok(None);
    };
    let trusted = &gateway.config.server.trusted_proxies;
    let mut prefetched = None;
    let decided = if limiter.is_shared() {
        let cache_key = (route.cache.is_some()
            && route.auth.is_none()
            && !route.passthrough
            && parts.method == Method::GET
            && gateway.cache.shared_up())
        .then(|| {
            let query = forward::forwarded_query(parts.uri.query(), &route.forward_query);
            let vary = cache::vary(&parts.headers, &route.forward_headers);
            cache::route_key(
                &route.cache_prefix,
                parts.uri.path(),
                query.as_deref(),
                &vary,
            )
        });
        // Boxed: only routes whose limit lives in Redis carry that future.
        let (decided, entry) = pin_in_place(|| {
            limiter.check_shared(
                &parts.headers,
                peer.addr.ip(),
                trusted,
                cache_key.as_deref(),
            )
        })
        .await;
        prefetched = entry;
        decided
    } else {
        limiter.check(&parts.headers, peer.addr.ip(), trusted)
    };
    decided.map_err(|retry_after| {
        route.metrics.rate_limited();
        GatewayError::RateLimited { retry_after }
    })?;
    Ok(prefetched)
}

/// The route's token check within its deadline (docs/configuration.md#authjwtname), noted
/// for the access line; then a rate limit keyed on a claim, which needs the token.
async fn authorize(
    route: &Route,
    auth: &crate::edge::auth::Auth,
    headers: &HeaderMap,
    done: &mut Finish,
) -> Result<crate::edge::auth::Claims, GatewayError> {
    let (checked, result) = auth.authorize(headers, done.started + route.deadline).await;
    done.record.auth = Some(result);
    let claims = checked?;
    if let Some(limiter) = &route.limiter {
        limiter
            .check_claims(claims.as_deref())
            .await
            .map_err(|retry_after| {
                route.metrics.rate_limited();
                GatewayError::RateLimited { retry_after }
            })?;
    }
    Ok(claims)
}

/// The body read whole within the deadline when `read` (a `body` schema or an
/// idempotency fingerprint needs it), then the route's `validate` schemas, if any
/// (docs/configuration.md#request-validation); a refusal is noted for the access line.
async fn read_and_validate(
    v: Option<&Validation>,
    route: &Route,
    parts: &http::request::Parts,
    params: &[String],
    body: Incoming,
    read: bool,
    done: &mut Finish,
) -> Result<Inbound, GatewayError> {
    let read = if read {
        let deadline = done.started + route.deadline;
        let read = tokio::time::timeout_at(
            deadline,
            read_body(&parts.headers, body, route.max_request_body),
        )
        .await
        .map_err(|_| GatewayError::RequestTimeout)??;
        Inbound::Read(read)
    } else {
        Inbound::Arriving(body)
    };
    // A tunnel's upgrade has no body to check.
    let bytes = match &read {
        Inbound::Read(Some((b, _))) => Some(Some(b)),
        Inbound::Read(None) => Some(None),
        Inbound::Arriving(_) => None,
    };
    if let Some(v) = v
        && let Err(e) = v.check(params, parts.uri.query(), &parts.headers, bytes)
    {
        done.record.validation_failed = true;
        return Err(e);
    }
    Ok(read)
}

/// A fan-out route: reads the client's body, fans out, merges, through the route cache.
async fn aggregate(
    gateway: &Gateway,
    out: Outbound<'_>,
    body: Inbound,
    prefetched: Option<cache::Prefetched>,
) -> Result<Answer, GatewayError> {
    let Outbound {
        route,
        parts,
        mut headers,
        query,
        params,
        identity,
        deadline,
        share,
        record,
        span,
        keep_whole: _,
    } = out;
    // A client trickling its body must not hold the answer past the deadline either.
    // (Made inside the call that awaits it: bound to a local first, it would be
    // stored twice in this future.)
    let body = match body {
        Inbound::Read(read) => Ok(read.filter(|_| route.wants_body)),
        Inbound::Arriving(body) => Err(body),
    };
    let client_body = tokio::time::timeout_at(deadline, async {
        let body = match body {
            Ok(read) => return Ok(read),
            Err(body) => body,
        };
        if route.wants_body {
            read_body(&parts.headers, body, route.max_request_body).await
        } else if !http_body::Body::is_end_stream(&body) {
            // No backend takes it, but an oversized (chunked) body is still refused.
            read_body(&parts.headers, body, route.max_request_body)
                .await
                .map(|_| None)
        } else {
            Ok(None)
        }
    })
    .await
    .map_err(|_| GatewayError::RequestTimeout)??;
    // An encoded answer would be decoded anyway; asking for none saves the upstream
    // the work, unless the route forwards the client's own wish.
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        headers.insert(header::ACCEPT_ENCODING, IDENTITY);
    }
    let mut vary = cache::vary(&parts.headers, &route.forward_headers);
    // Claims that reach upstreams are part of every cache key, like forwarded headers.
    vary.push_str(&identity);
    let request_id = record.request_id.clone();
    if route.reads_query
        && let Some(q) = parts.uri.query()
    {
        vary.push_str("|q=");
        vary.push_str(q);
    }
    let call = Call {
        route: &route.name,
        headers: &headers,
        query: query.as_deref(),
        client_query: parts.uri.query(),
        body: client_body,
        params: &params,
        deadline,
        idempotency_key: parts.headers.contains_key(forward::IDEMPOTENCY_KEY),
        vary: &vary,
        cache: &gateway.cache,
        span,
        buffers: &gateway.buffers,
        share,
        request_id: &request_id,
    };
    let Some(cache_config) = &route.cache else {
        let fetched = merged(route, &call, record).await?;
        return Ok(json_response(fetched, &request_id, None));
    };
    let key = cache::route_key(
        &route.cache_prefix,
        parts.uri.path(),
        query.as_deref(),
        &vary,
    );
    let through = gateway
        .cache
        .through(key, prefetched, cache_config, merged(route, &call, record))
        .await;
    let verdict = through.result();
    record.cache = Some(verdict);
    METRICS.cache_result(CacheKind::Route, verdict);
    match through {
        Through::Hit(body) => Ok(json_response(cached(body), &request_id, Some(verdict))),
        Through::Miss(fetched) => Ok(json_response(fetched, &request_id, Some(verdict))),
        Through::Stale(body, e) => {
            tracing::warn!(
                request_id = request_id.to_str().unwrap_or_default(),
                route = %route.name,
                error = e.code(),
                "serving a stale answer"
            );
            Ok(json_response(cached(body), &request_id, Some(verdict)))
        }
        Through::Failed(e) => {
            record.error = Some(e.code());
            let mut resp = e.into_response(&request_id);
            resp.headers_mut()
                .insert(X_MANIFOLD_CACHE, HeaderValue::from_static(verdict.as_str()));
            Ok(resp)
        }
    }
}

/// Fans out and merges: the body, whether it is complete, and what the answers'
/// `cache-control` allows.
async fn merged(
    route: &Route,
    call: &Call<'_>,
    record: &mut AccessRecord,
) -> Result<cache::Fetched, GatewayError> {
    let fan = fanout::run(route, call).await;
    // One backend: its answer is the route's, status included (`201 Created`).
    let status = match &fan.reports[..] {
        [
            Some(Report {
                status: Some(s @ (201..=203 | 207..=299)),
                ..
            }),
        ] => StatusCode::from_u16(*s).unwrap_or(StatusCode::OK),
        // (204 and 205 carry no body, 206 a range of one: never a merged answer's.)
        _ => StatusCode::OK,
    };
    let hints = fan
        .reports
        .iter()
        .flatten()
        .fold(Hints::default(), |acc, r| acc.join(r.hints));
    record.backends = reports(route, fan.reports);
    let first_failure = match fan.results.first() {
        Some(Some(Err(f))) => f.clone(),
        _ => Failure::Timeout,
    };
    if let Some(e) = fan.required_failure {
        return Err(GatewayError::Backend(e));
    }
    // The merged body is about as large as the answers it is made of: room for it
    // first, while the answers are still held, or 503 instead of growing memory.
    let size: u64 = fan.charges.iter().map(Charge::bytes).sum();
    let room = call.buffers.start(call.share);
    if !room.grow(size) {
        return Err(GatewayError::BufferFull);
    }
    // None answered: the route fails as if its first backend were required.
    let Some((bytes, completed)) = merge::assemble(route.plans(), fan.results) else {
        let first = &route.backends[0];
        return Err(GatewayError::Backend(BackendError {
            backend: first.plan.name.clone(),
            upstream: first.upstream.name.clone(),
            failure: first_failure,
        }));
    };
    record.partial = !completed;
    Ok(cache::Fetched {
        body: Bytes::from(bytes),
        completed,
        hints,
        status,
    })
}

/// A stored answer: complete, and a 200 (the only kind kept).
fn cached(body: Bytes) -> cache::Fetched {
    cache::Fetched {
        body,
        completed: true,
        hints: Hints::default(),
        status: StatusCode::OK,
    }
}

fn json_response(
    fetched: cache::Fetched,
    request_id: &HeaderValue,
    cache: Option<CacheResult>,
) -> Answer {
    let cache::Fetched {
        body,
        completed,
        status,
        ..
    } = fetched;
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    // Room for what the answer gets on its way out (wire, CORS) without the map
    // growing and rehashing on the way.
    *resp.headers_mut() = HeaderMap::with_capacity(12);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID, request_id.clone());
    h.insert(
        X_MANIFOLD_COMPLETED,
        HeaderValue::from_static(if completed { "true" } else { "false" }),
    );
    if let Some(c) = cache {
        h.insert(X_MANIFOLD_CACHE, HeaderValue::from_static(c.as_str()));
    }
    resp
}

fn reports(route: &Route, reports: Vec<Option<Report>>) -> Vec<(Arc<str>, Report)> {
    route
        .backends
        .iter()
        .zip(reports)
        .filter_map(|(b, r)| r.map(|r| (b.plan.name.clone(), r)))
        .collect()
}

/// What every request head must be before it is routed: one `host` for HTTP/1.1
/// (RFC 9112 §3.2; HTTP/2 carries `:authority` instead), and no larger than
/// `max_header_size`, counted as the path and query plus each header's name and value,
/// the same for HTTP/1.1 and h2. (The parsers refuse heads of twice that before they
/// get here, with a bare 431.)
fn check_head(parts: &http::request::Parts, limit: u64) -> Result<(), GatewayError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || (first.is_none() && parts.version == http::Version::HTTP_11) {
        return Err(GatewayError::BadRequest {
            reason: "an HTTP/1.1 request needs exactly one host header",
        });
    }
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limit {
        return Err(GatewayError::UriTooLong { limit });
    }
    let size = parts.headers.iter().fold(target, |n, (name, value)| {
        n + name.as_str().len() + value.len()
    });
    if size > limit {
        return Err(GatewayError::HeadersTooLarge { limit });
    }
    Ok(())
}
