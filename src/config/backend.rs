//! `[[routes.backends]]`: one upstream call of a route, and how its answer is shaped.

use std::time::Duration;

use http::Method;

use super::diag::{Diagnostic, SourceSpan};
use super::reader::method_of;
use super::reader::{Errors, Key, KeyDefault, Table, key};
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
    /// `schema`: what its answer is (published; checked with `validate_response`).
    pub schema: Option<super::validation::Schema>,
    pub validate_response: bool,
    /// `pass_errors`: an upstream 4xx with a JSON body reaches the client unchanged.
    pub pass_errors: bool,
    /// `grpc` and `message`: a unary gRPC call instead of an HTTP one (its `path` is
    /// the method's, `/package.Service/Method`).
    pub grpc: Option<super::grpc::GrpcBackend>,
}

impl BackendConfig {
    /// Every placeholder that reads a path parameter, a claim or another backend: its
    /// path's, then its gRPC message's (with the span to point at).
    pub fn placeholders(&self) -> Vec<(&Placeholder, Option<&SourceSpan>)> {
        let mut out: Vec<_> = self.template.placeholders().map(|p| (p, None)).collect();
        if let Some(g) = &self.grpc {
            out.extend(
                g.placeholders()
                    .into_iter()
                    .map(|p| (p, Some(&g.message_span))),
            );
        }
        out
    }
}

pub const NAME: Key = key("name", "Unique in the route; labels logs and spans.")
    .default(KeyDefault::Computed("group if set, else upstream"));
pub const UPSTREAM: Key = key("upstream", "The [upstreams.NAME] it calls.").required();
pub const METHOD: Key =
    key("method", "HTTP method of the call.").default(KeyDefault::Computed("the route's"));
pub const PATH: Key = key(
    "path",
    "Path and query of the call; {param} and {backend.field} are filled in, percent-encoded. Required unless grpc is set.",
);
pub const GROUP: Key = key("group", "Place the answer under this key of the response.");
pub const TARGET: Key = key("target", "Keep only the value at this dot path.");
pub const ALLOW: Key = key("allow", "Keep only these fields (dot paths).");
pub const DENY: Key = key("deny", "Drop these fields (dot paths).");
pub const RENAME: Key = key("rename", "Rename fields: { from = \"to\" }.");
pub const OPTIONAL: Key = key(
    "optional",
    "Its failure leaves it out and marks the answer partial instead of failing it.",
)
.default(KeyDefault::Bool(false));
pub const DEFAULT: Key = key(
    "default",
    "Stands in for the answer when the backend fails (makes it optional).",
);
pub const CACHE_TTL: Key = key(
    "cache_ttl",
    "Keep the upstream's 2xx answers to GETs this long.",
);
pub const PASSTHROUGH: Key = key(
    "passthrough",
    "Marks the route as passthrough (as the route's own key does).",
)
.default(KeyDefault::Bool(false));

pub const PASS_ERRORS: Key = key(
    "pass_errors",
    "An upstream 4xx that fails the request reaches the client as it is, status and JSON body (at most 64 KiB), instead of UPSTREAM_REJECTED.",
)
.default(KeyDefault::Bool(false));

pub(super) fn read_backend(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &std::path::Path,
) -> Option<BackendConfig> {
    let name = t.string(errs, NAME);
    let upstream = t.required_string(errs, UPSTREAM);
    let method = t.string(errs, METHOD);
    let method_written = method.clone();
    let method = method_of(errs, method);
    let path = t.string(errs, PATH);
    let path_as_written = t.as_written(PATH).unwrap_or_default();
    let grpc = super::grpc::read_backend(t, errs);
    // A gRPC call's path is its method's.
    let path = match (path, &grpc) {
        (Some((_, span)), Some(_)) => {
            errs.push(
                Diagnostic::new(span, "a gRPC backend takes no `path`")
                    .label("its path is its method's: /package.Service/Method"),
            );
            None
        }
        (None, Some(g)) => Some((format!("/{}", g.method), g.span.clone())),
        (None, None) => {
            if t.get(PATH).is_none() {
                t.missing(errs, PATH.name);
            }
            None
        }
        (path, None) => path,
    };
    if let (Some(_), Some((_, span))) = (&grpc, &method_written) {
        errs.push(
            Diagnostic::new(span.clone(), "a gRPC backend takes no `method`")
                .label("gRPC calls are POSTs"),
        );
    }
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
    let group = t.string(errs, GROUP).map(|(s, _)| s);
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
    let target = t.string(errs, TARGET).map(|(s, _)| s);
    let allow = t.string_list(errs, ALLOW);
    let deny = t.string_list(errs, DENY);
    if let (Some(_), Some(d)) = (&allow, &deny) {
        let span = d.first().map(|(_, s)| s.clone()).unwrap_or(t.span());
        errs.push(
            Diagnostic::new(span, "a backend takes `allow` or `deny`, not both")
                .label("remove one of them"),
        );
    }
    let rename = t.string_map(errs, RENAME).unwrap_or_default();
    let optional = t.bool_or(errs, OPTIONAL);
    let default = t.get(DEFAULT).map(|v| reader::to_json(v, errs));
    let cache_ttl = t.duration(errs, CACHE_TTL).map(|(d, _)| d);
    let passthrough = t.bool_or(errs, PASSTHROUGH);
    let schema = t
        .get(validation::SCHEMA)
        .and_then(|v| validation::read_schema(v, "backend's `schema`", base, errs));
    let response_span = t.get(validation::VALIDATE_RESPONSE).map(|v| v.span());
    let validate_response = t.bool_or(errs, validation::VALIDATE_RESPONSE);
    if let Some(span) =
        response_span.filter(|_| validate_response && t.get(validation::SCHEMA).is_none())
    {
        errs.push(
            Diagnostic::new(
                span,
                "`validate_response` needs a `schema` to check answers against",
            )
            .label("no schema on this backend"),
        );
    }
    let pass_errors = t.bool_or(errs, PASS_ERRORS);
    if let (Some(g), true) = (&grpc, pass_errors) {
        errs.push(
            Diagnostic::new(g.span.clone(), "`pass_errors` is for HTTP backends")
                .label("a gRPC answer has no JSON error body to pass on")
                .note("its grpc-message is in the client's error already"),
        );
    }
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
        schema,
        validate_response,
        pass_errors,
        method: if grpc.is_some() {
            Some(Method::POST)
        } else {
            method.flatten()
        },
        grpc,
    })
}
