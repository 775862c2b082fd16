//! What outlives a request, shared by the worker loops: rate-limit buckets
//! ([`bucket`]), the response cache and
//! coalescing ([`cache`]), the replicas' Redis ([`redis`]), the capacity for buffered
//! bytes ([`buffers`]), the shares of file descriptors ([`descriptors`]), and the client
//! connections open ([`connections`]).

pub mod bucket;
pub mod buffers;
pub mod cache;
pub mod connections;
pub mod descriptors;
pub mod idempotency;
pub mod redis;
