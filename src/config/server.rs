//! `[server]`: the listeners, their connection bounds and buffers, TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::compression::{Compression, read_server_compression};
use super::diag::{Diagnostic, SourceSpan};
use super::reader::{Errors, Key, KeyDefault, Table, key};

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub default_timeout: Duration,
    pub max_request_body: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    /// Event loops (threads), each with its own listener socket and upstream pools.
    /// `None`: one per CPU.
    pub workers: Option<usize>,
    /// Bytes the response cache (route and backend answers) may hold.
    pub cache_capacity: u64,
    /// How long a client may take from connecting (or from the end of its previous
    /// request) to sending a whole request head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive HTTP/1 connection, or an h2 connection with no open
    /// stream, may sit idle before it is closed (h2: GOAWAY).
    pub idle_timeout: Duration,
    /// How long an answer may wait for the client to take any of it before the
    /// connection is closed.
    pub send_timeout: Duration,
    /// Open client connections past which new ones are closed at once. `None`: half
    /// the descriptor limit (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Bytes of a request head (path, query, header names and values): 414/431 past it.
    pub max_header_size: u64,
    /// Bytes of upstream answers held in memory at once, across all requests; past it
    /// a new upstream call fails at once (OVERLOADED).
    pub buffer_capacity: u64,
    /// Of those, what one h2 connection's requests may hold.
    pub buffer_per_connection: u64,
    /// `tls`: the public listener speaks TLS with this certificate.
    pub tls: Option<TlsFiles>,
    /// `compression`: `None` when it is off.
    pub compression: Option<Compression>,
    /// `strict-transport-security` on answers of a TLS listener: `None` with
    /// `hsts = false`.
    pub hsts: Option<http::HeaderValue>,
}

/// The listener's certificate and key: where they are (relative paths already made
/// relative to the config file's directory) and the pair as loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pair: std::sync::Arc<rustls::sign::CertifiedKey>,
}

/// Two configs name the same TLS when they name the same files and those held the
/// same certificate when each was loaded.
impl PartialEq for TlsFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.pair.cert == other.pair.cert
    }
}

pub const LISTEN: Key = key(
    "listen",
    "Public listener, ip:port (HTTP/1.1 and h2c, or TLS with `tls`).",
)
.default(KeyDefault::Str("127.0.0.1:8080"));
pub const ADMIN_LISTEN: Key = key(
    "admin_listen",
    "Admin listener for /health, /ready, /routes and /metrics; never the public port.",
)
.default(KeyDefault::Str("127.0.0.1:9901"));
pub const DEFAULT_TIMEOUT: Key = key("default_timeout", "Route deadline when a route sets none.")
    .default(KeyDefault::Duration(Duration::from_secs(2)));
pub const MAX_REQUEST_BODY: Key =
    key("max_request_body", "Larger request bodies get 413.").default(KeyDefault::Size(1 << 20));
pub const TRUSTED_PROXIES: Key = key(
    "trusted_proxies",
    "Peers (IPs or CIDR ranges) whose x-forwarded-for is believed when finding the client_ip of a rate limit.",
);
pub const SHUTDOWN_GRACE: Key = key(
    "shutdown_grace",
    "How long a drain waits for in-flight requests.",
)
.default(KeyDefault::Duration(Duration::from_secs(10)));
pub const WORKERS: Key = key(
    "workers",
    "Event loops (threads), each with its own listening socket and upstream pools.",
)
.between(1.0, 1024.0)
.default(KeyDefault::Computed("one per CPU"));
pub const CACHE_CAPACITY: Key = key(
    "cache_capacity",
    "Bytes the route and backend caches may hold together.",
)
.default(KeyDefault::Size(64 << 20));
pub const HEADER_READ_TIMEOUT: Key = key(
    "header_read_timeout",
    "Time a client has, from connecting or from the first byte of its next request, to send a whole request head.",
)
.default(KeyDefault::Duration(Duration::from_secs(10)));
pub const IDLE_TIMEOUT: Key = key(
    "idle_timeout",
    "A kept-alive HTTP/1.1 connection with no request, or an h2 connection with no open stream, is closed after this long (h2: GOAWAY).",
)
.default(KeyDefault::Duration(Duration::from_secs(60)));
pub const SEND_TIMEOUT: Key = key(
    "send_timeout",
    "A connection whose client takes none of an answer for this long is closed.",
)
.default(KeyDefault::Duration(Duration::from_secs(30)));
pub const MAX_CONNECTIONS: Key = key(
    "max_connections",
    "Open client connections; past it new ones are closed at once.",
)
.at_least(1.0)
.default(KeyDefault::Computed("half the descriptor limit"));
pub const MAX_HEADER_SIZE: Key = key(
    "max_header_size",
    "Bytes of a request head (path, query, header names and values), HTTP/1.1 and h2 alike: 414 or 431 past it.",
)
.between(1024.0, 1048576.0)
.default(KeyDefault::Size(32 << 10));
// Below 64 KiB every buffered answer but the smallest would be refused.
pub const BUFFER_CAPACITY: Key = key(
    "buffer_capacity",
    "Bytes of upstream answers held in memory at once, across all requests; past it new upstream calls fail at once (OVERLOADED).",
)
.at_least(65536.0)
.default(KeyDefault::Size(256 << 20));
pub const BUFFER_PER_CONNECTION: Key = key(
    "buffer_per_connection",
    "Of buffer_capacity, what one h2 connection's requests may hold (answers being read and answers its client has not taken); past it its new requests get 503.",
)
.at_least(65536.0)
.default(KeyDefault::Size(16 << 20));
pub const TLS: Key = key(
    "tls",
    "The public listener speaks TLS 1.2/1.3 (ALPN h2, http/1.1) with this certificate and key; both re-read when they change.",
);

pub const HSTS: Key = key(
    "hsts",
    "strict-transport-security sent with every answer when `tls` is set: the header's value, or false for none.",
)
.default(KeyDefault::Str("max-age=31536000"));

/// `hsts`: a valid header value, or `false`.
fn read_hsts(t: &mut Table<'_, '_>, errs: &mut Errors) -> Option<http::HeaderValue> {
    let default = http::HeaderValue::from_static(HSTS.default_str());
    match t.get(HSTS).map(|v| v.get_ref()) {
        None => Some(default),
        Some(toml::de::DeValue::Boolean(_)) => match t.bool(errs, HSTS) {
            Some(false) => None,
            _ => {
                errs.push(
                    Diagnostic::new(t.span(), "`hsts = true` means nothing")
                        .label("a header value such as \"max-age=31536000\", or false")
                        .note("leave it out for the default, max-age=31536000"),
                );
                Some(default)
            }
        },
        Some(_) => {
            let (value, span) = t.string(errs, HSTS)?;
            match http::HeaderValue::from_str(&value) {
                Ok(v) if value.to_ascii_lowercase().contains("max-age=") => Some(v),
                _ => {
                    errs.push(
                        Diagnostic::new(span, "`hsts` must be a strict-transport-security value")
                            .label("expected e.g. \"max-age=31536000; includeSubDomains\""),
                    );
                    None
                }
            }
        }
    }
}

pub(super) fn socket_addr(
    errs: &mut Errors,
    value: Option<(String, SourceSpan)>,
    key: &str,
) -> Option<Option<SocketAddr>> {
    let Some((s, span)) = value else {
        return Some(None);
    };
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(Some(a)),
        Err(_) => {
            errs.push(
                Diagnostic::new(
                    span,
                    format!("`{key}` must be an address like \"127.0.0.1:8080\" or \"[::]:8080\""),
                )
                .label("not an ip:port"),
            );
            None
        }
    }
}

pub(super) fn read_server(
    t: &mut Table<'_, '_>,
    errs: &mut Errors,
    base: &Path,
) -> Option<ServerConfig> {
    let listen = t.string(errs, LISTEN);
    let listen = socket_addr(errs, listen, LISTEN.name);
    let admin = t.string(errs, ADMIN_LISTEN);
    let admin = socket_addr(errs, admin, ADMIN_LISTEN.name);
    let default_timeout = t.positive_duration_or(errs, DEFAULT_TIMEOUT);
    let max_request_body = t.size_or(errs, MAX_REQUEST_BODY);
    let shutdown_grace = t.duration_or(errs, SHUTDOWN_GRACE);
    let cache_capacity = t.size_or(errs, CACHE_CAPACITY);
    let header_read_timeout = t.positive_duration_or(errs, HEADER_READ_TIMEOUT);
    let idle_timeout = t.positive_duration_or(errs, IDLE_TIMEOUT);
    let send_timeout = t.positive_duration_or(errs, SEND_TIMEOUT);
    let max_connections = t
        .count(errs, MAX_CONNECTIONS)
        .map(|(n, _)| usize::try_from(n).unwrap_or(usize::MAX));
    let max_header_size = t.size_or(errs, MAX_HEADER_SIZE);
    let buffer_capacity = t.size_or(errs, BUFFER_CAPACITY);
    let buffer_per_connection = t.size(errs, BUFFER_PER_CONNECTION);
    if let Some((n, span)) = &buffer_per_connection
        && *n > buffer_capacity
    {
        errs.push(
            Diagnostic::new(
                span.clone(),
                "buffer_per_connection is larger than buffer_capacity",
            )
            .label("a connection's share cannot pass the whole"),
        );
    }
    let buffer_per_connection =
        buffer_per_connection.map_or(BUFFER_PER_CONNECTION.default_size(), |(n, _)| n);
    let workers = t.count(errs, WORKERS).map(|(n, _)| n as usize);
    let mut trusted = Vec::new();
    for (s, span) in t.string_list(errs, TRUSTED_PROXIES).unwrap_or_default() {
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted.push(net),
            Err(_) => errs.push(
                Diagnostic::new(span, format!("`{s}` is not an IP address or CIDR range"))
                    .label("expected e.g. \"10.0.0.0/8\" or \"192.0.2.7\""),
            ),
        }
    }
    if let (Some(Some(l)), Some(Some(a))) = (&listen, &admin)
        && l == a
        && l.port() != 0
    {
        errs.push(
            Diagnostic::new(t.span(), format!("admin_listen and listen are both {l}"))
                .label("the admin listener is never on the public port")
                .note("give admin_listen its own port, e.g. \"127.0.0.1:9901\""),
        );
    }
    let tls = t.table(errs, TLS).and_then(|mut tt| {
        let tls = read_tls(&mut tt, errs, base);
        tt.finish(errs);
        tls
    });
    let compression = read_server_compression(t, errs);
    let hsts = read_hsts(t, errs);
    let default_listen = LISTEN.default_str().parse().ok()?;
    let default_admin = ADMIN_LISTEN.default_str().parse().ok()?;
    Some(ServerConfig {
        listen: listen.flatten().unwrap_or(default_listen),
        admin_listen: Some(admin.flatten().unwrap_or(default_admin)),
        default_timeout,
        max_request_body,
        trusted_proxies: trusted,
        shutdown_grace,
        workers,
        cache_capacity,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        max_connections,
        max_header_size,
        buffer_capacity,
        buffer_per_connection,
        tls,
        compression,
        hsts,
    })
}

/// `tls = { cert, key }`: both files read and checked to belong together now, so a
/// pair that could not serve is a load error (and a refused reload).
pub(super) fn read_tls(t: &mut Table<'_, '_>, errs: &mut Errors, base: &Path) -> Option<TlsFiles> {
    let cert = t.required_string(
        errs,
        key(
            "cert",
            "PEM certificate chain, leaf first; relative to the config file's directory.",
        ),
    );
    let key_file = t.required_string(
        errs,
        key(
            "key",
            "PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate; relative to the config file's directory.",
        ),
    );
    let ((cert, cert_span), (key_file, key_span)) = (cert?, key_file?);
    let (cert, key_file) = (base.join(cert), base.join(key_file));
    match crate::base::tls::load_pair(&cert, &key_file) {
        Ok(pair) => Some(TlsFiles {
            cert,
            key: key_file,
            pair,
        }),
        Err((file, e)) => {
            let span = match file {
                crate::base::tls::PairFile::Cert => cert_span,
                crate::base::tls::PairFile::Key => key_span,
            };
            errs.push(Diagnostic::new(span, e).label("unusable"));
            None
        }
    }
}
