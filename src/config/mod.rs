//! `routes.toml`: loading and the cross-field checks; the types it loads into are in
//! [`types`].
//!
//! Loading never stops at the first problem: [`parse`] returns every diagnostic it can
//! find (syntax, unknown keys, wrong types, bad durations, unknown upstreams, bad
//! placeholders, cycles, duplicates, missing `${ENV}` variables) so an operator fixes the
//! file in one pass. See `docs/configuration.md` for every key.

pub mod auth;
pub mod cors;
pub mod diag;
pub mod openapi;
pub mod reader;
pub mod schema;
pub mod shared;
mod types;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use url::Url;

pub use diag::{Diagnostic, Diagnostics, SourceSpan};
use reader::{Errors, Key, Table, key};
pub use types::*;

use crate::base::template::Template;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let display = path.display().to_string();
        let bytes = crate::base::files::read_bounded(path, crate::base::files::MAX_CONFIG)
            .map_err(|e| {
                Diagnostics::whole_file(&display, format!("cannot read {display}: {e}"))
            })?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            // Pointed at: the first byte that is not UTF-8, in the text up to there.
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let source = String::from_utf8_lossy(e.as_bytes()).into_owned();
                return Err(Diagnostics {
                    file: display,
                    source: crate::base::redact::in_text(&source).into_owned(),
                    items: vec![
                        Diagnostic::new(at..at + 1, "the file is not UTF-8 text")
                            .label("this byte")
                            .note("save routes.toml as UTF-8"),
                    ],
                });
            }
        };
        parse(&display, &text)
    }

    pub fn route_deadline(&self, route: &RouteConfig) -> Duration {
        route.timeout.unwrap_or(self.server.default_timeout)
    }
}

/// Parses and validates config text; `file` is only used to name it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<Config, Diagnostics> {
    let mut errs: Errors = Vec::new();
    let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
    // The parser recovers and goes on, but the errors after the first on a line are
    // almost always echoes of it; one per line reads like what the operator must fix.
    let mut last_line = None;
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        let line = text[..span.start.min(text.len())].matches('\n').count();
        if last_line != Some(line) {
            last_line = Some(line);
            errs.push(Diagnostic::new(span, e.message().trim().to_string()).label("here"));
        }
    }
    let config = if errs.is_empty() {
        let mut root = Table::new(doc.get_ref(), doc.span(), reader::ROOT);
        // Relative file paths (tls, jwks_file, ca_file) are the config file's neighbours.
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        let config = read_config(&mut root, &mut errs, base);
        root.finish(&mut errs);
        if let Some(config) = &config {
            validate::check(config, text, &mut errs);
        }
        config
    } else {
        None
    };
    match config {
        Some(mut c) if errs.is_empty() => {
            c.fingerprint = file_version(text);
            Ok(c)
        }
        _ => {
            errs.sort_by_key(|d| d.span.start);
            // A URL's credentials never reach the terminal, a CI log or a log line.
            for d in &mut errs {
                d.redact();
            }
            Err(Diagnostics {
                file: file.to_string(),
                source: crate::base::redact::in_text(text).into_owned(),
                items: errs,
            })
        }
    }
}

fn socket_addr(
    errs: &mut Errors,
    value: Option<(String, SourceSpan)>,
    key: &str,
) -> Option<Option<SocketAddr>> {
    let Some((s, span)) = value else {
        return Some(None);
    };
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(Some(a)),
        Err(_) => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{key}` must be an address like \"127.0.0.1:8080\" or \"[::]:8080\""),
                )
                .label("not an ip:port"),
            );
            None
        }
    }
}

/// Reads best-effort values: a bad field records a diagnostic and falls back to its
/// default, so the cross-field checks still run and report their problems too.
fn read_config(root: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<Config> {
    let server = match root.table(
        errs,
        key(
            "server",
            "Listeners, request limits and the bounds of client connections.",
        ),
    ) {
        Some(mut t) => {
            let s = read_server(&mut t, errs, base);
            t.finish(errs);
            s
        }
        None => read_server(&mut Table::empty("[server]"), errs, base),
    };
    let telemetry = match root.table(errs, key("telemetry", "Logs and traces.")) {
        Some(mut t) => {
            let s = read_telemetry(&mut t, errs);
            t.finish(errs);
            s
        }
        None => read_telemetry(&mut Table::empty("[telemetry]"), errs),
    };
    let cors = root
        .table(
            errs,
            key(
                "cors",
                "CORS for browsers on other origins, for every route that sets none of its own.",
            ),
        )
        .and_then(|mut t| {
            let c = read_cors(&mut t, errs);
            t.finish(errs);
            c
        });
    let shared = root
        .table(
            errs,
            key(
                "shared",
                "Rate limits shared by every replica through Redis.",
            ),
        )
        .and_then(|mut t| {
            let s = read_shared(&mut t, errs, base);
            t.finish(errs);
            s
        });
    let mut jwt = Vec::new();
    if let Some(mut auth) = root.table(
        errs,
        key(
            "auth",
            "Token validation: validators routes refer to by name.",
        ),
    ) {
        for (name, _span, mut t) in auth.named_tables(
            errs,
            key(
                "jwt",
                "JWT validators by name: where their keys are and what a token must hold.",
            ),
        ) {
            if let Some(v) = read_jwt(name, &mut t, errs, base) {
                jwt.push(v);
            }
            t.finish(errs);
        }
        auth.finish(errs);
    }
    let mut upstreams = Vec::new();
    for (name, name_span, mut t) in root.named_tables(
        errs,
        key(
            "upstreams",
            "Upstream services by name: where they are and how to call them.",
        ),
    ) {
        if let Some(settings) = read_upstream(&mut t, errs, base) {
            upstreams.push(UpstreamConfig {
                name,
                name_span,
                settings,
            });
        }
        t.finish(errs);
    }
    let mut routes = Vec::new();
    for mut t in root.table_array(
        errs,
        key(
            "routes",
            "Public routes: a path, its backends and how their answers merge.",
        ),
    ) {
        if let Some(r) = read_route(&mut t, errs) {
            routes.push(r);
        }
        t.finish(errs);
    }
    Some(Config {
        server: server?,
        telemetry: telemetry?,
        upstreams,
        routes,
        cors,
        jwt,
        shared,
        fingerprint: 0,
    })
}

fn read_server(t: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<ServerConfig> {
    let listen = t.string(
        errs,
        key(
            "listen",
            "Public listener, ip:port (HTTP/1.1 and h2c). Default 127.0.0.1:8080.",
        ),
    );
    let listen = socket_addr(errs, listen, "listen");
    let admin = t.string(errs, key("admin_listen", "Admin listener for /health, /ready, /routes and /metrics. Default 127.0.0.1:9901; never the public port."));
    let admin = socket_addr(errs, admin, "admin_listen");
    let default_timeout = positive_duration(
        t,
        errs,
        key(
            "default_timeout",
            "Route deadline when a route sets none. Default 2s.",
        ),
    );
    let max_request_body = t
        .size(
            errs,
            key(
                "max_request_body",
                "Larger request bodies get 413. Default 1MiB.",
            ),
        )
        .map(|(n, _)| n);
    let shutdown_grace = t
        .duration(
            errs,
            key(
                "shutdown_grace",
                "How long a drain waits for in-flight requests. Default 10s.",
            ),
        )
        .map(|(d, _)| d);
    let cache_capacity = t
        .size(
            errs,
            key(
                "cache_capacity",
                "Bytes the route and backend caches may hold together. Default 64MiB.",
            ),
        )
        .map(|(n, _)| n);
    let header_read_timeout = positive_duration(
        t,
        errs,
        key(
            "header_read_timeout",
            "Time a client has, from connecting or from the first byte of its next request, to send a whole request head. Default 10s.",
        ),
    );
    let idle_timeout = positive_duration(
        t,
        errs,
        key(
            "idle_timeout",
            "A kept-alive HTTP/1.1 connection with no request, or an h2 connection with no open stream, is closed after this long (h2: GOAWAY). Default 60s.",
        ),
    );
    let send_timeout = positive_duration(
        t,
        errs,
        key(
            "send_timeout",
            "A connection whose client takes none of an answer for this long is closed. Default 30s.",
        ),
    );
    let max_connections = t
        .count(errs, key("max_connections", "Open client connections; past it new ones are closed at once. Default: half the descriptor limit.").at_least(1.0))
        .map(|(n, _)| usize::try_from(n).unwrap_or(usize::MAX));
    let max_header_size = t.size(errs, key("max_header_size", "Bytes of a request head (path, query, header names and values), HTTP/1.1 and h2 alike: 414 or 431 past it. Default 32KiB.").between(1024.0, 1048576.0)).map(|(n, _)| n);
    // Below 64 KiB every buffered answer but the smallest would be refused.
    let buffer_capacity = t.size(errs, key("buffer_capacity", "Bytes of upstream answers held in memory at once, across all requests; past it new upstream calls fail at once (OVERLOADED). Default 256MiB.").at_least(65536.0)).map(|(n, _)| n);
    let buffer_per_connection = t.size(errs, key("buffer_per_connection", "Of buffer_capacity, what one h2 connection's requests may hold (answers being read and answers its client has not taken); past it its new requests get 503. Default 16MiB.").at_least(65536.0));
    if let Some((n, span)) = &buffer_per_connection
        && *n > buffer_capacity.unwrap_or(DEFAULT_BUFFER_CAPACITY)
    {
        errs.push(
            Diagnostic::new(
                span.clone(),
                "buffer_per_connection is larger than buffer_capacity",
            )
            .label("a connection's share cannot pass the whole"),
        );
    }
    let buffer_per_connection = buffer_per_connection.map(|(n, _)| n);
    let workers = t.count(errs, key("workers", "Event loops (threads), each with its own listening socket and upstream pools. Default: one per CPU.").between(1.0, 1024.0)).map(|(n, _)| n as usize);
    let mut trusted = Vec::new();
    for (s, span) in t.string_list(errs, key("trusted_proxies", "Peers (IPs or CIDR ranges) whose x-forwarded-for is believed when finding the client_ip of a rate limit.")).unwrap_or_default() {
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted.push(net),
            Err(_) => errs.push(
                Diagnostic::new(span, format!("`{s}` is not an IP address or CIDR range"))
                    .label("expected e.g. \"10.0.0.0/8\" or \"192.0.2.7\""),
            ),
        }
    }
    if let (Some(Some(l)), Some(Some(a))) = (&listen, &admin)
        && l == a
        && l.port() != 0
    {
        errs.push(
            Diagnostic::new(t.span(), format!("admin_listen and listen are both {l}"))
                .label("the admin listener is never on the public port")
                .note("give admin_listen its own port, e.g. \"127.0.0.1:9901\""),
        );
    }
    let tls = t
        .table(
            errs,
            key(
                "tls",
                "The public listener speaks TLS 1.2/1.3 (ALPN h2, http/1.1) with this certificate and key; both re-read when they change.",
            ),
        )
        .and_then(|mut tt| {
            let tls = read_tls(&mut tt, errs, base);
            tt.finish(errs);
            tls
        });
    let default_listen = DEFAULT_LISTEN.parse().ok()?;
    let default_admin = DEFAULT_ADMIN_LISTEN.parse().ok()?;
    Some(ServerConfig {
        listen: listen.flatten().unwrap_or(default_listen),
        admin_listen: Some(admin.flatten().unwrap_or(default_admin)),
        default_timeout: default_timeout.flatten().unwrap_or(DEFAULT_TIMEOUT),
        max_request_body: max_request_body.unwrap_or(DEFAULT_MAX_REQUEST_BODY),
        trusted_proxies: trusted,
        shutdown_grace: shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        workers,
        cache_capacity: cache_capacity.unwrap_or(DEFAULT_CACHE_CAPACITY),
        header_read_timeout: header_read_timeout
            .flatten()
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        idle_timeout: idle_timeout.flatten().unwrap_or(DEFAULT_IDLE_TIMEOUT),
        send_timeout: send_timeout.flatten().unwrap_or(DEFAULT_SEND_TIMEOUT),
        max_connections,
        max_header_size: max_header_size.unwrap_or(DEFAULT_MAX_HEADER_SIZE),
        buffer_capacity: buffer_capacity.unwrap_or(DEFAULT_BUFFER_CAPACITY),
        buffer_per_connection: buffer_per_connection.unwrap_or(DEFAULT_BUFFER_PER_CONNECTION),
        tls,
    })
}

/// `tls = { cert, key }`: both files read and checked to belong together now, so a
/// pair that could not serve is a load error (and a refused reload).
fn read_tls(t: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<TlsFiles> {
    let cert = t.required_string(
        errs,
        key(
            "cert",
            "PEM certificate chain, leaf first; relative to the config file's directory.",
        ),
    );
    let key_file = t.required_string(
        errs,
        key(
            "key",
            "PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate; relative to the config file's directory.",
        ),
    );
    let ((cert, cert_span), (key_file, key_span)) = (cert?, key_file?);
    let (cert, key_file) = (base.join(cert), base.join(key_file));
    match crate::base::tls::load_pair(&cert, &key_file) {
        Ok(pair) => Some(TlsFiles {
            cert,
            key: key_file,
            pair,
        }),
        Err((file, e)) => {
            let span = match file {
                crate::base::tls::PairFile::Cert => cert_span,
                crate::base::tls::PairFile::Key => key_span,
            };
            errs.push(Diagnostic::new(span, e).label("unusable"));
            None
        }
    }
}

/// `Some(None)` when absent, `None` when present but bad.
fn positive_duration(t: &mut Table<'_, '_>, errs: &mut Errors, k: Key) -> Option<Option<Duration>> {
    let present = t.get(k).is_some();
    match t.duration(errs, k) {
        Some((d, span)) if d.is_zero() => {
            errs.push(
                Diagnostic::new(span, format!("`{}` must be longer than zero", k.name))
                    .label("zero"),
            );
            None
        }
        Some((d, _)) => Some(Some(d)),
        None if present => None,
        None => Some(None),
    }
}

fn read_telemetry(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<TelemetryConfig> {
    let service_name = t
        .string(
            errs,
            key(
                "service_name",
                "service.name of the spans. Default manifold.",
            ),
        )
        .map(|(s, _)| s);
    let log_format = match t.string(errs, key("log_format", "json (default) or pretty.")) {
        None => LogFormat::Json,
        Some((s, _)) if s == "json" => LogFormat::Json,
        Some((s, _)) if s == "pretty" => LogFormat::Pretty,
        Some((s, span)) => {
            errs.push(
                Diagnostic::new(span, format!("unknown log_format `{s}`"))
                    .label("expected \"json\" or \"pretty\""),
            );
            LogFormat::Json
        }
    };
    let access_log = t
        .bool(
            errs,
            key("access_log", "One line per request. Default true."),
        )
        .unwrap_or(true);
    let otlp_endpoint = match t.string(errs, key("otlp_endpoint", "OTLP/HTTP collector base URL; spans go to {this}/v1/traces. Default: OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.")) {
        Some((s, span)) => match Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                Some(s.trim_end_matches('/').to_string())
            }
            _ => {
                errs.push(
                    Diagnostic::new(span, format!("otlp_endpoint `{s}` is not an http(s) URL"))
                        .label("bad URL"),
                );
                None
            }
        },
        None => None,
    };
    let sample_ratio = t.number(errs, key("sample_ratio", "Share of new traces sampled (parent-based: a client's sampled flag wins). Default 1.0.").between(0.0, 1.0)).map_or(1.0, |(r, _)| r);
    Some(TelemetryConfig {
        service_name: service_name.unwrap_or_else(|| "manifold".to_string()),
        log_format,
        access_log,
        otlp_endpoint,
        sample_ratio,
    })
}

fn read_upstream(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<UpstreamSettings> {
    const URLS: Key = key(
        "urls",
        "One or more http(s) base URLs, called round-robin. user:password@ in a URL is sent as basic auth.",
    );
    const CONSECUTIVE_FAILURES: Key = key(
        "consecutive_failures",
        "Faults in a row that open the breaker.",
    )
    .at_least(1.0);
    const OPEN_FOR: Key = key(
        "open_for",
        "How long the breaker stays open before its probe.",
    );
    const ATTEMPTS: Key = key("attempts", "Total attempts, the first one included.").at_least(1.0);
    let mut urls = Vec::new();
    t.require(URLS);
    match t.string_list(errs, URLS) {
        Some(list) if list.is_empty() => errs.push(
            Diagnostic::new(t.span(), format!("{} needs at least one url", t.name))
                .label("empty `urls`"),
        ),
        Some(list) => {
            for (s, span) in list {
                match Url::parse(&s) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                        if u.query().is_some() || u.fragment().is_some() {
                            errs.push(
                                Diagnostic::new(
                                    span,
                                    format!("upstream url `{s}` must not have a query or fragment"),
                                )
                                .label("remove the part after `?` or `#`"),
                            );
                        } else {
                            urls.push(u);
                        }
                    }
                    _ => errs.push(
                        Diagnostic::new(span, format!("`{s}` is not an http:// or https:// URL"))
                            .label("expected e.g. \"http://127.0.0.1:7001\""),
                    ),
                }
            }
        }
        None if t.get(URLS).is_none() => t.missing(errs, "urls"),
        None => {}
    }
    let timeout = positive_duration(
        t,
        errs,
        key(
            "timeout",
            "Bound of each attempt (connect, head and body); the route deadline still applies.",
        ),
    )
    .flatten();
    let max_concurrency = t
        .count(errs, key("max_concurrency", "Calls in flight to this upstream at once; past it a call fails at once (OVERLOADED). Default 1024.").at_least(1.0))
        .map(|(n, _)| n.min(u32::MAX as u64) as u32);
    let circuit_breaker = t.table(errs, key("circuit_breaker", "Opens after consecutive faults (connect error, timeout, 5xx); after open_for one probe decides.")).and_then(|mut b| {
        let failures = b.count(errs, CONSECUTIVE_FAILURES);
        let open_for = b.duration(errs, OPEN_FOR);
        let out = match (failures, open_for) {
            (Some((n, _)), Some((d, _))) => Some(BreakerConfig {
                consecutive_failures: n.min(u32::MAX as u64) as u32,
                open_for: d,
            }),
            (f, o) => {
                if f.is_none() && b.get(CONSECUTIVE_FAILURES).is_none() {
                    b.missing(errs, "consecutive_failures");
                }
                if o.is_none() && b.get(OPEN_FOR).is_none() {
                    b.missing(errs, "open_for");
                }
                None
            }
        };
        b.finish(errs);
        out
    });
    let retry = t.table(errs, key("retry", "Attempts for idempotent calls (and POST with idempotency-key) after a connect error, a timeout or a 502/503/504.")).and_then(|mut r| {
        let attempts = r.count(errs, ATTEMPTS);
        let backoff = r.duration(errs, key("backoff", "Wait between attempts. Default 0.")).map(|(d, _)| d);
        let budget = percent(&mut r, errs, key("budget", "Retries plus hedges per 10 s, as a share of first attempts (\"20%\"); at least 3 per window. Default: unbudgeted.")).map(|(f, _)| f);
        let out = match attempts {
            Some((n, _)) => Some(RetryConfig {
                attempts: n.min(16) as u32,
                backoff: backoff.unwrap_or(Duration::ZERO),
                budget,
            }),
            None => {
                if r.get(ATTEMPTS).is_none() {
                    r.missing(errs, "attempts");
                }
                None
            }
        };
        r.finish(errs);
        out
    });
    let rate_limit = t
        .table(
            errs,
            key(
                "rate_limit",
                "Limit of calls to this upstream, shared by every route (OVERLOADED past it).",
            ),
        )
        .and_then(|mut r| {
            let rate = read_rate(&mut r, errs);
            r.finish(errs);
            rate
        });
    let ca_file = t
        .string(
            errs,
            key(
                "ca_file",
                "Extra CA certificates (PEM) trusted for https urls.",
            ),
        )
        .and_then(|(s, span)| {
            match crate::base::files::read_bounded(&base.join(&s), crate::base::files::MAX_FILE)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(base.join(s)),
                Ok(_) => {
                    errs.push(
                        Diagnostic::new(span, format!("ca_file `{s}` holds no PEM certificate"))
                            .label("not a PEM file"),
                    );
                    None
                }
                Err(e) => {
                    errs.push(
                        Diagnostic::new(span, format!("cannot read ca_file `{s}`: {e}"))
                            .label("unreadable"),
                    );
                    None
                }
            }
        });
    let max_response_body = t
        .size(
            errs,
            key(
                "max_response_body",
                "Larger answers fail the backend (502) before they are buffered. Default 16MiB.",
            ),
        )
        .map(|(n, _)| n);
    let balance = match t.string(
        errs,
        key(
            "balance",
            "round_robin (default) or least_request: of two hosts drawn at random, the one with fewer calls in flight.",
        ),
    ) {
        None => Balance::RoundRobin,
        Some((s, _)) if s == "round_robin" => Balance::RoundRobin,
        Some((s, _)) if s == "least_request" => Balance::LeastRequest,
        Some((s, span)) => {
            errs.push(
                Diagnostic::new(span, format!("unknown balance `{s}`"))
                    .label("expected \"round_robin\" or \"least_request\""),
            );
            Balance::RoundRobin
        }
    };
    let outlier = t
        .table(
            errs,
            key(
                "outlier",
                "Passive ejection: a host failing (connect error, timeout, 5xx) consecutive_failures times in a row leaves the rotation for eject_for.",
            ),
        )
        .map(|mut o| {
            let consecutive_failures = o
                .count(
                    errs,
                    key("consecutive_failures", "Failures in a row that eject a host. Default 5.")
                        .at_least(1.0),
                )
                .map_or(5, |(n, _)| n.min(u32::MAX as u64) as u32);
            let eject_for = positive_duration(
                &mut o,
                errs,
                key(
                    "eject_for",
                    "First ejection; then probation as long, a failure in it ejects for twice the last (at most 10x). Default 30s.",
                ),
            )
            .flatten()
            .unwrap_or(Duration::from_secs(30));
            let max_ejected = percent(
                &mut o,
                errs,
                key(
                    "max_ejected",
                    "Share of the hosts ejected at once at most, rounded down (\"50%\"). Default 50%.",
                ),
            )
            .map_or(0.5, |(f, _)| f);
            o.finish(errs);
            OutlierConfig {
                consecutive_failures,
                eject_for,
                max_ejected,
            }
        });
    let health_check = t
        .table(
            errs,
            key(
                "health_check",
                "Active checks: GET path on every host every interval, from each replica; 2xx within timeout is healthy.",
            ),
        )
        .and_then(|mut h| {
            const PATH: Key = key("path", "Path probed on every host, e.g. \"/healthz\".");
            h.require(PATH);
            let path = h.string(errs, PATH);
            let interval = positive_duration(&mut h, errs, key("interval", "Time between probes of a host. Default 5s."))
                .flatten()
                .unwrap_or(Duration::from_secs(5));
            let timeout = positive_duration(&mut h, errs, key("timeout", "Bound of one probe. Default 1s."))
                .flatten()
                .unwrap_or(Duration::from_secs(1));
            let unhealthy = h
                .count(errs, key("unhealthy", "Failed probes in a row that take a host out. Default 3.").at_least(1.0))
                .map_or(3, |(n, _)| n.min(u32::MAX as u64) as u32);
            let healthy = h
                .count(errs, key("healthy", "Good probes in a row that bring it back. Default 2.").at_least(1.0))
                .map_or(2, |(n, _)| n.min(u32::MAX as u64) as u32);
            let path = match path {
                Some((p, span)) if !p.starts_with('/') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() => {
                    errs.push(
                        Diagnostic::new(span, format!("health_check path `{p}` is not a path"))
                            .label("expected e.g. \"/healthz\""),
                    );
                    None
                }
                Some((p, _)) => Some(p),
                None => {
                    if h.get(PATH).is_none() {
                        h.missing(errs, "path");
                    }
                    None
                }
            };
            h.finish(errs);
            Some(HealthCheckConfig {
                path: path?,
                interval,
                timeout,
                unhealthy,
                healthy,
            })
        });
    let hedge = t
        .table(
            errs,
            key(
                "hedge",
                "Retryable calls only: no answer after `after` -> one more attempt on another host (uses one of retry.attempts); the first answer wins.",
            ),
        )
        .and_then(|mut h| {
            const AFTER: Key = key("after", "How long the first attempt has to answer before the hedge goes.");
            h.require(AFTER);
            let after = positive_duration(&mut h, errs, AFTER).flatten();
            if after.is_none() && h.get(AFTER).is_none() {
                h.missing(errs, "after");
            }
            h.finish(errs);
            after.map(|after| HedgeConfig { after })
        });
    let protocol = match t.string(
        errs,
        key(
            "protocol",
            "http1 (default), h2 (TLS, ALPN; https urls) or h2c (cleartext, prior knowledge; http urls): HTTP/2 calls share one connection per host per worker.",
        ),
    ) {
        None => Protocol::Http1,
        Some((s, span)) => {
            let p = match s.as_str() {
                "http1" => Some(Protocol::Http1),
                "h2" => Some(Protocol::H2),
                "h2c" => Some(Protocol::H2c),
                _ => None,
            };
            match p {
                None => {
                    errs.push(
                        Diagnostic::new(span, format!("unknown protocol `{s}`"))
                            .label("expected \"http1\", \"h2\" or \"h2c\""),
                    );
                    Protocol::Http1
                }
                Some(p) => {
                    let wrong = match p {
                        Protocol::H2 => urls.iter().find(|u| u.scheme() != "https"),
                        Protocol::H2c => urls.iter().find(|u| u.scheme() != "http"),
                        Protocol::Http1 => None,
                    };
                    if let Some(u) = wrong {
                        let (want, why) = if p == Protocol::H2 {
                            ("https", "h2 is negotiated in the TLS handshake (ALPN)")
                        } else {
                            ("http", "h2c is HTTP/2 without TLS")
                        };
                        errs.push(
                            Diagnostic::new(
                                span,
                                format!(
                                    "protocol `{s}` needs {want}:// urls, and `{}` is not one",
                                    crate::base::redact::url(u.as_str())
                                ),
                            )
                            .label(why),
                        );
                    }
                    p
                }
            }
        }
    };
    Some(UpstreamSettings {
        urls,
        timeout,
        max_concurrency,
        circuit_breaker,
        retry,
        rate_limit,
        ca_file,
        max_response_body: max_response_body.unwrap_or(DEFAULT_MAX_RESPONSE_BODY),
        balance,
        outlier,
        health_check,
        hedge,
        protocol,
    })
}

/// A share written as a percentage (`"20%"`), as a fraction of one.
fn percent(t: &mut Table<'_, '_>, errs: &mut Errors, k: Key) -> Option<(f64, SourceSpan)> {
    let (s, span) = t.string(errs, k)?;
    match s
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
    {
        Some(n) if (0.0..=100.0).contains(&n) => Some((n / 100.0, span)),
        _ => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{}` must be a percentage from 0% to 100%", k.name),
                )
                .label("expected e.g. \"20%\""),
            );
            None
        }
    }
}

fn read_rate(r: &mut Table<'_, '_>, errs: &mut Errors) -> Option<RateConfig> {
    const PER_SECOND: Key = key(
        "per_second",
        "Requests per second allowed (GCRA); fractions allowed, at least one a day.",
    )
    .at_least(1.0 / 86_400.0);
    let per_second = r.number(errs, PER_SECOND);
    let burst = r.count(
        errs,
        key(
            "burst",
            "Requests allowed at once above the steady rate. Default: per_second rounded up.",
        ),
    );
    match per_second {
        Some((n, span)) => {
            let burst = burst.map_or((n.ceil() as u32).max(1), |(b, _)| {
                b.clamp(1, u32::MAX as u64) as u32
            });
            // GCRA keeps burst × period in nanoseconds; past a century it overflows.
            if f64::from(burst) / n > 100.0 * 365.0 * 86_400.0 {
                errs.push(
                    Diagnostic::new(
                        span,
                        "burst / per_second is more than a century of requests",
                    )
                    .label("lower burst or raise per_second"),
                );
                return None;
            }
            Some(RateConfig {
                per_second: n,
                burst,
            })
        }
        None => {
            if r.get(PER_SECOND).is_none() {
                r.missing(errs, "per_second");
            }
            None
        }
    }
}

fn method_of(errs: &mut Errors, value: Option<(String, SourceSpan)>) -> Option<Option<Method>> {
    let Some((s, span)) = value else {
        return Some(None);
    };
    let upper = s.to_ascii_uppercase();
    match Method::from_bytes(upper.as_bytes()) {
        Ok(m) => Some(Some(m)),
        Err(_) => {
            errs.push(
                Diagnostic::new(span, format!("`{s}` is not an HTTP method"))
                    .label("expected e.g. \"GET\" or \"POST\""),
            );
            None
        }
    }
}

fn read_route(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<RouteConfig> {
    const TTL: Key = key(
        "ttl",
        "How long an answer is fresh (shortened by the upstreams' cache-control).",
    );
    let name = t.string(
        errs,
        key(
            "name",
            "Labels metrics, logs and spans. Default \"METHOD path\".",
        ),
    );
    let method = t.string(
        errs,
        key(
            "method",
            "HTTP method. Default GET; a GET route also answers HEAD.",
        ),
    );
    let method = method_of(errs, method);
    let path = t.required_string(errs, key("path", "Path with {param} segments."));
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
    let timeout = positive_duration(
        t,
        errs,
        key(
            "timeout",
            "Deadline for the whole request. Default: server.default_timeout.",
        ),
    );
    let forward_headers = t
        .string_list(
            errs,
            key(
                "forward_headers",
                "Client headers that reach upstreams; [\"*\"] for all but hop-by-hop ones.",
            ),
        )
        .unwrap_or_default();
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
    let forward_query = t
        .string_list(
            errs,
            key(
                "forward_query",
                "Client query parameters that reach upstreams; [\"*\"] for all.",
            ),
        )
        .unwrap_or_default();
    let cache = t
        .table(
            errs,
            key(
                "cache",
                "Keep complete 200 answers of this route (GET, merged).",
            ),
        )
        .and_then(|mut c| {
            let ttl = c.duration(errs, TTL);
            let stale = c
                .duration(
                    errs,
                    key(
                        "stale_if_error",
                        "How long past ttl an answer may stand in when a fresh attempt fails.",
                    ),
                )
                .map(|(d, _)| d);
            if ttl.is_none() && c.get(TTL).is_none() {
                c.missing(errs, "ttl");
            }
            c.finish(errs);
            ttl.map(|(ttl, _)| CacheConfig {
                ttl,
                stale_if_error: stale,
            })
        });
    let rate_limit = t.table(errs, key("rate_limit", "Requests per key: 429 with retry-after past it.")).and_then(|mut r| {
        let rate = read_rate(&mut r, errs);
        let limit_key = match r.string(errs, key("key", "client_ip (default), global, header:NAME, or claim:NAME (a validated claim of the route's token).")) {
            None => Some(LimitKey::ClientIp),
            Some((k, _)) if k == "client_ip" => Some(LimitKey::ClientIp),
            Some((k, _)) if k == "global" => Some(LimitKey::Global),
            Some((k, span)) if k.starts_with("claim:") => match k["claim:".len()..].trim() {
                "" => {
                    errs.push(Diagnostic::new(span, "`claim:` names no claim").label("e.g. \"claim:sub\""));
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
                        Diagnostic::new(span, format!("unknown rate limit key `{k}`"))
                            .label("expected \"client_ip\", \"global\", \"header:NAME\" or \"claim:NAME\""),
                    );
                    None
                }
            },
        };
        let max_keys = r.count(errs, key("max_keys", "Keys remembered at most; the least recently used are forgotten first. Default 100000.").at_least(1.0)).map_or(DEFAULT_MAX_KEYS, |(n, _)| n);
        r.finish(errs);
        Some(RouteRateLimit {
            rate: rate?,
            key: limit_key?,
            max_keys,
        })
    });
    let passthrough = t
        .bool(
            errs,
            key(
                "passthrough",
                "Stream one backend's answer unchanged, bodies both ways.",
            ),
        )
        .unwrap_or(false);
    const WEBSOCKET: Key = key(
        "websocket",
        "Carry `upgrade: websocket` requests to the upstream and splice both ways after its 101 (passthrough routes): true, or { allow_origins = [...] } naming the origins whose pages may open one.",
    );
    const IDLE_TIMEOUT: Key = key(
        "idle_timeout",
        "A WebSocket tunnel with no bytes either way for this long is closed. Default 5m.",
    );
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
        Some(_) => (t.bool(errs, WEBSOCKET).unwrap_or(false), None),
    };
    let idle_span = t.get(IDLE_TIMEOUT).map(|v| v.span());
    let idle_timeout = positive_duration(t, errs, IDLE_TIMEOUT).flatten();
    if let Some(span) = idle_span.filter(|_| !websocket) {
        errs.push(
            Diagnostic::new(
                span,
                "`idle_timeout` applies only to `websocket = true` routes",
            )
            .label("no tunnels on this route"),
        );
    }
    const CORS: Key = key(
        "cors",
        "This route's own CORS table (replacing [cors] whole), or false for none.",
    );
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
    let auth = t
        .table(
            errs,
            key(
                "auth",
                "This route's token check: { jwt = \"NAME\", scopes, claims_to_headers, optional }.",
            ),
        )
        .and_then(|mut a| {
            auth_span = a.span();
            let jwt = a.required_string(errs, key("jwt", "The [auth.jwt.NAME] validator that checks the token."));
            let scopes = a
                .string_list(errs, key("scopes", "Scopes the token must hold, each in its `scope` claim (space-separated) or `scp` array; 403 otherwise."))
                .unwrap_or_default();
            let pairs = a
                .string_map(errs, key("claims_to_headers", "Validated claims sent to every backend as headers: { claim = \"header-name\" }."))
                .unwrap_or_default();
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
            let optional = a
                .bool(errs, key("optional", "Let a request without a token through (no claims); a bad token still fails. Default false."))
                .unwrap_or(false);
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
    let route_method = method.clone().flatten().unwrap_or(Method::GET);
    let mut backends = Vec::new();
    let tables = t.table_array(
        errs,
        key(
            "backends",
            "Backends, called concurrently (or after the ones they read from).",
        ),
    );
    // `backends = []` as much as no key: a route must call something.
    if tables.is_empty() {
        errs.push(
            Diagnostic::new(t.span(), format!("{} has no backends", t.name))
                .label("add at least one [[routes.backends]]"),
        );
    }
    for mut b in tables {
        if let Some(backend) = read_backend(&mut b, errs) {
            backends.push(backend);
        }
        b.finish(errs);
    }
    let (path, path_span) = path?;
    let passthrough = passthrough || backends.iter().any(|b| b.passthrough);
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
        idle_timeout: idle_timeout.unwrap_or(DEFAULT_TUNNEL_IDLE),
        cors,
        auth,
        auth_span,
        auth_jwt_span,
        backends,
    })
}

/// How long a WebSocket tunnel may stay silent when the route sets no `idle_timeout`.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(300);

/// `[shared]`: where the replicas' Redis is.
fn read_shared(t: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<SharedConfig> {
    let redis = t.required_string(
        errs,
        key(
            "redis",
            "redis://[:password@]host:port/db (usually \"${REDIS_URL}\"); the password is never shown.",
        ),
    );
    let key_prefix = t
        .string(
            errs,
            key(
                "key_prefix",
                "Start of every key: replicas with the same Redis and prefix share state. Default \"manifold:\".",
            ),
        )
        .map_or_else(|| DEFAULT_SHARED_PREFIX.to_string(), |(p, _)| p);
    let timeout = positive_duration(
        t,
        errs,
        key(
            "timeout",
            "Per Redis operation; past it the replica decides alone. Default 20ms.",
        ),
    )
    .flatten()
    .unwrap_or(DEFAULT_SHARED_TIMEOUT);
    let max_entry = t
        .size(
            errs,
            key(
                "max_entry",
                "Larger cached answers stay local. Default 256KiB.",
            ),
        )
        .map_or(DEFAULT_SHARED_MAX_ENTRY, |(n, _)| n);
    let ca_file = t
        .string(
            errs,
            key(
                "ca_file",
                "For rediss://: CA certificates (PEM) trusted besides the system's; relative to the config file's directory.",
            ),
        )
        .and_then(|(s, span)| {
            let path = base.join(&s);
            match crate::base::files::read_bounded(&path, crate::base::files::MAX_FILE) {
                Ok(b) if String::from_utf8_lossy(&b).contains("-----BEGIN CERTIFICATE-----") => {
                    Some(path)
                }
                _ => {
                    errs.push(
                        Diagnostic::new(span, format!("ca_file `{s}` is not a readable PEM file"))
                            .label("unusable"),
                    );
                    None
                }
            }
        });
    let secret = t
        .string(
            errs,
            key(
                "secret",
                "Signs shared cache entries (HMAC-SHA256), so replicas drop entries a writer to Redis forged or moved; at least 32 bytes, usually \"${ENV}\"; never shown. Every replica needs the same one.",
            ),
        )
        .and_then(|(s, span)| {
            if s.len() < 32 {
                errs.push(
                    Diagnostic::new(span, "the secret is shorter than 32 bytes")
                        .label("too short to resist guessing")
                        .note("use at least 256 bits of random data, e.g. `openssl rand -base64 32`"),
                );
                None
            } else {
                Some(auth::Secret(s))
            }
        });
    let (url, span) = redis?;
    match Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
        _ => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{}` is not a redis:// URL", crate::base::redact::url(&url)),
                )
                .label("expected redis:// or rediss://[:password@]host:port/db"),
            );
            return None;
        }
    }
    Some(SharedConfig {
        redis: url,
        key_prefix,
        timeout,
        max_entry,
        ca_file,
        secret,
    })
}

/// `[auth.jwt.NAME]`: exactly one key source; algorithms that fit it.
fn read_jwt(
    name: String,
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<JwtConfig> {
    let url = t.string(errs, key("jwks_url", "Where the JWKS is (http:// or https://): fetched at start, every refresh, and on an unknown kid."));
    let file = t.string(errs, key("jwks_file", "A JWKS file, read at load and again when it changes; relative to the config file's directory."));
    let secret = t.string(
        errs,
        key(
            "secret",
            "An HMAC secret for HS256/384/512, usually \"${ENV}\"; never shown.",
        ),
    );
    let given = [url.is_some(), file.is_some(), secret.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        errs.push(
            Diagnostic::new(
                t.span(),
                format!(
                    "{} needs exactly one of jwks_url, jwks_file and secret",
                    t.name
                ),
            )
            .label(if given == 0 {
                "no key source"
            } else {
                "more than one key source"
            }),
        );
    }
    let mut source = None;
    if let Some((u, span)) = url {
        match Url::parse(&u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                source = Some(KeySource::Url(parsed))
            }
            _ => errs.push(
                Diagnostic::new(
                    span,
                    format!(
                        "jwks_url `{}` is not an http(s) URL",
                        crate::base::redact::url(&u)
                    ),
                )
                .label("not a URL"),
            ),
        }
    }
    if let Some((f, span)) = file {
        let path = base.join(&f);
        match crate::base::files::read_bounded(&path, crate::base::files::MAX_FILE)
            .map_err(|e| e.to_string())
            .and_then(|t| auth::parse_jwks(&t).map(|k| k.len()))
        {
            Ok(_) => source = Some(KeySource::File(path)),
            Err(e) => errs.push(
                Diagnostic::new(span, format!("jwks_file `{f}` cannot be used: {e}"))
                    .label("unusable"),
            ),
        }
    }
    if let Some((s, span)) = secret {
        if s.len() < 32 {
            errs.push(
                Diagnostic::new(span, "the secret is shorter than 32 bytes")
                    .label("too short to resist guessing")
                    .note("an HS256 secret should be at least 256 bits of random data"),
            );
        } else {
            source = Some(KeySource::Secret(Secret(s)));
        }
    }
    const ALGORITHMS: Key = key(
        "algorithms",
        "Algorithms accepted (required): a token's alg must be listed and be its key's. HS* only with secret; RS*, PS*, ES256/384, EdDSA only with a JWKS.",
    );
    t.require(ALGORITHMS);
    let listed = t.string_list(errs, ALGORITHMS);
    let mut algorithms = Vec::new();
    match &listed {
        None if t.get(ALGORITHMS).is_none() => t.missing(errs, "algorithms"),
        Some(list) if list.is_empty() => errs.push(
            Diagnostic::new(t.span(), "algorithms is empty")
                .label("list the algorithms your tokens use"),
        ),
        _ => {}
    }
    for (a, span) in listed.unwrap_or_default() {
        match a.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) => {
                let hmac = auth::family(alg) == jsonwebtoken::AlgorithmFamily::Hmac;
                match &source {
                    Some(KeySource::Secret(_)) if !hmac => errs.push(Diagnostic::new(span, format!("{a} needs a public key; a secret only checks HS256/384/512")).label("not an HMAC algorithm")),
                    Some(KeySource::Url(_) | KeySource::File(_)) if hmac => errs.push(
                        Diagnostic::new(span, format!("{a} is checked with a secret, not a JWKS"))
                            .label("HMAC with a public key set")
                            .note("listing HS* next to public keys is how alg-confusion attacks work; use `secret` for HMAC tokens"),
                    ),
                    _ => algorithms.push(alg),
                }
            }
            Err(_) => errs.push(
                Diagnostic::new(span, format!("unknown algorithm `{a}`"))
                    .label("not a JWS algorithm")
                    .note("HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (`none` never)"),
            ),
        }
    }
    let issuer = t
        .string(errs, key("issuer", "The token's iss must equal it."))
        .map(|(s, _)| s);
    let audience = t
        .string_list(
            errs,
            key("audience", "The token's aud must hold one of them."),
        )
        .unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let leeway = t
        .duration(
            errs,
            key(
                "leeway",
                "Clock skew allowed on exp, nbf and iat. Default 30s.",
            ),
        )
        .map_or(DEFAULT_LEEWAY, |(d, _)| d);
    let refresh = positive_duration(
        t,
        errs,
        key(
            "refresh",
            "How often the JWKS URL is fetched again. Default 10m.",
        ),
    )
    .flatten()
    .unwrap_or(DEFAULT_JWKS_REFRESH);
    let refresh_cooldown = positive_duration(
        t,
        errs,
        key(
            "refresh_cooldown",
            "An unknown kid fetches the JWKS again at most once per this. Default 30s.",
        ),
    )
    .flatten()
    .unwrap_or(DEFAULT_JWKS_COOLDOWN);
    let ca_file = t
        .string(
            errs,
            key(
                "ca_file",
                "Extra CA certificates (PEM) trusted for an https jwks_url.",
            ),
        )
        .and_then(|(s, span)| {
            match crate::base::files::read_bounded(&base.join(&s), crate::base::files::MAX_FILE)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(base.join(s)),
                _ => {
                    errs.push(
                        Diagnostic::new(span, format!("ca_file `{s}` is not a readable PEM file"))
                            .label("unusable"),
                    );
                    None
                }
            }
        });
    if algorithms.is_empty() {
        return None;
    }
    Some(JwtConfig {
        name,
        source: source?,
        issuer,
        audience,
        algorithms,
        leeway,
        refresh,
        refresh_cooldown,
        ca_file,
    })
}

/// A `[cors]` table or a route's own `cors` table.
/// A route's `websocket = { allow_origins = [...] }`: the origins whose pages may open a
/// tunnel (patterns as CORS's).
fn read_websocket(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<Vec<String>> {
    const ORIGINS: Key = key(
        "allow_origins",
        "Origins whose pages may open a tunnel: exact, one leading *. label, or [\"*\"] for any. Default: the route's CORS origins; without CORS, only the route's own origin (and clients that send no origin).",
    );
    t.require(ORIGINS);
    let Some(origins) = t.string_list(errs, ORIGINS) else {
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

fn read_cors(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<CorsConfig> {
    const ORIGINS: Key = key(
        "allow_origins",
        "Origins allowed: exact (https://app.example.com), one leading *. label (https://*.example.com), or [\"*\"].",
    );
    t.require(ORIGINS);
    let origins = t.string_list(errs, ORIGINS);
    let allow_headers = t
        .string_list(
            errs,
            key(
                "allow_headers",
                "Request headers a preflight allows (access-control-allow-headers).",
            ),
        )
        .unwrap_or_default();
    let expose_headers = t
        .string_list(
            errs,
            key(
                "expose_headers",
                "Answer headers a browser's script may read (access-control-expose-headers).",
            ),
        )
        .unwrap_or_default();
    let credentials = t.bool(
        errs,
        key(
            "allow_credentials",
            "Allow cookies and authorization with the request (access-control-allow-credentials). Default false; never with [\"*\"].",
        ),
    );
    let max_age = t
        .duration(
            errs,
            key(
                "max_age",
                "How long a browser may keep a preflight's answer (access-control-max-age).",
            ),
        )
        .map(|(d, _)| d);
    let Some(origins) = origins else {
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
    let any = origins.iter().any(|(o, _)| o == "*");
    if any && origins.len() > 1 {
        errs.push(
            Diagnostic::new(
                t.span(),
                format!("\"*\" in allow_origins of {} stands alone", t.name),
            )
            .label("[\"*\"] allows every origin; list origins or \"*\", not both"),
        );
        ok = false;
    }
    if any && credentials == Some(true) {
        errs.push(
            Diagnostic::new(t.span(), format!("{} allows credentials from every origin", t.name))
                .label("allow_credentials with allow_origins = [\"*\"]")
                .note("browsers refuse credentials with a wildcard origin, and any site could act as its user: list the origins"),
        );
        ok = false;
    }
    for (h, span) in allow_headers.iter().chain(&expose_headers) {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(
                Diagnostic::new(span.clone(), format!("`{h}` is not a header name"))
                    .label("bad header name"),
            );
            ok = false;
        }
    }
    ok.then(|| CorsConfig {
        allow_origins: origins.into_iter().map(|(o, _)| o).collect(),
        allow_headers: allow_headers
            .into_iter()
            .map(|(h, _)| h.to_ascii_lowercase())
            .collect(),
        expose_headers: expose_headers
            .into_iter()
            .map(|(h, _)| h.to_ascii_lowercase())
            .collect(),
        allow_credentials: credentials.unwrap_or(false),
        max_age,
    })
}

fn read_backend(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<BackendConfig> {
    const PATH: Key = key(
        "path",
        "Path and query of the call; {param} and {backend.field} are filled in, percent-encoded.",
    );
    let name = t.string(
        errs,
        key(
            "name",
            "Unique in the route; labels logs and spans. Default: its group, else its upstream.",
        ),
    );
    let upstream = t.required_string(errs, key("upstream", "The [upstreams.NAME] it calls."));
    let method = t.string(
        errs,
        key("method", "HTTP method of the call. Default: the route's."),
    );
    let method = method_of(errs, method);
    let path = t.required_string(errs, PATH);
    let path_as_written = t.as_written(PATH).unwrap_or_default();
    let template = path.as_ref().and_then(|(p, span)| {
        if !p.starts_with('/') {
            errs.push(
                Diagnostic::new(span.clone(), "backend path must start with `/`")
                    .label("add a leading `/`"),
            );
            return None;
        }
        match Template::parse(p) {
            Ok(t) => Some(t),
            Err((offset, msg)) => {
                errs.push(
                    Diagnostic::new(validate::inner_span(span, offset, 1), msg)
                        .label("bad placeholder"),
                );
                None
            }
        }
    });
    let group = t
        .string(
            errs,
            key("group", "Place the answer under this key of the response."),
        )
        .map(|(s, _)| s);
    // Messages name the backend as the rest of the file does: `backend NAME of route R`
    // (its name defaults to its group, else its upstream).
    let shown = name
        .as_ref()
        .map(|(n, _)| n.clone())
        .or_else(|| group.clone())
        .or_else(|| upstream.as_ref().map(|(u, _)| u.clone()));
    if let Some(shown) = shown {
        let route = t.name.split_once(" of ").map_or("", |(_, r)| r).to_string();
        t.name = format!("backend {shown} of {route}");
    }
    let target = t
        .string(errs, key("target", "Keep only the value at this dot path."))
        .map(|(s, _)| s);
    let allow = t.string_list(errs, key("allow", "Keep only these fields (dot paths)."));
    let deny = t.string_list(errs, key("deny", "Drop these fields (dot paths)."));
    if let (Some(_), Some(d)) = (&allow, &deny) {
        let span = d.first().map(|(_, s)| s.clone()).unwrap_or(t.span());
        errs.push(
            Diagnostic::new(span, "a backend takes `allow` or `deny`, not both")
                .label("remove one of them"),
        );
    }
    let rename = t
        .string_map(errs, key("rename", "Rename fields: { from = \"to\" }."))
        .unwrap_or_default();
    let optional = t
        .bool(
            errs,
            key(
                "optional",
                "Its failure leaves it out and marks the answer partial instead of failing it.",
            ),
        )
        .unwrap_or(false);
    let default = t
        .get(key(
            "default",
            "Stands in for the answer when the backend fails (makes it optional).",
        ))
        .map(|v| reader::to_json(v, errs));
    let cache_ttl = t
        .duration(
            errs,
            key(
                "cache_ttl",
                "Keep the upstream's 2xx answers to GETs this long.",
            ),
        )
        .map(|(d, _)| d);
    let passthrough = t
        .bool(
            errs,
            key(
                "passthrough",
                "Marks the route as passthrough (as the route's own key does).",
            ),
        )
        .unwrap_or(false);
    let (upstream, upstream_span) = upstream?;
    let (path, path_span) = path?;
    let (name, name_span) = match name {
        Some(n) => n,
        None => (group.clone().unwrap_or_else(|| upstream.clone()), t.span()),
    };
    Some(BackendConfig {
        name,
        name_span,
        upstream,
        upstream_span,
        method: method.flatten(),
        path,
        path_as_written,
        path_span,
        template: template.unwrap_or(Template { parts: Vec::new() }),
        group,
        target,
        allow: allow
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s)
            .collect(),
        deny: deny
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s)
            .collect(),
        rename,
        optional: optional || default.is_some(),
        default,
        cache_ttl,
        passthrough,
    })
}

/// The first 8 bytes of the text's SHA-256, as a number (see [`Config::fingerprint`]).
pub fn file_version(text: &str) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// A stable hash of a config section's text, for cache key prefixes.
pub fn fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same text hashes the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn the_file_version_is_the_start_of_its_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de…
        assert_eq!(
            format!("{:016x}", super::file_version("abc")),
            "ba7816bf8f01cfea"
        );
    }

    /// Lines a config is made of: real section headers and keys with values of any
    /// shape, plus noise.
    fn config_ish() -> impl Strategy<Value = String> {
        let header = proptest::sample::select(vec![
            "[server]",
            "[telemetry]",
            "[upstreams.u]",
            "[upstreams.v]",
            "[[routes]]",
            "[[routes.backends]]",
            "[routes.cache]",
            "[nope]",
        ])
        .prop_map(str::to_string);
        let key = proptest::sample::select(vec![
            "listen",
            "admin_listen",
            "default_timeout",
            "max_request_body",
            "workers",
            "header_read_timeout",
            "max_header_size",
            "buffer_capacity",
            "max_connections",
            "trusted_proxies",
            "urls",
            "timeout",
            "max_concurrency",
            "circuit_breaker",
            "retry",
            "rate_limit",
            "path",
            "method",
            "name",
            "upstream",
            "group",
            "target",
            "allow",
            "deny",
            "rename",
            "optional",
            "default",
            "cache_ttl",
            "cache",
            "passthrough",
            "forward_headers",
            "forward_query",
            "sample_ratio",
            "log_format",
        ]);
        let value = prop_oneof![
            "\"[ -~]{0,16}\"".prop_map(|s| s),
            Just("\"${MANIFOLD_PROPTEST_UNSET}\"".to_string()),
            Just("\"/u/{id}?x={a.b}\"".to_string()),
            Just("\"http://127.0.0.1:1\"".to_string()),
            Just("\"250ms\"".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("1.5".to_string()),
            Just("true".to_string()),
            Just("[\"a\", \"http://x\"]".to_string()),
            Just("{ per_second = 1, burst = 0, key = \"header:x\" }".to_string()),
            Just("{ attempts = 0 }".to_string()),
            Just("{ ttl = \"1s\" }".to_string()),
        ];
        let line = prop_oneof![
            header,
            (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            "[ -~]{0,20}",
        ];
        proptest::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text loads or is refused with diagnostics that point inside it and
        /// render; never a panic.
        #[test]
        fn loading_never_panics(text in config_ish()) {
            if let Err(d) = super::parse("p.toml", &text) {
                prop_assert!(!d.items.is_empty());
                for item in &d.items {
                    prop_assert!(item.span.start <= text.len() && item.span.end <= text.len() + 1);
                }
                let rendered = d.render();
                prop_assert!(rendered.contains("p.toml"));
            }
        }
    }
}
