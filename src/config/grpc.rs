//! gRPC in routes.toml (docs/configuration.md#grpc-backends): an upstream's `grpc`
//! table names its `.proto` files (compiled here, by protox: no `protoc` on the
//! machine) or a descriptor set; a backend's `grpc` names a unary method of them and
//! its `message` the request message, a JSON template.
//!
//! Everything is read and checked at load ([`resolve`], once upstreams and routes are
//! read), so `check` reports a `.proto` that does not compile (at the `.proto` file's
//! own line:col), an unknown service or method (with did-you-mean), a streaming
//! method, a `message` field the request type does not have, a literal that does not
//! convert, and an upstream that cannot carry gRPC, with every other error at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, KeyDefault, Table, closest, key, to_json};
use super::{Protocol, RouteConfig, UpstreamConfig};
use crate::base::template::{Placeholder, Template};

/// The largest `.proto` or descriptor set file read.
const MAX_PROTO: u64 = crate::base::files::MAX_FILE;

/// An upstream's compiled `.proto` files (or its descriptor set).
#[derive(Clone)]
pub struct Protos {
    pub pool: DescriptorPool,
    /// The files read, for messages and `/routes`.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Protos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protos")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

pub const UPSTREAM_GRPC: Key = key(
    "grpc",
    "This upstream speaks gRPC: { protos, import_paths } (.proto files compiled at load, no protoc needed) or { descriptor_set } (a compiled FileDescriptorSet), relative to this file. Needs protocol h2 or h2c.",
);
pub const PROTOS: Key = key(
    "protos",
    ".proto files to compile, relative to this file; google/protobuf/*.proto are built in.",
);
pub const IMPORT_PATHS: Key = key(
    "import_paths",
    "Folders `import`s are looked up in, relative to this file; each file in `protos` must be under one.",
)
.default(KeyDefault::Computed("the folder of each file in protos"));
pub const DESCRIPTOR_SET: Key = key(
    "descriptor_set",
    "A FileDescriptorSet file (protoc --include_imports -o FILE), instead of protos.",
);
pub const BACKEND_GRPC: Key = key(
    "grpc",
    "Calls this unary gRPC method of its upstream's protos instead of an HTTP path: \"package.Service/Method\".",
);
pub const MESSAGE: Key = key(
    "message",
    "The gRPC request message as JSON (proto3 mapping) with {param}, {query.NAME}, {jwt.CLAIM} and {backend.field} filled in, or \"body\": the client's JSON body.",
)
.default(KeyDefault::Computed(
    "{} plus each path parameter named like a field of the request",
));

/// A backend's `grpc` and `message`, and the method they name once [`resolve`]d.
#[derive(Clone, Debug)]
pub struct GrpcBackend {
    /// `package.Service/Method`, as written.
    pub method: String,
    pub span: SourceSpan,
    pub message: Message,
    pub message_span: SourceSpan,
    /// The method, from its upstream's protos (set by [`resolve`]).
    pub resolved: Option<MethodDescriptor>,
}

/// What a gRPC backend's request message is made of.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `{}` plus every path parameter whose name is a field of the request type.
    Default,
    /// The client's JSON body.
    Body,
    /// A JSON template.
    Template(Shape),
}

/// A message template: JSON whose strings may hold placeholders.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// No placeholder anywhere in it.
    Literal(Value),
    /// A string with placeholders: one placeholder alone keeps its value's own JSON
    /// type (a `{backend.field}` number stays a number).
    Text(Template<Placeholder>),
    Object(Vec<(String, Shape)>),
    Array(Vec<Shape>),
}

impl Shape {
    /// Every placeholder in it, in order.
    pub fn placeholders(&self) -> Vec<&Placeholder> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Placeholder>) {
        match self {
            Shape::Literal(_) => {}
            Shape::Text(t) => out.extend(t.placeholders()),
            Shape::Object(fields) => fields.iter().for_each(|(_, s)| s.collect(out)),
            Shape::Array(items) => items.iter().for_each(|s| s.collect(out)),
        }
    }
}

impl GrpcBackend {
    /// The placeholders of its message that read path parameters, claims or other
    /// backends (`{query.NAME}` reads the client's query and is left out).
    pub fn placeholders(&self) -> Vec<&Placeholder> {
        match &self.message {
            Message::Template(s) => s
                .placeholders()
                .into_iter()
                .filter(|p| !p.text.starts_with("query."))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `idempotency_level` of a method: 1 NO_SIDE_EFFECTS, 2 IDEMPOTENT.
fn level(m: &MethodDescriptor) -> Option<i32> {
    m.method_descriptor_proto()
        .options
        .as_ref()
        .and_then(|o| o.idempotency_level)
}

/// The method's `idempotency_level` as its `.proto` writes it.
pub fn level_name(m: &MethodDescriptor) -> &'static str {
    match level(m) {
        Some(1) => "NO_SIDE_EFFECTS",
        Some(2) => "IDEMPOTENT",
        _ => "IDEMPOTENCY_UNKNOWN",
    }
}

/// Marked `NO_SIDE_EFFECTS` or `IDEMPOTENT`: hedged, and retried after a timeout.
pub fn method_is_idempotent(m: &MethodDescriptor) -> bool {
    matches!(level(m), Some(1 | 2))
}

/// Marked `NO_SIDE_EFFECTS`: its answers may be cached.
pub fn method_is_side_effect_free(m: &MethodDescriptor) -> bool {
    level(m) == Some(1)
}

/// An upstream's `grpc` table, its files read and compiled.
pub(super) fn read_protos(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<Arc<Protos>> {
    let mut g = t.table(errs, UPSTREAM_GRPC)?;
    let span = g.span();
    let protos = g.string_list(errs, PROTOS);
    let imports = g.string_list(errs, IMPORT_PATHS);
    let set = g.string(errs, DESCRIPTOR_SET);
    g.finish(errs);
    match (protos, set) {
        (Some(_), Some((_, span))) => {
            errs.push(
                Diagnostic::new(span, "`grpc` takes `protos` or `descriptor_set`, not both")
                    .label("remove one of them"),
            );
            None
        }
        (None, Some((file, span))) => read_descriptor_set(&file, span, base, errs),
        (Some(protos), None) if protos.is_empty() => {
            errs.push(Diagnostic::new(span, "`protos` names no file").label("empty list"));
            None
        }
        (Some(protos), None) => compile(&protos, imports.as_deref(), base, errs),
        (None, None) => {
            errs.push(
                Diagnostic::new(span, "`grpc` needs `protos` or `descriptor_set`")
                    .label("name the service's .proto files")
                    .note("e.g. grpc = { protos = [\"protos/users.proto\"], import_paths = [\"protos\"] }"),
            );
            None
        }
    }
}

fn read_descriptor_set(
    file: &str,
    span: SourceSpan,
    base: &Path,
    errs: &mut Errors,
) -> Option<Arc<Protos>> {
    let path = base.join(file);
    let bytes = match crate::base::files::read_bounded(&path, MAX_PROTO) {
        Ok(b) => b,
        Err(e) => {
            errs.push(
                Diagnostic::new(span, format!("cannot read descriptor_set `{file}`: {e}"))
                    .label("unreadable"),
            );
            return None;
        }
    };
    match DescriptorPool::decode(bytes.as_slice()) {
        Ok(pool) => Some(Arc::new(Protos {
            pool,
            files: vec![path],
        })),
        Err(e) => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("descriptor_set `{file}` is not a usable FileDescriptorSet: {e}"),
                )
                .label("this file")
                .note("make it with protoc --include_imports --descriptor_set_out=FILE, or name the .proto files in `protos`"),
            );
            None
        }
    }
}

/// Compiles `protos` (each found under one of `imports`, or its own folder without
/// them); an error is reported at the entry of the file it is in, with that file's
/// own line:col.
fn compile(
    protos: &[(String, SourceSpan)],
    imports: Option<&[(String, SourceSpan)]>,
    base: &Path,
    errs: &mut Errors,
) -> Option<Arc<Protos>> {
    let includes: Vec<(String, PathBuf)> = match imports {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|(s, _)| (s.clone(), base.join(s)))
            .collect(),
        _ => {
            let mut dirs: Vec<(String, PathBuf)> = Vec::new();
            for (p, _) in protos {
                let shown = Path::new(p)
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                if !dirs.iter().any(|(s, _)| *s == shown) {
                    dirs.push((shown.clone(), base.join(&shown)));
                }
            }
            dirs
        }
    };
    let mut compiler = match protox::Compiler::new(includes.iter().map(|(_, p)| p)) {
        Ok(c) => c,
        Err(e) => {
            errs.push(Diagnostic::new(protos[0].1.clone(), e.to_string()).label("these files"));
            return None;
        }
    };
    compiler.include_imports(true);
    let mut ok = true;
    for (file, span) in protos {
        let path = base.join(file);
        if let Err(e) = std::fs::metadata(&path) {
            errs.push(
                Diagnostic::new(span.clone(), format!("cannot read `{file}`: {e}"))
                    .label("this .proto file")
                    .note("paths in `protos` are relative to the config file"),
            );
            ok = false;
            continue;
        }
        if let Err(e) = compiler.open_file(&path) {
            errs.push(proto_error(&e, file, span, &includes));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let mut files: Vec<PathBuf> = protos.iter().map(|(f, _)| base.join(f)).collect();
    for f in compiler.files() {
        if let Some(p) = f.path()
            && !files.iter().any(|known| known == p)
        {
            files.push(p.to_path_buf());
        }
    }
    Some(Arc::new(Protos {
        pool: compiler.descriptor_pool(),
        files,
    }))
}

/// A protox error as a diagnostic at the `protos` entry being compiled, naming the
/// `.proto` file and its line:col (the file may be one it imports).
fn proto_error(
    e: &protox::Error,
    file: &str,
    span: &SourceSpan,
    includes: &[(String, PathBuf)],
) -> Diagnostic {
    use miette::Diagnostic as _;
    // Where in which file: the name is relative to an import path; shown as the
    // config names that folder.
    let name = e.file().unwrap_or(file);
    let shown = includes
        .iter()
        .find(|(_, dir)| dir.join(name).is_file())
        .map_or_else(
            || name.to_string(),
            |(written, _)| {
                Path::new(written)
                    .join(name)
                    .display()
                    .to_string()
                    .trim_start_matches("./")
                    .to_string()
            },
        );
    let place = match (e.labels().and_then(|mut l| l.next()), e.source_code()) {
        (Some(label), Some(source)) => source
            .read_span(label.inner(), 0, 0)
            .ok()
            .map(|s| format!("{shown}:{}:{}: ", s.line() + 1, s.column() + 1)),
        _ => None,
    }
    .unwrap_or_else(|| format!("{shown}: "));
    let mut d = Diagnostic::new(
        span.clone(),
        format!("`{file}` does not compile: {place}{e}"),
    )
    .label("this .proto file");
    if let Some(help) = e.help() {
        d = d.note(help.to_string());
    }
    if e.is_file_not_found() {
        d = d.note("paths in `protos` and `import_paths` are relative to the config file; every file in `protos` must be under one of `import_paths`");
    }
    d
}

pub const SERVICE_NOTE: &str = "a gRPC method is named package.Service/Method";

/// A backend's `grpc` and `message` keys (`None` without `grpc`).
pub(super) fn read_backend(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<GrpcBackend> {
    let method = t.string(errs, BACKEND_GRPC);
    let message_value = t.get(MESSAGE);
    let message_span = message_value.map(Spanned::span);
    let message = message_value.map(|v| read_message(v, errs));
    let Some((method, span)) = method else {
        if let Some(span) = message_span {
            errs.push(
                Diagnostic::new(span, "`message` is for gRPC backends")
                    .label("this backend has no `grpc` method")
                    .note("add grpc = \"package.Service/Method\", or remove `message`"),
            );
        }
        return None;
    };
    if !method.contains('/') || method.starts_with('/') || method.ends_with('/') {
        errs.push(
            Diagnostic::new(
                span.clone(),
                format!("`{method}` is not a gRPC method name"),
            )
            .label("expected \"package.Service/Method\"")
            .note(SERVICE_NOTE),
        );
    }
    Some(GrpcBackend {
        method,
        message_span: message_span.unwrap_or_else(|| span.clone()),
        span,
        message: message.flatten().unwrap_or(Message::Default),
        resolved: None,
    })
}

fn read_message(v: &Spanned<DeValue<'_>>, errs: &mut Errors) -> Option<Message> {
    match v.get_ref() {
        DeValue::String(s) if s.as_ref() == "body" => Some(Message::Body),
        DeValue::Table(_) => {
            let json = to_json(v, errs);
            match shape_of(json) {
                Ok(shape) => Some(Message::Template(shape)),
                Err(why) => {
                    errs.push(Diagnostic::new(v.span(), why).label("bad placeholder"));
                    None
                }
            }
        }
        other => {
            errs.push(
                Diagnostic::new(
                    v.span(),
                    format!(
                        "`message` must be a table (the message as JSON) or \"body\", found {}",
                        match other {
                            DeValue::String(_) => "another string",
                            o => o.type_str(),
                        }
                    ),
                )
                .label("expected e.g. { id = \"{user_id}\" }"),
            );
            None
        }
    }
}

/// A JSON value as a template: strings with `{...}` parsed, the rest kept as it is.
fn shape_of(v: Value) -> Result<Shape, String> {
    Ok(match v {
        Value::String(s) if s.contains('{') || s.contains('}') => {
            let t = Template::parse(&s).map_err(|(_, why)| format!("in `{s}`: {why}"))?;
            Shape::Text(t)
        }
        Value::Object(m) => Shape::Object(
            m.into_iter()
                .map(|(k, v)| shape_of(v).map(|s| (k, s)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Array(items) => {
            Shape::Array(items.into_iter().map(shape_of).collect::<Result<_, _>>()?)
        }
        other => Shape::Literal(other),
    })
}

/// Finds each gRPC backend's method in its upstream's protos and checks its message
/// against the request type; every problem is reported.
pub(super) fn resolve(upstreams: &[UpstreamConfig], routes: &mut [RouteConfig], errs: &mut Errors) {
    for route in routes {
        for b in &mut route.backends {
            let Some(g) = &mut b.grpc else { continue };
            // An unknown upstream is reported by the cross-field checks.
            let Some(u) = upstreams.iter().find(|u| u.name == b.upstream) else {
                continue;
            };
            if !matches!(u.settings.protocol, Protocol::H2 | Protocol::H2c) {
                errs.push(
                    Diagnostic::new(
                        g.span.clone(),
                        format!(
                            "gRPC needs HTTP/2, and upstream `{}` speaks {}",
                            u.name,
                            u.settings.protocol.as_str()
                        ),
                    )
                    .label("a gRPC call")
                    .also(
                        u.name_span.clone(),
                        "set protocol = \"h2c\" (or \"h2\" with https urls) here",
                    ),
                );
            }
            let Some(protos) = &u.grpc else {
                errs.push(
                    Diagnostic::new(
                        g.span.clone(),
                        format!(
                            "upstream `{}` has no `grpc` protos to find `{}` in",
                            u.name, g.method
                        ),
                    )
                    .label("unknown method")
                    .also(u.name_span.clone(), "add grpc = { protos = [...] } here"),
                );
                continue;
            };
            let Some(method) = find_method(&protos.pool, g, errs) else {
                continue;
            };
            if method.is_client_streaming() || method.is_server_streaming() {
                let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                    (true, true) => "bidirectional streaming",
                    (true, false) => "client streaming",
                    _ => "server streaming",
                };
                errs.push(
                    Diagnostic::new(g.span.clone(), format!("`{}` is {kind}", g.method))
                        .label("only unary methods can be merged")
                        .note("a backend makes one request and reads one answer"),
                );
                continue;
            }
            if let Message::Template(shape) = &g.message {
                check_shape(shape, &method.input(), &g.message_span, "", errs);
            }
            if b.cache_ttl.is_some() && !method_is_side_effect_free(&method) {
                errs.push(
                    Diagnostic::new(
                        b.name_span.clone(),
                        format!("backend `{}` of route {} cannot have a `cache_ttl`", b.name, route.name),
                    )
                    .label("only gRPC methods marked NO_SIDE_EFFECTS are cached")
                    .note("mark the method with `option idempotency_level = NO_SIDE_EFFECTS;` in its .proto"),
                );
            }
            g.resolved = Some(method);
        }
    }
}

fn find_method(
    pool: &DescriptorPool,
    g: &GrpcBackend,
    errs: &mut Errors,
) -> Option<MethodDescriptor> {
    let (service, name) = g.method.rsplit_once('/')?;
    let Some(s) = pool.get_service_by_name(service) else {
        let names: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        let mut d = Diagnostic::new(
            g.span.clone(),
            format!("no service `{service}` in the upstream's protos"),
        )
        .label(match closest(service, names.iter().map(String::as_str)) {
            Some(like) => format!("did you mean `{like}`?"),
            None => "unknown service".to_string(),
        });
        d = d.note(if names.is_empty() {
            "the protos define no service".to_string()
        } else {
            format!("services: {}", names.join(", "))
        });
        errs.push(d.note(SERVICE_NOTE));
        return None;
    };
    if let Some(m) = s.methods().find(|m| m.name() == name) {
        return Some(m);
    }
    let names: Vec<String> = s.methods().map(|m| m.name().to_string()).collect();
    errs.push(
        Diagnostic::new(
            g.span.clone(),
            format!("service `{service}` has no method `{name}`"),
        )
        .label(match closest(name, names.iter().map(String::as_str)) {
            Some(like) => format!("did you mean `{like}`?"),
            None => "unknown method".to_string(),
        })
        .note(format!("methods: {}", names.join(", "))),
    );
    None
}

/// A field of `m` by its JSON name or its `.proto` name, as the proto3 JSON mapping
/// accepts either.
pub fn field_named(m: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    m.get_field_by_json_name(name)
        .or_else(|| m.get_field_by_name(name))
}

/// Every key of a message template is a field of its message (nested messages too),
/// and every literal converts to its field's type.
fn check_shape(
    shape: &Shape,
    m: &MessageDescriptor,
    span: &SourceSpan,
    at: &str,
    errs: &mut Errors,
) {
    let Shape::Object(fields) = shape else {
        if !matches!(shape, Shape::Text(_)) || !is_well_known(m) {
            errs.push(
                Diagnostic::new(
                    span.clone(),
                    format!(
                        "the message{} must be a table ({})",
                        at_text(at),
                        m.full_name()
                    ),
                )
                .label("expected a table of fields"),
            );
        }
        return;
    };
    for (name, value) in fields {
        let here = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}.{name}")
        };
        let Some(field) = field_named(m, name) else {
            let shown: Vec<String> = m.fields().map(|f| f.json_name().to_string()).collect();
            errs.push(
                Diagnostic::new(
                    span.clone(),
                    format!("`{here}` is not a field of {}", m.full_name()),
                )
                .label(match closest(name, shown.iter().map(String::as_str)) {
                    Some(like) => format!("did you mean `{like}`?"),
                    None => "unknown field".to_string(),
                })
                .note(if shown.is_empty() {
                    format!("{} has no fields", m.full_name())
                } else {
                    format!("fields of {}: {}", m.full_name(), shown.join(", "))
                }),
            );
            continue;
        };
        match (value, field.kind()) {
            (Shape::Object(_), Kind::Message(inner))
                if !field.is_map() && !is_well_known(&inner) =>
            {
                check_shape(value, &inner, span, &here, errs);
            }
            (Shape::Literal(v), _) => {
                let alone = Value::Object(
                    std::iter::once((field.json_name().to_string(), v.clone())).collect(),
                );
                if let Err(e) = prost_reflect::DynamicMessage::deserialize(
                    m.clone(),
                    crate::base::json::Tree(&alone),
                ) {
                    errs.push(
                        Diagnostic::new(
                            span.clone(),
                            format!(
                                "`{here}` does not convert to its field's type ({}): {e}",
                                kind_name(&field)
                            ),
                        )
                        .label("this message"),
                    );
                }
            }
            _ => {}
        }
    }
}

fn at_text(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" at `{at}`")
    }
}

/// `google.protobuf.*` messages, which the JSON mapping writes as strings, numbers or
/// any JSON (Timestamp, Duration, wrappers, Struct, Value...).
pub fn is_well_known(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

/// A field's type as a `.proto` writes it.
pub fn kind_name(f: &FieldDescriptor) -> String {
    let base = match f.kind() {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        k => format!("{k:?}").to_lowercase(),
    };
    if f.is_list() {
        format!("repeated {base}")
    } else {
        base
    }
}

/// The JSON Schema of a message as the proto3 JSON mapping writes it with defaults
/// included (`manifold openapi` types a gRPC backend's answer with it): every field
/// without presence is required; an unset message field may be missing.
pub fn answer_schema(m: &MessageDescriptor) -> Value {
    message_schema(m, &mut Vec::new())
}

fn message_schema(m: &MessageDescriptor, seen: &mut Vec<String>) -> Value {
    if let Some(s) = well_known_schema(m) {
        return s;
    }
    let name = m.full_name().to_string();
    if seen.contains(&name) {
        // A recursive message: its inner copies are left untyped.
        return serde_json::json!({"type": "object", "description": format!("{name} (recursive)")});
    }
    seen.push(name.clone());
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for f in m.fields() {
        properties.insert(f.json_name().to_string(), field_schema(&f, seen));
        if !f.supports_presence() {
            required.push(Value::from(f.json_name()));
        }
    }
    seen.pop();
    let mut s = serde_json::json!({
        "type": "object",
        "description": name,
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        s["required"] = Value::Array(required);
    }
    s
}

fn field_schema(f: &FieldDescriptor, seen: &mut Vec<String>) -> Value {
    if f.is_map()
        && let Kind::Message(entry) = f.kind()
    {
        let value = entry.map_entry_value_field();
        return serde_json::json!({"type": "object", "additionalProperties": kind_schema(&value.kind(), seen)});
    }
    if f.is_list() {
        return serde_json::json!({"type": "array", "items": kind_schema(&f.kind(), seen)});
    }
    kind_schema(&f.kind(), seen)
}

fn kind_schema(kind: &Kind, seen: &mut Vec<String>) -> Value {
    use serde_json::json;
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
        // 64-bit integers are strings in the JSON mapping (JavaScript numbers lose them).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "pattern": "^-?[0-9]+$", "format": "int64"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "pattern": "^[0-9]+$"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>(),
        }),
        Kind::Message(m) => message_schema(m, seen),
    }
}

/// The JSON forms of the `google.protobuf` types.
fn well_known_schema(m: &MessageDescriptor) -> Option<Value> {
    use serde_json::json;
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        "google.protobuf.FieldMask" | "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "contentEncoding": "base64"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "pattern": "^-?[0-9]+$"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.Struct" | "google.protobuf.Any" => json!({"type": "object"}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Value" => json!({}),
        _ => return None,
    })
}
