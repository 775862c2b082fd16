//! Counting on the request path allocates nothing: every handle a request counts with
//! is made before it (docs/operations.md#metrics), so an update is an atomic add at an
//! array index. This binary counts the allocations of its own test thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::Method;
use manifold::base::error::Outcome;
use manifold::telemetry::metrics::METRICS;
use manifold::telemetry::metrics::labels::{
    AuthResult, CacheKind, CacheResult, CloseReason, Dropped, Hedge, RedisOp, RedisResult,
    SpanExport,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// What a request counts with: route, auth, upstream, cache, connection, Redis and
/// trace series, every label of each.
fn count_a_request_worth(
    route: &manifold::telemetry::metrics::RouteMetrics,
    auth: &manifold::telemetry::metrics::AuthMetrics,
    upstream: &manifold::telemetry::metrics::UpstreamMetrics,
    connections: &manifold::telemetry::metrics::ConnectionMetrics,
    redis: &manifold::telemetry::metrics::RedisMetrics,
) {
    route.observe(&Method::GET, 200, 0.004);
    route.observe(&Method::GET, 503, 0.2);
    route.rate_limited();
    METRICS.unmatched().observe(&Method::POST, 404, 0.0001);
    for r in AuthResult::ALL {
        auth.count(*r);
    }
    for o in Outcome::UPSTREAM {
        upstream.observe(o, 0.003);
    }
    upstream.hedge(Hedge::Won);
    upstream.hedge(Hedge::Lost);
    upstream.retry_budget_exhausted();
    for k in CacheKind::ALL {
        for r in CacheResult::ALL {
            METRICS.cache_result(*k, *r);
        }
    }
    for reason in CloseReason::ALL {
        connections.closed(*reason);
    }
    connections.open.inc();
    connections.open.dec();
    for op in RedisOp::ALL {
        for r in RedisResult::ALL {
            redis.count(*op, *r);
        }
    }
    for d in Dropped::ALL {
        redis.dropped(*d);
    }
    for s in SpanExport::ALL {
        METRICS.trace_spans(*s, 3);
    }
    METRICS.inflight.inc();
    METRICS.inflight.dec();
}

#[test]
fn counting_allocates_nothing_once_the_handles_are_made() {
    // Made when a config is compiled, a listener or Redis starts…
    let route = METRICS.route("alloc-route");
    let auth = METRICS.auth("alloc-route");
    let upstream = METRICS.upstream("alloc-upstream");
    let connections = METRICS.connections("alloc-listener");
    let redis = METRICS.redis();
    // …and a route's status codes at their first answer.
    count_a_request_worth(&route, &auth, &upstream, &connections, &redis);

    let before = allocations();
    for _ in 0..1000 {
        count_a_request_worth(&route, &auth, &upstream, &connections, &redis);
    }
    let during = allocations() - before;
    assert_eq!(
        during, 0,
        "counting 1000 requests' worth allocated {during} times"
    );

    // The counts went where the labels say.
    let text = METRICS.encode();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no series {prefix}\n{text}"))
            .to_owned()
    };
    assert!(
        line(
            r#"manifold_connections_closed_total{listener="alloc-listener",reason="alpn_mismatch"}"#
        )
        .ends_with(" 1001")
    );
    assert!(
        line(r#"manifold_auth_total{route="alloc-route",result="unavailable"}"#).ends_with(" 1001")
    );
    assert!(
        line(r#"manifold_hedges_total{upstream="alloc-upstream",result="won"}"#).ends_with(" 1001")
    );
    assert!(
        line(r#"http_server_request_duration_seconds_count{route="alloc-route",method="GET",status="503"}"#)
            .ends_with(" 1001")
    );
}

#[test]
fn the_counter_sees_allocations() {
    // So the test above can fail: an allocation on this thread is counted.
    let before = allocations();
    let v: Vec<u64> = std::hint::black_box(vec![1, 2, 3]);
    assert!(allocations() > before);
    drop(v);
}
