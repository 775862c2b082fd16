//! TLS client set-up, shared by upstream calls and the trace exporter.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The platform's roots (as browsers and curl trust them), plus `ca_file` if set.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut extra = Vec::new();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
        {
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

/// A connector for `http://` and `https://` URLs alike (HTTP/1.1), with Nagle off.
pub fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: Option<Duration>,
    keepalive: Option<Duration>,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    // The TLS wrapper decides per URL; the inner connector must accept https too.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(keepalive);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
