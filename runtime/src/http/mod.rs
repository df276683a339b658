//! The front door: one hyper 1.x HTTP/1.1 server on loopback (by default) that answers the
//! OpenWork client handshake, the supervisor's API, and proxies `/opencode/*`.

pub mod proxy;
pub mod response;
