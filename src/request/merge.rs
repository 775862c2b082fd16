//! Pure shaping and merging (docs/configuration.md#how-a-merged-response-is-built): `target`,
//! then `allow`/`deny`, then `rename` (each applied to every element where the value is an
//! array), then `group`.
//!
//! Field lists are compiled into trees once at load, so a request only walks them.
//!
//! An answer is decoded only as far as its use needs ([`Decode`]): one that is placed
//! under a `group` unchanged (at most with a `target`) and that no other backend reads
//! stays JSON text, checked but never built into a tree, and is copied into the
//! response as is; one whose object is only filtered or renamed at its top level is
//! shaped as text, to the same bytes the tree would give. Either way it is checked by
//! the same rule first ([`crate::base::json`]), so an answer is refused or taken alike
//! on every route. Numbers keep their exact text (serde_json's `arbitrary_precision`).
//! Merged responses have their keys in sorted order.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use crate::base::error::Failure;
use crate::base::json;

/// What merging needs to know of one backend, compiled at load (a backend embeds it).
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: std::sync::Arc<str>,
    pub group: Option<String>,
    pub shape: Shape,
    pub decode: Decode,
    /// Stands in for a failed optional backend's answer.
    pub default: Option<Value>,
}

/// One backend's result: `None` when it never ran (the request ended first).
pub type Input = Option<Result<Answer, Failure>>;

/// A backend's answer, decoded as far as its use needs.
#[derive(Debug, Clone)]
pub enum Answer {
    Value(Value),
    /// JSON text, validated, `target` already applied: a slice of the upstream's
    /// body, not a copy ([`Decode::Raw`]), or the shaped text ([`Decode::Text`]).
    Raw(Bytes),
}

/// How far to decode a backend's answer; decided once at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Build a JSON tree: shaping filters or renames it, it is merged into the root,
    /// or another backend reads a field of it.
    Value,
    /// Keep the text: it is placed under its group unchanged, after `target`.
    Raw,
    /// Shape the text: `allow`/`deny` of whole top-level fields and `rename` on an
    /// object, written as the tree would be (keys sorted, values compact), without
    /// building one for the whole answer ([`Shape::apply_text`]). An answer this does
    /// not fit (an array, an escaped or repeated key) takes the tree after all.
    Text,
}

/// How one backend's answer is shaped before it joins the response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    target: Option<Vec<String>>,
    filter: Option<Filter>,
    rename: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Allow(Fields),
    Deny(Fields),
}

/// A tree of dot paths: `["id", "profile.name"]` → id (whole), profile → name (whole).
#[derive(Debug, Clone, Default, PartialEq)]
struct Fields {
    /// The whole value at this path is named (not just some of its fields).
    whole: bool,
    children: Vec<(String, Fields)>,
}

impl Fields {
    fn from_paths(paths: &[String]) -> Self {
        let mut root = Fields::default();
        for p in paths {
            let mut node = &mut root;
            for seg in p.split('.') {
                let i = match node.children.iter().position(|(k, _)| k == seg) {
                    Some(i) => i,
                    None => {
                        node.children.push((seg.to_string(), Fields::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
            }
            node.whole = true;
        }
        root
    }

    fn get(&self, key: &str) -> Option<&Fields> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, f)| f)
    }
}

impl Shape {
    pub fn new(
        target: Option<&str>,
        allow: &[String],
        deny: &[String],
        rename: &[(String, String)],
    ) -> Self {
        let filter = if !allow.is_empty() {
            Some(Filter::Allow(Fields::from_paths(allow)))
        } else if !deny.is_empty() {
            Some(Filter::Deny(Fields::from_paths(deny)))
        } else {
            None
        };
        Shape {
            target: target.map(|t| t.split('.').map(str::to_string).collect()),
            filter,
            rename: rename.to_vec(),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.target.is_none() && self.filter.is_none() && self.rename.is_empty()
    }

    /// Nothing but (at most) a target: the answer can stay text.
    pub fn keeps_text(&self) -> bool {
        self.filter.is_none() && self.rename.is_empty()
    }

    /// Whether [`Shape::apply_text`] can do this shape's work: it filters or renames,
    /// and its filter names whole top-level fields only (`profile`, not `profile.city`).
    pub fn shapes_text(&self) -> bool {
        let top_level = match &self.filter {
            Some(Filter::Allow(f) | Filter::Deny(f)) => f.children.iter().all(|(_, c)| c.whole),
            None => true,
        };
        top_level && !self.keeps_text()
    }

    /// Filter and rename on the text of an object (the value at `target`, found
    /// already), written byte for byte as [`Shape::apply`] and the serializer would
    /// write the tree: keys sorted, escaped by the serializer; values copied where
    /// their text is what the serializer writes (a number without an exponent:
    /// `arbitrary_precision` keeps its digits; `true`/`false`/`null`; a string without
    /// escapes), else parsed and written compact. `None` where the tree is needed: not
    /// an object, a key with an escape, or two fields that end up under one key (the
    /// tree keeps one of them). Only for a shape that [`Shape::shapes_text`].
    pub fn apply_text(&self, text: &[u8]) -> Option<Bytes> {
        let mut kept: Vec<(&str, &[u8])> = Vec::with_capacity(16);
        json::members(text, |key, value| {
            if key.contains(&b'\\') {
                return None;
            }
            let key = std::str::from_utf8(key).ok()?;
            let keep = match &self.filter {
                Some(Filter::Allow(f)) => f.get(key).is_some(),
                Some(Filter::Deny(f)) => f.get(key).is_none(),
                None => true,
            };
            if keep {
                let key = match self.rename.iter().find(|(from, _)| from == key) {
                    Some((_, to)) => to.as_str(),
                    None => key,
                };
                kept.push((key, value));
            }
            Some(())
        })?;
        kept.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if kept.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let len: usize = kept.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (key, value)) in kept.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, key);
            out.push(b':');
            if written_as_is(value) {
                out.extend_from_slice(value);
            } else {
                let tree: Value = serde_json::from_slice(value).ok()?;
                let _ = serde_json::to_writer(&mut out, &tree);
            }
        }
        out.push(b'}');
        Some(Bytes::from(out))
    }

    /// Applies target, allow/deny and rename. A missing target yields `null`.
    pub fn apply(&self, mut value: Value) -> Value {
        if let Some(path) = &self.target {
            value = take_path(value, path);
        }
        match &self.filter {
            Some(Filter::Allow(f)) => allow(&mut value, f),
            Some(Filter::Deny(f)) => deny(&mut value, f),
            None => {}
        }
        if !self.rename.is_empty() {
            rename(&mut value, &self.rename);
        }
        value
    }
}

/// Whether a (valid) value's text is what the serializer writes for its tree.
fn written_as_is(value: &[u8]) -> bool {
    match value.first() {
        Some(b'"') => !value.contains(&b'\\'),
        Some(b't' | b'f' | b'n') => true,
        // An exponent is written `e+`/`e-` whatever its text said.
        Some(b'-' | b'0'..=b'9') => !json::has_exponent(value),
        _ => false,
    }
}

/// `target`: the value at a dot path; through an array, the value in each element.
fn take_path(value: Value, path: &[String]) -> Value {
    let Some((seg, rest)) = path.split_first() else {
        return value;
    };
    match value {
        Value::Object(mut m) => take_path(m.remove(seg.as_str()).unwrap_or(Value::Null), rest),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| take_path(v, path)).collect())
        }
        _ => Value::Null,
    }
}

fn allow(value: &mut Value, f: &Fields) {
    match value {
        Value::Object(m) => {
            m.retain(|k, _| f.get(k).is_some());
            for (k, sub) in &f.children {
                if !sub.whole
                    && let Some(v) = m.get_mut(k.as_str())
                {
                    allow(v, sub);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| allow(v, f)),
        _ => {}
    }
}

fn deny(value: &mut Value, f: &Fields) {
    match value {
        Value::Object(m) => {
            m.retain(|k, _| !f.get(k).is_some_and(|sub| sub.whole));
            for (k, sub) in &f.children {
                if !sub.whole
                    && let Some(v) = m.get_mut(k.as_str())
                {
                    deny(v, sub);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| deny(v, f)),
        _ => {}
    }
}

fn rename(value: &mut Value, renames: &[(String, String)]) {
    match value {
        Value::Object(m)
            if renames
                .iter()
                .any(|(from, _)| m.contains_key(from.as_str())) =>
        {
            // Rebuilt rather than renamed one by one, so renames apply all at once
            // (`{a = "b", b = "a"}` swaps instead of losing a value).
            let old = std::mem::take(m);
            *m = old
                .into_iter()
                .map(|(k, v)| match renames.iter().find(|(from, _)| *from == k) {
                    Some((_, to)) => (to.clone(), v),
                    None => (k, v),
                })
                .collect();
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename(v, renames)),
        _ => {}
    }
}

/// Decodes an upstream's 2xx body as the backend's plan says. An empty body is `null`.
pub fn decode(b: &Plan, body: &Bytes) -> Result<Answer, Failure> {
    let start = body.iter().position(|c| !c.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(Answer::Value(Value::Null));
    };
    // The rule checks UTF-8 too, string by string (most are ASCII: nothing to do).
    let bad = Failure::NotJson;
    // Validated and, with a target, found in one pass: the value's text, kept as a
    // slice of the body (Raw), or shaped as text (Text).
    let text = match (b.decode, &b.shape.target) {
        (Decode::Value, _) => {
            json::validate(body).map_err(bad)?;
            None
        }
        (_, None) => {
            json::validate(body).map_err(bad)?;
            let end = body.len()
                - body
                    .iter()
                    .rev()
                    .take_while(|c| c.is_ascii_whitespace())
                    .count();
            Some(start..end)
        }
        (_, Some(path)) => match json::validate_at(body, path).map_err(bad)? {
            json::Target::At(r) => Some(r),
            json::Target::Missing => return Ok(Answer::Value(Value::Null)),
            // The target then applies per element: the general path below.
            json::Target::ThroughArray => None,
        },
    };
    if let Some(r) = text {
        match b.decode {
            Decode::Raw => return Ok(Answer::Raw(body.slice(r))),
            Decode::Text => {
                if let Some(shaped) = b.shape.apply_text(&body[r]) {
                    return Ok(Answer::Raw(shaped));
                }
            }
            Decode::Value => {}
        }
    }
    serde_json::from_slice(body)
        .map(Answer::Value)
        .map_err(|e| {
            // The rule above let through what serde refused: not expected, still not JSON.
            Failure::NotJson(json::Invalid {
                at: e.column(),
                what: "refused by the decoder",
            })
        })
}

/// The response object being built: sorted keys (a backend's group or name borrowed
/// from its plan), values either trees or kept text.
#[derive(Default)]
pub struct Root<'p> {
    entries: BTreeMap<Cow<'p, str>, Part>,
    raw_len: usize,
}

enum Part {
    Value(Value),
    Raw(Bytes),
}

impl<'p> Root<'p> {
    /// Puts one backend's shaped value in: under `group`, merged into the root when it
    /// is an object, else under the backend's `name`. Later backends win clashes.
    pub fn place(&mut self, name: &'p str, group: Option<&'p str>, value: Value) {
        match (group, value) {
            (Some(g), v) => {
                self.entries.insert(Cow::Borrowed(g), Part::Value(v));
            }
            (None, Value::Object(m)) => {
                for (k, v) in m {
                    self.entries.insert(Cow::Owned(k), Part::Value(v));
                }
            }
            (None, v) => {
                self.entries.insert(Cow::Borrowed(name), Part::Value(v));
            }
        }
    }

    /// Puts kept text under `key` (a backend's group).
    pub fn place_raw(&mut self, key: &'p str, raw: Bytes) {
        self.raw_len += raw.len();
        self.entries.insert(Cow::Borrowed(key), Part::Raw(raw));
    }

    /// The response body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw_len + 256 * self.entries.len() + 2);
        out.push(b'{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, k);
            out.push(b':');
            match v {
                Part::Value(v) => {
                    let _ = serde_json::to_writer(&mut out, v);
                }
                Part::Raw(r) => out.extend_from_slice(r),
            }
        }
        out.push(b'}');
        out
    }
}

/// Joins a route's backend results into one response body, in declaration order.
///
/// Returns the body and whether every backend answered (`x-manifold-completed`), or
/// `None` when none did (the route then fails as if its first backend were required).
/// Failed optional backends are left out, or replaced by their `default`.
pub fn assemble<'p>(
    plans: impl IntoIterator<Item = &'p Plan>,
    results: Vec<Input>,
) -> Option<(Vec<u8>, bool)> {
    if results.iter().all(|r| !matches!(r, Some(Ok(_)))) {
        return None;
    }
    let mut root = Root::default();
    let mut completed = true;
    for (b, result) in plans.into_iter().zip(results) {
        match result {
            Some(Ok(Answer::Value(v))) => root.place(&b.name, b.group.as_deref(), b.shape.apply(v)),
            Some(Ok(Answer::Raw(raw))) => match &b.group {
                Some(g) => root.place_raw(g, raw),
                None => root.place(&b.name, None, Value::Null),
            },
            _ => {
                completed = false;
                if let Some(d) = &b.default {
                    root.place(&b.name, b.group.as_deref(), d.clone());
                }
            }
        }
    }
    Some((root.to_bytes(), completed))
}

/// Reads `field.sub` of an answer for a `{backend.field}` placeholder.
pub fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match v {
        Value::Object(m) => m.get(seg.as_str()),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn order_is_target_filter_rename() {
        let shape = Shape::new(
            Some("data"),
            &s(&["id", "avatar", "profile.city"]),
            &[],
            &[("avatar".into(), "avatar_url".into())],
        );
        let v = json!({"data": {"id": 1, "avatar": "a.png", "secret": true, "profile": {"city": "Oslo", "ssn": "x"}}, "meta": 1});
        assert_eq!(
            shape.apply(v),
            json!({"id": 1, "avatar_url": "a.png", "profile": {"city": "Oslo"}})
        );
    }

    #[test]
    fn filters_go_through_arrays() {
        let allow_shape = Shape::new(None, &s(&["items.sku"]), &[], &[]);
        let v = json!({"items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2}], "total": 2});
        assert_eq!(
            allow_shape.apply(v.clone()),
            json!({"items": [{"sku": "a"}, {"sku": "b"}]})
        );
        let deny_shape = Shape::new(None, &[], &s(&["items.price", "total"]), &[]);
        assert_eq!(
            deny_shape.apply(v),
            json!({"items": [{"sku": "a"}, {"sku": "b"}]})
        );
        let top_array = Shape::new(None, &s(&["sku"]), &[], &[("sku".into(), "id".into())]);
        assert_eq!(
            top_array.apply(json!([{"sku": "a", "x": 1}])),
            json!([{"id": "a"}])
        );
    }

    #[test]
    fn renames_apply_all_at_once() {
        let swap = Shape::new(
            None,
            &[],
            &[],
            &[("a".into(), "b".into()), ("b".into(), "a".into())],
        );
        assert_eq!(
            swap.apply(json!({"a": 1, "b": 2, "c": 3})),
            json!({"a": 2, "b": 1, "c": 3})
        );
    }

    #[test]
    fn target_applies_to_each_element() {
        let shape = Shape::new(Some("item.sku"), &[], &[], &[]);
        assert_eq!(
            shape.apply(json!([{"item": {"sku": "a"}}, {"item": {"sku": "b"}}])),
            json!(["a", "b"])
        );
    }

    #[test]
    fn missing_target_is_null() {
        assert_eq!(
            Shape::new(Some("nope"), &[], &[], &[]).apply(json!({"a": 1})),
            Value::Null
        );
    }

    #[test]
    fn placing_follows_the_rules() {
        let mut root = Root::default();
        root.place("user", Some("user"), json!({"id": 1}));
        root.place("flags", None, json!({"beta": true, "x": 1}));
        root.place("later", None, json!({"x": 2}));
        root.place("recs", None, json!([1, 2]));
        root.place_raw("raw", Bytes::from_static(br#"{"kept" : "as sent"}"#));
        let out: Value = serde_json::from_slice(&root.to_bytes()).unwrap();
        assert_eq!(
            out,
            json!({"user": {"id": 1}, "beta": true, "x": 2, "recs": [1, 2], "raw": {"kept": "as sent"}})
        );
        assert!(
            String::from_utf8(root.to_bytes())
                .unwrap()
                .contains(r#"{"kept" : "as sent"}"#)
        );
    }

    #[test]
    fn lookup_reads_nested_fields() {
        let v = json!({"a": {"b": [10, {"c": "x"}]}});
        assert_eq!(lookup(&v, &s(&["a", "b", "1", "c"])), Some(&json!("x")));
        assert_eq!(lookup(&v, &s(&["a", "zz"])), None);
    }

    fn plan(shape: Shape, decode: Decode) -> Plan {
        Plan {
            name: "b".into(),
            group: Some("g".into()),
            shape,
            decode,
            default: None,
        }
    }

    /// The response a backend's answer gives under a plan, or why it failed.
    fn served(plan: &Plan, body: &[u8]) -> Result<Vec<u8>, String> {
        let answer = decode(plan, &Bytes::copy_from_slice(body)).map_err(|e| format!("{e:?}"))?;
        let (bytes, _) = assemble([plan], vec![Some(Ok(answer))]).ok_or("nothing")?;
        Ok(bytes)
    }

    #[test]
    fn an_object_is_shaped_as_text_to_the_bytes_the_tree_gives() {
        let shape = Shape::new(
            None,
            &s(&["id", "name", "avatar", "customer_id"]),
            &[],
            &[("avatar".into(), "avatar_url".into())],
        );
        assert!(shape.shapes_text());
        let body = br#"{"id":"42","name":"Ada \u00e9","avatar" : "https://img.example/42.png",
            "customer_id": 1.50E+2, "email":"ada@example.com","internal_score":0.93}"#;
        let text = plan(shape.clone(), Decode::Text);
        // Shaped as text: the tree's way gives a Value.
        let Ok(Answer::Raw(raw)) = decode(&text, &Bytes::from_static(body)) else {
            panic!("not shaped as text");
        };
        assert_eq!(
            std::str::from_utf8(&raw).unwrap(),
            r#"{"avatar_url":"https://img.example/42.png","customer_id":1.50e+2,"id":"42","name":"Ada é"}"#
        );
        assert_eq!(
            served(&text, body),
            served(&plan(shape, Decode::Value), body)
        );
    }

    #[test]
    fn text_shaping_leaves_what_it_cannot_match_to_the_tree() {
        let shape = Shape::new(None, &[], &s(&["x"]), &[("a".into(), "b".into())]);
        let bodies: [&[u8]; 5] = [
            br#"{"a":1,"b":2}"#,     // two fields end up under `b`
            br#"{"c":1,"c":2}"#,     // a repeated key: the tree keeps the last
            br#"{"\u0063":1}"#,      // an escaped key
            br#"[{"a":1},{"x":2}]"#, // an array: shaped per element
            br#""a""#,
        ];
        for body in bodies {
            assert!(
                shape.apply_text(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                served(&plan(shape.clone(), Decode::Text), body),
                served(&plan(shape.clone(), Decode::Value), body)
            );
        }
        // A nested path in a filter, or a target alone, is not text shaping's.
        assert!(!Shape::new(None, &s(&["a.b"]), &[], &[]).shapes_text());
        assert!(!Shape::new(Some("a"), &[], &[], &[]).shapes_text());
    }

    /// Text that is JSON: objects whose keys repeat and collide under renames, values
    /// of every kind written with odd spacing, escapes and number forms.
    fn answer() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ws = "[ \t\n]{0,2}";
        let key = prop_oneof![
            "[abcd]",
            Just(r"a\u0062".to_string()),
            Just(r"\n".to_string()),
            Just("\u{e9}".to_string()),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("false".to_string()),
            "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            r#""([a-z ]|\\[nt"/\\]|\\u00[4-7][0-9a-f]|[\u{80}-\u{10ffff}]){0,6}""#,
        ];
        let value = leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec((ws, inner.clone()), 0..4).prop_map(|v| {
                    let items: Vec<String> =
                        v.into_iter().map(|(w, x)| format!("{w}{x}")).collect();
                    format!("[{}]", items.join(","))
                }),
                proptest::collection::vec(("[abcd]", ws, inner), 0..4).prop_map(|kv| {
                    let members: Vec<String> = kv
                        .into_iter()
                        .map(|(k, w, v)| format!("\"{k}\":{w}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        });
        let object = proptest::collection::vec((key, ws, ws, value.clone()), 0..7).prop_map(|kv| {
            let members: Vec<String> = kv
                .into_iter()
                .map(|(k, w1, w2, v)| format!("{w1}\"{k}\"{w2}:{w1}{v}{w2}"))
                .collect();
            format!(" {{{}}} ", members.join(","))
        });
        prop_oneof![4 => object, 1 => value]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        #[test]
        fn text_shaping_gives_the_bytes_the_tree_gives(
            body in answer(),
            allow in proptest::collection::vec("[abcde]", 0..3),
            deny in proptest::collection::vec("[abcde]", 0..3),
            rename in proptest::collection::vec(("[abcd]", "[abcdz\"]"), 0..3),
            target in proptest::prelude::any::<bool>(),
        ) {
            let body = if target { format!("{{\"t\": {body}, \"u\": 1}}") } else { body };
            let shape = Shape::new(target.then_some("t"), &allow, &deny, &rename);
            proptest::prop_assume!(shape.shapes_text());
            proptest::prop_assert_eq!(
                served(&plan(shape.clone(), Decode::Text), body.as_bytes()),
                served(&plan(shape, Decode::Value), body.as_bytes())
            );
        }
    }
}
