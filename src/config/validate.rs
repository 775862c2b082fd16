//! Checks that need the whole file: names that refer to each other, duplicates,
//! dependency cycles, and route paths that cannot live in one router.

use std::collections::HashMap;

use super::diag::{Diagnostic, SourceSpan};
use super::reader::Errors;
use super::{BackendConfig, Config, RouteConfig};
use crate::base::template::route_params;

/// The span of `len` bytes at `offset` inside a string value whose span (quotes
/// included) is `span`. Falls back to the whole value when the source text differs
/// from the value (escapes, `${ENV}`), so the caret is never misplaced.
pub fn inner_span(span: &SourceSpan, offset: usize, len: usize) -> SourceSpan {
    let start = span.start + 1 + offset;
    if start + len < span.end {
        start..start + len
    } else {
        span.clone()
    }
}

pub fn check(config: &Config, text: &str, errs: &mut Errors) {
    let upstreams: HashMap<&str, &SourceSpan> = {
        let mut seen: HashMap<&str, &SourceSpan> = HashMap::new();
        for u in &config.upstreams {
            // TOML itself rejects duplicate table keys; this stays as a guard for merged configs.
            if let Some(first) = seen.insert(u.name.as_str(), &u.name_span) {
                errs.push(
                    Diagnostic::new(
                        u.name_span.clone(),
                        format!("duplicate upstream `{}`", u.name),
                    )
                    .also(first.clone(), "first defined here"),
                );
            }
        }
        seen
    };

    // An empty or half-written file would otherwise load as a gateway that answers
    // 404 to everything, and a reload would count that as a success.
    if config.routes.is_empty() {
        errs.push(
            Diagnostic::new(0..0, "the config has no [[routes]]")
                .label("a gateway without routes answers 404 to every request")
                .note("add at least one [[routes]] with a [[routes.backends]]"),
        );
    }
    check_routes_table(config, errs);

    for route in &config.routes {
        check_route(route, &upstreams, text, errs);
        check_auth(config, route, errs);
    }
}

/// A route's `auth` names a validator, and what reads claims has them for sure.
fn check_auth(config: &Config, route: &RouteConfig, errs: &mut Errors) {
    if let Some(auth) = &route.auth
        && !config.jwt.iter().any(|v| v.name == auth.jwt)
    {
        let known = config.jwt.iter().map(|v| v.name.as_str());
        errs.push(
            Diagnostic::new(
                route.auth_jwt_span.clone(),
                format!("no validator `{}` in [auth.jwt]", auth.jwt),
            )
            .label(match super::reader::closest(&auth.jwt, known) {
                Some(like) => format!("did you mean `{like}`?"),
                None => "unknown validator".to_string(),
            })
            .note(format!("define it as [auth.jwt.{}]", auth.jwt)),
        );
    }
    // A missing claim must never turn into an empty path segment or one shared bucket.
    let sure = route.auth.as_ref().is_some_and(|a| !a.optional);
    let why = if route.auth.is_some() {
        "with `optional = true` a request may carry no token"
    } else {
        "the route has no `auth`"
    };
    if !sure {
        for b in &route.backends {
            if let Some((_, at)) = b
                .placeholders()
                .into_iter()
                .find(|(p, _)| p.text.starts_with("jwt."))
            {
                errs.push(
                    Diagnostic::new(
                        at.unwrap_or(&b.path_span).clone(),
                        format!(
                            "backend {} of route {} reads a token claim, but {why}",
                            b.name, route.name
                        ),
                    )
                    .label("{jwt.*} needs a token on every request")
                    .note("add auth = { jwt = \"NAME\" } to the route, without optional = true"),
                );
            }
        }
        if let Some(l) = &route.rate_limit
            && matches!(l.key, super::LimitKey::Claim(_))
        {
            errs.push(
                Diagnostic::new(
                    route.span.clone(),
                    format!(
                        "route {}'s rate limit is keyed on a claim, but {why}",
                        route.name
                    ),
                )
                .label("claim: keys need a token on every request"),
            );
        }
    }
}

/// Duplicate (method, path) pairs, duplicate names, and paths the router cannot hold
/// together (`/a/{x}` beside `/a/{y}`).
fn check_routes_table(config: &Config, errs: &mut Errors) {
    let mut by_key: HashMap<(String, &str), &RouteConfig> = HashMap::new();
    let mut by_name: HashMap<&str, &RouteConfig> = HashMap::new();
    let mut router = matchit::Router::new();
    let mut paths: HashMap<&str, ()> = HashMap::new();
    for route in &config.routes {
        if let Some(first) = by_key.insert((route.method.to_string(), route.path.as_str()), route) {
            errs.push(
                Diagnostic::new(
                    route.path_span.clone(),
                    format!("duplicate route {} {}", route.method, route.path),
                )
                .label("same method and path as an earlier route")
                .also(first.path_span.clone(), "first defined here"),
            );
            continue;
        }
        if let Some(first) = by_name.insert(route.name.as_str(), route) {
            errs.push(
                Diagnostic::new(
                    route.span.clone(),
                    format!("duplicate route name `{}`", route.name),
                )
                .label("route names must be unique (they label metrics and logs)")
                .also(first.span.clone(), "first used here"),
            );
        }
        if paths.insert(route.path.as_str(), ()).is_none()
            && let Err(e) = router.insert(route.path.as_str(), ())
        {
            errs.push(
                    Diagnostic::new(route.path_span.clone(), format!("route path `{}` cannot be routed: {e}", route.path))
                        .label("conflicts with an earlier route")
                        .note("paths that differ only in a parameter's name, like /a/{x} and /a/{y}, are the same path"),
                );
        }
    }
}

fn check_route(
    route: &RouteConfig,
    upstreams: &HashMap<&str, &SourceSpan>,
    text: &str,
    errs: &mut Errors,
) {
    let params = route_params(&route.path);
    let mut names: HashMap<&str, &BackendConfig> = HashMap::new();
    for b in &route.backends {
        if let Some(first) = names.insert(b.name.as_str(), b) {
            errs.push(
                Diagnostic::new(b.name_span.clone(), format!("duplicate backend name `{}` in route {}", b.name, route.name))
                    .label("backend names must be unique within a route")
                    .also(first.name_span.clone(), "first used here")
                    .note("a backend's name defaults to its group, else its upstream; set `name` to tell them apart"),
            );
        }
        if !upstreams.contains_key(b.upstream.as_str()) {
            let mut d = Diagnostic::new(
                b.upstream_span.clone(),
                format!("unknown upstream `{}`", b.upstream),
            )
            .label(
                match super::reader::closest(&b.upstream, upstreams.keys().copied()) {
                    Some(like) => format!("did you mean `{like}`?"),
                    None => "no [upstreams.*] table has this name".to_string(),
                },
            );
            let mut known: Vec<&str> = upstreams.keys().copied().collect();
            known.sort_unstable();
            d = d.note(if known.is_empty() {
                "no upstreams are defined".to_string()
            } else {
                format!("defined upstreams: {}", known.join(", "))
            });
            errs.push(d);
        }
    }

    if route.cache.is_some()
        && (route.passthrough || !matches!(route.method, http::Method::GET | http::Method::HEAD))
    {
        errs.push(
                Diagnostic::new(route.span.clone(), format!("route {} cannot have a `cache`", route.name))
                    .label("only merged GET or HEAD routes are cached")
                    .note("passthrough answers are streamed, and answers to other methods are not safe to replay"),
            );
    }

    for b in &route.backends {
        let method = b.method.as_ref().unwrap_or(&route.method);
        if let (Some(g), true) = (&b.grpc, route.passthrough) {
            errs.push(
                Diagnostic::new(
                    g.span.clone(),
                    format!("passthrough route {} cannot call gRPC", route.name),
                )
                .label("a gRPC answer is turned into JSON, which only merged routes do")
                .note("remove `passthrough = true`"),
            );
        }
        // A gRPC backend's cache_ttl is checked against its method (config::grpc).
        if b.cache_ttl.is_some()
            && b.grpc.is_none()
            && (route.passthrough || *method != http::Method::GET)
        {
            errs.push(
                Diagnostic::new(b.name_span.clone(), format!("backend `{}` of route {} cannot have a `cache_ttl`", b.name, route.name))
                    .label("only GET backends of merged routes are cached")
                    .note("answers to other methods are not safe to replay; passthrough answers are streamed"),
            );
        }
    }

    if route.passthrough {
        if route.backends.len() > 1 {
            errs.push(
                Diagnostic::new(
                    route.path_span.clone(),
                    format!(
                        "passthrough route {} has {} backends",
                        route.name,
                        route.backends.len()
                    ),
                )
                .label("a passthrough route streams one upstream's answer")
                .note("remove `passthrough = true` to merge several backends"),
            );
        }
        for b in &route.backends {
            let shaping = [
                ("target", b.target.is_some()),
                ("group", b.group.is_some()),
                ("allow", !b.allow.is_empty()),
                ("deny", !b.deny.is_empty()),
                ("rename", !b.rename.is_empty()),
                ("default", b.default.is_some()),
            ];
            for (key, set) in shaping {
                if set {
                    errs.push(
                        Diagnostic::new(
                            b.path_span.clone(),
                            format!("`{key}` has no effect on passthrough route {}", route.name),
                        )
                        .label("passthrough answers are streamed unchanged"),
                    );
                }
            }
        }
    }

    // The literal parts must make a valid URL once the placeholders are filled.
    for b in &route.backends {
        let sample: String = b
            .template
            .parts
            .iter()
            .map(|p| match p {
                crate::base::template::Part::Lit(l) => l.as_str(),
                _ => "x",
            })
            .collect();
        if http::Uri::try_from(format!("http://upstream{sample}")).is_err() {
            errs.push(
                Diagnostic::new(b.path_span.clone(), format!("backend path `{}` is not a valid URL path", b.path))
                    .label("invalid URL characters")
                    .note("percent-encode spaces and non-ASCII characters (e.g. %20); placeholder values are encoded for you"),
            );
        }
    }

    // Placeholders: a route param, or `backend.field` of another backend in this route.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); route.backends.len()];
    for (i, b) in route.backends.iter().enumerate() {
        for (ph, at) in b.placeholders() {
            let span = match at {
                // A message's placeholders: the message is pointed at.
                Some(at) => at.clone(),
                None => placeholder_span(text, &b.path_span, &b.path, ph.offset, ph.text.len() + 2),
            };
            // `{jwt.NAME}`: a claim of the route's token (see check_auth).
            if ph.text.starts_with("jwt.") {
                continue;
            }
            match ph.text.split_once('.') {
                None if params.iter().any(|p| p == &ph.text) => {}
                None => errs.push(
                    Diagnostic::new(span, format!("`{{{}}}` names no path parameter of route {}", ph.text, route.name))
                        .label(match super::reader::closest(&ph.text, params.iter().map(String::as_str)) {
                            Some(like) => format!("did you mean `{{{like}}}`?"),
                            None => "unknown parameter".to_string(),
                        })
                        .note(if params.is_empty() {
                            format!("the route path `{}` has no parameters; use {{backend.field}} to read another backend's answer", route.path)
                        } else {
                            format!("path parameters: {}; or use {{backend.field}}", params.join(", "))
                        }),
                ),
                Some((dep, _)) if dep == b.name => errs.push(
                    Diagnostic::new(span, format!("backend `{}` cannot read its own answer", b.name)).label("self-reference"),
                ),
                Some((dep, _)) => match route.backends.iter().position(|o| o.name == dep) {
                    Some(j) => deps[i].push(j),
                    None => {
                        let mut known: Vec<&str> = route.backends.iter().map(|o| o.name.as_str()).filter(|n| *n != b.name).collect();
                        known.sort_unstable();
                        known.dedup();
                        errs.push(
                            Diagnostic::new(span, format!("`{{{}}}` names neither a path parameter nor a backend of route {}", ph.text, route.name))
                                .label(match super::reader::closest(dep, known.iter().copied()) {
                                    Some(like) => format!("no backend `{dep}`: did you mean `{like}`?"),
                                    None => format!("no backend `{dep}`"),
                                })
                                .note(format!(
                                    "path parameters: {}; other backends: {}",
                                    if params.is_empty() { "none".into() } else { params.join(", ") },
                                    if known.is_empty() { "none".into() } else { known.join(", ") }
                                )),
                        )
                    }
                },
            }
        }
    }
    if let Some(cycle) = find_cycle(&deps) {
        let first = &route.backends[cycle[0]];
        let names: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| route.backends[i].name.as_str())
            .collect();
        errs.push(
            Diagnostic::new(first.path_span.clone(), format!("dependency cycle in route {}: {}", route.name, names.join(" → ")))
                .label("this backend waits for itself through the cycle")
                .note("a backend may read {other.field} only when `other` does not (even indirectly) read it back"),
        );
    }
}

fn placeholder_span(
    text: &str,
    span: &SourceSpan,
    raw: &str,
    offset: usize,
    len: usize,
) -> SourceSpan {
    let quoted = text
        .get(span.clone())
        .is_some_and(|s| s.len() == raw.len() + 2 && &s[1..s.len() - 1] == raw);
    if quoted {
        inner_span(span, offset, len)
    } else {
        span.clone()
    }
}

/// One cycle of the dependency graph, as backend indices, if any.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        n: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for &d in &deps[n] {
            match marks[d] {
                Mark::Active => {
                    let at = stack.iter().position(|&s| s == d).unwrap_or(0);
                    return Some(stack[at..].to_vec());
                }
                Mark::New => {
                    if let Some(c) = visit(d, deps, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; deps.len()];
    let mut stack = Vec::new();
    (0..deps.len()).find_map(|n| {
        if marks[n] == Mark::New {
            visit(n, deps, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn cycles() {
        assert_eq!(find_cycle(&[vec![], vec![0], vec![1]]), None);
        assert_eq!(find_cycle(&[vec![1], vec![0]]), Some(vec![0, 1]));
        assert_eq!(
            find_cycle(&[vec![], vec![2], vec![3], vec![1]]),
            Some(vec![1, 2, 3])
        );
    }
}
