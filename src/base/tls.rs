//! TLS client set-up shared by upstream calls, JWKS fetches and the trace exporter,
//! and the certificate-and-key pair the config names (loaded and checked at load).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
        let pem = crate::base::files::read_bounded(path, crate::base::files::MAX_FILE)
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
    let bounded =
        |path: &Path| crate::base::files::read_bounded(path, crate::base::files::MAX_FILE);
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
