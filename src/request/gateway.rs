//! A config compiled once into an immutable value: router, routes, per-upstream clients.
//!
//! The server holds the current `Gateway` behind an atomic pointer ([`Live`]); a reload
//! builds a new one, reusing the upstreams (pools, breakers, limits), route limiters,
//! cache and trace exporter whose settings did not change, and swaps it in without a
//! lock on the request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, Method};

use crate::base::forward::Forward;
use crate::base::template::{Part, Template, route_params};
use crate::config::{
    BackendConfig, CacheConfig, Compression, Config, RouteCompression, RouteConfig, RouteCors,
};
use crate::edge::auth::{Auth, Validator};
use crate::edge::cors::Cors;
use crate::edge::ratelimit::RouteLimiter;
use crate::edge::validation::Validation;
use crate::request::merge::{Decode, Plan, Shape};
use crate::request::message;
use crate::request::router::Router;
use crate::request::wire::Wire;
use crate::state::buffers::Buffers;
use crate::state::cache::Cache;
use crate::state::descriptors::Descriptors;
use crate::state::redis::Redis;
use crate::telemetry::access_log::LogSink;
use crate::telemetry::console::Console;
use crate::telemetry::console::window::Window;
use crate::telemetry::metrics::{METRICS, RouteMetrics};
use crate::telemetry::trace::{TraceSettings, Tracing};
use crate::upstream::Upstream;
use crate::upstream::grpc::GrpcMethod;

pub struct Gateway {
    pub config: Config,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route and backend answers; carried over on reload while its size is unchanged.
    pub cache: Arc<Cache>,
    /// Idempotency keys of every route: kept across reloads while `[shared]` is.
    pub idempotency: Arc<crate::state::idempotency::Store>,
    /// The span exporter, when tracing is on; kept by a reload that leaves its
    /// settings unchanged.
    pub tracing: Option<Arc<Tracing>>,
    /// `buffer_capacity`: bytes of answers held at once. One for the server's life; a
    /// reload sets its limit.
    pub buffers: Arc<Buffers>,
    /// The descriptor limit, shared out (client connections, tunnels, upstream
    /// connections). One for the server's life.
    pub descriptors: Arc<Descriptors>,
    /// Some route has CORS: only then does a request's `origin` get looked at.
    pub any_cors: bool,
    /// `[auth.jwt.*]`, kept (keys, verified tokens, refresh task) by a reload that
    /// leaves a validator's settings unchanged.
    pub validators: Vec<Arc<Validator>>,
    /// `[shared]`: the replicas' Redis.
    pub redis: Option<Arc<Redis>>,
    /// How answers no route matched go on the wire (the server's compression, HSTS).
    pub wire: Wire,
    /// `[admin] console`: the kept requests and failures, across reloads.
    pub console: Option<Arc<Console>>,
}

/// The gateway that serves now (swapped whole on reload), and what every connection
/// of both listeners shares.
pub struct Live {
    pub gateway: ArcSwap<Gateway>,
    /// `/ready`: true once a config is loaded, false again while draining.
    pub ready: AtomicBool,
    pub log_sink: LogSink,
    /// `max_connections` when the config sets none (from the descriptor limit).
    pub default_max_connections: usize,
    /// What the console says of the process.
    pub process: Process,
}

/// The process as the console shows it: since when, on how many loops, the last
/// config load, the clients connected.
pub struct Process {
    pub started: tokio::time::Instant,
    pub started_at: std::time::SystemTime,
    pub workers: usize,
    /// The last reload's result and time (the start's load until there is one).
    pub last_reload: std::sync::Mutex<(bool, std::time::SystemTime)>,
    /// The public listener's connections, once it listens.
    pub public: std::sync::OnceLock<Arc<crate::state::connections::Connections>>,
}

impl Process {
    pub fn new(workers: usize) -> Process {
        let now = std::time::SystemTime::now();
        Process {
            started: tokio::time::Instant::now(),
            started_at: now,
            workers,
            last_reload: std::sync::Mutex::new((true, now)),
            public: std::sync::OnceLock::new(),
        }
    }

    pub fn reloaded(&self, ok: bool) {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = (ok, std::time::SystemTime::now());
        }
    }
}

pub struct Route {
    pub name: Arc<str>,
    pub method: Method,
    pub path: String,
    /// `METHOD /path/{template}`: the server span's name.
    pub span_name: Arc<str>,
    /// The path template (`http.route` on the server span).
    pub template: Arc<str>,
    pub deadline: Duration,
    /// Names of the path parameters, in path order (matchit yields values in this order).
    pub params: Vec<String>,
    pub forward_headers: Forward<HeaderName>,
    pub forward_query: Forward<String>,
    pub passthrough: bool,
    /// `websocket = true`: upgrade requests become tunnels, open ones counted here.
    pub websocket: Option<prometheus_client::metrics::gauge::Gauge>,
    /// How long a tunnel may carry no bytes either way.
    pub tunnel_idle: Duration,
    /// `websocket.allow_origins`: who may open a tunnel (else the route's CORS origins,
    /// else only its own origin).
    pub tunnel_origins: Option<Cors>,
    pub max_request_body: u64,
    /// Some backend calls with a method that carries the client's body (or sends it
    /// as its gRPC message).
    pub wants_body: bool,
    /// Some gRPC message reads `{query.NAME}`: the client's whole query is part of
    /// the route's cache key, not only its forwarded part.
    pub reads_query: bool,
    /// Kept across reloads while the route's name and limit are unchanged.
    pub limiter: Option<Arc<RouteLimiter>>,
    pub cache: Option<CacheConfig>,
    /// Starts this route's cache keys: its name and a fingerprint of its definition, so
    /// a reload that changes the route never serves answers cached under the old one.
    pub cache_prefix: String,
    pub metrics: RouteMetrics,
    /// The console's figures (kept by name across reloads; none with the console off).
    pub console: Option<Arc<Window>>,
    /// `[cors]` or the route's own; `None` with `cors = false` or no CORS at all.
    pub cors: Option<Arc<Cors>>,
    /// The route's token check.
    pub auth: Option<Auth>,
    /// `validate`: the schemas its requests must match.
    pub validation: Option<Validation>,
    /// `idempotency`: its keys' lookup and settling.
    pub idempotency: Option<crate::edge::idempotency::Idempotency>,
    pub backends: Vec<Backend>,
    /// How its answers go on the wire: compression, cache-control, HSTS.
    pub wire: Wire,
}

pub struct Backend {
    /// Its name, group, shaping and default: how its answer joins the response.
    pub plan: Plan,
    pub upstream: Arc<Upstream>,
    pub method: Method,
    pub template: Template<usize>,
    /// Indices of the backends whose answers this one's path reads.
    pub deps: Vec<usize>,
    pub optional: bool,
    pub cache_ttl: Option<Duration>,
    /// `METHOD /path/{template}` without the query: the client spans' name.
    pub span_name: Arc<str>,
    /// `backend NAME`: the backend span's name.
    pub backend_span: Arc<str>,
    /// Query parameters the backend's own path sets: a client's forwarded ones of the
    /// same name are not added (the route's word wins, and no name comes twice).
    pub own_query: Vec<String>,
    /// How its upstream's answers are read into JSON.
    pub codec: crate::upstream::Codec,
    /// A gRPC backend's request message.
    pub message: Option<message::Compiled>,
    /// `pass_errors`: its upstream's 4xx JSON reaches the client unchanged.
    pub pass_errors: bool,
    /// `validate_response`: its answers checked against its `schema`.
    pub answer_schema: Option<Arc<jsonschema::Validator>>,
}

/// Methods a retry may repeat (docs/configuration.md#resilience-order-and-state); POST too
/// when the client sent `idempotency-key`.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// POST, PUT and PATCH carry the client's body to a backend
/// (docs/configuration.md#what-reaches-an-upstream).
pub fn carries_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

impl Route {
    /// The backends' merge plans, in declaration order.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.backends.iter().map(|b| &b.plan)
    }
}

impl Gateway {
    /// Compiles a validated config. `previous` lends its upstreams where unchanged;
    /// `workers` is the number of event loops (one upstream pool each).
    pub fn build(
        config: Config,
        previous: Option<&Gateway>,
        workers: usize,
    ) -> Result<Gateway, String> {
        let buffers = match previous {
            Some(p) => p.buffers.clone(),
            None => Buffers::new(config.server.buffer_capacity),
        };
        let descriptors = match previous {
            Some(p) => p.descriptors.clone(),
            None => Descriptors::of_process(workers),
        };
        // One Redis client for the server's life while `[shared]` is unchanged.
        let redis = match (&config.shared, previous.and_then(|p| p.redis.as_ref())) {
            (None, _) => None,
            (Some(c), Some(old)) if old.config == *c => Some(old.clone()),
            (Some(c), _) => Some(Redis::start(c.clone(), workers)?),
        };
        // What a reload keeps is found by name: maps, not a search per entry, which
        // made reloading 10,000 routes quadratic (benches/sizing_routes.py).
        let old_upstreams: HashMap<&str, &Arc<Upstream>> = previous
            .map(|p| p.upstreams.iter().map(|u| (&*u.name, u)).collect())
            .unwrap_or_default();
        let old_routes: HashMap<&str, usize> = previous
            .map(|p| {
                p.routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (&*r.name, i))
                    .collect()
            })
            .unwrap_or_default();
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        let mut ordered = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            // A changed `[shared]` rebuilds only the upstreams whose limit it decides.
            let kept = previous
                .filter(|p| p.config.shared == config.shared || u.settings.rate_limit.is_none())
                .and_then(|_| old_upstreams.get(u.name.as_str()))
                .filter(|old| {
                    old.settings == u.settings && old.console.is_some() == config.admin.console
                })
                .map(|old| Arc::clone(old));
            let up = match kept {
                Some(up) => up,
                None => Arc::new(Upstream::build(
                    &u.name,
                    &u.settings,
                    workers,
                    &buffers,
                    &descriptors,
                    redis.as_ref(),
                    // The console's figures go on under the same name.
                    config.admin.console.then(|| {
                        old_upstreams
                            .get(u.name.as_str())
                            .and_then(|old| old.console.clone())
                            .unwrap_or_else(|| Arc::new(Window::new(workers)))
                    }),
                )?),
            };
            upstreams.insert(u.name.as_str(), up.clone());
            ordered.push(up);
        }
        // `[cors]` compiled once, shared by every route that takes it.
        let cors = config.cors.as_ref().map(|c| Arc::new(Cors::new(c)));
        let mut validators = Vec::with_capacity(config.jwt.len());
        for v in &config.jwt {
            let before =
                previous.and_then(|p| p.validators.iter().find(|old| old.config.name == v.name));
            validators.push(match before {
                Some(old) if old.config == *v => old.clone(),
                before => Validator::start(v.clone(), before)?,
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                compile_route(
                    &config,
                    r,
                    &upstreams,
                    previous.map(|p| (p, &old_routes)),
                    cors.as_ref(),
                    &validators,
                    redis.as_ref(),
                )
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut routes = routes;
        // The console's figures go on under the same route name.
        for r in routes.iter_mut().filter(|_| config.admin.console) {
            r.console = Some(
                previous
                    .zip(old_routes.get(&*r.name))
                    .and_then(|(p, &i)| p.routes[i].console.clone())
                    .unwrap_or_else(|| Arc::new(Window::new(workers))),
            );
        }
        let router = Router::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, r)| (&r.method, r.path.as_str(), i)),
        )?;
        let capacity = config.server.cache_capacity;
        let cache = match previous {
            Some(p) if p.config.server.cache_capacity == capacity => p.cache.clone(),
            _ => Arc::new(Cache::new(capacity)),
        };
        let tracing = match TraceSettings::from_config(&config.telemetry) {
            None => None,
            Some(settings) => match previous.and_then(|p| p.tracing.as_ref()) {
                Some(t) if t.settings == settings => Some(t.clone()),
                _ => Some(Arc::new(Tracing::build(settings)?)),
            },
        };
        let console = config
            .admin
            .console
            .then(|| previous.and_then(|p| p.console.clone()).unwrap_or_default());
        let idempotency = match previous {
            Some(p) if p.config.shared == config.shared => p.idempotency.clone(),
            _ => crate::state::idempotency::Store::new(redis.clone()),
        };
        cache.set_redis(redis.as_ref().map(|s| crate::state::cache::RedisTier {
            redis: s.clone(),
            max_entry: s.config.max_entry,
        }));
        buffers.set_limit(config.server.buffer_capacity);
        let any_cors = routes.iter().any(|r| r.cors.is_some());
        let server_codings = config
            .server
            .compression
            .as_ref()
            .map_or(&[][..], |c| &c.algorithms[..]);
        let wire = Wire {
            metrics: METRICS.wire("unmatched", server_codings, false),
            compression: config.server.compression.clone().map(Arc::new),
            cache_control: default_cache_control(),
            hsts: config.server.hsts.clone(),
        };
        Ok(Gateway {
            console,
            wire,
            redis,
            validators,
            any_cors,
            buffers,
            descriptors,
            tracing,
            router,
            routes,
            upstreams: ordered,
            cache,
            idempotency,
            config,
        })
    }
}

fn compile_route(
    config: &Config,
    r: &RouteConfig,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    // The gateway this one replaces, and where each of its routes sits by name.
    previous: Option<(&Gateway, &HashMap<&str, usize>)>,
    cors: Option<&Arc<Cors>>,
    validators: &[Arc<Validator>],
    redis: Option<&Arc<Redis>>,
) -> Result<Route, String> {
    let params = route_params(&r.path);
    // `{jwt.NAME}` placeholders read claims: they are filled like path parameters,
    // from the values the handler appends after the route's own.
    let mut path_claims: Vec<String> = Vec::new();
    for b in &r.backends {
        for (ph, _) in b.placeholders() {
            if let Some(claim) = ph.text.strip_prefix("jwt.")
                && !path_claims.iter().any(|c| c == claim)
            {
                path_claims.push(claim.to_string());
            }
        }
    }
    let mut values = params.clone();
    values.extend(path_claims.iter().map(|c| format!("jwt.{c}")));
    let mut backends = r
        .backends
        .iter()
        .map(|b| compile_backend(r, b, &params, &values, upstreams))
        .collect::<Result<Vec<_>, String>>()?;
    let auth = match &r.auth {
        None => None,
        Some(a) => Some(Auth {
            validator: validators
                .iter()
                .find(|v| v.config.name == a.jwt)
                .cloned()
                .ok_or_else(|| format!("route {}: unknown validator {}", r.name, a.jwt))?,
            scopes: a.scopes.clone(),
            claims_to_headers: a.claims_to_headers.clone(),
            optional: a.optional,
            path_claims,
            metrics: METRICS.auth(&r.name),
        }),
    };
    // An answer another backend reads needs a JSON tree; one only placed under its
    // group can stay text, or be shaped as text (see merge::Decode).
    let read_by_others: Vec<usize> = backends
        .iter()
        .flat_map(|b| b.deps.iter().copied())
        .collect();
    for (i, b) in backends.iter_mut().enumerate() {
        let plan = &mut b.plan;
        if plan.group.is_none() || read_by_others.contains(&i) {
            continue;
        }
        if plan.shape.keeps_text() {
            plan.decode = Decode::Raw;
        } else if plan.shape.shapes_text() {
            plan.decode = Decode::Text;
        }
    }
    let forward_headers = Forward::from_list(
        r.forward_headers
            .iter()
            .filter_map(|h| {
                if h == "*" {
                    Some(None)
                } else {
                    HeaderName::from_bytes(h.as_bytes()).ok().map(Some)
                }
            })
            .collect::<Vec<_>>(),
        Option::is_none,
    );
    let forward_headers = match forward_headers {
        Forward::All => Forward::All,
        // Conditional and range headers are the route's own to answer (merged) or always
        // forwarded (passthrough): never a listed header's (base::forward::CONDITIONAL).
        Forward::Only(list) => Forward::Only(
            list.into_iter()
                .flatten()
                .filter(|h| !crate::base::forward::is_conditional(h))
                .collect(),
        ),
    };
    let validation = r
        .validation
        .as_ref()
        .map(|v| Validation::new(&r.name, v, &params));
    let idempotency = r
        .idempotency
        .as_ref()
        .map(|i| crate::edge::idempotency::Idempotency::new(&r.name, i));
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        method: r.method.clone(),
        path: r.path.clone(),
        span_name: Arc::from(format!("{} {}", r.method, r.path)),
        template: Arc::from(r.path.as_str()),
        deadline: config.route_deadline(r),
        params,
        forward_headers,
        forward_query: Forward::from_list(r.forward_query.clone(), |q| q == "*"),
        passthrough: r.passthrough,
        websocket: r.websocket.then(|| METRICS.websocket_tunnels(&r.name)),
        tunnel_idle: r.idle_timeout,
        tunnel_origins: r.websocket_origins.as_ref().map(|origins| {
            Cors::new(&crate::config::CorsConfig {
                allow_origins: origins.clone(),
                allow_headers: Vec::new(),
                expose_headers: Vec::new(),
                allow_credentials: false,
                max_age: None,
            })
        }),
        max_request_body: config.server.max_request_body,
        wants_body: backends.iter().any(|b| match &b.message {
            Some(m) => matches!(m, message::Compiled::Body),
            None => carries_body(&b.method),
        }),
        reads_query: r.backends.iter().any(|b| {
            b.grpc.as_ref().is_some_and(|g| match &g.message {
                crate::config::grpc::Message::Template(s) => s
                    .placeholders()
                    .iter()
                    .any(|p| p.text.starts_with("query.")),
                _ => false,
            })
        }),
        cache_prefix: format!(
            "r|{}|{:016x}|",
            r.name,
            crate::config::fingerprint(&route_identity(r))
        ),
        metrics: METRICS.route(&r.name),
        // Set by `Gateway::build`, which knows the workers.
        console: None,
        cors: match &r.cors {
            RouteCors::Off => None,
            RouteCors::Own(c) => Some(Arc::new(Cors::new(c))),
            RouteCors::Inherit => cors.cloned(),
        },
        auth,
        validation,
        idempotency,
        cache: r.cache.clone(),
        limiter: r.rate_limit.as_ref().map(|l| {
            previous
                .filter(|(p, _)| p.config.shared == config.shared)
                .and_then(|(p, by_name)| {
                    let &i = by_name.get(r.name.as_str())?;
                    let old = p.config.routes.get(i)?;
                    (old.rate_limit.as_ref() == Some(l))
                        .then(|| p.routes[i].limiter.clone())
                        .flatten()
                })
                .unwrap_or_else(|| {
                    // In Redis: the route and a fingerprint of its limit, so a changed
                    // limit never inherits another's state.
                    let base = redis.map(|s| {
                        let limit = format!("{:?}", (&l.rate, &l.key));
                        let fp = crate::config::fingerprint(&limit);
                        (s.clone(), format!("rl:{}:{fp:016x}:", r.name))
                    });
                    Arc::new(RouteLimiter::new(&l.rate, l.key.clone(), l.max_keys, base))
                })
        }),
        backends,
        wire: compile_wire(config, r),
    })
}

/// The `cache-control` of a complete merged answer when the route sets none: the
/// key's default, said once at the key (`config::route::CACHE_CONTROL`).
fn default_cache_control() -> http::HeaderValue {
    http::HeaderValue::from_static(crate::config::route::CACHE_CONTROL.default_str())
}

/// A route's compression (its own, or the server's), cache-control and HSTS.
fn compile_wire(config: &Config, r: &RouteConfig) -> Wire {
    let server = &config.server.compression;
    let compression = match &r.compression {
        RouteCompression::Inherit => server.clone(),
        RouteCompression::Off => None,
        RouteCompression::On => Some(server.clone().unwrap_or_default()),
        RouteCompression::Own(c) => Some(c.clone()),
    };
    let codings = compression
        .as_ref()
        .map_or(&[][..], |c: &Compression| &c.algorithms[..]);
    let revalidates = !r.passthrough && r.method == Method::GET;
    Wire {
        metrics: METRICS.wire(&r.name, codings, revalidates),
        compression: compression.map(Arc::new),
        cache_control: r
            .cache_control
            .clone()
            .unwrap_or_else(default_cache_control),
        hsts: config.server.hsts.clone(),
    }
}

fn compile_backend(
    r: &RouteConfig,
    b: &BackendConfig,
    route_params: &[String],
    params: &[String],
    upstreams: &HashMap<&str, Arc<Upstream>>,
) -> Result<Backend, String> {
    let upstream = upstreams
        .get(b.upstream.as_str())
        .cloned()
        .ok_or_else(|| format!("route {}: unknown upstream {}", r.name, b.upstream))?;
    let mut deps = Vec::new();
    let mut parts = Vec::with_capacity(b.template.parts.len());
    for part in &b.template.parts {
        parts.push(match part {
            Part::Lit(s) => Part::Lit(s.clone()),
            Part::Param(ph) if ph.text.starts_with("jwt.") => Part::Param(
                params
                    .iter()
                    .position(|p| *p == ph.text)
                    .ok_or_else(|| format!("route {}: unknown claim {}", r.name, ph.text))?,
            ),
            Part::Param(ph) => match ph.text.split_once('.') {
                None => {
                    Part::Param(params.iter().position(|p| *p == ph.text).ok_or_else(|| {
                        format!("route {}: unknown parameter {}", r.name, ph.text)
                    })?)
                }
                Some((dep, field)) => {
                    let idx = r
                        .backends
                        .iter()
                        .position(|o| o.name == dep)
                        .ok_or_else(|| format!("route {}: unknown backend {dep}", r.name))?;
                    if !deps.contains(&idx) {
                        deps.push(idx);
                    }
                    Part::Field {
                        backend: idx,
                        path: field.split('.').map(str::to_string).collect(),
                    }
                }
            },
            Part::Field { .. } => return Err("template parsed twice".into()),
        });
    }
    let (codec, message) = match &b.grpc {
        None => (crate::upstream::Codec::Json, None),
        Some(g) => {
            let method = g.resolved.as_ref().ok_or_else(|| {
                format!("route {}: gRPC method {} not resolved", r.name, g.method)
            })?;
            let names: Vec<&str> = r.backends.iter().map(|o| o.name.as_str()).collect();
            let message = message::compile(
                &g.message,
                &method.input(),
                route_params,
                params,
                &names,
                &mut deps,
            )
            .map_err(|e| format!("route {}: {e}", r.name))?;
            (
                crate::upstream::Codec::Grpc(Arc::new(GrpcMethod::new(method))),
                Some(message),
            )
        }
    };
    let method = b.method.clone().unwrap_or_else(|| r.method.clone());
    let template_path = b.path.split('?').next().unwrap_or_default();
    Ok(Backend {
        plan: Plan {
            name: Arc::from(b.name.as_str()),
            group: b.group.clone(),
            shape: Shape::new(b.target.as_deref(), &b.allow, &b.deny, &b.rename),
            decode: Decode::Value,
            default: b.default.clone(),
        },
        upstream,
        // A gRPC call's span is named as OpenTelemetry names RPC spans:
        // `package.Service/Method`.
        span_name: Arc::from(match &b.grpc {
            Some(g) => g.method.clone(),
            None => format!("{method} {template_path}"),
        }),
        backend_span: Arc::from(format!("backend {}", b.name)),
        method,
        template: Template { parts },
        deps,
        optional: b.optional,
        cache_ttl: b.cache_ttl,
        own_query: own_query_names(&b.path),
        codec,
        message,
        pass_errors: b.pass_errors,
        answer_schema: b
            .schema
            .as_ref()
            .filter(|_| b.validate_response)
            .map(|s| s.validator.clone()),
    })
}

/// The names of the query parameters a backend path sets (`/o?customer={id}&limit=5`:
/// customer, limit), percent-decoded.
fn own_query_names(path: &str) -> Vec<String> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .filter(|name| !name.is_empty())
        .map(|name| {
            percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// What a route means, without where it sits in the file (spans), so moving or
/// commenting around a route does not drop its cached answers on reload.
fn route_identity(r: &RouteConfig) -> String {
    let mut s = format!(
        "{} {} {:?} {:?} {:?} {:?} {:?} {}",
        r.method,
        r.path,
        r.timeout,
        r.forward_headers,
        r.forward_query,
        r.cache,
        r.rate_limit,
        r.passthrough
    );
    for b in &r.backends {
        s.push_str(&format!(
            "|{} {} {:?} {} {:?} {:?} {:?} {:?} {:?} {} {:?} {:?} {}",
            b.name,
            b.upstream,
            b.method,
            b.path,
            b.group,
            b.target,
            b.allow,
            b.deny,
            b.rename,
            b.optional,
            b.default,
            b.cache_ttl,
            b.passthrough
        ));
        if let Some(g) = &b.grpc {
            s.push_str(&format!(" {:?}", g.message));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[upstreams.a]
urls = ["http://127.0.0.1:1"]
circuit_breaker = { consecutive_failures = 3, open_for = "1s" }
[upstreams.b]
urls = ["http://127.0.0.1:2"]

[[routes]]
name = "r"
path = "/r"
rate_limit = { per_second = 5, key = "global" }
  [[routes.backends]]
  upstream = "a"
  path = "/"
"#;

    fn build(text: &str, previous: Option<&Gateway>) -> Gateway {
        let config = crate::config::parse("t.toml", text).expect("valid");
        Gateway::build(config, previous, 1).expect("builds")
    }

    #[test]
    fn a_rebuild_keeps_the_state_of_unchanged_upstreams_routes_and_cache() {
        let first = build(CONFIG, None);
        let same = build(CONFIG, Some(&first));
        assert!(
            Arc::ptr_eq(&first.upstreams[0], &same.upstreams[0]),
            "breaker and pools kept"
        );
        assert!(Arc::ptr_eq(&first.cache, &same.cache));
        let (l1, l2) = (
            first.routes[0].limiter.as_ref().unwrap(),
            same.routes[0].limiter.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(l1, l2), "limiter buckets kept");

        let changed = build(
            &CONFIG
                .replace("open_for = \"1s\"", "open_for = \"2s\"")
                .replace("per_second = 5", "per_second = 6"),
            Some(&same),
        );
        assert!(
            !Arc::ptr_eq(&same.upstreams[0], &changed.upstreams[0]),
            "a changed upstream starts afresh"
        );
        assert!(
            Arc::ptr_eq(&same.upstreams[1], &changed.upstreams[1]),
            "its unchanged neighbour is kept"
        );
        assert!(!Arc::ptr_eq(
            same.routes[0].limiter.as_ref().unwrap(),
            changed.routes[0].limiter.as_ref().unwrap()
        ));

        // A comment above a route shifts every span, not what the route means: its
        // cached answers stay valid. A changed limit is a changed route.
        let moved = build(&format!("# shifts every span\n{CONFIG}"), None);
        assert_eq!(moved.routes[0].cache_prefix, first.routes[0].cache_prefix);
        assert_ne!(changed.routes[0].cache_prefix, first.routes[0].cache_prefix);
    }
}
