//! `[auth.jwt.NAME]` and a route's `auth`: the token validators' settings, and how a
//! JWKS document is read (at load, to check a `jwks_file`, and by the validators).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// A secret that never shows in a log, a debug print or `/routes`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where a validator's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A JWKS fetched at start, every `refresh`, and on an unknown `kid`.
    Url(url::Url),
    /// A JWKS file, read at load and again when it changes.
    File(PathBuf),
    /// One HMAC secret (HS256/384/512).
    Secret(Secret),
}

/// `[auth.jwt.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub name: String,
    pub source: KeySource,
    /// `iss` must equal it.
    pub issuer: Option<String>,
    /// `aud` must hold one of them (none: `aud` is not checked).
    pub audience: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub refresh: Duration,
    pub refresh_cooldown: Duration,
    /// Extra CA certificates for an `https://` JWKS URL.
    pub ca_file: Option<PathBuf>,
}

/// A route's `auth`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAuth {
    pub jwt: String,
    pub scopes: Vec<String>,
    /// (claim, header): a validated claim sent to every backend as this header.
    pub claims_to_headers: Vec<(String, http::HeaderName)>,
    /// A request without a token passes (with no claims); a bad token still fails.
    pub optional: bool,
}

/// The algorithm's family: which kind of key checks it.
pub fn family(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

/// One verification key of a key set.
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one: a token must use exactly it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Jwk {
    /// The key checks tokens of `alg`: its family, and its own `alg` if it names one.
    pub fn checks(&self, alg: Algorithm) -> bool {
        self.key.family() == family(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Parses a JWKS document (`{"keys": [...]}`). Keys it cannot use (encryption keys,
/// unknown types, HMAC secrets) are skipped; a set with no usable key is an error.
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no `keys` array: not a JWKS".into());
    };
    let mut keys = Vec::with_capacity(list.len());
    for entry in list {
        if entry.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(entry.clone()) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        // An HMAC secret in a JWKS would let anyone who reads the JWKS sign tokens.
        if key.family() == AlgorithmFamily::Hmac {
            continue;
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        keys.push(Jwk {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".into());
    }
    Ok(keys)
}
