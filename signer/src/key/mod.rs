//! Where signing keys come from, and the one type every signing operation takes.
//!
//! A [`SigningIdentity`] is a private key that can sign plus the certificate chain that
//! vouches for it. The key is an [`x509_certificate::KeyInfoSigner`]: apple-codesign
//! signs with that trait, so Authenticode and Mach-O signing share one abstraction, and a
//! key that never leaves its hardware (PKCS#11) plugs in by implementing it.
//!
//! Sources: [`pem`] (key and certificates as PEM or DER files), [`pkcs12`] (a `.p12`/`.pfx`
//! file as OpenSSL 3 writes it), [`pkcs11`] (a token or HSM through its module). Keys in
//! files are for tests and internal PKI: certificates from public CAs have lived on hardware
//! since 2023.

pub mod pem;
pub mod pkcs11;
pub mod pkcs12;

use x509_certificate::{CapturedX509Certificate, KeyInfoSigner};

use crate::error::{CredentialsError, Result};

/// A signing key and its certificates.
pub struct SigningIdentity {
    key: Box<dyn KeyInfoSigner + Send + Sync>,
    certificate: CapturedX509Certificate,
    chain: Vec<CapturedX509Certificate>,
}

impl SigningIdentity {
    /// Pairs `key` with its leaf `certificate` and the `chain` above it (intermediates,
    /// optionally the root; the leaf is dropped from it if present). Refuses a certificate
    /// whose public key is not the key's: a mismatched pair would sign files that no
    /// verifier accepts.
    pub fn new(
        key: Box<dyn KeyInfoSigner + Send + Sync>,
        certificate: CapturedX509Certificate,
        chain: Vec<CapturedX509Certificate>,
    ) -> Result<Self> {
        if key.public_key_data() != certificate.public_key_data() {
            return Err(CredentialsError::KeyMismatch {
                certificate: describe_certificate(&certificate),
            }
            .into());
        }
        let chain = chain
            .into_iter()
            .filter(|c| c.constructed_data() != certificate.constructed_data())
            .collect();
        Ok(Self {
            key,
            certificate,
            chain,
        })
    }

    /// The key, as apple-codesign and the CMS builders take it.
    pub fn key(&self) -> &(dyn KeyInfoSigner + Send + Sync) {
        self.key.as_ref()
    }

    /// The leaf (code-signing) certificate.
    pub fn certificate(&self) -> &CapturedX509Certificate {
        &self.certificate
    }

    /// The certificates above the leaf, as given.
    pub fn chain(&self) -> &[CapturedX509Certificate] {
        &self.chain
    }

    /// A one-line description for logs: subject and issuer common names, never key material.
    pub fn describe(&self) -> String {
        describe_certificate(&self.certificate)
    }
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("certificate", &self.describe())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// `"subject" (issued by "issuer")`, by common names.
pub fn describe_certificate(certificate: &CapturedX509Certificate) -> String {
    format!(
        "\"{}\" (issued by \"{}\")",
        certificate
            .subject_common_name()
            .unwrap_or_else(|| "no common name".into()),
        certificate
            .issuer_common_name()
            .unwrap_or_else(|| "no common name".into())
    )
}
