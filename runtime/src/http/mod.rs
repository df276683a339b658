//! The front door: one hyper 1.x HTTP/1.1 server on loopback (by default) that answers the
//! OpenWork client handshake, the supervisor's API, and proxies `/opencode/*`.
//!
//! - [`server`]: the accept loop and connection limits.
//! - [`api`]: routing and handlers.
//! - [`model`]: the request and response bodies, which the OpenAPI document describes.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers and the bodies.
//! - [`auth`]: the tokens (client, host, paired devices), compared in constant time.
//! - [`devices`]: pairing and paired devices.
//! - [`proxy`]: the streaming reverse proxy to opencode (WebSocket upgrades included).
//! - [`sse`]: supervisor events as Server-Sent Events.
//! - [`response`]: the body type and JSON errors.

pub mod api;
pub mod auth;
pub mod devices;
pub mod model;
pub mod openapi;
pub mod proxy;
pub mod response;
pub mod server;
pub mod sse;

/// Resolves once `shutdown` is true (or its sender is gone). The `Ref` that
/// `wait_for` returns is dropped inside, so callers' futures stay `Send`.
pub async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
