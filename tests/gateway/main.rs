//! End-to-end tests: real upstreams on port 0, the real gateway over TCP.

mod support;

mod attacks;
mod auth;
mod browser;
mod bytes_codec;
mod caching;
mod causes;
mod chaos;
mod config_check;
mod console;
mod demo;
mod failures;
mod fanout;
mod grpc;
mod h2_upstream;
mod hardening;
mod hygiene;
mod idempotency;
mod metrics;
mod passthrough;
mod pool;
mod reload;
mod resilience;
mod scenarios;
mod server;
mod shared;
mod tls;
mod tracing;
mod traffic;
mod validation;
mod websocket;
mod wire;
