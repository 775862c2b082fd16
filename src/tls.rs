//! TLS: the client set-up shared by upstream calls and the trace exporter, and the
//! public listener's certificate (loaded, checked, swapped when its files change).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The platform's roots (as browsers and curl trust them), plus `ca_file` if set.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut extra = Vec::new();
    if let Some(path) = ca_file {
        let pem = crate::watch::read_bounded(path, crate::watch::MAX_FILE)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            extra.push(cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?);
        }
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("cannot set up TLS verification: {e}"))?;
    // `dangerous()` is rustls' gate for any custom verifier; this one is the platform
    // verifier (full chain and hostname checks), the same that reqwest and curl use.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// A connector for `http://` and `https://` URLs alike, with Nagle off. TLS offers
/// ALPN `http/1.1`, or `h2` first with `h2`.
pub fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: Option<Duration>,
    keepalive: Option<Duration>,
    h2: bool,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    // The TLS wrapper decides per URL; the inner connector must accept https too.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(keepalive);
    http.set_connect_timeout(connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if h2 {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    }
}

// === the listener's certificate ===

/// Which of the two files a [`load_pair`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    /// The key, or the key and certificate together (they do not match).
    Key,
}

/// Reads a PEM certificate chain and its private key and checks that they belong
/// together: a pair that could not serve a handshake is refused here, at load.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, (PairFile, String)> {
    use rustls_pki_types::pem::Error as Pem;
    let read = |what: &str, path: &Path, e: Pem| match e {
        Pem::Io(e) => format!("cannot read {what} {}: {e}", path.display()),
        Pem::NoItemsFound => format!("{} holds no PEM {what}", path.display()),
        e => format!("{what} {} is not valid PEM: {e}", path.display()),
    };
    let on_cert = |e| (PairFile::Cert, read("certificate", cert, e));
    let bounded = |path: &Path| crate::watch::read_bounded(path, crate::watch::MAX_FILE);
    let cert_pem = bounded(cert).map_err(|e| on_cert(Pem::Io(e)))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(on_cert)?;
    let Some(leaf) = chain.first() else {
        return Err(on_cert(Pem::NoItemsFound));
    };
    rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| {
        let m = format!("certificate {} cannot be used: {e}", cert.display());
        (PairFile::Cert, m)
    })?;
    let on_key = |e| (PairFile::Key, read("private key", key, e));
    let key_pem = bounded(key).map_err(|e| on_key(Pem::Io(e)))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(on_key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let pair = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        let m = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key {} does not belong to the certificate {}",
                key.display(),
                cert.display()
            ),
            e => format!("private key {} cannot be used: {e}", key.display()),
        };
        (PairFile::Key, m)
    })?;
    Ok(Arc::new(pair))
}

/// The listener's current certificate: every handshake takes the one in place when it
/// starts, so a swap needs no restart and cuts no connection.
#[derive(Debug)]
pub struct Certs(ArcSwap<CertifiedKey>);

impl Certs {
    pub fn new(pair: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Certs(ArcSwap::new(pair)))
    }

    /// Serves `pair` from the next handshake on; false when it is the one serving.
    pub fn set(&self, pair: Arc<CertifiedKey>) -> bool {
        let same = self.0.load().cert == pair.cert;
        if !same {
            self.0.store(pair);
        }
        !same
    }
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS sessions remembered for resumption by id (TLS 1.2 clients without tickets).
const SESSION_CACHE: usize = 4096;

/// The public listener's TLS: 1.2 and 1.3, ALPN `h2` then `http/1.1`, resumption by
/// ticket (stateless; its keys rotate every few hours) and by session id. No 0-RTT:
/// early data could be replayed. One config for every worker loop, so a client that
/// comes back on another loop's socket resumes too.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| format!("cannot set up TLS session tickets: {e}"))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// The public listener's handshakes. ALPN decides the protocol spoken (RFC 7301): `h2`
/// or `http/1.1` when the client offers one; a client that offers ALPN but neither
/// (only `http/1.0`, or protocols manifold does not speak) is answered without ALPN
/// and served HTTP/1.1, as nginx does, rather than refused with
/// `no_application_protocol`.
pub struct Handshakes {
    /// ALPN `h2`, `http/1.1`.
    offered: Arc<rustls::ServerConfig>,
    /// The same, without ALPN (sessions and tickets shared with `offered`).
    plain: Arc<rustls::ServerConfig>,
}

impl Handshakes {
    pub fn new(certs: Arc<Certs>) -> Result<Self, String> {
        let offered = server_config(certs)?;
        let mut plain = (*offered).clone();
        plain.alpn_protocols.clear();
        Ok(Handshakes {
            offered,
            plain: Arc::new(plain),
        })
    }

    /// Shakes hands on `stream` with the config the client's hello calls for.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let ours = start
            .client_hello()
            .alpn()
            .is_none_or(|mut offered| offered.any(|p| p == b"h2" || p == b"http/1.1"));
        let config = if ours { &self.offered } else { &self.plain };
        start.into_stream(config.clone()).await
    }
}
