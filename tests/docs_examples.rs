//! Every TOML example in the README and docs/ is a config `manifold check` accepts,
//! unless its first line says it is a fragment (`# fragment: ...`).

use std::path::{Path, PathBuf};

/// The ```toml blocks of a Markdown file: (line of the opening fence, text).
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```toml") => current = Some((i + 1, String::new())),
            Some(_) if fence.starts_with("```") => {
                if let Some(block) = current.take() {
                    out.push(block);
                }
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

#[test]
fn every_toml_example_in_the_docs_passes_check() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("readable");
        for (line, block) in toml_blocks(&text) {
            let first = block.lines().next().unwrap_or_default().trim();
            if first.starts_with("# fragment") {
                continue;
            }
            let name = format!("{}:{line}", doc.display());
            checked += 1;
            // Examples name environment variables as a reader would set them.
            if let Err(d) = manifold::config::parse(&name, &block) {
                failures.push(d.render());
            }
        }
    }
    assert!(checked >= 3, "only {checked} examples found");
    assert!(
        failures.is_empty(),
        "{} of {checked} TOML examples fail `manifold check` (mark a deliberate fragment with `# fragment: ...` on its first line):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn blocks_are_found_with_their_lines() {
    let md = "text\n```toml\na = 1\n```\n```sh\nx\n```\n  ```toml\nb = 2\n  ```\n";
    assert_eq!(
        toml_blocks(md),
        [(2, "a = 1\n".to_string()), (8, "b = 2\n".to_string())]
    );
}
