//! What each target is for us: the `custom` object of a target in `targets.json`.
//!
//! ```json
//! "linux-x64.s3.opencode.delta-from-1f0c…": {
//!   "length": 412345, "hashes": {"sha256": "…"},
//!   "custom": {"openwork": {
//!     "release": {"sequence": 3, "server": "0.1.0", "opencode": "1.18.33"},
//!     "platform": "linux-x64", "kind": "sidecar-delta", "sidecar": "opencode",
//!     "from": {"sha256": "…", "size": 184712345},
//!     "to":   {"sha256": "…", "size": 184812345}}}}
//! ```
//!
//! A release is a numbered publication (`sequence`, one more than the repository's
//! previous release; versions of the server and of opencode do not order releases on their
//! own). Per platform it brings:
//!
//! | kind | the file | `from` | `to` |
//! |---|---|---|---|
//! | `artifact` | the release's executable as users download it (the fallback) | — | the file itself |
//! | `manifest` | the payload's `manifest.json` (sidecars, their paths, sizes, SHA-256, modes) | — | the file itself |
//! | `stub` | the server executable without its payload, zstd | — | the stub |
//! | `stub-delta` | the stub as a delta from an older release's stub | that stub | the stub |
//! | `sidecar` | one sidecar's content, zstd | — | the sidecar |
//! | `sidecar-delta` | one sidecar as a delta from an older release's same sidecar | its content | the sidecar |
//!
//! `from`/`to` name contents by SHA-256 and size, so a client picks the deltas whose
//! `from` it has (a runtime directory's manifest says which contents it holds), and checks
//! what it reconstructed against `to` before using it. The encodings are in
//! [`crate::delta`]. The object sits under the key `openwork` so that other tools' custom
//! data can sit beside it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metadata::Target;

/// The key of our object inside a target's `custom`.
pub const CUSTOM_KEY: &str = "openwork";

/// One release: the unit a client updates to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReleaseId {
    /// 1 for a repository's first release, then one more each time.
    pub sequence: u64,
    /// The server's version (the workspace's Cargo version).
    pub server: String,
    /// opencode's version.
    pub opencode: String,
}

/// A content, by hash and size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Content {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The full artifact.
    Artifact,
    /// The payload manifest.
    Manifest,
    /// The stub, compressed.
    Stub,
    /// The stub, as a delta.
    StubDelta,
    /// A sidecar, compressed.
    Sidecar,
    /// A sidecar, as a delta.
    SidecarDelta,
    /// A kind this client does not know (written by a newer publisher): ignored.
    #[serde(other)]
    Unknown,
}

impl Kind {
    /// How the file encodes its `to` content.
    pub fn encoding(self) -> Encoding {
        match self {
            Kind::Artifact | Kind::Manifest | Kind::Unknown => Encoding::Identity,
            Kind::Stub | Kind::Sidecar => Encoding::Zstd,
            Kind::StubDelta | Kind::SidecarDelta => Encoding::ZstdPatch,
        }
    }
}

/// How a target's bytes encode its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes are the content.
    Identity,
    /// One zstd frame ([`crate::delta::decompress`]).
    Zstd,
    /// One zstd frame with `from` as its reference prefix ([`crate::delta::apply`]).
    ZstdPatch,
}

/// Our `custom` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTarget {
    /// The release it belongs to.
    pub release: ReleaseId,
    /// The platform (target name from `targets/`, e.g. `linux-x64`).
    pub platform: String,
    /// What it is.
    pub kind: Kind,
    /// The sidecar's name (`opencode`, `opencode-router`) for the sidecar kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<String>,
    /// What a delta applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Content>,
    /// What the file decodes to.
    pub to: Content,
}

#[derive(Serialize, Deserialize)]
struct Wrapper {
    openwork: UpdateTarget,
}

impl UpdateTarget {
    /// The `custom` value to put into a target.
    pub fn to_custom(&self) -> serde_json::Value {
        serde_json::to_value(Wrapper {
            openwork: self.clone(),
        })
        .expect("custom data serialises")
    }

    /// The target's name: `<platform>-r<sequence>-<what>`, e.g. `linux-x64-r3-artifact`,
    /// `linux-x64-r3-opencode.zst`, `linux-x64-r3-opencode-from-1f0c2a3b4c5d.zst` (the
    /// first 12 hex digits of the `from` content). Flat (no `/`), so every TUF client
    /// stores it under the same `targets/<sha256>.<name>`.
    pub fn file_name(&self) -> String {
        let prefix = format!("{}-r{}", self.platform, self.release.sequence);
        let sidecar = self.sidecar.as_deref().unwrap_or("sidecar");
        let from = self
            .from
            .as_ref()
            .map(|f| f.sha256.get(..12).unwrap_or(&f.sha256).to_owned())
            .unwrap_or_default();
        match self.kind {
            Kind::Artifact => format!("{prefix}-artifact"),
            Kind::Manifest => format!("{prefix}-manifest.json"),
            Kind::Stub => format!("{prefix}-stub.zst"),
            Kind::StubDelta => format!("{prefix}-stub-from-{from}.zst"),
            Kind::Sidecar => format!("{prefix}-{sidecar}.zst"),
            Kind::SidecarDelta => format!("{prefix}-{sidecar}-from-{from}.zst"),
            Kind::Unknown => format!("{prefix}-unknown"),
        }
    }

    /// Our object in `target`, if it has one; an error if it has one we cannot read or
    /// whose shape contradicts its kind.
    pub fn of(target: &Target) -> Result<Option<Self>> {
        let Some(object) = target.custom.as_ref().and_then(|c| c.get(CUSTOM_KEY)) else {
            return Ok(None);
        };
        let custom: UpdateTarget =
            serde_json::from_value(object.clone()).map_err(|e| Error::Malformed {
                what: "a target's custom data".into(),
                reason: e.to_string(),
            })?;
        let is_delta = custom.kind.encoding() == Encoding::ZstdPatch;
        let is_sidecar = matches!(custom.kind, Kind::Sidecar | Kind::SidecarDelta);
        if is_delta != custom.from.is_some() || is_sidecar != custom.sidecar.is_some() {
            return Err(Error::Malformed {
                what: "a target's custom data".into(),
                reason: format!(
                    "a {:?} target {} `from` and {} `sidecar`",
                    custom.kind,
                    if custom.from.is_some() {
                        "has"
                    } else {
                        "lacks"
                    },
                    if custom.sidecar.is_some() {
                        "has"
                    } else {
                        "lacks"
                    },
                ),
            });
        }
        if custom.kind.encoding() == Encoding::Identity
            && custom.kind != Kind::Unknown
            && (custom.to.size != target.length || custom.to.sha256 != target.sha256()?)
        {
            return Err(Error::Malformed {
                what: "a target's custom data".into(),
                reason: "an artifact or manifest whose `to` is not the file itself".into(),
            });
        }
        Ok(Some(custom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kinds_are_kept_as_unknown_and_contradictions_refused() {
        let mut target = Target {
            length: 3,
            hashes: [("sha256".to_owned(), "a".repeat(64))].into(),
            custom: Some(serde_json::json!({"openwork": {
                "release": {"sequence": 1, "server": "0.1.0", "opencode": "1.18.33"},
                "platform": "linux-x64", "kind": "bsdiff-4", "to": {"sha256": "b", "size": 9}
            }})),
        };
        assert_eq!(
            UpdateTarget::of(&target).unwrap().unwrap().kind,
            Kind::Unknown
        );
        target.custom = Some(serde_json::json!({"openwork": {
            "release": {"sequence": 1, "server": "0.1.0", "opencode": "1.18.33"},
            "platform": "linux-x64", "kind": "sidecar-delta", "sidecar": "opencode",
            "to": {"sha256": "b", "size": 9}
        }}));
        let error = UpdateTarget::of(&target).unwrap_err().to_string();
        assert!(error.contains("lacks `from`"), "{error}");
        target.custom = Some(serde_json::json!({"other-tool": 1}));
        assert_eq!(UpdateTarget::of(&target).unwrap(), None);
    }
}
