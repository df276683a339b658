//! The completion stamp: proof that a runtime directory was fully extracted and verified,
//! and a cheap way to notice later damage without rehashing 140 MB on every start.
//!
//! It records, for every file including `manifest.json`, the size, modification time and
//! file identity (device + inode on Unix, creation time on Windows) at the moment the
//! extraction was verified. A warm start compares those with a `stat` per file: a replaced,
//! truncated or rewritten file changes at least one of them. A same-size in-place edit that
//! also restores the mtime is only caught by a full rehash (`--verify full`, `runtime
//! verify`).

use std::fs::Metadata;
use std::path::Path;
use std::time::UNIX_EPOCH;

use openwork_payload::Manifest;
use openwork_payload::manifest::MANIFEST_FILE_NAME;
use serde::{Deserialize, Serialize};

use crate::layout::STAMP_FILE;

const STAMP_VERSION: u32 = 1;

/// The stamp's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stamp {
    stamp_version: u32,
    /// The manifest digest this runtime was extracted from.
    pub manifest_sha256: String,
    /// Unix time (milliseconds) the extraction finished.
    pub completed_at_ms: u64,
    files: Vec<StampedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StampedFile {
    path: String,
    size: u64,
    modified_ns: u128,
    file_id: String,
}

fn stamped_paths(manifest: &Manifest) -> impl Iterator<Item = &str> {
    std::iter::once(MANIFEST_FILE_NAME).chain(manifest.files.values().map(|e| e.path.as_str()))
}

fn describe(path: &str, meta: &Metadata) -> StampedFile {
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    StampedFile {
        path: path.to_string(),
        size: meta.len(),
        modified_ns,
        file_id: file_id(meta),
    }
}

#[cfg(unix)]
fn file_id(meta: &Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}", meta.dev(), meta.ino())
}

#[cfg(windows)]
fn file_id(meta: &Metadata) -> String {
    use std::os::windows::fs::MetadataExt;
    format!("c{}", meta.creation_time())
}

#[cfg(not(any(unix, windows)))]
fn file_id(_meta: &Metadata) -> String {
    String::new()
}

impl Stamp {
    /// Records the current state of every file of `manifest` below `dir`.
    pub fn record(dir: &Path, manifest: &Manifest, digest: &str) -> std::io::Result<Stamp> {
        let mut files = Vec::new();
        for path in stamped_paths(manifest) {
            let full = dir.join(path);
            let meta = std::fs::symlink_metadata(&full)?;
            files.push(describe(path, &meta));
        }
        let completed_at_ms = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(Stamp {
            stamp_version: STAMP_VERSION,
            manifest_sha256: digest.to_string(),
            completed_at_ms,
            files,
        })
    }

    /// Reads the stamp of `dir`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<Stamp> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        let mut file = crate::trust::no_follow(&mut options)
            .open(dir.join(STAMP_FILE))
            .ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Checks that `dir` still looks exactly as recorded; the reason when it does not.
    pub fn check(&self, dir: &Path, manifest: &Manifest, digest: &str) -> Result<(), String> {
        if self.stamp_version != STAMP_VERSION {
            return Err(format!(
                "stamp version {} is not {STAMP_VERSION}",
                self.stamp_version
            ));
        }
        if self.manifest_sha256 != digest {
            return Err("it was extracted from a different manifest".into());
        }
        let expected: Vec<&str> = stamped_paths(manifest).collect();
        if expected.len() != self.files.len() {
            return Err("the stamp lists other files than the manifest".into());
        }
        for (path, recorded) in expected.iter().zip(&self.files) {
            if recorded.path != *path {
                return Err(format!("the stamp does not list {path}"));
            }
            let meta =
                std::fs::symlink_metadata(dir.join(path)).map_err(|e| format!("{path}: {e}"))?;
            if !meta.is_file() {
                return Err(format!("{path} is not a regular file"));
            }
            if describe(path, &meta) != *recorded {
                return Err(format!(
                    "{path} changed since extraction (size, mtime or identity)"
                ));
            }
        }
        Ok(())
    }

    /// The stamp as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("stamp serialises")
    }
}
