//! `stage`: the local dev loop. The sidecars for a target, with the manifest the packager
//! would write for them, in a bundle directory that `openwork-server-v2 --bundle-dir` runs
//! directly — no stub build, no compression.
//!
//! ```text
//! <bundle dir>/          default .local/runtime-assets/bundle/<target>/
//!   manifest.json        the same manifest `pack` writes for the same inputs
//!   bin/opencode[.exe], bin/opencode-router[.exe]
//! ```
//!
//! A bundle whose manifest already matches is left alone (near-instant re-runs). Otherwise
//! the new bundle is written into a temp dir beside it and swapped in by renames, so the
//! server never reads a half-written bundle.

use std::path::{Path, PathBuf};
use std::time::Instant;

use openwork_payload::manifest::MANIFEST_FILE_NAME;
use openwork_payload::targets::Target;
use openwork_payload::{Manifest, archive::ArchiveInput};
use serde::Serialize;

use crate::error::Result;
use crate::pack::{self, Versions};

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest {
    /// The target (usually the host).
    pub target: &'static Target,
    /// `(name, file)` of each sidecar.
    pub sidecars: Vec<(String, PathBuf)>,
    /// Versions for the manifest.
    pub versions: Versions,
    /// The bundle directory.
    pub dir: PathBuf,
}

/// What `stage` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// True when the bundle already matched and nothing was written.
    pub unchanged: bool,
    /// Seconds taken.
    pub seconds: f64,
}

/// The default bundle directory for `target` under the workspace.
pub fn default_dir(workspace: &Path, target: &Target) -> PathBuf {
    workspace
        .join(".local/runtime-assets/bundle")
        .join(&target.name)
}

/// Stages the sidecars into the bundle directory.
pub fn stage(req: &StageRequest) -> Result<StageReport> {
    let started = Instant::now();
    let (manifest, inputs) = pack::build_manifest(req.target, &req.sidecars, &req.versions)?;
    let manifest_json = manifest.to_json();
    let unchanged = is_current(&req.dir, &manifest, &manifest_json);
    if !unchanged {
        write_bundle(&req.dir, &inputs, &manifest_json)?;
    }
    Ok(StageReport {
        dir: req.dir.clone(),
        manifest,
        unchanged,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Whether `dir` holds exactly this manifest and files of the listed sizes. The manifest
/// carries every file's SHA-256 (just computed from the inputs), so equal manifests mean
/// equal inputs; the size check catches a file damaged or removed by hand.
fn is_current(dir: &Path, manifest: &Manifest, manifest_json: &[u8]) -> bool {
    match fs_err::read(dir.join(MANIFEST_FILE_NAME)) {
        Ok(on_disk) if on_disk == manifest_json => manifest.files.values().all(|entry| {
            fs_err::symlink_metadata(dir.join(&entry.path))
                .map(|m| m.is_file() && m.len() == entry.size)
                .unwrap_or(false)
        }),
        _ => false,
    }
}

fn write_bundle(dir: &Path, inputs: &[ArchiveInput], manifest_json: &[u8]) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = fs_err::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        for input in inputs {
            let target = tmp.join(&input.entry.path);
            if let Some(parent) = target.parent() {
                fs_err::create_dir_all(parent)?;
            }
            fs_err::copy(&input.source, &target)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs_err::set_permissions(
                    &target,
                    std::fs::Permissions::from_mode(input.entry.mode & 0o777),
                )?;
            }
        }
        // Written last: a bundle with a manifest is complete.
        fs_err::write(tmp.join(MANIFEST_FILE_NAME), manifest_json)?;
        if dir.exists() {
            fs_err::rename(dir, &old)?;
        }
        fs_err::rename(&tmp, dir)?;
        let _ = fs_err::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs_err::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_exe() -> PathBuf {
        // Any executable of the host's format and architecture stands in for a sidecar.
        std::env::current_exe().unwrap()
    }

    #[test]
    fn stage_writes_a_bundle_then_leaves_a_matching_one_alone() {
        let Some(target) = openwork_payload::targets::host() else {
            return;
        };
        let work = tempfile::tempdir().unwrap();
        let sidecar = work.path().join("opencode");
        fs_err::copy(host_exe(), &sidecar).unwrap();
        let req = StageRequest {
            target,
            sidecars: vec![("opencode".into(), sidecar.clone())],
            versions: Versions {
                opencode: "1.18.32".into(),
                router: None,
            },
            dir: work.path().join("bundle"),
        };
        let first = stage(&req).unwrap();
        assert!(!first.unchanged);
        let staged = req.dir.join(&first.manifest.files["opencode"].path);
        assert_eq!(
            fs_err::read(&staged).unwrap(),
            fs_err::read(&sidecar).unwrap()
        );
        let manifest =
            Manifest::from_json(&fs_err::read(req.dir.join(MANIFEST_FILE_NAME)).unwrap()).unwrap();
        assert_eq!(manifest, first.manifest);

        let second = stage(&req).unwrap();
        assert!(second.unchanged, "nothing changed");

        // A changed input restages; nothing is left beside the bundle.
        let mut bytes = fs_err::read(&sidecar).unwrap();
        bytes.extend_from_slice(b"changed");
        fs_err::write(&sidecar, &bytes).unwrap();
        let third = stage(&req).unwrap();
        assert!(!third.unchanged);
        assert_eq!(fs_err::read(&staged).unwrap(), bytes);
        let names: Vec<String> = fs_err::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

        // A staged file damaged by hand is noticed.
        fs_err::write(&staged, b"x").unwrap();
        assert!(!stage(&req).unwrap().unchanged);
    }
}
