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
use crate::error::{Error, Result};

/// Reads a private key (see the module documentation for the forms) and a certificate file
/// holding the leaf first, then any chain certificates (PEM or one DER certificate).
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
    let info = PrivateKeyInfo::try_from(der)
        .map_err(|e| Error::Credentials(format!("cannot read the PKCS#8 private key ({e})")))?;
    let algorithm = info.algorithm.oid;
    match algorithm {
        RSA_ENCRYPTION | ED25519 => {}
        EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| Error::Credentials("the EC private key names no curve".into()))?;
            check_curve(curve)?;
        }
        other => {
            return Err(Error::Credentials(format!(
                "{} private keys cannot sign here; use RSA, ECDSA P-256/P-384 or Ed25519",
                key_type_name(other)
            )));
        }
    }
    InMemorySigningKeyPair::from_pkcs8_der(der).map_err(|e| {
        Error::Credentials(format!(
            "cannot use the {} private key ({e})",
            key_type_name(algorithm)
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
            Err(Error::Credentials(format!(
                "EC keys on curve {name} cannot sign here; use P-256 or P-384"
            )))
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
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::Credentials("the PEM key file is not text".into()))?;
    let Some((label, block)) = KEY_LABELS
        .iter()
        .find_map(|label| pem_block(text, label).map(|block| (*label, block)))
    else {
        let found = text
            .lines()
            .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
            .collect::<Vec<_>>();
        return Err(Error::Credentials(format!(
            "the key file holds no private key (found: {}); expected PEM \"BEGIN PRIVATE \
             KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"",
            if found.is_empty() {
                "no PEM blocks".to_owned()
            } else {
                found.join(", ")
            }
        )));
    };
    if label == "ENCRYPTED PRIVATE KEY" || block.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(encrypted_key());
    }
    let (_, der) = der::pem::decode_vec(block.as_bytes())
        .map_err(|e| Error::Credentials(format!("cannot decode the PEM {label} block ({e})")))?;
    let der = SecretDocument::try_from(der)
        .map_err(|e| Error::Credentials(format!("the PEM {label} block is not DER ({e})")))?;
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
            .map_err(|e| Error::Credentials(format!("the DER private key is damaged ({e})")));
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
    Err(Error::Credentials(
        "cannot read the private key: expected PEM, or DER PKCS#8, PKCS#1 RSA or SEC1 EC, \
         unencrypted, holding RSA, ECDSA P-256/P-384 or Ed25519"
            .into(),
    ))
}

fn encrypted_key() -> Error {
    Error::Credentials(
        "the private key is encrypted; give the key and certificate as a .p12/.pfx file with \
         its password instead, or decrypt the key (openssl pkey -in <key> -out <decrypted>) \
         and keep the result out of version control"
            .into(),
    )
}

fn pkcs1_to_pkcs8(der: &[u8]) -> Result<SecretDocument> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let key = rsa::RsaPrivateKey::from_pkcs1_der(der)
        .map_err(|e| Error::Credentials(format!("cannot read the PKCS#1 RSA private key ({e})")))?;
    key.to_pkcs8_der()
        .map_err(|e| Error::Credentials(format!("cannot convert the RSA key to PKCS#8 ({e})")))
}

/// SEC1 `ECPrivateKey` (RFC 5915): the curve is in the key, the PKCS#8 wrapper repeats it.
fn sec1_to_pkcs8(der: &[u8]) -> Result<SecretDocument> {
    let key = Sec1PrivateKey::from_der(der)
        .map_err(|e| Error::Credentials(format!("cannot read the SEC1 EC private key ({e})")))?;
    let curve = key
        .parameters
        .ok_or_else(|| Error::Credentials("the SEC1 EC private key names no curve".into()))?;
    check_curve(curve)?;
    if key.public_key.is_none() {
        return Err(Error::Credentials(
            "the SEC1 EC private key lacks its public key; rewrite it with \
             openssl pkey -in <key> -out <key.pem>"
                .into(),
        ));
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
        .map_err(|e| Error::Credentials(format!("cannot convert the EC key to PKCS#8 ({e})")))
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
