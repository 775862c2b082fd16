//! manifold: a config-driven API gateway and backend-for-frontend aggregator.
//!
//! A request's path through the crate, in order: [`server`] accepts it, [`handler`]
//! matches it with [`router`] and runs the route: [`fanout`] calls the backends through
//! their [`upstream`] clients and [`merge`] shapes and joins the answers, or
//! [`passthrough`] streams one ([`websocket`] tunnels an upgrade). [`error`] is the one place a failure becomes a status.
//! [`gateway`] holds a config compiled for serving; [`config`] loads and checks it.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod backend;
pub mod body;
pub mod budget;
pub mod cache;
pub mod config;
pub mod connection;
pub mod cors;
pub mod demo;
pub mod descriptors;
pub mod error;
pub mod fanout;
pub mod forward;
pub mod gateway;
pub mod handler;
pub mod json;
pub mod merge;
pub mod metrics;
pub mod openapi;
pub mod passthrough;
pub mod ratelimit;
pub mod redact;
pub mod router;
pub mod server;
pub mod shared;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod watch;
pub mod websocket;
pub mod worker;
