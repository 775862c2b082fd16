//! `manifold schema`: the JSON Schema of `routes.toml`, for editor completion and
//! validation (taplo / Even Better TOML: put `#:schema ./routes.schema.json` first).
//!
//! It is made by running the real loader over a probe file that has every section and
//! recording which keys its getters ask for (`reader::record`): a key the loader reads
//! is in the schema, and nothing else is. Descriptions and a few constraints (enums,
//! patterns) are layered on top here.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::reader::{Field, Kind, record};

/// Every section, so every getter runs once. Values only need to reach the getters.
const PROBE: &str = r#"
[server]
[telemetry]
[upstreams.u]
urls = ["http://127.0.0.1:1"]
circuit_breaker = { consecutive_failures = 1, open_for = "1s" }
retry = { attempts = 1 }
rate_limit = { per_second = 1 }
[[routes]]
path = "/p"
cache = { ttl = "1s" }
rate_limit = { per_second = 1 }
  [[routes.backends]]
  upstream = "u"
  path = "/"
  rename = { a = "b" }
"#;

pub fn schema() -> Value {
    let fields = record(|| {
        let _ = super::parse("probe.toml", PROBE);
    });
    // Per table path: key -> (kind, required). A typed read wins over a presence check.
    let mut tables: BTreeMap<String, BTreeMap<&'static str, (Kind, bool)>> = BTreeMap::new();
    for Field {
        path,
        key,
        kind,
        required,
    } in fields
    {
        let entry = tables
            .entry(path)
            .or_default()
            .entry(key)
            .or_insert((kind, required));
        if entry.0 == Kind::Any {
            entry.0 = kind;
        }
        entry.1 |= required;
    }
    let mut root = object(&tables, "");
    if let Value::Object(m) = &mut root {
        m.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
        m.insert("title".into(), json!("manifold routes.toml"));
    }
    root
}

fn object(tables: &BTreeMap<String, BTreeMap<&'static str, (Kind, bool)>>, path: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    if let Some(keys) = tables.get(path) {
        for (key, (kind, req)) in keys {
            let child = format!("{path}/{key}");
            let mut s = match kind {
                Kind::Any => json!({}),
                Kind::String => json!({"type": "string"}),
                Kind::Bool => json!({"type": "boolean"}),
                Kind::Count => json!({"type": "integer", "minimum": 0}),
                Kind::Number => json!({"type": "number"}),
                Kind::Duration => {
                    json!({"type": "string", "pattern": "^\\s*[0-9]", "examples": ["250ms", "2s", "1m"]})
                }
                Kind::Size => json!({"oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgG][iI]?[bB]?|[bB])?\\s*$", "examples": ["512KiB", "1MiB", "10MB"]}
                ]}),
                Kind::StringList => json!({"type": "array", "items": {"type": "string"}}),
                Kind::StringMap => {
                    json!({"type": "object", "additionalProperties": {"type": "string"}})
                }
                Kind::Table => object(tables, &child),
                Kind::NamedTables => {
                    json!({"type": "object", "additionalProperties": object(tables, &format!("{child}/*"))})
                }
                Kind::TableArray => {
                    json!({"type": "array", "items": object(tables, &format!("{child}/[]"))})
                }
            };
            if let (Value::Object(m), Some(extra)) = (&mut s, refine(&child))
                && let Value::Object(extra) = extra
            {
                m.extend(extra);
            }
            properties.insert((*key).to_string(), s);
            if *req {
                required.push(json!(key));
            }
        }
    }
    let mut out =
        json!({"type": "object", "additionalProperties": false, "properties": properties});
    if !required.is_empty() {
        out["required"] = Value::Array(required);
    }
    if let Some(Value::Object(extra)) = refine(path)
        && let Value::Object(m) = &mut out
    {
        m.extend(extra);
    }
    out
}

/// Descriptions and constraints, by schema path (`/routes/[]/timeout`).
fn refine(path: &str) -> Option<Value> {
    let v = match path {
        "/server" => json!({"description": "Listeners and request limits."}),
        "/server/listen" => {
            json!({"description": "Public listener, ip:port (HTTP/1.1 and h2c). Default 127.0.0.1:8080."})
        }
        "/server/admin_listen" => {
            json!({"description": "Admin listener for /health /ready /metrics /routes. Default 127.0.0.1:9901; never the public port."})
        }
        "/server/default_timeout" => {
            json!({"description": "Route deadline when a route sets none. Default 2s."})
        }
        "/server/max_request_body" => {
            json!({"description": "Larger request bodies get 413. Default 1MiB."})
        }
        "/server/trusted_proxies" => {
            json!({"description": "Peers (IPs or CIDRs) whose X-Forwarded-For is believed for client_ip rate limits."})
        }
        "/server/shutdown_grace" => {
            json!({"description": "How long a drain waits for in-flight requests. Default 10s."})
        }
        "/server/workers" => {
            json!({"description": "Event loops (threads). Default: one per CPU.", "minimum": 1, "maximum": 1024})
        }
        "/server/cache_capacity" => {
            json!({"description": "Bytes the route and backend caches may hold together. Default 64MiB."})
        }
        "/server/header_read_timeout" => {
            json!({"description": "Time a client has, from connecting or from its previous answer, to send a whole request head. Default 10s."})
        }
        "/server/idle_timeout" => {
            json!({"description": "A kept-alive HTTP/1 connection, or an h2 connection with no open stream, is closed after this long idle (h2: GOAWAY). Default 60s."})
        }
        "/server/send_timeout" => {
            json!({"description": "A connection whose client takes none of an answer for this long is closed. Default 30s."})
        }
        "/server/max_connections" => {
            json!({"minimum": 1, "description": "Open client connections; past it new ones are closed at once. Default: half the descriptor limit."})
        }
        "/server/max_header_size" => {
            json!({"description": "Bytes of a request head (path, query, header names and values), HTTP/1.1 and h2 alike: 414 or 431 past it. Default 32KiB; 1KiB to 1MiB."})
        }
        "/server/buffer_per_connection" => {
            json!({"description": "Of buffer_capacity, what one h2 connection's requests may hold (answers being read and answers its client has not taken); past it its new requests get 503. Default 16MiB."})
        }
        "/server/buffer_capacity" => {
            json!({"description": "Bytes of upstream answers held in memory at once, across all requests; past it new upstream calls fail at once (OVERLOADED). Default 256MiB."})
        }
        "/telemetry" => json!({"description": "Logs and traces."}),
        "/telemetry/log_format" => {
            json!({"enum": ["json", "pretty"], "description": "Default json."})
        }
        "/telemetry/access_log" => json!({"description": "One line per request. Default true."}),
        "/telemetry/otlp_endpoint" => {
            json!({"description": "Collector base URL; spans go to {this}/v1/traces (OTLP/HTTP)."})
        }
        "/telemetry/sample_ratio" => {
            json!({"minimum": 0, "maximum": 1, "description": "Parent-based sampling ratio. Default 1.0."})
        }
        "/upstreams" => json!({"description": "Upstream services by name."}),
        "/upstreams/*/urls" => {
            json!({"minItems": 1, "description": "One or more http(s) base URLs, round-robin."})
        }
        "/upstreams/*/timeout" => {
            json!({"description": "Per attempt; the route deadline still applies."})
        }
        "/upstreams/*/max_concurrency" => {
            json!({"minimum": 1, "description": "Calls in flight; past it a call fails at once (OVERLOADED)."})
        }
        "/upstreams/*/circuit_breaker" => {
            json!({"description": "Opens after consecutive faults; one probe after open_for."})
        }
        "/upstreams/*/retry" => {
            json!({"description": "Total attempts for idempotent calls (or POST with idempotency-key)."})
        }
        "/upstreams/*/rate_limit" => {
            json!({"description": "Protects the upstream across all routes (OVERLOADED past it)."})
        }
        "/upstreams/*/ca_file" => json!({"description": "Extra CA (PEM) for https urls."}),
        "/upstreams/*/max_response_body" => {
            json!({"description": "Larger JSON answers fail the backend. Default 16MiB."})
        }
        "/routes" => json!({"description": "Public routes."}),
        "/routes/[]/name" => {
            json!({"description": "Default \"METHOD path\"; labels metrics and logs."})
        }
        "/routes/[]/method" | "/routes/[]/backends/[]/method" => {
            json!({"pattern": "^[A-Za-z]+$", "description": "HTTP method. Default GET (backends: the route's)."})
        }
        "/routes/[]/path" => json!({"pattern": "^/", "description": "Path with {param} segments."}),
        "/routes/[]/timeout" => json!({"description": "Deadline for the whole request."}),
        "/routes/[]/forward_headers" => {
            json!({"description": "Client headers that reach upstreams; [\"*\"] for all."})
        }
        "/routes/[]/forward_query" => {
            json!({"description": "Client query params that reach upstreams; [\"*\"] for all."})
        }
        "/routes/[]/cache" => {
            json!({"description": "Keep complete 200 answers (merged GET routes)."})
        }
        "/routes/[]/rate_limit" => json!({"description": "Per-key limit: 429 past it."}),
        "/routes/[]/rate_limit/key" => {
            json!({"pattern": "^(client_ip|global|header:.+)$", "description": "client_ip (default), global, or header:NAME."})
        }
        "/routes/[]/rate_limit/max_keys" => {
            json!({"minimum": 1, "description": "Keys remembered at most; the least recently used are forgotten first. Default 100000."})
        }
        "/routes/[]/passthrough" => {
            json!({"description": "Stream one backend's answer unchanged."})
        }
        "/routes/[]/backends" => {
            json!({"minItems": 1, "description": "Backends, called concurrently (or after the ones they read from)."})
        }
        "/routes/[]/backends/[]/name" => {
            json!({"description": "Unique in the route; default group, else upstream."})
        }
        "/routes/[]/backends/[]/path" => {
            json!({"pattern": "^/", "description": "Path and query; {param} and {backend.field} are filled in."})
        }
        "/routes/[]/backends/[]/group" => json!({"description": "Nest the answer under this key."}),
        "/routes/[]/backends/[]/target" => {
            json!({"description": "Keep only this field (dot path)."})
        }
        "/routes/[]/backends/[]/allow" => {
            json!({"description": "Keep only these fields (dot paths)."})
        }
        "/routes/[]/backends/[]/deny" => json!({"description": "Drop these fields (dot paths)."}),
        "/routes/[]/backends/[]/rename" => {
            json!({"description": "Rename fields: { from = \"to\" }."})
        }
        "/routes/[]/backends/[]/optional" => {
            json!({"description": "Its failure leaves it out; the answer is marked partial."})
        }
        "/routes/[]/backends/[]/default" => {
            json!({"description": "Value used when it fails (implies optional)."})
        }
        "/routes/[]/backends/[]/cache_ttl" => {
            json!({"description": "Keep the upstream's 2xx answers (GET backends)."})
        }
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_and_key_the_loader_reads_is_described() {
        let s = schema();
        assert_eq!(s["additionalProperties"], false);
        let server = &s["properties"]["server"]["properties"];
        assert!(server["listen"].is_object() && server["workers"].is_object());
        let upstream = &s["properties"]["upstreams"]["additionalProperties"];
        assert_eq!(upstream["required"], json!(["urls"]));
        assert!(upstream["properties"]["circuit_breaker"]["properties"]["open_for"].is_object());
        let route = &s["properties"]["routes"]["items"];
        assert!(
            route["required"]
                .as_array()
                .unwrap()
                .contains(&json!("path"))
        );
        let backend = &route["properties"]["backends"]["items"];
        for key in [
            "name",
            "upstream",
            "method",
            "path",
            "group",
            "target",
            "allow",
            "deny",
            "rename",
            "optional",
            "default",
            "cache_ttl",
            "passthrough",
        ] {
            assert!(backend["properties"][key].is_object(), "backend key {key}");
        }
        assert_eq!(backend["properties"]["rename"]["type"], "object");
    }
}
