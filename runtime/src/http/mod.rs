//! The front door: one hyper 1.x HTTP/1.1 server on loopback (by default) that answers the
//! OpenWork client handshake, the supervisor's API, and proxies `/opencode/*`.
//!
//! - [`server`]: the accept loop.
//! - [`connections`]: connection standing, limits and failure counts.
//! - [`log_limit`]: log lines about refused requests, limited in rate.
//! - [`api`]: routing and handlers.
//! - [`model`]: the request and response bodies, which the OpenAPI document describes.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers and the bodies.
//! - [`auth`]: the tokens (client, host, paired devices), compared in constant time.
//! - [`proxy`]: the streaming reverse proxy to opencode (WebSocket upgrades included).
//! - [`sse`]: supervisor events as Server-Sent Events.
//! - [`response`]: the body type and JSON errors.

pub mod api;
pub mod auth;
pub mod connections;
pub mod log_limit;
pub mod model;
pub mod openapi;
pub mod proxy;
pub mod response;
pub mod server;
pub mod sse;

use std::time::Duration;

/// The largest request head (request line + headers) accepted; a bigger one is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A body the server reads itself (a pairing message, a workspace switch: a few KiB at
/// most) must arrive whole within this time, or the request gets 408. Without it, a
/// complete head and a body that never comes held a connection for as long as the peer
/// liked.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The path prefix under which opencode's own API is passed through (`/opencode/…`).
pub const OPENCODE_PREFIX: &str = "/opencode";
/// The header a token may come in instead of `Authorization: Bearer` (lower case, as
/// `http::HeaderName` holds it; header names are case-insensitive).
pub const TOKEN_HEADER: &str = "x-openwork-token";

/// Resolves once `shutdown` is true (or its sender is gone). The `Ref` that
/// `wait_for` returns is dropped inside, so callers' futures stay `Send`.
pub async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
