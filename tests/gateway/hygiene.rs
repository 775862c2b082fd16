//! What reaches an upstream (CONTRACT §3): listed headers and params only, ids, encoding.

use serde_json::json;

use crate::support::{Gateway, Upstream, upstream};

fn route(extra: &str, url: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/u/{{id}}\"
{extra}
  [[routes.backends]]
  upstream = \"svc\"
  path = \"/users/{{id}}?fixed=1\"
",
        upstream("svc", url, "")
    )
}

#[tokio::test]
async fn only_listed_headers_and_params_reach_the_upstream() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&route(
        "forward_headers = [\"authorization\", \"Accept-Language\"]\nforward_query = [\"lang\"]",
        &up.url(),
    ))
    .await;
    let r = gw
        .send(
            gw.client
                .get(format!("{}/u/42?lang=de&token=secret&lang=fr", gw.base))
                .header("authorization", "Bearer abc")
                .header("accept-language", "de")
                .header("cookie", "session=s3cr3t")
                .header("x-internal-debug", "1")
                .header("accept", "application/json")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .header("tracestate", "vendor=1")
                .header("x-forwarded-for", "203.0.113.9"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri.to_string(), "/users/42?fixed=1&lang=de&lang=fr");
    let h = &seen.headers;
    assert_eq!(h["authorization"], "Bearer abc");
    assert_eq!(h["accept-language"], "de");
    assert_eq!(h["accept"], "application/json");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["tracestate"], "vendor=1");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("cookie").is_none(), "cookie leaked");
    assert!(
        h.get("x-internal-debug").is_none(),
        "unlisted header leaked"
    );
    assert_eq!(h["host"], up.addr.to_string());
    // request id made, sent upstream and echoed
    let id = r.header("x-request-id").expect("x-request-id echoed");
    assert_eq!(h["x-request-id"], id);
    assert!(id.len() >= 16);
}

#[tokio::test]
async fn nothing_is_forwarded_unless_listed() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&route("", &up.url())).await;
    let r = gw
        .send(
            gw.client
                .get(format!("{}/u/1?token=secret", gw.base))
                .header("authorization", "Bearer abc")
                .header("cookie", "a=b")
                .header("x-request-id", "client-chosen-id-1"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("cookie").is_none());
    assert_eq!(seen.uri.to_string(), "/users/1?fixed=1", "query leaked");
    assert_eq!(seen.headers["x-request-id"], "client-chosen-id-1");
    assert_eq!(r.header("x-request-id"), Some("client-chosen-id-1"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn star_forwards_everything_but_hop_by_hop() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&route(
        "forward_headers = [\"*\"]\nforward_query = [\"*\"]",
        &up.url(),
    ))
    .await;
    gw.send(
        gw.client
            .get(format!("{}/u/1?a=1&b=2", gw.base))
            .header("x-custom", "yes")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header("cookie", "c=d")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic x"),
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.uri.to_string(), "/users/1?fixed=1&a=1&b=2");
    assert_eq!(seen.headers["x-custom"], "yes");
    let multi: Vec<_> = seen
        .headers
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        multi,
        ["one", "two"],
        "every value of a repeated header is forwarded"
    );
    assert_eq!(seen.headers["cookie"], "c=d");
    assert!(seen.headers.get("te").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
}

#[tokio::test]
async fn params_are_encoded_and_traversal_is_refused() {
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&route("", &up.url())).await;
    assert_eq!(gw.get("/u/a%20b%2Fc%3Fd%26e").await.status, 200);
    assert_eq!(
        up.last().uri.to_string(),
        "/users/a%20b%2Fc%3Fd%26e?fixed=1"
    );
    assert_eq!(gw.get("/u/%C3%A9t%C3%A9").await.status, 200);
    assert_eq!(up.last().uri.path(), "/users/%C3%A9t%C3%A9");
    let hits = up.hits();
    // Sent raw: HTTP clients normalise dot segments before they leave the client.
    for bad in [
        "/u/..",
        "/u/.",
        "/u/%2e%2e",
        "/u/%2E",
        "/u/a%0Ab",
        "/u/%00",
        "/u/%FF",
    ] {
        let (status, body) = crate::support::raw_get(gw.server.addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "BAD_PARAMETER", "{bad}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("id"),
            "{bad}: {v}"
        );
    }
    assert_eq!(
        up.hits(),
        hits,
        "a refused parameter must not reach the upstream"
    );
}
