//! Where the payload comes from, in this order:
//!
//! 1. a bundle directory named by `--bundle-dir` or `OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR`
//!    (development and staged runtimes);
//! 2. a `manifest.json` bundle next to the executable (the multi-file distribution);
//! 3. the payload embedded in the executable itself.
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
    /// `manifest.json` next to the executable.
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
    if let Some(host) = openwork_payload::targets::host_name() {
        source.check_target(host)?;
    }
    Ok(source)
}

/// Chooses the payload source by the documented order.
pub fn resolve(
    bundle_dir: Option<(PathBuf, SourceKind)>,
    executable: &Path,
) -> Result<PayloadSource> {
    if let Some((dir, kind)) = bundle_dir {
        return load_bundle(&dir, kind);
    }
    if let Some(dir) = executable.parent()
        && dir.join(MANIFEST_FILE_NAME).is_file()
    {
        return load_bundle(dir, SourceKind::BundleBesideExecutable);
    }
    load_embedded(executable)
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

    /// Refuses a payload packed for another target than `expected`.
    pub fn check_target(&self, expected: &str) -> Result<()> {
        if self.manifest.target != expected {
            return Err(Error::WrongTarget {
                found: self.manifest.target.clone(),
                expected: expected.to_string(),
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
