//! `routes.toml`: one file per section — [`server`], [`telemetry`], [`upstream`],
//! [`route`], [`backend`], [`cors`], [`auth`], [`shared`], [`compression`], [`validation`], [`idempotency`], [`grpc`] — each with its types, its
//! reader, and each key's description, bounds and default (a [`reader::Key`]); the
//! whole file read here, then the cross-field checks ([`validate`]). What the readers
//! ask for is the JSON Schema ([`schema`]) and the key tables of
//! docs/configuration.md (held to it by `tests/docs_keys.rs`).
//!
//! Loading never stops at the first problem: [`parse`] returns every diagnostic it can
//! find (syntax, unknown keys, wrong types, bad durations, unknown upstreams, bad
//! placeholders, cycles, duplicates, missing `${ENV}` variables) so an operator fixes the
//! file in one pass. See `docs/configuration.md` for every key.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod compression;
pub mod cors;
pub mod diag;
pub mod grpc;
pub mod idempotency;
pub mod openapi;
pub mod reader;
pub mod route;
pub mod schema;
pub mod server;
pub mod shared;
pub mod telemetry;
pub mod upstream;
mod validate;
pub mod validation;

use std::path::Path;
use std::time::Duration;

pub use admin::AdminConfig;
use auth::read_jwt;
pub use auth::{JwtConfig, KeySource, RouteAuth, Secret};
pub use backend::BackendConfig;
pub use compression::{Compression, RouteCompression};
pub use cors::CorsConfig;
use cors::read_cors;
pub use diag::{Diagnostic, Diagnostics, SourceSpan};
use reader::{Errors, Key, Table, key};
use route::read_route;
pub use route::{CacheConfig, LimitKey, RouteConfig, RouteCors, RouteRateLimit};
use server::read_server;
pub use server::{ServerConfig, TlsFiles};
pub use shared::SharedConfig;
use shared::read_shared;
use telemetry::read_telemetry;
pub use telemetry::{LogFormat, TelemetryConfig};
use upstream::read_upstream;
pub use upstream::{
    Balance, BreakerConfig, HealthCheckConfig, HedgeConfig, OutlierConfig, Protocol, RateConfig,
    RetryConfig, UpstreamConfig, UpstreamSettings,
};

/// A whole, validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    /// `[admin]`: the console.
    pub admin: AdminConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[cors]`: for every route that does not set its own.
    pub cors: Option<CorsConfig>,
    /// `[auth.jwt.NAME]`: token validators routes refer to by name.
    pub jwt: Vec<JwtConfig>,
    /// `[shared]`: rate limits decided in Redis, across replicas.
    pub shared: Option<SharedConfig>,
    /// The first 8 bytes of the SHA-256 of the file as written (before `${ENV}` is
    /// filled in): which version of the file serves. Shown as 16 hex digits, the start
    /// of `sha256sum routes.toml`, by `manifold check`, `/routes` and
    /// `manifold_config_info{fingerprint}`.
    pub fingerprint: u64,
}

impl Config {
    /// The fingerprint as 16 hex digits.
    pub fn version(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

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

/// Reads best-effort values: a bad field records a diagnostic and falls back to its
/// default, so the cross-field checks still run and report their problems too.
pub const SERVER: Key = key(
    "server",
    "Listeners, request limits and the bounds of client connections.",
);
pub const TELEMETRY: Key = key("telemetry", "Logs and traces.");
pub const ADMIN: Key = key("admin", "The admin listener's console.");
pub const CORS: Key = key(
    "cors",
    "CORS for browsers on other origins, for every route that sets none of its own.",
);
pub const SHARED: Key = key(
    "shared",
    "Rate limits and caches shared by every replica through Redis.",
);
pub const AUTH: Key = key(
    "auth",
    "Token validation: validators routes refer to by name.",
);
pub const AUTH_JWT: Key = key(
    "jwt",
    "JWT validators by name: where their keys are and what a token must hold.",
);
pub const UPSTREAMS: Key = key(
    "upstreams",
    "Upstream services by name: where they are and how to call them.",
)
.required();
pub const ROUTES: Key = key(
    "routes",
    "Public routes: a path, its backends and how their answers merge.",
)
.required()
.non_empty();

fn read_config(root: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<Config> {
    let server = match root.table(errs, SERVER) {
        Some(mut t) => {
            let s = read_server(&mut t, errs, base);
            t.finish(errs);
            s
        }
        None => read_server(&mut Table::empty("[server]"), errs, base),
    };
    let telemetry = match root.table(errs, TELEMETRY) {
        Some(mut t) => {
            let s = read_telemetry(&mut t, errs);
            t.finish(errs);
            s
        }
        None => read_telemetry(&mut Table::empty("[telemetry]"), errs),
    };
    let admin = match root.table(errs, ADMIN) {
        Some(mut t) => {
            let a = admin::read_admin(&mut t, errs);
            t.finish(errs);
            a
        }
        None => AdminConfig::default(),
    };
    let cors = root.table(errs, CORS).and_then(|mut t| {
        let c = read_cors(&mut t, errs);
        t.finish(errs);
        c
    });
    let shared = root.table(errs, SHARED).and_then(|mut t| {
        let s = read_shared(&mut t, errs, base);
        t.finish(errs);
        s
    });
    let mut jwt = Vec::new();
    if let Some(mut auth) = root.table(errs, AUTH) {
        for (name, _span, mut t) in auth.named_tables(errs, AUTH_JWT) {
            if let Some(v) = read_jwt(name, &mut t, errs, base) {
                jwt.push(v);
            }
            t.finish(errs);
        }
        auth.finish(errs);
    }
    let mut upstreams = Vec::new();
    for (name, name_span, mut t) in root.named_tables(errs, UPSTREAMS) {
        let settings = read_upstream(&mut t, errs, base);
        let grpc = grpc::read_protos(&mut t, errs, base);
        if let Some(settings) = settings {
            upstreams.push(UpstreamConfig {
                name,
                name_span,
                settings,
                grpc,
            });
        }
        t.finish(errs);
    }
    let mut routes = Vec::new();
    for mut t in root.table_array(errs, ROUTES) {
        if let Some(r) = read_route(&mut t, errs, base) {
            routes.push(r);
        }
        t.finish(errs);
    }
    grpc::resolve(&upstreams, &mut routes, errs);
    Some(Config {
        server: server?,
        telemetry: telemetry?,
        admin,
        upstreams,
        routes,
        cors,
        jwt,
        shared,
        fingerprint: 0,
    })
}

/// The first 8 bytes of the text's SHA-256, as a number (see [`Config::fingerprint`]).
pub fn file_version(text: &str) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// A stable hash of a config section's text, for cache key prefixes: SHA-256, so
/// every replica, whatever toolchain built it, agrees (the cache is shared through
/// Redis; std's `DefaultHasher` may change between Rust releases).
pub fn fingerprint(text: &str) -> u64 {
    file_version(text)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Defaults the reader cannot take from its `Key` (a typed value, not text) are
    /// the ones the key shows.
    #[test]
    fn typed_defaults_are_the_ones_the_keys_show() {
        assert_eq!(
            super::route::METHOD.default_str(),
            http::Method::GET.as_str()
        );
    }

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
