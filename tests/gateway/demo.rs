//! `manifold demo`: the repository's routes.toml with the built-in demo upstreams, and
//! every curl line it prints gives the answer it promises.

use serde_json::Value;

#[tokio::test]
async fn every_printed_curl_line_answers() {
    let server = crate::support::start_demo().await;

    let client = reqwest::Client::new();
    let lines = manifold::demo::curl_lines(server.addr);
    assert!(lines.len() >= 4);
    for line in lines {
        let url = line
            .split_whitespace()
            .find(|w| w.trim_matches('\'').starts_with("http://"))
            .unwrap()
            .trim_matches('\'');
        // `-d '...'`: a POST of that JSON.
        let posted = line
            .split_once("-d '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(data, _)| data.to_string());
        let mut req = match &posted {
            Some(data) => client
                .post(url)
                .header("content-type", "application/json")
                .body(data.clone()),
            None => client.get(url),
        };
        if line.contains("accept-language: de") {
            req = req.header("accept-language", "de");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let completed = resp
            .headers()
            .get("x-manifold-completed")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{line}: not JSON: {e}"));
        match (url.rsplit('/').next().unwrap(), posted.as_deref()) {
            ("404" | "nope", _) => assert_eq!(status, 404, "{line}: {body}"),
            // The checkout form: created, refused by its schema, or the service's own
            // field errors passed through.
            ("orders", Some(data)) if data.contains("SKU-0000") => {
                assert_eq!(status, 422, "{line}: {body}");
                assert_eq!(body["fields"][0]["field"], "items/0/sku", "{line}: {body}");
            }
            ("orders", Some(data)) if data.contains("\"qty\":0") => {
                assert_eq!(status, 400, "{line}: {body}");
                assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{line}: {body}");
                assert_eq!(
                    body["error"]["details"].as_array().map(Vec::len),
                    Some(2),
                    "{line}: {body}"
                );
            }
            ("orders", Some(_)) => {
                assert_eq!(status, 201, "{line}: {body}");
                assert_eq!(body["status"], "processing", "{line}: {body}");
            }
            _ => assert_eq!(status, 200, "{line}: {body}"),
        }
        if url.contains("/api/profile/") {
            // The gRPC answer, in the proto3 JSON mapping, beside the JSON user.
            assert_eq!(body["name"], "Demo User 42", "{line}: {body}");
            assert_eq!(body["profile"]["tier"], "PRO", "{line}: {body}");
            assert_eq!(
                body["profile"]["memberSince"], "2019-04-12T09:00:00Z",
                "{line}: {body}"
            );
            assert_eq!(
                body["profile"]["openReports"], 0,
                "defaults included: {body}"
            );
            assert!(body["profile"].get("userId").is_none(), "denied: {body}");
        }
        if url.contains("/api/dashboard/") {
            assert_eq!(completed.as_deref(), Some("true"), "{line}");
            assert_eq!(body["user"]["id"], "42", "{line}: {body}");
            assert!(
                body["orders"].as_array().is_some_and(|o| o.len() == 5),
                "{line}: {body}"
            );
            assert!(
                body["recommendations"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()),
                "{line}: {body}"
            );
            assert!(
                body["user"].get("email").is_none(),
                "{line}: allow-list leaked a field"
            );
        }
        if url.contains("lang=de") {
            assert_eq!(body["user"]["lang"], "de", "{line}: forward_query");
        }
        if url.contains("/api/home/") {
            // The home route's deadline is shorter than the slow recommendations service.
            assert_eq!(completed.as_deref(), Some("false"), "{line}");
            assert_eq!(
                body["recommendations"],
                serde_json::json!([]),
                "{line}: {body}"
            );
        }
    }
    server.shutdown();
    assert!(server.wait().await);
}

/// What `manifold demo` prints names the console, and the console answers there.
#[tokio::test]
async fn the_banner_names_the_console_and_it_answers_there() {
    let server = crate::support::start_demo().await;
    let admin = server.admin_addr.unwrap();
    let banner = manifold::demo::banner(server.addr, Some(admin), true);
    let url = format!("http://{admin}/");
    let line = banner
        .lines()
        .find(|l| l.contains("console"))
        .unwrap_or_else(|| panic!("no console line in {banner}"));
    assert!(line.trim_end().ends_with(&url), "{line}");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("manifold console"));
    assert!(!manifold::demo::banner(server.addr, Some(admin), false).contains("console"));
}
