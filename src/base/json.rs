//! What JSON manifold takes from an upstream: one rule for every route, shaped or not.
//!
//! An answer placed in the response unchanged is never built into a tree (see
//! `merge::Decode`), so its text must be checked on its own, and checked the same way
//! as the answers that are parsed: what serde_json parses into a value, with every
//! number finite as an `f64` (`1e999999` is refused; its exact text is kept otherwise,
//! see `arbitrary_precision`), nesting at most 127 deep, strings without control
//! characters or lone surrogates, and all of it UTF-8. [`validate`] is that rule, in one
//! pass and without allocating; the tests and the fuzz target hold it to serde_json's
//! own parser.

/// serde_json's recursion limit: a 128th nested array or object is refused.
const MAX_DEPTH: usize = 128;

/// Why a text is not JSON, and where (a byte offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub at: usize,
    pub what: &'static str,
}

/// Checks that `text` is one JSON value (surrounding whitespace allowed) by the rule
/// above. Text that passes is UTF-8: strings are checked as they are read (most are
/// ASCII and need nothing more), and any other non-ASCII byte is out of the grammar.
pub fn validate(text: &[u8]) -> Result<(), Invalid> {
    validate_at(text, &[]).map(|_| ())
}

/// Where the value at a path of object keys lies, found by [`validate_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its text, as a byte range.
    At(std::ops::Range<usize>),
    /// Not there (a key missing, or a scalar on the way).
    Missing,
    /// An array on the way: the path applies to each element, which takes a tree.
    ThroughArray,
}

/// [`validate`], finding the value at `target` in the same pass (a backend's `target`,
/// kept as text). Where a key repeats, the last one counts, as in a parsed map.
pub fn validate_at(text: &[u8], target: &[String]) -> Result<Target, Invalid> {
    let mut p = Parser { text, at: 0 };
    p.ws();
    let found = p.value(target)?;
    p.ws();
    if p.at != text.len() {
        return Err(p.fail("trailing characters"));
    }
    Ok(found)
}

/// Each member of the object `text` holds, in the order written, for text that
/// [`validate_at`] passed (it is not checked again here): its key as written between
/// the quotes (escapes and all), and its value's text. `None` when the text is not an
/// object, or when `each` says stop.
pub fn members<'t>(
    text: &'t [u8],
    mut each: impl FnMut(&'t [u8], &'t [u8]) -> Option<()>,
) -> Option<()> {
    let mut p = Parser { text, at: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return None;
    }
    p.at += 1;
    p.ws();
    if p.peek() == Some(b'}') {
        return Some(());
    }
    loop {
        if p.peek() != Some(b'"') {
            return None;
        }
        let key = p.at + 1;
        p.string().ok()?;
        let key = &text[key..p.at - 1];
        p.ws();
        if p.peek() != Some(b':') {
            return None;
        }
        p.at += 1;
        p.ws();
        let value = p.at;
        // One whole value: `value` returns where its containers close.
        p.value(&[]).ok()?;
        each(key, &text[value..p.at])?;
        p.ws();
        match p.peek() {
            Some(b',') => {
                p.at += 1;
                p.ws();
            }
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

/// Whether an object key's raw text (escapes and all) is `want`.
fn key_is(raw: &[u8], want: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == want.as_bytes();
    }
    let quoted = [&b"\""[..], raw, &b"\""[..]].concat();
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == want)
}

/// What the value being read is to the target path.
#[derive(Clone, Copy)]
enum Role {
    Off,
    /// On the path: an object to look into for `target[i]`.
    Descend(usize),
    /// The target itself.
    Target,
}

#[derive(Clone, Copy)]
struct Frame {
    object: bool,
    /// In an object on the target path: the index of the key to match.
    seg: Option<usize>,
}

/// Whether every number in a parsed value is a finite `f64`: with the parser's own
/// checks (nesting, strings), the same rule as [`validate`] for answers that are parsed.
pub fn all_finite(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => finite(n.as_str().as_bytes()),
        serde_json::Value::Array(a) => a.iter().all(all_finite),
        serde_json::Value::Object(o) => o.values().all(all_finite),
        _ => true,
    }
}

/// Whether a JSON number's text has an exponent (`e` or `E`).
pub fn has_exponent(number: &[u8]) -> bool {
    number.iter().any(|&c| c | 0x20 == b'e')
}

/// Whether a JSON number's text is a finite `f64` (the grammar is checked already).
pub fn finite(number: &[u8]) -> bool {
    // Below 309 digits and without an exponent, a number cannot overflow an f64.
    if number.len() < 309 && !has_exponent(number) {
        return true;
    }
    // The grammar let only ASCII through, so this is a str.
    std::str::from_utf8(number).is_ok_and(|n| n.parse::<f64>().is_ok_and(f64::is_finite))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is zero; the lowest one set is exact (bits
/// above a zero byte may be set falsely, which only the lowest-first reader ignores).
fn zero(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The high bit of each byte of `x` below `n` (n ≤ 128), lowest one exact as above.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn fail(&self, what: &'static str) -> Invalid {
        Invalid { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> Result<(), Invalid> {
        if self.text[self.at..].starts_with(lit) {
            self.at += lit.len();
            Ok(())
        } else {
            Err(self.fail("expected a value"))
        }
    }

    /// One value, iteratively: `stack` holds the open containers. With a `target`
    /// path, also where its value lies, as [`Target`] says.
    fn value(&mut self, target: &[String]) -> Result<Target, Invalid> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut found = Target::Missing;
        let mut through_array = false;
        // The target's value: where it starts, and how many containers hold it.
        let mut pending: Option<(usize, usize)> = None;
        let mut role = if target.is_empty() {
            Role::Off
        } else {
            Role::Descend(0)
        };
        loop {
            // A value, in `role`. A later duplicate key wins, as in a parsed map.
            match role {
                Role::Off => {}
                Role::Descend(_) => found = Target::Missing,
                Role::Target => {
                    found = Target::Missing;
                    pending = Some((self.at, stack.len()));
                }
            }
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let object = self.peek() == Some(b'{');
                    if stack.len() + 1 >= MAX_DEPTH {
                        return Err(self.fail("nested too deep"));
                    }
                    let seg = match role {
                        Role::Descend(i) if object => Some(i),
                        Role::Descend(_) => {
                            through_array = true;
                            None
                        }
                        _ => None,
                    };
                    self.at += 1;
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        stack.push(Frame { object, seg });
                        role = if object {
                            self.member(seg, target)?
                        } else {
                            Role::Off
                        };
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.eat(b"true")?,
                Some(b'f') => self.eat(b"false")?,
                Some(b'n') => self.eat(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.fail("expected a value")),
            }
            // After a value: the next element or member, or the end of containers.
            loop {
                if let Some((start, depth)) = pending
                    && depth == stack.len()
                {
                    found = Target::At(start..self.at);
                    pending = None;
                }
                let Some(&Frame { object, seg }) = stack.last() else {
                    return Ok(if through_array {
                        Target::ThroughArray
                    } else {
                        found
                    });
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        self.ws();
                        role = if object {
                            self.member(seg, target)?
                        } else {
                            Role::Off
                        };
                        break;
                    }
                    Some(b'}') if object => {
                        self.at += 1;
                        stack.pop();
                    }
                    Some(b']') if !object => {
                        self.at += 1;
                        stack.pop();
                    }
                    _ => return Err(self.fail("expected `,` or the end of the container")),
                }
            }
        }
    }

    /// `"key" :` and the whitespace after it, and the role of the value that follows:
    /// in an object on the target path (`seg`), the key may lead on or be the target.
    fn member(&mut self, seg: Option<usize>, target: &[String]) -> Result<Role, Invalid> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a key"));
        }
        let start = self.at + 1;
        self.string()?;
        let key = &self.text[start..self.at - 1];
        // serde_json reads an object with one of these keys as a number or raw text of
        // its own (`arbitrary_precision`, `raw_value`): parsed, such an answer would
        // mean something else than the text kept. Refused alike on every route.
        if key.starts_with(b"$serde_json::private::") {
            return Err(Invalid {
                at: start,
                what: "a key serde_json reserves",
            });
        }
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.fail("expected `:`"));
        }
        self.at += 1;
        self.ws();
        Ok(match seg {
            Some(i) if key_is(key, &target[i]) => {
                if i + 1 == target.len() {
                    Role::Target
                } else {
                    Role::Descend(i + 1)
                }
            }
            _ => Role::Off,
        })
    }

    fn string(&mut self) -> Result<(), Invalid> {
        self.at += 1;
        let start = self.at;
        // The high bits of the bytes read (and a few past the end): set, the string
        // may not be ASCII, and its bytes are checked as UTF-8 at the end.
        let mut wide = 0u64;
        loop {
            // Eight bytes at a time while none is `"`, `\` or a control character: most
            // of an answer is string text (measured: 5x fewer instructions than a byte
            // at a time on the benchmark's answers).
            while let Some(word) = self.text.get(self.at..self.at + 8) {
                let Ok(word) = <[u8; 8]>::try_from(word) else {
                    break;
                };
                let x = u64::from_le_bytes(word);
                wide |= x;
                let special = below(x, 0x20) | zero(x ^ (ONES * 0x22)) | zero(x ^ (ONES * 0x5c));
                if special != 0 {
                    self.at += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                self.at += 8;
            }
            match self.peek() {
                None => return Err(self.fail("unterminated string")),
                Some(b'"') => {
                    if wide & HIGHS != 0
                        && let Err(e) = std::str::from_utf8(&self.text[start..self.at])
                    {
                        return Err(Invalid {
                            at: start + e.valid_up_to(),
                            what: "invalid UTF-8",
                        });
                    }
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1;
                        }
                        Some(b'u') => {
                            self.at += 1;
                            let unit = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&unit) {
                                return Err(self.fail("lone surrogate"));
                            }
                            if (0xD800..=0xDBFF).contains(&unit) {
                                if !self.text[self.at..].starts_with(b"\\u") {
                                    return Err(self.fail("lone surrogate"));
                                }
                                self.at += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..=0xDFFF).contains(&low) {
                                    return Err(self.fail("lone surrogate"));
                                }
                            }
                        }
                        _ => return Err(self.fail("invalid escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.fail("control character in a string")),
                Some(c) => {
                    wide |= u64::from(c);
                    self.at += 1;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u16, Invalid> {
        let Some(digits) = self.text.get(self.at..self.at + 4) else {
            return Err(self.fail("invalid escape"));
        };
        let mut n: u16 = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.fail("invalid escape")),
            };
            n = n << 4 | u16::from(v);
        }
        self.at += 4;
        Ok(n)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), Invalid> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.fail("a number with a leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if !finite(&self.text[start..self.at]) {
            return Err(Invalid {
                at: start,
                what: "a number out of range",
            });
        }
        Ok(())
    }
}

/// serde_json's error message without its " at line L column C" (for saying the
/// position another way: file:line:col, or a byte).
pub fn without_position(message: &str) -> &str {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(head, _)| head)
}

/// A JSON tree to deserialize from, its numbers handed over as numbers: this build's
/// serde_json keeps a number's text (`arbitrary_precision`) and hands it to a
/// deserializer as a map, which a visitor that asks for any value (prost-reflect's
/// float fields) does not take. Everything else is the tree's own.
#[derive(Clone, Copy)]
pub struct Tree<'a>(pub &'a serde_json::Value);

impl<'de> serde::Deserializer<'de> for Tree<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        use serde::de::Error as _;
        match self.0 {
            serde_json::Value::Null => v.visit_unit(),
            serde_json::Value::Bool(b) => v.visit_bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    v.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    v.visit_f64(f)
                } else {
                    Err(serde_json::Error::custom("a number out of range"))
                }
            }
            serde_json::Value::String(s) => v.visit_borrowed_str(s),
            serde_json::Value::Array(items) => v.visit_seq(Items(items.iter())),
            serde_json::Value::Object(m) => v.visit_map(Fields {
                iter: m.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple tuple_struct
        map struct enum identifier ignored_any
    }
}

struct Items<'a>(std::slice::Iter<'a, serde_json::Value>);

impl<'de> serde::de::SeqAccess<'de> for Items<'de> {
    type Error = serde_json::Error;
    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next().map(|v| seed.deserialize(Tree(v))).transpose()
    }
}

struct Fields<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a serde_json::Value>,
}

impl<'de> serde::de::MapAccess<'de> for Fields<'de> {
    type Error = serde_json::Error;
    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(v);
        seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(k))
            .map(Some)
    }
    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::Error as _;
        let v = self
            .value
            .take()
            .ok_or_else(|| serde_json::Error::custom("a key without its value"))?;
        seed.deserialize(Tree(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The rule, as serde_json and the finite-number check say it.
    fn reference(text: &[u8]) -> bool {
        serde_json::from_slice::<Value>(text).is_ok_and(|v| all_finite(&v))
    }

    #[test]
    fn agrees_with_serde_json_on_hand_picked_cases() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let cases = [
            "{}",
            "[]",
            " {\"a\" : [1, -2.5e3, true, null, \"x\\u00e9\\ud83d\\ude00\"]} ",
            "1e999999",
            "-1e309",
            "1e-99999",
            "12345678901234567890123456789",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"\\x\"",
            "\"a\u{1}b\"",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "nul",
            "truex",
            "\"unterminated",
            "[1]]",
            "",
            " ",
            "\"\\u12\"",
            "{\"a\":{\"b\":[]}}",
            &deep(126),
            &deep(127),
            &deep(128),
            &deep(100_000),
        ];
        for c in cases {
            assert_eq!(
                validate(c.as_bytes()).is_ok(),
                reference(c.as_bytes()),
                "{c:.60}"
            );
        }
    }

    /// Text that is JSON or nearly: a random value, written out, then a few bytes
    /// replaced, inserted or removed by JSON's own characters or bytes that are not
    /// UTF-8 on their own.
    fn json_ish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,6})?",
            "\"([a-z]|\\\\[nrt\"/\\\\bf]|\\\\u[dD][89abAB][0-9a-f]{2}|\\\\u[0-9a-fA-F]{4}|[\u{80}-\u{10ffff}]){0,8}\"",
        ];
        let value = leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                // Keys unique: serde_json keeps only the last of duplicates, which would
                // hide a bad value in an earlier one (the validator checks them all).
                proptest::collection::vec(("[a-z]{0,3}", inner), 0..6).prop_map(|kv| {
                    let members: Vec<String> = kv
                        .into_iter()
                        .enumerate()
                        .map(|(i, (k, v))| format!("\"{k}{i}\": {v}"))
                        .collect();
                    format!("{{{}}}", members.join(", "))
                }),
            ]
        });
        let edit = (
            any::<usize>(),
            0..3u8,
            proptest::sample::select(b"{}[],:\"\\ -+.eE0159tnu\x01\x80\xc3\xa9\xff".to_vec()),
        );
        (value, proptest::collection::vec(edit, 0..3)).prop_map(|(text, edits)| {
            let mut bytes = text.into_bytes();
            for (at, kind, c) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 => bytes.insert(at, c),
                    1 if at < bytes.len() => bytes[at] = c,
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            bytes
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// The validator accepts exactly what serde_json parses with finite numbers.
        #[test]
        fn validate_agrees_with_serde_json(text in json_ish()) {
            proptest::prop_assert_eq!(
                validate(&text).is_ok(),
                reference(&text),
                "{}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn finds_a_target_in_the_same_pass() {
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        let text = br#"{"x": [1, {"items": 0}], "data": {"items": [1, {"a": "b"}], "z": 1}}"#;
        let Target::At(r) = validate_at(text, &path("data.items")).unwrap() else {
            panic!("found")
        };
        assert_eq!(&text[r], br#"[1, {"a": "b"}]"#);
        assert_eq!(
            validate_at(br#"{"data": 5}"#, &path("data.items")),
            Ok(Target::Missing)
        );
        assert_eq!(
            validate_at(br#"[{"data": 1}]"#, &path("data")),
            Ok(Target::ThroughArray)
        );
        assert_eq!(
            validate_at(br#"{"data": [{"items": 1}]}"#, &path("data.items")),
            Ok(Target::ThroughArray)
        );
        // The last of repeated keys counts; escaped keys are compared decoded.
        let text = br#"{"a": {"b": 1}, "\u0061": {"b": 22}}"#;
        let Target::At(r) = validate_at(text, &path("a.b")).unwrap() else {
            panic!("found")
        };
        assert_eq!(&text[r], b"22");
        assert_eq!(
            validate_at(br#"{"a": {"b": 1}, "a": {"c": 2}}"#, &path("a.b")),
            Ok(Target::Missing)
        );
        assert!(
            validate_at(br#"{"a": 1e999}"#, &path("b")).is_err(),
            "still validates"
        );
    }

    #[test]
    fn keys_serde_json_reserves_are_refused() {
        for text in [
            r#"{"$serde_json::private::Number": "12"}"#,
            r#"{"a": {"$serde_json::private::RawValue": [1]}}"#,
        ] {
            assert_eq!(
                validate(text.as_bytes()).unwrap_err().what,
                "a key serde_json reserves"
            );
        }
        assert!(
            validate(br#"{"a": "$serde_json::private::Number"}"#).is_ok(),
            "as a value"
        );
    }

    #[test]
    fn says_where_and_why() {
        let e = validate(br#"{"a": [1, 2,, 3]}"#).unwrap_err();
        assert_eq!((e.at, e.what), (12, "expected a value"));
        assert_eq!(
            validate(b"[1e999]").unwrap_err().what,
            "a number out of range"
        );
        // A string's bytes are UTF-8, checked where they are read.
        let e = validate(b"[\"ab\xc3\xa9cd\xffx\"]").unwrap_err();
        assert_eq!((e.at, e.what), (8, "invalid UTF-8"));
        assert!(validate("[\"né, 😀 and a long tail of ASCII after them\"]".as_bytes()).is_ok());
        assert_eq!(
            validate(b"{\"a\":1}\xff").unwrap_err().what,
            "trailing characters"
        );
    }
}
