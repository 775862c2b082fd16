//! JSON Schemas in routes.toml: a route's `validate = { body, query, params }` (what a
//! valid request is) and a backend's `schema` (what its answer is). Each is a file
//! beside the config or an inline table, read and compiled here at load, so `check`
//! reports a schema that cannot be read, is not JSON (at the schema file's own
//! line:col) or is not a schema, with every other error of the file at once; a request
//! never meets a schema that did not compile (docs/configuration.md#request-validation).
//!
//! `$ref`s to other files resolve against the schema's own file (inline ones: against
//! the config file) and are read from disk here; any other `$ref` (`https:`, `urn:`
//! not defined in the document) is refused at load: the gateway never fetches a schema
//! over the network, at load or per request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

use super::diag::Diagnostic;
use super::reader::{Errors, Key, KeyDefault, Table, key, to_json_as_written};

/// Steps a `pattern` with lookaround or backreferences may take on one string; past
/// it, the value fails the pattern.
const MAX_BACKTRACK: usize = 100_000;

/// The largest schema file read.
const MAX_SCHEMA: u64 = crate::base::files::MAX_FILE;

/// A JSON Schema a route or backend names, compiled.
#[derive(Clone)]
pub struct Schema {
    /// How messages name it: the file as the config writes it, or `inline`.
    pub source: String,
    /// The schema with its `$ref`s resolved in place (a recursive one keeps its
    /// `$ref`s): what `manifold openapi` publishes and what coercion reads.
    pub published: Value,
    pub validator: Arc<jsonschema::Validator>,
    /// The files read for it (its own and those its `$ref`s name): watched for reload.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.published == other.published
    }
}

/// A route's `validate` table: the schemas a request's parts must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteValidation {
    pub body: Option<Schema>,
    pub query: Option<Schema>,
    pub params: Option<Schema>,
}

impl RouteValidation {
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.params, &self.query, &self.body]
            .into_iter()
            .flatten()
            .flat_map(|s| s.files.iter())
    }
}

pub const VALIDATE: Key = key(
    "validate",
    "JSON Schemas a request must match before any upstream is called: { body, query, params }, each a schema file (relative to this file) or an inline table. 400 INVALID_REQUEST otherwise; 415 for a body that is not JSON.",
);
pub const BODY: Key = key(
    "body",
    "Schema of the request body, parsed as JSON (no body is null).",
);
pub const QUERY: Key = key(
    "query",
    "Schema of the query string as an object: one value a string, a repeated name an array, each coerced to the integer, number or boolean the schema wants there.",
);
pub const PARAMS: Key = key(
    "params",
    "Schema of the path parameters as an object, coerced as query values are.",
);
pub const SCHEMA: Key = key(
    "schema",
    "JSON Schema of this backend's answer (a file relative to this file, or an inline table): types its part of the merged answer in `manifold openapi`.",
);
pub const VALIDATE_RESPONSE: Key = key(
    "validate_response",
    "Check each answer against `schema`: one that does not match fails the backend as UPSTREAM_BAD_RESPONSE.",
)
.default(KeyDefault::Bool(false));

/// A route's `validate` table, its schemas read and compiled.
pub(super) fn read_validate(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<RouteValidation> {
    let mut v = t.table(errs, VALIDATE)?;
    let mut part = |k: Key, errs: &mut Errors| {
        let value = v.get(k)?;
        read_schema(value, &format!("`{}` schema", k.name), base, errs)
    };
    let validation = RouteValidation {
        body: part(BODY, errs),
        query: part(QUERY, errs),
        params: part(PARAMS, errs),
    };
    if v.get(BODY).is_none() && v.get(QUERY).is_none() && v.get(PARAMS).is_none() {
        errs.push(
            Diagnostic::new(v.span(), "`validate` names no schema")
                .label("give body, query or params"),
        );
    }
    v.finish(errs);
    Some(validation)
}

/// A schema given as a file name or an inline table; `what` names it in messages.
pub(super) fn read_schema(
    value: &Spanned<DeValue<'_>>,
    what: &str,
    base: &Path,
    errs: &mut Errors,
) -> Option<Schema> {
    let span = value.span();
    let fail = |errs: &mut Errors, message: String, label: &str| {
        errs.push(Diagnostic::new(span.clone(), message).label(label.to_string()));
        None
    };
    let (source, json, file) = match value.get_ref() {
        DeValue::String(name) => {
            let path = base.join(name.as_ref());
            match read_json(&path, name) {
                Ok(json) => (name.to_string(), json, Some(path)),
                Err(why) => return fail(errs, format!("the {what} {why}"), "this schema"),
            }
        }
        DeValue::Table(_) => ("inline".to_string(), to_json_as_written(value), None),
        other => {
            return fail(
                errs,
                format!(
                    "the {what} must be a file name or an inline table, found {}",
                    other.type_str()
                ),
                "expected a file name or a table",
            );
        }
    };
    // The document's own address: relative `$ref`s resolve against it. An inline
    // schema stands where the config file does.
    let own = file.clone().unwrap_or_else(|| base.join("routes.toml"));
    let Some(base_uri) = file_uri(&own) else {
        return fail(
            errs,
            format!("the {what}'s place cannot be named as a file URL"),
            "this schema",
        );
    };
    let files = Arc::new(std::sync::Mutex::new(file.into_iter().collect::<Vec<_>>()));
    let options = || {
        // `format` is asserted under every draft (2020-12 only annotates by default):
        // a schema that says `"format": "email"` means it, as gojsonschema and
        // ajv-formats read it.
        // A pattern with lookaround or backreferences backtracks; a client's string
        // must not make one run long (plain patterns are linear either way).
        jsonschema::options()
            .with_pattern_options(
                jsonschema::PatternOptions::fancy_regex().backtrack_limit(MAX_BACKTRACK),
            )
            .should_validate_formats(true)
            .with_base_uri(base_uri.clone())
            .with_retriever(Files {
                read: files.clone(),
            })
    };
    let validator = match options().build(&json) {
        Ok(v) => v,
        Err(e) => {
            let mut d = Diagnostic::new(
                span.clone(),
                format!("the {what} ({source}) is not a valid JSON Schema: {e}"),
            )
            .label("this schema");
            // A meta-schema failure: where in the schema it is.
            let at = e.instance_path().to_string();
            if !at.is_empty() {
                d = d.note(format!("at {at} in the schema"));
            }
            errs.push(d);
            return None;
        }
    };
    // A recursive schema cannot be written out whole: published as it is then.
    let published = options().dereference(&json).unwrap_or(json);
    let files = files.lock().map(|f| f.clone()).unwrap_or_default();
    Some(Schema {
        source,
        published,
        validator: Arc::new(validator),
        files,
    })
}

/// A schema file read and parsed; the error says why not, with the file's own
/// line:col for JSON that does not parse.
fn read_json(path: &Path, shown: &str) -> Result<Value, String> {
    let bytes = crate::base::files::read_bounded(path, MAX_SCHEMA)
        .map_err(|e| format!("`{shown}` cannot be read: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "`{shown}` is not valid JSON: {shown}:{}:{}: {}",
            e.line(),
            // 0 at a line's very start (the end of a file that stops after a newline).
            e.column().max(1),
            crate::base::json::without_position(&e.to_string())
        )
    })
}

/// `file:///abs/path`, percent-encoded as a URL path.
fn file_uri(path: &Path) -> Option<String> {
    let absolute = std::path::absolute(path).ok()?;
    url::Url::from_file_path(absolute)
        .ok()
        .map(|u| u.to_string())
}

/// The only retrieval a schema gets: files, by path. Each one read is remembered (the
/// reload watch); anything else is refused.
struct Files {
    read: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl jsonschema::Retrieve for Files {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.scheme().as_str() != "file" {
            return Err(format!(
                "`$ref` to `{uri}` refused: schemas are read from files beside the config, never fetched"
            )
            .into());
        }
        let url = url::Url::parse(uri.as_str()).map_err(|e| format!("`{uri}`: {e}"))?;
        let path = url
            .to_file_path()
            .map_err(|()| format!("`{uri}` names no file"))?;
        let shown = path.display().to_string();
        let json = read_json(&path, &shown)?;
        if let Ok(mut read) = self.read.lock() {
            read.push(path);
        }
        Ok(json)
    }
}
