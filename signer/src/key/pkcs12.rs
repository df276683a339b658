//! PKCS#12 (`.p12`/`.pfx`) files: one private key with its certificate and chain.
//!
//! Read with p12-keystore because it handles both what OpenSSL 3 writes by default (PBES2
//! with AES-256-CBC, SHA-256 MAC) and the legacy algorithms (3DES, RC2) of older tools and
//! `openssl pkcs12 -legacy`; apple-codesign's own reader panics on the former. The leaf is
//! the certificate whose public key is the private key's: bag order and local key IDs are
//! not trusted (apple-codesign's reader returns the CA of a chained file as its leaf).

use p12_keystore::{KeyStore, KeyStoreEntry};
use x509_certificate::CapturedX509Certificate;
use x509_certificate::Sign;

use super::{SigningIdentity, pem};
use crate::error::{CredentialsError, Error, Pkcs12Error, Result};

/// Reads a PKCS#12 file's private key, the certificate that belongs to it and the other
/// certificates (as the chain, issuers first in signing order).
pub fn load(data: &[u8], password: &str) -> Result<SigningIdentity> {
    let store = KeyStore::from_pkcs12(data, password).map_err(open_error)?;

    let mut keys = Vec::new();
    let mut certificates: Vec<CapturedX509Certificate> = Vec::new();
    let mut add_certificate = |der: &[u8]| -> Result<()> {
        let certificate = CapturedX509Certificate::from_der(der.to_vec())
            .map_err(|e| Pkcs12Error::Certificate { source: e.into() })?;
        if !certificates.contains(&certificate) {
            certificates.push(certificate);
        }
        Ok(())
    };
    for (alias, entry) in store.entries() {
        match entry {
            KeyStoreEntry::PrivateKeyChain(chain) => {
                keys.push((alias.clone(), chain.key()));
                for certificate in chain.chain() {
                    add_certificate(certificate.as_der())?;
                }
            }
            KeyStoreEntry::Certificate(certificate) => add_certificate(certificate.as_der())?,
            KeyStoreEntry::Secret(_) => {}
        }
    }

    let key = match keys.as_slice() {
        [] => {
            return Err(Pkcs12Error::NoKey.into());
        }
        [(_, key)] => pem::private_key_from_pkcs8(key)?,
        several => {
            let aliases = several
                .iter()
                .map(|(alias, _)| format!("\"{alias}\""))
                .collect::<Vec<_>>();
            return Err(Pkcs12Error::SeveralKeys {
                count: several.len(),
                names: aliases.join(", "),
            }
            .into());
        }
    };

    let public_key = key.public_key_data();
    let leaf_index = certificates
        .iter()
        .position(|c| c.public_key_data() == public_key)
        .ok_or(Pkcs12Error::NoMatchingCertificate {
            count: certificates.len(),
        })?;
    let leaf = certificates.remove(leaf_index);
    let chain = signing_order(&leaf, certificates);
    SigningIdentity::new(Box::new(key), leaf, chain)
}

/// The issuer of the leaf, its issuer and so on, then any certificates outside that path
/// (cross-certificates, other roots) as they came.
fn signing_order(
    leaf: &CapturedX509Certificate,
    mut rest: Vec<CapturedX509Certificate>,
) -> Vec<CapturedX509Certificate> {
    let mut ordered = Vec::with_capacity(rest.len());
    let mut current = leaf.clone();
    while let Some(index) = rest.iter().position(|c| {
        !current.subject_is_issuer() && current.verify_signed_by_certificate(c).is_ok()
    }) {
        current = rest.remove(index);
        ordered.push(current.clone());
    }
    ordered.extend(rest);
    ordered
}

fn open_error(error: p12_keystore::error::Error) -> Error {
    use p12_keystore::error::Error as P12;
    let error = match error {
        P12::MacError(_) => Pkcs12Error::WrongPassword,
        // Without a MAC, a wrong password shows as undecryptable content.
        P12::UnpadError | P12::Pkcs5Error(_) => Pkcs12Error::Undecryptable,
        P12::UnsupportedEncryptionScheme | P12::UnsupportedMacAlgorithm => {
            Pkcs12Error::UnsupportedProtection { source: error }
        }
        source => Pkcs12Error::Unreadable { source },
    };
    CredentialsError::Pkcs12(error).into()
}
