//! The crate's folders are layers, and imports only go down their list
//! ([`LAYERS`], the same as `src/lib.rs` and docs/architecture.md): this test fails
//! when a module imports one above it, when a folder is not on the list, or when a
//! loop appears.
//!
//! Two levels are checked: the top-level modules under `src/` (a directory module
//! counts as one), and the submodules inside each directory module. A parent and its
//! own submodules may use each other; siblings may not go round in a loop.
//! References are read from the source text (`crate::x`, `use crate::{x, y}`,
//! `super::x`), which is how a reader sees them too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `src/upstream/pool.rs` → `["upstream", "pool"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its `#[cfg(test)] mod tests` (tests may reach anywhere)
/// and without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Module paths a file names: `crate::a::b`, each item of `crate::{a, b::c}`, and
/// `super::x` resolved against the file's own module.
fn references(own: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = &code[..at];
        if before.ends_with("::")
            || before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let path: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| ident_at(s.trim()).to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !path.is_empty() {
                    out.push(path);
                }
            }
        } else {
            out.push(path_at(rest));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("::") {
            continue;
        }
        // `super` of a file module is its parent; of `mod.rs`, the grandparent.
        let mut base = own.to_vec();
        base.pop();
        let mut path = base;
        path.extend(path_at(&code[at + "super::".len()..]));
        out.push(path);
    }
    out
}

fn path_at(s: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let id = ident_at(rest);
        if id.is_empty() {
            break;
        }
        path.push(id.to_string());
        match rest[id.len()..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    path
}

/// A loop in `edges`, as the modules on it, if there is one.
fn find_loop(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Every module's references, as (from, to) module paths.
fn graph() -> Vec<(Vec<String>, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut out = Vec::new();
    for f in &files {
        // The binary is the top: it may use anything.
        if f.ends_with("main.rs") && f.parent() == Some(src.as_path()) {
            continue;
        }
        let own = module_of(&src, f);
        let mut own_for_super = own.clone();
        // In `x/mod.rs`, `super` is x's parent: resolve as if the file were `x/_`.
        if f.ends_with("mod.rs") {
            own_for_super.push(String::new());
        }
        let text = std::fs::read_to_string(f).expect("readable");
        for mut to in references(&own_for_super, &code(&text)) {
            // The longest prefix that is a module file.
            while !to.is_empty() && !modules.contains(&to) {
                to.pop();
            }
            if !to.is_empty() {
                out.push((own.clone(), to));
            }
        }
    }
    out
}

/// The layers, top first: a module may import only those below it (and its own
/// layer's other files, without loops). `demo` is the binary's and may use anything
/// below it.
const LAYERS: [&str; 10] = [
    "demo",
    "listener",
    "admin",
    "request",
    "edge",
    "upstream",
    "state",
    "telemetry",
    "config",
    "base",
];

#[test]
fn imports_only_go_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut tops: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("readable src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if name != "lib" && name != "main" {
            tops.insert(name);
        }
    }
    let listed: BTreeSet<String> = LAYERS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        tops, listed,
        "every top-level module of src/ is a layer of LAYERS (and docs/architecture.md)"
    );
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = BTreeSet::new();
    for (from, to) in graph() {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        if let (Some(ra), Some(rb)) = (rank(a), rank(b))
            && rb < ra
        {
            upward.insert(format!("{} → {}", from.join("::"), to.join("::")));
        }
    }
    assert!(
        upward.is_empty(),
        "imports going up the layers (see docs/architecture.md):\n{}",
        upward.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn top_level_modules_import_one_way() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in graph() {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        if a != b {
            edges.entry(a.clone()).or_default().insert(b.clone());
        }
    }
    assert!(edges.len() >= 8, "the graph was read: {edges:?}");
    if let Some(cycle) = find_loop(&edges) {
        panic!(
            "module loop: {} (a lower module must not import a higher one; see docs/architecture.md)",
            cycle.join(" → ")
        );
    }
}

#[test]
fn submodules_import_one_way() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in graph() {
        // Siblings under one parent, both below it.
        if from.len() < 2 || to.len() < 2 || from[0] != to[0] || from[1] == to[1] {
            continue;
        }
        edges
            .entry(format!("{}::{}", from[0], from[1]))
            .or_default()
            .insert(format!("{}::{}", to[0], to[1]));
    }
    if let Some(cycle) = find_loop(&edges) {
        panic!("submodule loop: {}", cycle.join(" → "));
    }
}

#[test]
fn the_check_sees_a_loop() {
    let own = vec!["a".to_string()];
    let refs = references(
        &own,
        "use crate::{b, c::d};\nuse crate::e::F; fn f() { super::g::h(); x::crate::no(); }",
    );
    assert_eq!(
        refs,
        [vec!["b"], vec!["c", "d"], vec!["e", "F"], vec!["g", "h"],]
            .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_loop(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_loop(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// A function with more arguments than clippy allows takes a value that names what
/// they are together (the request's `Outbound`, a listener's `Serving`): clippy's
/// `too_many_arguments` is never silenced.
#[test]
fn no_function_silences_too_many_arguments() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("readable")
                .contains(concat!("clippy::", "too_many_arguments"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        allowed.is_empty(),
        "too_many_arguments allowed in {allowed:?}"
    );
}
