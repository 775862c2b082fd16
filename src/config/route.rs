//! `[[routes]]`: a route's method and path, its deadline, what it forwards, its cache,
//! rate limit, CORS, token check, and whether it streams (passthrough, WebSocket).

use std::time::Duration;

use http::Method;

use super::backend::read_backend;
use super::compression::{RouteCompression, read_route_compression};
use super::cors::read_cors;
use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, KeyDefault, Table, key, method_of};
use super::upstream::read_rate;
use super::validation::{RouteValidation, read_validate};
use super::*;

#[derive(Debug, Clone, PartialEq)]
pub enum LimitKey {
    ClientIp,
    Header(http::HeaderName),
    Global,
    /// A validated claim of the route's token (`claim:sub`): checked after the token.
    Claim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteRateLimit {
    pub rate: RateConfig,
    pub key: LimitKey,
    /// Keys remembered at most (least recently used forgotten first).
    pub max_keys: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub method: Method,
    pub path: String,
    pub path_span: SourceSpan,
    pub span: SourceSpan,
    pub timeout: Option<Duration>,
    pub forward_headers: Vec<String>,
    pub forward_query: Vec<String>,
    pub cache: Option<CacheConfig>,
    pub rate_limit: Option<RouteRateLimit>,
    pub passthrough: bool,
    /// `websocket = true` (or a table): upgrade requests are tunnelled (passthrough routes).
    pub websocket: bool,
    /// `websocket = { allow_origins }`: the origins a tunnel may be opened from.
    pub websocket_origins: Option<Vec<String>>,
    /// How long a tunnel may carry no bytes either way.
    pub idle_timeout: Duration,
    /// The route's own `cors` table, `cors = false`, or `[cors]` (when unset).
    pub cors: RouteCors,
    /// `auth`: the route's token check.
    pub auth: Option<RouteAuth>,
    /// Where `auth` is, and where its `jwt` names the validator.
    pub auth_span: SourceSpan,
    pub auth_jwt_span: SourceSpan,
    pub backends: Vec<BackendConfig>,
    /// `compression`: off, the server's, or its own.
    pub compression: RouteCompression,
    /// `cache_control`: sent on complete 200 answers (merged routes).
    pub cache_control: Option<http::HeaderValue>,
    /// `validate`: the schemas a request must match, compiled.
    pub validation: Option<RouteValidation>,
    /// `idempotency`: requests with the same key get the first one's final answer.
    pub idempotency: Option<super::idempotency::IdempotencyConfig>,
    pub validate_span: SourceSpan,
}

/// What a route says about CORS.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RouteCors {
    /// Nothing: `[cors]` applies, if there is one.
    #[default]
    Inherit,
    /// `cors = false`: no CORS on this route.
    Off,
    /// Its own table, which replaces `[cors]` whole.
    Own(CorsConfig),
}

pub const NAME: Key =
    key("name", "Labels metrics, logs and spans.").default(KeyDefault::Computed("\"METHOD path\""));
pub const METHOD: Key =
    key("method", "HTTP method; a GET route also answers HEAD.").default(KeyDefault::Str("GET"));
pub const PATH: Key = key("path", "Path with {param} segments.").required();
pub const TIMEOUT: Key = key("timeout", "Deadline for the whole request.")
    .default(KeyDefault::Computed("server.default_timeout"));
pub const FORWARD_HEADERS: Key = key(
    "forward_headers",
    "Client headers that reach upstreams; [\"*\"] for all but hop-by-hop ones.",
);
pub const FORWARD_QUERY: Key = key(
    "forward_query",
    "Client query parameters that reach upstreams; [\"*\"] for all.",
);
pub const CACHE: Key = key(
    "cache",
    "Keep complete 200 answers of this route (GET, merged).",
);
pub const TTL: Key = key(
    "ttl",
    "How long an answer is fresh (shortened by the upstreams' cache-control).",
)
.required();
pub const STALE_IF_ERROR: Key = key(
    "stale_if_error",
    "How long past ttl an answer may stand in when a fresh attempt fails.",
);
pub const RATE_LIMIT: Key = key(
    "rate_limit",
    "Requests per key: 429 with retry-after past it.",
);
pub const LIMIT_KEY: Key = key(
    "key",
    "What a bucket is kept per: client_ip, global, header:NAME, or claim:NAME (a validated claim of the route's token).",
)
.default(KeyDefault::Str("client_ip"));
/// Rate-limit keys a route remembers when it sets no `max_keys`.
pub const MAX_KEYS: Key = key(
    "max_keys",
    "Keys remembered at most; the least recently used are forgotten first.",
)
.at_least(1.0)
.default(KeyDefault::Count(100_000));
pub const PASSTHROUGH: Key = key(
    "passthrough",
    "Stream one backend's answer unchanged, bodies both ways.",
)
.default(KeyDefault::Bool(false));
pub const WEBSOCKET: Key = key(
    "websocket",
    "Carry `upgrade: websocket` requests to the upstream and splice both ways after its 101 (passthrough routes): true, or { allow_origins = [...] } naming the origins whose pages may open one.",
)
.default(KeyDefault::Bool(false));
pub const IDLE_TIMEOUT: Key = key(
    "idle_timeout",
    "A WebSocket tunnel with no bytes either way for this long is closed.",
)
.default(KeyDefault::Duration(Duration::from_secs(300)));
pub const WEBSOCKET_ORIGINS: Key = key(
    "allow_origins",
    "Origins whose pages may open a tunnel: exact, one leading *. label, or [\"*\"] for any. Without it: the route's CORS origins; without CORS, only the route's own origin (and clients that send no origin).",
)
.required();
pub const CORS: Key = key(
    "cors",
    "This route's own CORS table (replacing [cors] whole), or false for none.",
);
pub const AUTH: Key = key(
    "auth",
    "This route's token check: { jwt = \"NAME\", scopes, claims_to_headers, optional }.",
);
pub const AUTH_JWT: Key = key(
    "jwt",
    "The [auth.jwt.NAME] validator that checks the token.",
)
.required();
pub const AUTH_SCOPES: Key = key(
    "scopes",
    "Scopes the token must hold, each in its `scope` claim (space-separated) or `scp` array; 403 otherwise.",
);
pub const AUTH_CLAIMS_TO_HEADERS: Key = key(
    "claims_to_headers",
    "Validated claims sent to every backend as headers: { claim = \"header-name\" }.",
);
pub const AUTH_OPTIONAL: Key = key(
    "optional",
    "Let a request without a token through (no claims); a bad token still fails.",
)
.default(KeyDefault::Bool(false));
pub const CACHE_CONTROL: Key = key(
    "cache_control",
    "cache-control sent verbatim on complete 200 answers (merged routes); unset: \"private, no-cache\". On a route with auth, public and s-maxage are refused.",
)
.default(KeyDefault::Str("private, no-cache"));
pub const BACKENDS: Key = key(
    "backends",
    "Backends, called concurrently (or after the ones they read from).",
)
.required()
.non_empty();

pub(super) fn read_route(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &std::path::Path,
) -> Option<RouteConfig> {
    let name = t.string(errs, NAME);
    let method = t.string(errs, METHOD);
    let method = method_of(errs, method);
    let path = t.required_string(errs, PATH);
    if let Some((p, span)) = &path
        && !p.starts_with('/')
    {
        errs.push(
            Diagnostic::new(span.clone(), "route path must start with `/`")
                .label("add a leading `/`"),
        );
    }
    // From here on, messages name the route as everything after loading does.
    if let Some((p, _)) = &path {
        let shown = match &name {
            Some((n, _)) => n.clone(),
            None => format!(
                "{} {p}",
                method.clone().flatten().unwrap_or(Method::GET).as_str()
            ),
        };
        t.name = format!("route {shown}");
    }
    let timeout = t.positive_duration(errs, TIMEOUT);
    let forward_headers = t.string_list(errs, FORWARD_HEADERS).unwrap_or_default();
    for (h, span) in &forward_headers {
        if h == "*" {
            continue;
        }
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Err(_) => errs.push(
                Diagnostic::new(span.clone(), format!("`{h}` is not a header name"))
                    .label("bad header name"),
            ),
            Ok(name) if crate::base::forward::is_gateway_owned(&name) => errs.push(
                Diagnostic::new(span.clone(), format!("`{h}` is set by the gateway and cannot be forwarded"))
                    .label("gateway-owned header")
                    .note("host, content-length, x-request-id, x-forwarded-for, x-forwarded-proto and hop-by-hop headers are always the gateway's own"),
            ),
            Ok(_) => {}
        }
    }
    let forward_query = t.string_list(errs, FORWARD_QUERY).unwrap_or_default();
    let cache = t.table(errs, CACHE).and_then(|mut c| {
        let ttl = c.duration(errs, TTL);
        let stale = c.duration(errs, STALE_IF_ERROR).map(|(d, _)| d);
        if ttl.is_none() && c.get(TTL).is_none() {
            c.missing(errs, TTL.name);
        }
        c.finish(errs);
        ttl.map(|(ttl, _)| CacheConfig {
            ttl,
            stale_if_error: stale,
        })
    });
    let rate_limit = t.table(errs, RATE_LIMIT).and_then(|mut r| {
        let rate = read_rate(&mut r, errs);
        let limit_key = match r.string(errs, LIMIT_KEY) {
            None => Some(LimitKey::ClientIp),
            Some((k, _)) if k == "client_ip" => Some(LimitKey::ClientIp),
            Some((k, _)) if k == "global" => Some(LimitKey::Global),
            Some((k, span)) if k.starts_with("claim:") => match k["claim:".len()..].trim() {
                "" => {
                    errs.push(
                        Diagnostic::new(span, "`claim:` names no claim")
                            .label("e.g. \"claim:sub\""),
                    );
                    None
                }
                claim => Some(LimitKey::Claim(claim.to_string())),
            },
            Some((k, span)) => match k
                .strip_prefix("header:")
                .map(|h| http::HeaderName::from_bytes(h.trim().as_bytes()))
            {
                Some(Ok(h)) => Some(LimitKey::Header(h)),
                _ => {
                    errs.push(
                        Diagnostic::new(span, format!("unknown rate limit key `{k}`")).label(
                            "expected \"client_ip\", \"global\", \"header:NAME\" or \"claim:NAME\"",
                        ),
                    );
                    None
                }
            },
        };
        let max_keys = r.count_or(errs, MAX_KEYS);
        r.finish(errs);
        Some(RouteRateLimit {
            rate: rate?,
            key: limit_key?,
            max_keys,
        })
    });
    let passthrough = t.bool_or(errs, PASSTHROUGH);
    let websocket_span = t.get(WEBSOCKET).map(|v| v.span());
    let (websocket, websocket_origins) = match t.get(WEBSOCKET).map(|v| v.get_ref()) {
        None => (false, None),
        Some(toml::de::DeValue::Table(_)) => match t.table(errs, WEBSOCKET) {
            Some(mut w) => {
                let origins = read_websocket(&mut w, errs);
                w.finish(errs);
                (true, origins)
            }
            None => (false, None),
        },
        Some(_) => (t.bool_or(errs, WEBSOCKET), None),
    };
    let idle_span = t.get(IDLE_TIMEOUT).map(|v| v.span());
    let idle_timeout = t.positive_duration_or(errs, IDLE_TIMEOUT);
    if let Some(span) = idle_span.filter(|_| !websocket) {
        errs.push(
            Diagnostic::new(
                span,
                "`idle_timeout` applies only to `websocket = true` routes",
            )
            .label("no tunnels on this route"),
        );
    }
    let cors = match t.get(CORS).map(|v| v.get_ref()) {
        None => RouteCors::Inherit,
        Some(toml::de::DeValue::Boolean(false)) => RouteCors::Off,
        Some(toml::de::DeValue::Boolean(true)) => {
            errs.push(
                Diagnostic::new(
                    t.span(),
                    format!("`cors = true` in {} means nothing", t.name),
                )
                .label("a cors table, or false")
                .note("leave it out to use [cors], give a table of its own, or set false for none"),
            );
            RouteCors::Inherit
        }
        Some(_) => match t.table(errs, CORS) {
            Some(mut c) => {
                let own = read_cors(&mut c, errs);
                c.finish(errs);
                own.map_or(RouteCors::Inherit, RouteCors::Own)
            }
            None => RouteCors::Inherit,
        },
    };
    let mut auth_span = 0..0;
    let mut auth_jwt_span = 0..0;
    let auth = t.table(errs, AUTH).and_then(|mut a| {
            auth_span = a.span();
            let jwt = a.required_string(errs, AUTH_JWT);
            let scopes = a.string_list(errs, AUTH_SCOPES).unwrap_or_default();
            let pairs = a.string_map(errs, AUTH_CLAIMS_TO_HEADERS).unwrap_or_default();
            let mut claims_to_headers = Vec::with_capacity(pairs.len());
            for (claim, h) in pairs {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(name) if !crate::base::forward::is_gateway_owned(&name) && name != http::header::AUTHORIZATION => {
                        claims_to_headers.push((claim, name));
                    }
                    Ok(_) => errs.push(
                        Diagnostic::new(a.span(), format!("claims_to_headers cannot set `{h}`"))
                            .label("a header the gateway sets itself")
                            .note("host, content-length, authorization, x-request-id, x-forwarded-for, x-forwarded-proto and hop-by-hop headers cannot carry a claim"),
                    ),
                    Err(_) => errs.push(
                        Diagnostic::new(a.span(), format!("`{h}` in claims_to_headers is not a header name"))
                            .label("bad header name"),
                    ),
                }
            }
            let optional = a.bool_or(errs, AUTH_OPTIONAL);
            a.finish(errs);
            let (jwt, span) = jwt?;
            auth_jwt_span = span;
            Some(RouteAuth {
                jwt,
                scopes: scopes.into_iter().map(|(s, _)| s).collect(),
                claims_to_headers,
                optional,
            })
        });
    let compression = read_route_compression(t, errs);
    let cache_control = t.string(errs, CACHE_CONTROL);
    let validate_span = t
        .get(super::validation::VALIDATE)
        .map_or(0..0, |v| v.span());
    let validation = read_validate(t, errs, base);
    let idempotency_span = t.get(super::idempotency::IDEMPOTENCY).map(|v| v.span());
    let idempotency = super::idempotency::read_idempotency(t, errs);
    // `METHOD`'s default (a test holds the two together).
    let route_method = method.clone().flatten().unwrap_or(Method::GET);
    let mut backends = Vec::new();
    let tables = t.table_array(errs, BACKENDS);
    // `backends = []` as much as no key: a route must call something.
    if tables.is_empty() {
        errs.push(
            Diagnostic::new(t.span(), format!("{} has no backends", t.name))
                .label("add at least one [[routes.backends]]"),
        );
    }
    for mut b in tables {
        if let Some(backend) = read_backend(&mut b, errs, base) {
            backends.push(backend);
        }
        b.finish(errs);
    }
    let (path, path_span) = path?;
    let passthrough = passthrough || backends.iter().any(|b| b.passthrough);
    let cache_control = cache_control.and_then(|(v, span)| {
        // Whose answer this is: a token's user, or whoever's credentials go upstream.
        let per_user = if auth.is_some() {
            Some("a route with `auth`")
        } else if forward_headers.iter().any(|(h, _)| {
            h == "*" || h.eq_ignore_ascii_case("authorization") || h.eq_ignore_ascii_case("cookie")
        }) {
            Some("a route that forwards authorization or cookie")
        } else {
            None
        };
        read_cache_control(&v, span, passthrough, per_user, errs)
    });
    if let Some(span) = idempotency_span.filter(|_| websocket) {
        errs.push(
            Diagnostic::new(
                span,
                "`idempotency` cannot be on a `websocket = true` route",
            )
            .label("a tunnel has no answer to keep"),
        );
    }
    if let Some(span) = websocket_span.filter(|_| websocket && !passthrough) {
        errs.push(
            Diagnostic::new(span, "`websocket = true` needs `passthrough = true`")
                .label("a tunnel carries one upstream's bytes unchanged")
                .note("add `passthrough = true` to the route"),
        );
    }
    Some(RouteConfig {
        name: name
            .map(|(n, _)| n)
            .unwrap_or_else(|| format!("{route_method} {path}")),
        method: route_method,
        path,
        path_span,
        span: t.span(),
        timeout: timeout.flatten(),
        forward_headers: forward_headers
            .into_iter()
            .map(|(h, _)| h.to_ascii_lowercase())
            .collect(),
        forward_query: forward_query.into_iter().map(|(q, _)| q).collect(),
        cache,
        rate_limit,
        passthrough,
        websocket,
        websocket_origins,
        idle_timeout,
        cors,
        auth,
        auth_span,
        auth_jwt_span,
        backends,
        compression,
        cache_control,
        validation,
        validate_span,
        idempotency,
    })
}

/// `cache_control`: a header value; not on a passthrough route (its answers keep the
/// upstream's), and on a route whose answer is per user (`per_user` says why) nothing
/// that lets a shared cache keep it.
fn read_cache_control(
    value: &str,
    span: SourceSpan,
    passthrough: bool,
    per_user: Option<&str>,
    errs: &mut Errors,
) -> Option<http::HeaderValue> {
    if passthrough {
        errs.push(
            Diagnostic::new(span, "`cache_control` applies only to merged routes")
                .label("a passthrough answer keeps the upstream's cache-control"),
        );
        return None;
    }
    let Ok(header) = http::HeaderValue::from_str(value) else {
        errs.push(
            Diagnostic::new(span, "`cache_control` is not a valid header value")
                .label("control characters or non-ASCII text"),
        );
        return None;
    };
    if let Some(why) = per_user {
        let shared = value.split(',').find_map(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            (name.eq_ignore_ascii_case("public") || name.eq_ignore_ascii_case("s-maxage"))
                .then(|| name.to_ascii_lowercase())
        });
        if let Some(directive) = shared {
            errs.push(
                Diagnostic::new(span, format!("`{directive}` on {why}"))
                    .label("a shared cache (CDN, proxy) could keep one user's answer for another")
                    .note("use `private, max-age=N` for answers a browser may keep"),
            );
            return None;
        }
    }
    Some(header)
}

/// A route's `websocket = { allow_origins = [...] }`: the origins whose pages may open a
/// tunnel (patterns as CORS's).
pub(super) fn read_websocket(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<Vec<String>> {
    let Some(origins) = t.string_list(errs, WEBSOCKET_ORIGINS) else {
        t.missing(errs, "allow_origins");
        return None;
    };
    let mut ok = true;
    for (o, span) in &origins {
        if let Err(why) = cors::check_origin(o) {
            errs.push(
                Diagnostic::new(
                    span.clone(),
                    format!("`{o}` is not an origin pattern: {why}"),
                )
                .label("expected e.g. \"https://app.example.com\" or \"https://*.example.com\""),
            );
            ok = false;
        }
    }
    ok.then(|| origins.into_iter().map(|(o, _)| o).collect())
}
