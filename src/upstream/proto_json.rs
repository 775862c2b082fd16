//! A gRPC answer's protobuf bytes written straight as JSON by the proto3 mapping, with
//! default values included: what `prost-reflect`'s serializer writes for the message it
//! decodes, without building that message first (measured in docs/operations.md: the
//! decode-then-serialize path spends most of its time building and walking a
//! `DynamicMessage`).
//!
//! Small on purpose: proto3 messages of scalars, enums, strings, bytes, nested
//! messages, repeated fields (packed or not) and maps. Anything else — the
//! `google.protobuf` types' JSON forms, a message field given twice (protobuf merges
//! them), two members of one oneof, bytes it finds malformed — is left to
//! `prost-reflect`: [`Plan::write`] refuses the whole answer ([`Outcome`]), or writes
//! that part through it. The tests and the `grpc` fuzz target hold it to prost-reflect's
//! JSON, and to never accepting what prost-reflect refuses.

use base64::Engine as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, SerializeOptions};

/// Why the JSON was not written. Either way the caller hands the bytes to
/// prost-reflect, which decides what a valid message is: its decoder is more lenient
/// in places (a map field given as a varint reads as an empty entry), and one rule for
/// what a valid answer is beats two.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bytes are not what this writer reads as a message of this type.
    Invalid,
    /// The message needs what only `prost-reflect` does; nothing useful was written.
    Fallback,
}

/// How to write one message type and every type it holds: what the descriptors say,
/// looked up once when the method is compiled (asking a descriptor for a field's kind
/// costs more than writing the field).
#[derive(Debug)]
pub struct Plan {
    /// The answer's type first, then every message type it reaches.
    messages: Vec<MessagePlan>,
}

#[derive(Debug, Default)]
struct MessagePlan {
    /// In field-number order, as the JSON is written.
    fields: Vec<FieldPlan>,
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// `"jsonName":`, escaped once.
    key: Box<[u8]>,
    ty: Ty,
    repeated: bool,
    /// A map's key and value types (`repeated` is set too).
    map: Option<Box<(Ty, Ty)>>,
    /// Written only when set (a message, a proto3 `optional`, a oneof member).
    presence: bool,
    /// Its oneof, by index in its message.
    oneof: Option<u32>,
}

#[derive(Debug, Clone)]
enum Ty {
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Bool,
    Fixed32,
    Sfixed32,
    Float,
    Fixed64,
    Sfixed64,
    Double,
    String,
    Bytes,
    Enum(std::sync::Arc<EnumPlan>),
    /// By index in [`Plan::messages`].
    Message(usize),
    /// A `google.protobuf` type: its JSON form is prost-reflect's to write.
    WellKnown(MessageDescriptor),
}

#[derive(Debug)]
struct EnumPlan {
    /// Each value's number and its name, quoted.
    names: Vec<(i32, Box<[u8]>)>,
    default: Box<[u8]>,
}

impl Plan {
    /// The plan for answers of type `m`, or `None` when some type it reaches is beyond
    /// this writer (proto2 or editions, extensions, groups): prost-reflect writes those.
    pub fn new(m: &MessageDescriptor) -> Option<Plan> {
        let mut plan = Plan {
            messages: Vec::new(),
        };
        let mut names = Vec::new();
        plan.add(m, &mut names)?;
        Some(plan)
    }

    fn add(&mut self, m: &MessageDescriptor, names: &mut Vec<String>) -> Option<usize> {
        if let Some(i) = names.iter().position(|n| n == m.full_name()) {
            return Some(i);
        }
        if m.parent_file().syntax() != prost_reflect::Syntax::Proto3
            || m.extension_ranges().len() > 0
        {
            return None;
        }
        let at = self.messages.len();
        names.push(m.full_name().to_string());
        self.messages.push(MessagePlan::default());
        let mut fields = Vec::new();
        for f in m.fields() {
            if f.is_group() {
                return None;
            }
            let mut key = Vec::new();
            string(&mut key, f.json_name());
            key.push(b':');
            let map = if f.is_map() {
                let Kind::Message(entry) = f.kind() else {
                    return None;
                };
                let k = self.ty(&entry.map_entry_key_field().kind(), names)?;
                let v = self.ty(&entry.map_entry_value_field().kind(), names)?;
                Some(Box::new((k, v)))
            } else {
                None
            };
            let ty = match &map {
                Some(_) => Ty::Bytes,
                None => self.ty(&f.kind(), names)?,
            };
            fields.push(FieldPlan {
                number: f.number(),
                key: key.into(),
                ty,
                repeated: f.is_list() || f.is_map(),
                map,
                presence: f.supports_presence(),
                oneof: f
                    .containing_oneof()
                    .and_then(|o| m.oneofs().position(|x| x.name() == o.name()))
                    .map(|i| i as u32),
            });
        }
        fields.sort_by_key(|f| f.number);
        self.messages[at].fields = fields;
        Some(at)
    }

    fn ty(&mut self, kind: &Kind, names: &mut Vec<String>) -> Option<Ty> {
        Some(match kind {
            Kind::Int32 => Ty::Int32,
            Kind::Int64 => Ty::Int64,
            Kind::Uint32 => Ty::Uint32,
            Kind::Uint64 => Ty::Uint64,
            Kind::Sint32 => Ty::Sint32,
            Kind::Sint64 => Ty::Sint64,
            Kind::Bool => Ty::Bool,
            Kind::Fixed32 => Ty::Fixed32,
            Kind::Sfixed32 => Ty::Sfixed32,
            Kind::Float => Ty::Float,
            Kind::Fixed64 => Ty::Fixed64,
            Kind::Sfixed64 => Ty::Sfixed64,
            Kind::Double => Ty::Double,
            Kind::String => Ty::String,
            Kind::Bytes => Ty::Bytes,
            Kind::Enum(e) => {
                let quoted = |name: &str| {
                    let mut q = Vec::new();
                    string(&mut q, name);
                    q.into_boxed_slice()
                };
                Ty::Enum(std::sync::Arc::new(EnumPlan {
                    names: e.values().map(|v| (v.number(), quoted(v.name()))).collect(),
                    default: quoted(e.default_value().name()),
                }))
            }
            Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => {
                Ty::WellKnown(m.clone())
            }
            Kind::Message(m) => Ty::Message(self.add(m, names)?),
        })
    }

    /// Writes the answer `bytes` (of the plan's type) as JSON into `out`.
    pub fn write(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Outcome> {
        self.message(0, bytes, out)
    }

    fn message(&self, at: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Outcome> {
        let fields = &self.messages[at].fields;
        let mut seen: Vec<Seen<'_>> = Vec::new();
        seen.resize_with(fields.len(), || Seen::None);
        // The oneof member seen, per oneof index.
        let mut oneofs: Vec<(u32, u32)> = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (number, raw) = field(&mut rest)?;
            let Ok(i) = fields.binary_search_by_key(&number, |f| f.number) else {
                continue; // an unknown field: dropped, as prost-reflect's JSON drops it
            };
            let f = &fields[i];
            check(f, &raw)?;
            if let Some(o) = f.oneof {
                match oneofs.iter().find(|(index, _)| *index == o) {
                    Some((_, n)) if *n != number => return Err(Outcome::Fallback),
                    Some(_) => {}
                    None => oneofs.push((o, number)),
                }
            }
            let slot = &mut seen[i];
            if f.repeated {
                match slot {
                    Seen::Many(v) => v.push(raw),
                    _ => *slot = Seen::Many(vec![raw]),
                }
            } else {
                if matches!(f.ty, Ty::Message(_) | Ty::WellKnown(_)) && !matches!(slot, Seen::None)
                {
                    return Err(Outcome::Fallback); // protobuf merges the two
                }
                *slot = Seen::One(raw);
            }
        }
        out.push(b'{');
        let mut first = true;
        for (f, s) in fields.iter().zip(&seen) {
            if matches!(s, Seen::None) && f.presence {
                continue;
            }
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(&f.key);
            match (s, &f.map) {
                (Seen::None, Some(_)) => out.extend_from_slice(b"{}"),
                (Seen::None, None) if f.repeated => out.extend_from_slice(b"[]"),
                (Seen::None, None) => self.default(&f.ty, out)?,
                (Seen::One(raw), _) => self.value(&f.ty, raw, out)?,
                (Seen::Many(raws), Some(kv)) => self.map(&kv.0, &kv.1, raws, out)?,
                (Seen::Many(raws), None) => self.list(&f.ty, raws, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// A repeated field's values: each occurrence one value, or a packed run of them.
    fn list(&self, ty: &Ty, raws: &[Raw<'_>], out: &mut Vec<u8>) -> Result<(), Outcome> {
        out.push(b'[');
        let mut first = true;
        for raw in raws {
            match (raw, packed_width(ty)) {
                (Raw::Bytes(run), Some(width)) => {
                    let mut rest = *run;
                    while !rest.is_empty() {
                        let raw = match width {
                            0 => Raw::Varint(varint(&mut rest)?),
                            4 => Raw::Fixed32(take(&mut rest, 4)?),
                            _ => Raw::Fixed64(take(&mut rest, 8)?),
                        };
                        if !std::mem::take(&mut first) {
                            out.push(b',');
                        }
                        self.value(ty, &raw, out)?;
                    }
                }
                _ => {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    self.value(ty, raw, out)?;
                }
            }
        }
        out.push(b']');
        Ok(())
    }

    /// A map's entries: key 1 and value 2 of each entry message; a key given twice
    /// keeps its last value, as a decoded map does.
    fn map(&self, kt: &Ty, vt: &Ty, raws: &[Raw<'_>], out: &mut Vec<u8>) -> Result<(), Outcome> {
        let mut entries: Vec<(Vec<u8>, Option<Raw<'_>>)> = Vec::with_capacity(raws.len());
        for raw in raws {
            let Raw::Bytes(mut b) = *raw else {
                return Err(Outcome::Invalid);
            };
            let (mut key, mut val) = (None, None);
            while !b.is_empty() {
                let (number, raw) = field(&mut b)?;
                match number {
                    1 => {
                        wire_fits(kt, &raw, false)?;
                        key = Some(raw);
                    }
                    2 if matches!(vt, Ty::Message(_) | Ty::WellKnown(_)) && val.is_some() => {
                        return Err(Outcome::Fallback);
                    }
                    2 => {
                        wire_fits(vt, &raw, false)?;
                        val = Some(raw);
                    }
                    _ => {}
                }
            }
            // Object keys are strings, whatever the key's type.
            let mut text = Vec::new();
            match key {
                Some(k) => self.value(kt, &k, &mut text)?,
                None => self.default(kt, &mut text)?,
            }
            if text.first() != Some(&b'"') {
                text.insert(0, b'"');
                text.push(b'"');
            }
            match entries.iter_mut().find(|(k, _)| *k == text) {
                Some(e) => e.1 = val,
                None => entries.push((text, val)),
            }
        }
        out.push(b'{');
        for (i, (key, val)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            match val {
                Some(v) => self.value(vt, v, out)?,
                None => self.default(vt, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn value(&self, ty: &Ty, raw: &Raw<'_>, out: &mut Vec<u8>) -> Result<(), Outcome> {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = match (ty, *raw) {
            (Ty::Int32, Raw::Varint(v)) => write!(out, "{}", v as i32),
            (Ty::Uint32, Raw::Varint(v)) => write!(out, "{}", v as u32),
            (Ty::Sint32, Raw::Varint(v)) => write!(out, "{}", zigzag32(v as u32)),
            (Ty::Int64, Raw::Varint(v)) => write!(out, "\"{}\"", v as i64),
            (Ty::Uint64, Raw::Varint(v)) => write!(out, "\"{v}\""),
            (Ty::Sint64, Raw::Varint(v)) => write!(out, "\"{}\"", zigzag64(v)),
            (Ty::Bool, Raw::Varint(v)) => out.write_all(if v != 0 { b"true" } else { b"false" }),
            (Ty::Enum(e), Raw::Varint(v)) => match e.names.iter().find(|(n, _)| *n == v as i32) {
                Some((_, name)) => out.write_all(name),
                None => write!(out, "{}", v as i32),
            },
            (Ty::Fixed32, Raw::Fixed32(b)) => write!(out, "{}", u32::from_le_bytes(four(b))),
            (Ty::Sfixed32, Raw::Fixed32(b)) => write!(out, "{}", i32::from_le_bytes(four(b))),
            (Ty::Float, Raw::Fixed32(b)) => {
                let v = f32::from_le_bytes(four(b));
                float(out, f64::from(v), |out| {
                    let _ = serde_json::to_writer(out, &v);
                });
                Ok(())
            }
            (Ty::Fixed64, Raw::Fixed64(b)) => write!(out, "\"{}\"", u64::from_le_bytes(eight(b))),
            (Ty::Sfixed64, Raw::Fixed64(b)) => write!(out, "\"{}\"", i64::from_le_bytes(eight(b))),
            (Ty::Double, Raw::Fixed64(b)) => {
                let v = f64::from_le_bytes(eight(b));
                float(out, v, |out| {
                    let _ = serde_json::to_writer(out, &v);
                });
                Ok(())
            }
            (Ty::String, Raw::Bytes(b)) => {
                string(out, std::str::from_utf8(b).map_err(|_| Outcome::Invalid)?);
                Ok(())
            }
            (Ty::Bytes, Raw::Bytes(b)) => {
                out.push(b'"');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
                out.push(b'"');
                Ok(())
            }
            (Ty::WellKnown(m), Raw::Bytes(b)) => return well_known(m, b, out),
            (Ty::Message(at), Raw::Bytes(b)) => return self.message(*at, b, out),
            _ => return Err(Outcome::Invalid),
        };
        Ok(())
    }

    /// A value's default as the JSON mapping writes it (a message's: the empty
    /// message, its own defaults included).
    fn default(&self, ty: &Ty, out: &mut Vec<u8>) -> Result<(), Outcome> {
        match ty {
            Ty::Enum(e) => out.extend_from_slice(&e.default),
            Ty::String | Ty::Bytes => out.extend_from_slice(b"\"\""),
            Ty::Bool => out.extend_from_slice(b"false"),
            Ty::Int64 | Ty::Uint64 | Ty::Sint64 | Ty::Fixed64 | Ty::Sfixed64 => {
                out.extend_from_slice(b"\"0\"");
            }
            Ty::Float => {
                let _ = serde_json::to_writer(&mut *out, &0f32);
            }
            Ty::Double => {
                let _ = serde_json::to_writer(&mut *out, &0f64);
            }
            Ty::WellKnown(m) => return well_known(m, &[], out),
            Ty::Message(at) => return self.message(*at, &[], out),
            _ => out.push(b'0'),
        }
        Ok(())
    }
}

enum Seen<'a> {
    None,
    One(Raw<'a>),
    Many(Vec<Raw<'a>>),
}

#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(&'a [u8]),
    Fixed32(&'a [u8]),
    Bytes(&'a [u8]),
}

/// A field's occurrence has the wire type its type is written in (a repeated scalar may
/// come packed), and a string is UTF-8: checked as it is read, as protobuf's decoder
/// does, even when a later occurrence replaces it.
fn check(f: &FieldPlan, raw: &Raw<'_>) -> Result<(), Outcome> {
    if f.map.is_some() {
        return match raw {
            Raw::Bytes(_) => Ok(()),
            _ => Err(Outcome::Invalid),
        };
    }
    wire_fits(&f.ty, raw, f.repeated)
}

fn wire_fits(ty: &Ty, raw: &Raw<'_>, repeated: bool) -> Result<(), Outcome> {
    let ok = match (ty, raw) {
        (Ty::String, Raw::Bytes(b)) => std::str::from_utf8(b).is_ok(),
        (Ty::Bytes | Ty::Message(_) | Ty::WellKnown(_), Raw::Bytes(_)) => true,
        (_, Raw::Bytes(_)) => repeated && packed_width(ty).is_some(),
        (_, Raw::Varint(_)) => packed_width(ty) == Some(0),
        (_, Raw::Fixed32(_)) => packed_width(ty) == Some(4),
        (_, Raw::Fixed64(_)) => packed_width(ty) == Some(8),
    };
    if ok { Ok(()) } else { Err(Outcome::Invalid) }
}

/// One field of a message: its number and its raw value.
fn field<'a>(rest: &mut &'a [u8]) -> Result<(u32, Raw<'a>), Outcome> {
    let key = varint(rest)?;
    if key >> 3 == 0 || key > u64::from(u32::MAX) {
        return Err(Outcome::Invalid);
    }
    let raw = match key & 7 {
        0 => Raw::Varint(varint(rest)?),
        1 => Raw::Fixed64(take(rest, 8)?),
        2 => {
            let len = usize::try_from(varint(rest)?).map_err(|_| Outcome::Invalid)?;
            Raw::Bytes(take(rest, len)?)
        }
        5 => Raw::Fixed32(take(rest, 4)?),
        // Groups (3, 4) and anything else: left to prost-reflect, which judges them.
        _ => return Err(Outcome::Fallback),
    };
    Ok(((key >> 3) as u32, raw))
}

fn varint(b: &mut &[u8]) -> Result<u64, Outcome> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(Outcome::Invalid)?;
        *b = rest;
        // A tenth byte holds one bit at most (protobuf's own decoder refuses more).
        if i == 9 && byte > 1 {
            return Err(Outcome::Invalid);
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(Outcome::Invalid)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], Outcome> {
    if b.len() < n {
        return Err(Outcome::Invalid);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn string(out: &mut Vec<u8>, s: &str) {
    // serde_json's own escaping, so the two writers agree byte for byte.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// How a packed run of this type is read: varints (0), or fixed 4 or 8 bytes; `None`
/// for types that are never packed.
fn packed_width(ty: &Ty) -> Option<u8> {
    match ty {
        Ty::Int32
        | Ty::Int64
        | Ty::Uint32
        | Ty::Uint64
        | Ty::Sint32
        | Ty::Sint64
        | Ty::Bool
        | Ty::Enum(_) => Some(0),
        Ty::Fixed32 | Ty::Sfixed32 | Ty::Float => Some(4),
        Ty::Fixed64 | Ty::Sfixed64 | Ty::Double => Some(8),
        _ => None,
    }
}

/// Non-finite numbers are strings in the JSON mapping.
fn float(out: &mut Vec<u8>, v: f64, finite: impl FnOnce(&mut Vec<u8>)) {
    if v.is_finite() {
        finite(out);
    } else if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

/// `google.protobuf` types have JSON forms of their own: written by prost-reflect.
fn well_known(m: &MessageDescriptor, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Outcome> {
    let message = DynamicMessage::decode(m.clone(), bytes).map_err(|_| Outcome::Invalid)?;
    let mut ser = serde_json::Serializer::new(&mut *out);
    message
        .serialize_with_options(
            &mut ser,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|_| Outcome::Invalid)
}

fn four(b: &[u8]) -> [u8; 4] {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    a
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    a
}

fn zigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::{Value, json};

    fn kinds() -> MessageDescriptor {
        user()
            .parent_pool()
            .get_message_by_name("acme.users.v1.Kinds")
            .unwrap()
    }

    fn any_kinds() -> impl Strategy<Value = Value> {
        (
            (any::<i32>(), any::<i32>(), any::<u32>(), any::<u32>(), any::<i32>()),
            (any::<i64>(), any::<u64>(), any::<i64>(), any::<f32>()),
            prop::collection::vec(any::<u8>(), 0..6),
            prop::collection::vec(any::<i32>(), 0..4),
            prop::collection::vec(any::<f64>(), 0..3),
            prop::collection::vec((any::<i32>(), "[a-z]{0,3}"), 0..3),
            prop::collection::vec((any::<bool>(), 0..3i32), 0..3),
            prop_oneof![Just(None), "[a-z]{0,4}".prop_map(|s| Some(json!({"text": s}))), "[a-z]{0,4}".prop_map(|c| Some(json!({"where": {"city": c}})))],
            prop::option::of(any::<i32>()),
        )
            .prop_map(|(a, b, raw, packed, doubles, places, flags, choice, maybe)| {
                use base64::Engine as _;
                let fl = if b.3.is_finite() { json!(b.3) } else { json!("NaN") };
                let mut v = json!({
                    "i32": a.0, "s32": a.1, "u32": a.2, "f32": a.3, "sf32": a.4,
                    "s64": b.0.to_string(), "f64": b.1.to_string(), "sf64": b.2.to_string(), "fl": fl,
                    "raw": base64::engine::general_purpose::STANDARD.encode(raw),
                    "packed": packed,
                    "doubles": doubles.into_iter().map(|d| if d.is_finite() { json!(d) } else { json!("Infinity") }).collect::<Vec<_>>(),
                    "places": places.into_iter().map(|(k, c)| (k.to_string(), json!({"city": c}))).collect::<serde_json::Map<_, _>>(),
                    "flags": flags.into_iter().map(|(k, f)| (k.to_string(), json!(f))).collect::<serde_json::Map<_, _>>(),
                });
                if let Some(Value::Object(c)) = choice {
                    for (k, x) in c {
                        v[k] = x;
                    }
                }
                if let Some(m) = maybe {
                    v["maybe"] = json!(m);
                }
                let child = v.clone();
                v["children"] = json!([child]);
                v
            })
    }

    fn user() -> MessageDescriptor {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos");
        let mut c = protox::Compiler::new([&dir]).unwrap();
        c.include_imports(true)
            .open_files([dir.join("users.proto")])
            .unwrap();
        c.descriptor_pool()
            .get_message_by_name("acme.users.v1.User")
            .unwrap()
    }

    /// prost-reflect's answer: decoded, then written with defaults.
    fn theirs(m: &MessageDescriptor, bytes: &[u8]) -> Option<Value> {
        let message = DynamicMessage::decode(m.clone(), bytes).ok()?;
        let mut ser = serde_json::Serializer::new(Vec::new());
        message
            .serialize_with_options(
                &mut ser,
                &SerializeOptions::new().skip_default_fields(false),
            )
            .unwrap();
        Some(serde_json::from_slice(&ser.into_inner()).unwrap())
    }

    fn ours(m: &MessageDescriptor, bytes: &[u8]) -> Result<Value, Outcome> {
        let mut out = Vec::new();
        Plan::new(m)
            .expect("a proto3 message")
            .write(bytes, &mut out)?;
        Ok(serde_json::from_slice(&out).expect("valid JSON"))
    }

    /// What the direct writer writes is what prost-reflect writes, and it never
    /// accepts what prost-reflect refuses; what it does not write, prost-reflect judges.
    fn agree(m: &MessageDescriptor, bytes: &[u8]) -> Result<(), TestCaseError> {
        match (ours(m, bytes), theirs(m, bytes)) {
            (Ok(a), Some(b)) => prop_assert_eq!(a, b),
            (Ok(a), None) => prop_assert!(false, "ours {a}, but prost-reflect refuses it"),
            (Err(_), _) => {}
        }
        Ok(())
    }

    /// Found by the `grpc` fuzz target: prost-reflect reads a map field sent as a
    /// varint as one empty entry; the direct writer hands such bytes to it.
    #[test]
    fn a_map_field_sent_as_a_varint_is_prost_reflects_to_judge() {
        let m = user();
        assert!(ours(&m, &[0x40, 0x00]).is_err());
        assert_eq!(
            theirs(&m, &[0x40, 0x00]).unwrap()["labels"],
            json!({"": ""})
        );
    }

    fn users() -> impl Strategy<Value = Value> {
        (
            any::<i64>(),
            "\\PC{0,12}",
            0..4i32,
            prop::collection::vec("[a-z\"\\\\é]{0,4}", 0..3),
            prop::option::of((0..4_000_000_000i64, 0..1_000_000_000i32)),
            prop::option::of(("[a-z]{0,5}", "[A-Z]{0,2}")),
            any::<i32>(),
            prop::collection::vec(("[a-z]{0,3}", "[a-z]{0,3}"), 0..3),
            prop::option::of("[a-z]{0,4}"),
            any::<u64>(),
            any::<bool>(),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), any::<f64>()],
        )
            .prop_map(|(id, name, view, tags, created, address, age, labels, nick, big, active, score)| {
                let mut u = json!({
                    "id": id.to_string(), "displayName": name, "view": view, "tags": tags,
                    "age": age, "labels": labels.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
                    "big": big.to_string(), "active": active,
                    "score": if score.is_finite() { json!(score) } else if score.is_nan() { json!("NaN") } else { json!("Infinity") },
                });
                if let Some((s, n)) = created {
                    let at = std::time::UNIX_EPOCH
                        + std::time::Duration::new(s.unsigned_abs(), n.unsigned_abs());
                    u["created"] = json!(humantime::format_rfc3339_nanos(at).to_string());
                }
                if let Some((city, country)) = address {
                    u["address"] = json!({"city": city, "country": country});
                }
                if let Some(n) = nick {
                    u["nickname"] = json!(n);
                }
                u
            })
    }

    #[test]
    fn the_users_answer_of_the_tests_is_written_alike() {
        let m = user();
        assert!(Plan::new(&m).is_some());
        let v = json!({"id": "7", "displayName": "Ann", "view": "FULL", "tags": ["a"],
                       "created": "2024-05-01T12:00:00Z", "labels": {"k": "v"},
                       "nickname": "x", "big": "18446744073709551615", "score": 1.5});
        let bytes = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&v))
            .unwrap()
            .encode_to_vec();
        assert_eq!(ours(&m, &bytes).unwrap(), theirs(&m, &bytes).unwrap());
        // No bytes: every default, the unset messages left out.
        assert_eq!(ours(&m, &[]).unwrap(), theirs(&m, &[]).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any User, and two of them back to back (protobuf merges them: the last
        /// scalar wins, lists append, a message given twice is left to prost-reflect).
        #[test]
        fn any_message_is_written_as_prost_reflect_writes_it(a in users(), b in users()) {
            let m = user();
            let one = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&a)).unwrap().encode_to_vec();
            let two = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&b)).unwrap().encode_to_vec();
            agree(&m, &one)?;
            prop_assert!(ours(&m, &one).is_ok(), "a plain message is written directly");
            agree(&m, &[one.as_slice(), two.as_slice()].concat())?;
        }

        /// Every kind of field (packed runs, maps with message and enum values, a
        /// oneof, an optional), alone and two messages back to back.
        #[test]
        fn every_kind_is_written_as_prost_reflect_writes_it(a in any_kinds(), b in any_kinds(), bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            let m = kinds();
            let one = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&a)).unwrap().encode_to_vec();
            let two = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&b)).unwrap().encode_to_vec();
            agree(&m, &one)?;
            prop_assert!(ours(&m, &one).is_ok(), "a plain message is written directly");
            agree(&m, &[one.as_slice(), two.as_slice()].concat())?;
            agree(&m, &bytes)?;
        }

        /// Any bytes: the same JSON, or refused by both.
        #[test]
        fn any_bytes_are_judged_as_prost_reflect_judges_them(
            bytes in prop::collection::vec(any::<u8>(), 0..48),
            a in users(),
            cut in any::<prop::sample::Index>(),
        ) {
            let m = user();
            agree(&m, &bytes)?;
            let good = DynamicMessage::deserialize(m.clone(), crate::base::json::Tree(&a)).unwrap().encode_to_vec();
            let at = cut.index(good.len() + 1);
            agree(&m, &good[..at])?;
            let mut flipped = good.clone();
            if !flipped.is_empty() {
                let i = at % flipped.len();
                flipped[i] ^= 0x5a;
            }
            agree(&m, &flipped)?;
        }
    }
}
