//! A request matched and checked, on its way upstream: what each kind of route (fan-out,
//! pass-through, tunnel) sends, made once by the handler, in one value with where the
//! request's trail is written (its access line and span).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header, request::Parts};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::body::ClientFault;
use crate::base::error::GatewayError;
use crate::request::gateway::Route;
use crate::state::buffers::Share;
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::trace::Span;

pub struct Outbound<'a> {
    pub route: &'a Route,
    /// The client's request head.
    pub parts: &'a Parts,
    /// What every upstream call carries: the forwarded headers, the request id, the
    /// proxy headers and the token's claims (docs/configuration.md#what-reaches-an-upstream).
    pub headers: HeaderMap,
    /// The forwarded part of the client's query.
    pub query: Option<Cow<'a, str>>,
    /// The path parameters, decoded, then the claims the backends' paths read.
    pub params: Vec<String>,
    /// The token's claims that reach upstreams, as a cache-key part (empty without
    /// `auth`).
    pub identity: String,
    /// When the answer must be in: the route deadline, from the request's arrival.
    pub deadline: Instant,
    /// On h2, the connection's part of `buffer_capacity`.
    pub share: Option<&'a Arc<Share>>,
    /// The request holds an idempotency key: a passthrough answer of a declared length
    /// up to this is read whole, so it can be kept (docs/configuration.md#idempotency-keys).
    pub keep_whole: Option<u64>,
    pub record: &'a mut AccessRecord,
    /// The server span: each backend's span goes under it.
    pub span: &'a mut Span,
}

impl Outbound<'_> {
    pub fn request_id(&self) -> &HeaderValue {
        &self.record.request_id
    }

    /// The forwarded query, borrowed.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

/// The client's body: still arriving, or read whole already (a route whose `validate`
/// checks it).
pub enum Inbound {
    Arriving(Incoming),
    Read(Option<(Bytes, HeaderValue)>),
}

/// Percent-decodes path parameters and refuses `.`, `..`, control characters and bad UTF-8.
pub fn decode_params<'a>(
    raw: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<String>, GatewayError> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let bad = |reason| GatewayError::BadParameter {
            name: name.to_string(),
            reason,
        };
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| bad("is not valid UTF-8"))?;
        if decoded == "." || decoded == ".." {
            return Err(bad("may not be `.` or `..`"));
        }
        if decoded.chars().any(char::is_control) {
            return Err(bad("holds a control character"));
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

/// The client's body, with its content-type, for backends that carry it; 413 past the limit.
pub async fn read_body(
    h: &HeaderMap,
    body: Incoming,
    limit: u64,
) -> Result<Option<(Bytes, HeaderValue)>, GatewayError> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let collected = Limited::new(body, limit_usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::PayloadTooLarge { limit }
            } else {
                // Malformed chunked encoding, or the client gave up mid-body.
                let fault = e
                    .downcast_ref::<hyper::Error>()
                    .map_or(ClientFault::Malformed, ClientFault::of);
                GatewayError::client(fault, limit)
            }
        })?
        .to_bytes();
    if collected.is_empty() {
        return Ok(None);
    }
    let content_type = h
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(Some((collected, content_type)))
}
