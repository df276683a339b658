//! `pack`: sidecars + manifest → deterministic tar → zstd → region → injected into a stub,
//! checked with the runtime's own locator before the output file appears.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openwork_payload::archive::{self, ArchiveInput};
use openwork_payload::container::{self, BinaryInfo};
use openwork_payload::manifest::{MANIFEST_VERSION, SIDECAR_NAMES};
use openwork_payload::targets::Target;
use openwork_payload::{FileEntry, Manifest, region};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Versions written into the manifest besides the server's own
/// ([`openwork_payload::SERVER_VERSION`], which the stub reports too).
#[derive(Debug, Clone)]
pub struct Versions {
    /// opencode.
    pub opencode: String,
    /// opencode-router, when the payload carries it.
    pub router: Option<String>,
}

/// Compression settings.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// zstd level.
    pub level: i32,
    /// Threads compressing frames side by side (0 counts as 1). The output is the same
    /// bytes whatever the number: each frame is compressed on one thread.
    pub workers: u32,
}

impl Compression {
    /// The release level with every core: for releases.
    pub fn release() -> Self {
        Compression {
            level: archive::ZSTD_RELEASE_LEVEL,
            workers: default_workers(),
        }
    }

    /// Level 3: for quick development builds.
    pub fn fast() -> Self {
        Compression {
            level: archive::ZSTD_FAST_LEVEL,
            workers: default_workers(),
        }
    }
}

fn default_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Everything `pack` needs.
#[derive(Debug, Clone)]
pub struct PackRequest {
    /// The runtime stub built for `target`.
    pub stub: PathBuf,
    /// Sidecars by name (`opencode`, `opencode-router`).
    pub sidecars: Vec<(String, PathBuf)>,
    /// Where the packed artifact goes.
    pub out: PathBuf,
    /// The target.
    pub target: &'static Target,
    /// Manifest versions.
    pub versions: Versions,
    /// zstd settings.
    pub compression: Compression,
    /// mtime of every archive entry (SOURCE_DATE_EPOCH, else 0).
    pub mtime: u64,
}

/// What `pack` made.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackReport {
    /// The artifact.
    pub out: PathBuf,
    /// Size of the artifact.
    pub size: u64,
    /// SHA-256 of the artifact.
    pub sha256: String,
    /// Bytes of the sidecars.
    pub raw_size: u64,
    /// Bytes of the zstd payload.
    pub payload_size: u64,
    /// File offset of the payload.
    pub payload_offset: u64,
    /// The manifest written.
    pub manifest: Manifest,
    /// Seconds spent compressing.
    pub compress_seconds: f64,
    /// SHA-256 of the stub packed into.
    pub stub_sha256: String,
    /// Size of the stub.
    pub stub_size: u64,
}

/// Checks an input path: it must be a regular file, not a symlink (whose target could
/// change between the check and the read, or silently point at the wrong build).
pub fn check_regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = fs_err::symlink_metadata(path).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        reason: format!("cannot read the {what}: {e}"),
    })?;
    if meta.file_type().is_symlink() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            reason: format!("the {what} is a symlink; pass the real file"),
        });
    }
    if !meta.is_file() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            reason: format!("the {what} is not a regular file"),
        });
    }
    Ok(())
}

/// Checks that an executable fits `target`.
pub fn check_binary_for_target(
    bytes: &[u8],
    path: &Path,
    what: &str,
    target: &Target,
) -> Result<BinaryInfo> {
    let info = container::identify(bytes).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        reason: format!("the {what} is not a usable executable: {e}"),
    })?;
    if info.format != target.format || info.arch != target.arch {
        return Err(Error::Payload(openwork_payload::Error::Executable(
            format!(
                "{}: the {what} is {} {}, but target {} needs {} {}",
                path.display(),
                info.format,
                info.arch,
                target.name,
                target.format,
                target.arch
            ),
        )));
    }
    Ok(info)
}

/// Packs an artifact.
pub fn pack(req: &PackRequest) -> Result<PackReport> {
    check_regular_file(&req.stub, "stub")?;
    let stub = fs_err::read(&req.stub)?;
    check_binary_for_target(&stub, &req.stub, "stub", req.target)?;

    let (manifest, inputs) = build_manifest(req.target, &req.sidecars, &req.versions)?;
    let manifest_json = manifest.to_json();

    let started = Instant::now();
    let mut tar = Vec::with_capacity(manifest.total_size() as usize + 64 * 1024);
    let uncompressed_len = archive::write_tar(&mut tar, &inputs, req.mtime)?;
    let mut payload = Vec::new();
    archive::compress(
        tar.as_slice(),
        &mut payload,
        req.compression.level,
        req.compression.workers,
    )?;
    drop(tar);
    let compress_time = started.elapsed();

    let region = region::build_region(&payload, &manifest_json, uncompressed_len);
    let packed = container::inject(&stub, &region)?;
    let payload_offset = self_check(&packed, &manifest_json)?;
    write_atomically(&req.out, &packed, true)?;
    Ok(PackReport {
        out: req.out.clone(),
        size: packed.len() as u64,
        sha256: hex::encode(Sha256::digest(&packed)),
        raw_size: manifest.total_size(),
        payload_size: payload.len() as u64,
        payload_offset,
        manifest,
        compress_seconds: Duration::as_secs_f64(&compress_time),
        stub_sha256: hex::encode(Sha256::digest(&stub)),
        stub_size: stub.len() as u64,
    })
}

/// Checks the sidecars for `target` and describes them: the manifest, and where each file
/// comes from. Shared by `pack` and `stage`, so a staged bundle and a packed payload of the
/// same inputs have the same manifest.
pub(crate) fn build_manifest(
    target: &Target,
    sidecars: &[(String, PathBuf)],
    versions: &Versions,
) -> Result<(Manifest, Vec<ArchiveInput>)> {
    let mut files = std::collections::BTreeMap::new();
    let mut inputs = Vec::new();
    for (name, path) in sidecars {
        if !SIDECAR_NAMES.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "unknown sidecar {name:?}; expected one of {}",
                SIDECAR_NAMES.join(", ")
            )));
        }
        if files.contains_key(name) {
            return Err(Error::Usage(format!("sidecar {name:?} given twice")));
        }
        check_regular_file(path, &format!("{name} sidecar"))?;
        let bytes = fs_err::read(path)?;
        check_binary_for_target(&bytes, path, &format!("{name} sidecar"), target)?;
        let entry = FileEntry {
            path: target.sidecar_path(name),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            mode: 0o755,
        };
        inputs.push(ArchiveInput {
            entry: entry.clone(),
            source: path.clone(),
        });
        files.insert(name.clone(), entry);
    }
    if !files.contains_key("opencode") {
        return Err(Error::Usage(
            "an opencode sidecar is required: --sidecar opencode=<file>".into(),
        ));
    }
    let router_version = match (files.contains_key("opencode-router"), &versions.router) {
        (true, Some(version)) => Some(version.clone()),
        (true, None) => {
            return Err(Error::Usage(
                "an opencode-router sidecar needs its version: --router-version".into(),
            ));
        }
        (false, _) => None,
    };
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        server_version: openwork_payload::SERVER_VERSION.to_string(),
        opencode_version: versions.opencode.clone(),
        router_version,
        target: target.name.clone(),
        files,
    };
    manifest.validate()?;
    Ok((manifest, inputs))
}

/// Finds the payload with the runtime's own locator and verifies it (payload hash, every
/// file's hash, lengths: all checked by `verify_stream` in one pass), before anything is
/// written where a user could pick it up. Returns the payload's file offset.
fn self_check(packed: &[u8], manifest_json: &[u8]) -> Result<u64> {
    let (_, region) = container::locate(packed)?;
    if region.manifest_bytes != manifest_json {
        return Err(Error::Payload(openwork_payload::Error::Executable(
            "self-check failed: the located manifest is not the one written".into(),
        )));
    }
    archive::verify_stream(region.payload, &region.trailer, &region.manifest)?;
    Ok(region.payload_offset)
}

/// Writes `bytes` to `out` through a temp file in the same directory and a rename, so a
/// failed or interrupted pack never leaves a half-written artifact.
pub fn write_atomically(out: &Path, bytes: &[u8], executable: bool) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs_err::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".openwork-packager-")
        .tempfile_in(&dir)
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("create a temp file in {}: {e}", dir.display()),
            ))
        })?;
    tmp.write_all(bytes)?;
    #[cfg(not(unix))]
    let _ = executable;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(if executable {
                0o755
            } else {
                0o644
            }))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.error.kind(),
            format!("rename into {}: {}", out.display(), e.error),
        ))
    })?;
    Ok(())
}
