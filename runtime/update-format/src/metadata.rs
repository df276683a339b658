//! The four roles of a TUF 1.0 repository, their signed envelopes, and signing them.
//!
//! Every role file is `{"signed": {…}, "signatures": [{"keyid", "sig"}]}`; the signature
//! covers the canonical JSON of `signed` ([`crate::cjson`]). Reading a role ([`verify`])
//! parses the envelope, counts the distinct keys of the role (as the given root lists them)
//! whose signatures hold, refuses fewer than the threshold, and only then reads the body:
//! nothing unsigned is ever interpreted beyond its JSON syntax.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
pub use crate::ids::Role;
use crate::key::{KeyId, PublicKey, Signer};

/// A signed role file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The role's body.
    pub signed: T,
    /// Its signatures.
    pub signatures: Vec<Signature>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signing key's ID.
    pub keyid: KeyId,
    /// Hex of the DER ECDSA signature.
    pub sig: String,
}

/// The keys of a role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// The IDs of the keys, as `keys` of the root lists them.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign (at least 1).
    pub threshold: u64,
}

/// Expiry times: `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 in UTC, whole seconds, as TUF says).
pub type Expires = OffsetDateTime;

/// `root.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Root {
    /// `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// [`crate::SPEC_VERSION`] when written here.
    pub spec_version: String,
    /// Always true here: every file has a versioned or content-addressed name.
    pub consistent_snapshot: bool,
    /// Starts at 1; each new root is exactly one more.
    pub version: u64,
    /// When the root stops being trusted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: Expires,
    /// Every key of every role, by ID.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// The roles' keys and thresholds.
    pub roles: BTreeMap<Role, RoleKeys>,
    /// Fields other writers add; kept so signatures over them hold.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A metadata file as another role pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Its version.
    pub version: u64,
    /// Its length in bytes (written here, so a client bounds the download by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes (`sha256`), written here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
}

/// Hashes by algorithm: `sha256` is the one written and required here.
pub type Hashes = BTreeMap<String, String>;

/// `timestamp.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timestamp {
    /// `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// [`crate::SPEC_VERSION`].
    pub spec_version: String,
    /// Increases with every signing.
    pub version: u64,
    /// Soon: a mirror that stops re-signing is noticed when it passes.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: Expires,
    /// `snapshot.json` only.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields other writers add.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `<v>.snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// [`crate::SPEC_VERSION`].
    pub spec_version: String,
    /// Increases with every release.
    pub version: u64,
    /// When it stops being trusted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: Expires,
    /// `targets.json` (and delegated roles, which this repository has none of).
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields other writers add.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `<v>.targets.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Targets {
    /// `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// [`crate::SPEC_VERSION`].
    pub spec_version: String,
    /// Increases with every release.
    pub version: u64,
    /// When it stops being trusted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: Expires,
    /// Every target file by name.
    pub targets: BTreeMap<String, Target>,
    /// Fields other writers add (delegations: none here, and not followed).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One target file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Its exact length: a download is never read past it.
    pub length: u64,
    /// `sha256`: what the file is named by and checked against.
    pub hashes: Hashes,
    /// What it is for us ([`crate::custom::UpdateTarget`]); other tools keep it opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
}

impl Target {
    /// The SHA-256 (lower-case hex) the metadata names.
    pub fn sha256(&self) -> Result<&str> {
        sha256_of(&self.hashes, "the target")
    }
}

/// The `sha256` of `hashes`, checked to be 64 lower-case hex digits.
pub(crate) fn sha256_of<'a>(hashes: &'a Hashes, what: &str) -> Result<&'a str> {
    match hashes.get("sha256") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        Some(h) => Err(Error::Malformed {
            what: what.into(),
            reason: format!("its sha256 {h:?} is not 64 lower-case hex digits"),
        }),
        None => Err(Error::Malformed {
            what: what.into(),
            reason: "it names no sha256 hash".into(),
        }),
    }
}

/// What every role body has.
pub trait RoleBody: Serialize + DeserializeOwned {
    /// Which role this is.
    const ROLE: Role;
    /// `_type`.
    fn type_(&self) -> &str;
    /// `spec_version`.
    fn spec_version(&self) -> &str;
    /// `version`.
    fn version(&self) -> u64;
    /// `expires`.
    fn expires(&self) -> Expires;
}

macro_rules! role_body {
    ($type:ty, $role:expr) => {
        impl RoleBody for $type {
            const ROLE: Role = $role;
            fn type_(&self) -> &str {
                &self.type_
            }
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> Expires {
                self.expires
            }
        }
    };
}
role_body!(Root, Role::Root);
role_body!(Targets, Role::Targets);
role_body!(Snapshot, Role::Snapshot);
role_body!(Timestamp, Role::Timestamp);

impl<T: RoleBody> Signed<T> {
    /// Signs `body` with every signer (the writer's side). The signatures cover the
    /// canonical JSON of `body`.
    pub fn sign(body: T, signers: &[&dyn Signer]) -> Result<Self> {
        let canonical = crate::cjson::to_vec(&body)?;
        let mut signatures = Vec::with_capacity(signers.len());
        for signer in signers {
            let sig = signer.sign(&canonical).map_err(|e| Error::Sign {
                role: T::ROLE,
                key: signer.public_key().key_id(),
                reason: e.0,
            })?;
            let keyid = signer.public_key().key_id();
            if !signer.public_key().verifies(&canonical, &sig) {
                return Err(Error::Sign {
                    role: T::ROLE,
                    key: keyid,
                    reason: "the key source returned a signature that its public key does not \
                             verify (is it the key the configuration names?)"
                        .into(),
                });
            }
            signatures.push(Signature {
                keyid,
                sig: hex::encode(sig),
            });
        }
        Ok(Self {
            signed: body,
            signatures,
        })
    }

    /// The file's bytes: pretty JSON and a final newline (as tuftool writes; signatures
    /// cover the canonical form, not these bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("metadata serialises");
        out.push(b'\n');
        out
    }
}

impl Root {
    /// The keys and threshold of `role`.
    pub fn role_keys(&self, role: Role) -> Result<&RoleKeys> {
        self.roles.get(&role).ok_or_else(|| Error::Malformed {
            what: format!("root version {}", self.version),
            reason: format!("it names no keys for the {role} role"),
        })
    }

    /// Checks what a root must be before it is trusted to name keys: every role present,
    /// thresholds of at least 1 that its keys can reach, key IDs that are the hashes of the
    /// keys they name.
    pub fn check_well_formed(&self) -> Result<()> {
        let what = || format!("root version {}", self.version);
        for (id, key) in &self.keys {
            if key.key_id() != *id {
                return Err(Error::Malformed {
                    what: what(),
                    reason: format!("the key listed as {id} has the ID {}", key.key_id()),
                });
            }
        }
        for role in Role::ALL {
            let keys = self.role_keys(role)?;
            let known = keys
                .keyids
                .iter()
                .filter(|id| self.keys.contains_key(*id))
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64;
            if keys.threshold == 0 || known < keys.threshold {
                return Err(Error::Malformed {
                    what: what(),
                    reason: format!(
                        "the {role} role's threshold is {} with {known} known keys: it must be \
                         at least 1 and reachable",
                        keys.threshold
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Reads `bytes` as role `T`, signed by at least the threshold of distinct keys that
/// `root` names for the role. Checks `_type` and the specification's major version;
/// versions and expiry are the client's checks ([`crate::client`]).
pub fn verify<T: RoleBody>(bytes: &[u8], root: &Root) -> Result<Signed<T>> {
    let role = T::ROLE;
    let envelope: Signed<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| Error::Parse {
            role,
            reason: e.to_string(),
        })?;
    let canonical = crate::cjson::to_vec(&envelope.signed)?;
    let keys = root.role_keys(role)?;
    let mut valid = std::collections::BTreeSet::new();
    for signature in &envelope.signatures {
        if !keys.keyids.contains(&signature.keyid) || valid.contains(&signature.keyid) {
            continue;
        }
        let Some(key) = root.keys.get(&signature.keyid) else {
            continue;
        };
        // A root whose key IDs are not the keys' hashes is refused when it is accepted;
        // this keeps a stray one from counting twice under two names.
        if key.key_id() != signature.keyid {
            continue;
        }
        let Ok(sig) = hex::decode(&signature.sig) else {
            continue;
        };
        if key.verifies(&canonical, &sig) {
            valid.insert(signature.keyid.clone());
        }
    }
    if (valid.len() as u64) < keys.threshold {
        return Err(Error::Threshold {
            role,
            root_version: root.version,
            valid: valid.len() as u64,
            threshold: keys.threshold,
        });
    }
    let body: T = serde_json::from_value(envelope.signed).map_err(|e| Error::Parse {
        role,
        reason: e.to_string(),
    })?;
    if body.type_() != role.name() {
        return Err(Error::Malformed {
            what: format!("the {role} metadata"),
            reason: format!("its _type is {:?}", body.type_()),
        });
    }
    let major = body.spec_version().split('.').next().unwrap_or("");
    if major != crate::SPEC_VERSION.split('.').next().unwrap_or("1") {
        return Err(Error::Malformed {
            what: format!("the {role} metadata"),
            reason: format!(
                "spec_version {:?}; this client reads TUF {}",
                body.spec_version(),
                crate::SPEC_VERSION
            ),
        });
    }
    Ok(Signed {
        signed: body,
        signatures: envelope.signatures,
    })
}

/// `time` truncated to whole seconds, as TUF's expiry format has them.
pub fn whole_seconds(time: OffsetDateTime) -> OffsetDateTime {
    time.replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .to_offset(time::UtcOffset::UTC)
}
