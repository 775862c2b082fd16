//! Answers over the wire (docs/configuration.md#answers-on-the-wire): compression
//! negotiated and decoded byte for byte, by this test's own decoders and by curl;
//! upstreams' encodings decoded within the body limit; weak etags and 304s; the
//! caching and security headers.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{Gateway, Pki, Upstream, raw, series, upstream};

/// A JSON answer of about `n` KB, different per seed.
fn big_json(n: usize, seed: u64) -> Value {
    let items: Vec<Value> = (0..n * 10)
        .map(|i| {
            json!({"id": i, "name": format!("user {i}"), "seed": seed,
                   "email": format!("u{i}@example.com"), "score": (i as u64 * 7 + seed) % 1000})
        })
        .collect();
    json!({ "items": items })
}

fn merged_route(url: &str, extra: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/home/{{id}}\"
{extra}
  [[routes.backends]]
  name = \"feed\"
  upstream = \"u\"
  path = \"/feed/{{id}}\"
",
        upstream("u", url, "")
    )
}

/// Decodes `body` as `coding` with the codings' own crates (not manifold's code).
fn decoded(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(body).unwrap(),
        other => panic!("no decoder for {other}"),
    }
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> crate::support::Answer {
    let mut req = gw.client.get(format!("{}{path}", gw.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    gw.send(req).await
}

/// curl decodes what it is sent: the real client's view of an encoded answer.
/// (Run without blocking: the gateway answers it on this test's own thread.)
async fn curl_compressed(url: &str, accept: &str) -> Option<Vec<u8>> {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--compressed", "-H"])
        .arg(format!("accept-encoding: {accept}"))
        .arg(url)
        .output()
        .await
        .ok()?;
    out.status.success().then_some(out.stdout)
}

#[tokio::test]
async fn merged_answers_are_compressed_with_each_coding_and_decode_byte_for_byte() {
    let up = Upstream::json(big_json(20, 1)).await;
    let gw = Gateway::start(&merged_route(&up.url(), "name = \"coded\"")).await;
    let plain = gw.get("/home/1").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    assert!(plain.body.len() > 15_000, "{}", plain.body.len());
    let etag = plain.header("etag").unwrap().to_string();
    let mut by_curl_too = 0.0;
    for coding in ["br", "zstd", "gzip"] {
        let r = get_with(&gw, "/home/1", &[("accept-encoding", coding)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(coding));
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{coding}: same etag");
        assert!(
            r.body.len() * 4 < plain.body.len(),
            "{coding}: {} of {}",
            r.body.len(),
            plain.body.len()
        );
        assert_eq!(decoded(coding, &r.body), plain.body, "{coding}");
        let line = gw.access_line(r.header("x-request-id").unwrap()).await;
        assert_eq!(line["encoding"], coding);
        if let Some(by_curl) = curl_compressed(&format!("{}/home/1", gw.base), coding).await {
            assert_eq!(by_curl, plain.body, "{coding} as curl decodes it");
            by_curl_too += 1.0;
        }
    }
    // Each coding's answers: this test's own, and curl's (where curl is installed).
    let each = 1.0 + by_curl_too / 3.0;
    let m = gw.metrics().await;
    for coding in ["br", "zstd", "gzip"] {
        let s =
            format!("manifold_compressed_responses_total{{route=\"coded\",encoding=\"{coding}\"}}");
        assert_eq!(series(&m, &s), each, "{s}");
    }
    assert!(series(&m, "manifold_compression_bytes_total{direction=\"in\"}") >= 60_000.0);
    assert!(series(&m, "manifold_compression_bytes_total{direction=\"out\"}") > 0.0);
}

#[tokio::test]
async fn negotiation_honours_q_values_star_and_the_servers_order() {
    let up = Upstream::json(big_json(5, 2)).await;
    let gw = Gateway::start(&merged_route(&up.url(), "")).await;
    for (accept, want) in [
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip;q=0.5, br;q=0.4", Some("gzip")),
        ("br;q=0, *", Some("zstd")),
        ("*;q=0.1, gzip;q=0.2", Some("gzip")),
        ("identity", None),
        ("identity;q=0", None),
        ("gzip;q=0", None),
        ("deflate", None),
    ] {
        let r = get_with(&gw, "/home/1", &[("accept-encoding", accept)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), want, "{accept}");
        assert_eq!(r.header("vary"), Some("accept-encoding"), "{accept}");
    }
    // A route's own order.
    let gw = Gateway::start(&merged_route(
        &up.url(),
        "compression = { algorithms = [\"gzip\", \"br\"], min_size = 10 }",
    ))
    .await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "br, gzip, zstd")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "zstd")]).await;
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn small_answers_head_and_routes_without_compression_are_sent_as_they_are() {
    let up = Upstream::json(json!({"small": true})).await;
    let gw = Gateway::start(&merged_route(&up.url(), "")).await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), None, "below min_size");
    assert_eq!(r.header("vary"), Some("accept-encoding"));
    assert_eq!(r.json(), json!({"small": true}));

    let big = Upstream::json(big_json(5, 3)).await;
    let gw = Gateway::start(&merged_route(&big.url(), "")).await;
    let full = gw.get("/home/1").await;
    let head = gw
        .send(
            gw.client
                .head(format!("{}/home/1", gw.base))
                .header("accept-encoding", "gzip"),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-encoding"),
        None,
        "HEAD is never encoded"
    );
    assert_eq!(head.header("vary"), Some("accept-encoding"));
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );

    // Off for the route: no encoding and no vary.
    let gw = Gateway::start(&merged_route(&big.url(), "compression = false")).await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    // Off for the server, on for the route with `true`: the defaults.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncompression = false\n{}",
        merged_route(&big.url(), "")
    );
    let gw = Gateway::start(&config).await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncompression = false\n{}",
        merged_route(&big.url(), "compression = true")
    );
    let gw = Gateway::start(&config).await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn error_bodies_are_compressed_too() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncompression = { min_size = 16 }\n"
        .to_string()
        + &merged_route("http://127.0.0.1:9", "");
    let gw = Gateway::start(&config).await;
    let r = get_with(&gw, "/nowhere", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("accept-encoding"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("cache-control"),
        None,
        "errors carry no cache-control"
    );
    let body: Value = serde_json::from_slice(&decoded("gzip", &r.body)).unwrap();
    assert_eq!(body["error"]["code"], "ROUTE_NOT_FOUND");
    let m = gw.metrics().await;
    assert!(
        series(
            &m,
            "manifold_compressed_responses_total{route=\"unmatched\",encoding=\"gzip\"}"
        ) >= 1.0
    );
}

/// An upstream answering every request with `headers` and a body this test sends
/// piece by piece: each request hands the test the sender of its body.
async fn piecewise_upstream(
    headers: &'static [(&'static str, &'static str)],
) -> (String, mpsc::Receiver<mpsc::Sender<Bytes>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (bodies_tx, bodies_rx) = mpsc::channel::<mpsc::Sender<Bytes>>(8);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let bodies_tx = bodies_tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let bodies_tx = bodies_tx.clone();
                        async move {
                            let (tx, mut rx) = mpsc::channel::<Bytes>(8);
                            let _ = bodies_tx.send(tx).await;
                            let stream = futures_util::stream::poll_fn(move |cx| {
                                rx.poll_recv(cx).map(|b| {
                                    b.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)))
                                })
                            });
                            let mut r = Response::new(StreamBody::new(stream));
                            for (k, v) in headers {
                                r.headers_mut().insert(*k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (format!("http://{addr}"), bodies_rx)
}

fn passthrough_route(url: &str, extra: &str) -> String {
    format!(
        "{}
[[routes]]
path = \"/files/{{name}}\"
passthrough = true
{extra}
  [[routes.backends]]
  upstream = \"files\"
  path = \"/store/{{name}}\"
",
        upstream("files", url, "")
    )
}

#[tokio::test]
async fn passthrough_answers_are_compressed_as_they_stream() {
    let (url, mut bodies) = piecewise_upstream(&[("content-type", "text/plain")]).await;
    let gw = Gateway::start(&passthrough_route(&url, "")).await;
    for coding in ["gzip", "br", "zstd"] {
        let req = gw
            .client
            .get(format!("{}/files/log.txt", gw.base))
            .header("accept-encoding", coding)
            .send();
        let (resp, body) = tokio::join!(req, bodies.recv());
        let resp = resp.unwrap();
        let body = body.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], coding);
        assert_eq!(resp.headers()["vary"], "accept-encoding");
        assert!(resp.headers().get("content-length").is_none());
        assert!(
            resp.headers().get("x-content-type-options").is_none(),
            "the upstream's answer"
        );
        let mut stream = resp.bytes_stream();
        // The first piece reaches the client while the upstream still holds the rest:
        // what it has sent is flushed, decodable on its own.
        let first = "line one of the log, line one of the log\n".repeat(40);
        body.send(Bytes::from(first.clone())).await.unwrap();
        let mut got = Vec::new();
        use futures_util::StreamExt;
        while !prefix_decodes(coding, &got, first.as_bytes()) {
            let piece = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap_or_else(|_| panic!("{coding}: the first piece was held back"))
                .unwrap()
                .unwrap();
            got.extend_from_slice(&piece);
        }
        let second = "and then the second part\n".repeat(100);
        body.send(Bytes::from(second.clone())).await.unwrap();
        drop(body);
        while let Some(piece) = stream.next().await {
            got.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(
            decoded(coding, &got),
            format!("{first}{second}").into_bytes(),
            "{coding}"
        );
    }
}

/// What the client has so far decodes to at least `want`.
fn prefix_decodes(coding: &str, got: &[u8], want: &[u8]) -> bool {
    let mut out = vec![0u8; want.len()];
    let n = match coding {
        "gzip" => read_some(flate2::read::GzDecoder::new(got), &mut out),
        "br" => read_some(brotli::Decompressor::new(got, 4096), &mut out),
        "zstd" => match zstd::stream::read::Decoder::new(got) {
            Ok(d) => read_some(d, &mut out),
            Err(_) => 0,
        },
        _ => 0,
    };
    n == want.len() && out == want
}

fn read_some(mut r: impl Read, out: &mut [u8]) -> usize {
    let mut n = 0;
    while n < out.len() {
        match r.read(&mut out[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

#[tokio::test]
async fn passthrough_leaves_alone_what_it_must_not_encode() {
    let body = "x".repeat(4000);
    type Case = (&'static str, Vec<(&'static str, &'static str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "encoded already",
            vec![
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            200,
        ),
        (
            "no-transform",
            vec![
                ("content-type", "application/json"),
                ("cache-control", "public, no-transform"),
            ],
            200,
        ),
        ("an image", vec![("content-type", "image/png")], 200),
        (
            "an event stream",
            vec![("content-type", "text/event-stream")],
            200,
        ),
        (
            "a range",
            vec![
                ("content-type", "text/plain"),
                ("content-range", "bytes 0-3999/8000"),
            ],
            206,
        ),
        (
            "short",
            vec![("content-type", "text/plain"), ("content-length", "10")],
            200,
        ),
    ];
    for (what, headers, status) in cases {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = if what == "short" {
            "0123456789".to_string()
        } else {
            body.clone()
        };
        let up = Upstream::start(move |_| {
            let headers = headers.clone();
            let body = body.clone();
            async move {
                let mut r = raw(status, "text/plain", body);
                for (k, v) in &headers {
                    r.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                r
            }
        })
        .await;
        let gw = Gateway::start(&passthrough_route(&up.url(), "")).await;
        let r = get_with(&gw, "/files/a", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(r.status, status, "{what}");
        let encoding = r.header("content-encoding");
        if what == "encoded already" {
            assert_eq!(encoding, Some("gzip"), "{what}: the upstream's own");
        } else {
            assert_eq!(encoding, None, "{what}");
        }
        assert_eq!(
            up.last().headers["accept-encoding"],
            "gzip, br",
            "{what}: forwarded"
        );
    }
}

#[tokio::test]
async fn passthrough_passes_an_encoded_answer_and_the_upstreams_validators_on() {
    let page = big_json(8, 4).to_string();
    let zipped = Bytes::from(gzip(page.as_bytes()));
    let up = Upstream::start(move |seen| {
        let zipped = zipped.clone();
        async move {
            if seen
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "W/\"v7\"" || v == "\"v7\"")
            {
                let mut r = raw(304, "application/json", "");
                r.headers_mut().remove("content-type");
                r.headers_mut().insert("etag", "\"v7\"".parse().unwrap());
                return r;
            }
            if seen.headers.get("range").is_some() {
                let mut r = raw(206, "application/json", "{\"it");
                r.headers_mut()
                    .insert("content-range", "bytes 0-3/100".parse().unwrap());
                return r;
            }
            if seen.headers.get("if-match").is_some() {
                return raw(412, "application/json", "{}");
            }
            let gzip_ok = seen
                .headers
                .get("accept-encoding")
                .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
            let mut r = if gzip_ok {
                let mut r = raw(200, "application/json", zipped);
                r.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
                r
            } else {
                raw(200, "application/json", "identity")
            };
            r.headers_mut().insert("etag", "\"v7\"".parse().unwrap());
            r.headers_mut()
                .insert("vary", "accept-encoding".parse().unwrap());
            r
        }
    })
    .await;
    // forward_headers lists nothing: the conditional headers go along anyway.
    let gw = Gateway::start(&passthrough_route(&up.url(), "")).await;
    let r = get_with(&gw, "/files/a", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        &r.body[..],
        &gzip(page.as_bytes())[..],
        "passed on unchanged"
    );
    assert_eq!(
        r.header("etag"),
        Some("\"v7\""),
        "not re-encoded: the strong etag stands"
    );
    assert_eq!(r.header_all("vary").as_deref(), Some("accept-encoding"));
    for (name, value, status) in [
        ("if-none-match", "\"v7\"", 304),
        ("range", "bytes=0-3", 206),
        ("if-match", "\"v6\"", 412),
    ] {
        let r = get_with(
            &gw,
            "/files/a",
            &[(name, value), ("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(r.status, status, "{name}");
        assert_eq!(r.header("content-encoding"), None, "{name}");
        assert_eq!(up.last().headers[name], value, "{name} forwarded");
    }
    for name in ["if-modified-since", "if-unmodified-since", "if-range"] {
        let _ = get_with(&gw, "/files/a", &[(name, "Wed, 21 Oct 2015 07:28:00 GMT")]).await;
        assert_eq!(
            up.last().headers[name],
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "{name} forwarded"
        );
    }
}

#[tokio::test]
async fn a_strong_upstream_etag_is_weakened_when_manifold_compresses() {
    let up = Upstream::start(|seen| async move {
        let mut r = if seen.headers.get("if-none-match").is_some() {
            let mut r = raw(304, "application/json", "");
            r.headers_mut().remove("content-type");
            r
        } else {
            raw(200, "application/json", "[1,2,3,4,5,6,7,8,9]".repeat(200))
        };
        r.headers_mut().insert("etag", "\"abc\"".parse().unwrap());
        r.headers_mut()
            .insert("accept-ranges", "bytes".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&passthrough_route(&up.url(), "")).await;
    let r = get_with(&gw, "/files/a", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"abc\""));
    assert_eq!(
        r.header("accept-ranges"),
        None,
        "ranges of the identity bytes"
    );
    let r = gw.get("/files/a").await;
    assert_eq!(r.header("etag"), Some("\"abc\""));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    // The revalidation of the compressed answer: its 304 says the same weak tag.
    let r = get_with(
        &gw,
        "/files/a",
        &[("accept-encoding", "gzip"), ("if-none-match", "W/\"abc\"")],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("W/\"abc\""));
    assert_eq!(r.header("vary"), Some("accept-encoding"));
    // Sent back where strong comparison rules, the tag is the upstream's own again.
    for name in ["if-match", "if-range"] {
        let _ = get_with(&gw, "/files/a", &[(name, "W/\"abc\"")]).await;
        assert_eq!(up.last().headers[name], "\"abc\"", "{name}");
    }
}

/// An upstream answering `body` with `content-encoding: coding`.
async fn encoded_upstream(coding: &'static str, body: Vec<u8>) -> Upstream {
    let body = Bytes::from(body);
    Upstream::start(move |_| {
        let body = body.clone();
        async move {
            let mut r = raw(200, "application/json", body);
            r.headers_mut()
                .insert("content-encoding", coding.parse().unwrap());
            r
        }
    })
    .await
}

#[tokio::test]
async fn merged_backends_decode_every_upstream_coding() {
    let page = json!({"n": 42, "list": [1, 2, 3]});
    let text = page.to_string();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(text.as_bytes()).unwrap();
    let mut br = Vec::new();
    brotli::BrotliCompress(
        &mut text.as_bytes(),
        &mut br,
        &brotli::enc::BrotliEncoderParams::default(),
    )
    .unwrap();
    for (coding, body) in [
        ("gzip", gzip(text.as_bytes())),
        ("deflate", zlib.finish().unwrap()),
        ("br", br),
        (
            "zstd",
            zstd::stream::encode_all(text.as_bytes(), 3).unwrap(),
        ),
    ] {
        let up = encoded_upstream(coding, body).await;
        let gw = Gateway::start(&merged_route(&up.url(), "")).await;
        let r = gw.get("/home/1").await;
        assert_eq!(
            r.status,
            200,
            "{coding}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json(), page, "{coding}");
        assert_eq!(r.header("x-manifold-completed"), Some("true"));
        // Unless the route forwards the client's own, merged backends ask for none.
        assert_eq!(up.last().headers["accept-encoding"], "identity");
    }
}

#[tokio::test]
async fn a_client_accept_encoding_forwarded_by_star_still_merges() {
    // The upstream gzips when asked: the backend decodes it instead of failing.
    let page = big_json(3, 5);
    let zipped = Bytes::from(gzip(page.to_string().as_bytes()));
    let up = Upstream::start(move |seen| {
        let zipped = zipped.clone();
        async move {
            let mut r = raw(200, "application/json", zipped);
            if seen
                .headers
                .get("accept-encoding")
                .is_some_and(|v| v == "gzip")
            {
                r.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
            }
            r
        }
    })
    .await;
    let gw = Gateway::start(&merged_route(&up.url(), "forward_headers = [\"*\"]")).await;
    let r = get_with(&gw, "/home/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["accept-encoding"], "gzip");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let body: Value = serde_json::from_slice(&decoded("gzip", &r.body)).unwrap();
    assert_eq!(body, page);
    assert_eq!(r.header("x-manifold-completed"), Some("true"));
}

#[tokio::test]
async fn a_decompression_bomb_is_a_502_and_an_unknown_coding_too() {
    // 64 MiB of zeros in about 64 KiB of gzip; the body limit is 1 MiB.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 100 << 10);
    let up = encoded_upstream("gzip", bomb).await;
    let config = merged_route(&up.url(), "").replace(
        "[upstreams.u]",
        "[upstreams.u]\nmax_response_body = \"1MiB\"",
    );
    let gw = Gateway::start(&config).await;
    let r = gw.get("/home/1").await;
    let err = r.error(502, "UPSTREAM_BAD_RESPONSE");
    assert_eq!(err["backend"], "feed");
    assert_eq!(r.header("etag"), None);
    assert_eq!(r.header("cache-control"), None);

    let up = encoded_upstream("compress", b"whatever".to_vec()).await;
    let gw = Gateway::start(&merged_route(&up.url(), "")).await;
    gw.get("/home/1").await.error(502, "UPSTREAM_BAD_RESPONSE");
    let up = encoded_upstream("gzip", b"not gzip at all".to_vec()).await;
    let gw = Gateway::start(&merged_route(&up.url(), "")).await;
    gw.get("/home/1").await.error(502, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn complete_merged_gets_revalidate_with_a_weak_etag() {
    let up = Upstream::json(big_json(3, 6)).await;
    let gw = Gateway::start(&merged_route(
        &up.url(),
        "name = \"revalidated\"\ncache_control = \"private, max-age=30\"",
    ))
    .await;
    let first = gw.get("/home/1").await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(first.header("cache-control"), Some("private, max-age=30"));
    assert_eq!(first.header("x-content-type-options"), Some("nosniff"));

    for inm in [
        etag.clone(),
        etag.replace("W/", ""),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let r = get_with(
            &gw,
            "/home/1",
            &[("if-none-match", &inm), ("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), Some("private, max-age=30"));
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("content-encoding"), None);
        let id = r.header("x-request-id").unwrap();
        assert_eq!(gw.access_line(id).await["status"], 304);
    }
    let r = get_with(&gw, "/home/1", &[("if-none-match", "W/\"other\"")]).await;
    assert_eq!(r.status, 200);
    // HEAD is revalidated like GET.
    let r = gw
        .send(
            gw.client
                .head(format!("{}/home/1", gw.base))
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(r.status, 304);
    let m = gw.metrics().await;
    assert_eq!(
        series(&m, "manifold_not_modified_total{route=\"revalidated\"}"),
        5.0
    );

    // The etag is a function of the bytes: another gateway (a replica, a reload) with
    // the same answer says the same.
    let again = Gateway::start(&merged_route(&up.url(), "")).await;
    assert_eq!(
        again.get("/home/1").await.header("etag"),
        Some(etag.as_str())
    );
    // A different answer, a different etag.
    let other = Upstream::json(big_json(3, 7)).await;
    let gw3 = Gateway::start(&merged_route(&other.url(), "")).await;
    assert_ne!(gw3.get("/home/1").await.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn a_304_from_the_route_cache_calls_no_upstream() {
    let up = Upstream::json(json!({"v": 1})).await;
    let gw = Gateway::start(&merged_route(&up.url(), "cache = { ttl = \"60s\" }")).await;
    let first = gw.get("/home/1").await;
    let etag = first.header("etag").unwrap().to_string();
    assert_eq!(up.hits(), 1);
    let r = get_with(&gw, "/home/1", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(up.hits(), 1, "answered from the route cache");
    assert_eq!(
        gw.access_line(r.header("x-request-id").unwrap()).await["cache"],
        "hit"
    );

    // Forwarding every header: the conditional ones still stay out of the backends'
    // calls and of the cache key, or each revalidation would miss (and a backend's
    // own 304 could not be merged).
    let up = Upstream::json(json!({"v": 2})).await;
    let gw = Gateway::start(&merged_route(
        &up.url(),
        "cache = { ttl = \"60s\" }\nforward_headers = [\"*\"]",
    ))
    .await;
    let etag = gw.get("/home/1").await.header("etag").unwrap().to_string();
    for inm in [etag.as_str(), "*"] {
        let r = get_with(
            &gw,
            "/home/1",
            &[("if-none-match", inm), ("range", "bytes=0-1")],
        )
        .await;
        assert_eq!(r.status, 304, "{inm}");
    }
    assert_eq!(up.hits(), 1, "one call: the revalidations were cache hits");
    assert!(up.last().headers.get("if-none-match").is_none());
    let r = get_with(&gw, "/home/2", &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 304, "`*` matches whatever the answer is");
    assert_eq!(up.hits(), 2);
    assert!(up.last().headers.get("if-none-match").is_none());
    assert!(up.last().headers.get("range").is_none());
}

#[tokio::test]
async fn partial_answers_errors_and_other_methods_carry_no_validator() {
    let ok = Upstream::json(json!({"ok": true})).await;
    let config = format!(
        "{}{}
[[routes]]
path = \"/partial\"
  [[routes.backends]]
  name = \"a\"
  upstream = \"ok\"
  path = \"/a\"
  [[routes.backends]]
  name = \"b\"
  upstream = \"down\"
  path = \"/b\"
  optional = true

[[routes]]
path = \"/fails\"
  [[routes.backends]]
  upstream = \"down\"
  path = \"/b\"

[[routes]]
method = \"POST\"
path = \"/post\"
  [[routes.backends]]
  upstream = \"ok\"
  path = \"/a\"
",
        upstream("ok", &ok.url(), ""),
        upstream(
            "down",
            &format!("http://{}", crate::support::dead_addr().await),
            ""
        )
    );
    let gw = Gateway::start(&config).await;
    let r = gw.get("/partial").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-manifold-completed"), Some("false"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("etag"), None);
    let r = get_with(&gw, "/partial", &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 200, "a partial answer never answers 304");

    let r = get_with(&gw, "/fails", &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("etag"), None);
    assert_eq!(r.header("cache-control"), None);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    let r = gw
        .send(
            gw.client
                .post(format!("{}/post", gw.base))
                .header("if-none-match", "*"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), None, "only GET and HEAD are revalidated");
    assert_eq!(r.header("cache-control"), Some("private, no-cache"));
}

#[tokio::test]
async fn hsts_with_tls_nosniff_on_our_own_answers_and_upstreams_win() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    std::fs::write(dir.path().join("cert.pem"), &pair.cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &pair.key).unwrap();
    let merged = Upstream::json(json!({"a": 1})).await;
    let own = Upstream::start(|_| async {
        let mut r = raw(200, "text/plain", "hello");
        r.headers_mut()
            .insert("strict-transport-security", "max-age=60".parse().unwrap());
        r.headers_mut()
            .insert("x-content-type-options", "upstream".parse().unwrap());
        r
    })
    .await;
    let plain = Upstream::start(|_| async { raw(200, "text/plain", "hello") }).await;
    let config = |hsts: &str| {
        format!(
            "[server]
listen = \"127.0.0.1:0\"
admin_listen = \"127.0.0.1:0\"
tls = {{ cert = \"{}\", key = \"{}\" }}
{hsts}
{}{}{}
[[routes]]
path = \"/m\"
cors = {{ allow_origins = [\"https://app.test\"] }}
  [[routes.backends]]
  upstream = \"m\"
  path = \"/\"
[[routes]]
path = \"/own\"
passthrough = true
  [[routes.backends]]
  upstream = \"own\"
  path = \"/\"
[[routes]]
path = \"/plain\"
passthrough = true
  [[routes.backends]]
  upstream = \"plain\"
  path = \"/\"
",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display(),
            upstream("m", &merged.url(), ""),
            upstream("own", &own.url(), ""),
            upstream("plain", &plain.url(), ""),
        )
    };
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.root_pem.as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let gw = Gateway::start(&config("")).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.server.addr.port());
    let get = |p: &str| client.get(url(p)).send();
    let r = get("/m").await.unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = get("/nowhere").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = client
        .request(http::Method::OPTIONS, url("/m"))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let r = get("/own").await.unwrap();
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=60",
        "the upstream's own"
    );
    assert_eq!(r.headers()["x-content-type-options"], "upstream");
    let r = get("/plain").await.unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert!(
        r.headers().get("x-content-type-options").is_none(),
        "not manifold's answer"
    );

    let gw = Gateway::start(&config("hsts = \"max-age=600; includeSubDomains\"")).await;
    let r = client
        .get(format!("https://localhost:{}/m", gw.server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
    let gw = Gateway::start(&config("hsts = false")).await;
    let r = client
        .get(format!("https://localhost:{}/m", gw.server.addr.port()))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    // Cleartext: no HSTS (a browser ignores it there anyway).
    let gw = Gateway::start(&merged_route(&merged.url(), "")).await;
    assert_eq!(
        gw.get("/home/1").await.header("strict-transport-security"),
        None
    );
}
