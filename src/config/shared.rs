//! `[shared]`: the replicas' Redis, where rate limits are decided and cached answers
//! kept for every replica.

use std::time::Duration;

use url::Url;

use super::auth::Secret;
use super::diag::Diagnostic;
use super::reader::{Errors, Key, KeyDefault, Table, key};
use std::path::Path;

/// `[shared]`.
#[derive(Clone, PartialEq)]
pub struct SharedConfig {
    /// `redis://[:password@]host:port/db`; shown only through [`crate::base::redact::url`].
    pub redis: String,
    pub key_prefix: String,
    pub timeout: Duration,
    pub max_entry: u64,
    /// For `rediss://`: CA certificates (PEM) trusted besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Signs cache entries (HMAC-SHA256) so replicas drop unsigned or forged ones.
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("redis", &crate::base::redact::url(&self.redis))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("max_entry", &self.max_entry)
            .field("ca_file", &self.ca_file)
            .field("secret", &self.secret)
            .finish()
    }
}

pub const REDIS: Key = key(
    "redis",
    "redis://[:password@]host:port/db, or rediss:// for TLS (usually \"${REDIS_URL}\"); the password is never shown.",
);
pub const KEY_PREFIX: Key = key(
    "key_prefix",
    "Start of every key: replicas with the same Redis and prefix share state.",
)
.default(KeyDefault::Str("manifold:"));
pub const TIMEOUT: Key = key(
    "timeout",
    "Per Redis operation; past it the replica decides alone.",
)
.default(KeyDefault::Duration(Duration::from_millis(20)));
pub const MAX_ENTRY: Key =
    key("max_entry", "Larger cached answers stay local.").default(KeyDefault::Size(256 << 10));
pub const CA_FILE: Key = key(
    "ca_file",
    "For rediss://: CA certificates (PEM) trusted besides the system's; relative to the config file's directory.",
);
pub const SECRET: Key = key(
    "secret",
    "Signs shared cache entries (HMAC-SHA256), so replicas drop entries a writer to Redis forged or moved; at least 32 bytes, usually \"${ENV}\"; never shown. Every replica needs the same one.",
);

/// `[shared]`: where the replicas' Redis is.
pub(super) fn read_shared(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<SharedConfig> {
    let redis = t.required_string(errs, REDIS);
    let key_prefix = t
        .string(errs, KEY_PREFIX)
        .map_or_else(|| KEY_PREFIX.default_str().to_string(), |(p, _)| p);
    let timeout = t.positive_duration_or(errs, TIMEOUT);
    let max_entry = t.size_or(errs, MAX_ENTRY);
    let ca_file = t.string(errs, CA_FILE).and_then(|(s, span)| {
        let path = base.join(&s);
        match crate::base::files::read_bounded(&path, crate::base::files::MAX_FILE) {
            Ok(b) if String::from_utf8_lossy(&b).contains("-----BEGIN CERTIFICATE-----") => {
                Some(path)
            }
            _ => {
                errs.push(
                    Diagnostic::new(span, format!("ca_file `{s}` is not a readable PEM file"))
                        .label("unusable"),
                );
                None
            }
        }
    });
    let secret = t.string(errs, SECRET).and_then(|(s, span)| {
        if s.len() < 32 {
            errs.push(
                Diagnostic::new(span, "the secret is shorter than 32 bytes")
                    .label("too short to resist guessing")
                    .note("use at least 256 bits of random data, e.g. `openssl rand -base64 32`"),
            );
            None
        } else {
            Some(Secret(s))
        }
    });
    let (url, span) = redis?;
    match Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
        _ => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{}` is not a redis:// URL", crate::base::redact::url(&url)),
                )
                .label("expected redis:// or rediss://[:password@]host:port/db"),
            );
            return None;
        }
    }
    Some(SharedConfig {
        redis: url,
        key_prefix,
        timeout,
        max_entry,
        ca_file,
        secret,
    })
}
