//! Upstream answers: the validator against serde_json (they must agree), then decoding
//! and shaping as every kind of backend does it, and the merged body must be JSON.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use manifold::gateway::Gateway;
use serde_json::Value;

const CONFIG: &str = r#"
[upstreams.u]
urls = ["http://127.0.0.1:1"]

[[routes]]
path = "/f"
  [[routes.backends]]
  name = "raw"
  upstream = "u"
  path = "/raw"
  group = "raw"

  [[routes.backends]]
  name = "targeted"
  upstream = "u"
  path = "/t"
  group = "targeted"
  target = "a.b"

  [[routes.backends]]
  name = "shaped"
  upstream = "u"
  path = "/s"
  group = "shaped"
  allow = ["a", "b.c", "items.id"]
  rename = { a = "z" }

  [[routes.backends]]
  name = "merged"
  upstream = "u"
  path = "/m"
  deny = ["secret"]
"#;

fn gateway() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let config = manifold::config::parse("fuzz.toml", CONFIG).expect("valid");
        Gateway::build(config, None, 1).expect("builds")
    })
}

fn finite_everywhere(v: &Value) -> bool {
    match v {
        Value::Number(n) => manifold::json::finite(n.as_str()),
        Value::Array(a) => a.iter().all(finite_everywhere),
        Value::Object(o) => o.values().all(finite_everywhere),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Keys serde_json reserves are refused by the validator and read as numbers or raw
    // text by serde_json itself (a unit test in src/json.rs covers them).
    if text.contains("$serde_json::private::") {
        return;
    }
    let ours = manifold::json::validate(data).is_ok();
    let theirs = serde_json::from_str::<Value>(text).is_ok_and(|v| finite_everywhere(&v));
    assert_eq!(ours, theirs, "validator and serde_json disagree");

    let route = &gateway().routes[0];
    let body = Bytes::copy_from_slice(data);
    // The targeted backend's answer, found in the text, is what a parsed tree holds
    // at `a.b` (the last of repeated keys, as a map keeps).
    if let Ok(manifold::merge::Answer::Raw(raw)) = manifold::merge::decode(&route.backends[1], &body)
    {
        let whole: Value = serde_json::from_str(text).expect("validated");
        let at = whole.get("a").and_then(|a| a.get("b")).expect("found");
        let found: Value = serde_json::from_slice(&raw).expect("a JSON value");
        assert_eq!(&found, at);
    }
    let results = route
        .backends
        .iter()
        .map(|b| Some(manifold::merge::decode(b, &body)))
        .collect();
    if let Ok((merged, _)) = manifold::merge::assemble(route, results) {
        serde_json::from_slice::<Value>(&merged).expect("a merged body is JSON");
    }
});
