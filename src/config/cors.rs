//! `[cors]` and a route's own `cors` table: which origins, headers and credentials a
//! browser on another origin is allowed, and how an origin pattern is read.

use super::diag::Diagnostic;
use super::reader::{Errors, Key, KeyDefault, Table, key};
use std::time::Duration;

/// `[cors]` or a route's own `cors` table, as loaded (docs/configuration.md#cors).
#[derive(Debug, Clone, PartialEq)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), one leading `*.` label
    /// (`https://*.example.com`), or `["*"]`.
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

/// One allowed origin: `https://app.example.com`, or `https://*.example.com` for any
/// subdomain (never `example.com` itself, nor `a.example.com.evil.io`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    scheme: String,
    /// Lowercase; for a wildcard, the part after `*.`.
    host: String,
    wildcard: bool,
    /// As written: `None` matches only an origin without one.
    port: Option<u16>,
}

/// Checks an `allow_origins` entry (for the loader): `*`, or `scheme://host[:port]`
/// with at most one leading `*.` label.
pub fn check_origin(text: &str) -> Result<(), &'static str> {
    if text == "*" {
        return Ok(());
    }
    parse(text).map(|_| ())
}

pub fn parse(text: &str) -> Result<Pattern, &'static str> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or("it needs a scheme, like https://")?;
    if !matches!(scheme, "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("an origin has no path");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
            h,
            Some(p.parse::<u16>().map_err(|_| "the port is not a number")?),
        ),
        _ => (rest, None),
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(h) => (true, h),
        None => (false, host),
    };
    if host.is_empty() || host.contains('*') {
        return Err("`*` may only be the first label, as in https://*.example.com");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
    {
        return Err("the host has characters a host cannot have");
    }
    Ok(Pattern {
        scheme: scheme.to_string(),
        host: host.to_ascii_lowercase(),
        wildcard,
        port,
    })
}

impl Pattern {
    pub fn matches(&self, origin: &Pattern) -> bool {
        if origin.wildcard || self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        if self.wildcard {
            // One or more labels, then `.host`: the dot keeps `evilexample.com` out.
            origin.host.len() > self.host.len() + 1
                && origin.host.ends_with(&self.host)
                && origin.host.as_bytes()[origin.host.len() - self.host.len() - 1] == b'.'
        } else {
            origin.host == self.host
        }
    }
}

pub const ALLOW_ORIGINS: Key = key(
    "allow_origins",
    "Origins allowed: exact (https://app.example.com), one leading *. label (https://*.example.com), or [\"*\"].",
)
.required();
pub const ALLOW_HEADERS: Key = key(
    "allow_headers",
    "Request headers a preflight allows (access-control-allow-headers).",
);
pub const EXPOSE_HEADERS: Key = key(
    "expose_headers",
    "Answer headers a browser's script may read (access-control-expose-headers).",
);
pub const ALLOW_CREDENTIALS: Key = key(
    "allow_credentials",
    "Allow cookies and authorization with the request (access-control-allow-credentials); never with [\"*\"].",
)
.default(KeyDefault::Bool(false));
pub const MAX_AGE: Key = key(
    "max_age",
    "How long a browser may keep a preflight's answer (access-control-max-age).",
);

pub(super) fn read_cors(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<CorsConfig> {
    let origins = t.string_list(errs, ALLOW_ORIGINS);
    let allow_headers = t.string_list(errs, ALLOW_HEADERS).unwrap_or_default();
    let expose_headers = t.string_list(errs, EXPOSE_HEADERS).unwrap_or_default();
    let credentials = t.bool(errs, ALLOW_CREDENTIALS);
    let max_age = t.duration(errs, MAX_AGE).map(|(d, _)| d);
    let Some(origins) = origins else {
        t.missing(errs, "allow_origins");
        return None;
    };
    let mut ok = true;
    for (o, span) in &origins {
        if let Err(why) = check_origin(o) {
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
