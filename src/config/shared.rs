//! `[shared]`: the replicas' Redis, where rate limits are decided and cached answers
//! kept for every replica.

use std::time::Duration;

use super::auth::Secret;

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
