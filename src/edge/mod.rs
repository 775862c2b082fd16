//! The checks a request meets at the edge, before any upstream is called: CORS
//! ([`cors`]), tokens ([`auth`]), rate limits ([`ratelimit`]) and request validation
//! ([`validation`]), idempotency keys ([`idempotency`]). Each is compiled into a route by the gateway and
//! called by the handler at its place in the order; a route without one pays nothing.

pub mod auth;
pub mod cors;
pub mod idempotency;
pub mod ratelimit;
pub mod validation;
