//! Backend path templates, and the encoding of every value rendered into them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifold::base::template::{Template, push_encoded, route_params};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Template::parse(text) {
        Ok(t) => {
            for p in t.placeholders() {
                assert!(text[p.offset..].starts_with('{'));
            }
        }
        Err((offset, _)) => assert!(offset <= text.len()),
    }
    let _ = route_params(text);
    // A rendered value can never add a segment or a parameter, and decodes back.
    let mut out = String::new();
    push_encoded(&mut out, text);
    assert!(
        out.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    );
    let back = percent_encoding::percent_decode_str(&out).decode_utf8().unwrap();
    assert_eq!(back, text);
});
