//! The manifest: what the payload contains, with a SHA-256, size and mode per file.
//!
//! ```json
//! {
//!   "manifestVersion": 1,
//!   "serverVersion": "0.1.0",
//!   "opencodeVersion": "1.18.32",
//!   "target": "linux-x64",
//!   "files": {
//!     "opencode": { "path": "bin/opencode", "size": 140900000, "sha256": "…", "mode": 493 }
//!   }
//! }
//! ```
//!
//! The same JSON is stored in the payload region, written as `manifest.json` into every
//! runtime directory, and is the index of a bundle directory (the multi-file distribution).
//! Readers ignore fields they do not know, so a minor version can add some.
//! `routerVersion` is present when the payload carries an `opencode-router`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest version this crate writes and the highest it reads.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest in runtime and bundle directories.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";
/// The sidecar names the runtime knows how to supervise.
pub const SIDECAR_NAMES: [&str; 2] = ["opencode", "opencode-router"];

/// The payload's table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`] when written by this crate.
    pub manifest_version: u32,
    /// Version of the openwork-server-v2 stub the payload was packed for.
    pub server_version: String,
    /// Version of the opencode sidecar.
    pub opencode_version: String,
    /// Version of the opencode-router sidecar; absent when the payload carries none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_version: Option<String>,
    /// Target name from `targets/` (for example `linux-x64`).
    pub target: String,
    /// Files by logical name (`opencode`, `opencode-router`).
    pub files: BTreeMap<String, FileEntry>,
}

/// One file of the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside the runtime directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Unix permission bits (only `0o777` are honoured; 0o755 for executables).
    pub mode: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    manifest_version: u32,
}

impl Manifest {
    /// Parses and validates manifest JSON. The version is read first, so a newer manifest
    /// gets a clear "newer version" error rather than a confusing field error.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        let version: VersionOnly = serde_json::from_slice(bytes)
            .map_err(|e| Error::Manifest(format!("not a manifest ({e})")))?;
        if version.manifest_version > MANIFEST_VERSION {
            return Err(Error::NewerManifest {
                found: version.manifest_version,
                supported: MANIFEST_VERSION,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| Error::Manifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Serialises as pretty, deterministic JSON (files are sorted by name).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// `server 0.1.0, opencode 1.18.32[, router 0.1.0]`, for `inspect` and `runtime info`.
    pub fn versions(&self) -> String {
        let mut text = format!(
            "server {}, opencode {}",
            self.server_version, self.opencode_version
        );
        if let Some(router) = &self.router_version {
            text += &format!(", router {router}");
        }
        text
    }

    /// Checks every invariant a reader relies on: known version, safe and unique paths,
    /// well-formed hashes.
    pub fn validate(&self) -> Result<()> {
        if self.manifest_version == 0 || self.manifest_version > MANIFEST_VERSION {
            return Err(Error::Manifest(format!(
                "unsupported manifestVersion {}",
                self.manifest_version
            )));
        }
        if self.files.is_empty() {
            return Err(Error::Manifest("lists no files".into()));
        }
        let mut paths = std::collections::BTreeSet::new();
        for (name, entry) in &self.files {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::Manifest(format!(
                    "file name {name:?} is not a plain identifier"
                )));
            }
            validate_relative_path(&entry.path).map_err(|reason| {
                Error::Manifest(format!("file {name:?}: path {:?} {reason}", entry.path))
            })?;
            if !paths.insert(entry.path.to_ascii_lowercase()) {
                return Err(Error::Manifest(format!(
                    "path {:?} is listed twice",
                    entry.path
                )));
            }
            if !is_sha256_hex(&entry.sha256) {
                return Err(Error::Manifest(format!(
                    "file {name:?}: sha256 is not 64 lower-case hex digits"
                )));
            }
        }
        // A path that is a directory prefix of another would make one entry a directory.
        for a in &paths {
            for b in &paths {
                if b.len() > a.len() && b.starts_with(a.as_str()) && b.as_bytes()[a.len()] == b'/' {
                    return Err(Error::Manifest(format!(
                        "path {a:?} is also a directory of {b:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The entry whose path is exactly `path`.
    pub fn entry_by_path(&self, path: &str) -> Option<(&str, &FileEntry)> {
        self.files
            .iter()
            .find(|(_, e)| e.path == path)
            .map(|(n, e)| (n.as_str(), e))
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|e| e.size).sum()
    }
}

impl FileEntry {
    /// The entry's path below `root`, with platform separators.
    pub fn path_in(&self, root: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        out.extend(self.path.split('/'));
        out
    }
}

/// Whether `text` is a SHA-256 as manifests, locks and pins write it: 64 lower-case hex
/// digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a path may not appear in a manifest or archive, or `Ok` when it may: relative,
/// `/`-separated normal components only, no hidden (dot) names, which the runtime
/// directory keeps for itself, nothing a Windows file system would treat specially.
pub fn validate_relative_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() || path.len() > 255 {
        return Err("is empty or longer than 255 bytes");
    }
    if path.contains('\\') || path.contains(':') || path.contains('\0') {
        return Err("contains a backslash, colon or NUL");
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    for part in path.split('/') {
        if part.is_empty() {
            return Err("has an empty component");
        }
        if part == "." || part == ".." {
            return Err("has a . or .. component");
        }
        if part.starts_with('.') {
            return Err("has a hidden (dot) component, reserved for the runtime");
        }
    }
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("is not a plain relative path");
    }
    if path == MANIFEST_FILE_NAME {
        return Err("is reserved for the manifest");
    }
    Ok(())
}

/// Manifests for this crate's unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn sample_manifest() -> Manifest {
        let mut files = BTreeMap::new();
        files.insert(
            "opencode".to_string(),
            FileEntry {
                path: "bin/opencode".into(),
                size: 3,
                sha256: "a".repeat(64),
                mode: 0o755,
            },
        );
        Manifest {
            manifest_version: 1,
            server_version: "0.1.0".into(),
            opencode_version: "1.18.32".into(),
            router_version: None,
            target: "linux-x64".into(),
            files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample_manifest as sample;
    use super::*;

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn newer_version_is_named() {
        let json = br#"{"manifestVersion": 7, "whatever": true}"#;
        let err = Manifest::from_json(json).unwrap_err();
        assert!(
            matches!(err, Error::NewerManifest { found: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "../x",
            "/abs",
            "a/../b",
            "a//b",
            "C:/x",
            "a\\b",
            ".hidden",
            "bin/.lease",
            "manifest.json",
            "",
        ] {
            let mut m = sample();
            m.files.get_mut("opencode").unwrap().path = bad.into();
            assert!(m.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nested_and_duplicate_paths_are_refused() {
        let mut m = sample();
        let mut e = m.files["opencode"].clone();
        e.path = "bin/opencode/x".into();
        m.files.insert("other".into(), e.clone());
        assert!(m.validate().is_err());
        e.path = "BIN/opencode".into();
        m.files.insert("other".into(), e);
        assert!(m.validate().is_err());
    }
}
