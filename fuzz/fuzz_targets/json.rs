//! Upstream answers: the validator against serde_json (they must agree), then decoding
//! and shaping as every kind of backend does it, and the merged body must be JSON.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use manifold::request::gateway::Gateway;
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

/// Whether serde_json reads the text and every number in it is finite, the numbers
/// under repeated keys included: a `Value` keeps only a repeated key's last value,
/// while the rule refuses a text with any number it cannot hold (found by this target:
/// `{"e":5E555,"e":1}`).
struct Finite(bool);

impl<'de> serde::Deserialize<'de> for Finite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Finite;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Finite, E> {
                Ok(Finite(true))
            }
            // Integers that fit come as such even with `arbitrary_precision`.
            fn visit_u64<E>(self, _: u64) -> Result<Finite, E> {
                Ok(Finite(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Finite, E> {
                Ok(Finite(true))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Finite, E> {
                Ok(Finite(v.is_finite()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Finite, E> {
                Ok(Finite(true))
            }
            fn visit_unit<E>(self) -> Result<Finite, E> {
                Ok(Finite(true))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Finite, A::Error> {
                let mut all = true;
                while let Some(Finite(f)) = a.next_element()? {
                    all &= f;
                }
                Ok(Finite(all))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Finite, A::Error> {
                let mut all = true;
                while let Some(key) = m.next_key::<String>()? {
                    // How `arbitrary_precision` hands over a number: its text.
                    if key == "$serde_json::private::Number" {
                        let text: String = m.next_value()?;
                        return Ok(Finite(manifold::base::json::finite(text.as_bytes())));
                    }
                    let Finite(f) = m.next_value()?;
                    all &= f;
                }
                Ok(Finite(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

fuzz_target!(|data: &[u8]| {
    // Keys serde_json reserves are refused by the validator and read as numbers or raw
    // text by serde_json itself (a unit test in src/base/json.rs covers them).
    if data.windows(22).any(|w| w == b"$serde_json::private::") {
        return;
    }
    // Bytes, not text: the validator checks UTF-8 itself, as serde_json's from_slice does.
    let ours = manifold::base::json::validate(data).is_ok();
    let theirs = serde_json::from_slice::<Finite>(data).is_ok_and(|Finite(f)| f);
    assert_eq!(ours, theirs, "validator and serde_json disagree");

    let route = &gateway().routes[0];
    let body = Bytes::copy_from_slice(data);
    // The targeted backend's answer, found in the text, is what a parsed tree holds
    // at `a.b` (the last of repeated keys, as a map keeps).
    if let Ok(manifold::request::merge::Answer::Raw(raw)) = manifold::request::merge::decode(&route.backends[1].plan, &body)
    {
        let whole: Value = serde_json::from_slice(data).expect("validated");
        let at = whole.get("a").and_then(|a| a.get("b")).expect("found");
        let found: Value = serde_json::from_slice(&raw).expect("a JSON value");
        assert_eq!(&found, at);
    }
    let results = route
        .backends
        .iter()
        .map(|b| Some(manifold::request::merge::decode(&b.plan, &body)))
        .collect();
    if let Some((merged, _)) = manifold::request::merge::assemble(route.plans(), results) {
        serde_json::from_slice::<Value>(&merged).expect("a merged body is JSON");
    }
});
