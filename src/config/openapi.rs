//! `manifold openapi`: an OpenAPI 3.1 document of a config's public routes, so
//! frontends can generate clients and see every status a route can answer.
//!
//! Built from the loaded config: the paths, their parameters, the forwarded query
//! params and headers, the answer headers (`x-manifold-completed`, `x-request-id`,
//! `x-manifold-cache`) and the contract's error body. A route's `validate` schemas
//! become its parameters' schemas and its request body, so a generated client's types
//! are what the gateway enforces; a backend's `schema`, shaped as its answer is
//! (`target`, `allow`/`deny`, `rename`, `group`), types its part of the merged answer.

use serde_json::{Map, Value, json};

use crate::base::template::route_params;
use crate::config::{Config, RouteConfig};

/// What the operator says about the API (`manifold openapi --title --api-version`).
#[derive(Debug, Default)]
pub struct Info {
    pub title: Option<String>,
    pub version: Option<String>,
}

pub fn document(config: &Config) -> Value {
    document_with(config, &Info::default())
}

pub fn document_with(config: &Config, info: &Info) -> Value {
    let mut paths = Map::new();
    for r in &config.routes {
        let path = r.path.replace("{*", "{");
        let item = paths.entry(path).or_insert_with(|| json!({}));
        if let Value::Object(ops) = item {
            ops.insert(r.method.as_str().to_ascii_lowercase(), operation(config, r));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": info.title.clone().unwrap_or_else(|| config.telemetry.service_name.clone()),
            // The API's version is the operator's to say; by default, the config file's.
            "version": info.version.clone().unwrap_or_else(|| config.version()),
            "description": "Routes served by manifold. Merged routes answer one JSON object; passthrough routes answer what their upstream does."
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "request_id"],
                            "properties": {
                                "code": {"type": "string", "enum": [
                                    "UPSTREAM_TIMEOUT", "CIRCUIT_OPEN", "OVERLOADED", "UPSTREAM_ERROR",
                                    "UPSTREAM_BAD_RESPONSE", "UPSTREAM_REJECTED", "RATE_LIMITED",
                                    "ROUTE_NOT_FOUND", "METHOD_NOT_ALLOWED", "PAYLOAD_TOO_LARGE",
                                    "BAD_PARAMETER", "REQUEST_TIMEOUT", "BAD_REQUEST", "CORS_REJECTED",
                                    "INVALID_REQUEST", "UNSUPPORTED_MEDIA_TYPE",
                                    "IDEMPOTENCY_KEY_MISSING", "IDEMPOTENCY_KEY_INVALID",
                                    "IDEMPOTENCY_IN_PROGRESS", "IDEMPOTENCY_KEY_REUSED"
                                ]},
                                "message": {"type": "string"},
                                "backend": {"type": "string", "description": "The backend to blame, when one is."},
                                "request_id": {"type": "string"},
                                "details": {
                                    "type": "array",
                                    "maxItems": 20,
                                    "description": "INVALID_REQUEST: every failure found, parameters first, then the query, then the body.",
                                    "items": {
                                        "type": "object",
                                        "required": ["in", "path", "message"],
                                        "properties": {
                                            "in": {"type": "string", "enum": ["params", "query", "body"]},
                                            "path": {"type": "string", "description": "A JSON pointer into that part; empty for the part itself."},
                                            "message": {"type": "string"}
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
            "headers": {
                "RequestId": {"description": "The client's x-request-id, or one made for this request.", "schema": {"type": "string"}},
                "Completed": {"description": "false when an optional backend failed and was left out or defaulted.", "schema": {"type": "string", "enum": ["true", "false"]}},
                "Cache": {"description": "Route cache verdict.", "schema": {"type": "string", "enum": ["hit", "miss", "stale"]}},
                "RetryAfter": {"description": "Whole seconds to wait, at least 1.", "schema": {"type": "integer", "minimum": 1}}
            },
            "responses": {
                "Error": {
                    "description": "The contract's JSON error body.",
                    "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                },
                "RetryableError": {
                    "description": "The contract's JSON error body; retry-after says when to try again.",
                    "headers": {
                        "x-request-id": {"$ref": "#/components/headers/RequestId"},
                        "retry-after": {"$ref": "#/components/headers/RetryAfter"}
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            }
        }
    })
}

/// The merged answer's shape, as far as the config tells it: each `group` is a
/// top-level key (required when its backend is required or has a `default`), and an
/// `allow` list names an answer's fields (renamed as `rename` says). Answers merged
/// into the root without an `allow` list may add keys of their own.
fn merged_schema(r: &RouteConfig) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut open = false;
    for b in &r.backends {
        let always_there = !b.optional || b.default.is_some();
        // A gRPC backend's answer is typed by its method's output message.
        let typed = b
            .schema
            .as_ref()
            .map(|s| publishable(&s.published))
            .or_else(|| {
                let method = b.grpc.as_ref()?.resolved.as_ref()?;
                Some(crate::config::grpc::answer_schema(&method.output()))
            })
            .map(|s| shaped(&s, b));
        match &b.group {
            Some(g) => {
                let mut s = match (typed, allowed_fields(b), &b.target) {
                    (Some(t), _, _) => t,
                    (None, Some(f), None) => json!({"type": "object", "properties": f}),
                    _ => json!({}),
                };
                if let Value::Object(m) = &mut s {
                    m.insert(
                        "description".into(),
                        json!(format!("The answer of backend `{}`.", b.name)),
                    );
                }
                properties.insert(g.clone(), s);
                if always_there {
                    required.push(json!(g));
                }
            }
            None => match (typed, allowed_fields(b), &b.target) {
                // An object answer's fields join the root; they are there when the
                // backend always is and its schema says so.
                (Some(t), _, _) if t.get("properties").is_some() => {
                    if let Some(Value::Object(f)) = t.get("properties") {
                        for (k, v) in f {
                            properties.insert(k.clone(), v.clone());
                        }
                    }
                    if always_there && let Some(Value::Array(names)) = t.get("required") {
                        required.extend(names.iter().cloned());
                    }
                    open |= t.get("additionalProperties") != Some(&json!(false));
                }
                // Not an object: placed under the backend's name.
                (Some(t), _, _) if t.get("type").is_some_and(|ty| ty != "object") => {
                    properties.insert(b.name.clone(), t);
                    if always_there {
                        required.push(json!(b.name));
                    }
                }
                // An object answer's allowed fields join the root.
                (None, Some(Value::Object(f)), None) => {
                    for (k, v) in f {
                        properties.insert(k, v);
                    }
                }
                _ => open = true,
            },
        }
    }
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    if !open {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

/// A schema as an OpenAPI 3.1 document holds it: its `$schema` and `$id` dropped (the
/// document's dialect is 2020-12, and its `$ref`s were resolved at load).
fn publishable(schema: &Value) -> Value {
    let mut s = schema.clone();
    strip_dialect(&mut s);
    s
}

/// Removes `$schema` and `$id` wherever a schema (or one its `$ref`s brought in) says
/// them; a property named so is an object schema, never a string, and stays.
fn strip_dialect(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, v| !((k == "$schema" || k == "$id") && v.is_string()));
            m.values_mut().for_each(strip_dialect);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_dialect),
        _ => {}
    }
}

/// A backend's answer schema shaped as its answers are (docs/configuration.md#shaping-order):
/// `target`, then `allow` or `deny`, then `rename`.
fn shaped(schema: &Value, b: &crate::config::BackendConfig) -> Value {
    let mut s = match &b.target {
        Some(path) => at_path(schema, path),
        None => schema.clone(),
    };
    if !b.allow.is_empty() {
        s = keep(&s, &tree(&b.allow));
    } else if !b.deny.is_empty() {
        s = drop_paths(&s, &tree(&b.deny));
    }
    if !b.rename.is_empty() {
        s = through_arrays(&s, &|o| renamed(o, &b.rename));
    }
    s
}

/// Dot paths as a tree: `["id", "profile.city"]` → `{id: {}, profile: {city: {}}}`
/// (an empty node is a whole field).
fn tree(paths: &[String]) -> Map<String, Value> {
    let mut root = Map::new();
    for p in paths {
        let mut node = &mut root;
        for seg in p.split('.') {
            let next = node
                .entry(seg.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = next else { break };
            node = m;
        }
    }
    root
}

/// `f` applied to an object schema, or to the items of an array schema (shaping goes
/// through arrays, per element).
fn through_arrays(schema: &Value, f: &dyn Fn(&Map<String, Value>) -> Value) -> Value {
    match schema {
        Value::Object(m) if m.get("type") == Some(&json!("array")) => {
            let mut out = m.clone();
            if let Some(items) = m.get("items") {
                out.insert("items".into(), through_arrays(items, f));
            }
            Value::Object(out)
        }
        Value::Object(m) => f(m),
        other => other.clone(),
    }
}

/// The schema of the value at a dot path; a field that may be missing may be `null`.
fn at_path(schema: &Value, path: &str) -> Value {
    let (seg, rest) = path.split_once('.').unwrap_or((path, ""));
    through_arrays(schema, &|o| {
        let Some(field) = o.get("properties").and_then(|p| p.get(seg)) else {
            return json!({});
        };
        let inner = if rest.is_empty() {
            field.clone()
        } else {
            at_path(field, rest)
        };
        let required = o
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.contains(&json!(seg)));
        if required {
            inner
        } else {
            json!({"anyOf": [inner, {"type": "null"}]})
        }
    })
}

/// Only the fields `keep` names (and, inside, only theirs).
fn keep(schema: &Value, keep_tree: &Map<String, Value>) -> Value {
    through_arrays(schema, &|o| {
        let props = o.get("properties").and_then(Value::as_object);
        let mut out = o.clone();
        let mut kept = Map::new();
        for (name, sub) in keep_tree {
            let field = props
                .and_then(|p| p.get(name))
                .cloned()
                .unwrap_or(json!({}));
            let field = match sub {
                Value::Object(m) if !m.is_empty() => keep(&field, m),
                _ => field,
            };
            kept.insert(name.clone(), field);
        }
        if let Some(Value::Array(req)) = o.get("required") {
            let req: Vec<Value> = req
                .iter()
                .filter(|n| n.as_str().is_some_and(|n| keep_tree.contains_key(n)))
                .cloned()
                .collect();
            out.insert("required".into(), Value::Array(req));
        }
        out.insert("properties".into(), Value::Object(kept));
        out.insert("additionalProperties".into(), json!(false));
        Value::Object(out)
    })
}

/// Without the fields `drop_tree` names.
fn drop_paths(schema: &Value, drop_tree: &Map<String, Value>) -> Value {
    through_arrays(schema, &|o| {
        let mut out = o.clone();
        if let Some(Value::Object(props)) = out.get_mut("properties") {
            for (name, sub) in drop_tree {
                match sub {
                    Value::Object(m) if !m.is_empty() => {
                        if let Some(field) = props.get(name).cloned() {
                            props.insert(name.clone(), drop_paths(&field, m));
                        }
                    }
                    _ => {
                        props.remove(name);
                    }
                }
            }
        }
        if let Some(Value::Array(req)) = out.get_mut("required") {
            req.retain(|n| {
                n.as_str().is_none_or(|n| {
                    drop_tree
                        .get(n)
                        .is_none_or(|s| s.as_object().is_some_and(|m| !m.is_empty()))
                })
            });
        }
        Value::Object(out)
    })
}

/// Top-level fields renamed, in `properties` and `required`.
fn renamed(o: &Map<String, Value>, pairs: &[(String, String)]) -> Value {
    let name_of = |n: &str| {
        pairs
            .iter()
            .find(|(from, _)| from == n)
            .map_or(n.to_string(), |(_, to)| to.clone())
    };
    let mut out = o.clone();
    if let Some(Value::Object(props)) = o.get("properties") {
        let props: Map<String, Value> =
            props.iter().map(|(k, v)| (name_of(k), v.clone())).collect();
        out.insert("properties".into(), Value::Object(props));
    }
    if let Some(Value::Array(req)) = o.get("required") {
        let req: Vec<Value> = req
            .iter()
            .map(|n| n.as_str().map_or(n.clone(), |n| json!(name_of(n))))
            .collect();
        out.insert("required".into(), Value::Array(req));
    }
    Value::Object(out)
}

/// The top-level fields an `allow` list keeps, after `rename`: `{name: {}}`, or an
/// object schema for a field only part of which is kept (`profile.city`).
fn allowed_fields(b: &crate::config::BackendConfig) -> Option<Value> {
    if b.allow.is_empty() {
        return None;
    }
    let mut out = Map::new();
    for path in &b.allow {
        let (top, rest) = match path.split_once('.') {
            Some((top, rest)) => (top, Some(rest)),
            None => (path.as_str(), None),
        };
        let name = b
            .rename
            .iter()
            .find(|(from, _)| from == top)
            .map_or(top, |(_, to)| to.as_str());
        let entry = out.entry(name.to_string()).or_insert_with(|| json!({}));
        if let Some(rest) = rest {
            let inner = rest.split('.').next().unwrap_or(rest);
            entry["type"] = json!("object");
            entry["properties"][inner] = json!({});
        }
    }
    Some(Value::Object(out))
}

fn operation(config: &Config, r: &RouteConfig) -> Value {
    let validation = r.validation.as_ref();
    let params_schema = validation
        .and_then(|v| v.params.as_ref())
        .map(|s| publishable(&s.published));
    let mut parameters: Vec<Value> = route_params(&r.path)
        .into_iter()
        .map(|name| {
            let schema =
                property(params_schema.as_ref(), &name).unwrap_or(json!({"type": "string"}));
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    let query_schema = validation
        .and_then(|v| v.query.as_ref())
        .map(|s| publishable(&s.published));
    let mut listed: Vec<String> = Vec::new();
    if let Some(Value::Object(props)) = query_schema.as_ref().and_then(|q| q.get("properties")) {
        let required = query_schema
            .as_ref()
            .and_then(|q| q.get("required"))
            .and_then(Value::as_array);
        for (name, schema) in props {
            let is_required = required.is_some_and(|r| r.contains(&json!(name)));
            parameters.push(
                json!({"name": name, "in": "query", "required": is_required, "schema": schema}),
            );
            listed.push(name.clone());
        }
    }
    for q in r
        .forward_query
        .iter()
        .filter(|q| *q != "*" && !listed.contains(q))
    {
        parameters.push(
            json!({"name": q, "in": "query", "required": false, "schema": {"type": "string"}}),
        );
    }
    for h in r.forward_headers.iter().filter(|h| *h != "*") {
        // OpenAPI describes these through `security`, not as header parameters.
        if !matches!(h.as_str(), "authorization" | "accept" | "content-type") {
            parameters.push(
                json!({"name": h, "in": "header", "required": false, "schema": {"type": "string"}}),
            );
        }
    }
    let mut ok_headers = json!({"x-request-id": {"$ref": "#/components/headers/RequestId"}});
    let ok = if r.passthrough {
        json!({
            "description": "The upstream's answer, streamed unchanged (status, headers and body).",
            "headers": ok_headers
        })
    } else {
        ok_headers["x-manifold-completed"] = json!({"$ref": "#/components/headers/Completed"});
        if r.cache.is_some() {
            ok_headers["x-manifold-cache"] = json!({"$ref": "#/components/headers/Cache"});
        }
        json!({
            "description": format!("The merged answer of: {}.", r.backends.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")),
            "headers": ok_headers,
            "content": {"application/json": {"schema": merged_schema(r)}}
        })
    };
    let mut responses = Map::new();
    // A one-backend route answers its backend's 2xx (201 stays 201).
    let ok_status = match (r.passthrough, r.backends.len()) {
        (true, _) => "default",
        (false, 1) => "2XX",
        _ => "200",
    };
    responses.insert(ok_status.into(), ok);
    let error = json!({"$ref": "#/components/responses/Error"});
    let retryable = json!({"$ref": "#/components/responses/RetryableError"});
    if validation.is_some() || !parameters.iter().all(|p| p["in"] != "path") {
        responses.insert("400".into(), error.clone());
    }
    responses.insert("413".into(), error.clone());
    if validation.is_some_and(|v| v.body.is_some()) {
        responses.insert("415".into(), error.clone());
    }
    if let Some(idem) = &r.idempotency {
        parameters.push(json!({
            "name": "idempotency-key",
            "in": "header",
            "required": idem.required,
            "description": "1 to 255 visible ASCII characters: a retry with the same key gets the first request's final answer (idempotent-replayed: true).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
        }));
        responses.insert("400".into(), error.clone());
        responses.insert("409".into(), json!({
            "description": "IDEMPOTENCY_IN_PROGRESS: a request with this key is still being served; retry after retry-after.",
            "headers": {
                "x-request-id": {"$ref": "#/components/headers/RequestId"},
                "retry-after": {"$ref": "#/components/headers/RetryAfter"}
            },
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }));
        responses.insert(
            "422".into(),
            json!({
                "description": "IDEMPOTENCY_KEY_REUSED: the key came with another request.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        );
    }
    if r.rate_limit.is_some() {
        responses.insert("429".into(), retryable.clone());
    }
    if !r.passthrough {
        let rejected = if r.backends.iter().any(|b| b.pass_errors) {
            json!({"description": "An upstream's own 4xx: its JSON body as it sent it (pass_errors), or, when that is not JSON or larger than 64 KiB, the contract's error body (UPSTREAM_REJECTED).", "content": {"application/json": {"schema": {}}}})
        } else {
            json!({"description": "An upstream's own 4xx (UPSTREAM_REJECTED), with the contract's error body.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        };
        responses.insert("4XX".into(), rejected);
        responses.insert("502".into(), error.clone());
        responses.insert("503".into(), retryable);
        responses.insert("504".into(), error.clone());
    }
    let mut op = json!({
        "operationId": operation_id(&r.name),
        "summary": r.name,
        "description": format!("Deadline {}.", humantime::format_duration(config.route_deadline(r))),
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(body) = validation.and_then(|v| v.body.as_ref()) {
        // Required unless the schema lets `null` (no body) through.
        let required = !body.validator.is_valid(&Value::Null);
        op["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": publishable(&body.published)}}
        });
    } else if matches!(
        r.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    ) {
        op["requestBody"] = json!({"required": false, "content": {"*/*": {"schema": {}}}});
    }
    op
}

/// The schema of `name` among an object schema's `properties`.
fn property(schema: Option<&Value>, name: &str) -> Option<Value> {
    schema?.get("properties")?.get(name).cloned()
}

/// `GET /api/users/{id}` → `get_api_users_id`.
fn operation_id(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::operation_id;

    #[test]
    fn operation_ids_are_identifiers() {
        assert_eq!(operation_id("GET /api/users/{id}"), "get_api_users_id");
        assert_eq!(operation_id("dashboard"), "dashboard");
    }
}
