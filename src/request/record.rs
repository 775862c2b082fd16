//! A finished request in the console's record (docs/operations.md#the-console): its
//! route's figures always; its waterfall when it was slow or failed; each failed
//! backend with its cause. Nothing here runs with `[admin] console = false`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::request::gateway::{Backend, Gateway, Route};
use crate::telemetry::access_log::{AccessRecord, Report};
use crate::telemetry::console::trail::{AttemptEnd, Mark, Trail};
use crate::telemetry::console::window::Seen;
use crate::telemetry::console::{FailedBackend, Kept, KeptAttempt, KeptBackend, SPANS};
use crate::telemetry::metrics::labels::CacheResult;

/// Records a request that began at `started` and ended at `now`.
pub fn finished(gw: &Gateway, route: &Route, r: &AccessRecord, started: Instant, now: Instant) {
    let (Some(window), Some(console)) = (&route.console, &gw.console) else {
        return;
    };
    let took = now.saturating_duration_since(started);
    // The route cache's verdict; without one, its backends' caches.
    let (lookups, hits) = match r.cache {
        Some(c) => (1, u32::from(c != CacheResult::Miss)),
        None => r
            .backends
            .iter()
            .filter_map(|(_, b)| b.cache)
            .fold((0, 0), |(l, h), c| {
                (l + 1, h + u32::from(c == CacheResult::Hit))
            }),
    };
    window.record(
        now,
        Seen {
            took,
            error: r.status >= 500,
            lookups,
            hits,
            untimed: false,
        },
    );
    let slow = took > gw.config.admin.slow;
    let failed = r.status >= 500 || r.partial;
    let any_failure = r.backends.iter().any(|(_, b)| b.cause.is_some());
    if !(slow || failed || any_failure) {
        return;
    }
    let request_id: Box<str> = String::from_utf8_lossy(r.request_id.as_bytes()).into();
    let at = SystemTime::now() - took;
    for (name, report) in &r.backends {
        // A failure shared by coalesced requests is kept once, by the one that called.
        if report.coalesced {
            continue;
        }
        if let (Some(cause), Some(b)) = (&report.cause, backend(route, name)) {
            console.failure(FailedBackend {
                at: at + offset(report, started) + report.elapsed,
                request_id: request_id.clone(),
                route: route.name.clone(),
                backend: name.clone(),
                upstream: b.upstream.name.clone(),
                outcome: report.outcome,
                cause: cut(cause, MAX_CAUSE),
            });
        }
    }
    if slow || failed {
        console.keep(
            waterfall(route, r, request_id, at, took, started),
            slow,
            failed,
        );
    }
}

/// The most of a cause kept: a cause can quote what a client sent (a gRPC message's
/// unknown field name, say), and the list must stay small whatever clients send.
const MAX_CAUSE: usize = 300;

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn backend<'r>(route: &'r Route, name: &str) -> Option<&'r Backend> {
    route.backends.iter().find(|b| &*b.plan.name == name)
}

fn offset(report: &Report, started: Instant) -> Duration {
    report
        .started
        .map_or(Duration::ZERO, |s| s.saturating_duration_since(started))
}

/// The request, its backends and their attempts, at most [`SPANS`] rows.
fn waterfall(
    route: &Route,
    r: &AccessRecord,
    request_id: Box<str>,
    at: SystemTime,
    took: Duration,
    started: Instant,
) -> Kept {
    let mut rows = 0;
    let mut dropped = 0;
    let mut backends = Vec::with_capacity(r.backends.len());
    for (name, report) in &r.backends {
        let Some(b) = backend(route, name) else {
            continue;
        };
        let trail = report.trail.as_deref();
        if rows == SPANS {
            dropped += 1 + trail.map_or(usize::from(report.attempts > 0), Trail::len);
            continue;
        }
        rows += 1;
        let host = |i: usize| -> Arc<str> {
            if i < b.upstream.hosts.count() {
                Arc::from(b.upstream.hosts.label(i))
            } else {
                Arc::from("")
            }
        };
        // A call that noted no trail is its one attempt (it succeeded at once; or a
        // passthrough's, or one cut short by the route deadline).
        let single = (trail.is_none() && report.attempts > 0).then(|| {
            Mark::new(
                report.host.unwrap_or(usize::MAX),
                report.started.unwrap_or(started),
                report.elapsed,
                AttemptEnd::Done(report.outcome),
                false,
            )
        });
        let mut attempts = Vec::new();
        for m in trail.into_iter().flat_map(Trail::iter).chain(single) {
            if rows == SPANS {
                dropped += 1;
                continue;
            }
            rows += 1;
            attempts.push(KeptAttempt {
                host: host(m.host),
                start_ms: m.start.saturating_duration_since(started),
                duration_ms: m.took,
                outcome: m.end,
                hedge: m.hedge,
            });
        }
        attempts.sort_by_key(|a| a.start_ms);
        dropped += trail.map_or(0, |t| usize::from(t.more));
        backends.push(KeptBackend {
            name: name.clone(),
            upstream: b.upstream.name.clone(),
            start_ms: offset(report, started),
            duration_ms: report.elapsed,
            outcome: report.outcome,
            cache: report.cache.map(CacheResult::as_str),
            coalesced: report.coalesced,
            attempts,
        });
    }
    Kept {
        request_id,
        at,
        route: route.name.clone(),
        status: r.status,
        partial: r.partial,
        duration_ms: took,
        backends,
        spans_dropped: dropped,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_cause_is_cut_at_a_character() {
        assert_eq!(super::cut("short", 300), "short");
        let long = "é".repeat(400);
        let cut = super::cut(&long, 301);
        assert!(cut.len() <= 301 + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
