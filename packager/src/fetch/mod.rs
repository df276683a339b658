//! `fetch`: getting a pinned sidecar onto this machine, verified and cached.
//!
//! Every input is pinned by `inputs.lock.json` ([`crate::lock`]): the executable's SHA-256
//! whatever the source, plus the tarball's integrity and size for npm and the release
//! asset's SHA-256 where one is locked ([`FetchRequest::pin_from`]). A request that nothing
//! pins is refused unless [`FetchRequest::allow_unpinned`] is set (then warned about, and
//! recorded as unverified where nothing else vouched for it).
//!
//! Sources of opencode ([`Source`]); all of them end in the same cache entry,
//! `<cache_root>/opencode/<target>/v<version>/`, and the same checks of the executable
//! (goblin: the target's format and architecture; the pins):
//!
//! - **npm** (the default, described below): the registry must announce the locked
//!   integrity, and the tarball must hash to it.
//! - **github**: `<releases>/download/v<version>/<githubAsset>` ([`GITHUB_RELEASES_URL`],
//!   overridable with `--github-releases` / [`GITHUB_RELEASES_ENV`] for mirrors and tests). GitHub publishes no
//!   checksum we could trust more than the download itself; the lock's executable SHA-256
//!   (and `assetSha256`, where set) checks it.
//! - **url**: the same for any URL (a mirror); the asset pin applies when the URL's file
//!   name is the target's `githubAsset`.
//! - **file**: a local binary or asset, for air-gapped machines; checked like the others.
//!
//! Archives are extracted defensively (see the `archive` module). The cache record (`fetch.json`) names
//! the source and whether anything vouched for it; a request only takes an entry from its
//! own source that satisfies its pins, and an unverified entry only when the request allows
//! unverified content. Otherwise the entry is fetched again and swapped in once verified
//! (offline: an error naming the reason), so a verified request is never answered silently
//! by a mirror's or an unverified file.
//!
//! The npm source in detail (`targets/<target>.json` names the package, `constants.json`
//! pins the version):
//!
//! 1. If `<cache_root>/opencode/<target>/v<version>/` holds the executable and its SHA-256
//!    matches the record beside it, that is the answer: no network, works offline.
//! 2. Otherwise, under a per-entry OS file lock: find the registry the way npm does
//!    ([`Registry::discover`]), read the version document's `dist.tarball` and
//!    `dist.integrity`, refuse it unless the integrity is the locked one, download the
//!    tarball into a staging directory while hashing it (never past the locked size),
//!    refuse it unless it matches the integrity, extract `package/bin/opencode[.exe]`,
//!    refuse it unless goblin says it is the target's format and architecture and it
//!    matches the locked SHA-256, then rename the staging directory into place (see
//!    [`cache`]).
//!
//! Why the npm registry is the default rather than opencode's GitHub release assets: it publishes a
//! SHA-512 for every tarball (upstream never verified its downloads), it is what corporate
//! mirrors proxy, and it is reachable where GitHub is not. The record keeps the tarball's
//! integrity so that the manifest can name exactly what was packed.
//!
//! Progress goes to stderr as plain lines prefixed `fetch:` unless
//! [`FetchRequest::quiet`] is set; warnings about unverified content always do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openwork_payload::targets::{self, Target};

use crate::lock::{Input, InputsLock};
use crate::progress::Progress;

mod archive;
pub mod cache;
pub mod error;
mod http;
mod npm;
pub mod registry;

pub use cache::{CacheRecord, Provenance};
pub use error::{FetchError, Result};
pub use registry::{Credential, Registry, Secret};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cache::{Entry, State};

/// Where opencode's GitHub release assets are published.
pub const GITHUB_RELEASES_URL: &str = "https://github.com/sst/opencode/releases";
/// The environment variable behind `--github-releases` (read by the CLI): replaces
/// [`GITHUB_RELEASES_URL`] with a mirror with the same layout, or a test server.
pub const GITHUB_RELEASES_ENV: &str = "OPENWORK_GITHUB_RELEASES_URL";

/// Where to get opencode from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// opencode's platform package on the npm registry.
    Npm,
    /// opencode's GitHub release asset for the target, from this release page's base URL
    /// (a mirror with GitHub's layout; `None`: GitHub's, [`GITHUB_RELEASES_URL`]).
    Github(Option<String>),
    /// A release asset (`.tar.gz`, `.zip`) or a bare executable at this URL.
    Url(String),
    /// A local release asset or executable.
    File(PathBuf),
}

/// What to fetch, from where, into which cache.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The platform to fetch opencode for.
    pub target: &'static Target,
    /// opencode's version; a leading `v` is accepted.
    pub version: String,
    /// The cache's root directory ([`crate::paths::default_cache_root`] by default).
    pub cache_root: PathBuf,
    /// Use the cache only; fail instead of touching the network.
    pub offline: bool,
    /// The registry to use; `None` discovers it the way npm does, with the workspace root
    /// as the project directory ([`Registry::discover`]).
    pub registry: Option<Registry>,
    /// The executable's SHA-256 (lower-case hex), when pinned; checked on download and on
    /// every cache hit, whatever the source.
    pub expected_sha256: Option<String>,
    /// SHA-256 of the file downloaded or given (the release asset, or the bare executable)
    /// for the github, url and file sources; see [`FetchRequest::pin_from`].
    pub asset_sha256: Option<String>,
    /// The npm tarball's integrity as locked (`sha512-…`): the registry must announce it,
    /// and a cache entry must have been stored from it.
    pub expected_integrity: Option<String>,
    /// The npm tarball's size as locked: the download may not grow past it.
    pub expected_tarball_size: Option<u64>,
    /// Accept what no pin vouches for (recorded as unverified): local experiments only.
    pub allow_unpinned: bool,
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
            cache_root: crate::paths::default_cache_root(),
            offline: false,
            registry: None,
            expected_sha256: None,
            asset_sha256: None,
            expected_integrity: None,
            expected_tarball_size: None,
            allow_unpinned: false,
            quiet: false,
        }
    }

    /// Sets the pins `inputs.lock.json` holds for `input` on this target at this version:
    /// the executable's SHA-256 for every source (the same build, however it arrives); the
    /// tarball's integrity and size for npm; the release asset's SHA-256 for github, and for
    /// url and file when their file name is the target's `githubAsset` (a copy of the same
    /// asset). Nothing when the lock has no entry: the fetch then refuses unless
    /// [`FetchRequest::allow_unpinned`].
    pub fn pin_from(&mut self, lock: &InputsLock, input: Input, source: &Source) {
        let Some(locked) = lock.entry(input, &self.target.name, &self.version) else {
            return;
        };
        let asset = &self.target.opencode.github_asset;
        let named_like_the_asset = |name: Option<&str>| name == Some(asset.as_str());
        self.expected_sha256 = Some(locked.sha256.clone());
        match source {
            Source::Npm => {
                self.expected_integrity = Some(locked.integrity.clone());
                self.expected_tarball_size = Some(locked.tarball_size);
            }
            Source::Github(_) => self.asset_sha256 = locked.asset_sha256.clone(),
            Source::Url(url) => {
                let name = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.path_segments()?.next_back().map(str::to_owned));
                if named_like_the_asset(name.as_deref()) {
                    self.asset_sha256 = locked.asset_sha256.clone();
                }
            }
            Source::File(path) => {
                if named_like_the_asset(path.file_name().and_then(|n| n.to_str())) {
                    self.asset_sha256 = locked.asset_sha256.clone();
                }
            }
        }
    }

    /// Refuses a request that nothing pins, unless it allows that (then warns).
    fn require_pin(&self, what: &str) -> Result<()> {
        if self.expected_sha256.is_some()
            || self.asset_sha256.is_some()
            || self.expected_integrity.is_some()
        {
            return Ok(());
        }
        if !self.allow_unpinned {
            return Err(FetchError::Unverified {
                what: what.to_owned(),
                target: self.target.name.clone(),
            });
        }
        warn(format_args!(
            "{what} for {} is pinned by nothing; accepting it because of --allow-unpinned \
             (the cache records it as unverified unless a registry integrity vouches for it)",
            self.target.name
        ));
        Ok(())
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
    /// Where it came from: `npm:<package>@<version>`, `github:v<version>/<asset>`,
    /// `url:<url>` or `file:<file name>`.
    pub source: String,
    /// The download's Subresource Integrity: the tarball's as published for npm
    /// (`sha512-<base64>`), the asset's as computed for the others (`sha256-<base64>`).
    pub integrity: String,
    /// Whether a published integrity or a pin vouched for it.
    pub verified: bool,
    /// SHA-256 of the release asset or file it came from (not for npm).
    pub asset_sha256: Option<String>,
    /// Size of the download it came from (the npm tarball, the asset), when recorded.
    pub download_size: Option<u64>,
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
    let progress = Progress::new("fetch", req.quiet);
    let target = req.target;
    let version = crate::version::normalize(&req.version)?;
    let source = format!("npm:{package}@{version}");
    let entry = Entry::new(&req.cache_root, name, &target.name, &version, file);
    req.require_pin(&source)?;
    let want = Want {
        source: &source,
        asset_pin: None,
        exe_pin: req.expected_sha256.as_deref(),
        integrity_pin: req.expected_integrity.as_deref(),
        // The registry's integrity vouches for the bytes it announced (only the lock
        // vouches for the announcement).
        allow_unverified: true,
    };
    through_cache(
        req,
        &entry,
        &want,
        &progress,
        Refresh::IfUnsuitable,
        |staging| {
            let registry = registry_for(req)?;
            progress.line(format_args!(
                "{source} for {} is not cached; asking {} (from {})",
                target.name,
                registry.display_url(),
                registry.origin()
            ));
            let http = http::Http::new(registry.url_for(package), &progress)?;
            let dist = npm::version_dist(&http, &registry, package, &version)?;
            let announced = dist.integrity.to_string();
            if let Some(locked) = &req.expected_integrity
                && *locked != announced
            {
                return Err(FetchError::LockMismatch {
                    what: source.clone(),
                    target: target.name.clone(),
                    field: "integrity",
                    locked: locked.clone(),
                    found: announced,
                });
            }

            let tgz = staging.join("package.tgz");
            let limit = match req.expected_tarball_size {
                Some(size) => http::Limit::exactly(size, "the size inputs.lock.json locked"),
                None => http::Limit::download(),
            };
            let (hasher, _) = http.download(
                &dist.tarball,
                registry.credential_for(&dist.tarball),
                &tgz,
                limit,
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

            let staged_binary = staging.join(file);
            let extracted = npm::extract_bin(&tgz, file, &staged_binary)?.ok_or_else(|| {
                FetchError::MissingMember {
                    source_name: source.clone(),
                    member: format!("package/bin/{file}"),
                }
            })?;
            let tarball_size = fs_err::metadata(&tgz)?.len();
            fs_err::remove_file(&tgz)?;
            check_binary(&staged_binary, target, &source, &extracted.member)?;
            check_pin(req.expected_sha256.as_deref(), &source, &extracted.sha256)?;
            let record = CacheRecord {
                record_version: 1,
                target: target.name.clone(),
                version: version.clone(),
                source: source.clone(),
                integrity: computed.to_string(),
                file: file.to_owned(),
                sha256: extracted.sha256,
                size: extracted.size,
                tarball_size: Some(tarball_size),
            };
            Ok((record, Provenance::default()))
        },
    )
}

/// The integrity the registry announces now for `package` at `req.version` (`sha512-…`):
/// what `openwork-packager lock` records. Nothing is downloaded.
pub fn announced_integrity(req: &FetchRequest, package: &str) -> Result<String> {
    let progress = Progress::new("fetch", req.quiet);
    let version = crate::version::normalize(&req.version)?;
    let registry = registry_for(req)?;
    let http = http::Http::new(registry.url_for(package), &progress)?;
    Ok(npm::version_dist(&http, &registry, package, &version)?
        .integrity
        .to_string())
}

/// The request's registry, else the one npm would use here.
fn registry_for(req: &FetchRequest) -> Result<Registry> {
    match &req.registry {
        Some(registry) => Ok(registry.clone()),
        None => Registry::discover(&crate::paths::workspace_root()),
    }
}

/// Gets opencode for `req.target` at `req.version` from `source` (see the module docs for
/// what each source checks), or from the cache.
pub fn fetch_opencode(req: &FetchRequest, source: &Source) -> Result<FetchedBinary> {
    match source {
        Source::Npm => fetch_opencode_npm(req),
        Source::Github(mirror) => {
            let version = crate::version::normalize(&req.version)?;
            let asset = &req.target.opencode.github_asset;
            let (base, origin) = match mirror.as_deref().map(str::trim) {
                Some(url) if !url.is_empty() => (url, "--github-releases"),
                _ => (GITHUB_RELEASES_URL, "the built-in default"),
            };
            let url = format!("{}/download/v{version}/{asset}", base.trim_end_matches('/'));
            let url = parse_url(&url, origin)?;
            fetch_asset(req, &format!("github:v{version}/{asset}"), &url)
        }
        Source::Url(url) => {
            let url = parse_url(url, "--url")?;
            fetch_asset(req, &format!("url:{}", registry::redact_url(&url)), &url)
        }
        Source::File(path) => fetch_file(req, path),
    }
}

fn parse_url(text: &str, origin: &str) -> Result<reqwest::Url> {
    let invalid = |reason: String| FetchError::InvalidUrl {
        url: text.to_owned(),
        origin: origin.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http and https URLs can be fetched".into()));
    }
    Ok(url)
}

/// A release asset (or a bare executable) at `url`: downloaded into staging while hashed,
/// checked against the pins, then extracted and checked like the npm executable.
fn fetch_asset(req: &FetchRequest, what: &str, url: &reqwest::Url) -> Result<FetchedBinary> {
    let progress = Progress::new("fetch", req.quiet);
    let target = req.target;
    let version = crate::version::normalize(&req.version)?;
    let file = format!("opencode{}", target.exe_suffix);
    let entry = Entry::new(&req.cache_root, "opencode", &target.name, &version, &file);
    req.require_pin(what)?;
    let want = Want {
        source: what,
        asset_pin: req.asset_sha256.as_deref(),
        exe_pin: req.expected_sha256.as_deref(),
        integrity_pin: None,
        allow_unverified: req.allow_unpinned,
    };
    through_cache(
        req,
        &entry,
        &want,
        &progress,
        Refresh::IfUnsuitable,
        |staging| {
            progress.line(format_args!(
                "{what} for {} is not cached; downloading",
                target.name
            ));
            let http = http::Http::new(url, &progress)?;
            let download = staging.join("download");
            let (hasher, size) = http
                .download(url, None, &download, http::Limit::download(), || {
                    cache::Sha256Writer::new(std::io::sink())
                })
                .map_err(asset_status_hint)?;
            let (_, asset_sha256, _) = hasher.finish();
            check_pin(req.asset_sha256.as_deref(), what, &asset_sha256)?;
            let record = import(
                req,
                &want,
                &version,
                &file,
                staging,
                &download,
                asset_sha256,
                size,
            )?;
            fs_err::remove_file(&download)?;
            Ok(record)
        },
    )
}

/// The HTTP layer's hints speak npm; these speak release assets.
fn asset_status_hint(error: FetchError) -> FetchError {
    match error {
        FetchError::HttpStatus { url, status, .. } if matches!(status, 401 | 403 | 404) => {
            let hint = if status == 404 {
                "; no such release asset: check the version, the target's githubAsset and the \
                 URL (OPENWORK_GITHUB_RELEASES_URL for github)"
            } else {
                "; the server wants credentials, which this source does not send: use a \
                 mirror that does not, or download the asset and use --source file"
            };
            FetchError::HttpStatus { url, status, hint }
        }
        other => other,
    }
}

/// A local binary or release asset, for machines without network: always copied afresh
/// (it is local, so cheap, and the user named it deliberately).
fn fetch_file(req: &FetchRequest, path: &Path) -> Result<FetchedBinary> {
    let progress = Progress::new("fetch", req.quiet);
    let target = req.target;
    let version = crate::version::normalize(&req.version)?;
    let file = format!("opencode{}", target.exe_suffix);
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let what = format!("file:{name}");
    let entry = Entry::new(&req.cache_root, "opencode", &target.name, &version, &file);
    req.require_pin(&what)?;
    let want = Want {
        source: &what,
        asset_pin: req.asset_sha256.as_deref(),
        exe_pin: req.expected_sha256.as_deref(),
        integrity_pin: None,
        allow_unverified: req.allow_unpinned,
    };
    let local = FetchRequest {
        offline: false,
        ..req.clone()
    };
    through_cache(
        &local,
        &entry,
        &want,
        &progress,
        Refresh::Always,
        |staging| {
            let (asset_sha256, size) = cache::sha256_file(path)?;
            check_pin(req.asset_sha256.as_deref(), &what, &asset_sha256)?;
            import(
                req,
                &want,
                &version,
                &file,
                staging,
                path,
                asset_sha256,
                size,
            )
        },
    )
}

/// Extracts and checks the executable in `src` (an archive or the executable itself) into
/// `staging`, and describes it for the cache.
#[allow(clippy::too_many_arguments)]
fn import(
    req: &FetchRequest,
    want: &Want<'_>,
    version: &str,
    file: &str,
    staging: &Path,
    src: &Path,
    asset_sha256: String,
    asset_size: u64,
) -> Result<(CacheRecord, Provenance)> {
    let kind = archive::Kind::sniff(src)?;
    let staged = staging.join(file);
    let extracted = archive::extract(src, kind, file, &staged, want.source)?;
    check_binary(&staged, req.target, want.source, &extracted.member)?;
    check_pin(want.exe_pin, want.source, &extracted.sha256)?;
    let digest = hex::decode(&asset_sha256).expect("sha256 is hex");
    let record = CacheRecord {
        record_version: 1,
        target: req.target.name.clone(),
        version: version.to_owned(),
        source: want.source.to_owned(),
        integrity: format!("sha256-{}", BASE64.encode(digest)),
        file: file.to_owned(),
        sha256: extracted.sha256,
        size: extracted.size,
        tarball_size: Some(asset_size),
    };
    let provenance = Provenance {
        // Every pin that is set has matched by now.
        verified: want.pinned(),
        asset_sha256: Some(asset_sha256),
    };
    Ok((record, provenance))
}

/// What a request accepts from the cache.
struct Want<'a> {
    /// The request's source identity (`npm:…`, `github:…`, `url:…`, `file:…`).
    source: &'a str,
    /// SHA-256 of the download or given file.
    asset_pin: Option<&'a str>,
    /// SHA-256 of the executable.
    exe_pin: Option<&'a str>,
    /// The npm tarball's integrity the entry must have been stored from.
    integrity_pin: Option<&'a str>,
    /// Whether an entry that nothing vouched for will do.
    allow_unverified: bool,
}

impl Want<'_> {
    fn pinned(&self) -> bool {
        self.asset_pin.is_some() || self.exe_pin.is_some()
    }

    /// Why `record` does not serve this request, if it does not. Entries are shared by all
    /// sources, but a request only takes one from its own source: "verified" means
    /// something different per source, and a mirror's file must not pass for GitHub's.
    fn refuses(&self, record: &CacheRecord, provenance: &Provenance) -> Option<String> {
        if record.source != self.source {
            return Some(format!("it came from {}", record.source));
        }
        if let Some(pin) = self.asset_pin {
            match &provenance.asset_sha256 {
                Some(found) if found.eq_ignore_ascii_case(pin) => {}
                Some(found) => {
                    return Some(format!(
                        "its download had sha256 {found}, the pin says {pin}"
                    ));
                }
                None => return Some("its record has no download sha256 to check the pin".into()),
            }
        }
        if let Some(pin) = self.exe_pin
            && !record.sha256.eq_ignore_ascii_case(pin)
        {
            return Some(format!(
                "its executable has sha256 {}, the pin says {pin}",
                record.sha256
            ));
        }
        if let Some(pin) = self.integrity_pin
            && record.integrity != pin
        {
            return Some(format!(
                "it was stored from a tarball with integrity {}, the lock says {pin}",
                record.integrity
            ));
        }
        if !provenance.verified && !self.pinned() && !self.allow_unverified {
            return Some("it was stored unverified".into());
        }
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// Use a suitable cache entry.
    IfUnsuitable,
    /// Replace the entry whatever it holds.
    Always,
}

/// The cache discipline shared by every source: a suitable verified entry answers without
/// network; otherwise, under the entry's lock, `download` fills a staging directory and
/// the result is swapped in only when complete, so a failure leaves the cache as it was.
fn through_cache(
    req: &FetchRequest,
    entry: &Entry,
    want: &Want<'_>,
    progress: &Progress,
    refresh: Refresh,
    download: impl FnOnce(&Path) -> Result<(CacheRecord, Provenance)>,
) -> Result<FetchedBinary> {
    let started = Instant::now();
    // Entries never change once in place, so a verified one needs no lock.
    if refresh == Refresh::IfUnsuitable
        && let State::Valid(record, provenance) = entry.inspect()?
        && want.refuses(&record, &provenance).is_none()
    {
        return Ok(cache_hit(entry, want, record, provenance, progress));
    }
    let _lock = entry.lock()?;
    match entry.inspect()? {
        State::Valid(record, provenance) => {
            let reason = match refresh {
                Refresh::IfUnsuitable => want.refuses(&record, &provenance),
                Refresh::Always => Some("a local file replaces it".into()),
            };
            let Some(reason) = reason else {
                return Ok(cache_hit(entry, want, record, provenance, progress));
            };
            if req.offline {
                return Err(FetchError::CacheUnusable {
                    what: want.source.to_owned(),
                    path: entry.dir.clone(),
                    reason,
                });
            }
            progress.line(format_args!(
                "not using the cached {} ({reason}); it is replaced once {} has verified",
                entry.dir.display(),
                want.source
            ));
        }
        State::Corrupt(detail) => {
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
        State::Missing if req.offline => {
            return Err(FetchError::Offline {
                what: want.source.to_owned(),
                path: entry.dir.clone(),
            });
        }
        State::Missing => {}
    }
    entry.remove_stale_staging();
    let staging = entry.staging()?;
    let (record, provenance) = download(staging.path())?;
    entry.commit(staging, &record, &provenance)?;
    progress.line(format_args!(
        "cached {} ({}, sha256 {}{}) in {:.1} s",
        entry.binary.display(),
        http::megabytes(record.size),
        &record.sha256[..16],
        if provenance.verified {
            ""
        } else {
            ", UNVERIFIED"
        },
        started.elapsed().as_secs_f64()
    ));
    Ok(fetched(entry, record, provenance, false))
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
    let mut request = FetchRequest::new(target, pins.opencode_version());
    request.pin_from(&InputsLock::built_in(), Input::Opencode, &Source::Npm);
    Ok(fetch_opencode_npm(&request)?.path)
}

/// opencode `version` for `target_name` from the npm registry through the default cache,
/// for versions the lock does not pin: the update channel's tests and benchmark measure a
/// chain of real releases (1.18.29 … 1.19.5) that no release is built from. The tarball is
/// checked against the SHA-512 integrity the registry announces before anything is
/// unpacked from it, as for every npm fetch; nothing else vouches for it (the warning says
/// so), so it is for measuring, never for a release.
pub fn ensure_registry_opencode(target_name: &str, version: &str) -> Result<PathBuf> {
    let target = targets::by_name(target_name).ok_or_else(|| FetchError::UnknownTarget {
        name: target_name.to_owned(),
        known: targets::all()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let mut request = FetchRequest::new(target, version);
    request.pin_from(&InputsLock::built_in(), Input::Opencode, &Source::Npm);
    request.allow_unpinned = true;
    Ok(fetch_opencode_npm(&request)?.path)
}

fn cache_hit(
    entry: &Entry,
    want: &Want<'_>,
    record: CacheRecord,
    provenance: Provenance,
    progress: &Progress,
) -> FetchedBinary {
    // A pin that matches now vouches for an entry stored unverified.
    let verified = provenance.verified || want.pinned();
    if verified {
        progress.line(format_args!(
            "using cached {} (sha256 verified)",
            entry.binary.display()
        ));
    } else {
        warn(format_args!(
            "using cached {}, which nothing verified (stored from {} without a pin)",
            entry.binary.display(),
            record.source
        ));
    }
    let mut fetched = fetched(entry, record, provenance, true);
    fetched.verified = verified;
    fetched
}

fn fetched(
    entry: &Entry,
    record: CacheRecord,
    provenance: Provenance,
    from_cache: bool,
) -> FetchedBinary {
    FetchedBinary {
        path: entry.binary.clone(),
        version: record.version,
        sha256: record.sha256,
        size: record.size,
        source: record.source,
        integrity: record.integrity,
        verified: provenance.verified,
        asset_sha256: provenance.asset_sha256,
        download_size: record.tarball_size,
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

fn check_pin(pin: Option<&str>, source: &str, computed: &str) -> Result<()> {
    match pin {
        Some(expected) if !expected.eq_ignore_ascii_case(computed) => {
            Err(FetchError::Sha256Mismatch {
                what: source.to_owned(),
                expected: expected.to_owned(),
                computed: computed.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Warnings go to stderr even when progress is quiet: they are about trust.
fn warn(args: fmt::Arguments<'_>) {
    eprintln!("warning: fetch: {args}");
}

/// `sha512-B9xaBkgeWcPi…` for progress lines.
fn abbreviate(text: &str) -> String {
    match text.char_indices().nth(24) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Plain progress lines on stderr.
#[cfg(test)]
mod tests {
    #[test]
    fn the_cache_is_under_the_workspace() {
        use crate::paths::{DEFAULT_CACHE_DIR, default_cache_root, workspace_root};
        assert!(default_cache_root().ends_with(DEFAULT_CACHE_DIR));
        assert!(workspace_root().join("constants.json").is_file());
    }
}
