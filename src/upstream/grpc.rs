//! gRPC over the upstream pools (docs/configuration.md#grpc-backends): a unary call is
//! an HTTP/2 POST to `/package.Service/Method` whose body is one length-prefixed
//! protobuf message, and whose answer is one message and a `grpc-status` in the
//! trailers (or in the head alone: a "trailers-only" answer).
//!
//! Messages are built and read by their descriptors (`prost-reflect`) with the proto3
//! JSON mapping, so the merge only ever sees JSON. The framing and status rules are
//! the gRPC specification's ("gRPC over HTTP2"), small enough to keep here rather
//! than pull in a gRPC client stack beside hyper.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions};
use serde_json::Value;

use crate::base::error::{Failure, GrpcCode, GrpcStatus, MAX_GRPC_MESSAGE};
use crate::base::json::Tree;
use crate::state::buffers::Charge;

pub const CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");
pub const TE: HeaderValue = HeaderValue::from_static("trailers");
pub const GRPC_TIMEOUT: header::HeaderName = header::HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_ENCODING: &str = "grpc-encoding";

/// One unary method a backend calls, compiled from its descriptor.
#[derive(Debug)]
pub struct GrpcMethod {
    /// `/package.Service/Method`.
    pub path: String,
    /// `package.Service` and `Method`: the span's `rpc.service` and `rpc.method`.
    pub service: Arc<str>,
    pub method: Arc<str>,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// Marked `NO_SIDE_EFFECTS` or `IDEMPOTENT`: hedged, and retried after a timeout.
    pub idempotent: bool,
    /// Marked `NO_SIDE_EFFECTS`: its answers may be cached and identical calls shared.
    pub side_effect_free: bool,
    /// How its answers are written as JSON straight from their bytes
    /// (`super::proto_json`); `None`: decoded, then written, by prost-reflect.
    pub direct: Option<super::proto_json::Plan>,
}

impl GrpcMethod {
    pub fn new(m: &MethodDescriptor) -> GrpcMethod {
        GrpcMethod {
            path: format!("/{}/{}", m.parent_service().full_name(), m.name()),
            service: Arc::from(m.parent_service().full_name()),
            method: Arc::from(m.name()),
            input: m.input(),
            output: m.output(),
            idempotent: crate::config::grpc::method_is_idempotent(m),
            side_effect_free: crate::config::grpc::method_is_side_effect_free(m),
            direct: super::proto_json::Plan::new(&m.output()),
        }
    }

    /// The request message made from `json` by the proto3 JSON mapping, framed for
    /// the wire. A value that does not convert names its field, never its value.
    pub fn encode(&self, json: &Value) -> Result<Bytes, Failure> {
        let message = DynamicMessage::deserialize(self.input.clone(), Tree(json))
            .map_err(|e| Failure::BadMessage(Arc::from(self.why_not(json, &e))))?;
        Ok(frame(&message.encode_to_vec()))
    }

    /// Which field of `json` does not convert, and how, without the client's value.
    fn why_not(&self, json: &Value, e: &serde_json::Error) -> String {
        let name = self.input.full_name();
        let Value::Object(fields) = json else {
            return format!("{name} must be a JSON object");
        };
        for (key, value) in fields {
            let alone = Value::Object(std::iter::once((key.clone(), value.clone())).collect());
            if let Err(e) = DynamicMessage::deserialize(self.input.clone(), Tree(&alone)) {
                return match crate::config::grpc::field_named(&self.input, key) {
                    None => format!("`{key}` is not a field of {name}"),
                    Some(f) => format!(
                        "field `{key}` ({}): {}",
                        crate::config::grpc::kind_name(&f),
                        masked(&e.to_string())
                    ),
                };
            }
        }
        format!("{name}: {}", masked(&e.to_string()))
    }

    /// The answer as JSON: `grpc-status` judged (from the trailers, or the head of a
    /// trailers-only answer), then the one message decoded (a gzip one within
    /// `limit`, charged to `charge`) and written by the proto3 JSON mapping with
    /// default values included.
    pub fn read(
        &self,
        head: &HeaderMap,
        trailers: Option<&HeaderMap>,
        body: Bytes,
        limit: u64,
        charge: &Charge,
    ) -> Result<Bytes, Failure> {
        let code = status(head, trailers)?;
        if code != GrpcCode::OK {
            return Err(Failure::Grpc(GrpcStatus {
                code,
                message: message(head, trailers),
            }));
        }
        let content_type = head.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
        if !content_type.is_some_and(is_grpc_content_type) {
            return Err(Failure::BadResponse(
                "the answer's content-type is not application/grpc",
            ));
        }
        const UNDECODABLE: Failure =
            Failure::BadResponse("the answer's message does not decode as its type");
        let message = unframe(head, body, limit, charge)?;
        // JSON is about twice the protobuf (names, quotes, defaults).
        let mut out = Vec::with_capacity(message.len() * 2 + 64);
        let direct = match &self.direct {
            Some(plan) => plan.write(&message, &mut out),
            None => Err(super::proto_json::Outcome::Fallback),
        };
        // What the direct writer does not write (or finds malformed) is prost-reflect's
        // to judge: one decoder decides what a valid answer is.
        let json = match direct {
            Ok(()) => Bytes::from(out),
            Err(_) => {
                out.clear();
                let decoded = DynamicMessage::decode(self.output.clone(), message)
                    .map_err(|_| UNDECODABLE)?;
                to_json(&decoded, out)?
            }
        };
        charge.shrink_to(json.len() as u64);
        Ok(json)
    }
}

/// A message as JSON by the proto3 mapping: lowerCamelCase names, fields with
/// default values included (a frontend reads `0`, `""`, `[]` rather than guessing
/// from a missing key), enums by name, 64-bit integers as strings.
fn to_json(message: &DynamicMessage, into: Vec<u8>) -> Result<Bytes, Failure> {
    let mut out = serde_json::Serializer::new(into);
    message
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|_| Failure::BadResponse("the answer's message cannot be written as JSON"))?;
    Ok(Bytes::from(out.into_inner()))
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc; ...`; not
/// `application/grpc-web` nor `+json`.
fn is_grpc_content_type(v: &[u8]) -> bool {
    let Some(rest) = v.strip_prefix(b"application/grpc") else {
        return false;
    };
    rest.is_empty() || rest.starts_with(b"+proto") || rest.starts_with(b";")
}

/// A message with its 5-byte prefix: not compressed, then its length.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The one message of a unary answer: exactly one frame, its length as the prefix
/// says; compressed with `grpc-encoding: gzip`, inflated within `limit`.
fn unframe(head: &HeaderMap, body: Bytes, limit: u64, charge: &Charge) -> Result<Bytes, Failure> {
    const BAD: Failure = Failure::BadResponse("the answer is not one gRPC message frame");
    if body.len() < 5 {
        return Err(BAD);
    }
    let compressed = body[0];
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len || compressed > 1 {
        return Err(BAD);
    }
    let message = body.slice(5..);
    if compressed == 0 {
        return Ok(message);
    }
    let encoding = head
        .get(GRPC_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err(Failure::BadResponse(
            "the answer's message is compressed in a grpc-encoding manifold does not decode",
        ));
    }
    crate::base::coding::decode("gzip", message, limit, &mut |n| charge.grow(n)).map_err(
        |e| match e {
            crate::base::coding::DecodeError::TooLarge => {
                Failure::BadResponse("the message, decoded, is larger than max_response_body")
            }
            crate::base::coding::DecodeError::NoRoom => {
                Failure::BadResponse("the message, decoded, does not fit in buffer_capacity")
            }
            _ => Failure::BadResponse("the answer's message does not decode as gzip"),
        },
    )
}

/// `grpc-status`: the trailers', or the head's (a trailers-only answer). None, or
/// not a number, is not a gRPC answer.
fn status(head: &HeaderMap, trailers: Option<&HeaderMap>) -> Result<GrpcCode, Failure> {
    let value = trailers
        .and_then(|t| t.get(GRPC_STATUS))
        .or_else(|| head.get(GRPC_STATUS))
        .ok_or(Failure::BadResponse("the answer has no grpc-status"))?;
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(GrpcCode)
        .ok_or(Failure::BadResponse(
            "the answer's grpc-status is not a number",
        ))
}

/// `grpc-message`, percent-decoded, at most [`MAX_GRPC_MESSAGE`] characters, control
/// characters dropped.
fn message(head: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<Arc<str>> {
    let raw = trailers
        .and_then(|t| t.get(GRPC_MESSAGE))
        .or_else(|| head.get(GRPC_MESSAGE))?;
    let decoded = percent_encoding::percent_decode(raw.as_bytes()).decode_utf8_lossy();
    let text: String = decoded
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_GRPC_MESSAGE)
        .collect();
    (!text.is_empty()).then(|| Arc::from(text))
}

/// `grpc-timeout` for the time an attempt has left: whole milliseconds, rounded up
/// (at most 8 digits, as the specification allows; longer ones in seconds).
pub fn timeout(left: Duration) -> HeaderValue {
    let ms = left.as_millis().max(1);
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", (left.as_secs()).min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1S"))
}

/// Quoted parts of a conversion error (`invalid type: string "x"`, `unrecognized
/// enum value 'X'`) are the client's values: kept out of answers and logs.
fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

/// `grpc.health.v1.HealthCheckRequest { service }`, framed.
pub fn health_request(service: &str) -> Bytes {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        service: String,
    }
    frame(
        &HealthCheckRequest {
            service: service.to_string(),
        }
        .encode_to_vec(),
    )
}

/// Whether a `Health/Check` answer says SERVING; why not otherwise.
pub fn health_serving(
    head: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<(), String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        status: i32,
    }
    const SERVING: i32 = 1;
    let code = status(head, trailers).map_err(|f| f.describe())?;
    if code != GrpcCode::OK {
        return Err(format!("grpc-status {} {}", code.0, code.name()));
    }
    if body.len() < 5 || body[0] != 0 {
        return Err("the answer is not one uncompressed gRPC message".into());
    }
    let answer = HealthCheckResponse::decode(&body[5..])
        .map_err(|_| "the answer is not a HealthCheckResponse".to_string())?;
    match answer.status {
        SERVING => Ok(()),
        0 => Err("status UNKNOWN".into()),
        2 => Err("status NOT_SERVING".into()),
        3 => Err("status SERVICE_UNKNOWN".into()),
        n => Err(format!("status {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_milliseconds_rounded_up_or_seconds_past_eight_digits() {
        assert_eq!(timeout(Duration::from_micros(1500)), "1m");
        assert_eq!(timeout(Duration::ZERO), "1m");
        assert_eq!(timeout(Duration::from_millis(250)), "250m");
        assert_eq!(timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn quoted_values_are_masked() {
        assert_eq!(
            masked("invalid type: string \"secret\", expected i64"),
            "invalid type: string …, expected i64"
        );
        assert_eq!(
            masked("unrecognized enum value 'X'"),
            "unrecognized enum value …"
        );
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"application/grpc; charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/grpc+json"));
        assert!(!is_grpc_content_type(b"application/json"));
    }

    #[test]
    fn status_and_message_come_from_trailers_or_a_trailers_only_head() {
        let mut head = HeaderMap::new();
        head.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        head.insert(
            GRPC_MESSAGE,
            HeaderValue::from_static("user%2042%20not%20found"),
        );
        assert_eq!(status(&head, None), Ok(GrpcCode::NOT_FOUND));
        assert_eq!(message(&head, None).as_deref(), Some("user 42 not found"));
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(status(&head, Some(&trailers)), Ok(GrpcCode::OK));
        assert!(status(&HeaderMap::new(), None).is_err());
        let long = "x".repeat(500);
        head.insert(GRPC_MESSAGE, HeaderValue::from_str(&long).unwrap());
        assert_eq!(
            message(&head, None).map(|m| m.len()),
            Some(MAX_GRPC_MESSAGE)
        );
    }

    fn get_user() -> GrpcMethod {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos");
        let mut c = protox::Compiler::new([&dir]).unwrap();
        c.include_imports(true)
            .open_files([dir.join("users.proto")])
            .unwrap();
        let pool = c.descriptor_pool();
        let m = pool
            .get_service_by_name("acme.users.v1.UserService")
            .and_then(|s| s.methods().find(|m| m.name() == "GetUser"))
            .unwrap();
        GrpcMethod::new(&m)
    }

    #[test]
    fn a_message_made_from_json_reads_back_as_json_with_its_defaults() {
        let m = get_user();
        assert!(m.idempotent && m.side_effect_free);
        assert_eq!(m.path, "/acme.users.v1.UserService/GetUser");
        let framed = m
            .encode(&serde_json::json!({"id": "12", "view": "FULL", "active": true}))
            .unwrap();
        // id = 1 (varint 12), view = 2 (FULL, 2), active = 3 (true): protobuf's bytes.
        assert_eq!(&framed[5..], &[0x08, 12, 0x10, 2, 0x18, 1]);
        let buffers = crate::state::buffers::Buffers::new(1 << 20);
        let charge = buffers.start(None);
        let mut head = HeaderMap::new();
        head.insert(header::CONTENT_TYPE, CONTENT_TYPE);
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        let answer = m
            .read(&head, Some(&trailers), frame(&[0x08, 7]), 1 << 20, &charge)
            .unwrap();
        let json: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(json["id"], "7");
        assert_eq!(json["displayName"], "");
        assert_eq!(json["tags"], serde_json::json!([]));
        assert!(
            json.get("address").is_none(),
            "an unset message is left out"
        );
        let e = m.encode(&serde_json::json!({"id": "seven"})).unwrap_err();
        let Failure::BadMessage(why) = e else {
            panic!("{e:?}")
        };
        assert!(why.contains("`id`") && !why.contains("seven"), "{why}");
    }

    proptest::proptest! {
        /// Whatever an upstream sends as a body and a status, reading it is an answer
        /// or a failure: never a panic.
        #[test]
        fn any_answer_reads_or_fails_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            status in "[0-9a-z]{0,3}",
            gzip in proptest::prelude::any::<bool>(),
        ) {
            let m = get_user();
            let buffers = crate::state::buffers::Buffers::new(1 << 20);
            let charge = buffers.start(None);
            let mut head = HeaderMap::new();
            head.insert(header::CONTENT_TYPE, CONTENT_TYPE);
            if gzip {
                head.insert(GRPC_ENCODING, HeaderValue::from_static("gzip"));
            }
            let mut trailers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&status) {
                trailers.insert(GRPC_STATUS, v);
            }
            let framed = frame(&body);
            let _ = m.read(&head, Some(&trailers), Bytes::from(body), 1024, &charge);
            let _ = m.read(&head, Some(&trailers), framed, 1024, &charge);
        }

        /// Whatever JSON a client's values make, encoding is a message or a
        /// BAD_PARAMETER failure, never a panic.
        #[test]
        fn any_json_encodes_or_is_refused(key in "[a-zA-Z_]{1,8}", value in ".{0,12}", n in proptest::prelude::any::<i64>()) {
            let m = get_user();
            for v in [Value::from(value.clone()), Value::from(n), serde_json::json!([value.clone()]), serde_json::json!({key.clone(): n})] {
                match m.encode(&serde_json::json!({key.clone(): v})) {
                    Ok(framed) => proptest::prop_assert!(framed.len() >= 5),
                    Err(f) => proptest::prop_assert!(matches!(f, Failure::BadMessage(_))),
                }
            }
        }
    }

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let buffers = crate::state::buffers::Buffers::new(1 << 20);
        let charge = buffers.start(None);
        let head = HeaderMap::new();
        let framed = frame(b"abc");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 3]);
        assert_eq!(
            unframe(&head, framed.clone(), 1024, &charge).unwrap(),
            &b"abc"[..]
        );
        assert!(unframe(&head, framed.slice(..6), 1024, &charge).is_err());
        assert!(unframe(&head, Bytes::from_static(b"\0\0"), 1024, &charge).is_err());
        let two = [&framed[..], &framed[..]].concat();
        assert!(unframe(&head, Bytes::from(two), 1024, &charge).is_err());
    }
}
