//! Request validation (docs/configuration.md#request-validation): a route's path
//! parameters, query and body checked against its `validate` schemas after the token
//! and before the cache, so no upstream sees a request the route calls invalid.
//!
//! Query values and path parameters arrive as text; each is first turned into what
//! its schema wants at that place (an integer, a number, a boolean, an array of
//! them), as an OpenAPI parameter's `schema` is read, so `?limit=10` matches
//! `{"type": "integer"}`. What a place wants is worked out once, when the route is
//! compiled ([`Wants`]), from the schema with its `$ref`s resolved.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

use crate::base::error::{Detail, GatewayError, MAX_DETAILS, Part};
use crate::config::validation::{RouteValidation, Schema};
use crate::telemetry::metrics::METRICS;

/// A message longer than this is cut (a schema's `enum` of many values, or a client's
/// many unexpected property names, must not make the answer large).
const MAX_MESSAGE: usize = 200;

/// A route's compiled `validate`.
pub struct Validation {
    params: Option<Fields>,
    query: Option<Fields>,
    body: Option<Arc<jsonschema::Validator>>,
    /// The route's path parameter names, in path order.
    names: Vec<String>,
    /// `manifold_validation_failures_total{route,in}`, in [`Part::ALL`] order.
    failures: [Counter; 3],
}

/// An object of text values (the query, the path parameters): its schema and what
/// each name wants.
struct Fields {
    validator: Arc<jsonschema::Validator>,
    wants: Shape,
}

impl Validation {
    pub fn new(route: &str, config: &RouteValidation, names: &[String]) -> Validation {
        let fields = |s: &Schema| Fields {
            validator: s.validator.clone(),
            wants: Shape::of(&s.published),
        };
        Validation {
            params: config.params.as_ref().map(fields),
            query: config.query.as_ref().map(fields),
            body: config.body.as_ref().map(|s| s.validator.clone()),
            names: names.to_vec(),
            failures: METRICS.validation(route),
        }
    }

    /// The body must be read whole before the route goes on.
    pub fn reads_body(&self) -> bool {
        self.body.is_some()
    }

    /// Checks the request: every failure of its params, query and body (at most
    /// [`MAX_DETAILS`]) in one 400, or a 415 for a body that is not JSON. `params` are
    /// the route's own, decoded; `body` the bytes read (`Some(None)` when empty), or
    /// `None` when there is no body to check (a WebSocket upgrade).
    pub fn check(
        &self,
        params: &[String],
        query: Option<&str>,
        headers: &HeaderMap,
        body: Option<Option<&Bytes>>,
    ) -> Result<(), GatewayError> {
        let mut details = Vec::new();
        let mut failed = [false; 3];
        if let Some(p) = &self.params {
            let object = Value::Object(
                self.names
                    .iter()
                    .zip(params)
                    .map(|(name, value)| (name.clone(), p.wants.get(name).coerce(value)))
                    .collect(),
            );
            failed[0] = collect(&p.validator, &object, Part::Params, &mut details);
        }
        if let Some(q) = &self.query {
            let object = query_object(query.unwrap_or(""), &q.wants);
            failed[1] = collect(&q.validator, &object, Part::Query, &mut details);
        }
        if let (Some(b), Some(body)) = (&self.body, body) {
            match body_json(headers.get(header::CONTENT_TYPE), body) {
                Ok(json) => failed[2] = collect(b, &json, Part::Body, &mut details),
                Err(why) => {
                    self.failures[2].inc();
                    return Err(GatewayError::UnsupportedMediaType(why));
                }
            }
        }
        if details.is_empty() {
            return Ok(());
        }
        for (counter, _) in self.failures.iter().zip(failed).filter(|(_, f)| *f) {
            counter.inc();
        }
        Err(GatewayError::Invalid(details.into_boxed_slice()))
    }
}

/// Adds `instance`'s failures to `details` (up to [`MAX_DETAILS`] in all); whether it
/// had any.
fn collect(
    validator: &jsonschema::Validator,
    instance: &Value,
    part: Part,
    details: &mut Vec<Detail>,
) -> bool {
    let mut any = false;
    for e in validator.iter_errors(instance) {
        any = true;
        if details.len() == MAX_DETAILS {
            break;
        }
        // The value is not repeated back: a client's password or card number would
        // otherwise travel in an error, and its size is the client's to choose.
        let mut message = e.masked().to_string();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        details.push(Detail {
            part,
            path: e.instance_path().to_string(),
            message,
        });
    }
    any
}

/// The body as JSON: none is `null`; a JSON `content-type` is needed for one
/// (`application/json`, `application/*+json`), and its bytes must parse.
fn body_json(content_type: Option<&HeaderValue>, body: Option<&Bytes>) -> Result<Value, String> {
    if let Some(ct) = content_type
        && !crate::base::forward::is_json(ct)
    {
        return Err(format!(
            "this route takes a JSON body; content-type `{}` is not JSON",
            String::from_utf8_lossy(&ct.as_bytes()[..ct.len().min(100)])
        ));
    }
    let Some(bytes) = body else {
        return Ok(Value::Null);
    };
    if content_type.is_none() {
        return Err(
            "this route takes a JSON body: send it with content-type: application/json".into(),
        );
    }
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "the body is not JSON: {} at line {} column {}",
            crate::base::json::without_position(&e.to_string()),
            e.line(),
            e.column()
        )
    })
}

/// The query string as an object: each name once, in the order first seen; a repeated
/// name (or one whose schema wants an array) an array.
fn query_object(query: &str, shape: &Shape) -> Value {
    let mut grouped: Vec<(Cow<'_, str>, Vec<Cow<'_, str>>)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    let mut object = Map::with_capacity(grouped.len());
    for (name, values) in grouped {
        let wants = shape.get(&name);
        let value = match (&values[..], &wants.items) {
            ([one], None) => wants.coerce(one),
            (many, items) => {
                let each = items.as_deref().unwrap_or(wants);
                Value::Array(many.iter().map(|v| each.coerce(v)).collect())
            }
        };
        object.insert(name.into_owned(), value);
    }
    Value::Object(object)
}

/// What an object's schema wants of each of its names.
#[derive(Debug, Default)]
struct Shape {
    named: Vec<(String, Wants)>,
    /// `additionalProperties`: for names not listed.
    other: Wants,
}

impl Shape {
    fn of(schema: &Value) -> Shape {
        let mut shape = Shape::default();
        shape.add(schema, 0);
        shape
    }

    fn add(&mut self, schema: &Value, depth: usize) {
        if depth > 8 {
            return;
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, s) in props {
                let w = Wants::of(s);
                match self.named.iter_mut().find(|(n, _)| n == name) {
                    Some((_, have)) => have.join(w),
                    None => self.named.push((name.clone(), w)),
                }
            }
        }
        if let Some(extra) = schema.get("additionalProperties") {
            self.other.join(Wants::of(extra));
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = schema.get(key) {
                for b in branches {
                    self.add(b, depth + 1);
                }
            }
        }
    }

    fn get(&self, name: &str) -> &Wants {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&self.other, |(_, w)| w)
    }
}

/// The types a place's schema allows that text can be turned into.
#[derive(Debug, Default, Clone)]
struct Wants {
    integer: bool,
    number: bool,
    boolean: bool,
    /// An array: what its items want.
    items: Option<Box<Wants>>,
}

impl Wants {
    fn of(schema: &Value) -> Wants {
        let mut w = Wants::default();
        w.add(schema, 0);
        w
    }

    fn add(&mut self, schema: &Value, depth: usize) {
        if depth > 8 {
            return;
        }
        let mut types = |t: &str| match t {
            "integer" => self.integer = true,
            "number" => self.number = true,
            "boolean" => self.boolean = true,
            "array" => {
                let items = schema
                    .get("items")
                    .filter(|i| i.is_object())
                    .or_else(|| schema.get("prefixItems").and_then(|p| p.get(0)))
                    .or_else(|| schema.get("items").and_then(|p| p.get(0)));
                let mut inner = Wants::default();
                if let Some(i) = items {
                    inner.add(i, depth + 1);
                }
                match &mut self.items {
                    Some(have) => have.join(inner),
                    None => self.items = Some(Box::new(inner)),
                }
            }
            _ => {}
        };
        match schema.get("type") {
            Some(Value::String(t)) => types(t),
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).for_each(types),
            _ => {}
        }
        let values = schema
            .get("enum")
            .and_then(Value::as_array)
            .map(|v| v.iter().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(schema.get("const"));
        for v in values {
            match v {
                Value::Bool(_) => self.boolean = true,
                Value::Number(n) if is_integer(n) => self.integer = true,
                Value::Number(_) => self.number = true,
                _ => {}
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = schema.get(key) {
                for b in branches {
                    self.add(b, depth + 1);
                }
            }
        }
    }

    fn join(&mut self, other: Wants) {
        self.integer |= other.integer;
        self.number |= other.number;
        self.boolean |= other.boolean;
        match (&mut self.items, other.items) {
            (Some(a), Some(b)) => a.join(*b),
            (None, b) => self.items = b,
            _ => {}
        }
    }

    /// `text` as this place wants it: JSON number syntax for numbers, `true`/`false`
    /// for booleans, else the text itself (and the schema says what is wrong with it).
    fn coerce(&self, text: &str) -> Value {
        if self.integer || self.number {
            let number = looks_numeric(text)
                .then(|| serde_json::from_str::<serde_json::Number>(text).ok())
                .flatten();
            if let Some(n) = number
                && (self.number || is_integer(&n))
            {
                return Value::Number(n);
            }
        }
        if self.boolean {
            match text {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            }
        }
        Value::String(text.to_string())
    }
}

/// JSON's number syntax starts with `-` or a digit (no `+`, no spaces, no `NaN`).
fn looks_numeric(text: &str) -> bool {
    text.bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
}

/// Written without a fraction or exponent.
fn is_integer(n: &serde_json::Number) -> bool {
    !n.to_string().contains(['.', 'e', 'E'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_becomes_what_the_schema_wants_there() {
        let shape = Shape::of(&json!({
            "properties": {
                "limit": {"type": "integer"},
                "ratio": {"type": ["number", "null"]},
                "on": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "integer"}},
                "mode": {"enum": [1, 2]},
                "name": {"type": "string"}
            }
        }));
        let q = query_object(
            "limit=10&ratio=0.5&on=true&tags=3&mode=2&name=10&extra=1&extra=2&limit2=+5",
            &shape,
        );
        assert_eq!(
            q,
            json!({"limit": 10, "ratio": 0.5, "on": true, "tags": [3], "mode": 2,
                   "name": "10", "extra": ["1", "2"], "limit2": " 5"})
        );
        // Not a number in JSON's syntax: left as text for the schema to refuse.
        let w = shape.get("limit");
        for bad in ["+5", "1.5", "0x10", "NaN", "", " 1"] {
            assert!(w.coerce(bad).is_string(), "{bad}");
        }
        assert_eq!(shape.get("on").coerce("TRUE"), json!("TRUE"));
    }

    proptest::proptest! {
        /// Whatever a client puts in a query or a body, checking it answers (a 400, a
        /// 415 or a pass), never a panic; and a query's object holds each name once.
        #[test]
        fn any_query_or_body_gets_an_answer(
            query in "[a-z=&%0-9+.\\-\\[\\]]{0,64}",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let shape = Shape::of(&json!({"properties": {
                "a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "number"}},
                "c": {"anyOf": [{"type": "boolean"}, {"enum": [1, 2.5]}]}
            }}));
            let object = query_object(&query, &shape);
            let names = object.as_object().map(|m| m.len()).unwrap_or(0);
            let distinct: std::collections::HashSet<String> = url::form_urlencoded::parse(query.as_bytes())
                .map(|(n, _)| n.into_owned())
                .collect();
            proptest::prop_assert_eq!(names, distinct.len());
            let ct = HeaderValue::from_static("application/json");
            let _ = body_json(Some(&ct), Some(&Bytes::from(body)));
        }
    }
}
