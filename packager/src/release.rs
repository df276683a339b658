//! `release`: the whole path from pins to a checksummed artifact for one target.
//!
//! fetch the pinned opencode (integrity-checked, cached) → build the stub for the target
//! (or take `--stub`) → pack → `dist/openwork-server-v2-<target>[.exe]` + `SHA256SUMS`.
//! The release-pipeline work adds the router build, signing and a build report here.

use std::path::{Path, PathBuf};

use openwork_payload::targets::Target;

use crate::constants::Constants;
use crate::error::Result;
use crate::fetch::{self, FetchRequest};
use crate::pack::{self, Compression, PackReport, PackRequest, Versions};
use crate::stub;

/// What to release.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    /// The target.
    pub target: &'static Target,
    /// The pins.
    pub constants: Constants,
    /// The workspace to build the stub from.
    pub workspace: PathBuf,
    /// A prebuilt stub instead of building one.
    pub stub: Option<PathBuf>,
    /// Cargo target directory for the stub build.
    pub stub_target_dir: PathBuf,
    /// Output directory.
    pub dist: PathBuf,
    /// zstd settings.
    pub compression: Compression,
    /// Archive mtime (SOURCE_DATE_EPOCH).
    pub mtime: u64,
    /// Use only cached downloads.
    pub offline: bool,
}

/// Runs a release for one target; returns the pack report.
pub fn release(req: &ReleaseRequest) -> Result<PackReport> {
    let mut fetch_request = FetchRequest::new(req.target, req.constants.opencode_version());
    fetch_request.offline = req.offline;
    let opencode = fetch::fetch_opencode_npm(&fetch_request)?;
    let stub = match &req.stub {
        Some(path) => path.clone(),
        None => {
            eprintln!("release: building the {} stub", req.target.name);
            stub::build_stub(&req.workspace, req.target, &req.stub_target_dir)?
        }
    };
    let out = req.dist.join(req.target.artifact_name());
    eprintln!("release: packing {}", out.display());
    let report = pack::pack(&PackRequest {
        stub,
        sidecars: vec![("opencode".into(), opencode.path)],
        out,
        target: req.target,
        versions: Versions {
            server: req.constants.server_version.clone(),
            opencode: req.constants.opencode_version().to_string(),
            router: req.constants.router.version.clone(),
        },
        compression: req.compression,
        mtime: req.mtime,
    })?;
    update_sha256sums(&req.dist, &req.target.artifact_name(), &report.sha256)?;
    Ok(report)
}

/// Sets `name`'s line in `<dist>/SHA256SUMS` (the `sha256sum -c` format), keeping the
/// other targets' lines, sorted by name; written atomically.
pub fn update_sha256sums(dist: &Path, name: &str, sha256: &str) -> Result<()> {
    let path = dist.join("SHA256SUMS");
    let existing = match fs_err::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !l.trim().is_empty() && l.split_whitespace().nth(1) != Some(name))
        .map(str::to_string)
        .collect();
    lines.push(format!("{sha256}  {name}"));
    lines.sort_by(|a, b| {
        a.split_whitespace()
            .nth(1)
            .cmp(&b.split_whitespace().nth(1))
    });
    let mut text = lines.join("\n");
    text.push('\n');
    pack::write_atomically(&path, text.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_keeps_other_targets_and_replaces_its_own() {
        let dir = tempfile::tempdir().unwrap();
        update_sha256sums(dir.path(), "b", &"1".repeat(64)).unwrap();
        update_sha256sums(dir.path(), "a", &"2".repeat(64)).unwrap();
        update_sha256sums(dir.path(), "b", &"3".repeat(64)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
        assert_eq!(
            text,
            format!("{}  a\n{}  b\n", "2".repeat(64), "3".repeat(64))
        );
    }
}
