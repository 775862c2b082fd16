//! A route's `idempotency = { ttl, required }`: requests carrying the same
//! `idempotency-key` get the first one's answer, once it is final, without reaching an
//! upstream again (docs/configuration.md#idempotency-keys).

use std::time::Duration;

use super::reader::{Errors, Key, KeyDefault, Table, key};

#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyConfig {
    /// How long a final answer is kept for its key, from when it was stored.
    pub ttl: Duration,
    /// A request without `idempotency-key` is refused (400).
    pub required: bool,
}

pub const IDEMPOTENCY: Key = key(
    "idempotency",
    "Requests with the same idempotency-key (and identity) get the first one's final answer without reaching an upstream again: { ttl, required }.",
);
pub const TTL: Key = key("ttl", "How long a final answer is kept for its key.")
    .default(KeyDefault::Duration(Duration::from_secs(24 * 3600)));
pub const REQUIRED: Key = key(
    "required",
    "Refuse requests without idempotency-key (400 IDEMPOTENCY_KEY_MISSING).",
)
.default(KeyDefault::Bool(false));

/// The route's `idempotency` table.
pub(super) fn read_idempotency(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
) -> Option<IdempotencyConfig> {
    let mut i = t.table(errs, IDEMPOTENCY)?;
    let ttl = i.positive_duration_or(errs, TTL);
    let required = i.bool_or(errs, REQUIRED);
    i.finish(errs);
    Some(IdempotencyConfig { ttl, required })
}
