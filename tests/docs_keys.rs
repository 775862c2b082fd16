//! docs/configuration.md's key tables say what the code reads: each `| Key | Type |
//! Default |` table lists exactly the keys its section's reader asks for, and every
//! default the code has (the schema's `default`, or the "Default: …" a computed one
//! says) appears in the key's Default cell, "required" where the key is required.
//! The code is `manifold schema`'s source, so a key added, renamed or given a new
//! default without its docs fails here.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// One key table of the docs: the schema path it describes and its rows.
struct DocTable {
    path: String,
    line: usize,
    rows: Vec<(String, String)>,
}

/// The schema path a `## ` heading names, if it is a section of the file.
fn section(heading: &str) -> Option<&'static str> {
    Some(match heading.trim() {
        "## `[server]`" => "/server",
        "## `[telemetry]`" => "/telemetry",
        "## `[admin]`" => "/admin",
        "## `[cors]`" => "/cors",
        "## `[auth.jwt.NAME]`" => "/auth/jwt/*",
        "## `[shared]`" => "/shared",
        "## `[upstreams.NAME]`" => "/upstreams/*",
        "## `[[routes]]`" => "/routes/[]",
        "## `[[routes.backends]]`" => "/routes/[]/backends/[]",
        _ => return None,
    })
}

/// The backticked name at the start of `s` (`` `retry` `` → `retry`).
fn ticked(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('`')?;
    Some(&rest[..rest.find('`')?])
}

fn doc_tables() -> Vec<DocTable> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut sect: Option<&str> = None;
    let mut sub: Option<String> = None;
    let mut current: Option<DocTable> = None;
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        if line.starts_with("## ") || line.starts_with("# ") {
            sect = section(line);
            sub = None;
        } else if let Some(h) = line.strip_prefix("### ") {
            sub = ticked(h.trim()).map(str::to_string);
        } else if let Some(lead) = line.strip_prefix("**")
            && let Some(name) = ticked(lead).filter(|_| lead.contains("`**"))
        {
            sub = Some(name.to_string());
        }
        if line.starts_with("| Key | Type | Default") {
            if let Some(s) = sect {
                let path = match &sub {
                    Some(k) => format!("{s}/{k}"),
                    None => s.to_string(),
                };
                current = Some(DocTable {
                    path,
                    line: i + 1,
                    rows: Vec::new(),
                });
            }
            continue;
        }
        if let Some(t) = current.as_mut() {
            if !line.starts_with('|') {
                out.push(current.take().unwrap());
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if let Some(key) = cells.get(1).and_then(|c| ticked(c)) {
                t.rows
                    .push((key.to_string(), cells.get(3).unwrap_or(&"").to_string()));
            }
        }
    }
    out.extend(current);
    out
}

/// The object schema at a path like `/upstreams/*/retry` or `/routes/[]/backends/[]`.
fn at<'s>(schema: &'s Value, path: &str) -> Option<&'s Value> {
    let mut v = schema;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        v = match part {
            "*" => v.get("additionalProperties")?,
            "[]" => v.get("items")?,
            name => v.get("properties")?.get(name)?,
        };
    }
    Some(v)
}

/// What the Default cell must say for a key, by its schema.
fn said_default(key: &Value) -> Option<String> {
    if let Some(d) = key.get("default") {
        return Some(match d {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let about = key.get("description")?.as_str()?;
    let at = about.find(" Default: ")?;
    Some(
        about[at + " Default: ".len()..]
            .trim_end_matches('.')
            .to_string(),
    )
}

#[test]
fn every_key_table_says_what_the_code_reads() {
    let schema = manifold::config::schema::schema();
    let tables = doc_tables();
    assert!(tables.len() >= 8, "the tables were read: {}", tables.len());
    let mut problems = Vec::new();
    let mut seen_paths = BTreeSet::new();
    for t in &tables {
        seen_paths.insert(t.path.clone());
        let Some(obj) = at(&schema, &t.path) else {
            problems.push(format!(
                "docs/configuration.md:{}: a table for {}, which the code does not read",
                t.line, t.path
            ));
            continue;
        };
        let props = obj.get("properties").and_then(Value::as_object);
        let code: BTreeSet<&str> = props
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let docs: BTreeSet<&str> = t.rows.iter().map(|(k, _)| k.as_str()).collect();
        for missing in code.difference(&docs) {
            problems.push(format!(
                "docs/configuration.md:{}: {} has no row for `{missing}`",
                t.line, t.path
            ));
        }
        for extra in docs.difference(&code) {
            problems.push(format!(
                "docs/configuration.md:{}: {} lists `{extra}`, which the code does not read",
                t.line, t.path
            ));
        }
        let required: BTreeSet<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (k, cell) in &t.rows {
            let Some(key) = props.and_then(|p| p.get(k)) else {
                continue;
            };
            if required.contains(k.as_str()) && !cell.to_lowercase().contains("required") {
                problems.push(format!(
                    "docs/configuration.md:{}: `{k}` of {} is required, its Default cell says {cell:?}",
                    t.line, t.path
                ));
            }
            // Backticks are the docs' markup, not the value.
            if let Some(d) = said_default(key)
                && !cell.replace('`', "").contains(&d.replace('`', ""))
            {
                problems.push(format!(
                    "docs/configuration.md:{}: `{k}` of {} defaults to {d:?}, its Default cell says {cell:?}",
                    t.line, t.path
                ));
            }
        }
    }
    // Every section has its table.
    for s in [
        "/server",
        "/telemetry",
        "/cors",
        "/auth/jwt/*",
        "/shared",
        "/upstreams/*",
        "/routes/[]",
        "/routes/[]/backends/[]",
    ] {
        if !seen_paths.contains(s) {
            problems.push(format!("docs/configuration.md has no key table for {s}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_table_reader_finds_sections_and_subtables() {
    let paths: BTreeSet<String> = doc_tables().into_iter().map(|t| t.path).collect();
    for p in ["/server", "/upstreams/*/retry", "/routes/[]/cache"] {
        assert!(paths.contains(p), "{p} in {paths:?}");
    }
}

/// A heading's anchor as GitHub makes it: lowercase, spaces to hyphens, and nothing
/// but letters, digits, `-` and `_` kept.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Comments and test descriptions point at the docs a reader can open
/// (`docs/configuration.md#hedge`): every such link names a heading that exists.
#[test]
fn every_docs_link_in_the_code_names_a_heading() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut anchors = std::collections::BTreeMap::new();
    for doc in [
        "configuration",
        "operations",
        "architecture",
        "getting-started",
    ] {
        let text = std::fs::read_to_string(root.join(format!("docs/{doc}.md"))).unwrap();
        let mut in_code = false;
        let set: BTreeSet<String> = text
            .lines()
            .filter(|l| {
                if l.starts_with("```") {
                    in_code = !in_code;
                }
                !in_code && l.starts_with('#')
            })
            .map(anchor)
            .collect();
        anchors.insert(doc.to_string(), set);
    }
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "toml" || x == "md")
            {
                out.push(p);
            }
        }
    }
    walk(&root.join("src"), &mut files);
    walk(&root.join("tests"), &mut files);
    let mut links = 0;
    let mut broken = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (at, _) in text.match_indices("docs/") {
            let rest = &text[at + "docs/".len()..];
            let Some((doc, tail)) = rest.split_once(".md#") else {
                continue;
            };
            if !anchors.contains_key(doc) {
                continue;
            }
            let a: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            links += 1;
            if !anchors[doc].contains(&a) {
                broken.push(format!("{}: docs/{doc}.md#{a}", f.display()));
            }
        }
    }
    assert!(links >= 40, "links found: {links}");
    assert!(
        broken.is_empty(),
        "links to no heading:\n{}",
        broken.join("\n")
    );
}
