//! The one place a failure becomes a status code and a JSON error body
//! (docs/operations.md#status-codes-a-client-can-get).
//!
//! Messages name the backend and upstream, never an address, a stack or a secret:
//! upstream URLs and transport errors go to the logs, not to the client.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::base::body::{Body, ClientFault};

/// How one backend call went: the `outcome` of metrics, access log lines and spans
/// (docs/operations.md#metrics). The upstream histogram counts the first six; `dependency_failed`
/// (never called) and `client_error` (the client's own body failed the call) are the
/// request's, never the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The upstream answered 4xx.
    Rejected,
    Error,
    Timeout,
    CircuitOpen,
    Overloaded,
    DependencyFailed,
    ClientError,
}

impl Outcome {
    /// The outcomes an upstream's calls end with, in
    /// `manifold_upstream_request_duration_seconds` order.
    pub const UPSTREAM: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Rejected,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::CircuitOpen,
        Outcome::Overloaded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::CircuitOpen => "circuit_open",
            Outcome::Overloaded => "overloaded",
            Outcome::DependencyFailed => "dependency_failed",
            Outcome::ClientError => "client_error",
        }
    }

    /// The outcome of a call that ended with `result`.
    pub fn of<T>(result: &Result<T, Failure>) -> Outcome {
        result
            .as_ref()
            .map_or_else(Failure::outcome, |_| Outcome::Ok)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one backend call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The attempt's timeout or the route deadline passed.
    Timeout,
    CircuitOpen {
        retry_after: Duration,
    },
    /// The upstream is at `max_concurrency` or over its own rate limit.
    Overloaded,
    /// The gateway holds as many answers as `buffer_capacity` allows.
    BufferFull,
    /// A new connection was needed and the descriptor budget has none for it.
    NoDescriptor,
    /// Could not connect, or the connection broke: the transport's own words, for
    /// the log (never the client's answer).
    Connect(Arc<str>),
    /// The upstream answered 5xx.
    ServerError(StatusCode),
    /// A redirect, an unexpected status, or too large.
    BadResponse(&'static str),
    /// The body is not JSON: why, and at which byte.
    NotJson(crate::base::json::Invalid),
    /// The answer does not match the backend's `schema` (`validate_response`): the
    /// first mismatch's JSON pointer, and what is wrong there.
    Mismatch {
        at: Arc<str>,
        why: Arc<str>,
    },
    /// The upstream answered 4xx.
    Rejected(StatusCode),
    /// The upstream answered 4xx with a JSON body, which a `pass_errors` backend hands
    /// to the client as it is.
    Passed {
        status: StatusCode,
        /// Its body and `content-type`; boxed: every `Result` carrying a failure is
        /// as large as its largest variant, and this one is rare.
        answer: Box<(bytes::Bytes, HeaderValue)>,
    },
    /// `{dep.field}` could not be filled: the dependency failed or lacks the field.
    Dependency {
        dep: Arc<str>,
        cause: Box<Failure>,
    },
    MissingField {
        dep: Arc<str>,
        field: Arc<str>,
    },
    /// The backend's rendered path is not a valid URL: the gateway's doing, not the
    /// upstream's, so no call was made.
    InvalidTarget,
    /// The client's own request body failed the call (see [`ClientFault`]).
    Client(ClientFault),
    /// A gRPC backend's answer carried a `grpc-status` other than OK: treated as the
    /// HTTP status of the table in docs/configuration.md#grpc-backends, with the
    /// upstream's `grpc-message` in the client's error.
    Grpc(GrpcStatus),
    /// A gRPC backend's request message could not be made from the request's values
    /// (a value that does not convert to its field's type): the client's doing, 400
    /// `BAD_PARAMETER`, no call made. Says which field, never the value.
    BadMessage(Arc<str>),
}

/// A gRPC status code (`grpc-status`), as the gRPC specification numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub u32);

impl GrpcCode {
    pub const OK: GrpcCode = GrpcCode(0);
    pub const INVALID_ARGUMENT: GrpcCode = GrpcCode(3);
    pub const DEADLINE_EXCEEDED: GrpcCode = GrpcCode(4);
    pub const NOT_FOUND: GrpcCode = GrpcCode(5);
    pub const UNIMPLEMENTED: GrpcCode = GrpcCode(12);
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);

    /// The specification's name for it; a code outside 0-16 has none.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "(not a gRPC code)",
        }
    }

    /// The HTTP status a gRPC answer with this code stands for
    /// (docs/configuration.md#grpc-backends): 4xx are the upstream's refusals, passed
    /// on as UPSTREAM_REJECTED; 5xx (and codes outside 0-16) are its errors; 504
    /// marks DEADLINE_EXCEEDED, a timeout.
    pub const fn as_http(self) -> StatusCode {
        match self.0 {
            3 | 9 | 11 => StatusCode::BAD_REQUEST,
            5 => StatusCode::NOT_FOUND,
            6 | 10 => StatusCode::CONFLICT,
            7 => StatusCode::FORBIDDEN,
            16 => StatusCode::UNAUTHORIZED,
            8 => StatusCode::TOO_MANY_REQUESTS,
            12 => StatusCode::NOT_IMPLEMENTED,
            4 => StatusCode::GATEWAY_TIMEOUT,
            14 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A gRPC answer's status other than OK: its code and its `grpc-message`
/// (percent-decoded, at most [`MAX_GRPC_MESSAGE`] characters).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcStatus {
    pub code: GrpcCode,
    pub message: Option<Arc<str>>,
}

/// The most characters of an upstream's `grpc-message` a client's error carries.
pub const MAX_GRPC_MESSAGE: usize = 200;

impl GrpcStatus {
    fn describe(&self) -> String {
        match &self.message {
            Some(m) => format!("grpc-status {} {}: {m}", self.code.0, self.code.name()),
            None => format!("grpc-status {} {}", self.code.0, self.code.name()),
        }
    }
}

impl Failure {
    /// A transport error, named by its innermost cause ("Connection refused (os error
    /// 111)"), which says more than hyper's outer "client error (Connect)".
    pub fn connect(e: &(dyn std::error::Error + 'static)) -> Failure {
        let mut inner: &(dyn std::error::Error + 'static) = e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        Failure::Connect(Arc::from(inner.to_string()))
    }

    /// The label used in access logs, metrics and spans.
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::Timeout => Outcome::Timeout,
            Failure::CircuitOpen { .. } => Outcome::CircuitOpen,
            Failure::Overloaded | Failure::BufferFull | Failure::NoDescriptor => {
                Outcome::Overloaded
            }
            Failure::Connect(_)
            | Failure::ServerError(_)
            | Failure::BadResponse(_)
            | Failure::NotJson(_)
            | Failure::Mismatch { .. }
            | Failure::InvalidTarget => Outcome::Error,
            Failure::Rejected(_) | Failure::Passed { .. } => Outcome::Rejected,
            Failure::Dependency { .. } | Failure::MissingField { .. } => Outcome::DependencyFailed,
            Failure::Client(_) | Failure::BadMessage(_) => Outcome::ClientError,
            Failure::Grpc(g) if g.code == GrpcCode::DEADLINE_EXCEEDED => Outcome::Timeout,
            Failure::Grpc(g) if g.code.as_http().is_client_error() => Outcome::Rejected,
            Failure::Grpc(_) => Outcome::Error,
        }
    }

    /// What went wrong, for span status messages and the log: the cause an operator
    /// needs, never a client's address or a secret.
    pub fn describe(&self) -> String {
        match self {
            Failure::Timeout => "no answer in time".into(),
            Failure::CircuitOpen { .. } => "circuit breaker open".into(),
            Failure::Overloaded => "at its concurrency or rate limit".into(),
            Failure::BufferFull => "buffer_capacity reached: no room for its answer".into(),
            Failure::NoDescriptor => "no file descriptor left for a new upstream connection".into(),
            Failure::Connect(cause) => {
                format!("could not connect, or the connection broke: {cause}")
            }
            Failure::ServerError(s) => format!("answered {}", s.as_u16()),
            Failure::BadResponse(why) => format!("bad response: {why}"),
            Failure::NotJson(e) => format!(
                "bad response: the body is not JSON: {} at byte {}",
                e.what, e.at
            ),
            Failure::Mismatch { at, why } => format!(
                "bad response: the answer does not match its schema at {}: {why}",
                if at.is_empty() { "the root" } else { at }
            ),
            Failure::Rejected(s) => format!("rejected with {}", s.as_u16()),
            Failure::Passed { status, .. } => format!(
                "rejected with {} (its JSON error passed to the client)",
                status.as_u16()
            ),
            Failure::Dependency { dep, .. } => format!("backend `{dep}` it reads from failed"),
            Failure::MissingField { dep, field } => {
                format!("backend `{dep}` has no usable field `{field}`")
            }
            Failure::InvalidTarget => "the rendered backend path is not a valid URL".into(),
            Failure::Client(fault) => fault.describe().into(),
            Failure::Grpc(g) => g.describe(),
            Failure::BadMessage(why) => format!("its gRPC request message cannot be made: {why}"),
        }
    }

    /// Failures the circuit breaker counts (connect error, timeout, 5xx, and the gRPC
    /// codes that stand for a timeout or a 5xx).
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Connect(_) | Failure::ServerError(_) => true,
            Failure::Grpc(g) => g.code.as_http().is_server_error(),
            _ => false,
        }
    }
}

/// A backend's failure, with who is to blame.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendError {
    pub backend: Arc<str>,
    pub upstream: Arc<str>,
    pub failure: Failure,
}

/// Everything that can fail a client request.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    RouteNotFound,
    MethodNotAllowed {
        allow: HeaderValue,
    },
    PayloadTooLarge {
        limit: u64,
    },
    /// The client did not finish sending its body before the route deadline.
    RequestTimeout,
    /// The request is malformed: its body's framing, or its `host` header.
    BadRequest {
        reason: &'static str,
    },
    /// The request's path and query are longer than `max_header_size`.
    UriTooLong {
        limit: usize,
    },
    /// The request head (path, query and headers) is larger than `max_header_size`.
    HeadersTooLarge {
        limit: usize,
    },
    /// The client went away before its request was read; nobody reads this answer,
    /// but the access log and metrics do (nginx's 499).
    ClientClosed,
    BadParameter {
        name: String,
        reason: &'static str,
    },
    RateLimited {
        retry_after: Duration,
    },
    /// A CORS preflight from an origin, or for a method, the route does not allow.
    CorsRejected,
    /// The request's connection holds more answers its client has not taken than its
    /// share of `buffer_capacity`.
    Crowded,
    /// No room left in `buffer_capacity` for the merged answer.
    BufferFull,
    /// A WebSocket tunnel would pass its share of the descriptor limit.
    NoDescriptor,
    /// The route's token check failed.
    Auth(AuthFailure),
    /// The request does not match the route's `validate` schemas: every failure found,
    /// at most [`MAX_DETAILS`], in the order params, query, body.
    Invalid(Box<[Detail]>),
    /// A route with a `body` schema got a body that is not JSON (by its content-type,
    /// or by its bytes).
    UnsupportedMediaType(String),
    /// A route with `idempotency` refused the request's key.
    Idempotency(IdempotencyRefusal),
    Backend(BackendError),
}

/// Why a route with `idempotency` refused a request (docs/configuration.md#idempotency-keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyRefusal {
    /// No `idempotency-key` where `required = true` (400).
    Missing,
    /// Not 1-255 visible ASCII characters, or two of them (400).
    Invalid,
    /// A request with the key is in flight (409, `retry-after: 1`).
    InProgress,
    /// The key came with another request (another method, path, query or body) (422).
    Reused,
}

/// The most failures one `INVALID_REQUEST` answer lists.
pub const MAX_DETAILS: usize = 20;

/// Which part of a request a schema checked (`error.details[].in`, the `in` label of
/// `manifold_validation_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Params,
    Query,
    Body,
}

impl Part {
    /// In the order a request's failures are listed.
    pub const ALL: [Part; 3] = [Part::Params, Part::Query, Part::Body];

    pub const fn as_str(self) -> &'static str {
        match self {
            Part::Params => "params",
            Part::Query => "query",
            Part::Body => "body",
        }
    }
}

/// One way a request fails its route's schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    #[serde(rename = "in", serialize_with = "part_str")]
    pub part: Part,
    /// A JSON pointer into the part (`/items/0/qty`; empty for the part itself).
    pub path: String,
    pub message: String,
}

fn part_str<S: serde::Serializer>(p: &Part, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

/// Why a route's token check failed (the table in docs/configuration.md#routes, `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer` token.
    Missing,
    /// A token that does not verify; the reason is safe to show (never the token).
    Invalid(&'static str),
    /// A scope the route asks for is missing.
    Forbidden,
    /// No key to check with: the JWKS could not be fetched and none is held.
    Unavailable,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a str>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a [Detail]>,
}

/// Logged and counted for a request whose client went away first (nginx's code); no
/// client ever reads it.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Whole seconds, at least 1, for `retry-after`.
fn retry_after_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

impl GatewayError {
    /// The client's answer to a fault of its own; `limit` is the route's
    /// `max_request_body`.
    pub fn client(fault: ClientFault, limit: u64) -> GatewayError {
        match fault {
            ClientFault::TooLarge => GatewayError::PayloadTooLarge { limit },
            ClientFault::Malformed => GatewayError::BadRequest {
                reason: "the request body could not be read",
            },
            ClientFault::Gone => GatewayError::ClientClosed,
            ClientFault::Slow => GatewayError::RequestTimeout,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::ClientClosed => CLIENT_CLOSED_REQUEST,
            GatewayError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Invalid(_) => StatusCode::BAD_REQUEST,
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Idempotency(r) => match r {
                IdempotencyRefusal::Missing | IdempotencyRefusal::Invalid => {
                    StatusCode::BAD_REQUEST
                }
                IdempotencyRefusal::InProgress => StatusCode::CONFLICT,
                IdempotencyRefusal::Reused => StatusCode::UNPROCESSABLE_ENTITY,
            },
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::CorsRejected => StatusCode::FORBIDDEN,
            GatewayError::Crowded | GatewayError::BufferFull | GatewayError::NoDescriptor => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Auth(a) => match a {
                AuthFailure::Missing | AuthFailure::Invalid(_) => StatusCode::UNAUTHORIZED,
                AuthFailure::Forbidden => StatusCode::FORBIDDEN,
                AuthFailure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            GatewayError::Backend(e) => failure_status(&e.failure),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::RouteNotFound => "ROUTE_NOT_FOUND",
            GatewayError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            GatewayError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            GatewayError::RequestTimeout => "REQUEST_TIMEOUT",
            GatewayError::BadRequest { .. } => "BAD_REQUEST",
            GatewayError::UriTooLong { .. } => "URI_TOO_LONG",
            GatewayError::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            GatewayError::ClientClosed => "CLIENT_CLOSED_REQUEST",
            GatewayError::BadParameter { .. } => "BAD_PARAMETER",
            GatewayError::Invalid(_) => "INVALID_REQUEST",
            GatewayError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            GatewayError::Idempotency(r) => match r {
                IdempotencyRefusal::Missing => "IDEMPOTENCY_KEY_MISSING",
                IdempotencyRefusal::Invalid => "IDEMPOTENCY_KEY_INVALID",
                IdempotencyRefusal::InProgress => "IDEMPOTENCY_IN_PROGRESS",
                IdempotencyRefusal::Reused => "IDEMPOTENCY_KEY_REUSED",
            },
            GatewayError::RateLimited { .. } => "RATE_LIMITED",
            GatewayError::CorsRejected => "CORS_REJECTED",
            GatewayError::Crowded | GatewayError::BufferFull | GatewayError::NoDescriptor => {
                "OVERLOADED"
            }
            GatewayError::Auth(a) => match a {
                AuthFailure::Missing => "UNAUTHORIZED",
                AuthFailure::Invalid(_) => "INVALID_TOKEN",
                AuthFailure::Forbidden => "FORBIDDEN",
                AuthFailure::Unavailable => "AUTH_UNAVAILABLE",
            },
            GatewayError::Backend(e) => failure_code(&e.failure),
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::RouteNotFound => "no route matches this path".into(),
            GatewayError::MethodNotAllowed { allow } => {
                format!(
                    "method not allowed here; allowed: {}",
                    allow.to_str().unwrap_or("")
                )
            }
            GatewayError::PayloadTooLarge { limit } => {
                format!("request body is larger than {limit} bytes")
            }
            GatewayError::RequestTimeout => {
                "the request body did not arrive before the route deadline".into()
            }
            GatewayError::BadRequest { reason } => (*reason).into(),
            GatewayError::UriTooLong { limit } => {
                format!("the request's path and query are longer than {limit} bytes")
            }
            GatewayError::HeadersTooLarge { limit } => {
                format!("the request's headers are larger than {limit} bytes")
            }
            GatewayError::ClientClosed => "the client went away mid-request".into(),
            GatewayError::BadParameter { name, reason } => {
                format!("path parameter `{name}` {reason}")
            }
            GatewayError::Invalid(details) => match details.first() {
                Some(d) if d.path.is_empty() => format!("invalid {}: {}", d.part.as_str(), d.message),
                Some(d) => format!("invalid {} at {}: {}", d.part.as_str(), d.path, d.message),
                None => "the request does not match the route's schema".into(),
            },
            GatewayError::UnsupportedMediaType(why) => why.clone(),
            GatewayError::Idempotency(r) => match r {
                IdempotencyRefusal::Missing => "this route needs an idempotency-key header".into(),
                IdempotencyRefusal::Invalid => {
                    "idempotency-key must be one value of 1 to 255 visible ASCII characters".into()
                }
                IdempotencyRefusal::InProgress => {
                    "a request with this idempotency-key is still being served; retry shortly".into()
                }
                IdempotencyRefusal::Reused => {
                    "this idempotency-key was used with another request (method, path, query or body)".into()
                }
            },
            GatewayError::RateLimited { retry_after } => {
                format!(
                    "rate limit exceeded; retry in {} s",
                    retry_after_secs(*retry_after)
                )
            }
            GatewayError::CorsRejected => {
                "this origin, or this method, is not allowed to call this path".into()
            }
            GatewayError::Crowded => {
                "this connection holds too many answers its client has not read yet".into()
            }
            GatewayError::BufferFull => {
                "the gateway holds as many answers as it may; try again shortly".into()
            }
            GatewayError::NoDescriptor => {
                "the gateway holds as many WebSocket tunnels as its descriptor limit allows; try again shortly".into()
            }
            GatewayError::Auth(a) => match a {
                AuthFailure::Missing => "this route needs a bearer token".into(),
                AuthFailure::Invalid(why) => (*why).into(),
                AuthFailure::Forbidden => "the token lacks a scope this route needs".into(),
                AuthFailure::Unavailable => {
                    "the keys to check the token with cannot be had; try again shortly".into()
                }
            },
            GatewayError::Backend(e) => backend_message(e),
        }
    }

    /// The client response: status, JSON error body, and the headers the contract names.
    /// A `pass_errors` backend's 4xx is its upstream's own body and status.
    pub fn into_response<S>(self, request_id: &HeaderValue) -> Response<Body<S>> {
        if let GatewayError::Backend(e) = &self
            && let Failure::Passed { status, answer } = root_cause(&e.failure)
        {
            let (body, content_type) = &**answer;
            let mut resp = Response::new(Body::from(body.clone()));
            *resp.status_mut() = *status;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, content_type.clone());
            h.insert(crate::base::forward::X_REQUEST_ID, request_id.clone());
            return resp;
        }
        let id = request_id.to_str().unwrap_or("");
        let backend = match &self {
            GatewayError::Backend(e) => Some(blamed(e)),
            _ => None,
        };
        let details = match &self {
            GatewayError::Invalid(d) => Some(&d[..]),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorFields {
                code: self.code(),
                message: self.message(),
                backend,
                request_id: id,
                details,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = Response::new(Body::from(bytes));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(crate::base::forward::X_REQUEST_ID, request_id.clone());
        let retry = match &self {
            GatewayError::RateLimited { retry_after } => Some(*retry_after),
            GatewayError::Idempotency(IdempotencyRefusal::InProgress) => {
                Some(Duration::from_secs(1))
            }
            GatewayError::Backend(e) => match root_cause(&e.failure) {
                Failure::CircuitOpen { retry_after } => Some(*retry_after),
                _ => None,
            },
            _ => None,
        };
        if let Some(d) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        if let GatewayError::Auth(a) = &self {
            let challenge = match a {
                AuthFailure::Missing => Some("Bearer"),
                AuthFailure::Invalid(_) => Some(r#"Bearer error="invalid_token""#),
                AuthFailure::Forbidden => Some(r#"Bearer error="insufficient_scope""#),
                AuthFailure::Unavailable => None,
            };
            if let Some(c) = challenge {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
            }
        }
        if let GatewayError::MethodNotAllowed { allow } = self {
            h.insert(header::ALLOW, allow);
        }
        resp
    }
}

/// The backend to blame: for a failed dependency, the dependency's own backend.
fn blamed(e: &BackendError) -> &str {
    let mut f = &e.failure;
    let mut who: &str = &e.backend;
    while let Failure::Dependency { dep, cause } = f {
        who = dep;
        f = cause;
    }
    who
}

fn root_cause(f: &Failure) -> &Failure {
    match f {
        Failure::Dependency { cause, .. } => root_cause(cause),
        other => other,
    }
}

fn failure_status(f: &Failure) -> StatusCode {
    match root_cause(f) {
        Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Failure::CircuitOpen { .. }
        | Failure::Overloaded
        | Failure::BufferFull
        | Failure::NoDescriptor => StatusCode::SERVICE_UNAVAILABLE,
        Failure::Connect(_) | Failure::ServerError(_) => StatusCode::BAD_GATEWAY,
        Failure::BadResponse(_)
        | Failure::NotJson(_)
        | Failure::Mismatch { .. }
        | Failure::MissingField { .. } => StatusCode::BAD_GATEWAY,
        Failure::Rejected(s) | Failure::Passed { status: s, .. } => *s,
        Failure::Dependency { .. } => StatusCode::BAD_GATEWAY,
        Failure::InvalidTarget => StatusCode::INTERNAL_SERVER_ERROR,
        Failure::Client(fault) => GatewayError::client(*fault, 0).status(),
        Failure::BadMessage(_) => StatusCode::BAD_REQUEST,
        Failure::Grpc(g) => match g.code.as_http() {
            s if s.is_client_error() => s,
            StatusCode::GATEWAY_TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        },
    }
}

fn failure_code(f: &Failure) -> &'static str {
    match root_cause(f) {
        Failure::Timeout => "UPSTREAM_TIMEOUT",
        Failure::CircuitOpen { .. } => "CIRCUIT_OPEN",
        Failure::Overloaded | Failure::BufferFull | Failure::NoDescriptor => "OVERLOADED",
        Failure::Connect(_) | Failure::ServerError(_) | Failure::Dependency { .. } => {
            "UPSTREAM_ERROR"
        }
        Failure::BadResponse(_)
        | Failure::NotJson(_)
        | Failure::Mismatch { .. }
        | Failure::MissingField { .. } => "UPSTREAM_BAD_RESPONSE",
        Failure::Rejected(_) | Failure::Passed { .. } => "UPSTREAM_REJECTED",
        Failure::InvalidTarget => "INTERNAL_ERROR",
        Failure::Client(fault) => GatewayError::client(*fault, 0).code(),
        Failure::BadMessage(_) => "BAD_PARAMETER",
        Failure::Grpc(g) => match g.code.as_http() {
            s if s.is_client_error() => "UPSTREAM_REJECTED",
            StatusCode::GATEWAY_TIMEOUT => "UPSTREAM_TIMEOUT",
            _ => "UPSTREAM_ERROR",
        },
    }
}

fn backend_message(e: &BackendError) -> String {
    let who = format!("backend `{}` (upstream `{}`)", e.backend, e.upstream);
    match &e.failure {
        Failure::Timeout => format!("{who} did not answer in time"),
        Failure::CircuitOpen { .. } => format!("{who} is failing; its circuit breaker is open"),
        Failure::Overloaded => format!("{who} is at its concurrency or rate limit"),
        Failure::BufferFull => {
            format!("{who} was not called: the gateway is holding as many answers as it may")
        }
        Failure::NoDescriptor => {
            format!("{who} was not called: the gateway is at its connection limit")
        }
        Failure::Connect(_) => format!("{who} could not be reached"),
        Failure::ServerError(s) => format!("{who} answered {}", s.as_u16()),
        Failure::BadResponse(why)
        | Failure::NotJson(crate::base::json::Invalid { what: why, .. }) => {
            format!("{who} sent a bad response: {why}")
        }
        Failure::Mismatch { .. } => {
            format!("{who} sent a bad response: the answer does not match its schema")
        }
        Failure::InvalidTarget => {
            format!("{who} was not called: its rendered path is not a valid URL")
        }
        Failure::Client(fault) => fault.describe().into(),
        Failure::Rejected(s) | Failure::Passed { status: s, .. } => {
            format!("{who} rejected the request with {}", s.as_u16())
        }
        Failure::Dependency { dep, cause } => format!(
            "{who} could not run: backend `{dep}`, which it depends on, failed ({})",
            root_cause(cause).outcome().as_str().replace('_', " ")
        ),
        Failure::MissingField { dep, field } => {
            format!(
                "{who} could not run: the answer of backend `{dep}` has no usable field `{field}`"
            )
        }
        Failure::BadMessage(why) => {
            format!("{who} was not called: its request message cannot be made: {why}")
        }
        Failure::Grpc(g) => {
            let said = g.code.as_http();
            let what = if said == StatusCode::GATEWAY_TIMEOUT {
                "did not answer in time".to_string()
            } else if said.is_client_error() {
                format!("rejected the request with {}", said.as_u16())
            } else {
                format!("failed ({})", said.as_u16())
            };
            match &g.message {
                Some(m) => format!("{who} {what}: {} {}: {m}", g.code.0, g.code.name()),
                None => format!("{who} {what}: {} {}", g.code.0, g.code.name()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result` on the request path is as large as its largest failure: a new
    /// variant boxes what would grow them (docs/operations.md, "Request validation:
    /// what it costs").
    #[test]
    fn failures_stay_small() {
        assert!(std::mem::size_of::<Failure>() <= 40);
        assert!(std::mem::size_of::<GatewayError>() <= 72);
    }

    /// The status table of docs/configuration.md#grpc-backends, row by row.
    #[test]
    fn grpc_codes_map_as_the_table_says() {
        let cases = [
            (1, 502, "UPSTREAM_ERROR", Outcome::Error),
            (3, 400, "UPSTREAM_REJECTED", Outcome::Rejected),
            (4, 504, "UPSTREAM_TIMEOUT", Outcome::Timeout),
            (5, 404, "UPSTREAM_REJECTED", Outcome::Rejected),
            (8, 429, "UPSTREAM_REJECTED", Outcome::Rejected),
            (12, 502, "UPSTREAM_ERROR", Outcome::Error),
            (14, 502, "UPSTREAM_ERROR", Outcome::Error),
            (16, 401, "UPSTREAM_REJECTED", Outcome::Rejected),
            (99, 502, "UPSTREAM_ERROR", Outcome::Error),
        ];
        for (code, status, name, outcome) in cases {
            let f = Failure::Grpc(GrpcStatus {
                code: GrpcCode(code),
                message: None,
            });
            assert_eq!(failure_status(&f).as_u16(), status, "{code}");
            assert_eq!(failure_code(&f), name, "{code}");
            assert_eq!(f.outcome(), outcome, "{code}");
            assert_eq!(f.is_upstream_fault(), status >= 500, "{code}");
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn an_open_circuit_behind_a_dependency_still_says_when_to_retry() {
        let e = GatewayError::Backend(BackendError {
            backend: Arc::from("orders"),
            upstream: Arc::from("orders"),
            failure: Failure::Dependency {
                dep: Arc::from("user"),
                cause: Box::new(Failure::CircuitOpen {
                    retry_after: Duration::from_millis(2500),
                }),
            },
        });
        let resp = e.into_response::<crate::base::body::Never>(&HeaderValue::from_static("id"));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn dependency_failure_maps_to_root_cause() {
        let f = Failure::Dependency {
            dep: Arc::from("user"),
            cause: Box::new(Failure::Timeout),
        };
        assert_eq!(failure_status(&f), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(failure_code(&f), "UPSTREAM_TIMEOUT");
    }
}
