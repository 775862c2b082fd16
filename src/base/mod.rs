//! The bottom layer: small things every layer uses and that use nothing above them —
//! the failures and their statuses ([`error`]), `cache-control` ([`cache_control`]), content
//! codings: negotiation, encoders, bounded decoders ([`coding`]), the JSON
//! rule ([`json`]), the header rules ([`forward`]), bodies ([`body`]), path templates
//! ([`template`]), redaction of secrets ([`redact`]), files the config names ([`files`]), TLS
//! client set-up ([`tls`]), the worker loops ([`worker`]) and the allocator ([`alloc`]).

pub mod alloc;
pub mod body;
pub mod cache_control;
pub mod coding;
pub mod error;
pub mod files;
pub mod forward;
pub mod json;
pub mod redact;
pub mod template;
pub mod tls;
pub mod worker;
