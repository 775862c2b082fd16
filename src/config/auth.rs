//! `[auth.jwt.NAME]` and a route's `auth`: the token validators' settings, and how a
//! JWKS document is read (at load, to check a `jwks_file`, and by the validators).

use std::path::{Path, PathBuf};

use std::time::Duration;
use url::Url;

use super::diag::Diagnostic;
use super::reader::{Errors, Key, KeyDefault, Table, key};
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

pub const JWKS_URL: Key = key(
    "jwks_url",
    "Where the JWKS is (http:// or https://): fetched at start, every refresh, and on an unknown kid.",
);
pub const JWKS_FILE: Key = key(
    "jwks_file",
    "A JWKS file, read at load and again when it changes; relative to the config file's directory.",
);
pub const SECRET: Key = key(
    "secret",
    "An HMAC secret for HS256/384/512, at least 32 bytes, usually \"${ENV}\"; never shown.",
);
pub const ALGORITHMS: Key = key(
    "algorithms",
    "Algorithms accepted (required): a token's alg must be listed and be its key's. HS* only with secret; RS*, PS*, ES256/384, EdDSA only with a JWKS.",
)
.non_empty();
pub const ISSUER: Key = key("issuer", "The token's iss must equal it.");
pub const AUDIENCE: Key = key("audience", "The token's aud must hold one of them.");
pub const LEEWAY: Key = key("leeway", "Clock skew allowed on exp, nbf and iat.")
    .default(KeyDefault::Duration(Duration::from_secs(30)));
pub const REFRESH: Key = key("refresh", "How often the JWKS URL is fetched again.")
    .default(KeyDefault::Duration(Duration::from_secs(600)));
pub const REFRESH_COOLDOWN: Key = key(
    "refresh_cooldown",
    "An unknown kid fetches the JWKS again at most once per this.",
)
.default(KeyDefault::Duration(Duration::from_secs(30)));
pub const CA_FILE: Key = key(
    "ca_file",
    "Extra CA certificates (PEM) trusted for an https jwks_url; relative to the config file's directory.",
);

/// `[auth.jwt.NAME]`: exactly one key source; algorithms that fit it.
pub(super) fn read_jwt(
    name: String,
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<JwtConfig> {
    let url = t.string(errs, JWKS_URL);
    let file = t.string(errs, JWKS_FILE);
    let secret = t.string(errs, SECRET);
    let given = [url.is_some(), file.is_some(), secret.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        errs.push(
            Diagnostic::new(
                t.span(),
                format!(
                    "{} needs exactly one of jwks_url, jwks_file and secret",
                    t.name
                ),
            )
            .label(if given == 0 {
                "no key source"
            } else {
                "more than one key source"
            }),
        );
    }
    let mut source = None;
    if let Some((u, span)) = url {
        match Url::parse(&u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                source = Some(KeySource::Url(parsed))
            }
            _ => errs.push(
                Diagnostic::new(
                    span,
                    format!(
                        "jwks_url `{}` is not an http(s) URL",
                        crate::base::redact::url(&u)
                    ),
                )
                .label("not a URL"),
            ),
        }
    }
    if let Some((f, span)) = file {
        let path = base.join(&f);
        match crate::base::files::read_bounded(&path, crate::base::files::MAX_FILE)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_jwks(&t).map(|k| k.len()))
        {
            Ok(_) => source = Some(KeySource::File(path)),
            Err(e) => errs.push(
                Diagnostic::new(span, format!("jwks_file `{f}` cannot be used: {e}"))
                    .label("unusable"),
            ),
        }
    }
    if let Some((s, span)) = secret {
        if s.len() < 32 {
            errs.push(
                Diagnostic::new(span, "the secret is shorter than 32 bytes")
                    .label("too short to resist guessing")
                    .note("an HS256 secret should be at least 256 bits of random data"),
            );
        } else {
            source = Some(KeySource::Secret(Secret(s)));
        }
    }
    t.require(ALGORITHMS);
    let listed = t.string_list(errs, ALGORITHMS);
    let mut algorithms = Vec::new();
    match &listed {
        None if t.get(ALGORITHMS).is_none() => t.missing(errs, "algorithms"),
        Some(list) if list.is_empty() => errs.push(
            Diagnostic::new(t.span(), "algorithms is empty")
                .label("list the algorithms your tokens use"),
        ),
        _ => {}
    }
    for (a, span) in listed.unwrap_or_default() {
        match a.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) => {
                let hmac = family(alg) == jsonwebtoken::AlgorithmFamily::Hmac;
                match &source {
                    Some(KeySource::Secret(_)) if !hmac => errs.push(Diagnostic::new(span, format!("{a} needs a public key; a secret only checks HS256/384/512")).label("not an HMAC algorithm")),
                    Some(KeySource::Url(_) | KeySource::File(_)) if hmac => errs.push(
                        Diagnostic::new(span, format!("{a} is checked with a secret, not a JWKS"))
                            .label("HMAC with a public key set")
                            .note("listing HS* next to public keys is how alg-confusion attacks work; use `secret` for HMAC tokens"),
                    ),
                    _ => algorithms.push(alg),
                }
            }
            Err(_) => errs.push(
                Diagnostic::new(span, format!("unknown algorithm `{a}`"))
                    .label("not a JWS algorithm")
                    .note("HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (`none` never)"),
            ),
        }
    }
    let issuer = t.string(errs, ISSUER).map(|(s, _)| s);
    let audience = t
        .string_list(errs, AUDIENCE)
        .unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let leeway = t.duration_or(errs, LEEWAY);
    let refresh = t.positive_duration_or(errs, REFRESH);
    let refresh_cooldown = t.positive_duration_or(errs, REFRESH_COOLDOWN);
    let ca_file = t.string(errs, CA_FILE).and_then(|(s, span)| {
        match crate::base::files::read_bounded(&base.join(&s), crate::base::files::MAX_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
        {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(base.join(s)),
            _ => {
                errs.push(
                    Diagnostic::new(span, format!("ca_file `{s}` is not a readable PEM file"))
                        .label("unusable"),
                );
                None
            }
        }
    });
    if algorithms.is_empty() {
        return None;
    }
    Some(JwtConfig {
        name,
        source: source?,
        issuer,
        audience,
        algorithms,
        leeway,
        refresh,
        refresh_cooldown,
        ca_file,
    })
}
