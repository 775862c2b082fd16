//! Bearer tokens: named JWT validators (`[auth.jwt.NAME]`), their keys, and a
//! route's check (`auth = { jwt, scopes, claims_to_headers, optional }`).
//!
//! A token is never trusted to say how it should be checked: its `alg` must be one the
//! validator lists *and* the algorithm of the key it names (an RSA key never checks an
//! HS256 signature; `none` is not an algorithm here), keys come only from the
//! validator's own source (a token's `jku`/`jwk` headers are ignored), and `exp` is
//! required.
//!
//! Signature checks are the expensive part (an RS256 verify is tens of µs), so a
//! verified token is remembered, by its whole text, until its `exp` (bounded LRU):
//! the next request with it costs a hash lookup and a clock read. A key set fetched
//! again invalidates what was verified with the previous one.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::base::error::{AuthFailure, GatewayError};
use crate::config::auth::{Jwk as Key, JwtConfig, KeySource, parse_jwks as parse_keys};
use crate::telemetry::metrics::labels::AuthResult;
use crate::telemetry::metrics::{JwksMetrics, METRICS};

// === keys ===

/// The keys a validator holds now. `generation` changes with every set taken in, so
/// tokens verified under an older set are checked again.
struct KeySet {
    generation: u64,
    keys: Vec<Key>,
    /// When they were fetched or read (none yet: a URL's first fetch is pending).
    at: Option<std::time::SystemTime>,
}

// === validators ===

/// Verified tokens remembered per validator, and the longest remembered: at most
/// about 40 MB however large tokens get (they are bounded by `max_header_size`).
const VERIFIED: usize = 10_000;
const MAX_REMEMBERED: usize = 4096;
/// A JWKS fetch's whole time, and its largest body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS: usize = 1 << 20;

/// A token verified earlier: its claims, and until when they hold.
#[derive(Clone)]
struct Verified {
    claims: Arc<Map<String, Value>>,
    exp: f64,
    nbf: Option<f64>,
    generation: u64,
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// One named validator: its settings, its keys, and the tokens it verified lately.
pub struct Validator {
    pub config: JwtConfig,
    /// One prepared `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    keys: ArcSwap<KeySet>,
    verified: Mutex<lru::LruCache<Arc<str>, Verified, foldhash::fast::RandomState>>,
    /// One fetch at a time; requests with an unknown `kid` wait on it.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// When an unknown `kid` last caused a fetch (the cooldown's start).
    kid_fetch: Mutex<Option<Instant>>,
    client: Option<Client>,
    metrics: JwksMetrics,
    /// The refresh task (URL) or the file watch (file); ended with the validator.
    background: Mutex<Option<Background>>,
}

enum Background {
    Task(tokio::task::JoinHandle<()>),
    Watch(#[allow(dead_code)] crate::base::files::FileWatch),
}

impl Drop for Validator {
    fn drop(&mut self) {
        if let Ok(mut b) = self.background.lock()
            && let Some(Background::Task(t)) = b.take()
        {
            t.abort();
        }
    }
}

impl Validator {
    /// Builds a validator and starts keeping its keys: a URL is fetched now (in the
    /// background: a failure is logged, not fatal) and every `refresh`; a file is read
    /// now and watched.
    /// `previous`: the validator of the same name before a reload; when its keys come
    /// from the same place, they carry over (a JWKS down at the reload must not cost
    /// the keys held).
    pub fn start(
        config: JwtConfig,
        previous: Option<&Arc<Validator>>,
    ) -> Result<Arc<Validator>, String> {
        let mut validations = Vec::with_capacity(config.algorithms.len());
        for &alg in &config.algorithms {
            let mut v = Validation::new(alg);
            // The times are checked here ([`times`]): jsonwebtoken reads them as whole
            // seconds, so a fractional NumericDate (RFC 7519 §2) would fail.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims.clear();
            match &config.issuer {
                Some(iss) => v.set_issuer(&[iss]),
                None => v.iss = None,
            }
            if config.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audience);
            }
            validations.push((alg, v));
        }
        let (keys, client) = match &config.source {
            KeySource::Secret(s) => {
                let key = DecodingKey::from_secret(s.0.as_bytes())
                    .map_err(|e| format!("auth.jwt.{}: unusable secret: {e}", config.name))?;
                (
                    vec![Key {
                        kid: None,
                        alg: None,
                        key,
                    }],
                    None,
                )
            }
            KeySource::File(path) => {
                let text = crate::base::files::read_bounded(path, crate::base::files::MAX_FILE)
                    .map_err(|e| {
                        format!(
                            "auth.jwt.{}: cannot read {}: {e}",
                            config.name,
                            path.display()
                        )
                    })?;
                let keys = parse_keys(&text)
                    .map_err(|e| format!("auth.jwt.{}: {}: {e}", config.name, path.display()))?;
                (keys, None)
            }
            KeySource::Url(_) => {
                let tls = crate::base::tls::client_config(config.ca_file.as_deref())?;
                let connector = crate::base::tls::connector(tls, Some(FETCH_TIMEOUT), None, false);
                // No pooling: fetches are minutes apart, and may come from any loop.
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_max_idle_per_host(0)
                .build(connector);
                (Vec::new(), Some(client))
            }
        };
        let carried = previous
            .filter(|p| p.config.source == config.source && p.config.ca_file == config.ca_file)
            .map(|p| p.keys.load_full());
        let keys = match carried {
            Some(set) if !set.keys.is_empty() && matches!(config.source, KeySource::Url(_)) => set,
            _ => Arc::new(KeySet {
                generation: 1,
                at: (!keys.is_empty()).then(std::time::SystemTime::now),
                keys,
            }),
        };
        let validator = Arc::new(Validator {
            metrics: METRICS.jwks(&config.name),
            validations,
            keys: ArcSwap::new(keys),
            verified: Mutex::new(lru::LruCache::with_hasher(
                NonZeroUsize::new(VERIFIED).unwrap_or(NonZeroUsize::MIN),
                foldhash::fast::RandomState::default(),
            )),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            kid_fetch: Mutex::new(None),
            client,
            background: Mutex::new(None),
            config,
        });
        let background = match &validator.config.source {
            KeySource::Secret(_) => None,
            KeySource::Url(_) => {
                let weak = Arc::downgrade(&validator);
                Some(Background::Task(tokio::spawn(refresh_loop(weak))))
            }
            KeySource::File(path) => {
                let weak = Arc::downgrade(&validator);
                crate::base::files::FileWatch::start(
                    std::slice::from_ref(path),
                    "JWKS file",
                    move || {
                        if let Some(v) = weak.upgrade() {
                            v.reread_file();
                        }
                    },
                )
                .map(Background::Watch)
            }
        };
        if let Ok(mut b) = validator.background.lock() {
            *b = background;
        }
        Ok(validator)
    }

    /// Keys held now (`/routes`): 0 means tokens get 503 until a fetch succeeds.
    pub fn keys_held(&self) -> usize {
        self.keys.load().keys.len()
    }

    /// When the keys held were last fetched or read.
    pub fn refreshed_at(&self) -> Option<std::time::SystemTime> {
        self.keys.load().at
    }

    fn take_keys(&self, keys: Vec<Key>) {
        let generation = self.keys.load().generation + 1;
        self.keys.store(Arc::new(KeySet {
            generation,
            keys,
            at: Some(std::time::SystemTime::now()),
        }));
    }

    fn reread_file(&self) {
        let KeySource::File(path) = &self.config.source else {
            return;
        };
        let read = crate::base::files::read_bounded(path, crate::base::files::MAX_FILE)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_keys(&t));
        match read {
            Ok(keys) => {
                tracing::info!(validator = %self.config.name, keys = keys.len(), "JWKS file read again");
                self.take_keys(keys);
                self.metrics.ok.inc();
            }
            Err(e) => {
                self.metrics.error.inc();
                tracing::error!(validator = %self.config.name, file = %path.display(), error = %e, "the changed JWKS file cannot be used; keeping the keys it had");
            }
        }
    }

    /// Fetches the JWKS now; a failure keeps the keys there were.
    async fn fetch(&self) -> bool {
        let (KeySource::Url(url), Some(client)) = (&self.config.source, &self.client) else {
            return false;
        };
        let result = tokio::time::timeout(FETCH_TIMEOUT, async {
            let uri: http::Uri = url.as_str().parse().map_err(|e| format!("{e}"))?;
            let req = http::Request::get(uri)
                .header(header::ACCEPT, "application/json")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| innermost(&e))?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            parse_keys(&body)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())));
        match result {
            Ok(keys) => {
                tracing::debug!(validator = %self.config.name, keys = keys.len(), "JWKS fetched");
                self.take_keys(keys);
                self.metrics.ok.inc();
                true
            }
            Err(e) => {
                self.metrics.error.inc();
                let held = self.keys.load().keys.len();
                tracing::warn!(validator = %self.config.name, url = %crate::base::redact::url(url.as_str()), error = %e, keys_held = held, "JWKS fetch failed; keeping the keys it had");
                false
            }
        }
    }

    /// A token named a `kid` this validator does not hold (or it holds no key at all):
    /// fetch again, unless a fetch for that reason ran within `refresh_cooldown`.
    /// Requests that arrive meanwhile wait for the one fetch and use its keys.
    async fn refetch_for_unknown_kid(self: &Arc<Self>, seen: u64) {
        if self.client.is_none() {
            return;
        }
        let one = self.fetching.clone().lock_owned().await;
        if self.keys.load().generation != seen {
            return; // fetched while this request waited
        }
        {
            let mut last = self
                .kid_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.config.refresh_cooldown) {
                return;
            }
            *last = Some(Instant::now());
        }
        // Its own task: the fetch goes on when the request that asked for it gives up
        // at its deadline, and the keys it brings serve the requests after it.
        let validator = self.clone();
        let fetch = tokio::spawn(async move {
            let _one = one;
            validator.fetch().await;
        });
        let _ = fetch.await;
    }

    /// The claims of a valid token (`Bearer` value), or why not.
    pub async fn verify(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<Arc<Map<String, Value>>, AuthFailure> {
        let now = unix_now();
        let leeway = self.config.leeway.as_secs_f64();
        let generation = self.keys.load().generation;
        if let Some(hit) = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
            && hit.generation == generation
        {
            if now >= hit.exp + leeway {
                return Err(AuthFailure::Invalid("the token has expired"));
            }
            if hit.nbf.is_none_or(|nbf| nbf <= now + leeway) {
                return Ok(hit.claims);
            }
        }
        let head = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::Invalid("the token is not a well-formed JWT"))?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == head.alg) else {
            return Err(AuthFailure::Invalid("the token's algorithm is not allowed"));
        };
        let mut set = self.keys.load_full();
        let named = |set: &KeySet| match (&head.kid, &self.config.source) {
            // A secret is the validator's one key, whatever the token names.
            (_, KeySource::Secret(_)) | (None, _) => !set.keys.is_empty(),
            (Some(kid), _) => set.keys.iter().any(|k| k.kid.as_ref() == Some(kid)),
        };
        if !named(&set) {
            self.refetch_for_unknown_kid(set.generation).await;
            set = self.keys.load_full();
            if set.keys.is_empty() {
                return Err(AuthFailure::Unavailable);
            }
            if !named(&set) {
                return Err(AuthFailure::Invalid("the token's key (kid) is unknown"));
            }
        }
        let secret = matches!(self.config.source, KeySource::Secret(_));
        let candidates = set
            .keys
            .iter()
            .filter(|k| secret || head.kid.is_none() || k.kid.as_ref() == head.kid.as_ref());
        let mut last = AuthFailure::Invalid("the token's algorithm is not its key's");
        for key in candidates {
            if !key.checks(*alg) {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let (exp, nbf) = times(&data.claims, now, leeway)?;
                    let claims = Arc::new(data.claims);
                    if token.len() > MAX_REMEMBERED {
                        return Ok(claims);
                    }
                    self.verified
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .put(
                            Arc::from(token),
                            Verified {
                                claims: claims.clone(),
                                exp,
                                nbf,
                                generation: set.generation,
                            },
                        );
                    return Ok(claims);
                }
                Err(e) => last = AuthFailure::Invalid(why(e.kind())),
            }
        }
        Err(last)
    }
}

/// Seconds since the Unix epoch, with the fraction: tokens' times are compared to it.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Checks a verified token's times at `now` (RFC 7519 §4.1.4–6: NumericDates, which may
/// be fractional): `exp` is required and the token is not accepted on or after it;
/// not before `nbf`; `iat` not in the future. Each with `leeway` seconds of skew.
/// Returns `exp` and `nbf` for the remembered token.
fn times(
    claims: &Map<String, Value>,
    now: f64,
    leeway: f64,
) -> Result<(f64, Option<f64>), AuthFailure> {
    let date = |name: &str| -> Result<Option<f64>, AuthFailure> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|t| t.is_finite())
                .map(Some)
                .ok_or(AuthFailure::Invalid(
                    "a claim of the token has the wrong type",
                )),
        }
    };
    let Some(exp) = date("exp")? else {
        return Err(AuthFailure::Invalid("the token has no exp claim"));
    };
    if now >= exp + leeway {
        return Err(AuthFailure::Invalid("the token has expired"));
    }
    let nbf = date("nbf")?;
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(AuthFailure::Invalid("the token is not valid yet (nbf)"));
    }
    if date("iat")?.is_some_and(|iat| iat > now + leeway) {
        return Err(AuthFailure::Invalid(
            "the token was issued in the future (iat)",
        ));
    }
    Ok((exp, nbf))
}

/// A transport error by its innermost cause ("Connection refused (os error 111)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// What to tell the client about a token that failed (never the token itself).
fn why(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidIssuer => "the token's issuer is not accepted",
        K::InvalidAudience => "the token's audience is not accepted",
        K::InvalidClaimFormat(_) => "a claim of the token has the wrong type",
        K::InvalidSignature => "the token's signature does not verify",
        K::InvalidAlgorithm => "the token's algorithm is not its key's",
        _ => "the token is not a well-formed JWT",
    }
}

/// Fetches the JWKS at start and every `refresh` (every `refresh_cooldown` while no key
/// is held), until the validator is gone.
async fn refresh_loop(validator: Weak<Validator>) {
    loop {
        let Some(v) = validator.upgrade() else { return };
        let ok = {
            let _one = v.fetching.lock().await;
            v.fetch().await
        };
        let wait = if ok || !v.keys.load().keys.is_empty() {
            v.config.refresh
        } else {
            v.config.refresh_cooldown
        };
        drop(v);
        tokio::time::sleep(wait).await;
    }
}

// === a route's check ===

/// A route's token check, compiled: its validator and what it asks of the claims.
pub struct Auth {
    pub validator: Arc<Validator>,
    pub scopes: Vec<String>,
    pub claims_to_headers: Vec<(String, http::HeaderName)>,
    pub optional: bool,
    /// Claims the route's backend paths read (`{jwt.NAME}`), in placeholder order.
    pub path_claims: Vec<String>,
    pub metrics: crate::telemetry::metrics::AuthMetrics,
}

/// What a route's check found: the token's claims, or none (optional, no token).
pub type Claims = Option<Arc<Map<String, Value>>>;

impl Auth {
    /// The route's token check within `by` (a key fetch it waits for is bounded by it
    /// too), counted; the result is for the access line. One token or none: with two
    /// `authorization` headers the first would be verified and both forwarded, so an
    /// upstream could act on the unverified one (docs/configuration.md#choices-the-contract-leaves-open).
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        by: Instant,
    ) -> (Result<Claims, GatewayError>, AuthResult) {
        if headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            self.metrics.count(AuthResult::Invalid);
            let refused = GatewayError::BadRequest {
                reason: "a request may carry one authorization header",
            };
            return (Err(refused), AuthResult::Invalid);
        }
        // Out of time means waiting for a key fetch: with keys held, the token named an
        // unknown one (401); with none, there is nothing to check with (503).
        let checked = tokio::time::timeout_at(by, self.check(headers))
            .await
            .unwrap_or_else(|_| {
                Err(if self.validator.keys_held() > 0 {
                    AuthFailure::Invalid("the token's key (kid) is unknown")
                } else {
                    AuthFailure::Unavailable
                })
            });
        let result = match &checked {
            Ok(Some(_)) => AuthResult::Ok,
            Ok(None) => AuthResult::Missing,
            Err(e) => AuthResult::from(e),
        };
        self.metrics.count(result);
        (checked.map_err(GatewayError::Auth), result)
    }

    /// What of the token reaches upstreams: the claims the backends' paths read,
    /// appended to `params` after the route's own, and `claims_to_headers` (only the
    /// token's word: a client's own header of that name never passes).
    /// [`Auth::check`] made sure each is sendable. Returns those claims as a cache-key
    /// part, like forwarded headers; each value length-prefixed, so no two claim sets
    /// read alike.
    pub fn apply(
        &self,
        claims: Option<&Map<String, Value>>,
        params: &mut Vec<String>,
        headers: &mut HeaderMap,
    ) -> String {
        use std::fmt::Write;
        for (_, name) in &self.claims_to_headers {
            headers.remove(name);
        }
        let mut identity = String::new();
        let Some(claims) = claims else {
            return identity;
        };
        for claim in &self.path_claims {
            let value = claim_text(claims, claim).unwrap_or_default();
            let _ = write!(identity, "\njwt.{claim}:{}:{value}", value.len());
            params.push(value.into_owned());
        }
        for (claim, name) in &self.claims_to_headers {
            let value = claim_text(claims, claim);
            let v = value.as_deref().unwrap_or("");
            let _ = write!(identity, "\njwt.{claim}:{}:{v}", v.len());
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(name.clone(), v);
            }
        }
        identity
    }

    /// Checks the request's `authorization` header.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Claims, AuthFailure> {
        let Some(token) = bearer(headers) else {
            return if self.optional {
                Ok(None)
            } else {
                Err(AuthFailure::Missing)
            };
        };
        let claims = self.validator.verify(token).await?;
        if !self.scopes.iter().all(|s| has_scope(&claims, s)) {
            return Err(AuthFailure::Forbidden);
        }
        // What the route sends upstream must be sendable: a path claim a safe,
        // non-empty segment (never `..`), a header claim a header value.
        for claim in &self.path_claims {
            match claim_text(&claims, claim) {
                Some(v) if is_segment(&v) => {}
                _ => {
                    return Err(AuthFailure::Invalid(
                        "a claim this route reads is missing or cannot be a path segment",
                    ));
                }
            }
        }
        for (claim, _) in &self.claims_to_headers {
            if let Some(v) = claim_text(&claims, claim)
                && (!is_plain_text(&v) || HeaderValue::from_str(&v).is_err())
            {
                return Err(AuthFailure::Invalid(
                    "a claim this route sends cannot be a header value",
                ));
            }
        }
        Ok(Some(claims))
    }
}

/// A claim value that may fill a path segment: not empty, not `.` or `..` (which an
/// upstream would resolve to another resource), plain text.
fn is_segment(v: &str) -> bool {
    !v.is_empty() && v != "." && v != ".." && is_plain_text(v)
}

/// Text with nothing that hides or reorders what a reader sees: no control characters
/// (C0, DEL, C1), no bidi marks, embeddings, overrides or isolates (U+202E turns
/// `nimda` into what reads as `admin` in a log or an admin UI), no zero-width space,
/// word joiner or invisible operators, no BOM, line or paragraph separator,
/// interlinear annotation or tag characters. The zero-width joiner and non-joiner stay
/// allowed: Persian, Indic scripts and emoji sequences need them. Claims that reach an
/// upstream must be plain text, as they must be free of CRLF.
pub fn is_plain_text(v: &str) -> bool {
    !v.chars().any(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{061C}'
                    | '\u{180E}'
                    | '\u{200B}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{2028}'..='\u{202E}'
                    | '\u{2060}'..='\u{2064}'
                    | '\u{2066}'..='\u{206F}'
                    | '\u{FEFF}'
                    | '\u{FFF9}'..='\u{FFFB}'
                    | '\u{E0000}'..='\u{E007F}'
            )
    })
}

/// The token of an `authorization: Bearer …` header; any other scheme is no token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A scope is granted by the space-separated `scope` claim or the `scp` claim (an
/// array, or a space-separated string).
fn has_scope(claims: &Map<String, Value>, want: &str) -> bool {
    let in_text = |v: &Value| v.as_str().is_some_and(|s| s.split(' ').any(|x| x == want));
    claims.get("scope").is_some_and(in_text)
        || claims.get("scp").is_some_and(|v| match v {
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
            other => in_text(other),
        })
}

/// A claim as text for a path, a query value, a header or a key: strings as they
/// are, numbers as written, booleans; anything else (absent, null, arrays, objects)
/// has no text.
pub fn claim_text<'c>(
    claims: &'c Map<String, Value>,
    name: &str,
) -> Option<std::borrow::Cow<'c, str>> {
    match claims.get(name)? {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.as_str().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// RFC 7519 §4.1.4: not accepted on or after `exp`; NumericDates may be fractional.
    #[test]
    fn times_are_numeric_dates_and_exp_is_exclusive() {
        let at = |c: Value, now: f64, leeway: f64| times(&claims(c), now, leeway).map(|t| t.0);
        assert_eq!(at(json!({"exp": 100.5}), 100.25, 0.0), Ok(100.5));
        assert!(at(json!({"exp": 100}), 100.0, 0.0).is_err(), "on exp");
        assert!(at(json!({"exp": 100}), 100.0, 1.0).is_ok(), "within leeway");
        assert!(
            at(json!({"exp": 100}), 101.0, 1.0).is_err(),
            "at exp + leeway"
        );
        assert!(at(json!({"exp": "100"}), 1.0, 0.0).is_err(), "not a number");
        assert!(at(json!({}), 1.0, 0.0).is_err(), "exp is required");
        assert!(at(json!({"exp": 100, "nbf": 50.5}), 50.25, 0.0).is_err());
        assert!(
            at(json!({"exp": 100, "nbf": 50.5}), 50.5, 0.0).is_ok(),
            "from nbf on"
        );
        assert!(at(json!({"exp": 100, "iat": 60.0}), 50.0, 0.0).is_err());
    }

    proptest::proptest! {
        /// Whatever the NumericDates (whole or fractional), a token is accepted exactly
        /// while `now < exp + leeway` and `nbf <= now + leeway`.
        #[test]
        fn a_token_is_valid_exactly_within_its_times(
            exp in 0.0f64..2e9, nbf in 0.0f64..2e9, now in 0.0f64..2e9, leeway in 0u32..120,
        ) {
            let leeway = f64::from(leeway);
            let ok = times(&claims(json!({"exp": exp, "nbf": nbf})), now, leeway).is_ok();
            proptest::prop_assert_eq!(ok, now < exp + leeway && nbf <= now + leeway);
        }
    }

    #[test]
    fn plain_text_has_no_invisible_characters() {
        assert!(is_plain_text("zoë-42"));
        // ZWNJ in Persian, ZWJ in an emoji sequence.
        assert!(is_plain_text("می\u{200c}خواهم"));
        assert!(is_plain_text("👩\u{200d}💻"));
        for bad in [
            "a\u{202e}b",
            "a\u{2066}b",
            "a\u{200b}b",
            "a\u{feff}",
            "a\u{85}b",
            "a\rb",
            "\u{e0041}",
        ] {
            assert!(!is_plain_text(bad), "{bad:?}");
        }
    }
}
