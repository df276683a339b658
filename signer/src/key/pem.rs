//! Keys and certificates in PEM (or DER) files.
//!
//! Private keys come as OpenSSL writes them: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA
//! (`BEGIN RSA PRIVATE KEY`) or SEC1 EC (`BEGIN EC PRIVATE KEY`, possibly after an
//! `EC PARAMETERS` block), PEM or DER. The latter two are converted to PKCS#8, the one form
//! the signing code reads. Encrypted keys are refused with a way out: a password belongs with
//! a `.p12` file, where it is a deliberate part of the format.

use der::asn1::{BitString, OctetString};
use der::oid::ObjectIdentifier;
use der::{Decode, Sequence};
use rsa::pkcs8::{EncodePrivateKey, PrivateKeyInfo, SecretDocument};
use spki::AlgorithmIdentifierRef;
use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair};

use super::SigningIdentity;
use crate::error::{BoxError, CredentialsError, Error, Result};

/// Reads a private key (see the module documentation for the forms) and a certificate file
/// holding the leaf first, then any chain certificates (PEM or one DER certificate).
pub fn load(key: &[u8], certificates: &[u8]) -> Result<SigningIdentity> {
    let key = parse_private_key(key)?;
    let mut certificates = parse_certificates(certificates)?;
    if certificates.is_empty() {
        return Err(CredentialsError::NoCertificate {
            what: "the certificate file",
        }
        .into());
    }
    let leaf = certificates.remove(0);
    SigningIdentity::new(Box::new(key), leaf, certificates)
}

/// A private key from PEM or DER: PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted.
pub fn parse_private_key(data: &[u8]) -> Result<InMemorySigningKeyPair> {
    let pkcs8 = if looks_like_pem(data) {
        pem_to_pkcs8(data)?
    } else {
        der_to_pkcs8(data)?
    };
    private_key_from_pkcs8(pkcs8.as_bytes())
}

/// A signing key from PKCS#8 DER, with an error naming the key type when it is one the
/// signers cannot use.
pub(crate) fn private_key_from_pkcs8(der: &[u8]) -> Result<InMemorySigningKeyPair> {
    let info =
        PrivateKeyInfo::try_from(der).map_err(|e| unreadable("the PKCS#8 private key", e))?;
    let algorithm = info.algorithm.oid;
    match algorithm {
        RSA_ENCRYPTION | ED25519 => {}
        EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| CredentialsError::NoCurve {
                    what: "the EC private key",
                })?;
            check_curve(curve)?;
        }
        other => {
            return Err(CredentialsError::UnsupportedKey {
                key: format!("{} private keys", key_type_name(other)),
                supported: "RSA, ECDSA P-256/P-384 or Ed25519",
            }
            .into());
        }
    }
    InMemorySigningKeyPair::from_pkcs8_der(der)
        .map_err(|e| unreadable(format!("the {} private key", key_type_name(algorithm)), e))
}

/// Certificates from PEM (any number) or DER (one).
pub fn parse_certificates(data: &[u8]) -> Result<Vec<CapturedX509Certificate>> {
    let parsed = if looks_like_pem(data) {
        CapturedX509Certificate::from_pem_multiple(data)
    } else {
        CapturedX509Certificate::from_der(data.to_vec()).map(|c| vec![c])
    };
    parsed.map_err(|e| {
        CredentialsError::Unreadable {
            what: "the certificate".into(),
            source: e.into(),
            hint: "; expected PEM \"BEGIN CERTIFICATE\" blocks or one DER certificate",
        }
        .into()
    })
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");

/// Key algorithms by name, for error messages about the ones that cannot sign.
const KEY_TYPES: [(ObjectIdentifier, &str); 10] = [
    (RSA_ENCRYPTION, "RSA"),
    (
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10"),
        "RSA-PSS",
    ),
    (EC_PUBLIC_KEY, "EC"),
    (ObjectIdentifier::new_unwrap("1.2.840.10040.4.1"), "DSA"),
    (
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.3.1"),
        "Diffie-Hellman",
    ),
    (ObjectIdentifier::new_unwrap("1.3.101.110"), "X25519"),
    (ObjectIdentifier::new_unwrap("1.3.101.111"), "X448"),
    (ED25519, "Ed25519"),
    (ObjectIdentifier::new_unwrap("1.3.101.113"), "Ed448"),
    (ObjectIdentifier::new_unwrap("1.2.156.10197.1.301"), "SM2"),
];

fn key_type_name(algorithm: ObjectIdentifier) -> String {
    KEY_TYPES
        .iter()
        .find(|(oid, _)| *oid == algorithm)
        .map_or_else(
            || format!("key type {algorithm}"),
            |(_, name)| (*name).to_owned(),
        )
}

fn check_curve(curve: ObjectIdentifier) -> Result<()> {
    match curve {
        P256 | P384 => Ok(()),
        other => {
            let name = match other {
                P521 => "P-521".to_owned(),
                SECP256K1 => "secp256k1".to_owned(),
                _ => other.to_string(),
            };
            Err(CredentialsError::UnsupportedKey {
                key: format!("EC keys on curve {name}"),
                supported: "P-256 or P-384",
            }
            .into())
        }
    }
}

/// The labels of PEM blocks that hold private keys, in the order they are looked for.
const KEY_LABELS: [&str; 4] = [
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

fn pem_to_pkcs8(data: &[u8]) -> Result<SecretDocument> {
    let text =
        std::str::from_utf8(data).map_err(|e| unreadable("the PEM key file (as text)", e))?;
    let Some((label, block)) = KEY_LABELS
        .iter()
        .find_map(|label| pem_block(text, label).map(|block| (*label, block)))
    else {
        let found = text
            .lines()
            .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
            .collect::<Vec<_>>();
        return Err(CredentialsError::NoPrivateKey {
            found: if found.is_empty() {
                "no PEM blocks".to_owned()
            } else {
                found.join(", ")
            },
        }
        .into());
    };
    if label == "ENCRYPTED PRIVATE KEY" || block.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(encrypted_key());
    }
    let (_, der) = der::pem::decode_vec(block.as_bytes())
        .map_err(|e| unreadable(format!("the PEM {label} block"), e.to_string()))?;
    let der = SecretDocument::try_from(der)
        .map_err(|e| unreadable(format!("the PEM {label} block as DER"), e))?;
    match label {
        "RSA PRIVATE KEY" => pkcs1_to_pkcs8(der.as_bytes()),
        "EC PRIVATE KEY" => sec1_to_pkcs8(der.as_bytes()),
        _ => Ok(der),
    }
}

/// The text of the first `-----BEGIN <label>-----` … `-----END <label>-----` block.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

/// DER keys carry no label: the structure tells the form.
fn der_to_pkcs8(data: &[u8]) -> Result<SecretDocument> {
    if PrivateKeyInfo::try_from(data).is_ok() {
        return SecretDocument::try_from(data)
            .map_err(|e| unreadable("the DER private key (damaged)", e));
    }
    if EncryptedShape::from_der(data).is_ok() {
        return Err(encrypted_key());
    }
    if rsa::pkcs1::RsaPrivateKey::try_from(data).is_ok() {
        return pkcs1_to_pkcs8(data);
    }
    if Sec1PrivateKey::from_der(data).is_ok() {
        return sec1_to_pkcs8(data);
    }
    Err(CredentialsError::UnknownKeyFormat.into())
}

fn encrypted_key() -> Error {
    CredentialsError::EncryptedKey.into()
}

fn pkcs1_to_pkcs8(der: &[u8]) -> Result<SecretDocument> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let key = rsa::RsaPrivateKey::from_pkcs1_der(der)
        .map_err(|e| unreadable("the PKCS#1 RSA private key", e))?;
    key.to_pkcs8_der()
        .map_err(|e| unreadable("the RSA key as PKCS#8 (converting it)", e))
}

/// SEC1 `ECPrivateKey` (RFC 5915): the curve is in the key, the PKCS#8 wrapper repeats it.
fn sec1_to_pkcs8(der: &[u8]) -> Result<SecretDocument> {
    let key =
        Sec1PrivateKey::from_der(der).map_err(|e| unreadable("the SEC1 EC private key", e))?;
    let curve = key.parameters.ok_or(CredentialsError::NoCurve {
        what: "the SEC1 EC private key",
    })?;
    check_curve(curve)?;
    if key.public_key.is_none() {
        return Err(CredentialsError::NoPublicKey.into());
    }
    let curve_der = der::Encode::to_der(&curve).expect("an OID encodes");
    let parameters = der::AnyRef::try_from(curve_der.as_slice()).expect("an encoded OID");
    let info = PrivateKeyInfo::new(
        AlgorithmIdentifierRef {
            oid: EC_PUBLIC_KEY,
            parameters: Some(parameters),
        },
        der,
    );
    SecretDocument::encode_msg(&info)
        .map_err(|e| unreadable("the EC key as PKCS#8 (converting it)", e))
}

/// A key or certificate that does not decode.
fn unreadable(what: impl Into<String>, error: impl Into<BoxError>) -> Error {
    CredentialsError::Unreadable {
        what: what.into(),
        source: error.into(),
        hint: "",
    }
    .into()
}

/// `ECPrivateKey` (RFC 5915 §3).
#[derive(Sequence)]
struct Sec1PrivateKey {
    version: u8,
    private_key: OctetString,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    parameters: Option<ObjectIdentifier>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    public_key: Option<BitString>,
}

/// `EncryptedPrivateKeyInfo` (RFC 5958 §3), only to recognise one.
#[derive(Sequence)]
struct EncryptedShape {
    algorithm: spki::AlgorithmIdentifierOwned,
    data: OctetString,
}

fn looks_like_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}
