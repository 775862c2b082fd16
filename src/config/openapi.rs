//! `manifold openapi`: an OpenAPI 3.1 document of a config's public routes, so
//! frontends can generate clients and see every status a route can answer.
//!
//! Built from the loaded config: the paths, their parameters, the forwarded query
//! params and headers, the answer headers (`x-manifold-completed`, `x-request-id`,
//! `x-manifold-cache`) and the contract's error body.

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
                                    "BAD_PARAMETER", "REQUEST_TIMEOUT", "BAD_REQUEST", "CORS_REJECTED"
                                ]},
                                "message": {"type": "string"},
                                "backend": {"type": "string", "description": "The backend to blame, when one is."},
                                "request_id": {"type": "string"}
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
        let fields = allowed_fields(b);
        let always_there = !b.optional || b.default.is_some();
        match &b.group {
            Some(g) => {
                let mut s = match (&fields, &b.target) {
                    (Some(f), None) => json!({"type": "object", "properties": f}),
                    _ => json!({}),
                };
                s["description"] = json!(format!("The answer of backend `{}`.", b.name));
                properties.insert(g.clone(), s);
                if always_there {
                    required.push(json!(g));
                }
            }
            None => match (fields, &b.target) {
                // An object answer's allowed fields join the root.
                (Some(Value::Object(f)), None) => {
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
    let mut parameters: Vec<Value> = route_params(&r.path)
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    for q in r.forward_query.iter().filter(|q| *q != "*") {
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
    responses.insert(
        if r.passthrough {
            "default".into()
        } else {
            "200".into()
        },
        ok,
    );
    let error = json!({"$ref": "#/components/responses/Error"});
    let retryable = json!({"$ref": "#/components/responses/RetryableError"});
    if !parameters.iter().all(|p| p["in"] != "path") {
        responses.insert("400".into(), error.clone());
    }
    responses.insert("413".into(), error.clone());
    if r.rate_limit.is_some() {
        responses.insert("429".into(), retryable.clone());
    }
    if !r.passthrough {
        responses.insert("4XX".into(), json!({"description": "An upstream's own 4xx (UPSTREAM_REJECTED), with the contract's error body.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
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
    if matches!(
        r.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    ) {
        op["requestBody"] = json!({"required": false, "content": {"*/*": {"schema": {}}}});
    }
    op
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
