//! `manifold check` and `manifold routes`: every error at once, with file:line:col.

use std::path::Path;
use std::process::Command;

fn manifold(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every config shipped in the repository validates.
#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("routes.toml")];
    for dir in [
        "tests/configs/good",
        "deploy",
        "deploy/kubernetes",
        "benches",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml")),
        );
    }
    assert!(
        files.len() >= 2,
        "expected example configs, found {files:?}"
    );
    for f in files {
        if let Err(d) = manifold::config::Config::load(&f) {
            panic!("{} does not validate:\n{}", f.display(), d.render());
        }
    }
}

/// Each bad config's diagnostics, locked by snapshot.
#[test]
fn bad_configs_report_every_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        // Named as `check` run from the repository root names it: schema files beside
        // it are found from there.
        let d = manifold::config::parse(&format!("tests/configs/bad/{name}"), &text)
            .expect_err(&format!("{name} should be invalid"));
        insta::assert_snapshot!(name.trim_end_matches(".toml"), d.render());
    }
}

#[test]
fn check_exits_one_with_locations_and_zero_when_valid() {
    let (code, _out, err) = manifold(&["check", "tests/configs/bad/many_errors.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("tests/configs/bad/many_errors.toml:"), "{err}");
    // line:col of the unknown key and the unknown upstream both appear
    assert!(err.contains("unknown key `timout`"), "{err}");
    assert!(err.contains("unknown upstream `userz`"), "{err}");
    let (code, out, _err) = manifold(&["check", "routes.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"));
    let (code, _out, err) = manifold(&["check", "does/not/exist.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn routes_prints_the_compiled_table() {
    let (code, out, _err) = manifold(&["routes", "routes.toml"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("GET     /api/dashboard/{user_id}  [dashboard]  deadline 1s"),
        "{out}"
    );
    assert!(out.contains("orders"), "{out}");
    assert!(out.contains("passthrough"), "{out}");
    // What checks a request and types an answer, as the config names it.
    assert!(
        out.contains("POST    /api/orders  [place order]  deadline 2s  validate body=schemas/new-order.json  idempotency 1day"),
        "{out}"
    );
    assert!(
        out.contains("schema schemas/orders.json (checked)"),
        "{out}"
    );
    assert!(out.contains("(upstream orders)  pass_errors"), "{out}");
}

#[test]
fn missing_env_variable_is_an_error_and_a_set_one_fills_in() {
    let text = "[upstreams.u]\nurls = [\"http://${MANIFOLD_TEST_UNSET_HOST}:80\"]\n";
    let d = manifold::config::parse("env.toml", text).unwrap_err();
    assert!(
        d.render()
            .contains("environment variable `MANIFOLD_TEST_UNSET_HOST` is not set")
    );
    assert!(d.render().contains("env.toml:2:9"), "{}", d.render());
}

/// The Deployment's memory limit holds what its routes.toml allows, by the arithmetic of
/// docs/operations.md ("Sizing"): 25 MiB, 2.3 × 11 KiB a route, 20 KiB a connection,
/// twice `buffer_capacity` and 1.1 × `cache_capacity`.
#[test]
fn the_deployment_memory_limit_holds_what_its_config_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let toml = std::fs::read_to_string(root.join("routes.toml")).unwrap();
    let config = manifold::config::parse("deploy/kubernetes/routes.toml", &toml).unwrap();
    let server = &config.server;
    let connections = server
        .max_connections
        .expect("the example bounds its connections: the default follows the descriptor limit");
    const KIB: f64 = 1024.0;
    let need = 25.0 * KIB * KIB
        + 2.3 * 11.0 * KIB * config.routes.len() as f64
        + 20.0 * KIB * connections as f64
        + 2.0 * server.buffer_capacity as f64
        + 1.1 * server.cache_capacity as f64;
    let deployment = std::fs::read_to_string(root.join("deployment.yaml")).unwrap();
    let limits = &deployment[deployment.find("limits:").expect("resources.limits")..];
    let memory = limits
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .expect("a memory limit");
    let mib: f64 = memory
        .strip_suffix("Mi")
        .expect("the limit in Mi")
        .parse()
        .unwrap();
    assert!(
        need <= mib * KIB * KIB,
        "routes.toml allows {:.0} MiB, the limit is {memory}",
        need / KIB / KIB
    );
}

/// The ConfigMap is made from deploy/kubernetes/routes.toml (one copy, no drift), with
/// the fixed name the Deployment mounts, and that file is a valid config.
#[test]
fn the_kustomization_makes_the_configmap_from_the_shipped_routes_toml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let kustomization = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("configMapGenerator:"));
    assert!(kustomization.contains("- name: manifold-config"));
    assert!(kustomization.contains("- routes.toml"));
    assert!(
        kustomization.contains("disableNameSuffixHash: true"),
        "a fixed name, so an edit reloads in place"
    );
    let deployment = std::fs::read_to_string(root.join("deployment.yaml")).unwrap();
    assert!(deployment.contains("name: manifold-config"));
    assert!(
        !root.join("configmap.yaml").exists(),
        "no second copy of routes.toml"
    );
    let toml = std::fs::read_to_string(root.join("routes.toml")).unwrap();
    manifold::config::parse("deploy/kubernetes/routes.toml", &toml)
        .expect("the shipped routes.toml is valid");
    let service = std::fs::read_to_string(root.join("service.yaml")).unwrap();
    assert!(
        !service.contains("9901") && !service.contains("targetPort: admin"),
        "the admin port stays off the public Service"
    );
}

#[test]
fn openapi_describes_the_public_routes() {
    let (code, out, err) = manifold(&["openapi", "routes.toml"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let dashboard = &doc["paths"]["/api/dashboard/{user_id}"]["get"];
    assert_eq!(dashboard["operationId"], "dashboard");
    let params = dashboard["parameters"].as_array().unwrap();
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "user_id" && p["in"] == "path" && p["required"] == true)
    );
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "lang" && p["in"] == "query")
    );
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "accept-language" && p["in"] == "header")
    );
    let ok = &dashboard["responses"]["200"];
    assert!(ok["headers"]["x-manifold-completed"].is_object());
    // The merged answer's top-level keys are known from the config: generated clients
    // get typed fields, not a bare object.
    let answer = &ok["content"]["application/json"]["schema"];
    assert_eq!(answer["type"], "object");
    assert_eq!(answer["additionalProperties"], false);
    let user = &answer["properties"]["user"]["properties"];
    for field in ["id", "name", "avatar_url"] {
        assert!(user[field].is_object(), "user.{field} in {answer}");
    }
    assert!(user["avatar"].is_null(), "renamed: {answer}");
    let required = answer["required"].as_array().unwrap();
    assert!(required.contains(&serde_json::json!("user")));
    assert!(
        required.contains(&serde_json::json!("recommendations")),
        "optional, but its default stands in: {answer}"
    );
    // The API's title and version are the operator's to set.
    let (code, out, _) = manifold(&[
        "openapi",
        "routes.toml",
        "--title",
        "Shop BFF",
        "--api-version",
        "2.1.0",
    ]);
    assert_eq!(code, 0);
    let titled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(titled["info"]["title"], "Shop BFF");
    assert_eq!(titled["info"]["version"], "2.1.0");
    assert_eq!(
        dashboard["responses"]["504"]["$ref"],
        "#/components/responses/Error"
    );
    // Passthrough routes promise the upstream's answer, not a merged object.
    assert!(doc["paths"]["/api/users/{user_id}"]["get"]["responses"]["default"].is_object());
    assert!(
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["request_id"]
            .is_object()
    );
    // Admin endpoints are not public routes.
    assert!(doc["paths"].get("/health").is_none());
}

/// `validate` and backend `schema`s in the document (docs/configuration.md#typed-answers):
/// parameters, request bodies and merged answers typed as the gateway enforces them,
/// shaped as the answers are. (`.ci/run` also runs openapi-typescript and `tsc --strict`
/// on it: tests/openapi/typed.ts.)
#[test]
fn openapi_publishes_the_validation_schemas_and_typed_answers() {
    let (code, out, err) = manifold(&["openapi", "routes.toml"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !out.contains("$schema") && !out.contains("\"$ref\": \"common.json"),
        "resolved, dialect-free"
    );
    let dashboard = &doc["paths"]["/api/dashboard/{user_id}"]["get"];
    let param = |name: &str| {
        dashboard["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        param("user_id")["schema"],
        serde_json::json!({"type": "integer", "minimum": 1})
    );
    assert_eq!(
        param("lang")["schema"]["enum"],
        serde_json::json!(["en", "de", "fr"])
    );
    let answer = &dashboard["responses"]["200"]["content"]["application/json"]["schema"];
    let user = &answer["properties"]["user"];
    // allow + rename applied to the schema: avatar is avatar_url, email is gone.
    assert_eq!(user["properties"]["avatar_url"]["format"], "uri");
    assert!(user["properties"]["email"].is_null() && user["properties"]["avatar"].is_null());
    assert_eq!(user["additionalProperties"], false);
    // target + deny: an array of orders without `customer`, the sibling file's sku in place.
    let orders = &answer["properties"]["orders"];
    assert_eq!(orders["type"], "array");
    assert_eq!(orders["items"]["properties"]["qty"]["type"], "integer");
    assert_eq!(
        orders["items"]["properties"]["sku"]["pattern"],
        "^SKU-[0-9]{4}$"
    );
    assert!(orders["items"]["properties"]["customer"].is_null());
    assert_eq!(
        answer["properties"]["recommendations"]["items"]["properties"]["score"]["type"],
        "number"
    );
    // The checkout form's body, required; 415 and 400 listed; one backend: its 2xx.
    let place = &doc["paths"]["/api/orders"]["post"];
    assert_eq!(place["requestBody"]["required"], true);
    let body = &place["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body["properties"]["items"]["items"]["properties"]["qty"]["maximum"],
        10
    );
    for status in ["2XX", "400", "409", "415", "422", "4XX"] {
        assert!(place["responses"][status].is_object(), "{status}");
    }
    let key = place["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "idempotency-key")
        .expect("the idempotency-key header");
    assert_eq!(
        (key["in"].clone(), key["required"].clone()),
        (serde_json::json!("header"), serde_json::json!(false))
    );
    assert!(
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["details"]
            .is_object()
    );
}

/// `manifold routes` names a gRPC backend's method where an HTTP one has its path.
#[test]
fn routes_names_grpc_methods() {
    let (code, out, err) = manifold(&["routes", "tests/configs/good/full.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("gRPC acme.users.v1.UserService/GetUser (upstream profiles)"),
        "{out}"
    );
}

/// A gRPC backend's part of the answer is typed from its method's output message, by
/// the proto3 JSON mapping, then shaped (tests/configs/good/full.toml's profile route).
#[test]
fn openapi_types_grpc_answers_from_their_message() {
    let (code, out, err) = manifold(&["openapi", "tests/configs/good/full.toml"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let answer = &doc["paths"]["/api/profile/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let profile = &answer["properties"]["profile"];
    let props = &profile["properties"];
    assert_eq!(
        props["id"]["type"], "string",
        "int64 as a string: {profile}"
    );
    assert_eq!(
        props["name"]["type"], "string",
        "renamed from displayName: {profile}"
    );
    assert!(props.get("displayName").is_none(), "{profile}");
    assert!(props.get("labels").is_none(), "denied: {profile}");
    assert_eq!(
        props["view"]["enum"],
        serde_json::json!(["VIEW_UNSPECIFIED", "BASIC", "FULL"])
    );
    assert_eq!(props["created"]["format"], "date-time");
    assert_eq!(props["address"]["properties"]["city"]["type"], "string");
    let required = profile["required"].as_array().unwrap();
    assert!(
        required.contains(&serde_json::json!("age")),
        "no presence: always there"
    );
    assert!(
        !required.contains(&serde_json::json!("address")),
        "a message may be unset"
    );
}

/// Every document `manifold openapi` writes for the shipped configs passes an OpenAPI
/// 3.1 validator (openapi-spec-validator, installed by `.ci/run`).
#[test]
fn openapi_documents_pass_an_openapi_validator() {
    for config in ["routes.toml", "tests/configs/good/full.toml"] {
        let (code, out, err) = manifold(&["openapi", config]);
        assert_eq!(code, 0, "{err}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), out).unwrap();
        let checked = std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(file.path())
            .output()
            .expect("python3 runs (.ci/run installs openapi-spec-validator)");
        assert!(
            checked.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

/// The schema is generated from the loader; its snapshot shows every change to the
/// file format in review.
#[test]
fn schema_is_locked_by_snapshot() {
    let (code, out, err) = manifold(&["schema"]);
    assert_eq!(code, 0, "{err}");
    // serde_json's own text: insta's serializer would show numbers as the
    // `arbitrary_precision` map they are inside serde.
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    insta::assert_snapshot!(
        "routes_schema",
        serde_json::to_string_pretty(&schema).unwrap()
    );
}

/// A URL's credentials never show in `check`'s output, even in a broken file.
#[test]
fn check_never_prints_url_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        r#"[telemetry]
otlp_endpoint = "ftp://collector:s3cret-otlp@otel:4318"

[upstreams.users]
urls = ["http://svc:s3cret-user@", "gopher://svc:s3cret-other@users:1"]

[[routes]]
path = "/u"
  [[routes.backends]]
  upstream = "users"
  path = "/u"
"#,
    )
    .unwrap();
    let (code, out, err) = manifold(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("otlp_endpoint"), "{err}");
    assert!(!out.contains("s3cret") && !err.contains("s3cret"), "{err}");
    assert!(err.contains("***"), "{err}");
}

/// An empty file (a writer caught midway) is not a valid gateway with no routes.
#[test]
fn a_config_without_routes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    for text in ["", "[server]\nlisten = \"127.0.0.1:8080\"\n"] {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = manifold(&["check", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("no [[routes]]"), "{err}");
        assert!(err.contains("routes.toml:1:1"), "{err}");
    }
}

/// Buffer bounds that would refuse every answer, or a share larger than the whole, are
/// config errors.
#[test]
fn buffer_bounds_must_hold_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        r#"[server]
buffer_capacity = "1MiB"
buffer_per_connection = "2MiB"

[upstreams.u]
urls = ["http://127.0.0.1:1"]

[[routes]]
path = "/u"
  [[routes.backends]]
  upstream = "u"
  path = "/u"
"#,
    )
    .unwrap();
    let (code, _, err) = manifold(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("buffer_per_connection is larger than buffer_capacity"),
        "{err}"
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("\"1MiB\"", "\"1KiB\""),
    )
    .unwrap();
    let (code, _, err) = manifold(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("buffer_capacity must be at least 64KiB"),
        "{err}"
    );
}

/// A misspelt upstream, backend or path parameter gets the likely name, as keys do.
#[test]
fn misspelt_names_get_a_did_you_mean() {
    let text = r#"
[upstreams.brands]
urls = ["http://127.0.0.1:1"]
[[routes]]
path = "/p/{product_id}"
  [[routes.backends]]
  name = "product"
  upstream = "brand"
  path = "/p/{prodct_id}"
  [[routes.backends]]
  upstream = "brands"
  path = "/b/{prodcut.brand}"
"#;
    let out = manifold::config::parse("typo.toml", text)
        .expect_err("three names are wrong")
        .render();
    assert!(out.contains("did you mean `brands`?"), "{out}");
    assert!(out.contains("did you mean `{product_id}`?"), "{out}");
    assert!(
        out.contains("no backend `prodcut`: did you mean `product`?"),
        "{out}"
    );
}

/// A file that is not UTF-8 is pointed at, like any other mistake.
#[test]
fn a_file_that_is_not_utf8_gets_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[server]\nlisten = \"127.0.0.1:8080\"\n# caf\xe9\n").unwrap();
    let out = manifold::config::Config::load(&path)
        .expect_err("not UTF-8")
        .render();
    assert!(out.contains("latin1.toml:3:6"), "{out}");
    assert!(out.contains("not UTF-8"), "{out}");
}

/// `manifold routes` shows a backend's path and its upstream apart.
#[test]
fn the_route_table_keeps_upstream_and_path_apart() {
    let config = manifold::config::parse(
        "t.toml",
        "[upstreams.users]\nurls = [\"http://127.0.0.1:1\"]\n[[routes]]\npath = \"/u/{id}\"\n  [[routes.backends]]\n  upstream = \"users\"\n  path = \"/users/{id}\"\n",
    )
    .unwrap();
    let table = manifold::admin::route_table(&config);
    assert!(
        table.contains("GET /users/{id} (upstream users)"),
        "{table}"
    );
}

/// Messages name tables one way: `route NAME`, `backend NAME of route NAME`.
#[test]
fn messages_name_routes_and_backends_one_way() {
    let text = r#"
[upstreams.u]
urls = ["http://127.0.0.1:1"]
[[routes]]
name = "product_page"
path = "/p"
cache = { ttl = "1s", tll = "2s" }
  [[routes.backends]]
  upstream = "u"
  path = "/"
  grup = "x"
[[routes]]
path = "/empty"
"#;
    let out = manifold::config::parse("names.toml", text)
        .expect_err("three mistakes")
        .render();
    assert!(
        out.contains("unknown key `tll` in `cache` of route product_page"),
        "{out}"
    );
    assert!(
        out.contains("unknown key `grup` in backend u of route product_page"),
        "{out}"
    );
    assert!(out.contains("route GET /empty has no backends"), "{out}");
    assert!(!out.contains("[[routes]] #"), "{out}");
}

/// CORS mistakes are load errors: credentials for every origin, a pattern that is not
/// an origin, `cors = true`.
#[test]
fn cors_mistakes_are_refused_at_load() {
    let text = r#"
[cors]
allow_origins = ["*"]
allow_credentials = true

[upstreams.u]
urls = ["http://127.0.0.1:1"]

[[routes]]
path = "/a"
cors = { allow_origins = ["app.example.com", "https://a.*.example.com"] }
  [[routes.backends]]
  upstream = "u"
  path = "/"

[[routes]]
path = "/b"
cors = true
  [[routes.backends]]
  upstream = "u"
  path = "/"
"#;
    let out = manifold::config::parse("cors.toml", text)
        .expect_err("four mistakes")
        .render();
    assert!(
        out.contains("allows credentials from every origin"),
        "{out}"
    );
    assert!(
        out.contains("`app.example.com` is not an origin pattern"),
        "{out}"
    );
    assert!(
        out.contains("`https://a.*.example.com` is not an origin pattern"),
        "{out}"
    );
    assert!(
        out.contains("`cors = true` in route GET /b means nothing"),
        "{out}"
    );
}

/// The SRE kit in deploy/: the alerting rules pass `promtool check rules`, the
/// PrometheusRule holds the same groups, and every series the rules and the Grafana
/// dashboard query is one the gateway exports.
#[test]
fn deploy_rules_and_dashboard_query_what_the_gateway_exports() {
    let rules = std::fs::read_to_string("deploy/prometheus/manifold-rules.yaml").unwrap();
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules", "deploy/prometheus/manifold-rules.yaml"])
        .output()
        .expect("promtool runs (.ci/run installs it: apt-get install prometheus)");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let operator = std::fs::read_to_string("deploy/kubernetes/prometheusrule.yaml").unwrap();
    let groups = &rules[rules.find("groups:").unwrap()..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    assert!(
        operator.ends_with(&format!("spec:\n{indented}")),
        "prometheusrule.yaml's spec is manifold-rules.yaml's groups"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/manifold-dashboard.json").unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{p}");
        queries.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string()),
        );
    }
    // The families the gateway registers (the metrics table's names: a family shows in
    // /metrics once it has a series), with their samples' suffixes.
    let table = std::fs::read_to_string("src/telemetry/metrics/mod.rs").unwrap();
    let families: Vec<&str> = table
        .split('"')
        .filter(|w| {
            (w.starts_with("manifold_") || w.starts_with("http_server_"))
                && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    let known = |name: &str| {
        families.iter().any(|f| {
            name == *f
                || ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|s| name == format!("{f}{s}"))
        })
    };
    let mut seen = 0;
    for q in &queries {
        for word in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("manifold_") || word.starts_with("http_server_") {
                assert!(
                    known(word),
                    "{word} (in {q}) is not a metric the gateway exports"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 30, "{seen} series named");
}
