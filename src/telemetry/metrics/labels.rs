//! The label values the code chooses, as enums: each indexes a counter made when the
//! metrics are (so counting is an array index, never a label built or looked up), and
//! says its word once, for metrics, access lines, spans and logs alike. A value not
//! listed cannot be counted, so none is silently dropped.

use crate::base::error::AuthFailure;

/// Declares a label enum: its variants, each with its word, `ALL` in order (the index
/// of its counters), and `as_str`.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }
    };
}

label!(
    /// Which cache a lookup asked: a route's answers, or an upstream's.
    CacheKind {
        Route => "route",
        Backend => "backend",
    }
);

label!(
    /// What a cache lookup found (`manifold_cache_requests_total{result}`, the access
    /// line's `cache`, `x-manifold-cache`).
    CacheResult {
        Hit => "hit",
        Miss => "miss",
        /// Past its ttl, standing in for a failed fresh answer (`stale_if_error`).
        Stale => "stale",
    }
);

label!(
    /// How a route's token check ended (`manifold_auth_total{result}`, the access
    /// line's `auth`).
    AuthResult {
        Ok => "ok",
        /// No token (on an `optional` route, let through).
        Missing => "missing",
        Invalid => "invalid",
        Forbidden => "forbidden",
        Unavailable => "unavailable",
    }
);

impl From<&AuthFailure> for AuthResult {
    fn from(f: &AuthFailure) -> Self {
        match f {
            AuthFailure::Missing => AuthResult::Missing,
            AuthFailure::Invalid(_) => AuthResult::Invalid,
            AuthFailure::Forbidden => AuthResult::Forbidden,
            AuthFailure::Unavailable => AuthResult::Unavailable,
        }
    }
}

label!(
    /// Why a client connection was closed by one of its bounds
    /// (`manifold_connections_closed_total{reason}`).
    CloseReason {
        /// No whole request head within `header_read_timeout`.
        HeaderTimeout => "header_timeout",
        /// Quiet for `idle_timeout`.
        Idle => "idle",
        /// An answer untaken for `send_timeout`.
        SendTimeout => "send_timeout",
        /// The TLS handshake failed.
        TlsHandshake => "tls_handshake",
        /// It spoke another protocol than ALPN chose.
        AlpnMismatch => "alpn_mismatch",
    }
);

label!(
    /// An operation on the replicas' Redis (`manifold_shared_ops_total{op}`).
    RedisOp {
        RateLimit => "rate_limit",
        CacheGet => "cache_get",
        CacheSet => "cache_set",
        IdempotencyBegin => "idempotency_begin",
        IdempotencyKeep => "idempotency_keep",
        IdempotencyFree => "idempotency_free",
    }
);

label!(
    /// What a route's idempotency made of a request (`manifold_idempotency_total{result}`,
    /// the access line's `idempotency`).
    IdempotencyResult {
        /// A first request whose final answer was kept.
        Stored => "stored",
        /// The kept answer, sent again; no upstream called.
        Replayed => "replayed",
        /// 409: a request with the key is in flight.
        InProgress => "in_progress",
        /// 422: the key came with another request.
        Reused => "reused",
        /// 400: no key where one is required.
        Missing => "missing",
        /// 400: not a key (1-255 visible ASCII characters).
        Invalid => "invalid",
        /// A final answer too large to keep; the key is free again.
        TooLarge => "too_large",
        /// Not final (5xx, timeout, 408/409/425/429, partial, client gone): nothing
        /// kept, the key free again.
        NotStored => "not_stored",
    }
);

label!(
    /// How an operation on Redis ended (`manifold_shared_ops_total{result}`).
    RedisResult {
        Ok => "ok",
        Error => "error",
        Timeout => "timeout",
    }
);

label!(
    /// Why an entry read from Redis was not used
    /// (`manifold_shared_entries_dropped_total{reason}`).
    Dropped {
        /// Larger than `max_entry`: refused without reading it whole.
        TooLarge => "too_large",
        /// With `[shared] secret`: no signature.
        Unsigned => "unsigned",
        /// With `[shared] secret`: a signature that does not verify (a forged entry,
        /// or one moved from another key), or a signed entry read without a secret.
        Forged => "forged",
        /// Stored in the future.
        Implausible => "implausible",
    }
);

label!(
    /// What became of spans handed to the exporter (`manifold_trace_spans_total`).
    SpanExport {
        Exported => "exported",
        /// In an export the collector refused or did not answer.
        Failed => "failed",
        /// The export queue was full.
        Dropped => "dropped",
    }
);

label!(
    /// How a reload, or a re-read of the listener's certificate, ended.
    Reload {
        Ok => "ok",
        Error => "error",
    }
);

label!(
    /// How a hedged call's hedge ended (`manifold_hedges_total{result}`).
    Hedge {
        /// Its answer was the one used.
        Won => "won",
        Lost => "lost",
    }
);

/// The request histograms' `method` label: the standard methods by name, any other
/// as `OTHER`, so a client cannot mint label values.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

/// A method's index in [`METHODS`].
pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}
