//! What checking a request body against a schema costs, per request, single-threaded:
//! the 2 KB checkout of benches/data/checkout.json against benches/data/checkout-schema.json
//! (16 properties, a nested array of 11 lines, patterns, formats, enums), with the
//! validator manifold uses (`jsonschema`) and the other maintained one (`boon`), both
//! with `format` asserted. The figures behind docs/operations.md, "Request validation:
//! what it costs". CPU per body is the median of repeated runs.
//!
//!     cargo bench --bench validation

use std::hint::black_box;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

fn median(mut f: impl FnMut() -> bool, budget: Duration) -> Duration {
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget || times.len() < 100 {
        let t = Instant::now();
        black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/checkout-schema.json")).unwrap(),
    )
    .unwrap();
    let body = std::fs::read(format!("{dir}/checkout.json")).unwrap();
    let mut bad: Value = serde_json::from_slice(&body).unwrap();
    bad["items"][3]["qty"] = Value::from(0);
    bad["items"][7]["sku"] = Value::from("pen");
    bad["email"] = Value::from("not an email");
    let bad_bytes = serde_json::to_vec(&bad).unwrap();

    let js = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    compiler
        .add_resource("file:///checkout-schema.json", schema.clone())
        .unwrap();
    let index = compiler
        .compile("file:///checkout-schema.json", &mut schemas)
        .unwrap();

    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert!(js.is_valid(&parsed));
    assert!(schemas.validate(&parsed, index).is_ok());
    assert_eq!(js.iter_errors(&bad).count(), 3);
    assert!(schemas.validate(&bad, index).is_err());

    let budget = Duration::from_secs(2);
    type Step<'a> = (&'a str, Box<dyn FnMut() -> bool + 'a>);
    let rows: [Step; 7] = [
        (
            "parse the 2 KB body (serde_json)",
            Box::new(|| serde_json::from_slice::<Value>(&body).is_ok()),
        ),
        (
            "jsonschema: parse + every error (valid body)",
            Box::new(|| {
                let v: Value = serde_json::from_slice(&body).unwrap();
                js.iter_errors(&v).next().is_none()
            }),
        ),
        (
            "jsonschema: every error, tree ready (valid)",
            Box::new(|| js.iter_errors(&parsed).next().is_none()),
        ),
        (
            "jsonschema: parse + every error (3 errors)",
            Box::new(|| {
                let v: Value = serde_json::from_slice(&bad_bytes).unwrap();
                js.iter_errors(&v).count() == 3
            }),
        ),
        (
            "boon: parse + validate (valid body)",
            Box::new(|| {
                let v: Value = serde_json::from_slice(&body).unwrap();
                schemas.validate(&v, index).is_ok()
            }),
        ),
        (
            "boon: validate, tree ready (valid)",
            Box::new(|| schemas.validate(&parsed, index).is_ok()),
        ),
        (
            "boon: parse + validate (3 errors)",
            Box::new(|| {
                let v: Value = serde_json::from_slice(&bad_bytes).unwrap();
                schemas.validate(&v, index).is_err()
            }),
        ),
    ];
    println!("| step | µs per body |");
    println!("|---|---:|");
    for (name, mut f) in rows {
        let t = median(&mut f, budget);
        println!("| {name} | {:.2} |", t.as_secs_f64() * 1e6);
    }
}
