//! `manifold schema`: the JSON Schema of `routes.toml`, for editor completion and
//! validation (taplo / Even Better TOML: put `#:schema ./routes.schema.json` first).
//!
//! It is made by running the real loader over a probe file that has every section and
//! recording which keys its getters ask for (`reader::record`): a key the loader reads
//! is in the schema, and nothing else is. Each key's description and bounds come from
//! the loader too (the `Key` its reader is called with), so the schema says what
//! `check` enforces; a few structural constraints (enums, patterns) are added here.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::reader::{KeyDefault, Kind, record};

/// Every section, so every getter runs once. Values only need to reach the getters.
const PROBE: &str = r#"
[server]
tls = { cert = "c.pem", key = "k.pem" }
compression = { algorithms = ["gzip"], min_size = "1KiB" }
hsts = "max-age=1"
[telemetry]
[admin]
[cors]
allow_origins = ["https://a.test"]
[shared]
redis = "redis://127.0.0.1:6379/0"
[auth.jwt.p]
secret = "probe-secret-of-thirty-two-bytes-or-more"
algorithms = ["HS256"]
[upstreams.u]
urls = ["http://127.0.0.1:1"]
circuit_breaker = { consecutive_failures = 1, open_for = "1s" }
retry = { attempts = 1, budget = "20%" }
balance = "round_robin"
protocol = "http1"
outlier = { consecutive_failures = 5 }
health_check = { path = "/healthz" }
hedge = { after = "50ms" }
grpc = { protos = ["p.proto"], import_paths = ["p"] }
rate_limit = { per_second = 1 }
[[routes]]
path = "/p"
cache = { ttl = "1s" }
compression = { algorithms = ["gzip"] }
cache_control = "private, max-age=5"
cors = { allow_origins = ["https://a.test"] }
validate = { body = { type = "object" }, query = { type = "object" }, params = { type = "object" } }
idempotency = { ttl = "1h", required = true }
auth = { jwt = "p" }
rate_limit = { per_second = 1 }
  [[routes.backends]]
  upstream = "u"
  path = "/"
  rename = { a = "b" }
  schema = { type = "object" }
  validate_response = true
  pass_errors = true
[[routes]]
path = "/w"
passthrough = true
websocket = { allow_origins = ["https://a.test"] }
idle_timeout = "5m"
  [[routes.backends]]
  upstream = "u"
  path = "/"
"#;

/// What the loader asked of one key, merged over every read of it.
struct Seen {
    kind: Kind,
    required: bool,
    about: &'static str,
    min: Option<f64>,
    max: Option<f64>,
    default: KeyDefault,
    choices: &'static [&'static str],
    non_empty: bool,
}

type Tables = BTreeMap<String, BTreeMap<&'static str, Seen>>;

fn fields() -> Tables {
    let fields = record(|| {
        let _ = super::parse("probe.toml", PROBE);
    });
    // Per table path: key -> what was asked. A typed read wins over a presence check.
    let mut tables: Tables = BTreeMap::new();
    for f in fields {
        let entry = tables
            .entry(f.path)
            .or_default()
            .entry(f.key)
            .or_insert(Seen {
                kind: f.kind,
                required: f.required,
                about: f.about,
                min: f.min,
                max: f.max,
                default: f.default,
                choices: f.choices,
                non_empty: f.non_empty,
            });
        if entry.kind == Kind::Any {
            entry.kind = f.kind;
        }
        entry.required |= f.required;
        entry.non_empty |= f.non_empty;
        if entry.default == KeyDefault::None {
            entry.default = f.default;
        }
        if entry.choices.is_empty() {
            entry.choices = f.choices;
        }
        entry.min = entry.min.or(f.min);
        entry.max = entry.max.or(f.max);
    }
    tables
}

pub fn schema() -> Value {
    let tables = fields();
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

fn object(tables: &Tables, path: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    if let Some(keys) = tables.get(path) {
        for (key, seen) in keys {
            let child = format!("{path}/{key}");
            let mut s = match seen.kind {
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
            bounds(&mut s, seen);
            if let Value::Object(m) = &mut s {
                let about = match seen.default {
                    KeyDefault::Computed(said) => format!("{} Default: {said}.", seen.about),
                    _ => seen.about.to_string(),
                };
                m.insert("description".into(), json!(about));
                if let Some(d) = seen.default.json() {
                    m.insert("default".into(), d);
                }
                if !seen.choices.is_empty() {
                    m.insert("enum".into(), json!(seen.choices));
                }
                if seen.non_empty {
                    m.insert("minItems".into(), json!(1));
                }
                if let Some(Value::Object(extra)) = refine(&child) {
                    m.extend(extra);
                }
            }
            properties.insert((*key).to_string(), s);
            if seen.required {
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

/// The key's bounds as the loader holds it to them: on the integer of a count, on
/// the number of bytes of a size (its string form is checked by the loader).
fn bounds(s: &mut Value, seen: &Seen) {
    let target = match seen.kind {
        Kind::Count | Kind::Number => Some(&mut *s),
        Kind::Size => s.get_mut("oneOf").and_then(|o| o.get_mut(0)),
        _ => None,
    };
    let Some(Value::Object(m)) = target else {
        return;
    };
    let number = |n: f64| {
        if seen.kind == Kind::Number {
            json!(n)
        } else {
            json!(n as u64)
        }
    };
    if let Some(min) = seen.min {
        m.insert("minimum".into(), number(min));
    }
    if let Some(max) = seen.max {
        m.insert("maximum".into(), number(max));
    }
}

/// Structural constraints the types alone do not say, by schema path.
fn refine(path: &str) -> Option<Value> {
    let v = match path {
        "/routes/[]/method" | "/routes/[]/backends/[]/method" => {
            json!({"pattern": "^[A-Za-z]+$"})
        }
        "/routes/[]/path" | "/routes/[]/backends/[]/path" => json!({"pattern": "^/"}),
        "/routes/[]/rate_limit/key" => {
            json!({"pattern": "^(client_ip|global|header:.+|claim:.+)$"})
        }
        // A table of its own, or `false` for no CORS on the route.
        "/routes/[]/cors" => json!({"type": ["object", "boolean"]}),
        // A table of its own, or `true` / `false`.
        "/server/compression" | "/routes/[]/compression" => {
            json!({"type": ["object", "boolean"]})
        }
        "/server/compression/algorithms" | "/routes/[]/compression/algorithms" => {
            json!({"items": {"enum": ["br", "zstd", "gzip"]}, "uniqueItems": true})
        }
        // A strict-transport-security value, or `false` for none.
        "/server/hsts" => json!({"type": ["string", "boolean"]}),
        // `true`, or a table naming the origins that may open a tunnel.
        "/routes/[]/websocket" => json!({"type": ["object", "boolean"]}),
        // A schema file's name, or the schema itself as a table.
        "/routes/[]/validate/body"
        | "/routes/[]/validate/query"
        | "/routes/[]/validate/params"
        | "/routes/[]/backends/[]/schema" => json!({"type": ["string", "object"]}),
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

    /// Every property, with its schema path.
    fn properties<'v>(v: &'v Value, path: &str, out: &mut Vec<(String, &'v Value)>) {
        if let Some(Value::Object(props)) = v.get("properties") {
            for (k, p) in props {
                let child = format!("{path}/{k}");
                out.push((child.clone(), p));
                properties(p, &child, out);
            }
        }
        for nested in ["additionalProperties", "items"] {
            if let Some(n) = v.get(nested).filter(|n| n.is_object()) {
                let child = format!("{path}/{}", if nested == "items" { "[]" } else { "*" });
                properties(n, &child, out);
            }
        }
    }

    #[test]
    fn every_key_has_a_description() {
        let s = schema();
        let mut all = Vec::new();
        properties(&s, "", &mut all);
        assert!(all.len() > 60, "{} keys", all.len());
        for (path, p) in all {
            let about = p["description"].as_str().unwrap_or_default();
            assert!(about.len() > 10, "{path} has no description");
        }
    }

    /// The probe with `key = value` set in the table at `path`.
    fn probe_with(path: &str, key: &str, value: &str) -> String {
        let line = format!("{key} = {value}");
        let (old, new) = match path {
            "/server" => ("[server]".to_string(), format!("[server]\n{line}")),
            "/telemetry" => ("[telemetry]".to_string(), format!("[telemetry]\n{line}")),
            "/admin" => ("[admin]".to_string(), format!("[admin]\n{line}")),
            "/upstreams/*" => (
                "[upstreams.u]".to_string(),
                format!("[upstreams.u]\n{line}"),
            ),
            "/upstreams/*/circuit_breaker" => (
                "consecutive_failures = 1".to_string(),
                format!("consecutive_failures = 1, {line}").replace(
                    "consecutive_failures = 1, consecutive_failures",
                    "consecutive_failures",
                ),
            ),
            "/upstreams/*/retry" => (
                "retry = { attempts = 1, budget = \"20%\" }".to_string(),
                format!("retry = {{ {line} }}"),
            ),
            "/upstreams/*/outlier" => (
                "outlier = { consecutive_failures = 5 }".to_string(),
                format!("outlier = {{ {line} }}"),
            ),
            "/upstreams/*/health_check" => (
                "health_check = { path = \"/healthz\" }".to_string(),
                format!("health_check = {{ path = \"/healthz\", {line} }}"),
            ),
            "/upstreams/*/rate_limit" => (
                "rate_limit = { per_second = 1 }\n[[routes]]".to_string(),
                format!("rate_limit = {{ {line} }}\n[[routes]]"),
            ),
            "/routes/[]/rate_limit" => (
                "rate_limit = { per_second = 1 }\n  [[routes.backends]]".to_string(),
                format!("rate_limit = {{ per_second = 1, {line} }}\n  [[routes.backends]]")
                    .replace("per_second = 1, per_second", "per_second"),
            ),
            other => panic!("no probe for bounded keys under {other}: add one here"),
        };
        assert!(PROBE.contains(&old), "probe has {old}");
        // The probe's certificate and .proto files do not exist: without them the
        // probe loads.
        PROBE
            .replacen(&old, &new, 1)
            .replacen("tls = { cert = \"c.pem\", key = \"k.pem\" }\n", "", 1)
            .replacen(
                "grpc = { protos = [\"p.proto\"], import_paths = [\"p\"] }\n",
                "",
                1,
            )
    }

    #[test]
    fn the_schema_bounds_are_what_check_enforces() {
        let mut checked = 0;
        for (path, keys) in fields() {
            for (key, seen) in keys {
                if seen.min.is_none() && seen.max.is_none() {
                    continue;
                }
                let show = |n: f64| match seen.kind {
                    Kind::Number => format!("{n:?}"),
                    _ => format!("{}", n as u64),
                };
                let loads =
                    |v: f64| super::super::parse("t.toml", &probe_with(&path, key, &show(v)));
                let step = if seen.kind == Kind::Number { 1e-9 } else { 1.0 };
                if let Some(min) = seen.min {
                    assert!(
                        loads(min).is_ok(),
                        "{path}/{key} = {min} (its minimum) loads"
                    );
                    let below = loads(min - step).expect_err("below the minimum is refused");
                    assert!(
                        below.render().contains(key),
                        "{path}/{key}: {}",
                        below.render()
                    );
                }
                if let Some(max) = seen.max {
                    assert!(
                        loads(max).is_ok(),
                        "{path}/{key} = {max} (its maximum) loads"
                    );
                    assert!(loads(max + step).is_err(), "{path}/{key} above the maximum");
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "{checked} bounded keys");
        let s = schema();
        assert_eq!(
            s["properties"]["server"]["properties"]["workers"]["minimum"],
            1
        );
        assert_eq!(
            s["properties"]["server"]["properties"]["buffer_capacity"]["oneOf"][0]["minimum"],
            65536
        );
    }
}
