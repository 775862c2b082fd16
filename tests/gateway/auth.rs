//! Bearer tokens (docs/configuration.md#authjwtname): every row of the status table, the
//! JWKS's life (kid storm, rotation, down at start, file re-read), claims in paths, headers,
//! cache keys and rate-limit keys, and the order rate limit → token → cache.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{Gateway, Upstream, all_events, json as reply, series};

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn rsa(kid: &str) -> SigningKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let pem = pem_of("PRIVATE KEY", der.as_ref());
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
    }

    fn ec(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, key)
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> SigningKey {
        let mut jwk =
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap())
                .unwrap();
        jwk["kid"] = json!(kid);
        SigningKey {
            kid: kid.to_string(),
            alg,
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn pem_of(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
        lines.join("\n")
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims that pass the validator of [`config`], for user `sub`, with `extra` merged.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "sub": sub,
        "iss": "https://idp.test/",
        "aud": "dashboard-api",
        "exp": now() + 600,
        "scope": "orders:read profile",
    });
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

/// An identity provider's JWKS endpoint: its keys can change, it can be made to fail,
/// and it counts its fetches.
struct Idp {
    server: Upstream,
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    /// Seconds the JWKS takes to answer.
    delay: Arc<AtomicU64>,
}

impl Idp {
    async fn start(keys: &[&SigningKey]) -> Idp {
        let set = Arc::new(Mutex::new(
            keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>(),
        ));
        let down = Arc::new(AtomicBool::new(false));
        let delay = Arc::new(AtomicU64::new(0));
        let (s, d, h) = (set.clone(), down.clone(), delay.clone());
        let server = Upstream::start(move |_| {
            let (s, d, h) = (s.clone(), d.clone(), h.clone());
            async move {
                let wait = h.load(Ordering::SeqCst);
                if wait > 0 {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                if d.load(Ordering::SeqCst) {
                    return reply(503, json!({"down": true}));
                }
                reply(200, json!({ "keys": *s.lock().unwrap() }))
            }
        })
        .await;
        Idp {
            server,
            keys: set,
            down,
            delay,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.server.hits()
    }

    fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.url())
    }
}

/// A validator `idp` on `jwks_url`, and a route `name` at `/me` calling `/users/{jwt.sub}`.
fn config(
    name: &str,
    jwks_url: &str,
    upstream: &str,
    route_extra: &str,
    auth_extra: &str,
) -> String {
    format!(
        r#"
[auth.jwt.idp]
jwks_url = "{jwks_url}"
issuer = "https://idp.test/"
audience = ["dashboard-api"]
algorithms = ["RS256", "ES256"]
leeway = "30s"
refresh = "10m"
refresh_cooldown = "30s"

[upstreams.users]
urls = ["{upstream}"]

[[routes]]
name = "{name}"
path = "/me"
auth = {{ jwt = "idp", scopes = ["orders:read"]{auth_extra} }}
{route_extra}
  [[routes.backends]]
  upstream = "users"
  path = "/users/{{jwt.sub}}"
"#
    )
}

/// A user service echoing the path and the x-user-id header it was sent.
async fn users() -> Upstream {
    Upstream::start(|seen| async move {
        let user = seen
            .headers
            .get("x-user-id")
            .map(|v| v.to_str().unwrap().to_string());
        reply(200, json!({"path": seen.uri.path(), "x_user_id": user}))
    })
    .await
}

async fn get_with(gw: &Gateway, path: &str, authorization: Option<&str>) -> crate::support::Answer {
    let mut req = gw.client.get(format!("{}{path}", gw.base));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    gw.send(req).await
}

async fn bearer(gw: &Gateway, token: &str) -> crate::support::Answer {
    get_with(gw, "/me", Some(&format!("Bearer {token}"))).await
}

/// Waits until the validator holds keys (the fetch at start runs in the background).
async fn until_fetched(idp: &Idp, n: usize) {
    for _ in 0..500 {
        if idp.fetches() >= n {
            // The fetch answered; give the gateway a moment to take the keys in.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the JWKS was not fetched {n} time(s)");
}

#[tokio::test]
async fn every_row_of_the_status_table() {
    let rsa = SigningKey::rsa("k1");
    let ec = SigningKey::ec("e1");
    let idp = Idp::start(&[&rsa, &ec]).await;
    let up = users().await;
    let gw = Gateway::start(&config("auth-table", &idp.url(), &up.url(), "", "")).await;
    until_fetched(&idp, 1).await;

    let ok = bearer(&gw, &rsa.sign(&claims("alice", json!({})))).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json()["path"], "/users/alice");
    // ES256 and scopes from `scp`.
    let scp = ec.sign(&claims(
        "bob",
        json!({"scope": null, "scp": ["orders:read"]}),
    ));
    assert_eq!(bearer(&gw, &scp).await.status, 200);
    let hits = up.hits();

    // No token, or not a Bearer one.
    for auth in [None, Some("Basic YWxpY2U6cHc="), Some("Bearer ")] {
        let a = get_with(&gw, "/me", auth).await;
        a.error(401, "UNAUTHORIZED");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }

    // Tokens that do not verify, each with its reason.
    let other = SigningKey::rsa("k1"); // same kid, another key: a forged signature
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    // Alg confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = rsa.jwk["n"].as_str().unwrap().to_string();
    let confused = jsonwebtoken::encode(
        &hs,
        &claims("eve", json!({})),
        &EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("eve", json!({})).to_string().as_bytes())
    );
    let mut es_on_rsa = Header::new(Algorithm::ES256);
    es_on_rsa.kid = Some("k1".into());
    let wrong_key_kind =
        jsonwebtoken::encode(&es_on_rsa, &claims("eve", json!({})), &ec.key).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("not a JWT", "abc.def".into(), "well-formed"),
        (
            "expired past the leeway",
            rsa.sign(&claims("a", json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            rsa.sign(&claims("a", json!({"nbf": now() + 300}))),
            "not valid yet",
        ),
        (
            "issued in the future",
            rsa.sign(&claims("a", json!({"iat": now() + 300}))),
            "issued in the future",
        ),
        (
            "wrong issuer",
            rsa.sign(&claims("a", json!({"iss": "https://evil.test/"}))),
            "issuer",
        ),
        (
            "wrong audience",
            rsa.sign(&claims("a", json!({"aud": "other-api"}))),
            "audience",
        ),
        (
            "no exp",
            rsa.sign(&claims("a", json!({"exp": null}))),
            "exp",
        ),
        (
            "forged signature",
            other.sign(&claims("a", json!({}))),
            "signature",
        ),
        ("alg confusion", confused, "algorithm"),
        ("alg none", none, "well-formed"),
        ("ES256 with the RSA key's kid", wrong_key_kind, "algorithm"),
    ];
    for (what, token, why) in &cases {
        let a = bearer(&gw, token).await;
        let body = a.error(401, "INVALID_TOKEN");
        assert_eq!(
            a.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#),
            "{what}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{what}: {message}");
        assert!(
            !message.contains(token.as_str())
                && !a.body.windows(20).any(|w| token.as_bytes().starts_with(w)),
            "{what}: the token is never echoed"
        );
    }
    // Expired, but within the leeway.
    assert_eq!(
        bearer(&gw, &rsa.sign(&claims("alice", json!({"exp": now() - 10}))))
            .await
            .status,
        200
    );

    // A scope missing.
    let no_scope = bearer(&gw, &rsa.sign(&claims("a", json!({"scope": "profile"})))).await;
    no_scope.error(403, "FORBIDDEN");
    assert_eq!(
        no_scope.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );

    assert_eq!(
        up.hits(),
        hits + 1,
        "only the valid tokens reached the upstream"
    );
    let m = gw.metrics().await;
    let count = |result: &str| {
        series(
            &m,
            &format!(r#"manifold_auth_total{{route="auth-table",result="{result}"}}"#),
        )
    };
    assert_eq!(count("ok"), 3.0);
    assert_eq!(count("missing"), 3.0);
    assert_eq!(count("invalid"), cases.len() as f64);
    assert_eq!(count("forbidden"), 1.0);
    assert_eq!(count("unavailable"), 0.0);
    // The access line and never the token in it.
    let line = gw
        .access_line(no_scope.header("x-request-id").unwrap())
        .await;
    assert_eq!(line["auth"], "forbidden");
    assert_eq!(line["error"], "FORBIDDEN");
    for l in gw.access_lines() {
        assert!(
            !l.to_string().contains("eyJ"),
            "no token in a log line: {l}"
        );
    }
}

// Paused time: the cooldown passes at once, on tokio's clock.
#[tokio::test(start_paused = true)]
async fn unknown_kids_fetch_once_per_cooldown_and_a_rotated_key_is_taken_at_once() {
    let old = SigningKey::ec("old");
    let idp = Idp::start(&[&old]).await;
    let up = users().await;
    let gw = Gateway::start(&config("auth-kids", &idp.url(), &up.url(), "", "")).await;
    until_fetched(&idp, 1).await;
    let old_token = old.sign(&claims("a", json!({})));
    assert_eq!(bearer(&gw, &old_token).await.status, 200);

    // The IdP rotates: a token with the new kid is accepted at once (one fetch).
    let new = SigningKey::ec("new");
    idp.publish(&[&old, &new]);
    assert_eq!(
        bearer(&gw, &new.sign(&claims("a", json!({})))).await.status,
        200
    );
    assert_eq!(idp.fetches(), 2);

    // A storm of unknown kids within the cooldown: not one more fetch.
    let strangers: Vec<SigningKey> = (0..20).map(|i| SigningKey::ec(&format!("x{i}"))).collect();
    let storm = strangers.iter().map(|k| {
        let token = k.sign(&claims("m", json!({})));
        let gw = &gw;
        async move { bearer(gw, &token).await.status }
    });
    let statuses = futures_util::future::join_all(storm).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(idp.fetches(), 2, "no fetch storm");

    // After the cooldown, one unknown kid may fetch again (and only one fetch for many).
    tokio::time::sleep(Duration::from_secs(31)).await;
    let newest = SigningKey::ec("newest");
    idp.publish(&[&new, &newest]);
    let burst = (0..10).map(|_| {
        let token = newest.sign(&claims("a", json!({})));
        let gw = &gw;
        async move { bearer(gw, &token).await.status }
    });
    let statuses = futures_util::future::join_all(burst).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(idp.fetches(), 3);
    // The key that left the set no longer verifies: the very token verified (and
    // remembered) at the start is refused now.
    bearer(&gw, &old_token).await.error(401, "INVALID_TOKEN");
    let m = gw.metrics().await;
    assert!(
        series(
            &m,
            r#"manifold_jwks_refresh_total{validator="idp",result="ok"}"#
        ) >= 3.0
    );
    // And every `refresh` (10m) on its own, with no token asking.
    let fetched = idp.fetches();
    tokio::time::sleep(Duration::from_secs(601)).await;
    until_fetched(&idp, fetched + 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_jwks_down_at_start_gives_503_until_it_is_back() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    idp.down.store(true, Ordering::SeqCst);
    let up = users().await;
    let gw = Gateway::start(&config("auth-down", &idp.url(), &up.url(), "", "")).await;
    until_fetched(&idp, 1).await;
    let token = key.sign(&claims("a", json!({})));
    let a = bearer(&gw, &token).await;
    a.error(503, "AUTH_UNAVAILABLE");
    // The console says no keys are held, and none were ever fetched.
    let stats = || async {
        let (_, v) = gw.admin_json("/stats").await;
        v["auth"]["jwt"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone()
    };
    let held = stats().await;
    assert_eq!(
        (held["keys"].as_u64(), held["refreshed_at"].is_null()),
        (Some(0), true),
        "{held}"
    );
    // The failed fetch is logged with its cause (and the URL it went to).
    let port = idp.server.addr.port().to_string();
    let logged = all_events().into_iter().any(|e| {
        e["message"] == "JWKS fetch failed; keeping the keys it had"
            && e["error"] == "answered 503"
            && e["url"].as_str().is_some_and(|u| u.contains(&port))
    });
    assert!(logged, "a JWKS fetch failure is logged with its cause");
    // No log line of any test ever holds a token.
    assert!(all_events().iter().all(|e| !e.to_string().contains("eyJ")));
    assert_eq!(a.header("www-authenticate"), None);
    assert_eq!(up.hits(), 0);
    // Still within the cooldown: no new fetch per request.
    let before = idp.fetches();
    bearer(&gw, &token).await.error(503, "AUTH_UNAVAILABLE");
    assert_eq!(idp.fetches(), before);

    idp.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(bearer(&gw, &token).await.status, 200);
    let held = stats().await;
    assert_eq!(held["keys"], 1, "{held}");
    assert!(
        held["refreshed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{held}"
    );
    let m = gw.metrics().await;
    assert!(
        series(
            &m,
            r#"manifold_auth_total{route="auth-down",result="unavailable"}"#
        ) == 2.0
    );
    assert!(
        series(
            &m,
            r#"manifold_jwks_refresh_total{validator="idp",result="error"}"#
        ) >= 1.0
    );

    // Down again later: the keys it had keep working.
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(
        bearer(&gw, &key.sign(&claims("b", json!({})))).await.status,
        200
    );

    // Slow: a JWKS answering in 3 s, past the route's 2 s deadline. The token that asked
    // waits no longer than the deadline (401: keys are held, its kid is not among
    // them); the fetch goes on without it, and the key it brings serves the next one.
    idp.down.store(false, Ordering::SeqCst);
    idp.delay.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let rotated = SigningKey::ec("rotated");
    idp.publish(&[&key, &rotated]);
    let fetches = idp.fetches();
    let t0 = tokio::time::Instant::now();
    let first = rotated.sign(&claims("a", json!({})));
    bearer(&gw, &first).await.error(401, "INVALID_TOKEN");
    let waited = t0.elapsed().as_secs_f64();
    assert!((1.9..2.5).contains(&waited), "waited {waited} s");
    // Meanwhile tokens of known keys do not wait for it.
    assert_eq!(bearer(&gw, &token).await.status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bearer(&gw, &rotated.sign(&claims("b", json!({}))))
            .await
            .status,
        200
    );
    assert_eq!(
        idp.fetches(),
        fetches + 1,
        "one fetch, finished after its request left"
    );
}

#[tokio::test]
async fn a_cached_answer_never_crosses_identities_and_claims_reach_upstreams() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let route = "cache = { ttl = \"60s\" }\nforward_headers = [\"x-user-id\"]";
    let gw = Gateway::start(&config(
        "auth-cache",
        &idp.url(),
        &up.url(),
        route,
        r#", claims_to_headers = { sub = "x-user-id" }"#,
    ))
    .await;
    until_fetched(&idp, 1).await;
    let alice = key.sign(&claims("alice", json!({})));
    let bob = key.sign(&claims("b/../ob?x=1", json!({})));

    let a = bearer(&gw, &alice).await;
    assert_eq!(a.json()["path"], "/users/alice");
    assert_eq!(a.json()["x_user_id"], "alice");
    assert_eq!(a.header("x-manifold-cache"), Some("miss"));
    // Another user, another answer; a claim is percent-encoded like every value.
    let b = bearer(&gw, &bob).await;
    assert_eq!(b.json()["path"], "/users/b%2F..%2Fob%3Fx%3D1");
    assert_eq!(b.header("x-manifold-cache"), Some("miss"));
    assert_eq!(up.last().uri.path(), "/users/b%2F..%2Fob%3Fx%3D1");
    assert_eq!(
        bearer(&gw, &alice).await.header("x-manifold-cache"),
        Some("hit")
    );
    assert_eq!(up.hits(), 2);

    // A client's own x-user-id never passes: the token's word replaces it.
    let spoof = gw
        .send(
            gw.client
                .get(format!("{}/me", gw.base))
                .header(
                    "authorization",
                    format!("Bearer {}", key.sign(&claims("carol", json!({})))),
                )
                .header("x-user-id", "alice"),
        )
        .await;
    assert_eq!(spoof.json()["x_user_id"], "carol");

    // A failed token never gets the cached answer.
    let expired = key.sign(&claims("alice", json!({"exp": now() - 3600})));
    bearer(&gw, &expired).await.error(401, "INVALID_TOKEN");
    get_with(&gw, "/me", None).await.error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn rate_limits_come_before_the_token_or_key_on_a_claim() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    // A flood of bad tokens is rate limited like anything else.
    let gw = Gateway::start(&config(
        "auth-flood",
        &idp.url(),
        &up.url(),
        "rate_limit = { per_second = 1, burst = 2 }",
        "",
    ))
    .await;
    until_fetched(&idp, 1).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(bearer(&gw, "not.a.token").await.status);
    }
    assert_eq!(statuses, [401, 401, 429, 429]);

    let gw = Gateway::start(&config(
        "auth-per-user",
        &idp.url(),
        &up.url(),
        "rate_limit = { per_second = 1, burst = 2, key = \"claim:sub\" }",
        "",
    ))
    .await;
    until_fetched(&idp, 2).await;
    let alice = key.sign(&claims("alice", json!({})));
    let bob = key.sign(&claims("bob", json!({})));
    let mut seen = Vec::new();
    for token in [&alice, &alice, &alice, &bob] {
        seen.push(bearer(&gw, token).await.status);
    }
    assert_eq!(seen, [200, 200, 429, 200], "each user has their own budget");
}

#[tokio::test]
async fn an_optional_token_may_be_absent_but_not_bad() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::json(json!({"public": true})).await;
    let text = format!(
        r#"
[auth.jwt.idp]
jwks_url = "{}"
algorithms = ["ES256"]

[upstreams.u]
urls = ["{}"]

[[routes]]
name = "auth-optional"
path = "/feed"
auth = {{ jwt = "idp", optional = true, claims_to_headers = {{ sub = "x-user-id" }} }}
forward_headers = ["x-user-id"]
  [[routes.backends]]
  upstream = "u"
  path = "/feed"
"#,
        idp.url(),
        up.url()
    );
    let gw = Gateway::start(&text).await;
    until_fetched(&idp, 1).await;
    let anonymous = gw
        .send(
            gw.client
                .get(format!("{}/feed", gw.base))
                .header("x-user-id", "admin"),
        )
        .await;
    assert_eq!(anonymous.status, 200);
    assert!(
        up.last().headers.get("x-user-id").is_none(),
        "without a token, the client's own x-user-id does not pass either"
    );
    let signed = key.sign(&json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(
        get_with(&gw, "/feed", Some(&format!("Bearer {signed}")))
            .await
            .status,
        200
    );
    assert_eq!(up.last().headers["x-user-id"], "alice");
    get_with(&gw, "/feed", Some("Bearer junk"))
        .await
        .error(401, "INVALID_TOKEN");
    let m = gw.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"manifold_auth_total{route="auth-optional",result="missing"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn an_hs256_secret_from_the_environment_checks_hs256_only() {
    // SAFETY: a name no other test reads, set before the gateway starts.
    unsafe {
        std::env::set_var(
            "MANIFOLD_TEST_JWT_SECRET_HS",
            "0123456789abcdef0123456789abcdef-hs",
        )
    };
    let up = Upstream::json(json!({"ok": 1})).await;
    let text = format!(
        r#"
[auth.jwt.internal]
secret = "${{MANIFOLD_TEST_JWT_SECRET_HS}}"
algorithms = ["HS256"]

[upstreams.u]
urls = ["{}"]

[[routes]]
name = "auth-hs"
path = "/x"
auth = {{ jwt = "internal" }}
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#,
        up.url()
    );
    let gw = Gateway::start(&text).await;
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "svc", "exp": now() + 60}),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-hs").unwrap(),
    )
    .unwrap();
    assert_eq!(
        get_with(&gw, "/x", Some(&format!("Bearer {good}")))
            .await
            .status,
        200
    );
    let wrong = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "svc", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another secret of enough length, truly").unwrap(),
    )
    .unwrap();
    get_with(&gw, "/x", Some(&format!("Bearer {wrong}")))
        .await
        .error(401, "INVALID_TOKEN");
    let es256 = SigningKey::ec("k").sign(&json!({"exp": now() + 60}));
    get_with(&gw, "/x", Some(&format!("Bearer {es256}")))
        .await
        .error(401, "INVALID_TOKEN");
    // The secret is nowhere to be read.
    let routes = gw.routes_text().await;
    assert!(!routes.contains("0123456789abcdef"), "{routes}");
    let routes: Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["auth"]["jwt"]["internal"]["source"], "secret");
    assert_eq!(routes["auth"]["jwt"]["internal"]["keys"], 1);
    assert_eq!(routes["routes"][0]["auth"]["jwt"], "internal");
    assert!(!gw.metrics().await.contains("0123456789abcdef"));
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let first = SigningKey::ec("f1");
    let second = SigningKey::ec("f2");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({"keys": [first.jwk]}).to_string()).unwrap();
    let up = Upstream::json(json!({"ok": 1})).await;
    let text = format!(
        r#"
[auth.jwt.local]
jwks_file = "{}"
algorithms = ["ES256"]

[upstreams.u]
urls = ["{}"]

[[routes]]
name = "auth-file"
path = "/x"
auth = {{ jwt = "local" }}
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"#,
        file.display(),
        up.url()
    );
    let gw = Gateway::start(&text).await;
    let call = |k: &SigningKey| format!("Bearer {}", k.sign(&json!({"exp": now() + 60})));
    assert_eq!(get_with(&gw, "/x", Some(&call(&first))).await.status, 200);
    assert_eq!(get_with(&gw, "/x", Some(&call(&second))).await.status, 401);
    std::fs::write(&file, json!({"keys": [second.jwk]}).to_string()).unwrap();
    for _ in 0..200 {
        if get_with(&gw, "/x", Some(&call(&second))).await.status == 200 {
            assert_eq!(get_with(&gw, "/x", Some(&call(&first))).await.status, 401);
            // A broken file keeps the keys there were.
            std::fs::write(&file, "{ not json").unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(get_with(&gw, "/x", Some(&call(&second))).await.status, 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the changed JWKS file was not read within 10 s");
}

#[tokio::test]
async fn a_preflight_needs_no_token_and_a_401_is_readable_by_the_browser() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let text = format!(
        "[cors]\nallow_origins = [\"https://app.test\"]\nallow_headers = [\"authorization\"]\n{}",
        config("auth-cors", &idp.url(), &up.url(), "", "")
    );
    let gw = Gateway::start(&text).await;
    until_fetched(&idp, 1).await;
    let pre = gw
        .send(
            gw.client
                .request(reqwest::Method::OPTIONS, format!("{}/me", gw.base))
                .header("origin", "https://app.test")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization"),
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    let denied = gw
        .send(
            gw.client
                .get(format!("{}/me", gw.base))
                .header("origin", "https://app.test"),
        )
        .await;
    denied.error(401, "UNAUTHORIZED");
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(up.hits(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"manifold_auth_total{route="auth-cors",result="missing"}"#
        ),
        1.0,
        "the preflight was no token check"
    );
}

/// `check`'s errors for a config (empty when it loads).
fn check(text: &str) -> String {
    match manifold::config::parse("auth.toml", text) {
        Ok(_) => String::new(),
        Err(d) => d.render(),
    }
}

#[test]
fn token_settings_that_cannot_work_are_load_errors() {
    let route = |auth: &str, path: &str, extra: &str| {
        format!(
            "[upstreams.u]\nurls = [\"http://127.0.0.1:1\"]\n\n[[routes]]\npath = \"/x\"\n{auth}\n{extra}\n  [[routes.backends]]\n  upstream = \"u\"\n  path = \"{path}\"\n"
        )
    };
    let idp = "[auth.jwt.idp]\njwks_url = \"https://idp.test/jwks\"\nalgorithms = [\"RS256\"]\n\n";

    let e = check(&format!(
        "{idp}{}",
        route("auth = { jwt = \"idpp\" }", "/x", "")
    ));
    assert!(
        e.contains("no validator `idpp`") && e.contains("did you mean `idp`?"),
        "{e}"
    );
    assert!(e.contains("auth.toml:10:"), "at its place: {e}");

    let e = check(&format!(
        "{idp}{}",
        route(
            "auth = { jwt = \"idp\", optional = true }",
            "/u/{jwt.sub}",
            ""
        )
    ));
    assert!(
        e.contains("reads a token claim") && e.contains("optional = true"),
        "{e}"
    );
    let e = check(&route("", "/u/{jwt.sub}", ""));
    assert!(
        e.contains("reads a token claim") && e.contains("has no `auth`"),
        "{e}"
    );
    let e = check(&format!(
        "{idp}{}",
        route(
            "auth = { jwt = \"idp\", optional = true }",
            "/x",
            "rate_limit = { per_second = 1, key = \"claim:sub\" }"
        )
    ));
    assert!(e.contains("keyed on a claim"), "{e}");
    assert_eq!(
        check(&format!(
            "{idp}{}",
            route(
                "auth = { jwt = \"idp\" }",
                "/u/{jwt.sub}",
                "rate_limit = { per_second = 1, key = \"claim:sub\" }"
            )
        )),
        ""
    );

    let bad = [
        (
            "[auth.jwt.a]\njwks_url = \"https://idp.test/j\"\nalgorithms = [\"HS256\"]\n",
            "checked with a secret, not a JWKS",
        ),
        (
            "[auth.jwt.a]\nsecret = \"0123456789abcdef0123456789abcdef\"\nalgorithms = [\"RS256\"]\n",
            "needs a public key",
        ),
        (
            "[auth.jwt.a]\nsecret = \"short\"\nalgorithms = [\"HS256\"]\n",
            "shorter than 32 bytes",
        ),
        (
            "[auth.jwt.a]\njwks_url = \"https://idp.test/j\"\nalgorithms = [\"none\"]\n",
            "unknown algorithm `none`",
        ),
        (
            "[auth.jwt.a]\njwks_url = \"https://idp.test/j\"\n",
            "missing required key `algorithms`",
        ),
        (
            "[auth.jwt.a]\nalgorithms = [\"RS256\"]\n",
            "exactly one of jwks_url, jwks_file and secret",
        ),
        (
            "[auth.jwt.a]\njwks_url = \"https://idp.test/j\"\nsecret = \"0123456789abcdef0123456789abcdef\"\nalgorithms = [\"RS256\"]\n",
            "exactly one of",
        ),
        (
            "[auth.jwt.a]\njwks_file = \"/nonexistent/jwks.json\"\nalgorithms = [\"RS256\"]\n",
            "jwks_file `/nonexistent/jwks.json` cannot be used",
        ),
        (
            "[auth.jwt.a]\njwks_url = \"ftp://idp.test/j\"\nalgorithms = [\"RS256\"]\n",
            "not an http(s) URL",
        ),
    ];
    for (validator, want) in bad {
        let e = check(&format!("{validator}\n{}", route("", "/x", "")));
        assert!(e.contains(want), "{validator}: {e}");
        assert!(
            !e.contains("0123456789abcdef0123456789abcdef"),
            "the secret is never shown: {e}"
        );
    }
    let e = check(&format!(
        "{idp}{}",
        route(
            "auth = { jwt = \"idp\", claims_to_headers = { sub = \"host\" } }",
            "/x",
            ""
        )
    ));
    assert!(e.contains("claims_to_headers cannot set `host`"), "{e}");
}

#[tokio::test]
async fn a_passthrough_route_checks_the_token_and_passes_its_claims() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let text = format!(
        r#"
[auth.jwt.idp]
jwks_url = "{}"
algorithms = ["ES256"]

[upstreams.users]
urls = ["{}"]

[[routes]]
name = "auth-pass"
path = "/files/{{*rest}}"
passthrough = true
auth = {{ jwt = "idp", claims_to_headers = {{ sub = "x-user-id" }} }}
  [[routes.backends]]
  upstream = "users"
  path = "/store/{{jwt.sub}}/{{rest}}?by={{jwt.sub}}"
"#,
        idp.url(),
        up.url()
    );
    let gw = Gateway::start(&text).await;
    until_fetched(&idp, 1).await;
    get_with(&gw, "/files/a.txt", None)
        .await
        .error(401, "UNAUTHORIZED");
    assert_eq!(up.hits(), 0);
    let token = key.sign(&json!({"sub": "alice", "exp": now() + 60}));
    let a = get_with(&gw, "/files/a.txt", Some(&format!("Bearer {token}"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/store/alice/a.txt");
    assert_eq!(
        up.last().uri.query(),
        Some("by=alice"),
        "claims fill queries too"
    );
    assert_eq!(a.json()["x_user_id"], "alice");
    // The token itself reaches no upstream unless forward_headers lists authorization.
    assert!(up.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_backend_cache_keeps_users_apart_when_a_claim_goes_as_a_header() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let text = format!(
        r#"
[auth.jwt.idp]
jwks_url = "{}"
algorithms = ["ES256"]

[upstreams.users]
urls = ["{}"]

[[routes]]
name = "auth-backend-cache"
path = "/whoami"
auth = {{ jwt = "idp", claims_to_headers = {{ sub = "x-user-id" }} }}
  [[routes.backends]]
  upstream = "users"
  path = "/me"
  cache_ttl = "60s"
"#,
        idp.url(),
        up.url()
    );
    let gw = Gateway::start(&text).await;
    until_fetched(&idp, 1).await;
    let call = |sub: &str| {
        format!(
            "Bearer {}",
            key.sign(&json!({"sub": sub, "exp": now() + 60}))
        )
    };
    let alice = get_with(&gw, "/whoami", Some(&call("alice"))).await;
    assert_eq!(alice.json()["x_user_id"], "alice");
    let bob = get_with(&gw, "/whoami", Some(&call("bob"))).await;
    assert_eq!(bob.json()["x_user_id"], "bob", "not alice's cached answer");
    assert_eq!(up.hits(), 2);
    let again = get_with(&gw, "/whoami", Some(&call("alice"))).await;
    assert_eq!(again.json()["x_user_id"], "alice");
    assert_eq!(up.hits(), 2, "alice's own answer came from the cache");
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_path_segment_fails_the_token() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let gw = Gateway::start(&config("auth-segments", &idp.url(), &up.url(), "", "")).await;
    until_fetched(&idp, 1).await;
    for sub in [
        json!(".."),
        json!("."),
        json!(""),
        json!("a\u{7}b"),
        json!(["x"]),
        json!(null),
    ] {
        let token = key.sign(&claims("ignored", json!({ "sub": sub.clone() })));
        let a = bearer(&gw, &token).await;
        let e = a.error(401, "INVALID_TOKEN");
        // (A `sub` that is not a string fails the token's own claim checks first.)
        if !sub.is_array() {
            assert!(
                e["message"].as_str().unwrap().contains("path segment"),
                "{sub}: {e}"
            );
        }
    }
    assert_eq!(up.hits(), 0, "no upstream saw /users/.. or /users/");
    let m = gw.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"manifold_auth_total{route="auth-segments",result="invalid"}"#
        ),
        6.0
    );
    assert_eq!(
        series(
            &m,
            r#"manifold_auth_total{route="auth-segments",result="ok"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn a_reload_that_changes_a_validator_keeps_the_keys_it_held() {
    let key = SigningKey::ec("k");
    let idp = Idp::start(&[&key]).await;
    let up = users().await;
    let gw = Gateway::start(&config("auth-reload", &idp.url(), &up.url(), "", "")).await;
    until_fetched(&idp, 1).await;
    let token = key.sign(&claims("a", json!({})));
    assert_eq!(bearer(&gw, &token).await.status, 200);
    // The IdP goes down, and a reload changes the validator (its leeway).
    idp.down.store(true, Ordering::SeqCst);
    let text = format!(
        "{}{}",
        crate::support::SERVER,
        config("auth-reload", &idp.url(), &up.url(), "", "")
            .replace("leeway = \"30s\"", "leeway = \"45s\"")
    );
    let changed = manifold::config::parse("reload.toml", &text).unwrap();
    gw.server.reload(changed).unwrap();
    assert_eq!(
        bearer(&gw, &key.sign(&claims("b", json!({})))).await.status,
        200,
        "the keys carried over the reload"
    );
}
