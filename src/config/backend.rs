//! `[[routes.backends]]`: one upstream call of a route, and how its answer is shaped.

use std::time::Duration;

use http::Method;

use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, Table, key};
use super::*;
use crate::base::template::{Placeholder, Template};

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub name_span: SourceSpan,
    pub upstream: String,
    pub upstream_span: SourceSpan,
    pub method: Option<Method>,
    pub path: String,
    /// The path as the file has it (`${ENV}` not filled in), for `/routes` and
    /// `manifold routes`: a secret from the environment is not shown.
    pub path_as_written: String,
    pub path_span: SourceSpan,
    pub template: Template<Placeholder>,
    pub group: Option<String>,
    pub target: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub optional: bool,
    pub default: Option<serde_json::Value>,
    pub cache_ttl: Option<Duration>,
    pub passthrough: bool,
}

pub(super) fn read_backend(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<BackendConfig> {
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
