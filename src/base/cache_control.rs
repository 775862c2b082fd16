//! What an upstream's `cache-control` allows a cache to do with its answer (read where
//! the answer arrives, obeyed by the caches, reported in the access line).

use std::time::Duration;

use http::{HeaderMap, header};

/// What an upstream's `cache-control` allows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hints {
    /// `no-store` or `private`: never cache.
    pub no_store: bool,
    /// `s-maxage` (for shared caches like this one), else `max-age`.
    pub max_age: Option<Duration>,
}

impl Hints {
    pub fn from_headers(h: &HeaderMap) -> Self {
        let mut hints = Hints::default();
        let mut s_maxage = None;
        for v in h.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for directive in v.split(',') {
                let d = directive.trim().to_ascii_lowercase();
                let (name, arg) = d.split_once('=').map_or((d.as_str(), None), |(n, a)| {
                    (n.trim(), Some(a.trim().trim_matches('"')))
                });
                let secs = arg
                    .and_then(|a| a.parse::<u64>().ok())
                    .map(Duration::from_secs);
                match name {
                    "no-store" | "private" => hints.no_store = true,
                    "max-age" => hints.max_age = secs.or(hints.max_age),
                    "s-maxage" => s_maxage = secs,
                    _ => {}
                }
            }
        }
        hints.max_age = s_maxage.or(hints.max_age);
        hints
    }

    /// Joins the hints of several answers (a merged route): the strictest wins.
    pub fn join(self, other: Hints) -> Hints {
        Hints {
            no_store: self.no_store || other.no_store,
            max_age: match (self.max_age, other.max_age) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// The time to keep an answer: `ttl`, shortened by a smaller max-age; zero when
    /// the upstream forbids storing it.
    pub fn ttl(self, ttl: Duration) -> Duration {
        if self.no_store {
            return Duration::ZERO;
        }
        self.max_age.map_or(ttl, |m| m.min(ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cache_control_hints() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=10, s-maxage=3"),
        );
        let hints = Hints::from_headers(&h);
        assert_eq!(hints.max_age, Some(Duration::from_secs(3)));
        assert_eq!(hints.ttl(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(hints.ttl(Duration::from_secs(1)), Duration::from_secs(1));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("Private"));
        assert_eq!(
            Hints::from_headers(&h).ttl(Duration::from_secs(30)),
            Duration::ZERO
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(Hints::from_headers(&h).no_store);
        let joined = Hints {
            no_store: false,
            max_age: Some(Duration::from_secs(5)),
        }
        .join(Hints {
            no_store: false,
            max_age: Some(Duration::from_secs(2)),
        });
        assert_eq!(joined.max_age, Some(Duration::from_secs(2)));
    }
}
