//! What an answer becomes on the wire (docs/configuration.md#answers-on-the-wire): the
//! handler's last step, after the answer is made and before its CORS headers.
//!
//! - answers manifold writes (merged, errors, preflights, 304s) get
//!   `x-content-type-options: nosniff`; with TLS every answer gets HSTS (a passthrough
//!   upstream's own wins);
//! - a complete merged 200 gets the route's `cache-control` (else `private,
//!   no-cache`) and, on GET and HEAD, a weak `etag` of its bytes; a matching
//!   `if-none-match` turns it into a 304. A partial one gets `no-store`;
//! - then the body is compressed with the coding the client prefers, whole when it is
//!   buffered, frame by frame when it streams, and `vary: accept-encoding` is said on
//!   every answer whose type could have been compressed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, STRICT_TRANSPORT_SECURITY, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::base::body::{Body, BoxError};
use crate::base::coding::{self, Encoder};
use crate::base::forward::{X_MANIFOLD_COMPLETED, X_REQUEST_ID};
use crate::config::Compression;
use crate::telemetry::access_log::{AccessRecord, Deferred};
use crate::telemetry::metrics::{METRICS, WireMetrics};
use crate::upstream::Streamed;

/// A route's answers on the wire, compiled with the route (and one for the answers
/// no route matched: the server's compression and HSTS).
pub struct Wire {
    /// `None`: compression off for this route.
    pub compression: Option<Arc<Compression>>,
    /// On complete merged 200s: the route's `cache_control`, else `private, no-cache`.
    pub cache_control: HeaderValue,
    /// `strict-transport-security`'s value, sent on TLS connections (`None`:
    /// `hsts = false`). Decided by the connection, not the config: `tls` takes effect
    /// at restart, a reload could say otherwise meanwhile.
    pub hsts: Option<HeaderValue>,
    pub metrics: WireMetrics,
}

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");

/// What the request asked of its answer, read from its head before the handler's steps
/// take it apart. Nothing is copied when the headers are absent.
#[derive(Default)]
pub struct Asked {
    accept_encoding: Option<HeaderValue>,
    /// Only for GET and HEAD, the methods revalidated.
    if_none_match: Option<HeaderValue>,
    /// GET or HEAD: a complete merged answer gets an etag.
    revalidated: bool,
    head: bool,
    /// The connection is TLS: HSTS is said only there.
    tls: bool,
}

impl Asked {
    pub fn of(method: &Method, headers: &HeaderMap, tls: bool) -> Asked {
        let revalidated = *method == Method::GET || *method == Method::HEAD;
        Asked {
            accept_encoding: joined(headers, http::header::ACCEPT_ENCODING),
            if_none_match: if revalidated {
                joined(headers, IF_NONE_MATCH)
            } else {
                None
            },
            revalidated,
            head: *method == Method::HEAD,
            tls,
        }
    }
}

/// A header's lines as one value (RFC 9110 §5.3): a list split over several lines
/// means the same as one line.
fn joined(headers: &HeaderMap, name: http::HeaderName) -> Option<HeaderValue> {
    // Absent on most requests: one lookup, nothing else.
    headers.get(&name)?;
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    let Some(second) = all.next() else {
        return Some(first.clone());
    };
    let mut v = first.as_bytes().to_vec();
    for more in std::iter::once(second).chain(all) {
        v.extend_from_slice(b", ");
        v.extend_from_slice(more.as_bytes());
    }
    HeaderValue::from_bytes(&v).ok()
}

/// Who made the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    /// A merged route's answer (or its route-cache failure).
    Merged,
    /// An error, a preflight: manifold's own, never a merged answer.
    Own,
    /// A passthrough upstream's, streamed (or a tunnel's 101).
    Upstream,
}

/// A client answer's streamed body: the upstream's as it came, or compressed as it
/// comes.
pub enum Outgoing {
    Plain(Streamed),
    Encoded(Box<Encoding>),
    /// A stream of no declared length, counted: its access line is written at its end.
    Counted(Box<Counted>),
}

/// A stream whose bytes the access line reports (docs/operations.md#the-access-log).
pub struct Counted {
    inner: Outgoing,
    sent: u64,
    line: Option<Arc<Deferred>>,
}

impl Counted {
    pub fn new(inner: Outgoing, line: Arc<Deferred>) -> Self {
        Counted {
            inner,
            sent: 0,
            line: Some(line),
        }
    }

    fn end(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.sent);
        }
    }
}

/// The client left, or hyper let the stream go: the line says what was sent.
impl Drop for Counted {
    fn drop(&mut self) {
        self.end();
    }
}

pub type Answer = Response<Body<Outgoing>>;

/// The answer as it goes on the wire. See the module's note for what is done.
pub fn finish(
    wire: &Wire,
    asked: &Asked,
    made: Made,
    mut response: Answer,
    record: &mut AccessRecord,
) -> Answer {
    let status = response.status();
    let headers = response.headers_mut();
    if made != Made::Upstream {
        headers.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    }
    if asked.tls
        && let Some(hsts) = &wire.hsts
        && (made != Made::Upstream || !headers.contains_key(STRICT_TRANSPORT_SECURITY))
    {
        headers.insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    // A 304 says what the 200 would have (RFC 9110 §15.4.5): its type is not sent,
    // so a route that compresses says `vary` on every 304.
    let qualifies = wire.compression.is_some()
        && (status == StatusCode::NOT_MODIFIED || compressible_type(response.headers()));
    if made == Made::Merged && status == StatusCode::OK {
        let complete = response
            .headers()
            .get(X_MANIFOLD_COMPLETED)
            .is_some_and(|v| v == "true");
        if !complete {
            response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
        } else {
            response
                .headers_mut()
                .insert(CACHE_CONTROL, wire.cache_control.clone());
            if asked.revalidated
                && let Body::Full(bytes) = response.body()
            {
                let etag = etag_of(bytes.as_deref().unwrap_or_default());
                if asked
                    .if_none_match
                    .as_ref()
                    .is_some_and(|inm| matches_any(inm, &etag))
                {
                    wire.metrics.not_modified();
                    return not_modified(response.headers(), etag, qualifies);
                }
                response.headers_mut().insert(ETAG, etag);
            }
        }
    }
    if !qualifies {
        return response;
    }
    // The 200 this revalidates was sent compressed, its etag weakened: the 304 says
    // the same validator.
    if made == Made::Upstream
        && status == StatusCode::NOT_MODIFIED
        && let (Some(c), Some(accept)) = (&wire.compression, &asked.accept_encoding)
        && coding::negotiate(std::iter::once(accept.as_bytes()), &c.algorithms).is_some()
    {
        weaken_etag(response.headers_mut());
    }
    add_vary(response.headers_mut());
    // Cheapest first: most requests that ask for nothing end here.
    let (Some(compression), Some(accept)) = (&wire.compression, &asked.accept_encoding) else {
        return response;
    };
    if asked.head
        || !compressible_status(status)
        || already_encoded(response.headers())
        || no_transform(response.headers())
    {
        return response;
    }
    let Some(coding) =
        coding::negotiate(std::iter::once(accept.as_bytes()), &compression.algorithms)
    else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let body = match body {
        Body::Full(None) => return Response::from_parts(parts, Body::Full(None)),
        Body::Full(Some(bytes)) => {
            if (bytes.len() as u64) < compression.min_size {
                return Response::from_parts(parts, Body::Full(Some(bytes)));
            }
            match coding::encode(coding, &bytes) {
                Ok(encoded) => {
                    METRICS.compression_bytes(bytes.len() as u64, encoded.len() as u64);
                    Body::Full(Some(encoded))
                }
                Err(_) => return Response::from_parts(parts, Body::Full(Some(bytes))),
            }
        }
        Body::Stream(Outgoing::Plain(s)) => {
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n < compression.min_size) {
                return Response::from_parts(parts, Body::Stream(Outgoing::Plain(s)));
            }
            let Ok(encoder) = Encoder::streaming(coding) else {
                return Response::from_parts(parts, Body::Stream(Outgoing::Plain(s)));
            };
            weaken_etag(&mut parts.headers);
            // Said of the identity bytes: ranges into them, their digests.
            for name in [
                http::header::ACCEPT_RANGES,
                http::HeaderName::from_static("content-md5"),
                http::HeaderName::from_static("content-digest"),
                http::HeaderName::from_static("repr-digest"),
            ] {
                parts.headers.remove(name);
            }
            Body::Stream(Outgoing::Encoded(Box::new(Encoding::new(s, encoder))))
        }
        // Already on its way (counted streams are wrapped after this step).
        done @ Body::Stream(Outgoing::Encoded(_) | Outgoing::Counted(_)) => done,
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
    wire.metrics.compressed(coding);
    record.encoding = Some(coding);
    Response::from_parts(parts, body)
}

/// A weak validator of the bytes alone (xxh3-128): the same answer has the same etag
/// on every replica, after a reload, in every encoding.
pub fn etag_of(body: &[u8]) -> HeaderValue {
    let h = xxhash_rust::xxh3::xxh3_128(body);
    let mut s = [0u8; 36];
    s[..3].copy_from_slice(b"W/\"");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..32 {
        let nibble = (h >> (124 - 4 * i)) & 0xf;
        s[3 + i] = HEX[nibble as usize];
    }
    s[35] = b'"';
    // 36 bytes of ASCII: always a valid value.
    HeaderValue::from_bytes(&s).unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// `if-none-match` against `etag` by weak comparison (RFC 9110 §13.1.2): `*`, or any
/// listed entity tag whose opaque part equals it, `W/` or not.
pub fn matches_any(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let ours = opaque(etag.as_bytes());
    let list = if_none_match.as_bytes();
    if list.iter().all(|b| b.is_ascii_whitespace() || *b == b'*') && list.contains(&b'*') {
        return true;
    }
    list.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .any(|t| !t.is_empty() && opaque(t) == ours)
}

fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The 304 for a matching revalidation (RFC 9110 §15.4.5): what a 200 would have said
/// of caching and identity, no body.
fn not_modified(from: &HeaderMap, etag: HeaderValue, qualifies: bool) -> Answer {
    let mut resp = Response::new(Body::Full(None));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    h.insert(ETAG, etag);
    for name in [
        CACHE_CONTROL,
        X_REQUEST_ID,
        X_CONTENT_TYPE_OPTIONS,
        STRICT_TRANSPORT_SECURITY,
    ] {
        if let Some(v) = from.get(&name) {
            h.insert(name, v.clone());
        }
    }
    for v in from.get_all(VARY) {
        h.append(VARY, v.clone());
    }
    if qualifies {
        add_vary(h);
    }
    resp
}

/// `vary: accept-encoding`, once, beside whatever `vary` the answer has.
fn add_vary(h: &mut HeaderMap) {
    if !h.contains_key(VARY) {
        h.insert(VARY, ACCEPT_ENCODING);
        return;
    }
    if !lists(h, VARY, b"accept-encoding") && !lists(h, VARY, b"*") {
        h.append(VARY, ACCEPT_ENCODING);
    }
}

/// Types worth compressing: JSON, text (but not event streams), JavaScript, XML, SVG.
/// Runs on every answer of a route with compression: compared in place, no copy.
fn compressible_type(h: &HeaderMap) -> bool {
    let Some(ct) = h.get(CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    if ct == b"application/json" {
        return true;
    }
    let essence = ct.split(|b| *b == b';').next().unwrap_or(ct).trim_ascii();
    let Some(slash) = essence.iter().position(|b| *b == b'/') else {
        return false;
    };
    let (kind, sub) = (&essence[..slash], &essence[slash + 1..]);
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    let ends = |a: &[u8], b: &str| {
        a.len() >= b.len() && a[a.len() - b.len()..].eq_ignore_ascii_case(b.as_bytes())
    };
    if is(kind, "text") {
        !is(sub, "event-stream")
    } else if is(kind, "application") {
        is(sub, "json")
            || is(sub, "javascript")
            || is(sub, "xml")
            || ends(sub, "+json")
            || ends(sub, "+xml")
    } else {
        is(kind, "image") && is(sub, "svg+xml")
    }
}

/// 1xx, 204, 304 have no body; a 206 (or any `content-range` answer) is a piece of a
/// representation whose ranges count identity bytes.
fn compressible_status(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT)
}

fn already_encoded(h: &HeaderMap) -> bool {
    h.contains_key(CONTENT_RANGE)
        || h.get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn no_transform(h: &HeaderMap) -> bool {
    lists(h, CACHE_CONTROL, b"no-transform")
}

/// A comma-separated header names `token` (any case) on any of its lines.
fn lists(h: &HeaderMap, name: http::HeaderName, token: &[u8]) -> bool {
    h.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// An upstream's strong etag names its identity bytes; the compressed ones differ, so
/// it is sent weak (the upstream still matches it: `if-none-match` compares weakly).
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(tag) = h.get(ETAG)
        && tag.as_bytes().first() == Some(&b'"')
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(ETAG, v);
        }
    }
}

/// A client's `if-match` or `if-range` sent to a passthrough upstream of a route that
/// compresses: the weak tags in it made strong again. manifold weakened them (see
/// [`weaken_etag`]) and those headers compare strongly, so as sent back they could
/// never match; a range is of the identity bytes the strong tag names.
pub fn strengthened(value: &HeaderValue) -> Option<HeaderValue> {
    let v = value.as_bytes();
    if !v.windows(3).any(|w| w == b"W/\"") {
        return None;
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i..].starts_with(b"W/\"") {
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    HeaderValue::from_bytes(&out).ok()
}

/// Bytes read from the upstream between two flushes at most: the encoder's output
/// waiting to be sent stays small, and the client gets data while more arrives.
const FLUSH_AFTER: usize = 64 << 10;

/// A streamed body compressed frame by frame. Everything the upstream has sent when it
/// pauses is flushed to the client, so a slow stream is never held back by the
/// encoder.
pub struct Encoding {
    inner: Streamed,
    encoder: Option<Encoder>,
    /// Read since the last flush.
    unflushed: usize,
    /// Trailers that came after the data: sent once the encoder's end is.
    trailers: Option<HeaderMap>,
}

impl Encoding {
    fn new(inner: Streamed, encoder: Encoder) -> Self {
        Encoding {
            inner,
            encoder: Some(encoder),
            unflushed: 0,
            trailers: None,
        }
    }

    fn emit(bytes: Bytes, input: usize) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        METRICS.compression_bytes(input as u64, bytes.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl HttpBody for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Outgoing::Plain(s) => Pin::new(s).poll_frame(cx),
            Outgoing::Encoded(e) => Pin::new(&mut **e).poll_frame(cx),
            Outgoing::Counted(c) => {
                let polled = Pin::new(&mut c.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        c.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    Poll::Ready(None) => c.end(),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Plain(s) => s.is_end_stream(),
            Outgoing::Encoded(e) => e.is_end_stream(),
            Outgoing::Counted(c) => c.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Plain(s) => s.size_hint(),
            Outgoing::Encoded(_) => SizeHint::default(),
            Outgoing::Counted(c) => c.inner.size_hint(),
        }
    }
}

impl HttpBody for Encoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            if this.unflushed >= FLUSH_AFTER {
                let input = std::mem::take(&mut this.unflushed);
                let out = encoder.flush()?;
                if !out.is_empty() {
                    return Encoding::emit(out, input);
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write(&data)?;
                        this.unflushed += data.len();
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let input = std::mem::take(&mut this.unflushed);
                    let out = this.encoder.take().map(Encoder::finish).transpose()?;
                    match out {
                        Some(out) if !out.is_empty() => return Encoding::emit(out, input),
                        _ => continue,
                    }
                }
                Poll::Pending => {
                    if this.unflushed == 0 {
                        return Poll::Pending;
                    }
                    let input = std::mem::take(&mut this.unflushed);
                    let out = encoder.flush()?;
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                    return Encoding::emit(out, input);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn compressible_types_are_the_listed_ones() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
            "text/html",
            "text/plain;charset=utf-8",
            "application/javascript",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
        ] {
            assert!(compressible_type(&map(&[("content-type", t)])), "{t}");
        }
        for t in [
            "text/event-stream",
            "image/png",
            "application/octet-stream",
            "application/grpc",
            "application/zip",
            "json",
        ] {
            assert!(!compressible_type(&map(&[("content-type", t)])), "{t}");
        }
        assert!(!compressible_type(&HeaderMap::new()));
    }

    #[test]
    fn etags_are_weak_stable_and_of_the_bytes() {
        let a = etag_of(b"{\"a\":1}");
        assert_eq!(a, etag_of(b"{\"a\":1}"));
        assert_ne!(a, etag_of(b"{\"a\":2}"));
        let s = a.to_str().unwrap();
        assert!(
            s.starts_with("W/\"") && s.ends_with('"') && s.len() == 36,
            "{s}"
        );
        // A function of the bytes alone: this value is what every replica computes.
        assert_eq!(etag_of(b""), etag_of(b""));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = HeaderValue::from_static("W/\"abc\"");
        let m = |v: &'static str| matches_any(&HeaderValue::from_static(v), &etag);
        assert!(m("W/\"abc\""));
        assert!(m("\"abc\""));
        assert!(m("\"x\", W/\"abc\""));
        assert!(m("*"));
        assert!(m(" * "));
        assert!(!m("W/\"abd\""));
        assert!(!m("\"x\""));
        assert!(!m(""));
        assert!(!m("abc"));
    }

    #[test]
    fn vary_is_added_once() {
        let mut h = map(&[("vary", "origin")]);
        add_vary(&mut h);
        add_vary(&mut h);
        let all: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(all, ["origin", "accept-encoding"]);
        let mut h = map(&[("vary", "Origin, Accept-Encoding")]);
        add_vary(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn weak_tags_sent_back_are_made_strong() {
        let v = HeaderValue::from_static("W/\"a\", \"b\", W/\"c\"");
        assert_eq!(strengthened(&v).unwrap(), "\"a\", \"b\", \"c\"");
        assert_eq!(strengthened(&HeaderValue::from_static("\"a\"")), None);
        assert_eq!(strengthened(&HeaderValue::from_static("*")), None);
    }

    #[test]
    fn strong_etags_are_weakened_when_the_bytes_change() {
        let mut h = map(&[("etag", "\"v1\"")]);
        weaken_etag(&mut h);
        assert_eq!(h[ETAG], "W/\"v1\"");
        weaken_etag(&mut h);
        assert_eq!(h[ETAG], "W/\"v1\"");
    }

    #[test]
    fn several_header_lines_read_as_one_list() {
        let h = map(&[("accept-encoding", "br;q=0"), ("accept-encoding", "gzip")]);
        assert_eq!(
            joined(&h, http::header::ACCEPT_ENCODING).unwrap(),
            "br;q=0, gzip"
        );
    }
}
