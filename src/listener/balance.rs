//! Keeps the public listener's connections spread evenly over the worker loops.
//!
//! Each loop accepts on its own `SO_REUSEPORT` socket, and the kernel picks the socket
//! by a hash of the connection's addresses: a few dozen long-lived connections (a
//! load balancer's, a BFF's) land unevenly, 36 on one loop and 28 on the other, and
//! stay there. Measured with 64 keep-alive connections on 2 loops: one loop did 61 %
//! of the work while the other waited, which cost throughput and p99 on every
//! request. So a loop that accepts a connection while it serves more than the least
//! loaded loop hands it over to that loop before reading a byte of it
//! (the socket leaves this loop's poller and joins the other's). Balanced loops keep
//! what they accept; nothing moves once a connection is served. This is Envoy's
//! "exact balance" of connections over workers, on by default here: a move costs one
//! channel send and re-registering one socket, only at accept time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::state::connections::Admitted;
use crate::telemetry::metrics::METRICS;

/// A connection on its way to another loop, with its place under `max_connections`
/// and its count on the loop that will serve it.
pub struct Moved {
    pub stream: std::net::TcpStream,
    pub addr: SocketAddr,
    pub place: Admitted,
    pub load: Load,
}

pub type Inbox = mpsc::UnboundedReceiver<Moved>;

pub struct Balance {
    /// Connections each loop serves (or has been handed and not yet started): what
    /// placing decides on, this server's own (the gauges below are the process's).
    open: Box<[AtomicUsize]>,
    /// `manifold_worker_connections`, per loop.
    gauges: Box<[Gauge]>,
    inboxes: Box<[mpsc::UnboundedSender<Moved>]>,
}

/// One connection counted on a loop, for as long as it is open.
pub struct Load {
    balance: Arc<Balance>,
    at: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.balance.open[self.at].fetch_sub(1, Ordering::Relaxed);
        self.balance.gauges[self.at].dec();
    }
}

impl Balance {
    /// A balance over `loops` loops, and each loop's inbox of connections handed to it.
    pub fn new(loops: usize) -> (Arc<Balance>, Vec<Inbox>) {
        let (senders, inboxes): (Vec<_>, Vec<_>) =
            (0..loops).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            open: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
            gauges: (0..loops).map(|i| METRICS.worker_connections(i)).collect(),
            inboxes: senders.into_boxed_slice(),
        };
        (Arc::new(balance), inboxes)
    }

    /// Where a connection loop `me` just accepted is served, counted there from now
    /// on (so a burst of accepts sees each placement at once and never overshoots).
    pub fn place(self: &Arc<Self>, me: usize) -> Load {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        let at = if fewest < mine { least } else { me };
        self.open[at].fetch_add(1, Ordering::Relaxed);
        self.gauges[at].inc();
        Load {
            balance: self.clone(),
            at,
        }
    }

    /// Hands a connection to the loop its `load` was placed on; gives it back if that
    /// loop is gone (shutting down).
    pub fn hand_over(&self, moved: Moved) -> Result<(), Moved> {
        let at = moved.load.at;
        self.inboxes[at].send(moved).map_err(|e| e.0)?;
        METRICS.connection_handed_over();
        Ok(())
    }

    /// Connections each loop serves.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

impl Load {
    /// The loop this connection is counted on.
    pub fn at(&self) -> usize {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_keeps_what_it_accepts_unless_another_serves_fewer() {
        let (b, _inboxes) = Balance::new(2);
        let first = b.place(0);
        assert_eq!(first.at(), 0, "1 against 0: kept");
        let second = b.place(0);
        assert_eq!(second.at(), 1, "it would serve 2 against 0: handed over");
        let third = b.place(0);
        assert_eq!(third.at(), 0, "1 against 1");
        assert_eq!(b.open(), vec![2, 1]);
        // A burst on one loop's socket ends even.
        let more: Vec<Load> = (0..61).map(|_| b.place(0)).collect();
        let open = b.open();
        assert_eq!(open.iter().sum::<usize>(), 64);
        assert!(open[0].abs_diff(open[1]) <= 1, "{open:?}");
        drop(more);
        assert_eq!(b.open(), vec![2, 1], "closed connections leave the count");
    }

    #[test]
    fn one_loop_keeps_everything() {
        let (b, _inboxes) = Balance::new(1);
        let loads: Vec<Load> = (0..5).map(|_| b.place(0)).collect();
        assert!(loads.iter().all(|l| l.at() == 0));
        assert_eq!(b.open(), vec![5]);
    }
}
