//! `inspect`: what a packed artifact is, where its payload sits, and whether every hash in
//! it holds (trailer, manifest, compressed payload, every file inside).

use std::path::Path;

use openwork_payload::container::{self, Arch, ExecutableFormat};
use openwork_payload::{Manifest, archive};
use serde::Serialize;

use crate::error::Result;

/// The result of inspecting an artifact.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// Executable format.
    pub format: ExecutableFormat,
    /// CPU architecture.
    pub arch: Arch,
    /// Target from the manifest.
    pub target: String,
    /// Artifact size.
    pub size: u64,
    /// The compressed payload.
    pub payload: Span,
    /// The manifest JSON's place.
    pub manifest_location: Span,
    /// File offset of the trailer.
    pub trailer_offset: u64,
    /// Format version `major.minor`.
    pub format_version: String,
    /// Decoded tar length.
    pub uncompressed_length: u64,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether every check passed.
    pub verified: bool,
    /// Why not, when `verified` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A byte range with its SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// File offset.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Hex SHA-256 (as recorded in the trailer).
    pub sha256: String,
}

/// Inspects `path`. Errors that mean "no payload here" or "unreadable" are returned as
/// errors; a payload that is found but fails verification is reported with
/// `verified: false` and the reason, so the caller can show what it found.
pub fn inspect(path: &Path) -> Result<(Inspection, Option<openwork_payload::Error>)> {
    let data = fs_err::read(path)?;
    let info = container::identify(&data)?;
    let (_, region) = container::locate(&data)?;
    // One pass checks the payload's hash and length and every file in it.
    let check =
        archive::verify_stream(region.payload, &region.trailer, &region.manifest).map(|_| ());
    let inspection = Inspection {
        format: info.format,
        arch: info.arch,
        target: region.manifest.target.clone(),
        size: data.len() as u64,
        payload: Span {
            offset: region.payload_offset,
            length: region.trailer.payload_len,
            sha256: region.payload_sha256_hex(),
        },
        manifest_location: Span {
            offset: region.manifest_offset,
            length: region.trailer.manifest_len,
            sha256: region.manifest_sha256_hex(),
        },
        trailer_offset: region.trailer_offset,
        format_version: format!(
            "{}.{}",
            openwork_payload::trailer::FORMAT_MAJOR,
            region.trailer.format_minor
        ),
        uncompressed_length: region.trailer.uncompressed_len,
        manifest: region.manifest.clone(),
        verified: check.is_ok(),
        error: check.as_ref().err().map(ToString::to_string),
    };
    Ok((inspection, check.err()))
}

/// The human-readable report.
pub fn render(path: &Path, i: &Inspection) -> String {
    let mut out = String::new();
    out += &format!("artifact:   {} ({} bytes)\n", path.display(), i.size);
    out += &format!(
        "format:     {} {} (payload format {})\n",
        i.format, i.arch, i.format_version
    );
    out += &format!("target:     {}\n", i.target);
    out += &format!("versions:   {}\n", i.manifest.versions());
    out += &format!(
        "payload:    offset {}, {} bytes zstd → {} bytes tar, sha256 {}\n",
        i.payload.offset, i.payload.length, i.uncompressed_length, i.payload.sha256
    );
    out += &format!(
        "manifest:   offset {}, {} bytes, sha256 {}\n",
        i.manifest_location.offset, i.manifest_location.length, i.manifest_location.sha256
    );
    out += &format!("trailer:    offset {}\n", i.trailer_offset);
    out += "files:\n";
    for (name, e) in &i.manifest.files {
        out += &format!(
            "  {name:<16} {:<24} {:>12} bytes  mode {:o}  sha256 {}\n",
            e.path, e.size, e.mode, e.sha256
        );
    }
    match &i.error {
        None => out += "verified:   yes (trailer, manifest, payload and every file)\n",
        Some(e) => out += &format!("verified:   NO: {e}\n"),
    }
    out
}
