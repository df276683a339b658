//! Keys and certificates in PEM (or DER) files.

use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair};

use super::SigningIdentity;
use crate::error::{Error, Result};

/// Reads an unencrypted PKCS#8 private key (PEM `PRIVATE KEY` or DER) and a certificate
/// file holding the leaf first, then any chain certificates (PEM or one DER certificate).
pub fn load(key: &[u8], certificates: &[u8]) -> Result<SigningIdentity> {
    let key = parse_private_key(key)?;
    let mut certificates = parse_certificates(certificates)?;
    if certificates.is_empty() {
        return Err(Error::Credentials(
            "the certificate file holds no certificate".into(),
        ));
    }
    let leaf = certificates.remove(0);
    SigningIdentity::new(Box::new(key), leaf, certificates)
}

/// A private key from PKCS#8 PEM or DER.
pub fn parse_private_key(data: &[u8]) -> Result<InMemorySigningKeyPair> {
    let parsed = if looks_like_pem(data) {
        InMemorySigningKeyPair::from_pkcs8_pem(data)
    } else {
        InMemorySigningKeyPair::from_pkcs8_der(data)
    };
    parsed.map_err(|e| {
        Error::Credentials(format!(
            "cannot read the private key ({e}); expected an unencrypted PKCS#8 key \
             (PEM \"BEGIN PRIVATE KEY\" or DER) holding RSA, ECDSA P-256/P-384 or Ed25519"
        ))
    })
}

/// Certificates from PEM (any number) or DER (one).
pub fn parse_certificates(data: &[u8]) -> Result<Vec<CapturedX509Certificate>> {
    let parsed = if looks_like_pem(data) {
        CapturedX509Certificate::from_pem_multiple(data)
    } else {
        CapturedX509Certificate::from_der(data.to_vec()).map(|c| vec![c])
    };
    parsed.map_err(|e| {
        Error::Credentials(format!(
            "cannot read the certificate ({e}); expected PEM \"BEGIN CERTIFICATE\" blocks or \
             one DER certificate"
        ))
    })
}

fn looks_like_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}
