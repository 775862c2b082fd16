//! A gRPC backend's request message (docs/configuration.md#grpc-backends): its
//! `message` template compiled once against the request type, then filled per request
//! with path parameters, query values, claims and other backends' answers, and made a
//! protobuf message by the proto3 JSON mapping.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::base::error::Failure;
use crate::base::template::{Part, Placeholder};
use crate::config::grpc::{Message, Shape, field_named, is_well_known};
use crate::request::merge::{Answer, Input, lookup};
use crate::upstream::grpc::GrpcMethod;

/// A message template, compiled: placeholders point at what fills them.
#[derive(Debug)]
pub enum Compiled {
    /// The client's JSON body is the message.
    Body,
    Shape(Fill),
}

#[derive(Debug)]
pub enum Fill {
    Literal(Value),
    /// One placeholder alone: its value keeps its JSON type (a parameter's text is
    /// made the boolean or enum number its field wants).
    One(Source, Want),
    /// Text with placeholders in it: a string.
    Text(Vec<Piece>),
    Object(Vec<(String, Fill)>),
    Array(Vec<Fill>),
}

#[derive(Debug)]
pub enum Piece {
    Lit(String),
    Value(Source),
}

/// Where a placeholder's value comes from.
#[derive(Debug)]
pub enum Source {
    /// A path parameter or claim, by its index in the request's values.
    Param(usize),
    /// The client's query value of this name (the first, if repeated).
    Query(String),
    /// A field of another backend's answer.
    Field { backend: usize, path: Vec<String> },
}

/// What the field a lone placeholder fills takes, for text that must change type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Any,
    /// `"true"`/`"false"` become booleans (the JSON mapping takes no strings there).
    Bool,
    /// A number written as text becomes the enum's number.
    Enum,
}

/// Compiles a backend's message against its request type. `values`: the names of
/// the request's values (path parameters, then `jwt.CLAIM`s); `backends`: the route's
/// backend names. Names were checked at load; one that is not there is an error.
pub fn compile(
    message: &Message,
    input: &MessageDescriptor,
    route_params: &[String],
    values: &[String],
    backends: &[&str],
    deps: &mut Vec<usize>,
) -> Result<Compiled, String> {
    Ok(match message {
        Message::Body => Compiled::Body,
        Message::Default => Compiled::Shape(Fill::Object(
            route_params
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let field = field_named(input, p)?;
                    Some((
                        field.json_name().to_string(),
                        Fill::One(Source::Param(i), want(&field.kind())),
                    ))
                })
                .collect(),
        )),
        Message::Template(shape) => {
            Compiled::Shape(fill(shape, Some(input), Want::Any, values, backends, deps)?)
        }
    })
}

fn want(kind: &Kind) -> Want {
    match kind {
        Kind::Bool => Want::Bool,
        Kind::Enum(_) => Want::Enum,
        _ => Want::Any,
    }
}

fn fill(
    shape: &Shape,
    message: Option<&MessageDescriptor>,
    wanted: Want,
    values: &[String],
    backends: &[&str],
    deps: &mut Vec<usize>,
) -> Result<Fill, String> {
    Ok(match shape {
        Shape::Literal(v) => Fill::Literal(v.clone()),
        Shape::Text(t) => match &t.parts[..] {
            [Part::Param(ph)] => Fill::One(source(ph, values, backends, deps)?, wanted),
            parts => Fill::Text(
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Lit(l) => Ok(Piece::Lit(l.clone())),
                        Part::Param(ph) => Ok(Piece::Value(source(ph, values, backends, deps)?)),
                        Part::Field { .. } => Err("template compiled twice".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        },
        Shape::Object(fields) => Fill::Object(
            fields
                .iter()
                .map(|(name, s)| {
                    let field = message.and_then(|m| field_named(m, name));
                    let inner = match field.as_ref().map(prost_reflect::FieldDescriptor::kind) {
                        Some(Kind::Message(m)) if !is_well_known(&m) => Some(m),
                        _ => None,
                    };
                    let w = field.map_or(Want::Any, |f| want(&f.kind()));
                    Ok((
                        name.clone(),
                        fill(s, inner.as_ref(), w, values, backends, deps)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        ),
        Shape::Array(items) => Fill::Array(
            items
                .iter()
                .map(|s| fill(s, message, wanted, values, backends, deps))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn source(
    ph: &Placeholder,
    values: &[String],
    backends: &[&str],
    deps: &mut Vec<usize>,
) -> Result<Source, String> {
    if let Some(name) = ph.text.strip_prefix("query.") {
        return Ok(Source::Query(name.to_string()));
    }
    if let Some(i) = values.iter().position(|v| *v == ph.text) {
        return Ok(Source::Param(i));
    }
    let (dep, field) = ph
        .text
        .split_once('.')
        .ok_or_else(|| format!("unknown parameter {}", ph.text))?;
    let backend = backends
        .iter()
        .position(|b| *b == dep)
        .ok_or_else(|| format!("unknown backend {dep}"))?;
    if !deps.contains(&backend) {
        deps.push(backend);
    }
    Ok(Source::Field {
        backend,
        path: field.split('.').map(str::to_string).collect(),
    })
}

/// What filling a message reads: the request's values, its query, the answers so far.
pub struct Inputs<'a> {
    pub values: &'a [String],
    /// The client's whole query string.
    pub query: Option<&'a str>,
    pub results: &'a [Input],
    /// The client's body, for `message = "body"`.
    pub body: Option<&'a Bytes>,
    /// Names backends for a failure: the route's backend names.
    pub names: &'a dyn Fn(usize) -> Arc<str>,
    /// `max_request_body`: a message larger than this fails as a body that large does.
    pub limit: u64,
}

/// The message for one call, framed for the wire, with its content-type.
pub fn render(
    c: &Compiled,
    method: &GrpcMethod,
    inputs: &Inputs<'_>,
) -> Result<(Bytes, HeaderValue), Failure> {
    let json = match c {
        Compiled::Body => match inputs.body {
            None => Value::Object(Map::new()),
            Some(b) if b.is_empty() => Value::Object(Map::new()),
            Some(b) => serde_json::from_slice(b)
                .map_err(|_| Failure::BadMessage(Arc::from("the request body is not JSON")))?,
        },
        Compiled::Shape(f) => value(f, inputs)?,
    };
    let framed = method.encode(&json)?;
    if framed.len() as u64 - 5 > inputs.limit {
        return Err(Failure::Client(crate::base::body::ClientFault::TooLarge));
    }
    Ok((framed, crate::upstream::grpc::CONTENT_TYPE))
}

fn value(f: &Fill, inputs: &Inputs<'_>) -> Result<Value, Failure> {
    Ok(match f {
        Fill::Literal(v) => v.clone(),
        Fill::One(source, want) => match read(source, inputs)? {
            Value::String(s) => typed(s, *want),
            v => v,
        },
        Fill::Text(pieces) => {
            let mut s = String::new();
            for p in pieces {
                match p {
                    Piece::Lit(l) => s.push_str(l),
                    Piece::Value(source) => match read(source, inputs)? {
                        Value::String(v) => s.push_str(&v),
                        Value::Null => {}
                        Value::Number(n) => s.push_str(n.as_str()),
                        Value::Bool(b) => s.push_str(if b { "true" } else { "false" }),
                        other => s.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(s)
        }
        Fill::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, f)| Ok((k.clone(), value(f, inputs)?)))
                .collect::<Result<_, Failure>>()?,
        ),
        Fill::Array(items) => Value::Array(
            items
                .iter()
                .map(|f| value(f, inputs))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A text value as its field wants it.
fn typed(s: String, want: Want) -> Value {
    match want {
        Want::Bool if s == "true" => Value::Bool(true),
        Want::Bool if s == "false" => Value::Bool(false),
        Want::Enum => match s.parse::<i32>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(s),
        },
        _ => Value::String(s),
    }
}

fn read(source: &Source, inputs: &Inputs<'_>) -> Result<Value, Failure> {
    Ok(match source {
        Source::Param(i) => Value::String(inputs.values.get(*i).cloned().unwrap_or_default()),
        // A value the client did not send leaves its field at its default.
        Source::Query(name) => query_value(inputs.query, name).map_or(Value::Null, Value::String),
        Source::Field { backend, path } => {
            let answer = match &inputs.results[*backend] {
                Some(Ok(Answer::Value(v))) => v,
                // Backends others read from always decode to a value (see gateway.rs).
                Some(Ok(Answer::Raw(_))) => &Value::Null,
                Some(Err(cause)) => {
                    return Err(Failure::Dependency {
                        dep: (inputs.names)(*backend),
                        cause: Box::new(cause.clone()),
                    });
                }
                None => return Err(Failure::Timeout),
            };
            match lookup(answer, path) {
                Some(v) if !v.is_null() => v.clone(),
                _ => {
                    return Err(Failure::MissingField {
                        dep: (inputs.names)(*backend),
                        field: path.join(".").into(),
                    });
                }
            }
        }
    })
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space,
/// as forms send it).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k) == name).then(|| decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_the_first_wins() {
        assert_eq!(
            query_value(Some("a=1&b=x%20y&b=2"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(query_value(Some("q=a+b"), "q").as_deref(), Some("a b"));
        assert_eq!(query_value(Some("a=1"), "b"), None);
        assert_eq!(query_value(None, "b"), None);
    }

    #[test]
    fn text_takes_the_type_its_field_wants() {
        assert_eq!(typed("true".into(), Want::Bool), Value::Bool(true));
        assert_eq!(typed("yes".into(), Want::Bool), Value::String("yes".into()));
        assert_eq!(typed("2".into(), Want::Enum), Value::from(2));
        assert_eq!(
            typed("FULL".into(), Want::Enum),
            Value::String("FULL".into())
        );
        assert_eq!(typed("42".into(), Want::Any), Value::String("42".into()));
    }
}
