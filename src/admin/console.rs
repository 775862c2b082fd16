//! The console (docs/operations.md#the-console): one page, and the JSON it reads —
//! `/stats`, `/requests?kind=slow|failed`, `/requests/{request_id}`. Read-only: it
//! reads the gateway and the console's record, and changes neither.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::request::gateway::{Gateway, Live};
use crate::telemetry::access_log::timestamp;
use crate::telemetry::console::{Console, Kind, Listed};

/// The page: HTML, CSS and script in one file, nothing fetched but the JSON below.
pub const PAGE: &str = include_str!("console.html");

/// What the page shows, but the request lists.
pub fn stats(live: &Live, gw: &Gateway, console: &Console) -> Value {
    let now = Instant::now();
    let p = &live.process;
    let (reload_ok, reload_at) = p
        .last_reload
        .lock()
        .map(|l| *l)
        .unwrap_or((true, p.started_at));
    let routes: Vec<Value> = gw
        .routes
        .iter()
        .map(|r| {
            let f = r.console.as_ref().map(|w| w.figures(now));
            json!({
                "name": &*r.name,
                "requests_per_s": f.as_ref().map_or(0.0, |f| f.per_s),
                "error_pct": f.as_ref().map_or(0.0, |f| f.error_pct),
                "p50_ms": f.as_ref().and_then(|f| f.p50_ms),
                "p99_ms": f.as_ref().and_then(|f| f.p99_ms),
                "cache_hit_pct": f.as_ref().and_then(|f| f.cache_hit_pct),
                "rate_limited": r.metrics.rate_limited_count(),
                "sparkline": f.map(|f| f.sparkline).unwrap_or_default(),
            })
        })
        .collect();
    let mut upstreams = Map::new();
    for u in &gw.upstreams {
        let f = u.console.as_ref().map(|w| w.figures(now));
        let (in_flight, hedges, refused) = u.counts();
        upstreams.insert(
            u.name.to_string(),
            json!({
                // An upstream without a breaker never opens: it reads as closed.
                "breaker": u.breaker_state().map_or("closed", |s| s.as_str()),
                "hosts": (0..u.hosts.count()).map(|i| json!({
                    "host": u.hosts.label(i),
                    "state": u.hosts.state(i).as_str(),
                })).collect::<Vec<_>>(),
                "in_flight": in_flight,
                "calls_per_s": f.as_ref().map_or(0.0, |f| f.per_s),
                "error_pct": f.as_ref().map_or(0.0, |f| f.error_pct),
                "p99_ms": f.as_ref().and_then(|f| f.p99_ms),
                "hedges": hedges,
                "retry_budget_refused": refused,
            }),
        );
    }
    let mut out = json!({
        "process": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": p.started.elapsed().as_secs(),
            "fingerprint": gw.config.version(),
            "workers": p.workers,
            "connections": p.public.get().map_or(0, |c| c.open()),
            "last_reload": {
                "result": if reload_ok { "ok" } else { "error" },
                "at": timestamp(reload_at),
            },
        },
        "routes": routes,
        "upstreams": upstreams,
        "failures": console.failures(serde_json::value::Serializer).unwrap_or_default(),
    });
    if let Some(s) = &gw.redis {
        out["shared"] = json!({"redis": if s.is_up() { "up" } else { "down" }});
    }
    if !gw.validators.is_empty() {
        let jwt: Map<String, Value> = gw
            .validators
            .iter()
            .map(|v| {
                (
                    v.config.name.clone(),
                    json!({
                        "keys": v.keys_held(),
                        "refreshed_at": v.refreshed_at().map(timestamp),
                    }),
                )
            })
            .collect();
        out["auth"] = json!({ "jwt": jwt });
    }
    out
}

/// `/requests?kind=`: the kept requests of a kind, newest first; `None` for a kind
/// that is not `slow` or `failed`.
pub fn requests(console: &Console, query: Option<&str>) -> Option<Value> {
    let kind = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("kind="))
        .and_then(Kind::parse)?;
    let kept = console.requests(kind);
    let listed: Vec<Listed<'_>> = kept
        .iter()
        .map(|k| Listed {
            request_id: &k.request_id,
            at: k.at,
            route: &k.route,
            status: k.status,
            partial: k.partial,
            duration_ms: k.duration_ms,
        })
        .collect();
    Some(json!({ "requests": listed }))
}

/// `/requests/{id}`: one kept request's waterfall.
pub fn request(console: &Console, id: &str) -> Option<Value> {
    let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
    let kept = console.request(&id)?;
    serde_json::to_value(&*kept).ok()
}
