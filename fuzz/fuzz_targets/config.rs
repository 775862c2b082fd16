//! Config loading: any text loads, or is refused with diagnostics that render.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match manifold::config::parse("fuzz.toml", text) {
        Ok(config) => {
            // A config that loads also prints as a route table and an OpenAPI document.
            let _ = manifold::admin::route_table(&config);
            let _ = manifold::config::openapi::document(&config);
        }
        Err(d) => {
            assert!(!d.items.is_empty());
            let _ = d.render();
            let _ = d.one_line_each();
        }
    }
});
