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
