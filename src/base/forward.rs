//! What reaches an upstream (docs/configuration.md#what-reaches-an-upstream): only the listed
//! headers and query params.
//!
//! The header set is built once per client request and shared by its backend calls.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_MANIFOLD_COMPLETED: HeaderName = HeaderName::from_static("x-manifold-completed");
pub const X_MANIFOLD_CACHE: HeaderName = HeaderName::from_static("x-manifold-cache");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Forwarded always: it is what makes a POST safe to retry
/// (docs/configuration.md#resilience-order-and-state).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Revalidation and range headers. A merged route answers them itself, with its own
/// etag (docs/configuration.md#revalidation): they never reach its backends or its
/// cache keys, whatever `forward_headers` says (`"*"` leaves them out, and a route
/// compiles them out of its list). A passthrough route always forwards them.
pub const CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

pub fn is_conditional(name: &HeaderName) -> bool {
    CONDITIONAL.contains(name)
}

/// Which client headers or query params a route forwards.
#[derive(Debug, Clone, PartialEq)]
pub enum Forward<T> {
    All,
    Only(Vec<T>),
}

impl<T> Forward<T> {
    pub fn from_list(items: Vec<T>, is_star: impl Fn(&T) -> bool) -> Self {
        if items.iter().any(is_star) {
            Forward::All
        } else {
            Forward::Only(items)
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy ones proxies still see).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The header names a message's `connection` headers list (RFC 9110 §7.6.1): hop-by-hop
/// for that one connection, so never passed on. Every value counts (`connection:
/// keep-alive` then `connection: x-internal` names `x-internal`); `keep-alive` and
/// `close`, the usual tokens, name nothing beyond the standard set.
pub fn connection_named(h: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
}

/// Whether `forward_headers = ["*"]` passes this client header on.
pub fn is_forwarded_by_star(name: &HeaderName) -> bool {
    !is_gateway_owned(name)
        && !is_conditional(name)
        && name != header::CONTENT_TYPE
        && name != TRACEPARENT
        && name != TRACESTATE
        && name != header::ACCEPT
        && name != IDEMPOTENCY_KEY
}

/// Headers `forward_headers` never passes on, even with `"*"`: the gateway owns these.
pub fn is_gateway_owned(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == X_REQUEST_ID
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
}

/// The client's `x-request-id` when it is sane (1–128 visible ASCII chars), else a new one.
pub fn request_id(client: &HeaderMap) -> HeaderValue {
    if let Some(v) = client.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The headers every upstream call of this request carries (content-type excepted:
/// it is added per call, only where a body goes along).
pub fn upstream_headers(
    client: &HeaderMap,
    forward: &Forward<HeaderName>,
    request_id: &HeaderValue,
    peer: &Peer,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(8);
    for name in [&TRACEPARENT, &TRACESTATE, &header::ACCEPT, &IDEMPOTENCY_KEY] {
        if let Some(v) = client.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    out.insert(X_REQUEST_ID, request_id.clone());
    out.insert(X_FORWARDED_FOR, forwarded_for(client, peer));
    let proto = if peer.tls { "https" } else { "http" };
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // Usually empty: no `connection` header, or only `keep-alive` / `close`.
    let named: Vec<HeaderName> = connection_named(client).collect();
    match forward {
        Forward::All => {
            for (name, value) in client {
                // Every value of a repeated header goes along; the ones copied above
                // (and content-type, added per call) are not doubled.
                if is_forwarded_by_star(name) && !named.contains(name) {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        Forward::Only(names) => {
            for name in names {
                // `accept` and the trace headers are already in; listing them adds nothing.
                if out.contains_key(name) || named.contains(name) {
                    continue;
                }
                for v in client.get_all(name) {
                    out.append(name.clone(), v.clone());
                }
            }
        }
    }
    for name in &named {
        // The client's headers copied first too (`connection: accept` drops `accept`);
        // never the gateway's own (`x-forwarded-for` stays).
        if !is_gateway_owned(name) {
            out.remove(name);
        }
    }
    out
}

/// The client's `x-forwarded-for` chain with the peer address appended.
fn forwarded_for(client: &HeaderMap, peer: &Peer) -> HeaderValue {
    let chain: Vec<&str> = client
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if chain.is_empty() {
        return peer.ip_header.clone();
    }
    let value = format!("{}, {}", chain.join(", "), peer.addr.ip().to_canonical());
    HeaderValue::from_str(&value).unwrap_or_else(|_| peer.ip_header.clone())
}

/// The client end of a connection, with its address already formatted as a header
/// value (once per connection, not per request).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
    /// The connection is TLS (upstreams see `x-forwarded-proto: https`).
    pub tls: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        // ::ffff:a.b.c.d (an IPv4 client on a dual-stack listener) is written as a.b.c.d.
        let ip_header = HeaderValue::from_str(&addr.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip_header,
            tls: false,
        }
    }
}

/// The part of the client's query string a route forwards, still percent-encoded.
pub fn forwarded_query<'q>(
    query: Option<&'q str>,
    forward: &Forward<String>,
) -> Option<std::borrow::Cow<'q, str>> {
    let query = query.filter(|q| !q.is_empty())?;
    match forward {
        Forward::All => Some(query.into()),
        Forward::Only(names) if names.is_empty() => None,
        Forward::Only(names) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or("");
                    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
                    names.iter().any(|n| *n == key)
                })
                .collect();
            (!kept.is_empty()).then(|| kept.join("&").into())
        }
    }
}

/// A JSON `content-type`: `application/json` or `application/*+json`, any parameters
/// after (what a `body` schema takes, and what `pass_errors` passes on).
pub fn is_json(ct: &HeaderValue) -> bool {
    let Ok(text) = ct.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// The request's declared body length, if it declares a valid one.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
            "application/vnd.api+json ;x=1",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/json",
            "application/jsonx",
            "application/+json",
            "text/plain",
            "json",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn query_filter_keeps_listed_params_only() {
        let only = Forward::Only(vec!["lang".to_string()]);
        assert_eq!(
            forwarded_query(Some("lang=de&secret=1&lang=fr"), &only).as_deref(),
            Some("lang=de&lang=fr")
        );
        assert_eq!(forwarded_query(Some("secret=1"), &only), None);
        assert_eq!(
            forwarded_query(Some("a=1"), &Forward::All).as_deref(),
            Some("a=1")
        );
        assert_eq!(forwarded_query(Some("a=1"), &Forward::Only(vec![])), None);
    }

    #[test]
    fn headers_the_clients_connection_header_names_are_never_forwarded() {
        let mut client = HeaderMap::new();
        client.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, authorization"),
        );
        client.append(
            header::CONNECTION,
            HeaderValue::from_static("X-Trace-Me, x-forwarded-for"),
        );
        client.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        client.insert("x-trace-me", HeaderValue::from_static("1"));
        client.insert("x-kept", HeaderValue::from_static("1"));
        let peer = Peer::new("192.0.2.1:1000".parse().unwrap());
        let id = HeaderValue::from_static("id");
        for forward in [
            Forward::All,
            Forward::Only(vec![
                header::AUTHORIZATION,
                HeaderName::from_static("x-trace-me"),
                HeaderName::from_static("x-kept"),
            ]),
        ] {
            let out = upstream_headers(&client, &forward, &id, &peer);
            assert!(!out.contains_key(header::AUTHORIZATION), "{forward:?}");
            assert!(!out.contains_key("x-trace-me"), "{forward:?}");
            assert!(!out.contains_key(header::CONNECTION), "{forward:?}");
            assert_eq!(out["x-kept"], "1", "{forward:?}");
            assert_eq!(out[X_FORWARDED_FOR], "192.0.2.1", "the gateway's own stays");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, an upstream gets only the gateway's own headers,
        /// the client's accept/trace/idempotency headers and the listed ones — never a
        /// hop-by-hop header or one the client's `connection` names.
        #[test]
        fn only_listed_headers_reach_an_upstream(
            sent in proptest::collection::vec(("[a-z][a-z-]{0,8}", "[ -~]{0,12}"), 0..12),
            listed in proptest::collection::vec("[a-z][a-z-]{0,8}", 0..4),
            connection in proptest::collection::vec("[a-z][a-z-]{0,8}", 0..3),
            star in proptest::bool::ANY,
        ) {
            let mut client = HeaderMap::new();
            for (name, value) in &sent {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                    client.append(n, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&connection.join(", ")) {
                client.insert(header::CONNECTION, v);
            }
            let forward = if star {
                Forward::All
            } else {
                Forward::Only(
                    listed
                        .iter()
                        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                        .filter(|n| !is_gateway_owned(n))
                        .collect(),
                )
            };
            let peer = Peer::new("192.0.2.1:1000".parse().unwrap());
            let out = upstream_headers(&client, &forward, &HeaderValue::from_static("id"), &peer);
            let named: Vec<HeaderName> = connection_named(&client).collect();
            for name in out.keys() {
                let own = [X_REQUEST_ID, X_FORWARDED_FOR, X_FORWARDED_PROTO];
                if own.contains(name) {
                    continue;
                }
                proptest::prop_assert!(!is_hop_by_hop(name), "{}", name);
                proptest::prop_assert!(!named.contains(name), "{}", name);
                let always = [TRACEPARENT, TRACESTATE, header::ACCEPT, IDEMPOTENCY_KEY];
                let allowed = always.contains(name)
                    || match &forward {
                        Forward::All => true,
                        Forward::Only(list) => list.contains(name),
                    };
                proptest::prop_assert!(allowed, "{} was not listed", name);
                proptest::prop_assert!(client.contains_key(name), "{} came from nowhere", name);
            }
        }
    }

    #[test]
    fn request_id_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
