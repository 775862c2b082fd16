//! A typed reader over a spanned TOML document that keeps going after a problem.
//!
//! serde stops at the first error; operators want every problem in one pass. So the
//! loader walks the parsed document itself: each getter records a diagnostic and returns
//! `None` on a bad value, and `finish` reports the keys nobody asked for as unknown.

use std::time::Duration;

use http::Method;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diagnostic, SourceSpan};

pub type Errors = Vec<Diagnostic>;

/// The longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A bound of a size key as a file would write it: `64KiB`, `1MiB`, `1000`.
fn show_size(n: f64) -> String {
    let n = n as u64;
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// A bound of a number key: `0.0`, `1.0`, `0.0000116`.
fn show_number(n: f64) -> String {
    if n != 0.0 && n.abs() < 0.001 {
        format!("{n:.7}")
    } else {
        format!("{n:.1}")
    }
}

/// How messages name the document's root table.
pub const ROOT: &str = "the top level";

/// One TOML table being read; remembers which keys were asked for.
pub struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    span: SourceSpan,
    /// How messages name this table, e.g. `[upstreams.users]`.
    pub name: String,
    used: Vec<&'static str>,
    /// Where this table sits in the schema: `/upstreams/*/retry`, `/routes/[]`.
    path: String,
}

/// What a getter reads; the JSON Schema is made from these (see `config::schema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Any,
    String,
    Bool,
    Count,
    Number,
    Duration,
    Size,
    StringList,
    StringMap,
    Table,
    NamedTables,
    TableArray,
}

/// A key as the loader reads it: its name, what it means (the schema's description,
/// written where the loader reads the key), the bounds the loader holds it to (the
/// schema's `minimum` and `maximum`), its default, the values it may take, and whether
/// a list of it may be empty — so the schema cannot say what `check` does not, and the
/// docs' key tables are held to the same facts (`tests/docs_keys.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub about: &'static str,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub default: KeyDefault,
    /// The values a string key may take (an enum in the schema).
    pub choices: &'static [&'static str],
    /// A list or table array that must hold at least one item.
    pub non_empty: bool,
    /// The key must be given (its table's reader reports it missing).
    pub required: bool,
}

/// A key's default, typed as the key is: what the loader uses when the key is absent,
/// what `manifold schema` publishes, and what docs/configuration.md's table says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDefault {
    /// No default: the key is required, or its absence means "off".
    None,
    Duration(Duration),
    Size(u64),
    Count(u64),
    Number(f64),
    Str(&'static str),
    Bool(bool),
    /// Worked out when the gateway starts (such as "one per CPU"): said, not a value.
    Computed(&'static str),
}

impl KeyDefault {
    /// The default as a file would write it: `2s`, `1MiB`, `1024`, `"round_robin"`.
    pub fn text(&self) -> Option<String> {
        Some(match self {
            KeyDefault::None => return None,
            KeyDefault::Duration(d) => humantime::format_duration(*d).to_string(),
            KeyDefault::Size(n) => show_size(*n as f64),
            KeyDefault::Count(n) => n.to_string(),
            KeyDefault::Number(n) => n.to_string(),
            KeyDefault::Str(s) => format!("\"{s}\""),
            KeyDefault::Bool(b) => b.to_string(),
            KeyDefault::Computed(said) => (*said).to_string(),
        })
    }

    /// The default as the schema's `default` (none for a computed one).
    pub fn json(&self) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match self {
            KeyDefault::None | KeyDefault::Computed(_) => return None,
            KeyDefault::Duration(d) => Value::String(humantime::format_duration(*d).to_string()),
            KeyDefault::Size(n) => Value::String(show_size(*n as f64)),
            KeyDefault::Count(n) => Value::from(*n),
            KeyDefault::Number(n) => Value::from(*n),
            KeyDefault::Str(s) => Value::String((*s).to_string()),
            KeyDefault::Bool(b) => Value::Bool(*b),
        })
    }
}

/// `key("timeout", "Deadline for the whole request.")`.
pub const fn key(name: &'static str, about: &'static str) -> Key {
    Key {
        name,
        about,
        min: None,
        max: None,
        default: KeyDefault::None,
        choices: &[],
        non_empty: false,
        required: false,
    }
}

impl Key {
    /// Used when the key is absent.
    pub const fn default(mut self, d: KeyDefault) -> Key {
        self.default = d;
        self
    }

    /// The only values the key may take.
    pub const fn choices(mut self, choices: &'static [&'static str]) -> Key {
        self.choices = choices;
        self
    }

    /// A list that must hold at least one item.
    pub const fn non_empty(mut self) -> Key {
        self.non_empty = true;
        self
    }

    /// The key must be given: the schema says so; the reader reports it missing.
    pub const fn required(mut self) -> Key {
        self.required = true;
        self
    }

    /// The default of a duration key (zero if it has none: a bug the tests catch).
    pub fn default_duration(&self) -> Duration {
        match self.default {
            KeyDefault::Duration(d) => d,
            _ => Duration::ZERO,
        }
    }

    /// The default of a size key.
    pub fn default_size(&self) -> u64 {
        match self.default {
            KeyDefault::Size(n) => n,
            _ => 0,
        }
    }

    /// The default of a count key.
    pub fn default_count(&self) -> u64 {
        match self.default {
            KeyDefault::Count(n) => n,
            _ => 0,
        }
    }

    /// The default of a number key.
    pub fn default_number(&self) -> f64 {
        match self.default {
            KeyDefault::Number(n) => n,
            _ => 0.0,
        }
    }

    /// The default of a string key.
    pub fn default_str(&self) -> &'static str {
        match self.default {
            KeyDefault::Str(s) => s,
            _ => "",
        }
    }

    /// The default of a bool key.
    pub fn default_bool(&self) -> bool {
        matches!(self.default, KeyDefault::Bool(true))
    }

    /// Values below `min` are refused (counts, sizes and numbers).
    pub const fn at_least(mut self, min: f64) -> Key {
        self.min = Some(min);
        self
    }

    /// Values outside `min..=max` are refused.
    pub const fn between(mut self, min: f64, max: f64) -> Key {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
}

/// One key the loader asked for, where, and how.
#[derive(Debug, Clone)]
pub struct Field {
    pub path: String,
    pub key: &'static str,
    pub about: &'static str,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub kind: Kind,
    pub required: bool,
    pub default: KeyDefault,
    pub choices: &'static [&'static str],
    pub non_empty: bool,
}

thread_local! {
    static RECORDING: std::cell::RefCell<Option<Vec<Field>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a load) and returns every key its getters asked for: the loader itself is
/// the description of the file, so the schema cannot drift from it.
pub fn record(f: impl FnOnce()) -> Vec<Field> {
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
    f();
    RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default()
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(table: &'a DeTable<'i>, span: SourceSpan, name: impl Into<String>) -> Self {
        Self {
            table,
            span,
            name: name.into(),
            used: Vec::new(),
            path: String::new(),
        }
    }

    fn child(&self, table: &'a DeTable<'i>, span: SourceSpan, name: String, path: String) -> Self {
        let mut t = Table::new(table, span, name);
        t.path = path;
        t
    }

    fn note(&self, k: Key, kind: Kind, required: bool) {
        RECORDING.with(|r| {
            if let Some(fields) = r.borrow_mut().as_mut() {
                fields.push(Field {
                    path: self.path.clone(),
                    key: k.name,
                    about: k.about,
                    min: k.min,
                    max: k.max,
                    kind,
                    required: required || k.required,
                    default: k.default,
                    choices: k.choices,
                    non_empty: k.non_empty,
                });
            }
        });
    }

    /// Marks `key` as required in the schema (for keys whose absence the caller checks).
    pub fn require(&self, k: Key) {
        self.note(k, Kind::Any, true);
    }

    /// The value of `key`, noted (for the schema) as read with `kind`.
    fn typed(&mut self, k: Key, kind: Kind) -> Option<&'a Spanned<DeValue<'i>>> {
        self.note(k, kind, false);
        self.lookup(k.name)
    }

    /// `n` if it is within the key's bounds, else a diagnostic; `show` writes a bound
    /// as the file would (`64KiB`, `1`, `0.5`).
    fn bounded<T>(
        &self,
        errs: &mut Errors,
        k: Key,
        n: f64,
        value: T,
        span: SourceSpan,
        show: fn(f64) -> String,
    ) -> Option<(T, SourceSpan)> {
        let low = k.min.is_some_and(|min| n < min);
        let high = k.max.is_some_and(|max| n > max);
        if !low && !high {
            return Some((value, span));
        }
        let message = match (k.min, k.max) {
            (Some(min), Some(max)) => {
                format!("{} must be between {} and {}", k.name, show(min), show(max))
            }
            (Some(min), None) => format!("{} must be at least {}", k.name, show(min)),
            (None, Some(max)) => format!("{} must be at most {}", k.name, show(max)),
            (None, None) => return Some((value, span)),
        };
        errs.push(Diagnostic::new(span, message).label(if low {
            "too small"
        } else {
            "too large"
        }));
        None
    }

    fn lookup(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.used.push(key);
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    /// A table with no keys, so absent sections read as all-defaults.
    pub fn empty(name: &str) -> Table<'static, 'static> {
        static EMPTY: std::sync::LazyLock<DeTable<'static>> =
            std::sync::LazyLock::new(DeTable::default);
        Table::new(&EMPTY, 0..0, name)
    }

    pub fn span(&self) -> SourceSpan {
        self.span.clone()
    }

    /// The raw value of `key` (any type), marking it as known.
    pub fn get(&mut self, k: Key) -> Option<&'a Spanned<DeValue<'i>>> {
        self.note(k, Kind::Any, false);
        self.lookup(k.name)
    }

    fn wrong_type(&self, errs: &mut Errors, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        errs.push(
            Diagnostic::new(
                v.span(),
                format!(
                    "`{key}` in {} must be {want}, found {}",
                    self.name,
                    v.get_ref().type_str()
                ),
            )
            .label(format!("expected {want}")),
        );
    }

    pub fn missing(&self, errs: &mut Errors, key: &str) {
        errs.push(
            Diagnostic::new(
                self.span.clone(),
                format!("{} is missing required key `{key}`", self.name),
            )
            .label(format!("add `{key} = ...` here")),
        );
    }

    /// A string as the file has it, `${ENV}` left as written (no checks: read it with
    /// [`Table::string`] too).
    pub fn as_written(&mut self, k: Key) -> Option<String> {
        match self.get(k)?.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => None,
        }
    }

    /// A string with `${ENV}` filled in.
    pub fn string(&mut self, errs: &mut Errors, k: Key) -> Option<(String, SourceSpan)> {
        let key = k.name;
        let v = self.typed(k, Kind::String)?;
        match v.get_ref() {
            DeValue::String(s) => expand_env(s, v.span(), errs).map(|s| (s, v.span())),
            _ => {
                self.wrong_type(errs, key, v, "a string");
                None
            }
        }
    }

    pub fn required_string(&mut self, errs: &mut Errors, k: Key) -> Option<(String, SourceSpan)> {
        let key = k.name;
        self.note(k, Kind::String, true);
        let present = self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key);
        if !present {
            self.used.push(key);
            self.missing(errs, key);
            return None;
        }
        self.string(errs, k)
    }

    pub fn bool(&mut self, errs: &mut Errors, k: Key) -> Option<bool> {
        let key = k.name;
        let v = self.typed(k, Kind::Bool)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(errs, key, v, "true or false");
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, errs: &mut Errors, k: Key) -> Option<(u64, SourceSpan)> {
        let key = k.name;
        let v = self.typed(k, Kind::Count)?;
        match v.get_ref() {
            DeValue::Integer(i) => {
                match u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) => self.bounded(errs, k, n as f64, n, v.span(), |b| b.to_string()),
                    Err(_) => {
                        errs.push(
                            Diagnostic::new(
                                v.span(),
                                format!("`{key}` in {} must be a whole number ≥ 0", self.name),
                            )
                            .label("not a non-negative integer"),
                        );
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(errs, key, v, "a whole number");
                None
            }
        }
    }

    /// A number (integer or float).
    pub fn number(&mut self, errs: &mut Errors, k: Key) -> Option<(f64, SourceSpan)> {
        let key = k.name;
        let v = self.typed(k, Kind::Number)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            _ => {
                self.wrong_type(errs, key, v, "a number");
                return None;
            }
        };
        match parsed {
            Some(n) if n.is_finite() => self.bounded(errs, k, n, n, v.span(), show_number),
            _ => {
                errs.push(Diagnostic::new(
                    v.span(),
                    format!("`{key}` in {} must be a finite number", self.name),
                ));
                None
            }
        }
    }

    /// A duration string such as `"250ms"`, `"2s"`, `"1m"`.
    pub fn duration(&mut self, errs: &mut Errors, k: Key) -> Option<(Duration, SourceSpan)> {
        let key = k.name;
        let v = self.typed(k, Kind::Duration)?;
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(errs, key, v, "a duration string like \"250ms\"");
            return None;
        };
        let s = expand_env(s, v.span(), errs)?;
        match humantime::parse_duration(s.trim()) {
            // Far-future deadlines overflow the clock when added to "now"; nothing a
            // gateway waits for is longer than a year.
            Ok(d) if d > MAX_DURATION => {
                errs.push(
                    Diagnostic::new(
                        v.span(),
                        format!("duration `{s}` for `{key}` in {} is too long", self.name),
                    )
                    .label("longer than a year")
                    .note("the longest duration accepted is 365 days"),
                );
                None
            }
            Ok(d) => Some((d, v.span())),
            Err(e) => {
                errs.push(
                    Diagnostic::new(
                        v.span(),
                        format!("bad duration `{s}` for `{key}` in {}: {e}", self.name),
                    )
                    .label("not a duration")
                    .note("durations look like \"250ms\", \"2s\", \"1m\", \"1h 30m\""),
                );
                None
            }
        }
    }

    /// A duration longer than zero: `Some(None)` when absent, `None` when present but
    /// bad (reported).
    pub fn positive_duration(&mut self, errs: &mut Errors, k: Key) -> Option<Option<Duration>> {
        let present = self.get(k).is_some();
        match self.duration(errs, k) {
            Some((d, span)) if d.is_zero() => {
                errs.push(
                    Diagnostic::new(span, format!("`{}` must be longer than zero", k.name))
                        .label("zero"),
                );
                None
            }
            Some((d, _)) => Some(Some(d)),
            None if present => None,
            None => Some(None),
        }
    }

    /// A duration longer than zero, else (absent, or bad and reported) the key's
    /// default.
    pub fn positive_duration_or(&mut self, errs: &mut Errors, k: Key) -> Duration {
        self.positive_duration(errs, k)
            .flatten()
            .unwrap_or(k.default_duration())
    }

    /// A duration, else the key's default.
    pub fn duration_or(&mut self, errs: &mut Errors, k: Key) -> Duration {
        self.duration(errs, k)
            .map_or(k.default_duration(), |(d, _)| d)
    }

    /// A size, else the key's default.
    pub fn size_or(&mut self, errs: &mut Errors, k: Key) -> u64 {
        self.size(errs, k).map_or(k.default_size(), |(n, _)| n)
    }

    /// A count, else the key's default.
    pub fn count_or(&mut self, errs: &mut Errors, k: Key) -> u64 {
        self.count(errs, k).map_or(k.default_count(), |(n, _)| n)
    }

    /// A number, else the key's default.
    pub fn number_or(&mut self, errs: &mut Errors, k: Key) -> f64 {
        self.number(errs, k).map_or(k.default_number(), |(n, _)| n)
    }

    /// A bool, else the key's default.
    pub fn bool_or(&mut self, errs: &mut Errors, k: Key) -> bool {
        self.bool(errs, k).unwrap_or(k.default_bool())
    }

    /// One of the key's `choices`: `None` when absent, or not one of them (reported,
    /// with the closest one when it looks like a typo).
    pub fn choice(&mut self, errs: &mut Errors, k: Key) -> Option<(&'static str, SourceSpan)> {
        let (s, span) = self.string(errs, k)?;
        if let Some(c) = k.choices.iter().find(|c| **c == s) {
            return Some((c, span));
        }
        let mut d = Diagnostic::new(span.clone(), format!("unknown {} `{s}`", k.name)).label(
            match closest(&s, k.choices.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "not one of them".to_string(),
            },
        );
        d.notes.push(format!(
            "{} is one of: {}",
            k.name,
            k.choices
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        errs.push(d);
        None
    }

    /// One of the key's `choices`, else its default.
    pub fn choice_or(&mut self, errs: &mut Errors, k: Key) -> &'static str {
        self.choice(errs, k).map_or(k.default_str(), |(c, _)| c)
    }

    /// A size: bytes as an integer, or a string such as `"1MiB"`, `"512KiB"`, `"10MB"`.
    pub fn size(&mut self, errs: &mut Errors, k: Key) -> Option<(u64, SourceSpan)> {
        let key = k.name;
        let v = self.typed(k, Kind::Size)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            DeValue::String(s) => {
                let s = expand_env(s, v.span(), errs)?;
                parse_size(&s)
            }
            _ => {
                self.wrong_type(errs, key, v, "a size (\"1MiB\" or a number of bytes)");
                return None;
            }
        };
        match parsed {
            Some(n) => self.bounded(errs, k, n as f64, n, v.span(), show_size),
            None => {
                errs.push(
                    Diagnostic::new(v.span(), format!("bad size for `{key}` in {}", self.name))
                        .label("not a size")
                        .note(
                            "sizes look like \"512KiB\", \"1MiB\", \"10MB\" or a number of bytes",
                        ),
                );
                None
            }
        }
    }

    /// An array of strings.
    pub fn string_list(&mut self, errs: &mut Errors, k: Key) -> Option<Vec<(String, SourceSpan)>> {
        let key = k.name;
        let v = self.typed(k, Kind::StringList)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(errs, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => match expand_env(s, item.span(), errs) {
                    Some(s) => out.push((s, item.span())),
                    None => ok = false,
                },
                other => {
                    errs.push(
                        Diagnostic::new(
                            item.span(),
                            format!(
                                "`{key}` in {} must hold only strings, found {}",
                                self.name,
                                other.type_str()
                            ),
                        )
                        .label("expected a string"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A table whose keys are the user's own (e.g. `rename = { a = "b" }`), string values.
    pub fn string_map(&mut self, errs: &mut Errors, k: Key) -> Option<Vec<(String, String)>> {
        let key = k.name;
        let v = self.typed(k, Kind::StringMap)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(errs, key, v, "a table of strings");
            return None;
        };
        let mut out = Vec::new();
        for (k, item) in t.iter() {
            match item.get_ref() {
                DeValue::String(s) => {
                    if let Some(s) = expand_env(s, item.span(), errs) {
                        out.push((k.get_ref().to_string(), s));
                    }
                }
                other => errs.push(
                    Diagnostic::new(
                        item.span(),
                        format!(
                            "`{key}.{}` must be a string, found {}",
                            k.get_ref(),
                            other.type_str()
                        ),
                    )
                    .label("expected a string"),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table (`[a.b]` or inline `{ ... }`).
    pub fn table(&mut self, errs: &mut Errors, k: Key) -> Option<Table<'a, 'i>> {
        let key = k.name;
        let name = if self.name == ROOT {
            format!("[{key}]")
        } else {
            format!("`{key}` of {}", self.name)
        };
        let v = self.typed(k, Kind::Table)?;
        match v.get_ref() {
            DeValue::Table(t) => {
                Some(self.child(t, v.span(), name, format!("{}/{key}", self.path)))
            }
            _ => {
                self.wrong_type(errs, key, v, "a table");
                None
            }
        }
    }

    /// The entries of a table of tables (`[upstreams.NAME]`), in file order.
    pub fn named_tables(
        &mut self,
        errs: &mut Errors,
        k: Key,
    ) -> Vec<(String, SourceSpan, Table<'a, 'i>)> {
        let key = k.name;
        let Some(v) = self.typed(k, Kind::NamedTables) else {
            return Vec::new();
        };
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(errs, key, v, "a table of named tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, item) in t.iter() {
            let name = k.get_ref().to_string();
            match item.get_ref() {
                DeValue::Table(inner) => out.push((
                    name.clone(),
                    k.span(),
                    self.child(
                        inner,
                        item.span(),
                        format!("[{key}.{name}]"),
                        format!("{}/{key}/*", self.path),
                    ),
                )),
                other => errs.push(
                    Diagnostic::new(
                        item.span(),
                        format!("`{key}.{name}` must be a table, found {}", other.type_str()),
                    )
                    .label("expected a table"),
                ),
            }
        }
        out
    }

    /// An array of tables (`[[routes]]`), in file order.
    pub fn table_array(&mut self, errs: &mut Errors, k: Key) -> Vec<Table<'a, 'i>> {
        let key = k.name;
        let parent = self.name.clone();
        let Some(v) = self.typed(k, Kind::TableArray) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(errs, key, v, "an array of tables ([[...]])");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => {
                    let name = if parent == ROOT {
                        format!("[[{key}]] #{}", i + 1)
                    } else {
                        format!("{key} #{} of {parent}", i + 1)
                    };
                    out.push(self.child(t, item.span(), name, format!("{}/{key}/[]", self.path)))
                }
                other => errs.push(
                    Diagnostic::new(
                        item.span(),
                        format!("`{key}` must hold tables, found {}", other.type_str()),
                    )
                    .label("expected a table"),
                ),
            }
        }
        out
    }

    /// Reports every key of this table that no getter asked for.
    pub fn finish(self, errs: &mut Errors) {
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if self.used.contains(&key) {
                continue;
            }
            let mut d = Diagnostic::new(k.span(), format!("unknown key `{key}` in {}", self.name))
                .label("unknown key");
            if let Some(cand) = closest(key, self.used.iter().copied()) {
                d.label = format!("did you mean `{cand}`?");
            }
            let mut known: Vec<&str> = self.used.clone();
            known.sort_unstable();
            known.dedup();
            d.notes
                .push(format!("known keys here: {}", known.join(", ")));
            errs.push(d);
        }
    }
}

/// The candidate most like `name`, if one is close enough to be a likely typo
/// (`prodcut` → `product`, `timout` → `timeout`).
pub fn closest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|cand| (strsim::jaro_winkler(name, cand), cand))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, cand)| cand)
}

/// Converts a TOML value to JSON (for `default = ...`), filling `${ENV}` in strings.
/// Datetimes become strings.
pub fn to_json(v: &Spanned<DeValue<'_>>, errs: &mut Errors) -> serde_json::Value {
    convert(v, &mut |s, span| {
        expand_env(s, span, errs).map_or(serde_json::Value::Null, serde_json::Value::String)
    })
}

/// Converts a TOML value to JSON with its strings as written (an inline JSON Schema:
/// a `pattern` may hold `${`, which is no variable there).
pub fn to_json_as_written(v: &Spanned<DeValue<'_>>) -> serde_json::Value {
    convert(v, &mut |s, _| serde_json::Value::String(s.to_string()))
}

fn convert(
    v: &Spanned<DeValue<'_>>,
    string: &mut dyn FnMut(&str, SourceSpan) -> serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    match v.get_ref() {
        DeValue::String(s) => string(s, v.span()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(Value::from)
            .unwrap_or(Value::Null),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|i| convert(i, string)).collect()),
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), convert(v, string)))
                .collect(),
        ),
    }
}

/// Fills `${NAME}` from the environment; a missing variable is an error at the string.
pub fn expand_env(s: &str, span: SourceSpan, errs: &mut Errors) -> Option<String> {
    if !s.contains("${") {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut ok = true;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            errs.push(
                Diagnostic::new(span.clone(), "unclosed `${` in string").label("missing `}`"),
            );
            return None;
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(val) => out.push_str(&val),
            Err(_) => {
                errs.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("environment variable `{name}` is not set"),
                    )
                    .label(format!("needs ${{{name}}}"))
                    .note("every ${NAME} in routes.toml must be set when the config is loaded"),
                );
                ok = false;
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    ok.then_some(out)
}

/// An HTTP method (any case): `Some(None)` when absent, `None` when not a method
/// (reported).
pub fn method_of(errs: &mut Errors, value: Option<(String, SourceSpan)>) -> Option<Option<Method>> {
    let Some((s, span)) = value else {
        return Some(None);
    };
    let upper = s.to_ascii_uppercase();
    match Method::from_bytes(upper.as_bytes()) {
        Ok(m) => Some(Some(m)),
        Err(_) => {
            errs.push(
                Diagnostic::new(span, format!("`{s}` is not an HTTP method"))
                    .label("expected e.g. \"GET\" or \"POST\""),
            );
            None
        }
    }
}

/// Parses `"1MiB"`, `"512 KiB"`, `"10MB"`, `"1024"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn env_expansion() {
        let mut errs = Vec::new();
        // SAFETY: single-threaded unit test setting a variable nobody else reads.
        unsafe { std::env::set_var("MANIFOLD_TEST_HOST", "svc.internal") };
        assert_eq!(
            expand_env("http://${MANIFOLD_TEST_HOST}:80", 0..1, &mut errs).as_deref(),
            Some("http://svc.internal:80")
        );
        assert!(errs.is_empty());
        assert_eq!(
            expand_env("${MANIFOLD_SURELY_UNSET_VAR}", 0..1, &mut errs),
            None
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("MANIFOLD_SURELY_UNSET_VAR"));
    }
}
