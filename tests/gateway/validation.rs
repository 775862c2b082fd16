//! Request validation (docs/configuration.md#request-validation): bodies, queries and
//! path parameters against JSON Schemas before any upstream is called; every failure
//! located by a JSON pointer; 415 for bodies that are not JSON; the order rate limit →
//! token → validation → cache; passthrough bodies read whole and sent on unchanged;
//! schema files with sibling `$ref`s, refused network `$ref`s, reload.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Upstream, series, upstream};

/// An order: 10–20 properties with a nested array, as a checkout form posts.
fn order_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["customer", "items", "currency"],
        "additionalProperties": false,
        "properties": {
            "customer": {"type": "string", "minLength": 1},
            "currency": {"enum": ["EUR", "USD"]},
            "note": {"type": "string", "maxLength": 200},
            "gift": {"type": "boolean"},
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "qty"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
                        "qty": {"type": "integer", "minimum": 1}
                    }
                }
            }
        }
    })
}

fn valid_order() -> Value {
    json!({"customer": "c-1", "currency": "EUR", "items": [{"sku": "ABC-1", "qty": 2}]})
}

/// `POST /orders/{id}` with all three schemas inline, merged (backend `orders`), and
/// the same as a passthrough route at `/raw/orders/{id}`.
fn config(url: &str, extra: &str) -> String {
    let body = toml_inline(&order_schema());
    format!(
        "{}
[[routes]]
path = \"/orders/{{id}}\"
method = \"POST\"
{extra}
validate = {{ body = {body}, query = {{ type = \"object\", properties = {{ limit = {{ type = \"integer\", maximum = 100 }}, dry = {{ type = \"boolean\" }}, tag = {{ type = \"array\", items = {{ type = \"string\" }} }} }} }}, params = {{ type = \"object\", properties = {{ id = {{ type = \"integer\", minimum = 1 }} }} }} }}
  [[routes.backends]]
  name = \"orders\"
  upstream = \"u\"
  path = \"/orders/{{id}}\"

[[routes]]
path = \"/raw/orders/{{id}}\"
method = \"POST\"
passthrough = true
validate = {{ body = {body} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/orders/{{id}}\"
",
        upstream("u", url, "")
    )
}

/// A JSON value written as a TOML inline value.
fn toml_inline(v: &Value) -> String {
    match v {
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{:?} = {}", k, toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

async fn post(
    gw: &Gateway,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> crate::support::Answer {
    let mut req = gw
        .client
        .post(format!("{}{path}", gw.base))
        .body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    gw.send(req).await
}

#[tokio::test]
async fn an_invalid_request_is_refused_with_every_failure_located_and_no_upstream_called() {
    let up = Upstream::start(|s| async move {
        crate::support::json(
            201,
            json!({"id": s.uri.path(), "got": String::from_utf8_lossy(&s.body)}),
        )
    })
    .await;
    let gw = Gateway::start(&config(&up.url(), "")).await;

    // Valid: the body reaches the backend byte for byte (spacing kept).
    let body = "{ \"customer\": \"c-1\", \"currency\": \"EUR\",\n  \"items\": [{\"sku\": \"ABC-1\", \"qty\": 2}] }";
    let ok = post(
        &gw,
        "/orders/7?limit=10&dry=true",
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    assert_eq!(up.last().body, body.as_bytes());
    assert_eq!(up.hits(), 1);

    // Invalid in all three parts: one 400 lists them in the order params, query, body.
    let bad =
        json!({"customer": "", "currency": "GBP", "items": [{"sku": "abc", "qty": 0}], "extra": 1});
    let a = post(
        &gw,
        "/orders/0?limit=1000&dry=maybe",
        Some("application/json"),
        &bad.to_string(),
    )
    .await;
    let e = a.error(400, "INVALID_REQUEST");
    let details = e["details"].as_array().unwrap();
    let places: Vec<(String, String)> = details
        .iter()
        .map(|d| {
            (
                d["in"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("params", "/id"),
        ("query", "/limit"),
        ("query", "/dry"),
        ("body", "/customer"),
        ("body", "/currency"),
        ("body", "/items/0/sku"),
        ("body", "/items/0/qty"),
        ("body", ""),
    ] {
        assert!(
            places.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {places:?}"
        );
    }
    let order: Vec<&str> = details.iter().map(|d| d["in"].as_str().unwrap()).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|p| ["params", "query", "body"].iter().position(|x| x == p));
    assert_eq!(order, sorted, "params, then query, then body");
    assert_eq!(
        e["message"],
        format!(
            "invalid params at /id: {}",
            details[0]["message"].as_str().unwrap()
        )
    );
    for d in details {
        assert!(!d["message"].as_str().unwrap().is_empty());
    }
    // The client's values are not echoed back.
    assert!(
        !String::from_utf8_lossy(&a.body).contains("maybe"),
        "{:?}",
        a.body
    );
    assert_eq!(up.hits(), 1, "no upstream call for an invalid request");

    // At most 20 details.
    let many: Vec<Value> = (0..40).map(|_| json!({"sku": 1, "qty": "x"})).collect();
    let a = post(
        &gw,
        "/orders/1",
        Some("application/json"),
        &json!({"customer": "c", "currency": "EUR", "items": many}).to_string(),
    )
    .await;
    assert_eq!(
        a.error(400, "INVALID_REQUEST")["details"]
            .as_array()
            .unwrap()
            .len(),
        20
    );

    // Counted by part, and the access line says so.
    let metrics = gw.metrics().await;
    let count = |part: &str| {
        series(
            &metrics,
            &format!(
                "manifold_validation_failures_total{{route=\"POST /orders/{{id}}\",in=\"{part}\"}}"
            ),
        )
    };
    assert_eq!(
        (count("params"), count("query"), count("body")),
        (1.0, 1.0, 2.0)
    );
    let line = gw.access_line(a.header("x-request-id").unwrap()).await;
    assert_eq!(line["validation"], "failed");
    assert_eq!(line["status"], 400);
    let line = gw.access_line(ok.header("x-request-id").unwrap()).await;
    assert!(line.get("validation").is_none(), "{line}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn query_values_and_parameters_are_coerced_to_the_schema_types() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/items/{{id}}\"
validate = {{ params = {{ type = \"object\", properties = {{ id = {{ type = \"integer\" }} }} }}, query = {{ type = \"object\", additionalProperties = false, properties = {{ limit = {{ type = \"integer\", maximum = 100 }}, ratio = {{ type = \"number\" }}, on = {{ type = \"boolean\" }}, ids = {{ type = \"array\", items = {{ type = \"integer\" }}, maxItems = 3 }} }} }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/items/{{id}}\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    for ok in [
        "/items/5",
        "/items/5?limit=10",
        "/items/-3?ratio=0.5&on=false",
        "/items/5?ids=1",
        "/items/5?ids=1&ids=2&ids=3",
        "/items/5?ratio=1e3",
    ] {
        assert_eq!(gw.get(ok).await.status, 200, "{ok}");
    }
    for (bad, part, path) in [
        ("/items/x", "params", "/id"),
        ("/items/5?limit=abc", "query", "/limit"),
        ("/items/5?limit=1.5", "query", "/limit"),
        ("/items/5?limit=+5", "query", "/limit"),
        ("/items/5?limit=101", "query", "/limit"),
        ("/items/5?on=yes", "query", "/on"),
        ("/items/5?ids=1&ids=x", "query", "/ids/1"),
        ("/items/5?ids=1&ids=2&ids=3&ids=4", "query", "/ids"),
        ("/items/5?limit=1&limit=2", "query", "/limit"),
        ("/items/5?unknown=1", "query", ""),
    ] {
        let e = gw.get(bad).await.error(400, "INVALID_REQUEST");
        assert_eq!(e["details"][0]["in"], part, "{bad}: {e}");
        assert_eq!(e["details"][0]["path"], path, "{bad}: {e}");
    }
    assert_eq!(up.hits(), 6);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415_and_no_body_is_null() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/strict\"
method = \"POST\"
validate = {{ body = {{ type = \"object\" }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/x\"

[[routes]]
path = \"/maybe\"
method = \"PUT\"
validate = {{ body = {{ type = [\"object\", \"null\"] }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/x\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    let cases: [(&str, Option<&str>, &str, u16); 9] = [
        ("/strict", Some("application/json"), "{}", 200),
        (
            "/strict",
            Some("application/json; charset=utf-8"),
            "{}",
            200,
        ),
        ("/strict", Some("application/merge-patch+json"), "{}", 200),
        ("/strict", Some("text/plain"), "{}", 415),
        ("/strict", None, "{}", 415),
        ("/strict", Some("application/json"), "{\"a\": ", 415),
        ("/strict", Some("application/json"), "[1]", 400),
        // No body at all is null: the schema decides.
        ("/strict", Some("application/json"), "", 400),
        ("/strict", None, "", 400),
    ];
    for (path, ct, body, want) in cases {
        let a = post(&gw, path, ct, body).await;
        match want {
            415 => {
                let e = a.error(415, "UNSUPPORTED_MEDIA_TYPE");
                assert!(e.get("details").is_none());
            }
            400 => {
                let e = a.error(400, "INVALID_REQUEST");
                assert_eq!(e["details"][0]["in"], "body");
                assert_eq!(e["details"][0]["path"], "");
            }
            _ => assert_eq!(a.status, want, "{path} {ct:?} {body:?}"),
        }
    }
    let put = gw.send(gw.client.put(format!("{}/maybe", gw.base))).await;
    assert_eq!(put.status, 200, "no body is null, which this schema allows");
    let metrics = gw.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "manifold_validation_failures_total{route=\"POST /strict\",in=\"body\"}"
        ),
        6.0,
        "a 415 counts as a body failure"
    );
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn a_passthrough_body_is_read_whole_checked_and_sent_on_unchanged() {
    let up = Upstream::start(|s| async move {
        crate::support::json(
            202,
            json!({"len": s.headers.get("content-length").map(|v| v.to_str().unwrap().to_string()),
                   "type": s.headers.get("content-type").map(|v| v.to_str().unwrap().to_string())}),
        )
    })
    .await;
    let gw = Gateway::start(&config(&up.url(), "")).await;
    let body = format!(
        "{}  ",
        serde_json::to_string_pretty(&valid_order()).unwrap()
    );
    // Sent chunked (a stream): the upstream still gets the bytes and their length.
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let a = gw
        .send(
            gw.client
                .post(format!("{}/raw/orders/3", gw.base))
                .header("content-type", "application/vnd.shop+json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                ))),
        )
        .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(up.last().body, body.as_bytes());
    assert_eq!(a.json()["len"], body.len().to_string());
    assert_eq!(a.json()["type"], "application/vnd.shop+json");
    let a = post(
        &gw,
        "/raw/orders/3",
        Some("application/json"),
        "{\"items\": []}",
    )
    .await;
    let e = a.error(400, "INVALID_REQUEST");
    assert!(e["details"].as_array().unwrap().len() >= 2, "{e}");
    assert_eq!(up.hits(), 1);
    // Past max_request_body: 413 before any check.
    let huge = format!("{{\"note\": \"{}\"}}", "x".repeat(2 << 20));
    assert_eq!(
        post(&gw, "/raw/orders/3", Some("application/json"), &huge)
            .await
            .status,
        413
    );
}

const SECRET: &str = "a-validation-test-secret-of-32-bytes-or-more";

#[tokio::test]
async fn the_order_is_rate_limit_then_token_then_validation_then_cache() {
    let up = Upstream::json(json!({"n": 1})).await;
    let gw = Gateway::start(&format!(
        "[auth.jwt.hs]
secret = \"{SECRET}\"
algorithms = [\"HS256\"]
{}
[[routes]]
path = \"/guarded\"
auth = {{ jwt = \"hs\" }}
cors = {{ allow_origins = [\"https://app.test\"] }}
rate_limit = {{ per_second = 1, burst = 2 }}
validate = {{ query = {{ type = \"object\", required = [\"q\"] }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/x\"

[[routes]]
path = \"/cached\"
cache = {{ ttl = \"60s\" }}
forward_query = [\"q\"]
validate = {{ query = {{ type = \"object\", properties = {{ q = {{ type = \"string\", maxLength = 3 }} }} }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/x\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u1", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    // No token: 401 before validation looks at the query.
    gw.get("/guarded").await.error(401, "UNAUTHORIZED");
    let with_token = |path: &str| {
        gw.client
            .get(format!("{}{path}", gw.base))
            .header("authorization", format!("Bearer {token}"))
    };
    gw.send(with_token("/guarded"))
        .await
        .error(400, "INVALID_REQUEST");
    // The burst is spent: the rate limit answers before anything else.
    gw.send(with_token("/guarded?q=1"))
        .await
        .error(429, "RATE_LIMITED");
    assert_eq!(up.hits(), 0);
    // A CORS preflight comes before all of them: no token, no schema, no limit.
    let preflight = gw
        .send(
            gw.client
                .request(reqwest::Method::OPTIONS, format!("{}/guarded", gw.base))
                .header("origin", "https://app.test")
                .header("access-control-request-method", "GET"),
        )
        .await;
    assert_eq!(preflight.status, 204);

    // A cached answer never stands in for validation.
    assert_eq!(gw.get("/cached?q=abc").await.status, 200);
    assert_eq!(
        gw.get("/cached?q=abc").await.header("x-manifold-cache"),
        Some("hit")
    );
    gw.get("/cached?q=abcd").await.error(400, "INVALID_REQUEST");
    assert_eq!(up.hits(), 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "manifold_validation_failures_total{route=\"GET /guarded\",in=\"query\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn schema_files_with_sibling_refs_are_read_at_load_and_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    std::fs::write(
        schemas.join("common.json"),
        json!({"$defs": {"qty": {"type": "integer", "minimum": 1}}}).to_string(),
    )
    .unwrap();
    let order = json!({
        "type": "object",
        "required": ["qty"],
        "properties": {"qty": {"$ref": "common.json#/$defs/qty"}}
    });
    std::fs::write(schemas.join("order.json"), order.to_string()).unwrap();
    // Draft 7, by its `$schema`: `definitions` and a local `$ref`.
    std::fs::write(
        schemas.join("query.json"),
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"page": {"type": "integer", "minimum": 1}},
            "type": "object",
            "properties": {"page": {"$ref": "#/definitions/page"}}
        })
        .to_string(),
    )
    .unwrap();
    let up = Upstream::json(json!({"ok": true})).await;
    let text = format!(
        "{}
[[routes]]
path = \"/orders\"
method = \"POST\"
validate = {{ body = \"schemas/order.json\", query = \"schemas/query.json\" }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/orders\"
",
        upstream("u", &up.url(), "")
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{text}"),
    )
    .unwrap();
    let gw = Gateway::start_file(&path).await;
    let ok = post(
        &gw,
        "/orders?page=2",
        Some("application/json"),
        "{\"qty\": 1}",
    )
    .await;
    assert_eq!(ok.status, 200);
    // /routes names the schemas as the config does.
    let routes = gw.routes().await;
    assert_eq!(
        routes["routes"][0]["validate"],
        json!({"body": "schemas/order.json", "query": "schemas/query.json", "params": null})
    );
    let e = post(
        &gw,
        "/orders?page=0",
        Some("application/json"),
        "{\"qty\": 0}",
    )
    .await
    .error(400, "INVALID_REQUEST");
    assert_eq!(e["details"][0]["path"], "/page");
    assert_eq!(e["details"][1]["path"], "/qty");

    // The sibling file changes; a reload reads it again.
    std::fs::write(
        schemas.join("common.json"),
        json!({"$defs": {"qty": {"type": "integer", "minimum": 5}}}).to_string(),
    )
    .unwrap();
    gw.server.reload_file(&path).await.expect("reload");
    let e = post(&gw, "/orders", Some("application/json"), "{\"qty\": 1}")
        .await
        .error(400, "INVALID_REQUEST");
    assert_eq!(e["details"][0]["path"], "/qty");
    assert_eq!(
        post(&gw, "/orders", Some("application/json"), "{\"qty\": 5}")
            .await
            .status,
        200
    );

    // A broken schema file fails the reload, and the old schemas keep serving.
    std::fs::write(
        schemas.join("order.json"),
        "{\n  \"type\": \"object\",\n  \"properties\": {\n",
    )
    .unwrap();
    let rendered = manifold::config::Config::load(&path)
        .expect_err("a broken schema")
        .render();
    assert!(rendered.contains("schemas/order.json:4:1"), "{rendered}");
    gw.server
        .reload_file(&path)
        .await
        .expect_err("a broken schema");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        post(&gw, "/orders", Some("application/json"), "{\"qty\": 5}")
            .await
            .status,
        200
    );
    assert_eq!(up.hits(), 3);
}

/// Upstream answers by path: `/created` 201, `/form` a 400 with field errors,
/// `/big-error` a 400 past 64 KiB, `/text-error` a 422 in text, `/user` a user whose
/// `id` is a string where the schema says integer.
async fn answers() -> Upstream {
    Upstream::start(|s| async move {
        match s.uri.path() {
            "/created" => crate::support::json(201, json!({"id": 42})),
            "/accepted" => crate::support::json(202, json!({"queued": true})),
            "/form" => crate::support::json(
                400,
                json!({"error": "bad json", "detail": {"fields": {"email": "is taken"}}}),
            ),
            "/big-error" => crate::support::json(400, json!({"pad": "x".repeat(70 << 10)})),
            "/text-error" => crate::support::raw(422, "text/plain", "no"),
            "/user" => crate::support::json(200, json!({"id": "7", "name": "Ann"})),
            "/user-ok" => crate::support::json(200, json!({"id": 7, "name": "Ann"})),
            _ => crate::support::json(200, json!({"other": true})),
        }
    })
    .await
}

fn one_route(path: &str, method: &str, backends: &[(&str, &str, &str)]) -> String {
    let mut out = format!("[[routes]]\npath = \"{path}\"\nmethod = \"{method}\"\n");
    for (name, upstream_path, extra) in backends {
        out.push_str(&format!(
            "  [[routes.backends]]\n  name = \"{name}\"\n  upstream = \"u\"\n  path = \"{upstream_path}\"\n  {extra}\n"
        ));
    }
    out
}

#[tokio::test]
async fn a_one_backend_route_answers_its_2xx_and_pass_errors_passes_4xx_json_unchanged() {
    let up = answers().await;
    let routes = [
        one_route("/orders", "POST", &[("orders", "/created", "")]),
        one_route("/jobs", "POST", &[("jobs", "/accepted", "group = \"job\"")]),
        one_route(
            "/two",
            "POST",
            &[
                ("a", "/created", "group = \"a\""),
                ("b", "/other", "group = \"b\""),
            ],
        ),
        one_route(
            "/signup",
            "POST",
            &[("signup", "/form", "pass_errors = true")],
        ),
        one_route("/signup-plain", "POST", &[("signup", "/form", "")]),
        one_route(
            "/big",
            "POST",
            &[("big", "/big-error", "pass_errors = true")],
        ),
        one_route(
            "/text",
            "POST",
            &[("text", "/text-error", "pass_errors = true")],
        ),
        one_route(
            "/optional",
            "GET",
            &[
                ("main", "/other", "group = \"main\""),
                (
                    "extra",
                    "/form",
                    "group = \"extra\"\n  optional = true\n  pass_errors = true",
                ),
            ],
        ),
    ];
    let gw = Gateway::start(&format!(
        "{}\n{}",
        upstream("u", &up.url(), ""),
        routes.join("\n")
    ))
    .await;
    let post = |path: &str| {
        gw.client
            .post(format!("{}{path}", gw.base))
            .json(&json!({}))
    };

    let a = gw.send(post("/orders")).await;
    assert_eq!((a.status, a.json()), (201, json!({"id": 42})));
    let a = gw.send(post("/jobs")).await;
    assert_eq!(
        (a.status, a.json()),
        (202, json!({"job": {"queued": true}}))
    );
    // Two backends: the merged answer is the route's own, 200.
    assert_eq!(gw.send(post("/two")).await.status, 200);

    // The form's field errors reach it, status and body as the upstream sent them.
    let a = gw.send(post("/signup")).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.json(),
        json!({"error": "bad json", "detail": {"fields": {"email": "is taken"}}})
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    let id = a.header("x-request-id").expect("x-request-id").to_string();
    let line = gw.access_line(&id).await;
    assert_eq!(
        (line["status"].clone(), line["error"].clone()),
        (json!(400), json!("UPSTREAM_REJECTED"))
    );
    // Without pass_errors, past 64 KiB, or not JSON: the contract's own error.
    for path in ["/signup-plain", "/big", "/text"] {
        let a = gw.send(post(path)).await;
        let want = if path == "/text" { 422 } else { 400 };
        assert_eq!(
            a.error(want, "UPSTREAM_REJECTED")["backend"],
            path.trim_start_matches('/').split('-').next().unwrap(),
            "{path}"
        );
    }
    // An optional backend's 4xx is left out as any failure: nothing passed.
    let a = gw.get("/optional").await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"main": {"other": true}}))
    );
    assert_eq!(a.header("x-manifold-completed"), Some("false"));
}

#[tokio::test]
async fn validate_response_fails_an_answer_that_does_not_match_and_names_the_pointer() {
    let up = answers().await;
    let user = "schema = { type = \"object\", required = [\"id\"], properties = { id = { type = \"integer\" }, name = { type = \"string\" } } }\n  validate_response = true";
    let routes = [
        one_route(
            "/bad",
            "GET",
            &[("user", "/user", &format!("group = \"user\"\n  {user}"))],
        ),
        one_route(
            "/good",
            "GET",
            &[("user", "/user-ok", &format!("group = \"user\"\n  {user}"))],
        ),
        one_route(
            "/optional",
            "GET",
            &[
                ("main", "/other", "group = \"main\""),
                (
                    "user",
                    "/user",
                    &format!("group = \"user\"\n  optional = true\n  {user}"),
                ),
            ],
        ),
        // A schema without validate_response only types the answer.
        one_route(
            "/unchecked",
            "GET",
            &[(
                "user",
                "/user",
                "group = \"user\"\n  schema = { type = \"object\", properties = { id = { type = \"integer\" } } }",
            )],
        ),
    ];
    let gw = Gateway::start(&format!(
        "{}\n{}",
        upstream("u", &up.url(), ""),
        routes.join("\n")
    ))
    .await;
    let a = gw.get("/bad").await;
    let e = a.error(502, "UPSTREAM_BAD_RESPONSE");
    assert_eq!(e["backend"], "user");
    let id = a.header("x-request-id").unwrap();
    let events = crate::support::events_for(id, 1).await;
    let failed = events
        .iter()
        .find(|e| e["message"] == "backend failed")
        .expect("a backend failed line");
    let cause = failed["cause"].as_str().unwrap();
    assert!(cause.contains("/id"), "{cause}");
    assert!(!cause.contains("\"7\""), "the value is not logged: {cause}");
    assert_eq!(
        gw.get("/good").await.json(),
        json!({"user": {"id": 7, "name": "Ann"}})
    );
    let a = gw.get("/optional").await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"main": {"other": true}}))
    );
    assert_eq!(a.header("x-manifold-completed"), Some("false"));
    assert_eq!(gw.get("/unchecked").await.status, 200);
}

/// A schema's `pattern` with lookaround backtracks; a client's string cannot make it
/// run long: past its step limit the value fails the pattern (unbounded, this one
/// would take 2^40 steps).
#[tokio::test]
async fn a_backtracking_pattern_is_bounded() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "{}
[[routes]]
path = \"/search\"
validate = {{ query = {{ type = \"object\", properties = {{ q = {{ type = \"string\", pattern = \"^(a+)+(?=b)\" }}, mail = {{ type = \"string\", format = \"email\" }} }} }} }}
  [[routes.backends]]
  upstream = \"u\"
  path = \"/x\"
",
        upstream("u", &up.url(), "")
    ))
    .await;
    assert_eq!(gw.get("/search?q=aab").await.status, 200);
    let evil = format!("/search?q={}!", "a".repeat(40));
    let e = gw.get(&evil).await.error(400, "INVALID_REQUEST");
    assert_eq!(e["details"][0]["path"], "/q", "{e}");
    // `format` is asserted, not only annotated (draft 2020-12's default).
    let e = gw
        .get("/search?mail=nope")
        .await
        .error(400, "INVALID_REQUEST");
    assert_eq!(e["details"][0]["path"], "/mail", "{e}");
    assert_eq!(gw.get("/search?mail=a%40example.com").await.status, 200);
    assert_eq!(up.hits(), 2);
}
