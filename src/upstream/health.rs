//! Active health checks (docs/configuration.md#health_check): one prober per upstream and
//! replica, on the loop that built the gateway (not one per worker), probing every host with
//! `GET path` each `interval` (or, with `grpc = true`, `grpc.health.v1.Health/Check`:
//! SERVING is healthy).
//!
//! A probe goes on a connection of its own, opened for it and closed after it: it
//! carries nothing of any client's (no forwarded header, no trace context), and it
//! checks what a new call would meet (connect, TLS, answer) rather than an old
//! connection that happens to be open. At one probe per host per `interval` the
//! handshakes cost nothing worth keeping connections for.

use std::sync::{Arc, Weak};

use http::{HeaderValue, Method, Request, header};

use super::grpc;
use super::hosts::Hosts;
use super::pool::Pool;
use crate::base::body::RequestBody;
use crate::config::HealthCheckConfig;

const USER_AGENT: &str = "manifold-health-check";
/// The most of a probe's answer read.
const MAX_READ: usize = 64 * 1024;

/// Starts the prober; it ends once the upstream is dropped (a reload that replaced it).
pub(super) fn spawn(hosts: Weak<Hosts>, pool: Arc<Pool>, check: HealthCheckConfig) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let n = pool.bases().len();
        // Probes in a row that passed (> 0) or failed (< 0), per host.
        let mut streak = vec![0i64; n];
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if hosts.strong_count() == 0 {
                return;
            }
            let results =
                futures_util::future::join_all((0..n).map(|i| probe(&pool, i, &check))).await;
            let Some(hosts) = hosts.upgrade() else { return };
            for (i, result) in results.into_iter().enumerate() {
                let s = &mut streak[i];
                match result {
                    Ok(()) => *s = if *s > 0 { *s + 1 } else { 1 },
                    // No descriptor for it: the host was not asked, so it is judged
                    // neither way.
                    Err(None) => continue,
                    Err(Some(cause)) => {
                        *s = if *s < 0 { *s - 1 } else { -1 };
                        tracing::debug!(upstream = hosts.upstream(), host = hosts.label(i), %cause, "health probe failed");
                        if -*s == i64::from(check.unhealthy) {
                            tracing::warn!(
                                upstream = hosts.upstream(),
                                host = hosts.label(i),
                                %cause,
                                probes = check.unhealthy,
                                "health probes failing"
                            );
                        }
                    }
                }
                if *s <= -i64::from(check.unhealthy) {
                    hosts.set_healthy(i, false);
                } else if *s >= i64::from(check.healthy) {
                    hosts.set_healthy(i, true);
                }
            }
        }
    });
}

/// One probe of host `i`: a 2xx within `timeout`, or why not (`None`: no probe was
/// made, the descriptor budget had no room for its connection).
async fn probe(
    pool: &Arc<Pool>,
    i: usize,
    check: &HealthCheckConfig,
) -> Result<(), Option<String>> {
    let Some(uri) = pool.bases()[i].target(check.path.clone()) else {
        return Err(Some("the path is not a valid request target".into()));
    };
    let mut req = Request::new(RequestBody::Full(None));
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    if let Some(service) = &check.grpc {
        // grpc.health.v1.Health/Check, asking about `service`.
        *req.method_mut() = Method::POST;
        let h = req.headers_mut();
        h.insert(header::CONTENT_TYPE, grpc::CONTENT_TYPE);
        h.insert(header::TE, grpc::TE);
        h.insert(grpc::GRPC_TIMEOUT, grpc::timeout(check.timeout));
        *req.body_mut() = RequestBody::Full(Some(grpc::health_request(service)));
    } else {
        *req.method_mut() = Method::GET;
    }
    let call = async {
        let resp = pool
            .send_once(i, req)
            .await
            .map_err(|e| (!crate::state::descriptors::is_exhausted(&*e)).then(|| e.to_string()))?;
        let (head, mut body) = resp.into_parts();
        // Read (at most 64 KiB of it, within the timeout) so the upstream sees the
        // answer taken; the connection closes after it either way. A gRPC answer's
        // message and trailers are what it says.
        let mut read = Vec::new();
        let mut trailers = None;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            match frame.into_data() {
                Ok(d) if read.len() + d.len() <= MAX_READ => read.extend_from_slice(&d),
                Ok(_) => break,
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        if !head.status.is_success() {
            return Err(Some(format!("status {}", head.status.as_u16())));
        }
        match &check.grpc {
            Some(_) => grpc::health_serving(&head.headers, trailers.as_ref(), &read).map_err(Some),
            None => Ok(()),
        }
    };
    match tokio::time::timeout(check.timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(Some(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        ))),
    }
}
