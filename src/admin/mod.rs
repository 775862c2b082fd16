//! The admin listener: `/health`, `/ready`, `/routes`, `/metrics`, and the console
//! (`/`, `/stats`, `/requests`). Never on the public port.

mod console;

use std::sync::atomic::Ordering;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::base::body::{Body, Never};
use crate::base::error::GatewayError;
use crate::base::forward;
use crate::base::redact;
use crate::request::gateway::{Gateway, Live};
use crate::telemetry::metrics::METRICS;
use crate::upstream::breaker::BreakerState;

pub fn handle(live: &Live, req: Request<Incoming>) -> Response<Body<Never>> {
    let mut r = answer(live, &req);
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn answer(live: &Live, req: &Request<Incoming>) -> Response<Body<Never>> {
    match req.uri().path() {
        "/health" => plain(StatusCode::OK, r#"{"status":"ok"}"#),
        "/ready" if live.ready.load(Ordering::SeqCst) => {
            plain(StatusCode::OK, r#"{"status":"ready"}"#)
        }
        "/ready" => plain(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#),
        "/routes" => json_response(&routes(&live.gateway.load())),
        "/metrics" => metrics(&live.gateway.load(), wants_openmetrics(req.headers())),
        path => match live.gateway.load().console.as_deref() {
            Some(c) => console_answer(live, c, path, req),
            None => not_found(req),
        },
    }
}

/// The contract's error body, with the request id like every other error.
fn not_found(req: &Request<Incoming>) -> Response<Body<Never>> {
    GatewayError::RouteNotFound.into_response(&forward::request_id(req.headers()))
}

/// The console's page and JSON; never cached, the page allowed nothing from elsewhere.
fn console_answer(
    live: &Live,
    c: &crate::telemetry::console::Console,
    path: &str,
    req: &Request<Incoming>,
) -> Response<Body<Never>> {
    let mut r = match path {
        "/" => {
            let mut r = Response::new(Body::from(console::PAGE.as_bytes().to_vec()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
        "/stats" => json_response(&console::stats(live, &live.gateway.load(), c)),
        "/requests" => match console::requests(c, req.uri().query()) {
            Some(v) => json_response(&v),
            None => GatewayError::BadParameter {
                name: "kind".to_string(),
                reason: "must be slow or failed",
            }
            .into_response(&forward::request_id(req.headers())),
        },
        _ => match path
            .strip_prefix("/requests/")
            .and_then(|id| console::request(c, id))
        {
            Some(v) => json_response(&v),
            None => return not_found(req),
        },
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The page runs its own inline script and style and reads JSON from where it came
/// from: nothing else, so it works air-gapped and cannot be made to call out.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Whether a scraper asked for OpenMetrics before the Prometheus text format (as
/// Prometheus does: `application/openmetrics-text;version=1.0.0,...,text/plain;
/// version=0.0.4;q=0.5`). `text/plain`, `*/*` or no `accept` (curl, promtool, older
/// scrapers) get the text format 0.0.4 (docs/operations.md#admin-endpoints).
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    let mut open = 0.0f32;
    let mut text = 0.0f32;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
    }
    open > 0.0 && open >= text
}

/// Prometheus metrics, OpenMetrics or the text format 0.0.4 as the scraper asks;
/// breaker gauges are read at scrape time.
fn metrics(gw: &Gateway, openmetrics: bool) -> Response<Body<Never>> {
    METRICS.sample_process();
    METRICS.buffers(gw.buffers.used(), gw.buffers.limit());
    for r in &gw.routes {
        if let Some(l) = &r.limiter {
            METRICS.rate_limit_keys(&r.name, l.keys());
        }
    }
    for u in &gw.upstreams {
        let state = match u.breaker_state() {
            Some(BreakerState::Open) => 1,
            Some(BreakerState::HalfOpen) => 2,
            _ => 0,
        };
        METRICS.breaker_state(&u.name, state);
        for i in 0..u.hosts.count() {
            METRICS.host_state(&u.name, u.hosts.label(i), u.hosts.state(i).gauge());
        }
    }
    let (text, content_type) = if openmetrics {
        (
            METRICS.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            METRICS.encode_text(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(Body::from(text.into_bytes()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(v: &Value) -> Response<Body<Never>> {
    let mut r = Response::new(Body::from(serde_json::to_vec_pretty(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The compiled route table and upstream state, as `/routes` shows it.
pub fn routes(gw: &Gateway) -> Value {
    let routes: Vec<Value> = gw
        .config
        .routes
        .iter()
        .zip(&gw.routes)
        .map(|(rc, r)| {
            json!({
                "name": &*r.name,
                "method": r.method.as_str(),
                "path": r.path,
                "timeout_ms": r.deadline.as_millis() as u64,
                "passthrough": r.passthrough,
                "websocket": r.websocket.is_some(),
                "cache": rc.cache.as_ref().map(|c| json!({
                    "ttl_ms": c.ttl.as_millis() as u64,
                    "stale_if_error_ms": c.stale_if_error.map(|d| d.as_millis() as u64),
                })),
                // Every policy the route has, as `manifold routes` shows them.
                "rate_limit": rc.rate_limit.as_ref().map(|l| json!({
                    "per_second": l.rate.per_second,
                    "burst": l.rate.burst,
                    "key": limit_key(&l.key),
                    "max_keys": l.max_keys,
                })),
                "cors": match &rc.cors {
                    crate::config::RouteCors::Off => json!(false),
                    crate::config::RouteCors::Own(c) => cors_json(c, "route"),
                    crate::config::RouteCors::Inherit => gw.config.cors.as_ref().map_or(json!(false), |c| cors_json(c, "[cors]")),
                },
                "forward_headers": rc.forward_headers,
                "forward_query": rc.forward_query,
                // What goes on the wire: codings in order (false: off), and the
                // cache-control of complete answers (merged routes).
                "compression": r.wire.compression.as_ref().map_or(Value::Bool(false), |c| json!({
                    "algorithms": c.algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                    "min_size": c.min_size,
                })),
                "cache_control": (!r.passthrough).then(|| r.wire.cache_control.to_str().unwrap_or_default()),
                "auth": rc.auth.as_ref().map(|a| json!({
                    "jwt": a.jwt,
                    "scopes": a.scopes,
                    "optional": a.optional,
                    "claims_to_headers": a.claims_to_headers.iter().map(|(c, h)| (c.clone(), Value::from(h.as_str()))).collect::<Map<_, _>>(),
                })),
                // Which schemas check its requests: a file as the config names it,
                // or `inline`.
                "validate": rc.validation.as_ref().map(|v| json!({
                    "params": v.params.as_ref().map(|s| &s.source),
                    "query": v.query.as_ref().map(|s| &s.source),
                    "body": v.body.as_ref().map(|s| &s.source),
                })),
                "idempotency": rc.idempotency.as_ref().map(|i| json!({
                    "ttl_ms": i.ttl.as_millis() as u64,
                    "required": i.required,
                })),
                "backends": rc.backends.iter().map(|b| json!({
                    "name": b.name,
                    "upstream": b.upstream,
                    "method": b.method.as_ref().unwrap_or(&r.method).as_str(),
                    // As written: a `${SECRET}` filled in at load is not shown.
                    "path": b.path_as_written,
                    "optional": b.optional,
                    "schema": b.schema.as_ref().map(|s| &s.source),
                    "validate_response": b.validate_response,
                    "pass_errors": b.pass_errors,
                    // A gRPC call: its method, what its message is made of, and the
                    // method's idempotency level (what retries and hedges it).
                    "grpc": b.grpc.as_ref().map(|g| json!({
                        "method": g.method,
                        "message": match &g.message {
                            crate::config::grpc::Message::Default => "default",
                            crate::config::grpc::Message::Body => "body",
                            crate::config::grpc::Message::Template(_) => "template",
                        },
                        "idempotency_level": g.resolved.as_ref().map(crate::config::grpc::level_name),
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut upstreams = Map::new();
    for u in &gw.upstreams {
        upstreams.insert(
            u.name.to_string(),
            json!({
                "urls": u.settings.urls.iter().map(|x| redact::url(x.as_str())).collect::<Vec<_>>(),
                "timeout_ms": u.settings.timeout.map(|t| t.as_millis() as u64),
                "max_concurrency": u.max_concurrency(),
                // An upstream without a breaker never opens: it reads as closed.
                "breaker": u.breaker_state().map_or("closed", |s| s.as_str()),
                "balance": u.hosts.balance().as_str(),
                "protocol": u.settings.protocol.as_str(),
                // The gRPC services its protos define.
                "grpc_services": gw.config.upstreams.iter().find(|c| *c.name == *u.name)
                    .and_then(|c| c.grpc.as_ref())
                    .map(|p| p.pool.services().map(|s| s.full_name().to_string()).collect::<Vec<_>>()),
                "hosts": (0..u.hosts.count()).map(|i| json!({
                    "host": u.hosts.label(i),
                    "state": u.hosts.state(i).as_str(),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    let mut validators = Map::new();
    for v in &gw.validators {
        let c = &v.config;
        let (source, at) = match &c.source {
            crate::config::KeySource::Url(u) => {
                ("jwks_url", Some(redact::url(u.as_str()).into_owned()))
            }
            crate::config::KeySource::File(p) => ("jwks_file", Some(p.display().to_string())),
            // Never the secret itself.
            crate::config::KeySource::Secret(_) => ("secret", None),
        };
        validators.insert(
            c.name.clone(),
            json!({
                "source": source,
                "at": at,
                "algorithms": c.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                "issuer": c.issuer,
                "audience": c.audience,
                "keys": v.keys_held(),
            }),
        );
    }
    let tls = gw
        .config
        .server
        .tls
        .as_ref()
        .map(|t| json!({"cert": t.cert.display().to_string()}));
    let mut out = json!({
        "config": {"fingerprint": gw.config.version()},
        "tls": tls,
        "auth": {"jwt": validators},
        "routes": routes,
        "upstreams": upstreams,
    });
    // Only with `[shared]`; never the Redis URL's password.
    if let Some(s) = &gw.redis {
        out["shared"] = json!({"redis": if s.is_up() { "up" } else { "down" }});
    }
    out
}

/// `manifold routes`: the compiled route table, one block per route.
pub fn route_table(config: &crate::config::Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in &config.routes {
        let deadline = config.route_deadline(r);
        let _ = write!(
            out,
            "{:<7} {}  [{}]  deadline {}",
            r.method.as_str(),
            r.path,
            r.name,
            humantime::format_duration(deadline)
        );
        if r.passthrough {
            out.push_str("  passthrough");
        }
        if let Some(c) = &r.cache {
            let _ = write!(out, "  cache {}", humantime::format_duration(c.ttl));
        }
        if let Some(l) = &r.rate_limit {
            let _ = write!(
                out,
                "  limit {}/s burst {}",
                l.rate.per_second, l.rate.burst
            );
        }
        if let Some(a) = &r.auth {
            let _ = write!(out, "  auth {}", a.jwt);
            if !a.scopes.is_empty() {
                let _ = write!(out, " [{}]", a.scopes.join(" "));
            }
            if a.optional {
                out.push_str(" (optional)");
            }
        }
        if let Some(v) = &r.validation {
            let parts: Vec<String> = [
                ("params", &v.params),
                ("query", &v.query),
                ("body", &v.body),
            ]
            .iter()
            .filter_map(|(part, s)| s.as_ref().map(|s| format!("{part}={}", s.source)))
            .collect();
            let _ = write!(out, "  validate {}", parts.join(" "));
        }
        if let Some(i) = &r.idempotency {
            let _ = write!(
                out,
                "  idempotency {}{}",
                humantime::format_duration(i.ttl),
                if i.required { " (required)" } else { "" }
            );
        }
        out.push('\n');
        for b in &r.backends {
            let method = b.method.as_ref().unwrap_or(&r.method);
            match &b.grpc {
                Some(g) => {
                    let _ = write!(
                        out,
                        "  ├─ {:<16} gRPC {} (upstream {})",
                        b.name, g.method, b.upstream
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        "  ├─ {:<16} {} {} (upstream {})",
                        b.name,
                        method.as_str(),
                        b.path_as_written,
                        b.upstream
                    );
                }
            }
            if let Some(g) = &b.group {
                let _ = write!(out, "  → {g}");
            }
            if b.optional {
                out.push_str("  (optional)");
            }
            if let Some(s) = &b.schema {
                let _ = write!(out, "  schema {}", s.source);
                if b.validate_response {
                    out.push_str(" (checked)");
                }
            }
            if b.pass_errors {
                out.push_str("  pass_errors");
            }
            out.push('\n');
        }
    }
    out
}

/// A rate limit's key as routes.toml writes it.
fn limit_key(k: &crate::config::LimitKey) -> String {
    match k {
        crate::config::LimitKey::ClientIp => "client_ip".into(),
        crate::config::LimitKey::Global => "global".into(),
        crate::config::LimitKey::Header(h) => format!("header:{h}"),
        crate::config::LimitKey::Claim(c) => format!("claim:{c}"),
    }
}

/// A CORS policy and where it comes from (`route` or `[cors]`).
fn cors_json(c: &crate::config::CorsConfig, from: &str) -> Value {
    json!({
        "from": from,
        "allow_origins": c.allow_origins,
        "allow_headers": c.allow_headers,
        "expose_headers": c.expose_headers,
        "allow_credentials": c.allow_credentials,
        "max_age_s": c.max_age.map(|d| d.as_secs()),
    })
}

/// A fixed JSON answer.
fn plain(status: StatusCode, body: &'static str) -> Response<Body<Never>> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn openmetrics_only_for_scrapers_that_ask_for_it_first() {
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(wants_openmetrics(&accept("application/openmetrics-text")));
        assert!(!wants_openmetrics(&accept("text/plain")));
        assert!(!wants_openmetrics(&accept("*/*")));
        assert!(!wants_openmetrics(&http::HeaderMap::new()));
        assert!(!wants_openmetrics(&accept(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(&accept(
            "application/openmetrics-text;q=0"
        )));
    }
}
