//! What JSON manifold takes from an upstream: one rule for every route, shaped or not.
//!
//! An answer placed in the response unchanged is never built into a tree (see
//! `merge::Decode`), so its text must be checked on its own, and checked the same way
//! as the answers that are parsed: what serde_json parses into a value, with every
//! number finite as an `f64` (`1e999999` is refused; its exact text is kept otherwise,
//! see `arbitrary_precision`), nesting at most 127 deep, strings without control
//! characters or lone surrogates. [`validate`] is that rule, in one pass and without
//! allocating; the tests and the fuzz target hold it to serde_json's own parser.

/// serde_json's recursion limit: a 128th nested array or object is refused.
const MAX_DEPTH: usize = 128;

/// Why a text is not JSON, and where (a byte offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub at: usize,
    pub what: &'static str,
}

/// Checks that `text` is one JSON value (surrounding whitespace allowed) by the rule
/// above. `text` is valid UTF-8 already.
pub fn validate(text: &[u8]) -> Result<(), Invalid> {
    let mut p = Parser { text, at: 0 };
    p.ws();
    p.value()?;
    p.ws();
    if p.at != text.len() {
        return Err(p.fail("trailing characters"));
    }
    Ok(())
}

/// Whether a JSON number's text is a finite `f64` (the grammar is checked already).
pub fn finite(number: &str) -> bool {
    // Below 309 digits and without an exponent, a number cannot overflow an f64.
    if number.len() < 309 && !number.contains(['e', 'E']) {
        return true;
    }
    number.parse::<f64>().is_ok_and(f64::is_finite)
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

    /// One value, iteratively: `stack` holds the open containers (true: an object).
    fn value(&mut self) -> Result<(), Invalid> {
        let mut stack: Vec<bool> = Vec::new();
        loop {
            // A value.
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let object = self.peek() == Some(b'{');
                    if stack.len() + 1 >= MAX_DEPTH {
                        return Err(self.fail("nested too deep"));
                    }
                    self.at += 1;
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        stack.push(object);
                        if object {
                            self.key()?;
                        }
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
                let Some(&object) = stack.last() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        self.ws();
                        if object {
                            self.key()?;
                        }
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

    /// `"key" :` and the whitespace after it.
    fn key(&mut self) -> Result<(), Invalid> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a key"));
        }
        self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.fail("expected `:`"));
        }
        self.at += 1;
        self.ws();
        Ok(())
    }

    fn string(&mut self) -> Result<(), Invalid> {
        self.at += 1;
        loop {
            match self.peek() {
                None => return Err(self.fail("unterminated string")),
                Some(b'"') => {
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
                Some(_) => self.at += 1,
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
        // ASCII only, so this is a str.
        let text = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("");
        if !finite(text) {
            return Err(Invalid {
                at: start,
                what: "a number out of range",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The rule, as serde_json and the finite-number check say it.
    fn reference(text: &str) -> bool {
        fn all_finite(v: &Value) -> bool {
            match v {
                Value::Number(n) => finite(n.as_str()),
                Value::Array(a) => a.iter().all(all_finite),
                Value::Object(o) => o.values().all(all_finite),
                _ => true,
            }
        }
        serde_json::from_str::<Value>(text).is_ok_and(|v| all_finite(&v))
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
            assert_eq!(validate(c.as_bytes()).is_ok(), reference(c), "{c:.60}");
        }
    }

    #[test]
    fn says_where_and_why() {
        let e = validate(br#"{"a": [1, 2,, 3]}"#).unwrap_err();
        assert_eq!((e.at, e.what), (12, "expected a value"));
        assert_eq!(
            validate(b"[1e999]").unwrap_err().what,
            "a number out of range"
        );
    }
}
