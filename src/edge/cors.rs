//! CORS (docs/configuration.md#cors): which origins a route answers, the preflight's answer,
//! and the headers every other answer to an allowed origin carries, errors included (a browser
//! cannot read an error body otherwise).
//!
//! Compiled once per route at load; a route without CORS has no policy and pays
//! nothing.

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderValue};

use crate::config::cors::{CorsConfig, Pattern, parse};

#[derive(Debug)]
enum Origins {
    Any,
    Listed(Vec<Pattern>),
}

/// A route's CORS policy.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs())
}

impl Cors {
    /// Compiles a checked config (the loader has refused bad origins and `*` with
    /// credentials).
    pub fn new(config: &CorsConfig) -> Cors {
        let origins = if config.allow_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::Listed(
                config
                    .allow_origins
                    .iter()
                    .filter_map(|o| parse(o).ok())
                    .collect(),
            )
        };
        Cors {
            origins,
            allow_headers: joined(&config.allow_headers),
            expose_headers: joined(&config.expose_headers),
            credentials: config.allow_credentials,
            max_age: config.max_age.map(seconds),
        }
    }

    /// Whether `origin` (the request's `origin` header) is allowed.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(patterns) => {
                let Some(o) = origin.to_str().ok().and_then(|o| parse(o).ok()) else {
                    return false;
                };
                patterns.iter().any(|p| p.matches(&o))
            }
        }
    }

    /// `access-control-allow-origin` for an allowed origin: the origin echoed, or `*`
    /// when every origin is allowed and no credentials are.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            Origins::Any if !self.credentials => HeaderValue::from_static("*"),
            _ => origin.clone(),
        }
    }

    /// The headers of any answer of a route with CORS: `vary: origin` always, and for
    /// an allowed origin who may read it. The upstream's own `access-control-*` headers
    /// (a passthrough answer's) are removed first, whatever the origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let theirs: Vec<_> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            headers.remove(name);
        }
        headers.append(VARY, HeaderValue::from_static("origin"));
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if let Some(e) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The headers of a preflight's 204 for an allowed origin; `methods` are those
    /// served at the path.
    pub fn preflight(&self, origin: &HeaderValue, methods: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
        if let Some(h) = &self.allow_headers {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
        if let Some(m) = &self.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, m.clone());
        }
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.append(VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cors::check_origin;

    fn policy(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsConfig {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_headers: vec![],
            expose_headers: vec![],
            allow_credentials: credentials,
            max_age: None,
        })
    }

    #[test]
    fn wildcard_subdomains_are_exact() {
        let c = policy(&["https://*.example.com", "http://localhost:3000"], false);
        let allows = |o: &'static str| c.allows(&HeaderValue::from_static(o));
        assert!(allows("https://a.example.com"));
        assert!(allows("https://a.b.example.com"));
        assert!(allows("https://A.Example.com"));
        assert!(!allows("https://example.com"), "not the domain itself");
        assert!(!allows("https://a.example.com.evil.io"));
        assert!(!allows("https://evilexample.com"));
        assert!(!allows("http://a.example.com"), "same scheme only");
        assert!(!allows("https://a.example.com:8443"), "same port only");
        assert!(allows("http://localhost:3000"));
        assert!(!allows("http://localhost:3001"));
        assert!(!allows("null"));
    }

    #[test]
    fn origin_patterns_are_checked() {
        assert!(check_origin("*").is_ok());
        assert!(check_origin("https://*.example.com").is_ok());
        assert!(check_origin("https://app.example.com:8443").is_ok());
        assert!(check_origin("app.example.com").is_err());
        assert!(check_origin("https://a.*.example.com").is_err());
        assert!(check_origin("https://app.example.com/path").is_err());
        assert!(check_origin("ftp://app.example.com").is_err());
    }

    #[test]
    fn a_star_is_sent_only_without_credentials() {
        let origin = HeaderValue::from_static("https://x.test");
        let mut h = HeaderMap::new();
        policy(&["*"], false).decorate(Some(&origin), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        policy(&["https://y.test"], true).decorate(Some(&origin), &mut h);
        assert!(
            h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "an upstream's own header is removed; this origin is not allowed"
        );
        assert_eq!(h[VARY], "origin");
    }
}
