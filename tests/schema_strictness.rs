//! The published JSON Schema (`manifold schema`, made from the same per-section code
//! as `check`) refuses every bad config whose refusal is structural — a wrong type, a
//! missing required key, an empty list that must hold something, a value outside its
//! choices or bounds — and accepts every good one. Each file in `tests/configs/bad/`
//! says on its first line which it is (`# schema: refused`, `# schema: accepted` with
//! why not structural, or `# schema: not TOML`), and `check` refuses all of them.

use std::path::Path;

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no configs in {dir}");
    out
}

fn document(text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(text).expect("TOML");
    serde_json::to_value(table).expect("JSON")
}

#[test]
fn the_schema_refuses_what_check_refuses_structurally() {
    let schema = manifold::config::schema::schema();
    let validator = jsonschema::draft7::new(&schema).expect("a valid Draft 7 schema");
    for path in files("tests/configs/bad") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            manifold::config::parse(&format!("tests/configs/bad/{name}"), &text).is_err(),
            "{name}: check refuses it"
        );
        let said = text.lines().next().unwrap_or_default();
        if said.starts_with("# schema: not TOML") {
            assert!(toml::from_str::<toml::Table>(&text).is_err(), "{name}");
            continue;
        }
        let doc = document(&text);
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if said.starts_with("# schema: refused") {
            assert!(!errors.is_empty(), "{name}: the schema refuses it");
        } else if said.starts_with("# schema: accepted") {
            assert!(
                errors.is_empty(),
                "{name}: the schema has nothing to refuse here: {errors:?}"
            );
        } else {
            panic!("{name}: its first line must say `# schema: refused|accepted|not TOML`");
        }
    }
}

#[test]
fn the_issues_examples_are_each_refused_where_check_refuses_them() {
    let schema = manifold::config::schema::schema();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let errors = |text: &str| -> Vec<String> {
        validator
            .iter_errors(&document(text))
            .map(|e| e.instance_path().to_string())
            .collect()
    };
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad/missing_keys.toml"),
    )
    .unwrap();
    let found = errors(&text);
    for at in [
        "/routes/0/cache",
        "/routes/0/rate_limit",
        "/routes/0/backends",
    ] {
        assert!(found.iter().any(|e| e == at), "{at} in {found:?}");
    }
    assert!(!errors("").is_empty(), "an empty file");
}

#[test]
fn the_schema_accepts_every_good_config() {
    let schema = manifold::config::schema::schema();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let mut paths = files("tests/configs/good");
    for shipped in ["routes.toml", "deploy/kubernetes/routes.toml"] {
        paths.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped));
    }
    for path in paths {
        let doc = document(&std::fs::read_to_string(&path).unwrap());
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}
