//! manifold: a config-driven API gateway and backend-for-frontend aggregator.
//!
//! The folders are the layers, in the order a request meets them, and imports only go
//! down this list (`tests/architecture.rs` checks it; docs/architecture.md draws it):
//!
//! 1. [`listener`]: accepting clients — listeners, connections and their bounds, TLS,
//!    the drain and reloads.
//! 2. [`admin`]: the admin listener's endpoints.
//! 3. [`request`]: one request through a route — the handler's steps, fan-out,
//!    passthrough, WebSocket tunnels, merging; the gateway compiled from a config.
//! 4. [`edge`]: the checks at the edge — CORS, tokens, rate limits.
//! 5. [`upstream`]: calling upstreams — hosts, pools, attempts, breakers, retries,
//!    and the codecs that read their answers.
//! 6. [`state`]: what outlives a request — caches, the replicas' Redis, the
//!    buffer capacity and descriptor shares, the connection counts.
//! 7. [`telemetry`]: logs, access lines, metrics and traces.
//! 8. [`config`]: `routes.toml` read and checked, one file per section.
//! 9. [`base`]: small things every layer uses — the error→status mapping, JSON, header
//!    rules, bodies, templates, files, TLS client set-up, worker loops.
//!
//! (The request handler runs the edge checks, so `request` sits above `edge` in the
//! import order although a request meets those checks first.)

pub mod admin;
pub mod base;
pub mod config;
pub mod demo;
pub mod edge;
pub mod listener;
pub mod request;
pub mod state;
pub mod telemetry;
pub mod upstream;
