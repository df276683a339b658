//! `fetch`: getting a pinned sidecar onto this machine, verified and cached.
//!
//! Today there is one source, opencode's own platform packages on the npm registry
//! (`targets/<target>.json` names the package, `constants.json` pins the version):
//!
//! 1. If `<cache_root>/opencode/<target>/v<version>/` holds the executable and its SHA-256
//!    matches the record beside it, that is the answer: no network, works offline.
//! 2. Otherwise, under a per-entry OS file lock: find the registry the way npm does
//!    ([`Registry::discover`]), read the version document's `dist.tarball` and
//!    `dist.integrity`, download the tarball into a staging directory while hashing it,
//!    refuse it unless it matches the integrity, extract `package/bin/opencode[.exe]`,
//!    refuse it unless goblin says it is the target's format and architecture (and unless
//!    it matches a pinned SHA-256, when one is given), then rename the staging directory
//!    into place (see [`cache`]).
//!
//! Why the npm registry and not opencode's GitHub release assets: the registry publishes a
//! SHA-512 for every tarball (upstream never verified its downloads), it is what corporate
//! mirrors proxy, and it is reachable where GitHub is not. The record keeps the tarball's
//! integrity so that the manifest can name exactly what was packed.
//!
//! Progress goes to stderr as plain lines prefixed `fetch:` unless
//! [`FetchRequest::quiet`] is set.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openwork_payload::targets::{self, Target};

pub mod cache;
pub mod error;
mod http;
mod npm;
pub mod registry;

pub use cache::CacheRecord;
pub use error::{FetchError, Result};
pub use registry::{Credential, Registry, Secret};

use cache::{Check, Entry};

/// The directory the cache lives in unless told otherwise, relative to the workspace root.
pub const DEFAULT_CACHE_DIR: &str = ".local/runtime-assets";

/// What to fetch, from where, into which cache.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The platform to fetch opencode for.
    pub target: &'static Target,
    /// opencode's version; a leading `v` is accepted.
    pub version: String,
    /// The cache's root directory ([`default_cache_root`] by default).
    pub cache_root: PathBuf,
    /// Use the cache only; fail instead of touching the network.
    pub offline: bool,
    /// The registry to use; `None` discovers it the way npm does, with the workspace root
    /// as the project directory ([`Registry::discover`]).
    pub registry: Option<Registry>,
    /// The executable's SHA-256 (lower-case hex), when pinned; checked on download and on
    /// every cache hit.
    pub expected_sha256: Option<String>,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl FetchRequest {
    /// A request with the defaults: default cache root, online, discovered registry, no
    /// SHA-256 pin, progress on stderr.
    pub fn new(target: &'static Target, version: impl Into<String>) -> Self {
        FetchRequest {
            target,
            version: version.into(),
            cache_root: default_cache_root(),
            offline: false,
            registry: None,
            expected_sha256: None,
            quiet: false,
        }
    }
}

/// A verified executable in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBinary {
    /// The executable, inside the cache. Do not modify it: it is verified on every use.
    pub path: PathBuf,
    /// Its version, without a leading `v`.
    pub version: String,
    /// Lower-case hex SHA-256 of the executable.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it came from: `npm:<package>@<version>`.
    pub source: String,
    /// The tarball's Subresource Integrity as published, e.g. `sha512-<base64>`.
    pub integrity: String,
    /// Whether it was already cached (no network was used).
    pub from_cache: bool,
}

/// Gets opencode for `req.target` at `req.version` from the npm registry, or from the cache.
pub fn fetch_opencode_npm(req: &FetchRequest) -> Result<FetchedBinary> {
    let file = format!("opencode{}", req.target.exe_suffix);
    fetch_npm_bin(req, "opencode", &req.target.opencode.npm_package, &file)
}

/// Gets `bin/<file>` of the npm package `package` at `req.version`, built for `req.target`,
/// exactly as [`fetch_opencode_npm`] gets opencode (integrity, format and architecture
/// checked, cached under `<cache_root>/<name>/<target>/v<version>/`). For executables other
/// than the pinned sidecars, such as the predecessor the benchmarks compare against; `name`
/// becomes a directory name, so it must be a plain word.
pub fn fetch_npm_bin(
    req: &FetchRequest,
    name: &str,
    package: &str,
    file: &str,
) -> Result<FetchedBinary> {
    let started = Instant::now();
    let progress = Progress { quiet: req.quiet };
    let target = req.target;
    let version = normalize_version(&req.version)?;
    let file = file.to_owned();
    let source = format!("npm:{package}@{version}");
    let entry = Entry::new(&req.cache_root, name, &target.name, &version, &file);

    // Entries never change once in place, so a verified one needs no lock.
    if let Check::Valid(record) = entry.check(&source)? {
        return cache_hit(req, &entry, record, &progress);
    }
    let _lock = entry.lock()?;
    match entry.check(&source)? {
        Check::Valid(record) => return cache_hit(req, &entry, record, &progress),
        Check::Corrupt(detail) => {
            entry.remove()?;
            if req.offline {
                return Err(FetchError::CacheCorrupt {
                    path: entry.dir.clone(),
                    detail,
                });
            }
            progress.line(format_args!(
                "removed damaged cache entry {} ({detail})",
                entry.dir.display()
            ));
        }
        Check::Missing if req.offline => {
            return Err(FetchError::Offline {
                what: source,
                path: entry.dir.clone(),
            });
        }
        Check::Missing => {}
    }
    entry.remove_stale_staging();

    let registry = match &req.registry {
        Some(registry) => registry.clone(),
        None => Registry::discover(&workspace_root())?,
    };
    progress.line(format_args!(
        "{source} for {} is not cached; asking {} (from {})",
        target.name,
        registry.display_url(),
        registry.origin()
    ));
    let http = http::Http::new(registry.url_for(package), &progress)?;
    let dist = npm::version_dist(&http, &registry, package, &version)?;

    let staging = entry.staging()?;
    let tgz = staging.path().join("package.tgz");
    let (hasher, _) = http.download(
        &dist.tarball,
        registry.credential_for(&dist.tarball),
        &tgz,
        || dist.integrity.hasher(),
    )?;
    let computed = hasher.finish();
    if computed != dist.integrity {
        return Err(FetchError::IntegrityMismatch {
            url: registry::redact_url(&dist.tarball),
            expected: dist.integrity.to_string(),
            computed: computed.to_string(),
        });
    }
    progress.line(format_args!(
        "integrity verified ({})",
        abbreviate(&computed.to_string())
    ));

    let staged_binary = staging.path().join(&file);
    let extracted = npm::extract_bin(&tgz, &file, &staged_binary)?.ok_or_else(|| {
        FetchError::MissingMember {
            source_name: source.clone(),
            member: format!("package/bin/{file}"),
        }
    })?;
    let tarball_size = fs_err::metadata(&tgz)?.len();
    fs_err::remove_file(&tgz)?;
    check_binary(&staged_binary, target, &source, &extracted.member)?;
    check_pin(req, &source, &extracted.sha256)?;

    let record = CacheRecord {
        record_version: 1,
        target: target.name.clone(),
        version: version.clone(),
        source: source.clone(),
        integrity: computed.to_string(),
        file: file.clone(),
        sha256: extracted.sha256,
        size: extracted.size,
        tarball_size: Some(tarball_size),
    };
    entry.commit(staging, &record)?;
    progress.line(format_args!(
        "cached {} ({}, sha256 {}) in {:.1} s",
        entry.binary.display(),
        http::megabytes(record.size),
        &record.sha256[..16],
        started.elapsed().as_secs_f64()
    ));
    Ok(fetched(&entry, record, false))
}

/// The pinned opencode (`opencodeVersion` in the workspace's `constants.json`) for
/// `target_name`, fetched from the npm registry into the default cache if it is not there
/// yet, else verified in the cache without network. For benchmarks and end-to-end tests.
pub fn ensure_pinned_opencode(target_name: &str) -> Result<PathBuf> {
    let target = targets::by_name(target_name).ok_or_else(|| FetchError::UnknownTarget {
        name: target_name.to_owned(),
        known: targets::all()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let pins = crate::constants::Constants::built_in();
    Ok(fetch_opencode_npm(&FetchRequest::new(target, pins.opencode_version()))?.path)
}

/// The workspace root this crate was built in (the directory with `constants.json`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `<workspace root>/.local/runtime-assets` (git-ignored).
pub fn default_cache_root() -> PathBuf {
    workspace_root().join(DEFAULT_CACHE_DIR)
}

/// The packager's documented exit code for a fetch error.
pub fn exit_code(error: &FetchError) -> crate::ExitCode {
    use crate::ExitCode;
    match error {
        FetchError::InvalidVersion { .. } | FetchError::UnknownTarget { .. } => ExitCode::Usage,
        FetchError::MissingMember { .. } => ExitCode::BadInput,
        FetchError::NoRegistry { .. }
        | FetchError::InvalidRegistry { .. }
        | FetchError::Offline { .. }
        | FetchError::Http { .. }
        | FetchError::HttpStatus { .. }
        | FetchError::VersionNotFound { .. }
        | FetchError::BadMetadata { .. } => ExitCode::Network,
        FetchError::IntegrityMismatch { .. }
        | FetchError::Sha256Mismatch { .. }
        | FetchError::CacheCorrupt { .. } => ExitCode::Integrity,
        FetchError::WrongBinary { .. } => ExitCode::WrongTarget,
        FetchError::Io { .. } | FetchError::FsIo(_) => ExitCode::Io,
    }
}

/// `1.2.27` from `1.2.27` or `v1.2.27`; refuses anything that is not a plain version (it
/// becomes part of a URL and of a cache path).
pub fn normalize_version(version: &str) -> Result<String> {
    let bare = version
        .trim()
        .strip_prefix(['v', 'V'])
        .unwrap_or(version.trim());
    let plain = bare.starts_with(|c: char| c.is_ascii_digit())
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if plain {
        Ok(bare.to_owned())
    } else {
        Err(FetchError::InvalidVersion {
            version: version.to_owned(),
        })
    }
}

fn cache_hit(
    req: &FetchRequest,
    entry: &Entry,
    record: CacheRecord,
    progress: &Progress,
) -> Result<FetchedBinary> {
    check_pin(req, &record.source, &record.sha256)?;
    progress.line(format_args!(
        "using cached {} (sha256 verified)",
        entry.binary.display()
    ));
    Ok(fetched(entry, record, true))
}

fn fetched(entry: &Entry, record: CacheRecord, from_cache: bool) -> FetchedBinary {
    FetchedBinary {
        path: entry.binary.clone(),
        version: record.version,
        sha256: record.sha256,
        size: record.size,
        source: record.source,
        integrity: record.integrity,
        from_cache,
    }
}

/// Refuses an executable that is not the target's format and architecture.
fn check_binary(path: &Path, target: &Target, source: &str, member: &str) -> Result<()> {
    let data = fs_err::read(path)?;
    let found = match openwork_payload::container::identify(&data) {
        Ok(info) if info.format == target.format && info.arch == target.arch => return Ok(()),
        Ok(info) => format!("{} {}", info.format, info.arch),
        Err(e) => e.to_string(),
    };
    Err(FetchError::WrongBinary {
        source_name: source.to_owned(),
        member: member.to_owned(),
        target: target.name.clone(),
        expected: format!("{} {}", target.format, target.arch),
        found,
    })
}

fn check_pin(req: &FetchRequest, source: &str, computed: &str) -> Result<()> {
    match &req.expected_sha256 {
        Some(expected) if !expected.eq_ignore_ascii_case(computed) => {
            Err(FetchError::Sha256Mismatch {
                what: source.to_owned(),
                expected: expected.clone(),
                computed: computed.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// `sha512-B9xaBkgeWcPi…` for progress lines.
fn abbreviate(text: &str) -> String {
    match text.char_indices().nth(24) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Plain progress lines on stderr.
pub(crate) struct Progress {
    quiet: bool,
}

impl Progress {
    pub(crate) fn line(&self, args: fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("fetch: {args}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(normalize_version("1.2.27").unwrap(), "1.2.27");
        assert_eq!(normalize_version("v1.2.27").unwrap(), "1.2.27");
        assert_eq!(
            normalize_version(" V2.0.0-beta.1+b5 ").unwrap(),
            "2.0.0-beta.1+b5"
        );
        for bad in ["", "v", "latest", "1.2/../x", "../1", "1 2"] {
            assert!(
                matches!(
                    normalize_version(bad),
                    Err(FetchError::InvalidVersion { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pins_come_from_constants_json() {
        let pins = crate::constants::Constants::built_in();
        normalize_version(pins.opencode_version()).unwrap();
        assert!(default_cache_root().ends_with(DEFAULT_CACHE_DIR));
    }
}
