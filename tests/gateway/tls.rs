//! TLS on the public listener (docs/configuration.md#server, `tls`): versions and ALPN,
//! resumption, what upstreams are told, bad files refused with their place, rotation without
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::{Gateway, Pair, Pki, Upstream, series};

/// A client trusting the test CA, offering `alpn` and `versions`.
trait Client {
    fn client(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig>;
}

impl Client for Pki {
    fn client(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(cert: &Path, key: &Path, upstream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}

[upstreams.u]
urls = ["{upstream}"]

[[routes]]
path = "/a"
  [[routes.backends]]
  upstream = "u"
  path = "/a"
"#,
        cert.display(),
        key.display()
    )
}

async fn connect(gw: &Gateway, client: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.server.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// GET `path` on an open TLS session, in the protocol ALPN chose: (status, body).
async fn get(tls: TlsStream<TcpStream>, path: &str) -> (u16, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let req = http::Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The leaf certificate the listener presents now.
async fn served(gw: &Gateway, pki: &Pki) -> CertificateDer<'static> {
    let tls = connect(gw, &pki.client(&[b"http/1.1"], BOTH)).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Waits (at most 10 s) for the listener to present `want`.
async fn until_served(gw: &Gateway, pki: &Pki, want: &CertificateDer<'static>, what: &str) {
    for _ in 0..200 {
        if served(gw, pki).await == *want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: the new certificate was not served within 10 s");
}

#[tokio::test]
async fn a_tls_listener_speaks_h2_and_http11_by_alpn_and_tells_upstreams_https() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    let cert = write(dir.path(), "cert.pem", &pair.cert);
    let key = write(dir.path(), "key.pem", &pair.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;
    // Metrics are the process's: other tests' gateways count too.
    let failed = r#"manifold_connections_closed_total{listener="public",reason="tls_handshake"}"#;
    let before = series(&gw.metrics().await, failed);

    let tls = connect(&gw, &pki.client(&[b"h2", b"http/1.1"], BOTH)).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(get(tls, "/a").await, (200, r#"{"ok":1}"#.to_string()));
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");

    // A client offering only http/1.1 gets it; one offering no ALPN too.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let tls = connect(&gw, &pki.client(alpn, BOTH)).await;
        assert_ne!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(get(tls, "/a").await.0, 200);
    }
    // TLS 1.2 as well.
    let tls = connect(&gw, &pki.client(&[b"h2"], &[&rustls::version::TLS12])).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get(tls, "/a").await.0, 200);

    // Cleartext on the TLS port gets no HTTP answer, and is counted.
    let mut plain = TcpStream::connect(gw.server.addr).await.unwrap();
    plain
        .write_all(b"GET /a HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));
    // The admin listener stays cleartext.
    assert!(series(&gw.metrics().await, failed) > before);
    assert_eq!(up.hits(), 4, "the cleartext request reached no upstream");
}

#[tokio::test]
async fn sessions_resume_on_tls13_and_tls12() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    let cert = write(dir.path(), "cert.pem", &pair.cert);
    let key = write(dir.path(), "key.pem", &pair.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
        // One client config: its session store carries the ticket (or id) over.
        let client = pki.client(&[b"http/1.1"], versions);
        let first = connect(&gw, &client).await;
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // TLS 1.3 tickets come after the handshake: a request reads them.
        assert_eq!(get(first, "/a").await.0, 200);
        let second = connect(&gw, &client).await;
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
        assert_eq!(get(second, "/a").await.0, 200);
    }
}

// Paused time: the bound passes at once, measured on tokio's clock.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_header_read_timeout() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    let cert = write(dir.path(), "cert.pem", &pair.cert);
    let key = write(dir.path(), "key.pem", &pair.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;
    // Metrics are the process's: other tests' gateways count too.
    let timeouts =
        r#"manifold_connections_closed_total{listener="public",reason="header_timeout"}"#;
    let before = series(&gw.metrics().await, timeouts);
    let t0 = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(gw.server.addr).await.unwrap();
    // The first bytes of a ClientHello, then nothing.
    silent
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(120), silent.read_to_end(&mut out)).await;
    let waited = t0.elapsed().as_secs_f64();
    assert!((10.0..11.0).contains(&waited), "closed after {waited} s");
    assert!(series(&gw.metrics().await, timeouts) > before);
}

/// `check`'s error for a config whose tls names these files.
fn tls_errors(dir: &Path, cert: &str, key: &str) -> String {
    let text = format!(
        "[server]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n[upstreams.u]\nurls = [\"http://127.0.0.1:1\"]\n\n[[routes]]\npath = \"/a\"\n  [[routes.backends]]\n  upstream = \"u\"\n  path = \"/a\"\n"
    );
    let file = dir.join("routes.toml");
    match manifold::config::parse(&file.display().to_string(), &text) {
        Ok(_) => String::new(),
        Err(d) => d.render(),
    }
}

#[test]
fn unusable_certificates_and_keys_are_config_errors_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (a, b) = (pki.pair(), pki.pair());
    write(dir.path(), "a.crt", &a.cert);
    write(dir.path(), "a.key", &a.key);
    write(dir.path(), "b.key", &b.key);
    write(
        dir.path(),
        "junk.crt",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    write(dir.path(), "empty.pem", "nothing here\n");

    // Relative paths are the config file's neighbours, wherever manifold runs.
    assert_eq!(tls_errors(dir.path(), "a.crt", "a.key"), "");

    let missing = tls_errors(dir.path(), "nope.crt", "a.key");
    assert!(missing.contains("cannot read certificate"), "{missing}");
    assert!(missing.contains("nope.crt"), "{missing}");
    assert!(missing.contains("routes.toml:2:"), "{missing}");

    let junk = tls_errors(dir.path(), "junk.crt", "a.key");
    assert!(junk.contains("junk.crt cannot be used"), "{junk}");

    let no_key = tls_errors(dir.path(), "a.crt", "empty.pem");
    assert!(no_key.contains("holds no PEM private key"), "{no_key}");

    let mismatch = tls_errors(dir.path(), "a.crt", "b.key");
    assert!(
        mismatch.contains("does not belong to the certificate"),
        "{mismatch}"
    );
    // Never the key's bytes.
    let key_body: String = b.key.lines().nth(1).unwrap().to_string();
    assert!(!mismatch.contains(&key_body));

    // A device named by mistake is an error, not a hang or an out-of-memory; so is a
    // regular file too large to be a certificate.
    let endless = tls_errors(dir.path(), "/dev/zero", "a.key");
    assert!(endless.contains("not a regular file"), "{endless}");
    std::fs::write(dir.path().join("huge.crt"), vec![b'x'; (1 << 20) + 1]).unwrap();
    let huge = tls_errors(dir.path(), "huge.crt", "a.key");
    assert!(huge.contains("larger than 1048576 bytes"), "{huge}");

    let half = tls_errors(dir.path(), "a.crt", "");
    assert!(half.contains("cannot read private key"), "{half}");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart_and_a_bad_one_never() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.pair();
    let cert = write(dir.path(), "cert.pem", &first.cert);
    let key = write(dir.path(), "key.pem", &first.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;
    assert_eq!(served(&gw, &pki).await, first.der);

    // Written in place (key first, then the certificate).
    let second = pki.pair();
    std::fs::write(&key, &second.key).unwrap();
    std::fs::write(&cert, &second.cert).unwrap();
    until_served(&gw, &pki, &second.der, "in-place write").await;

    // Replaced by a rename, as editors and cert-manager-style tools do.
    let third = pki.pair();
    write(dir.path(), "key.new", &third.key);
    write(dir.path(), "cert.new", &third.cert);
    std::fs::rename(dir.path().join("key.new"), &key).unwrap();
    std::fs::rename(dir.path().join("cert.new"), &cert).unwrap();
    until_served(&gw, &pki, &third.der, "rename").await;

    // A certificate whose key does not come: the old pair keeps serving. (Metrics
    // are the process's, so counted from here.)
    let errors = r#"manifold_tls_certificate_reloads_total{result="error"}"#;
    let before = series(&gw.metrics().await, errors);
    let orphan = pki.pair();
    std::fs::write(&cert, &orphan.cert).unwrap();
    for _ in 0..200 {
        if series(&gw.metrics().await, errors) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = gw.metrics().await;
    assert!(series(&metrics, errors) > before, "{metrics}");
    assert_eq!(served(&gw, &pki).await, third.der, "the old pair serves on");
    assert_eq!(
        get(connect(&gw, &pki.client(&[b"h2"], BOTH)).await, "/a")
            .await
            .0,
        200
    );
    // Its key arrives: now it serves.
    std::fs::write(&key, &orphan.key).unwrap();
    until_served(&gw, &pki, &orphan.der, "the key came later").await;
}

/// Kubernetes mounts a Secret as `name -> ..data/name`, `..data -> ..<timestamp>`, and
/// updates it by making a new timestamped directory and renaming a new `..data` link
/// over the old one.
#[tokio::test]
async fn a_kubernetes_secret_update_is_served_without_restart() {
    use std::os::unix::fs::symlink;
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    let (first, second, third) = (pki.pair(), pki.pair(), pki.pair());
    let version = |name: &str, pair: &Pair| {
        std::fs::create_dir(d.join(name)).unwrap();
        write(&d.join(name), "tls.crt", &pair.cert);
        write(&d.join(name), "tls.key", &pair.key);
    };
    let swap = |name: &str| {
        symlink(name, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    };
    version("..v1", &first);
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
    symlink("..data/tls.key", d.join("tls.key")).unwrap();
    let gw = Gateway::start(&config(&d.join("tls.crt"), &d.join("tls.key"), &up.url())).await;
    assert_eq!(served(&gw, &pki).await, first.der);

    version("..v2", &second);
    swap("..v2");
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    until_served(&gw, &pki, &second.der, "first secret update").await;
    // The watch survives the directory it first resolved to going away.
    version("..v3", &third);
    swap("..v3");
    std::fs::remove_dir_all(d.join("..v2")).unwrap();
    until_served(&gw, &pki, &third.der, "second secret update").await;
}

#[tokio::test]
async fn a_reload_rereads_the_pair_and_refuses_an_unusable_one() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (first, second, other) = (pki.pair(), pki.pair(), pki.pair());
    let cert = write(dir.path(), "cert.pem", &first.cert);
    let key = write(dir.path(), "key.pem", &first.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;

    // A reload naming a mismatched pair is refused: the first pair serves on.
    let bad_cert = write(dir.path(), "second.pem", &second.cert);
    let wrong_key = write(dir.path(), "other.key", &other.key);
    let file = write(
        dir.path(),
        "routes.toml",
        &config(&bad_cert, &wrong_key, &up.url()),
    );
    assert!(gw.server.reload_file(&file).await.is_err());
    assert_eq!(served(&gw, &pki).await, first.der);

    // Naming a good pair at new paths serves it at once, and watches the new files.
    let good_key = write(dir.path(), "second.key", &second.key);
    write(
        dir.path(),
        "routes.toml",
        &config(&bad_cert, &good_key, &up.url()),
    );
    gw.server.reload_file(&file).await.unwrap();
    assert_eq!(served(&gw, &pki).await, second.der);
    std::fs::write(&good_key, &other.key).unwrap();
    std::fs::write(&bad_cert, &other.cert).unwrap();
    until_served(&gw, &pki, &other.der, "after a reload moved the files").await;
}

/// ALPN decides the protocol (RFC 7301): a client offering only `http/1.0` or a
/// protocol manifold does not speak is served HTTP/1.1 without ALPN rather than
/// refused; a connection that negotiated `h2` and then speaks HTTP/1.1 is not served.
#[tokio::test]
async fn the_negotiated_protocol_is_the_one_spoken() {
    let up = Upstream::json(json!({"ok": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.pair();
    let cert = write(dir.path(), "cert.pem", &pair.cert);
    let key = write(dir.path(), "key.pem", &pair.key);
    let gw = Gateway::start(&config(&cert, &key, &up.url())).await;
    for offered in [&[&b"http/1.0"[..]][..], &[b"spdy/3", b"foo"]] {
        let tls = connect(&gw, &pki.client(offered, BOTH)).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), None, "{offered:?}");
        assert_eq!(
            get(tls, "/a").await.0,
            200,
            "{offered:?}: served as HTTP/1.1"
        );
    }
    // h2 negotiated, HTTP/1.1 spoken: the connection is closed without an answer,
    // and counted (metrics are the process's: other tests may count too).
    let mismatch = r#"manifold_connections_closed_total{listener="public",reason="alpn_mismatch"}"#;
    let before = series(&gw.metrics().await, mismatch);
    let mut tls = connect(&gw, &pki.client(&[b"h2"], BOTH)).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET /a HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("HTTP/1.1 200"),
        "served HTTP/1.1 over h2: {text}"
    );
    assert!(
        series(&gw.metrics().await, mismatch) > before,
        "{mismatch} not counted"
    );
    // And http/1.1 negotiated, the h2 preface spoken: not served as h2 either.
    let mut tls = connect(&gw, &pki.client(&[b"http/1.1"], BOTH)).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(
        !out.starts_with(&[0, 0]) || out.len() < 9 || out[3] != 4,
        "answered with h2 SETTINGS over http/1.1: {out:?}"
    );
}
