//! Listeners, connections and the drain: HTTP/1.1 and h2c on one port, graceful shutdown.
//!
//! The current [`Gateway`] sits behind an `ArcSwap`: each request takes a snapshot at
//! its start and finishes on it, so a reload never changes a request midway.
//!
//! The binary runs one single-threaded event loop per core ("workers", as in nginx),
//! each accepting on its own `SO_REUSEPORT` socket and calling upstreams through its own
//! pools, so a request never hops threads. Tests run everything on their own runtime.

pub mod connection;
pub mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::base::forward::Peer;
use crate::config::Config;
use crate::request::gateway::{Gateway, Live};
use crate::state::buffers::Share;
use crate::state::connections::Connections;
use crate::telemetry::access_log::LogSink;
use crate::telemetry::metrics::METRICS;
use crate::{admin, request::handler};
use connection::Limits;
use handshake::Certs;

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config loaded but could not be compiled for serving.
    #[error("{0}")]
    Compile(String),
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        addr: SocketAddr,
        /// ` (admin)` for the admin listener.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub live: Arc<Live>,
    stop: watch::Sender<bool>,
    /// The admin listener outlives the public drain so `/ready` can say 503 meanwhile.
    stop_admin: watch::Sender<bool>,
    public: Vec<JoinHandle<bool>>,
    admin: Option<JoinHandle<bool>>,
    /// Event loops serving the public listener (one upstream pool each).
    workers: usize,
    /// The listener's certificate, with `[server] tls`; swapped on reload and when its
    /// files change.
    certs: Option<Arc<Certs>>,
    cert_watch: std::sync::Mutex<Option<crate::base::files::FileWatch>>,
}

impl Server {
    /// Compiles the config, binds both listeners and serves on the current runtime.
    pub async fn start(config: Config, log_sink: LogSink) -> Result<Server, StartError> {
        Self::start_on(config, log_sink, &[]).await
    }

    /// As [`Server::start`], with the public listener served by `workers` (one
    /// `SO_REUSEPORT` socket each; see [`crate::base::worker::spawn`]). Empty: the current runtime.
    pub async fn start_on(
        config: Config,
        log_sink: LogSink,
        workers: &[Handle],
    ) -> Result<Server, StartError> {
        let listen = config.server.listen;
        let admin_listen = config.server.admin_listen;
        let grace = config.server.shutdown_grace;
        let version = config.version();
        let tls_files = config.server.tls.clone();
        let certs = tls_files.as_ref().map(|t| Certs::new(t.pair.clone()));
        let acceptor = match &certs {
            Some(c) => Some(Arc::new(
                crate::listener::handshake::Handshakes::new(c.clone())
                    .map_err(StartError::Compile)?,
            )),
            None => None,
        };
        let gateway =
            Gateway::build(config, None, workers.len().max(1)).map_err(StartError::Compile)?;
        METRICS.config_loaded(&version);
        let live = Arc::new(Live {
            gateway: ArcSwap::from_pointee(gateway),
            ready: AtomicBool::new(false),
            log_sink,
            default_max_connections: connection::default_max_connections(),
            process: crate::request::gateway::Process::new(workers.len().max(1)),
        });
        let (stop, stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);

        // The admin port first: if it is taken, fail before accepting any client.
        let admin = match admin_listen {
            Some(a) => {
                let failed = |source| StartError::Listen {
                    addr: a,
                    what: " (admin)",
                    source,
                };
                let l = TcpListener::bind(a).await.map_err(failed)?;
                let admin_addr = l.local_addr().map_err(failed)?;
                let s = live.clone();
                let task = tokio::spawn(accept_loop(
                    l,
                    Listening {
                        live: live.clone(),
                        conns: Connections::new("admin"),
                        max: Some(crate::state::descriptors::ADMIN_CONNECTIONS),
                        // The admin listener stays cleartext: probes and scrapes come
                        // from inside the cluster.
                        tls: None,
                        stop: admin_stopped,
                        grace,
                        handler: move |req, _peer, _share| {
                            let s = s.clone();
                            async move { admin::handle(&s, req) }
                        },
                    },
                ));
                Some((admin_addr, task))
            }
            None => None,
        };
        let current = [Handle::current()];
        let loops: &[Handle] = if workers.is_empty() {
            &current
        } else {
            workers
        };
        let mut addr = listen;
        let mut public = Vec::with_capacity(loops.len());
        let conns = Connections::new("public");
        let _ = live.process.public.set(conns.clone());
        for handle in loops {
            // Registering the socket with a loop's I/O driver needs that loop's context.
            let _entered = handle.enter();
            let failed = |source| StartError::Listen {
                addr: listen,
                what: "",
                source,
            };
            let listener = bind(addr).map_err(failed)?;
            // With port 0, every loop must share the port the first one was given.
            addr = listener.local_addr().map_err(failed)?;
            let s = live.clone();
            public.push(handle.spawn(accept_loop(
                listener,
                Listening {
                    live: live.clone(),
                    conns: conns.clone(),
                    max: None,
                    tls: acceptor.clone(),
                    stop: stopped.clone(),
                    grace,
                    handler: move |req, peer, share| handler::handle(s.clone(), req, peer, share),
                },
            )));
        }

        let cert_watch = match (&certs, &tls_files) {
            (Some(c), Some(files)) => watch_certs(c.clone(), files),
            _ => None,
        };
        live.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            %addr,
            tls = certs.is_some(),
            admin = admin.as_ref().map(|a| tracing::field::display(a.0)),
            workers = loops.len(),
            "manifold is serving"
        );
        Ok(Server {
            addr,
            admin_addr: admin.as_ref().map(|a| a.0),
            live,
            stop,
            stop_admin,
            public,
            admin: admin.map(|a| a.1),
            workers: loops.len().max(1),
            certs,
            cert_watch: std::sync::Mutex::new(cert_watch),
        })
    }

    /// Swaps in a new config. Requests in flight finish on the one they started with;
    /// breakers, pools, limiter buckets and caches of unchanged upstreams and routes are
    /// kept. Listeners, workers and the drain grace are fixed at start.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let current = self.live.gateway.load_full();
        let old = &current.config.server;
        let new = &config.server;
        let fixed = [
            ("listen", old.listen != new.listen),
            ("admin_listen", old.admin_listen != new.admin_listen),
            ("workers", old.workers != new.workers),
            ("shutdown_grace", old.shutdown_grace != new.shutdown_grace),
            ("tls", old.tls.is_some() != new.tls.is_some()),
        ];
        for (key, changed) in fixed {
            if changed {
                tracing::warn!(key, "server.{key} changed: it applies at the next restart");
            }
        }
        let version = config.version();
        let tls = config.server.tls.clone();
        let moved =
            tls.as_ref().map(|t| (&t.cert, &t.key)) != old.tls.as_ref().map(|t| (&t.cert, &t.key));
        let gateway = Gateway::build(config, Some(&current), self.workers)?;
        self.live.gateway.store(Arc::new(gateway));
        // The reload re-read the certificate files (an unusable pair refused it).
        if let (Some(certs), Some(files)) = (&self.certs, tls) {
            if moved && let Ok(mut watch) = self.cert_watch.lock() {
                *watch = watch_certs(certs.clone(), &files);
            }
            if certs.set(files.pair) {
                tracing::info!(cert = %files.cert.display(), "TLS certificate replaced");
            }
        }
        METRICS.config_loaded(&version);
        Ok(())
    }

    /// Reads, checks and swaps in the config at `path`, counting the result. An invalid
    /// file is refused with `check`'s diagnostics (one log line each) and the current
    /// config keeps serving. The files are read off the event loop.
    pub async fn reload_file(&self, path: &std::path::Path) -> Result<(), String> {
        let began = tokio::time::Instant::now();
        let owned = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&owned))
            .await
            .map_err(|e| format!("reading {} failed: {e}", path.display()))?;
        let result = match loaded {
            Ok(config) => self.reload(config),
            Err(diagnostics) => {
                for line in diagnostics.one_line_each() {
                    tracing::error!(error = %line, "config reload refused");
                }
                Err(format!(
                    "{} has {} error(s)",
                    path.display(),
                    diagnostics.items.len()
                ))
            }
        };
        METRICS.reload(result.is_ok());
        self.live.process.reloaded(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(
                file = %path.display(),
                fingerprint = %self.live.gateway.load().config.version(),
                // Read, check and build: what a config's size costs (operations.md, Sizing).
                took_ms = began.elapsed().as_millis() as u64,
                "config reloaded"
            ),
            Err(e) => tracing::error!(
                error = %e,
                serving = %self.live.gateway.load().config.version(),
                "config reload refused; the previous config keeps serving"
            ),
        }
        result
    }

    /// Starts the drain: `/ready` turns 503, listeners stop accepting.
    pub fn shutdown(&self) {
        self.live.ready.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Exports the spans queued so far; the exporter keeps running.
    pub async fn flush_traces(&self) {
        if let Some(t) = self.live.gateway.load().tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
    }

    /// Waits for the drain to end, then flushes the spans still queued. True when every
    /// in-flight request finished in time.
    pub async fn wait(self) -> bool {
        let mut public = true;
        for task in self.public {
            public &= task.await.unwrap_or(false);
        }
        // Spans of the last requests go out before the process ends (bounded wait).
        if let Some(t) = self.live.gateway.load().tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
        let _ = self.stop_admin.send(true);
        let admin = match self.admin {
            Some(a) => a.await.unwrap_or(false),
            None => true,
        };
        public && admin
    }
}

/// Re-reads the certificate and key when either file changes (written in place,
/// replaced by a rename, or a Kubernetes secret's `..data` link swapped) and serves
/// them from the next handshake; a pair that cannot serve is logged and the old one
/// keeps serving. The files are those the listener was last given (at start, or by a
/// reload that named others), whatever a later reload says about `tls`.
fn watch_certs(
    certs: Arc<Certs>,
    files: &crate::config::TlsFiles,
) -> Option<crate::base::files::FileWatch> {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    let paths = [cert.clone(), key.clone()];
    crate::base::files::FileWatch::start(&paths, "TLS certificate", move || {
        match crate::base::tls::load_pair(&cert, &key) {
            Ok(pair) => {
                if certs.set(pair) {
                    METRICS.tls_reload(true);
                    tracing::info!(cert = %cert.display(), "TLS certificate replaced");
                }
            }
            Err((_, e)) => {
                METRICS.tls_reload(false);
                tracing::error!(error = %e, "the changed TLS certificate cannot be used; the previous one keeps serving");
            }
        }
    })
}

/// One listener's accept loop and what it serves with.
struct Listening<F> {
    live: Arc<Live>,
    conns: Arc<Connections>,
    /// The admin listener's fixed bound; `None` for the public listener, bound by
    /// `max_connections` and its share of the descriptor limit.
    max: Option<usize>,
    tls: Option<Arc<crate::listener::handshake::Handshakes>>,
    /// Until it changes to true: then the listener closes and the open connections
    /// drain.
    stop: watch::Receiver<bool>,
    /// How long the drain may take.
    grace: Duration,
    handler: F,
}

/// Accepts connections until `stop`, each served under the bounds of the config live
/// when it was accepted; then waits (up to `grace`) for the open ones to finish.
async fn accept_loop<F, Fut, S>(listener: TcpListener, on: Listening<F>) -> bool
where
    F: Fn(http::Request<hyper::body::Incoming>, Peer, Option<Arc<Share>>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = http::Response<crate::base::body::Body<S>>> + Send + 'static,
    S: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    S::Error: Into<crate::base::body::BoxError>,
{
    let Listening {
        live,
        conns,
        max,
        tls,
        mut stop,
        grace,
        handler,
    } = on;
    // The builder follows the config: made again after a reload changed it.
    let mut current: Option<(Arc<Gateway>, Limits, Arc<auto::Builder<TokioExecutor>>)> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let gateway = live.gateway.load_full();
                let server = &gateway.config.server;
                let limit = max.unwrap_or_else(|| {
                    server.max_connections.unwrap_or(live.default_max_connections)
                });
                // Refused as cheaply as it can be: closed before any buffer is made. The
                // public listener's connections count against the descriptor budget;
                // the admin listener's come out of its reserve.
                let shares = max.is_none().then_some(&gateway.descriptors);
                let Some(place) = conns.admit(limit, shares) else { continue };
                let (limits, builder) = match &current {
                    Some((g, limits, builder)) if Arc::ptr_eq(g, &gateway) => {
                        (limits.clone(), builder.clone())
                    }
                    _ => {
                        let mut limits = Limits::new(server, gateway.buffers.clone());
                        limits.upgrades = gateway.routes.iter().any(|r| r.websocket.is_some());
                        let builder = Arc::new(connection::builder(&limits));
                        current = Some((gateway.clone(), limits.clone(), builder.clone()));
                        (limits, builder)
                    }
                };
                drop(gateway);
                let _ = stream.set_nodelay(true);
                let how = connection::Serving {
                    limits,
                    builder,
                    stop: stop.clone(),
                    tls: tls.clone(),
                    handler: handler.clone(),
                };
                tokio::spawn(connection::serve(stream, Peer::new(addr), place, how));
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = conns.drained() => true,
        _ = tokio::time::sleep(grace) => {
            // WebSocket tunnels live until a side closes: they are closed now, and do
            // not count as requests cut short.
            let tunnels = conns.tunnels();
            conns.cut_tunnels();
            let cut = conns.open().saturating_sub(tunnels);
            if tunnels > 0 {
                tracing::info!(tunnels, "shutdown grace ended; closing WebSocket tunnels");
            }
            if cut > 0 {
                tracing::warn!(grace = %humantime::format_duration(grace), open = cut, "shutdown grace ran out; cutting remaining connections");
            }
            // The tunnels close both sides as they hear of it (on their own loops).
            if tunnels > 0 {
                let closing = async {
                    while conns.tunnels() > 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
            }
            cut == 0
        }
    }
}

/// A listening socket with `SO_REUSEPORT`, so each worker loop can accept on its own.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
