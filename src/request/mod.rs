//! One request through a route: the handler runs its steps in order (the route, CORS
//! preflight, rate limit, token, parameters and body, route cache), then fans out
//! to the backends and merges their answers, streams one (passthrough) or tunnels a
//! WebSocket; last, [`wire`] makes the answer what goes on the wire (compression,
//! etag and 304, cache-control, security headers). [`gateway`] is the config
//! compiled for serving, which every step reads.

pub mod backend;
pub mod fanout;
pub mod gateway;
pub mod handler;
pub mod merge;
pub mod message;
pub mod outbound;
pub mod passthrough;
pub mod record;
pub mod router;
pub mod websocket;
pub mod wire;
