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

pub enum Match<'p> {
    Found {
        route: usize,
        /// Raw (still percent-encoded) values, in the order the path names them.
        params: matchit::Params<'p, 'p>,
    },
    NotFound,
    MethodNotAllowed(HeaderValue),
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
            let allow: Vec<&str> = e.methods.iter().map(|(m, _)| m.as_str()).collect();
            e.allow = HeaderValue::from_str(&allow.join(", ")).map_err(|e| e.to_string())?;
        }
        Ok(Router { paths, entries })
    }

    pub fn find<'p>(&'p self, method: &Method, path: &'p str) -> Match<'p> {
        let Ok(m) = self.paths.at(path) else {
            return Match::NotFound;
        };
        let entry = &self.entries[*m.value];
        match entry.methods.iter().find(|(rm, _)| rm == method) {
            Some(&(_, route)) => Match::Found {
                route,
                params: m.params,
            },
            None => Match::MethodNotAllowed(entry.allow.clone()),
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
            Match::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST"),
            _ => panic!("expected 405"),
        }
        assert!(matches!(r.find(&Method::GET, "/nope"), Match::NotFound));
    }
}
