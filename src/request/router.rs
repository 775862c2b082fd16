//! Pure matching: (method, path) → route index and raw path parameters. No I/O.

use http::{HeaderValue, Method};

pub struct Router {
    paths: matchit::Router<usize>,
    entries: Vec<PathEntry>,
}

struct PathEntry {
    methods: Vec<(Method, usize)>,
    allow: HeaderValue,
}

/// Raw (still percent-encoded) path parameters, in the order the path names them:
/// their names from the router (`'r`), their values from the request's path (`'p`).
pub type Params<'r, 'p> = matchit::Params<'r, 'p>;

pub enum Match<'r, 'p> {
    Found {
        route: usize,
        params: Params<'r, 'p>,
    },
    NotFound,
    /// Routes serve the path, but not with this method: `allow` lists theirs, and
    /// `route` is the first of them (its metrics count the 405).
    MethodNotAllowed {
        allow: HeaderValue,
        route: usize,
    },
}

impl Router {
    /// Builds from (method, path, route index). Paths were checked at load.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = (&'a Method, &'a str, usize)>,
    ) -> Result<Self, String> {
        let mut paths = matchit::Router::new();
        let mut entries: Vec<PathEntry> = Vec::new();
        let mut by_path: Vec<(&str, usize)> = Vec::new();
        for (method, path, route) in routes {
            let entry = match by_path.iter().find(|(p, _)| *p == path) {
                Some(&(_, e)) => e,
                None => {
                    paths
                        .insert(path, entries.len())
                        .map_err(|e| format!("route path {path}: {e}"))?;
                    by_path.push((path, entries.len()));
                    entries.push(PathEntry {
                        methods: Vec::new(),
                        allow: HeaderValue::from_static(""),
                    });
                    entries.len() - 1
                }
            };
            entries[entry].methods.push((method.clone(), route));
        }
        for e in &mut entries {
            let mut allow: Vec<&str> = e.methods.iter().map(|(m, _)| m.as_str()).collect();
            // HEAD is answered wherever GET is (RFC 9110 §9.3.2).
            if allow.contains(&"GET") && !allow.contains(&"HEAD") {
                allow.push("HEAD");
            }
            e.allow = HeaderValue::from_str(&allow.join(", ")).map_err(|e| e.to_string())?;
        }
        Ok(Router { paths, entries })
    }

    /// The methods served at `path` and the route serving each, in declaration order
    /// (a CORS preflight lists those whose route allows the origin).
    pub fn routes_at(&self, path: &str) -> &[(Method, usize)] {
        match self.paths.at(path) {
            Ok(m) => &self.entries[*m.value].methods,
            Err(_) => &[],
        }
    }

    /// The route for `method` at `path`. A HEAD request finds the GET route when no
    /// route serves HEAD itself.
    pub fn find<'r, 'p>(&'r self, method: &Method, path: &'p str) -> Match<'r, 'p> {
        let Ok(m) = self.paths.at(path) else {
            return Match::NotFound;
        };
        let entry = &self.entries[*m.value];
        let found = entry
            .methods
            .iter()
            .find(|(rm, _)| rm == method)
            .or_else(|| {
                (method == Method::HEAD)
                    .then(|| entry.methods.iter().find(|(rm, _)| rm == Method::GET))
                    .flatten()
            });
        match found {
            Some(&(_, route)) => Match::Found {
                route,
                params: m.params,
            },
            None => Match::MethodNotAllowed {
                allow: entry.allow.clone(),
                route: entry.methods[0].1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_methods_and_params() {
        let get = Method::GET;
        let post = Method::POST;
        let r =
            Router::new([(&get, "/u/{id}", 0), (&post, "/u/{id}", 1), (&get, "/x", 2)]).unwrap();
        match r.find(&Method::POST, "/u/7") {
            Match::Found { route, params } => {
                assert_eq!(route, 1);
                assert_eq!(params.get("id"), Some("7"));
            }
            _ => panic!("expected a match"),
        }
        match r.find(&Method::DELETE, "/u/7") {
            Match::MethodNotAllowed { allow, route } => {
                assert_eq!(allow, "GET, POST, HEAD");
                assert_eq!(route, 0);
            }
            _ => panic!("expected 405"),
        }
        assert!(
            matches!(r.find(&Method::HEAD, "/x"), Match::Found { route: 2, .. }),
            "HEAD finds the GET route"
        );
        let head = Method::HEAD;
        let own = Router::new([(&get, "/h", 0), (&head, "/h", 1)]).unwrap();
        assert!(matches!(
            own.find(&Method::HEAD, "/h"),
            Match::Found { route: 1, .. }
        ));
        assert!(matches!(r.find(&Method::GET, "/nope"), Match::NotFound));
    }
}
