//! Idempotency keys (docs/configuration.md#idempotency-keys): a request with
//! `idempotency-key` on a route with `idempotency` is looked up by (route, identity,
//! key) after the rate limit, the token and validation. The first goes on, its key
//! marked in flight; a second while it runs gets 409; once the first's answer is final
//! and kept, the same request gets that answer again (`idempotent-replayed: true`) and
//! reaches no upstream; the same key with another request is 422.
//!
//! The key, the identity and the route are hashed (SHA-256) into the store's key: a
//! forwarded `authorization` never sits readable in Redis, and two identities' keys
//! never meet.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use prometheus_client::metrics::counter::Counter;

use crate::base::body::Body;
use crate::base::error::{GatewayError, IdempotencyRefusal};
use crate::base::forward::IDEMPOTENCY_KEY;
use crate::config::idempotency::IdempotencyConfig;
use crate::state::idempotency::{Found, Kept, Mark, Store};
use crate::telemetry::metrics::METRICS;
use crate::telemetry::metrics::labels::IdempotencyResult;

pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_KEY: usize = 255;

/// The headers a kept answer keeps besides its status and body.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::CACHE_CONTROL];

/// A route's compiled `idempotency`.
pub struct Idempotency {
    pub config: IdempotencyConfig,
    route: Arc<str>,
    /// `manifold_idempotency_total{route,result}`, by [`IdempotencyResult`].
    counters: Vec<Counter>,
}

/// What the lookup decided.
pub enum Begun {
    /// Go on; with a key, this request holds it in flight until its answer is settled.
    Proceed(Option<Held>),
    /// The kept answer of an earlier request.
    Replay(Arc<Kept>),
}

/// A key this request holds: settled with its answer, or freed when dropped.
pub struct Held {
    mark: Option<Mark>,
    /// Counted `not_stored` unless settled otherwise.
    not_stored: Option<Counter>,
}

impl Held {
    /// Frees the key now (counted `not_stored` unless counted otherwise already).
    async fn free(&mut self) {
        if let Some(mark) = self.mark.take() {
            mark.free().await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(c) = self.not_stored.take() {
            c.inc();
        }
    }
}

/// What the request is, for its fingerprint.
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: Option<&'a Bytes>,
}

impl Idempotency {
    pub fn new(route: &str, config: &IdempotencyConfig) -> Idempotency {
        Idempotency {
            config: config.clone(),
            route: Arc::from(route),
            counters: METRICS.idempotency(route),
        }
    }

    fn count(&self, r: IdempotencyResult) -> IdempotencyResult {
        self.counters[r as usize].inc();
        r
    }

    /// The lookup. `identity`: the token's `sub` on a route with `auth`, else the
    /// forwarded headers' values (as cache keys are made); `deadline`: the route's, how
    /// long the in-flight mark may stand. The result for the access line goes in `noted`.
    pub async fn begin(
        &self,
        store: &Arc<Store>,
        headers: &HeaderMap,
        identity: &str,
        request: Request<'_>,
        deadline: std::time::Duration,
        noted: &mut Option<IdempotencyResult>,
    ) -> Result<Begun, GatewayError> {
        let mut keys = headers.get_all(IDEMPOTENCY_KEY).iter();
        let key = match (keys.next(), keys.next()) {
            (None, _) if self.config.required => {
                *noted = Some(self.count(IdempotencyResult::Missing));
                return Err(GatewayError::Idempotency(IdempotencyRefusal::Missing));
            }
            (None, _) => return Ok(Begun::Proceed(None)),
            (Some(k), None) if is_key(k) => k,
            _ => {
                *noted = Some(self.count(IdempotencyResult::Invalid));
                return Err(GatewayError::Idempotency(IdempotencyRefusal::Invalid));
            }
        };
        let fingerprint = fingerprint(&request);
        let (found, mark) = store
            .begin(self.store_key(identity, key), fingerprint, deadline)
            .await;
        match (found, mark) {
            (Found::First, Some(mark)) => Ok(Begun::Proceed(Some(Held {
                mark: Some(mark),
                not_stored: Some(self.counters[IdempotencyResult::NotStored as usize].clone()),
            }))),
            // The store could not be asked (poisoned): the request goes on unmarked.
            (Found::First, None) => Ok(Begun::Proceed(None)),
            (Found::InFlight { same: true }, _) => {
                *noted = Some(self.count(IdempotencyResult::InProgress));
                Err(GatewayError::Idempotency(IdempotencyRefusal::InProgress))
            }
            (Found::InFlight { same: false } | Found::Done { same: false, .. }, _) => {
                *noted = Some(self.count(IdempotencyResult::Reused));
                Err(GatewayError::Idempotency(IdempotencyRefusal::Reused))
            }
            (Found::Done { same: true, kept }, _) => {
                *noted = Some(self.count(IdempotencyResult::Replayed));
                Ok(Begun::Replay(kept))
            }
        }
    }

    /// The route, the identity and the key, hashed: what the store keeps them under.
    fn store_key(&self, identity: &str, key: &HeaderValue) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [self.route.as_bytes(), identity.as_bytes(), key.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let digest = ctx.finish();
        let mut out = String::with_capacity(64);
        for b in digest.as_ref() {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The request's answer decides its key: kept when final (2xx, or 4xx but 408, 409,
    /// 425 and 429; complete; held whole and no larger than the store's bound), else
    /// freed. The result is for the access line.
    pub async fn settle<S>(
        &self,
        mut held: Held,
        response: &http::Response<Body<S>>,
        max_entry: u64,
    ) -> IdempotencyResult {
        let status = response.status();
        let final_status = status.is_success()
            || (status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429));
        let partial = response
            .headers()
            .get(crate::base::forward::X_MANIFOLD_COMPLETED)
            .is_some_and(|v| v == "false");
        let Body::Full(body) = response.body() else {
            // A streamed answer is not held whole: nothing to keep.
            held.free().await;
            return IdempotencyResult::NotStored;
        };
        if !final_status || partial {
            held.free().await;
            return IdempotencyResult::NotStored;
        }
        let body = body.clone().unwrap_or_default();
        held.not_stored = None;
        let headers: Vec<(HeaderName, HeaderValue)> = KEPT_HEADERS
            .iter()
            .filter_map(|n| response.headers().get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        // The whole entry (its status, headers and a few bytes of framing too) must
        // fit: one a replica would not read back would hold the key until its ttl.
        let framing = 64
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 3)
                .sum::<usize>();
        if (body.len() + framing) as u64 > max_entry {
            held.free().await;
            return self.count(IdempotencyResult::TooLarge);
        }
        if let Some(mark) = held.mark.take() {
            mark.keep(
                Kept {
                    status,
                    headers,
                    body,
                },
                self.config.ttl,
            )
            .await;
        }
        self.count(IdempotencyResult::Stored)
    }
}

/// A kept answer sent again: its status, body and kept headers, this request's own
/// `x-request-id`, and `idempotent-replayed: true`.
pub fn replay<S>(kept: &Kept, request_id: &HeaderValue) -> http::Response<Body<S>> {
    let mut resp = http::Response::new(Body::from(kept.body.clone()));
    *resp.status_mut() = kept.status;
    let h = resp.headers_mut();
    for (n, v) in &kept.headers {
        h.insert(n.clone(), v.clone());
    }
    h.insert(crate::base::forward::X_REQUEST_ID, request_id.clone());
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// 1 to 255 visible ASCII characters.
fn is_key(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_KEY && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// The method, path, query and body, hashed (xxh3-128; only the same identity's same
/// key is ever compared, so collisions are that client's own).
fn fingerprint(r: &Request<'_>) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        r.method.as_str().as_bytes(),
        r.path.as_bytes(),
        r.query.unwrap_or("").as_bytes(),
        r.body.map_or(&[][..], |b| &b[..]),
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.digest128()
}
