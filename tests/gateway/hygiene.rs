//! What reaches an upstream (docs/configuration.md#what-reaches-an-upstream) where a scenario
//! file cannot say it: repeated headers, raw paths. The rest is in tests/scenarios/hygiene and
//! tests/scenarios/routing.

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
async fn traversal_and_bad_parameters_are_refused() {
    // How good parameters are encoded: tests/scenarios/routing/parameters.toml.
    let up = Upstream::json(json!({})).await;
    let gw = Gateway::start(&route("", &up.url())).await;
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
