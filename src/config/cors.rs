//! `[cors]` and a route's own `cors` table: which origins, headers and credentials a
//! browser on another origin is allowed, and how an origin pattern is read.

use std::time::Duration;

/// `[cors]` or a route's own `cors` table, as loaded (CONTRACT §7).
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
