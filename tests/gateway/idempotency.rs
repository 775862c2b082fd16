//! Idempotency keys (docs/configuration.md#idempotency-keys), one replica, its own
//! store: a payment sent twice reaches the payment service once; the four cases (first,
//! in flight, replay, reused), `required`, bad keys, answers that are not kept (5xx,
//! too large), identities kept apart, and what is counted and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Upstream, series, upstream};

/// `POST /pay` (one backend, `idempotency`), `POST /must` (`required`), `POST /big`,
/// `POST /flaky` and `POST /slow`; the upstream counts its calls per path.
async fn payments() -> (Upstream, Gateway, Arc<AtomicUsize>) {
    payments_named("POST /").await
}

/// As [`payments`], each route named `{prefix}{path}`: a test that counts a route's
/// series gives its routes names no other test shares (metrics are per process).
async fn payments_named(prefix: &str) -> (Upstream, Gateway, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let up = Upstream::start(move |s| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match s.uri.path() {
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    crate::support::json(201, json!({"paid": true}))
                }
                "/flaky" if n.is_multiple_of(2) => crate::support::json(503, json!({"down": true})),
                "/big" => crate::support::json(200, json!({"pad": "x".repeat(1_100_000)})),
                "/declined" => crate::support::json(402, json!({"error": "card declined"})),
                _ => crate::support::json(
                    201,
                    json!({"payment": n, "body": String::from_utf8_lossy(&s.body)}),
                ),
            }
        }
    })
    .await;
    let route = |path: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{prefix}{path}\"\npath = \"/{path}\"\nmethod = \"POST\"\nforward_headers = [\"authorization\"]\n{extra}\n  [[routes.backends]]\n  upstream = \"pay\"\n  path = \"/{path}\"\n  pass_errors = true\n"
        )
    };
    let idem = "idempotency = { ttl = \"1h\" }";
    let gw = Gateway::start(&format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        upstream("pay", &up.url(), "timeout = \"2s\""),
        route("pay", idem),
        route("must", "idempotency = { required = true }"),
        route("big", idem),
        route("flaky", idem),
        route("slow", idem),
        route("declined", idem),
    ))
    .await;
    (up, gw, calls)
}

async fn pay(gw: &Gateway, path: &str, key: Option<&str>, body: &Value) -> crate::support::Answer {
    let mut req = gw.client.post(format!("{}{path}", gw.base)).json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    gw.send(req).await
}

#[tokio::test]
async fn a_payment_sent_twice_is_charged_once() {
    let (up, gw, _) = payments_named("charged /").await;
    let order = json!({"amount": 1200, "currency": "EUR"});
    let first = pay(&gw, "/pay", Some("k-1"), &order).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert!(first.header("idempotent-replayed").is_none());
    assert_eq!(
        up.last().headers["idempotency-key"],
        "k-1",
        "the key is forwarded"
    );
    let again = pay(&gw, "/pay", Some("k-1"), &order).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body, "the first answer, byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_ne!(
        again.header("x-request-id"),
        first.header("x-request-id"),
        "its own id"
    );
    assert_eq!(up.hits(), 1, "no upstream call for the replay");

    // The same key with another request: 422, also while nothing is in flight.
    let other = pay(&gw, "/pay", Some("k-1"), &json!({"amount": 9999})).await;
    other.error(422, "IDEMPOTENCY_KEY_REUSED");
    // Another key, or no key: a payment of its own.
    assert_eq!(pay(&gw, "/pay", Some("k-2"), &order).await.status, 201);
    assert_eq!(pay(&gw, "/pay", None, &order).await.status, 201);
    assert_eq!(up.hits(), 3);

    let line = gw.access_line(again.header("x-request-id").unwrap()).await;
    assert_eq!(line["idempotency"], "replayed");
    let line = gw.access_line(first.header("x-request-id").unwrap()).await;
    assert_eq!(line["idempotency"], "stored");
    let metrics = gw.metrics().await;
    let count = |result: &str| {
        series(
            &metrics,
            &format!("manifold_idempotency_total{{route=\"charged /pay\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (
            count("stored"),
            count("replayed"),
            count("reused"),
            count("in_progress")
        ),
        (2.0, 1.0, 1.0, 0.0)
    );
}

#[tokio::test]
async fn a_second_request_while_the_first_runs_gets_409_or_422() {
    let (up, gw, _) = payments().await;
    let order = json!({"amount": 5});
    let gw = Arc::new(gw);
    let first = {
        let gw = gw.clone();
        let order = order.clone();
        tokio::spawn(async move { pay(&gw, "/slow", Some("s-1"), &order).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let busy = pay(&gw, "/slow", Some("s-1"), &order).await;
    busy.error(409, "IDEMPOTENCY_IN_PROGRESS");
    assert_eq!(busy.header("retry-after"), Some("1"));
    pay(&gw, "/slow", Some("s-1"), &json!({"amount": 6}))
        .await
        .error(422, "IDEMPOTENCY_KEY_REUSED");
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let replay = pay(&gw, "/slow", Some("s-1"), &order).await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (201, Some("true"))
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn keys_are_checked_and_required_where_the_route_says() {
    let (up, gw, _) = payments_named("keys /").await;
    let order = json!({"amount": 1});
    pay(&gw, "/must", None, &order)
        .await
        .error(400, "IDEMPOTENCY_KEY_MISSING");
    let long = "k".repeat(256);
    for bad in [long.as_str(), "", "with space", "tab\there"] {
        let req = gw
            .client
            .post(format!("{}/pay", gw.base))
            .header("idempotency-key", bad)
            .json(&order);
        gw.send(req).await.error(400, "IDEMPOTENCY_KEY_INVALID");
    }
    let two = gw
        .client
        .post(format!("{}/pay", gw.base))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&order);
    gw.send(two).await.error(400, "IDEMPOTENCY_KEY_INVALID");
    assert_eq!(
        pay(&gw, "/must", Some(&"k".repeat(255)), &order)
            .await
            .status,
        201
    );
    assert_eq!(up.hits(), 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "manifold_idempotency_total{route=\"keys /must\",result=\"missing\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &metrics,
            "manifold_idempotency_total{route=\"keys /pay\",result=\"invalid\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn only_final_answers_are_kept_and_identities_never_meet() {
    let (up, gw, _) = payments_named("kept /").await;
    let order = json!({"amount": 3});
    // A 5xx is not kept: the retry reaches the upstream, and its answer is kept.
    pay(&gw, "/flaky", Some("f-1"), &order)
        .await
        .error(502, "UPSTREAM_ERROR");
    assert_eq!(pay(&gw, "/flaky", Some("f-1"), &order).await.status, 201);
    let replay = pay(&gw, "/flaky", Some("f-1"), &order).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(up.hits(), 2);
    // A 4xx is final: the upstream's own refusal is replayed.
    let declined = pay(&gw, "/declined", Some("d-1"), &order).await;
    assert_eq!(
        (declined.status, declined.json()["error"].clone()),
        (402, json!("card declined"))
    );
    let replay = pay(&gw, "/declined", Some("d-1"), &order).await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (402, Some("true"))
    );
    assert_eq!(up.hits(), 3);
    // Larger than the store keeps (1 MiB without [shared]): not kept, key free again.
    assert_eq!(pay(&gw, "/big", Some("b-1"), &order).await.status, 200);
    assert_eq!(pay(&gw, "/big", Some("b-1"), &order).await.status, 200);
    assert_eq!(up.hits(), 5);
    // Two users, one key: two payments.
    for who in ["Bearer alice", "Bearer bob"] {
        let req = gw
            .client
            .post(format!("{}/pay", gw.base))
            .header("authorization", who)
            .header("idempotency-key", "same")
            .json(&order);
        let a = gw.send(req).await;
        assert_eq!(
            (a.status, a.header("idempotent-replayed")),
            (201, None),
            "{who}"
        );
    }
    assert_eq!(up.hits(), 7);
    let metrics = gw.metrics().await;
    let count = |route: &str, result: &str| {
        series(
            &metrics,
            &format!("manifold_idempotency_total{{route=\"kept /{route}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(count("flaky", "not_stored"), 1.0);
    assert_eq!(count("big", "too_large"), 2.0);
    assert_eq!(count("declined", "stored"), 1.0);
}

#[tokio::test]
async fn a_passthrough_answer_of_a_declared_length_is_kept_and_replayed() {
    let up = Upstream::start(|s| async move {
        let mut r = crate::support::json(201, json!({"charged": String::from_utf8_lossy(&s.body)}));
        r.headers_mut().insert("etag", "\"p-1\"".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&format!(
        "{}\n[[routes]]\npath = \"/raw\"\nmethod = \"POST\"\npassthrough = true\nidempotency = {{ ttl = \"10m\" }}\n  [[routes.backends]]\n  upstream = \"pay\"\n  path = \"/charge\"\n",
        upstream("pay", &up.url(), "")
    ))
    .await;
    let order = json!({"amount": 7});
    let first = pay(&gw, "/raw", Some("r-1"), &order).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        up.last().body,
        order.to_string().as_bytes(),
        "the body sent on as it came"
    );
    let again = pay(&gw, "/raw", Some("r-1"), &order).await;
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (201, Some("true"))
    );
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), Some("\"p-1\""), "its validators kept");
    assert_eq!(up.hits(), 1);
    let line = gw.access_line(first.header("x-request-id").unwrap()).await;
    assert_eq!(line["idempotency"], "stored");
}

const SECRET: &str = "an-idempotency-test-secret-of-32-bytes-at-least";

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// With `auth`, a key is the token's `sub`'s: two tokens of one user share it, two
/// users never do; a replay needs a valid token and counts against the rate limit.
#[tokio::test]
async fn with_auth_a_key_is_the_users_and_a_replay_is_checked_and_limited() {
    let up = Upstream::start(|s| async move {
        crate::support::json(201, json!({"for": String::from_utf8_lossy(&s.body)}))
    })
    .await;
    let gw = Gateway::start(&format!(
        "[auth.jwt.hs]\nsecret = \"{SECRET}\"\nalgorithms = [\"HS256\"]\n{}\n[[routes]]\nname = \"pay_with_auth\"\npath = \"/pay\"\nmethod = \"POST\"\nauth = {{ jwt = \"hs\" }}\nrate_limit = {{ per_second = 1, burst = 4, key = \"global\" }}\nidempotency = {{ ttl = \"1h\" }}\n  [[routes.backends]]\n  upstream = \"pay\"\n  path = \"/pay\"\n",
        upstream("pay", &up.url(), "")
    ))
    .await;
    let send = |bearer: Option<String>| {
        let mut req = gw
            .client
            .post(format!("{}/pay", gw.base))
            .header("idempotency-key", "k")
            .json(&json!({"amount": 1}));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        gw.send(req)
    };
    assert_eq!(send(Some(token("ann"))).await.status, 201);
    // Another token of the same user (another `exp` would do too): the same key.
    let again = send(Some(token("ann"))).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let bob = send(Some(token("bob"))).await;
    assert_eq!((bob.status, bob.header("idempotent-replayed")), (201, None));
    // No token: 401 before the lookup, nothing replayed.
    send(None).await.error(401, "UNAUTHORIZED");
    // The burst of 4 is spent: the replay is limited like any request.
    send(Some(token("ann"))).await.error(429, "RATE_LIMITED");
    assert_eq!(up.hits(), 2);
}

/// A client that goes away frees its key at once: its retry is served, not 409.
#[tokio::test]
async fn a_client_that_leaves_frees_its_key() {
    let (up, gw, _) = payments().await;
    let short = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gone = short
        .post(format!("{}/slow", gw.base))
        .header("idempotency-key", "gone-1")
        .json(&json!({"amount": 9}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    // The gateway hears of it when it writes, or at once on h2; give it a moment.
    let mut retried = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = pay(&gw, "/slow", Some("gone-1"), &json!({"amount": 9})).await;
        if a.status != 409 {
            retried = Some(a);
            break;
        }
    }
    let retried = retried.expect("the key was freed");
    assert_eq!(
        (retried.status, retried.header("idempotent-replayed")),
        (201, None)
    );
    assert_eq!(up.hits(), 2, "the retry reached the upstream");
}

/// Validation runs before the lookup: a request its schema refuses never takes the key,
/// so the corrected request with the same key is served, not 422.
#[tokio::test]
async fn a_request_refused_by_its_schema_takes_no_key() {
    let up = Upstream::json(json!({"ok": true})).await;
    let gw = Gateway::start(&format!(
        "{}\n[[routes]]\nname = \"pay_validated\"\npath = \"/pay\"\nmethod = \"POST\"\nvalidate = {{ body = {{ type = \"object\", required = [\"amount\"] }} }}\nidempotency = {{ ttl = \"1h\" }}\n  [[routes.backends]]\n  upstream = \"pay\"\n  path = \"/pay\"\n",
        upstream("pay", &up.url(), "")
    ))
    .await;
    pay(&gw, "/pay", Some("v-1"), &json!({"amt": 1}))
        .await
        .error(400, "INVALID_REQUEST");
    let fixed = pay(&gw, "/pay", Some("v-1"), &json!({"amount": 1})).await;
    assert_eq!(
        (fixed.status, fixed.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(up.hits(), 1);
}
