//! The process's file descriptors, shared out between their holders (docs/operations.md,
//! "Descriptor shares").
//!
//! Every socket and file is a descriptor, and past the limit (`RLIMIT_NOFILE`) nothing
//! opens: not the admin listener's next scrape, not an upstream connection, not the
//! config file a reload reads. So what clients can make the gateway open is counted
//! here, each against a ceiling that leaves the rest working:
//!
//! - **Reserve** (never counted, never handed out): what was open when the gateway was
//!   built (event loops, log pipes), each worker's listener and Redis connection, and
//!   a fixed margin for the admin listener, JWKS fetches, the trace exporter, file
//!   watches and reads, and the socket an `accept` takes before a refused connection
//!   is closed.
//! - **Upstream** connections (pooled calls, health probes) may use everything else.
//! - **Client-facing** descriptors — client connections, and the upstream side of each
//!   WebSocket tunnel (a tunnel holds two) — stop an eighth short of that, so calls to
//!   upstreams always have room.
//! - **Tunnels** may hold at most three quarters of the client-facing share, so a
//!   flood of idle tunnels leaves room for plain requests.
//!
//! Past a ceiling a new client connection is closed at accept, a tunnel is refused
//! with 503 `OVERLOADED`, and an upstream call that needs a new connection fails with
//! `OVERLOADED` — each counted in `manifold_descriptors_refused_total{holder}`. A
//! permit is taken once per connection (never per request) and given back when the
//! connection closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::telemetry::metrics::{DescriptorMetrics, METRICS};

/// Who holds a counted descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A client connection on the public listener (a tunnel's client side too).
    Connection,
    /// The upstream side of a WebSocket tunnel.
    Tunnel,
    /// A connection to an upstream: pooled for calls, or a health probe's.
    Upstream,
}

impl Holder {
    pub const ALL: [Holder; 3] = [Holder::Connection, Holder::Tunnel, Holder::Upstream];

    pub fn as_str(self) -> &'static str {
        match self {
            Holder::Connection => "connection",
            Holder::Tunnel => "tunnel",
            Holder::Upstream => "upstream",
        }
    }
}

/// Descriptors never handed out beyond what was open at start: admin connections
/// ([`ADMIN_CONNECTIONS`]), Redis, JWKS, the exporter, watches and file reads.
const MARGIN: usize = 64;
/// Opened per worker loop after the shares are made: its listener and its Redis
/// connection.
const PER_WORKER: usize = 2;

/// Admin connections open at once: probes and scrapes need few, and they come out of
/// the reserve, so the admin listener answers while the public one is saturated.
pub const ADMIN_CONNECTIONS: usize = 32;

/// The descriptor shares of one running gateway.
pub struct Descriptors {
    /// `RLIMIT_NOFILE` when serving began.
    limit: usize,
    /// Counted descriptors may be at most this many (the limit less the reserve).
    counted: usize,
    /// Client-facing ones at most this many.
    facing: usize,
    /// Tunnels at most this many.
    tunnels: usize,
    in_use: AtomicUsize,
    facing_in_use: AtomicUsize,
    tunnels_in_use: AtomicUsize,
    metrics: DescriptorMetrics,
}

/// One counted descriptor; given back when dropped.
pub struct Permit {
    descriptors: Arc<Descriptors>,
    holder: Holder,
}

/// An upstream connection could not be opened: its share has no descriptor for it.
#[derive(Debug)]
pub struct Exhausted;

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no file descriptor left for a new upstream connection")
    }
}

impl std::error::Error for Exhausted {}

/// The error, or one of its sources, is [`Exhausted`].
pub fn is_exhausted(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<Exhausted>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl Descriptors {
    /// The shares of `limit` descriptors, `reserve` of which are never handed out.
    pub fn new(limit: usize, reserve: usize) -> Arc<Self> {
        let counted = limit.saturating_sub(reserve);
        let facing = counted - (counted / 8).max(8).min(counted);
        let tunnels = facing / 8 * 3 + facing % 8 * 3 / 8;
        let metrics = METRICS.descriptors(Holder::ALL.map(Holder::as_str));
        for (holder, ceiling) in [
            (Holder::Connection, facing),
            (Holder::Tunnel, tunnels),
            (Holder::Upstream, counted),
        ] {
            metrics.max[holder as usize].set(i64::try_from(ceiling).unwrap_or(i64::MAX));
        }
        Arc::new(Descriptors {
            limit,
            counted,
            facing,
            tunnels,
            in_use: AtomicUsize::new(0),
            facing_in_use: AtomicUsize::new(0),
            tunnels_in_use: AtomicUsize::new(0),
            metrics,
        })
    }

    /// The shares of this process: its soft `RLIMIT_NOFILE`, less what is open now
    /// (at most a quarter of it) and what `workers` loops and the rest will open.
    pub fn of_process(workers: usize) -> Arc<Self> {
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
        let reserve = open.min(limit / 4) + MARGIN + ADMIN_CONNECTIONS + PER_WORKER * workers;
        Self::new(limit, reserve)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A descriptor for `holder`, unless its ceiling is reached (counted as refused).
    pub fn take(self: &Arc<Self>, holder: Holder) -> Option<Permit> {
        let mut taken: [Option<&AtomicUsize>; 3] = [None; 3];
        let checks: [(&AtomicUsize, usize); 3] = [
            (&self.in_use, self.counted),
            (&self.facing_in_use, self.facing),
            (&self.tunnels_in_use, self.tunnels),
        ];
        let wanted = match holder {
            Holder::Upstream => 1,
            Holder::Connection => 2,
            Holder::Tunnel => 3,
        };
        for (i, (count, ceiling)) in checks.iter().take(wanted).enumerate() {
            if count.fetch_add(1, Ordering::AcqRel) >= *ceiling {
                count.fetch_sub(1, Ordering::AcqRel);
                for c in taken.iter().flatten() {
                    c.fetch_sub(1, Ordering::AcqRel);
                }
                self.metrics.refused[holder as usize].inc();
                return None;
            }
            taken[i] = Some(count);
        }
        self.metrics.open[holder as usize].inc();
        Some(Permit {
            descriptors: self.clone(),
            holder,
        })
    }

    /// A descriptor for `holder` whatever the ceiling: one already open that changes
    /// hands (a connection becoming a tunnel's client side).
    pub fn take_open(self: &Arc<Self>, holder: Holder) -> Permit {
        self.in_use.fetch_add(1, Ordering::AcqRel);
        if holder != Holder::Upstream {
            self.facing_in_use.fetch_add(1, Ordering::AcqRel);
        }
        if holder == Holder::Tunnel {
            self.tunnels_in_use.fetch_add(1, Ordering::AcqRel);
        }
        self.metrics.open[holder as usize].inc();
        Permit {
            descriptors: self.clone(),
            holder,
        }
    }
}

impl Permit {
    /// The shares it was taken from.
    pub fn descriptors(&self) -> Arc<Descriptors> {
        self.descriptors.clone()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let b = &self.descriptors;
        b.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.holder != Holder::Upstream {
            b.facing_in_use.fetch_sub(1, Ordering::AcqRel);
        }
        if self.holder == Holder::Tunnel {
            b.tunnels_in_use.fetch_sub(1, Ordering::AcqRel);
        }
        b.metrics.open[self.holder as usize].dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_holder_stops_at_its_ceiling_and_leaves_room_for_the_next() {
        // 512 descriptors, 116 reserved: 396 counted, 347 for clients, 130 tunnels.
        let d = Descriptors::new(512, 116);
        assert_eq!((d.counted, d.facing, d.tunnels), (396, 347, 130));
        let tunnels: Vec<Permit> = std::iter::from_fn(|| d.take(Holder::Tunnel)).collect();
        assert_eq!(tunnels.len(), 130);
        let clients: Vec<Permit> = std::iter::from_fn(|| d.take(Holder::Connection)).collect();
        assert_eq!(clients.len(), 347 - 130, "plain clients keep their room");
        let upstream: Vec<Permit> = std::iter::from_fn(|| d.take(Holder::Upstream)).collect();
        assert_eq!(upstream.len(), 396 - 347, "upstream calls keep theirs");
        assert!(d.take(Holder::Upstream).is_none());
        drop(tunnels);
        assert!(d.take(Holder::Tunnel).is_some());
        drop((clients, upstream));
        assert_eq!(d.in_use.load(Ordering::Acquire), 0);
        assert_eq!(d.facing_in_use.load(Ordering::Acquire), 0);
        // A tiny limit hands out nothing rather than overflowing.
        let none = Descriptors::new(50, 108);
        assert!(none.take(Holder::Connection).is_none());
        assert!(none.take(Holder::Upstream).is_none());
    }
}
