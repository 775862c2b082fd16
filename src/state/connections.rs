//! The client connections each listener holds open, across its worker loops: how many
//! (`max_connections`, the drain), which became WebSocket tunnels, and the descriptors
//! they hold. Counted here, below the request layer, because a tunnel outlives the
//! request that made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use super::descriptors::{Descriptors, Holder, Permit};
use crate::telemetry::metrics::{ConnectionMetrics, METRICS};

/// The open connections of one listener, across its worker loops.
pub struct Connections {
    open: AtomicUsize,
    metrics: ConnectionMetrics,
    /// Woken when the last connection closes (the drain waits for it).
    drained: Notify,
    /// Of `open`, the WebSocket tunnels (a connection whose upgrade went through).
    tunnels: AtomicUsize,
    /// Turned true when the drain's grace ends: every tunnel closes.
    cut: watch::Sender<bool>,
}

/// In the extensions of an HTTP/1 request that asks for an upgrade: where a tunnel
/// made of its connection is counted, and told to close, and the descriptor budget its
/// upstream side must fit in.
#[derive(Clone)]
pub struct TunnelHome {
    pub conns: Arc<Connections>,
    pub descriptors: Option<Arc<Descriptors>>,
}

/// A tunnel's place among its listener's connections (the connection it came from
/// gives its own back once hyper lets go of it), its descriptors, and its drain signal.
pub struct TunnelPlace {
    conns: Arc<Connections>,
    pub cut: watch::Receiver<bool>,
    /// The client side (taken over from its connection) and the upstream side.
    _descriptors: [Option<Permit>; 2],
}

impl Drop for TunnelPlace {
    fn drop(&mut self) {
        self.conns.tunnels.fetch_sub(1, Ordering::AcqRel);
        drop(Admitted {
            conns: self.conns.clone(),
            descriptor: None,
        });
    }
}

/// One admitted connection's place, and on the public listener its descriptor; given
/// back when dropped.
pub struct Admitted {
    conns: Arc<Connections>,
    descriptor: Option<Permit>,
}

impl Connections {
    /// `listener` labels the metrics (`public` or `admin`).
    pub fn new(listener: &'static str) -> Arc<Self> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            metrics: METRICS.connections(listener),
            drained: Notify::new(),
            tunnels: AtomicUsize::new(0),
            cut: watch::channel(false).0,
        })
    }

    /// A place for a tunnel made of an admitted connection (not refused: the
    /// connection had one), holding its two sides' descriptors.
    pub fn tunnel(self: &Arc<Self>, descriptors: [Option<Permit>; 2]) -> TunnelPlace {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.open.inc();
        self.tunnels.fetch_add(1, Ordering::AcqRel);
        TunnelPlace {
            conns: self.clone(),
            cut: self.cut.subscribe(),
            _descriptors: descriptors,
        }
    }

    /// Tunnels open now.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Acquire)
    }

    /// Closes every tunnel (the end of the drain's grace).
    pub fn cut_tunnels(&self) {
        self.cut.send_replace(true);
    }

    /// A place for a new connection, unless `max` are open already, or (with
    /// descriptor shares: the public listener) the client connections' share of the descriptor
    /// limit is in use.
    pub fn admit(
        self: &Arc<Self>,
        max: usize,
        descriptors: Option<&Arc<Descriptors>>,
    ) -> Option<Admitted> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc();
            return None;
        }
        let descriptor = match descriptors.map(|d| d.take(Holder::Connection)) {
            Some(None) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            Some(permit) => permit,
            None => None,
        };
        self.metrics.open.inc();
        Some(Admitted {
            conns: self.clone(),
            descriptor,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.metrics.open.dec();
        if self.conns.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conns.drained.notify_waiters();
        }
    }
}

impl Admitted {
    /// The listener's connection metrics.
    pub fn metrics(&self) -> &ConnectionMetrics {
        &self.conns.metrics
    }

    /// Where a tunnel made of this connection is counted.
    pub fn home(&self) -> TunnelHome {
        TunnelHome {
            conns: self.conns.clone(),
            descriptors: self.descriptor.as_ref().map(Permit::descriptors),
        }
    }
}
