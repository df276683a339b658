//! Test support shared by the workspace's test code (the signer's `testing` feature, the
//! packager's tests, the end-to-end tests and their fixture sidecar).
//!
//! - [`http`]: the one HTTP/1.1 server every stand-in runs on (a time-stamp authority, Azure
//!   Artifact Signing, an npm registry, opencode's health endpoint, the fixture sidecar).
//!   Stand-ins are plain functions from [`http::Request`] to [`http::Response`], or async
//!   hyper handlers ([`http::HyperServer`]); the protocol is hyper's, so no test carries its
//!   own request parser.

#![deny(missing_docs)]

pub mod http;
