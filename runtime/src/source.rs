//! Where the payload comes from:
//!
//! 1. a bundle directory named by `--bundle-dir` or `OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR`
//!    (development and staged runtimes): always, when one is named;
//! 2. the payload embedded in the executable itself;
//! 3. only when the executable carries no payload (a bare stub, the multi-file
//!    distribution): a `manifest.json` bundle next to the executable.
//!
//! A packed server runs what it carries: a `manifest.json` dropped beside a packed
//! executable (in Downloads, say) is ignored, with a note in the log, so the signature on
//! the executable still says what runs. Only a named bundle directory replaces the payload.
//!
//! Whatever the source, its manifest's SHA-256 is the content digest that names the runtime
//! directory, and every file is verified against the manifest while it is installed.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use openwork_payload::container::{self, ExecutableFormat};
use openwork_payload::manifest::MANIFEST_FILE_NAME;
use openwork_payload::{Manifest, Trailer};
use sha2_digest::sha256_hex;

use crate::error::{Error, Result};

/// Where a payload was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `--bundle-dir`.
    BundleFlag,
    /// `OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR`.
    BundleEnv,
    /// `manifest.json` next to an executable that carries no payload.
    BundleBesideExecutable,
    /// Embedded in the executable.
    Embedded,
}

/// A payload ready to be installed into a runtime directory.
#[derive(Debug)]
pub struct PayloadSource {
    /// How it was found.
    pub kind: SourceKind,
    /// The bundle directory, or the executable.
    pub path: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// The manifest exactly as stored; written into the runtime directory.
    pub manifest_bytes: Vec<u8>,
    /// Hex SHA-256 of `manifest_bytes`.
    pub digest: String,
    /// The mapped executable and where its payload lies (embedded sources only).
    pub embedded: Option<Embedded>,
}

/// The executable's mapping and the payload's place in it.
#[derive(Debug)]
pub struct Embedded {
    map: Mmap,
    /// Executable format of the file.
    pub format: ExecutableFormat,
    /// The decoded trailer.
    pub trailer: Trailer,
    /// File offset of the zstd payload.
    pub payload_offset: u64,
}

impl Embedded {
    /// The compressed payload.
    pub fn payload(&self) -> &[u8] {
        let start = self.payload_offset as usize;
        &self.map[start..start + self.trailer.payload_len as usize]
    }
}

/// The payload this executable runs: [`resolve`] from the running executable, checked to
/// be packed for this binary's target (exit 9 otherwise).
pub fn resolve_for_this_executable(
    bundle_dir: Option<(PathBuf, SourceKind)>,
) -> Result<PayloadSource> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find this executable", e))?;
    let source = resolve(bundle_dir, &exe)?;
    if let Some(host) = openwork_payload::targets::host() {
        source.check_target(host)?;
    }
    Ok(source)
}

/// Chooses the payload source by the documented order (see the module docs).
pub fn resolve(
    bundle_dir: Option<(PathBuf, SourceKind)>,
    executable: &Path,
) -> Result<PayloadSource> {
    if let Some((dir, kind)) = bundle_dir {
        return load_bundle(&dir, kind);
    }
    let beside = executable
        .parent()
        .map(|dir| dir.join(MANIFEST_FILE_NAME))
        .filter(|manifest| manifest.is_file());
    match load_embedded(executable) {
        Ok(embedded) => {
            if let Some(manifest) = beside {
                tracing::info!(
                    manifest = %manifest.display(),
                    "ignoring the manifest.json beside this executable: it carries its own payload (name a bundle with --bundle-dir to run one)"
                );
            }
            Ok(embedded)
        }
        // A stub without a payload: the multi-file distribution, if there is one.
        Err(Error::Payload(e)) if e.kind() == openwork_payload::ErrorKind::NoPayload => {
            match beside {
                Some(manifest) => load_bundle(
                    manifest.parent().unwrap_or(Path::new(".")),
                    SourceKind::BundleBesideExecutable,
                ),
                None => Err(Error::Payload(e)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Reads a bundle directory's manifest.
pub fn load_bundle(dir: &Path, kind: SourceKind) -> Result<PayloadSource> {
    let manifest_path = dir.join(MANIFEST_FILE_NAME);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        Error::io(
            format!("read the bundle manifest {}", manifest_path.display()),
            e,
        )
    })?;
    let manifest = Manifest::from_json(&manifest_bytes)?;
    Ok(PayloadSource {
        kind,
        path: dir.to_path_buf(),
        digest: sha256_hex(&manifest_bytes),
        manifest,
        manifest_bytes,
        embedded: None,
    })
}

/// Maps an executable and locates its embedded payload (headers, trailer and manifest only:
/// the payload itself is hashed when it is extracted).
pub fn load_embedded(executable: &Path) -> Result<PayloadSource> {
    let file = File::open(executable)
        .map_err(|e| Error::io(format!("open {}", executable.display()), e))?;
    // SAFETY: the executable is mapped read-only. Replacing it while it runs is done by
    // rename (a new inode), which leaves this mapping intact; truncating it in place would
    // fault, as it would for the code the OS itself maps from the same file.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::io(format!("map {}", executable.display()), e))?;
    let (format, region) = container::locate(&map)?;
    let manifest_bytes = region.manifest_bytes.to_vec();
    let manifest = region.manifest.clone();
    let digest = region.manifest_sha256_hex();
    let trailer = region.trailer.clone();
    let payload_offset = region.payload_offset;
    Ok(PayloadSource {
        kind: SourceKind::Embedded,
        path: executable.to_path_buf(),
        manifest,
        manifest_bytes,
        digest,
        embedded: Some(Embedded {
            map,
            format,
            trailer,
            payload_offset,
        }),
    })
}

impl PayloadSource {
    /// Hashes the embedded payload and compares it with the trailer (a bundle has no
    /// compressed payload: its files are checked as they are installed).
    pub fn verify_payload(&self) -> Result<()> {
        let Some(embedded) = &self.embedded else {
            return Ok(());
        };
        let computed = sha2_digest::sha256_hex(embedded.payload());
        let expected = hex::encode(embedded.trailer.payload_sha256);
        if computed != expected {
            return Err(openwork_payload::Error::ChecksumMismatch {
                what: "payload".into(),
                expected,
                computed,
            }
            .into());
        }
        Ok(())
    }

    /// Refuses a payload packed for a target whose stub is not this one (a `-baseline`
    /// payload fits the plain target's stub: they share it).
    pub fn check_target(&self, stub: &openwork_payload::targets::Target) -> Result<()> {
        if !openwork_payload::targets::payload_fits(&self.manifest.target, stub) {
            return Err(Error::WrongTarget {
                found: self.manifest.target.clone(),
                expected: stub.name.clone(),
            });
        }
        Ok(())
    }
}

/// SHA-256 helpers, kept apart so the rest reads as what it does.
pub(crate) mod sha2_digest {
    use sha2::{Digest, Sha256};

    /// Lower-case hex SHA-256 of `bytes`.
    pub fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use openwork_payload::archive::{self, ArchiveInput};
    use openwork_payload::manifest::{FileEntry, MANIFEST_VERSION};
    use sha2::Digest;

    /// A manifest for one sidecar `bytes`, written as a source file into `dir`.
    fn manifest_for(bytes: &[u8], dir: &Path) -> (Manifest, Vec<ArchiveInput>) {
        let target = openwork_payload::targets::host_name().unwrap();
        let spec = openwork_payload::targets::by_name(target).unwrap();
        let entry = FileEntry {
            path: spec.sidecar_path("opencode"),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            mode: 0o755,
        };
        let source = dir.join("opencode.in");
        std::fs::write(&source, bytes).unwrap();
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            server_version: "0.1.0".into(),
            opencode_version: "1.0.0".into(),
            router_version: None,
            target: target.into(),
            files: [("opencode".to_string(), entry.clone())].into(),
        };
        (manifest, vec![ArchiveInput { entry, source }])
    }

    /// `/bin/true` (an executable of the host's format) with a payload of `sidecar`.
    fn packed(stub: &[u8], sidecar: &[u8], dir: &Path) -> Vec<u8> {
        let (manifest, inputs) = manifest_for(sidecar, dir);
        let mut tar = Vec::new();
        let tar_len = archive::write_tar(&mut tar, &inputs, 0).unwrap();
        let mut zstd = Vec::new();
        archive::compress(&tar[..], &mut zstd, archive::ZSTD_FAST_LEVEL, 0).unwrap();
        let region = openwork_payload::region::build_region(&zstd, &manifest.to_json(), tar_len);
        openwork_payload::container::inject(stub, &region).unwrap()
    }

    #[test]
    fn a_manifest_beside_the_executable_is_used_only_by_a_stub_without_payload() {
        let tmp = tempfile::tempdir().unwrap();
        let stub = std::fs::read("/bin/true").unwrap();
        // The planted bundle: a manifest and the impostor it names, beside both executables.
        let (planted, _) = manifest_for(b"#!/bin/sh\necho impostor\n", tmp.path());
        std::fs::write(tmp.path().join(MANIFEST_FILE_NAME), planted.to_json()).unwrap();

        let bare = tmp.path().join("bare");
        std::fs::write(&bare, &stub).unwrap();
        let source = resolve(None, &bare).unwrap();
        assert_eq!(source.kind, SourceKind::BundleBesideExecutable);
        assert_eq!(source.path, tmp.path());

        let carrying = tmp.path().join("packed");
        std::fs::write(&carrying, packed(&stub, b"the real opencode", tmp.path())).unwrap();
        let source = resolve(None, &carrying).unwrap();
        assert_eq!(source.kind, SourceKind::Embedded);
        assert!(source.embedded.is_some());
        assert_ne!(source.manifest.files, planted.files, "the payload's own");
        // Named explicitly, a bundle still wins.
        let named = resolve(
            Some((tmp.path().to_path_buf(), SourceKind::BundleFlag)),
            &carrying,
        )
        .unwrap();
        assert_eq!(named.kind, SourceKind::BundleFlag);
        assert_eq!(named.manifest.files, planted.files);

        // A damaged payload is reported as such, not replaced by the manifest beside it.
        let mut damaged = std::fs::read(&carrying).unwrap();
        let at = damaged.len() - 40;
        damaged[at] ^= 0x40;
        std::fs::write(&carrying, damaged).unwrap();
        let err = resolve(None, &carrying).unwrap_err();
        assert_ne!(err.exit_code(), crate::ExitCode::NoPayload, "{err}");
        // And a stub with nothing beside it has no payload.
        std::fs::remove_file(tmp.path().join(MANIFEST_FILE_NAME)).unwrap();
        let err = resolve(None, &bare).unwrap_err();
        assert_eq!(err.exit_code(), crate::ExitCode::NoPayload, "{err}");
    }
}
