//! The public listener's TLS: the certificate serving now (swapped without a restart
//! when its files change), the server config with resumption, and each connection's
//! handshake, whose ALPN decides the protocol spoken.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

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
