//! `compression`, in `[server]` and on a route: which codings answers are compressed
//! with, and from what size. `false` turns it off, `true` takes the defaults (on a
//! route: the server's table), a table sets them.

use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, KeyDefault, Table, closest, key};
use crate::base::coding::Coding;

#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// In the server's order of preference.
    pub algorithms: Vec<Coding>,
    /// Bodies smaller than this (uncompressed) are sent as they are.
    pub min_size: u64,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            min_size: MIN_SIZE.default_size(),
        }
    }
}

/// What a route says of compression.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RouteCompression {
    /// Nothing: the server's.
    #[default]
    Inherit,
    /// `false`.
    Off,
    /// `true`: the server's table, or the defaults when the server's is off.
    On,
    /// A table of its own.
    Own(Compression),
}

const DEFAULT_ALGORITHMS: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

pub const COMPRESSION: Key = key(
    "compression",
    "Compress answers for clients that accept it (br, zstd, gzip): false for none, true for the defaults, or { algorithms, min_size }.",
)
.default(KeyDefault::Bool(true));
pub const ROUTE_COMPRESSION: Key = key(
    "compression",
    "This route's compression: false, true (the server's), or { algorithms, min_size }; unset: the server's.",
)
.default(KeyDefault::Computed("server.compression"));
pub const ALGORITHMS: Key = key(
    "algorithms",
    "Codings in order of preference, among \"br\", \"zstd\" and \"gzip\".",
)
.non_empty()
.default(KeyDefault::Computed("[\"br\", \"zstd\", \"gzip\"]"));
pub const MIN_SIZE: Key = key(
    "min_size",
    "Bodies smaller than this (uncompressed) are not compressed.",
)
.default(KeyDefault::Size(1024));

/// `[server] compression`: `None` when it is off.
pub(super) fn read_server_compression(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
) -> Option<Compression> {
    match read(t, errs, COMPRESSION) {
        RouteCompression::Off => None,
        RouteCompression::Own(c) => Some(c),
        RouteCompression::Inherit | RouteCompression::On => Some(Compression::default()),
    }
}

/// A route's `compression`.
pub(super) fn read_route_compression(t: &mut Table<'_, '_>, errs: &mut Errors) -> RouteCompression {
    read(t, errs, ROUTE_COMPRESSION)
}

fn read(t: &mut Table<'_, '_>, errs: &mut Errors, k: Key) -> RouteCompression {
    match t.get(k).map(|v| v.get_ref()) {
        None => RouteCompression::Inherit,
        Some(toml::de::DeValue::Boolean(_)) => {
            if t.bool(errs, k).unwrap_or(true) {
                RouteCompression::On
            } else {
                RouteCompression::Off
            }
        }
        Some(toml::de::DeValue::Table(_)) => match t.table(errs, k) {
            Some(mut c) => {
                let own = read_table(&mut c, errs);
                c.finish(errs);
                own.map_or(RouteCompression::Inherit, RouteCompression::Own)
            }
            None => RouteCompression::Inherit,
        },
        Some(other) => {
            let span = t.get(k).map_or(t.span(), |v| v.span());
            errs.push(
                Diagnostic::new(
                    span,
                    format!(
                        "`compression` in {} must be true, false or a table, found {}",
                        t.name,
                        other.type_str()
                    ),
                )
                .label("expected true, false or { algorithms, min_size }"),
            );
            RouteCompression::Inherit
        }
    }
}

fn read_table(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<Compression> {
    let span = t.span();
    let listed = t.string_list(errs, ALGORITHMS);
    let min_size = t.size_or(errs, MIN_SIZE);
    let algorithms = match listed {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(list) => algorithms(list, span, errs)?,
    };
    Some(Compression {
        algorithms,
        min_size,
    })
}

fn algorithms(
    list: Vec<(String, SourceSpan)>,
    span: SourceSpan,
    errs: &mut Errors,
) -> Option<Vec<Coding>> {
    if list.is_empty() {
        errs.push(
            Diagnostic::new(span, "`algorithms` is empty")
                .label("name at least one of \"br\", \"zstd\", \"gzip\"")
                .note("to turn compression off, write `compression = false`"),
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (name, span) in list {
        match Coding::from_name(&name) {
            Some(c) if out.contains(&c) => {
                errs.push(
                    Diagnostic::new(span, format!("`{name}` is listed twice"))
                        .label("listed already"),
                );
                ok = false;
            }
            Some(c) => out.push(c),
            None => {
                let label = match closest(&name, Coding::ALL.iter().map(|c| c.as_str())) {
                    Some(c) => format!("did you mean \"{c}\"?"),
                    None => "one of \"br\", \"zstd\", \"gzip\"".to_string(),
                };
                errs.push(
                    Diagnostic::new(span, format!("unknown compression algorithm `{name}`"))
                        .label(label),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}
