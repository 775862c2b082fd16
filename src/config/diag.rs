//! Config diagnostics: every problem in a file, each with its place, rendered like rustc.

use std::ops::Range;

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::NoColor};

/// Byte range into the config source.
pub type SourceSpan = Range<usize>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub span: SourceSpan,
    /// Short text printed under the offending snippet.
    pub label: String,
    /// Extra lines: "first defined here", hints, the accepted values.
    pub notes: Vec<String>,
    /// A second place worth pointing at (e.g. the first definition of a duplicate).
    pub secondary: Option<(SourceSpan, String)>,
}

impl Diagnostic {
    pub fn new(span: SourceSpan, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            span,
            label: String::new(),
            notes: Vec::new(),
            secondary: None,
        }
    }

    /// Masks URL credentials in every text of the diagnostic (see [`crate::base::redact`]).
    pub fn redact(&mut self) {
        let mask = |s: &mut String| {
            if let std::borrow::Cow::Owned(masked) = crate::base::redact::in_text(s) {
                *s = masked;
            }
        };
        mask(&mut self.message);
        mask(&mut self.label);
        for n in &mut self.notes {
            mask(n);
        }
        if let Some((_, l)) = &mut self.secondary {
            mask(l);
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn also(mut self, span: SourceSpan, label: impl Into<String>) -> Self {
        self.secondary = Some((span, label.into()));
        self
    }
}

/// All problems found in one config file, with the source needed to show them.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// A problem with no place in a file (unreadable file, and the like).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            source: String::new(),
            items: vec![Diagnostic::new(0..0, message)],
        }
    }

    /// `file:line:col` of a byte offset, 1-based like editors and rustc.
    pub fn location(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.source, offset);
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// Renders every problem, rustc style, without colour (stable for logs and snapshots).
    pub fn render(&self) -> String {
        let mut out = NoColor::new(Vec::new());
        let files = SimpleFile::new(self.file.as_str(), self.source.as_str());
        let config = term::Config::default();
        for d in &self.items {
            if self.source.is_empty() {
                // No text to point into (an empty or unreadable file): the place alone.
                let mut text = format!("error: {}\n  --> {}:1:1\n", d.message, self.file);
                for note in &d.notes {
                    text.push_str(&format!("  = {note}\n"));
                }
                text.push('\n');
                out.get_mut().extend_from_slice(text.as_bytes());
                continue;
            }
            let mut labels = Vec::new();
            {
                let span = clamp(&self.source, &d.span);
                labels.push(Label::primary((), span).with_message(d.label.clone()));
                if let Some((span, msg)) = &d.secondary {
                    labels.push(
                        Label::secondary((), clamp(&self.source, span)).with_message(msg.clone()),
                    );
                }
            }
            let cs = CsDiagnostic::error()
                .with_message(d.message.clone())
                .with_labels(labels)
                .with_notes(d.notes.clone());
            if term::emit(&mut out, &config, &files, &cs).is_err() {
                // Rendering only fails on a span outside the file; still say what is wrong.
                let (line, col) = self.location(d.span.start);
                let text = format!("error: {}\n  --> {}:{line}:{col}\n", d.message, self.file);
                out.get_mut().extend_from_slice(text.as_bytes());
            }
        }
        let n = self.items.len();
        let summary = format!(
            "{}: {n} error{} found\n",
            self.file,
            if n == 1 { "" } else { "s" }
        );
        let mut text = String::from_utf8_lossy(&out.into_inner()).into_owned();
        text.push_str(&summary);
        text
    }

    /// One line per problem: `file:line:col: message` (for JSON logs on reload).
    pub fn one_line_each(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                let (line, col) = self.location(d.span.start);
                // The hint travels with the message: a "did you mean" is the fix.
                let hint =
                    if d.label.starts_with("did you mean") || d.label.contains(": did you mean") {
                        format!(" ({})", d.label)
                    } else {
                        String::new()
                    };
                format!("{}:{line}:{col}: {}{hint}", self.file, d.message)
            })
            .collect()
    }
}

/// The largest char boundary at or before `offset` (spans computed inside strings with
/// escapes may land mid-character; slicing there would panic).
fn floor_char_boundary(s: &str, offset: usize) -> usize {
    let mut o = offset.min(s.len());
    while !s.is_char_boundary(o) {
        o -= 1;
    }
    o
}

fn clamp(source: &str, span: &SourceSpan) -> SourceSpan {
    let start = floor_char_boundary(source, span.start);
    let end = floor_char_boundary(source, span.end).max(start);
    start..end
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_inside_multibyte_text_never_panic() {
        let d = Diagnostics {
            file: "x.toml".into(),
            source: "path = \"/é/{x}\"\n".into(),
            // Byte 10 is inside `é` (bytes 9..11).
            items: vec![Diagnostic::new(10..11, "mid-character span").also(10..12, "another")],
        };
        assert_eq!(d.location(10), (1, 10));
        assert!(d.render().contains("mid-character span"));
    }
}

#[cfg(test)]
mod one_line_tests {
    #[test]
    fn a_refused_reload_line_keeps_the_hint() {
        let d = crate::config::parse("r.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")
            .expect_err("a misspelt key");
        let lines = d.one_line_each();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("r.toml:2:1: unknown key `lisen`")
                    && l.ends_with("(did you mean `listen`?)")),
            "{lines:?}"
        );
    }
}
