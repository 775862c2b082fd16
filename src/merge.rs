//! Pure shaping and merging (CONTRACT §3): `target`, then `allow`/`deny`, then `rename`
//! (each applied to every element where the value is an array), then `group`.
//!
//! Field lists are compiled into trees once at load, so a request only walks them.

use serde_json::{Map, Value};

use crate::error::{BackendError, Failure};
use crate::fanout::Slot;
use crate::gateway::Route;

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
            // Rebuilt rather than remove+insert so a renamed key keeps its position.
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

/// Puts one backend's shaped value into the response: under `group`, merged into the
/// root when it is an object, else under the backend's `name`. Later backends win clashes.
pub fn place(root: &mut Map<String, Value>, name: &str, group: Option<&str>, value: Value) {
    match (group, value) {
        (Some(g), v) => {
            root.insert(g.to_string(), v);
        }
        (None, Value::Object(m)) => {
            for (k, v) in m {
                root.insert(k, v);
            }
        }
        (None, v) => {
            root.insert(name.to_string(), v);
        }
    }
}

/// Joins a route's backend results into one object, in declaration order.
///
/// Returns the object and whether every backend answered (`x-manifold-completed`).
/// Failed optional backends are left out, or replaced by their `default`. When every
/// backend failed, the route fails as if its first backend were required.
pub fn assemble(route: &Route, results: Vec<Slot>) -> Result<(Value, bool), BackendError> {
    let all_failed = results.iter().all(|r| !matches!(r, Some(Ok(_))));
    if all_failed {
        let first = &route.backends[0];
        let failure = match results.into_iter().next() {
            Some(Some(Err(f))) => f,
            _ => Failure::Timeout,
        };
        return Err(BackendError {
            backend: first.name.clone(),
            upstream: first.upstream.name.clone(),
            failure,
        });
    }
    let mut root = Map::new();
    let mut completed = true;
    for (b, result) in route.backends.iter().zip(results) {
        let value = match result {
            Some(Ok(v)) => b.shape.apply(v),
            _ => {
                completed = false;
                match &b.default {
                    Some(d) => d.clone(),
                    None => continue,
                }
            }
        };
        place(&mut root, &b.name, b.group.as_deref(), value);
    }
    Ok((Value::Object(root), completed))
}

/// Reads `field.sub` of a raw answer for a `{backend.field}` placeholder.
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
        let mut root = Map::new();
        place(&mut root, "user", Some("user"), json!({"id": 1}));
        place(&mut root, "flags", None, json!({"beta": true, "x": 1}));
        place(&mut root, "later", None, json!({"x": 2}));
        place(&mut root, "recs", None, json!([1, 2]));
        assert_eq!(
            Value::Object(root),
            json!({"user": {"id": 1}, "beta": true, "x": 2, "recs": [1, 2]})
        );
    }

    #[test]
    fn lookup_reads_nested_fields() {
        let v = json!({"a": {"b": [10, {"c": "x"}]}});
        assert_eq!(lookup(&v, &s(&["a", "b", "1", "c"])), Some(&json!("x")));
        assert_eq!(lookup(&v, &s(&["a", "zz"])), None);
    }
}
