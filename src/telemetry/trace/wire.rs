//! The few protobuf pieces OTLP spans need, written directly (field numbers from
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`).

use std::time::SystemTime;

use opentelemetry::trace::SpanKind;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

pub fn bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// The key and length of a length-delimited field whose body is written next.
pub fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Bytes taken by a length-delimited field with a body of `len` bytes (tags < 16).
pub fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

pub fn varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

pub fn fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn fixed32(tag: u32, v: u32, out: &mut Vec<u8>) {
    encode_key(tag, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&v.to_le_bytes());
}

pub enum AnyValue<'a> {
    Str(&'a str),
    /// A string given in pieces, written as one (no joining allocation).
    Parts(&'a [&'a str]),
    Int(i64),
    Bool(bool),
}

/// `Span.attributes` (9): `KeyValue { key = 1; AnyValue value = 2 }`, where
/// `AnyValue { string_value = 1; bool_value = 2; int_value = 3 }`.
pub fn attribute(key: &str, value: AnyValue<'_>, out: &mut Vec<u8>) {
    let any_len = match value {
        AnyValue::Str(s) => field_len(s.len()),
        AnyValue::Parts(p) => field_len(p.iter().map(|s| s.len()).sum()),
        AnyValue::Int(i) => 1 + encoded_len_varint(i as u64),
        AnyValue::Bool(_) => 2,
    };
    let kv_len = field_len(key.len()) + field_len(any_len);
    header(9, kv_len, out);
    bytes(1, key.as_bytes(), out);
    header(2, any_len, out);
    match value {
        AnyValue::Str(s) => bytes(1, s.as_bytes(), out),
        AnyValue::Parts(p) => {
            header(1, p.iter().map(|s| s.len()).sum(), out);
            for s in p {
                out.extend_from_slice(s.as_bytes());
            }
        }
        AnyValue::Bool(b) => varint(2, u64::from(b), out),
        // int64: the two's complement as a varint.
        AnyValue::Int(i) => varint(3, i as u64, out),
    }
}

/// `Span.status` (15): `Status { message = 2; code = 3 (ERROR = 2) }`.
pub fn status_error(message: &str, out: &mut Vec<u8>) {
    header(15, field_len(message.len()) + 2, out);
    bytes(2, message.as_bytes(), out);
    varint(3, 2, out);
}

pub fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
