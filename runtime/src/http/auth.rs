//! Tokens: who may call what. The client token for the API and the opencode proxy, the host
//! token (held by the desktop app that started the server) for the privileged routes —
//! shutdown, restarts, pairing, devices — and one token per paired device, with the client
//! token's access ([`crate::remote::devices`]). The host token is accepted everywhere.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::TOKEN_HEADER;
use crate::remote::devices::{DeviceSession, Devices};

/// The tokens (their digests). Debug never prints them.
pub struct Tokens {
    client: [u8; 32],
    host: [u8; 32],
    devices: Option<Arc<Devices>>,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What its token allows.
    pub access: Access,
    /// The paired device whose token it was, if it was one.
    pub device: Option<DeviceSession>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([redacted])")
    }
}

/// What a request's credentials allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No token, or a wrong one.
    None,
    /// The client token.
    Client,
    /// The host token.
    Host,
}

impl Tokens {
    /// Keeps only the tokens' SHA-256: comparing fixed-length digests in constant time
    /// leaks neither the content nor the length of a token.
    pub fn new(client: &str, host: &str) -> Tokens {
        Tokens {
            client: Sha256::digest(client.as_bytes()).into(),
            host: Sha256::digest(host.as_bytes()).into(),
            devices: None,
        }
    }

    /// Also accepts the paired devices' tokens (with the client token's access).
    pub fn with_devices(mut self, devices: Arc<Devices>) -> Tokens {
        self.devices = Some(devices);
        self
    }

    /// The access a request's `Authorization: Bearer …` or `X-OpenWork-Token` grants.
    pub fn access(&self, headers: &HeaderMap) -> Access {
        self.authenticate(headers).access
    }

    /// Who sent a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Caller {
        let nobody = Caller {
            access: Access::None,
            device: None,
        };
        let Some(presented) = presented_token(headers) else {
            return nobody;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every comparison always runs, so timing does not tell which token matched.
        let is_host = bool::from(digest.ct_eq(&self.host));
        let is_client = bool::from(digest.ct_eq(&self.client));
        let device = self.devices.as_ref().and_then(|d| d.authenticate(&digest));
        let access = if is_host {
            Access::Host
        } else if is_client || device.is_some() {
            Access::Client
        } else {
            Access::None
        };
        Caller { access, device }
    }
}

fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        let scheme = b"bearer ";
        if bytes.len() > scheme.len() && bytes[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(bytes[scheme.len()..].trim_ascii());
        }
    }
    headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        map
    }

    #[test]
    fn tokens_grant_their_access_and_nothing_else_does() {
        let tokens = Tokens::new("client-secret", "host-secret");
        assert_eq!(tokens.access(&HeaderMap::new()), Access::None);
        assert_eq!(
            tokens.access(&headers("authorization", "Bearer client-secret")),
            Access::Client
        );
        assert_eq!(
            tokens.access(&headers("authorization", "bearer  host-secret ")),
            Access::Host
        );
        assert_eq!(
            tokens.access(&headers("x-openwork-token", "client-secret")),
            Access::Client
        );
        for wrong in [
            "Bearer client-secre",
            "Bearer client-secretx",
            "Basic client-secret",
            "client-secret",
            "Bearer ",
        ] {
            assert_eq!(
                tokens.access(&headers("authorization", wrong)),
                Access::None,
                "{wrong}"
            );
        }
        assert_eq!(
            tokens.access(&headers("x-openwork-token", "")),
            Access::None
        );
    }

    #[test]
    fn debug_does_not_print_tokens() {
        let tokens = Tokens::new("client-secret", "host-secret");
        assert!(!format!("{tokens:?}").contains("secret"));
    }
}
