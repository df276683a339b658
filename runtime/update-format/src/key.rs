//! Public keys in TUF's `ecdsa` form and signature checks.
//!
//! ```json
//! {"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256",
//!  "keyval": {"public": "-----BEGIN PUBLIC KEY-----\n…\n-----END PUBLIC KEY-----"}}
//! ```
//!
//! The public key is a PEM SubjectPublicKeyInfo of a P-256 point, as `tough` and
//! python-tuf write it; signatures are ASN.1 DER ECDSA over SHA-256 of the canonical JSON,
//! hex-encoded. A key's ID is the SHA-256 of its canonical JSON (TUF §4.2), so a root that
//! names a key under another ID is refused rather than trusted.
//!
//! Only P-256: it is what every key source of the project signs with (a PEM file, PKCS#11
//! tokens, cloud KMS commands), what `tough` verifies, and what `ring` (already in the stub)
//! verifies. Other key types in a root are kept (so the root's signature still verifies)
//! but can never count towards a threshold.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
pub use crate::ids::KeyId;

/// `keytype` of the keys this crate verifies.
pub const KEY_TYPE: &str = "ecdsa";
/// `scheme` of the keys this crate verifies.
pub const SCHEME: &str = "ecdsa-sha2-nistp256";

/// The DER of a P-256 SubjectPublicKeyInfo up to the point: SEQUENCE { SEQUENCE { OID
/// id-ecPublicKey, OID prime256v1 }, BIT STRING (0 unused bits) }. DER has one encoding, so
/// every P-256 SPKI starts with exactly these bytes and continues with the 65-byte
/// uncompressed point: comparing is the whole parse (no ASN.1 reader for 26 fixed bytes).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed P-256 point: 0x04, x, y.
const P256_POINT_LEN: usize = 65;

/// A public key as a root lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// `ecdsa` for the keys this crate verifies.
    pub keytype: String,
    /// `ecdsa-sha2-nistp256` for the keys this crate verifies.
    pub scheme: String,
    /// The key material.
    pub keyval: KeyVal,
    /// Fields other tools write (`keyid_hash_algorithms`): kept, so the key ID computed
    /// over the whole object is the one they computed.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `keyval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The PEM SubjectPublicKeyInfo.
    pub public: String,
}

impl PublicKey {
    /// An ECDSA P-256 key from its uncompressed point (0x04 ‖ x ‖ y), as `ring` and PKCS#11
    /// tokens give it.
    pub fn ecdsa_p256(point: &[u8]) -> Result<Self> {
        if point.len() != P256_POINT_LEN || point[0] != 0x04 {
            return Err(Error::BadKey {
                key: "the given key".into(),
                reason: format!(
                    "a P-256 public key is a 65-byte uncompressed point (0x04, x, y); got {} bytes",
                    point.len()
                ),
            });
        }
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        let public = pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &spki)
            .expect("a 91-byte SPKI encodes");
        Ok(Self {
            keytype: KEY_TYPE.into(),
            scheme: SCHEME.into(),
            keyval: KeyVal {
                public: public.trim_end().to_owned(),
            },
            extra: BTreeMap::new(),
        })
    }

    /// A key from a PEM "PUBLIC KEY" block (what `openssl ec -pubout` writes).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let point = spki_point(pem).map_err(|reason| Error::BadKey {
            key: "the PEM public key".into(),
            reason,
        })?;
        Self::ecdsa_p256(&point)
    }

    /// The key's ID: SHA-256 of its canonical JSON.
    pub fn key_id(&self) -> KeyId {
        let canonical = crate::cjson::to_vec(self).expect("a key has no floats");
        KeyId(hex::encode(Sha256::digest(canonical)))
    }

    /// The uncompressed point, when this is a P-256 key this crate can verify with.
    pub fn p256_point(&self) -> Result<Vec<u8>> {
        if self.keytype != KEY_TYPE || self.scheme != SCHEME {
            return Err(Error::BadKey {
                key: self.key_id().to_string(),
                reason: format!(
                    "keytype {:?} with scheme {:?}; only {KEY_TYPE:?} with {SCHEME:?} is verified",
                    self.keytype, self.scheme
                ),
            });
        }
        spki_point(&self.keyval.public).map_err(|reason| Error::BadKey {
            key: self.key_id().to_string(),
            reason,
        })
    }

    /// Whether `signature` (DER) over `message` verifies with this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(point) = self.p256_point() else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
            .verify(message, signature)
            .is_ok()
    }
}

/// The point of a P-256 SPKI in PEM.
fn spki_point(pem: &str) -> std::result::Result<Vec<u8>, String> {
    let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map_err(|e| format!("not a PEM block ({e})"))?;
    if label != "PUBLIC KEY" {
        return Err(format!(
            "a PEM \"{label}\" block; expected \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
        ));
    }
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == P256_POINT_LEN && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("not an uncompressed ECDSA P-256 public key".into()),
    }
}

/// Signs with a P-256 key held in memory (PKCS#8): the packager's PEM key source and the
/// tests. Hardware keys sign through the packager's own key sources.
pub struct InMemoryKey {
    pair: ring::signature::EcdsaKeyPair,
    public: PublicKey,
}

impl InMemoryKey {
    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &rng,
        )
        .map_err(|e| Error::BadKey {
            key: "the private key".into(),
            reason: format!("not an ECDSA P-256 PKCS#8 key ({e})"),
        })?;
        let public = PublicKey::ecdsa_p256(ring::signature::KeyPair::public_key(&pair).as_ref())?;
        Ok(Self { pair, public })
    }

    /// A new random key, as PKCS#8 DER (tests, and `update-repo` making a test repository).
    pub fn generate_pkcs8() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("the system's random source works")
        .as_ref()
        .to_vec()
    }
}

impl fmt::Debug for InMemoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryKey")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

/// Something that signs metadata: the writer's side of a key.
pub trait Signer {
    /// The public key, as the root lists it.
    fn public_key(&self) -> &PublicKey;
    /// An ASN.1 DER ECDSA P-256/SHA-256 signature over `message`.
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignError>;
}

/// A key source that could not sign; the message says why (never with key material).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignError(pub String);

impl Signer for InMemoryKey {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        self.pair
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignError("ring could not sign".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_what_its_public_key_verifies() {
        let key = InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8()).unwrap();
        let signature = key.sign(b"message").unwrap();
        assert!(key.public_key().verifies(b"message", &signature));
        assert!(!key.public_key().verifies(b"messagf", &signature));
        let other = InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8()).unwrap();
        assert!(!other.public_key().verifies(b"message", &signature));
    }

    #[test]
    fn the_pem_round_trips_and_the_key_id_is_the_hash_of_the_canonical_key() {
        let key = InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8()).unwrap();
        let public = key.public_key();
        assert_eq!(&PublicKey::from_pem(&public.keyval.public).unwrap(), public);
        let canonical = crate::cjson::to_vec(public).unwrap();
        // OLPC canonical JSON escapes only `"` and backslash: the PEM's line breaks are raw bytes.
        assert!(canonical.starts_with(
            b"{\"keytype\":\"ecdsa\",\"keyval\":{\"public\":\"-----BEGIN PUBLIC KEY-----\n"
        ));
        assert_eq!(public.key_id().0, hex::encode(Sha256::digest(&canonical)));
    }

    #[test]
    fn keys_that_are_not_p256_are_named() {
        let error =
            PublicKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .unwrap_err();
        assert!(
            error.to_string().contains("expected \"PUBLIC KEY\""),
            "{error}"
        );
        let mut rsa = InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8())
            .unwrap()
            .public_key()
            .clone();
        rsa.keytype = "rsa".into();
        assert!(
            rsa.p256_point()
                .unwrap_err()
                .to_string()
                .contains("only \"ecdsa\"")
        );
    }
}
