//! Round two of attacks from outside (docs/operations.md "Abuse and limits"): a hostile
//! client, a hostile upstream and a hostile neighbour on a shared Redis. Each test here
//! failed on the build before its fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use serde_json::json;

use crate::support::{Gateway, Upstream, json, upstream};

/// The upstream answers with the bytes of the `x-api-key` it got, as hex, after `delay`.
async fn key_echo(delay: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let up = Upstream::start(move |seen| {
        n.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let key: String = seen
                .headers
                .get("x-api-key")
                .map(|v| v.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_default();
            json(200, json!({ "key": key }))
        }
    })
    .await;
    (up, calls)
}

fn key_routes(url: &str) -> String {
    format!(
        "{}
[[routes]]
name = \"route-cache\"
path = \"/route/{{id}}\"
forward_headers = [\"x-api-key\"]
cache = {{ ttl = \"60s\" }}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/items/{{id}}\"

[[routes]]
name = \"backend-cache\"
path = \"/backend/{{id}}\"
forward_headers = [\"x-api-key\"]
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/items/{{id}}\"
  cache_ttl = \"60s\"

[[routes]]
name = \"coalesced\"
path = \"/coalesced/{{id}}\"
forward_headers = [\"x-api-key\"]
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/items/{{id}}\"
",
        upstream("svc", url, "")
    )
}

/// Two credentials that differ only in bytes that are not UTF-8 are two identities:
/// neither the route cache, the backend cache nor coalescing hands one's answer to
/// the other.
#[tokio::test]
async fn credentials_that_differ_in_non_utf8_bytes_never_share_an_answer() {
    let (up, calls) = key_echo(Duration::from_millis(300)).await;
    let gw = Gateway::start(&key_routes(&up.url())).await;
    let first = HeaderValue::from_bytes(b"k-\xff\xff").unwrap();
    let second = HeaderValue::from_bytes(b"k-\xe4\xf6").unwrap();
    let ask = |path: &'static str, key: HeaderValue| {
        gw.send(
            gw.client
                .get(format!("{}{path}", gw.base))
                .header("x-api-key", key),
        )
    };
    for path in ["/route/1", "/backend/1"] {
        let a = ask(path, first.clone()).await;
        let b = ask(path, second.clone()).await;
        assert_eq!(a.json()["key"], "6b2dffff", "{path}");
        assert_eq!(
            b.json()["key"],
            "6b2de4f6",
            "{path}: the second key's own answer"
        );
    }
    // Concurrent identical calls are coalesced only when their keys are equal.
    let before = calls.load(Ordering::SeqCst);
    let (a, b) = tokio::join!(
        ask("/coalesced/1", first.clone()),
        ask("/coalesced/1", second.clone())
    );
    assert_eq!(a.json()["key"], "6b2dffff");
    assert_eq!(b.json()["key"], "6b2de4f6");
    assert_eq!(calls.load(Ordering::SeqCst) - before, 2, "one call each");
}

// === Tokens ===

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes-for-tests";

fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A validator `hs` (leeway `leeway`), a merged route `/m` and a passthrough `/p`, both
/// with `auth`, forwarding `authorization`, sending `sub` as `x-user`.
fn token_routes(url: &str, leeway: &str) -> String {
    format!(
        "[auth.jwt.hs]
secret = \"{SECRET}\"
algorithms = [\"HS256\"]
leeway = \"{leeway}\"

{}
[[routes]]
name = \"merged\"
path = \"/m\"
forward_headers = [\"authorization\"]
auth = {{ jwt = \"hs\", claims_to_headers = {{ sub = \"x-user\" }} }}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/m\"

[[routes]]
name = \"streamed\"
path = \"/p\"
passthrough = true
forward_headers = [\"authorization\"]
auth = {{ jwt = \"hs\" }}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/p\"

[[routes]]
name = \"by-path\"
path = \"/u\"
auth = {{ jwt = \"hs\" }}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/users/{{jwt.sub}}\"
",
        upstream("svc", url, "")
    )
}

/// A request with two `authorization` headers on an `auth` route is refused (400), on
/// HTTP/1.1 and h2, merged and passthrough: neither the verified token nor the one
/// beside it reaches the upstream.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&token_routes(&up.url(), "30s")).await;
    let valid = hs256(&json!({"sub": "alice", "exp": now_secs() as u64 + 600}));
    let forged = format!("{}.forged", hs256(&json!({"sub": "admin", "exp": 1})));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, version) in [(&gw.client, "HTTP/1.1"), (&h2, "h2")] {
        for path in ["/m", "/p"] {
            let one = gw
                .send(
                    client
                        .get(format!("{}{path}", gw.base))
                        .header("authorization", format!("Bearer {valid}")),
                )
                .await;
            assert_eq!(one.status, 200, "{version} {path}: one token passes");
            let hits = up.hits();
            let mut req = client.get(format!("{}{path}", gw.base));
            req = req.header("authorization", format!("Bearer {valid}"));
            let mut headers = reqwest::header::HeaderMap::new();
            headers.append("authorization", format!("Bearer {valid}").parse().unwrap());
            headers.append("authorization", format!("Bearer {forged}").parse().unwrap());
            req = req.headers(headers);
            let two = gw.send(req).await;
            two.error(400, "BAD_REQUEST");
            assert_eq!(up.hits(), hits, "{version} {path}: no upstream call");
        }
    }
}

/// RFC 7519's NumericDate may be fractional; a token is not accepted on or after its
/// `exp` (leeway 0).
#[tokio::test]
async fn token_times_are_numeric_dates() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&token_routes(&up.url(), "0s")).await;
    let ask = |token: String| {
        gw.send(
            gw.client
                .get(format!("{}/m", gw.base))
                .header("authorization", format!("Bearer {token}")),
        )
    };
    let now = now_secs();
    let fractional =
        hs256(&json!({"sub": "a", "exp": now + 600.5, "nbf": now - 10.25, "iat": now - 10.5}));
    let ok = ask(fractional).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // Not yet valid, fractionally.
    let early = ask(hs256(
        &json!({"sub": "a", "exp": now + 600.0, "nbf": now + 60.5}),
    ))
    .await;
    early.error(401, "INVALID_TOKEN");
    // exp is the current second (or earlier): expired, with no leeway.
    let at_exp = ask(hs256(&json!({"sub": "a", "exp": now.floor() as u64}))).await;
    at_exp.error(401, "INVALID_TOKEN");
    let past = ask(hs256(&json!({"sub": "a", "exp": now - 0.5}))).await;
    past.error(401, "INVALID_TOKEN");
    // Not a number at all is no exp.
    let text = ask(hs256(&json!({"sub": "a", "exp": "tomorrow"}))).await;
    text.error(401, "INVALID_TOKEN");
}

/// A claim with a bidi override or another invisible format character never reaches an
/// upstream's header or path: the token is refused like one with CRLF.
#[tokio::test]
async fn claims_with_bidi_controls_are_refused() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&token_routes(&up.url(), "30s")).await;
    let exp = now_secs() as u64 + 600;
    for path in ["/m", "/u"] {
        for sub in [
            "admin\u{202e}nimda",
            "a\u{2066}b",
            "zero\u{200b}width",
            "x\u{7f}",
        ] {
            let hits = up.hits();
            let r = gw
                .send(gw.client.get(format!("{}{path}", gw.base)).header(
                    "authorization",
                    format!("Bearer {}", hs256(&json!({"sub": sub, "exp": exp}))),
                ))
                .await;
            r.error(401, "INVALID_TOKEN");
            assert_eq!(up.hits(), hits, "{path} {sub:?}");
        }
        let plain = gw
            .send(gw.client.get(format!("{}{path}", gw.base)).header(
                "authorization",
                format!("Bearer {}", hs256(&json!({"sub": "zoë", "exp": exp}))),
            ))
            .await;
        assert_eq!(plain.status, 200, "{path}: other non-ASCII letters pass");
    }
}

// === Files ===

/// A JWKS with one EC key (what a `jwks_file` holds).
fn jwks() -> String {
    let pair = rcgen::KeyPair::generate().unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = json!("k1");
    json!({ "keys": [jwk] }).to_string()
}

fn mkfifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A watched TLS key and `jwks_file` replaced by FIFOs (which block whoever opens them
/// for reading until a writer comes): the admin listener keeps answering, a reload is
/// refused at once with the reason, and public traffic flows.
#[tokio::test]
async fn files_replaced_by_fifos_block_nothing() {
    let up = Upstream::json(json!({"ok": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::support::Pki::new();
    let pair = pki.pair();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let keys = dir.path().join("jwks.json");
    std::fs::write(&cert, &pair.cert).unwrap();
    std::fs::write(&key, &pair.key).unwrap();
    std::fs::write(&keys, jwks()).unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
workers = 1
tls = {{ cert = \"cert.pem\", key = \"key.pem\" }}

[auth.jwt.files]
jwks_file = \"jwks.json\"
algorithms = [\"ES256\"]

{}
[[routes]]
path = \"/open\"
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/open\"
",
            upstream("svc", &up.url(), "")
        ),
    )
    .unwrap();
    let gw = crate::support::Process::start(&config, None).await;
    assert_eq!(
        gw.admin_get("/health", Duration::from_secs(5))
            .await
            .map(|a| a.0),
        Some(200)
    );
    mkfifo(&key);
    mkfifo(&keys);
    // Past the watch's settling time (300 ms): both files were looked at.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gw.admin_get("/health", Duration::from_secs(2))
            .await
            .map(|a| a.0),
        Some(200),
        "the admin listener answers:\n{}",
        gw.log()
    );
    gw.signal("-HUP");
    let mut refused = false;
    for _ in 0..100 {
        if gw.log().contains("not a regular file") && gw.log().contains("config reload refused") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the reload is refused, saying why:\n{}", gw.log());
    assert_eq!(
        gw.admin_get("/health", Duration::from_secs(2))
            .await
            .map(|a| a.0),
        Some(200)
    );
    // The certificate in memory keeps serving.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .get(format!("https://localhost:{}/open", gw.addr.port()))
            .send(),
    )
    .await
    .expect("answered in time")
    .unwrap();
    assert_eq!(r.status(), 200);
}
