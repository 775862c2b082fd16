//! Backend path templates: `/orders?customer={user.customer_id}&limit=5`.
//!
//! `{name}` is a path parameter of the route; `{backend.field.sub}` reads a field of
//! another backend's raw answer. Values are percent-encoded on the way in, with the
//! strictest set (everything but RFC 3986 unreserved characters), which is correct in a
//! path segment and in a query value alike.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything except `A-Z a-z 0-9 - . _ ~`.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<R> {
    Lit(String),
    /// A path parameter of the route, by its index in the route's parameter list.
    Param(R),
    /// A field of another backend's answer.
    Field {
        backend: R,
        path: Vec<String>,
    },
}

/// A parsed template; `R` is a name while loading and an index once compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<R> {
    pub parts: Vec<Part<R>>,
}

/// A placeholder as written, with its byte offset inside the template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub text: String,
    pub offset: usize,
}

impl Template<Placeholder> {
    /// Splits a template into literals and `{...}` placeholders.
    pub fn parse(s: &str) -> Result<Self, (usize, String)> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut base = 0;
        while let Some(open) = rest.find('{') {
            if let Some(close) = rest[..open].find('}') {
                return Err((base + close, "`}` without a matching `{`".into()));
            }
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err((base + open, "`{` without a closing `}`".into()));
            };
            let text = &after[..close];
            let valid = !text.is_empty()
                && text.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                });
            if !valid {
                return Err((
                    base + open,
                    format!(
                        "`{{{text}}}` is not a placeholder: use {{param}} or {{backend.field}}"
                    ),
                ));
            }
            parts.push(Part::Param(Placeholder {
                text: text.to_string(),
                offset: base + open,
            }));
            let consumed = open + 1 + close + 1;
            base += consumed;
            rest = &rest[consumed..];
        }
        if let Some(close) = rest.find('}') {
            return Err((base + close, "`}` without a matching `{`".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(ph) => Some(ph),
            _ => None,
        })
    }
}

/// Names of the `{param}` segments of a route path, in order (`{*rest}` gives `rest`).
pub fn route_params(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        out.push(after[..close].trim_start_matches('*').to_string());
        rest = &after[close + 1..];
    }
    out
}

/// Appends `value` percent-encoded for a URL component.
pub fn push_encoded(out: &mut String, value: &str) {
    for chunk in utf8_percent_encode(value, COMPONENT) {
        out.push_str(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_params_and_fields() {
        let t = Template::parse("/orders?customer={user.customer_id}&id={id}").unwrap();
        let names: Vec<_> = t
            .placeholders()
            .map(|p| (p.text.as_str(), p.offset))
            .collect();
        assert_eq!(names, vec![("user.customer_id", 17), ("id", 39)]);
        assert_eq!(t.parts.len(), 4);
    }

    #[test]
    fn rejects_unbalanced() {
        assert!(Template::parse("/a/{id").is_err());
        assert!(Template::parse("/a/id}").is_err());
        assert!(Template::parse("/a/{}").is_err());
        assert!(Template::parse("/a/{x..y}").is_err());
    }

    #[test]
    fn encodes_strictly() {
        let mut s = String::new();
        push_encoded(&mut s, "a b/c?d&e=f#g%é");
        assert_eq!(s, "a%20b%2Fc%3Fd%26e%3Df%23g%25%C3%A9");
    }

    proptest::proptest! {
        /// Any text parses or is refused with an offset inside it; never a panic.
        #[test]
        fn parsing_never_panics(s in ".{0,64}") {
            match Template::parse(&s) {
                Ok(t) => {
                    for p in t.placeholders() {
                        proptest::prop_assert!(s[p.offset..].starts_with('{'), "placeholder at {}", p.offset);
                    }
                }
                Err((offset, _)) => proptest::prop_assert!(offset <= s.len()),
            }
        }

        /// An encoded value holds only unreserved characters and `%XX`, and decodes
        /// back to itself: a value can never add a path segment or a query parameter.
        #[test]
        fn encoded_values_round_trip(value in "\\PC{0,32}") {
            let mut out = String::new();
            push_encoded(&mut out, &value);
            proptest::prop_assert!(out.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            let back = percent_encoding::percent_decode_str(&out).decode_utf8().unwrap();
            proptest::prop_assert_eq!(back, value);
        }
    }

    #[test]
    fn route_param_names() {
        assert_eq!(
            route_params("/api/{user_id}/x/{*rest}"),
            vec!["user_id", "rest"]
        );
    }
}
