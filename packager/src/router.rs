//! `build-router`: opencode-router compiled from source with the pinned Bun, per target.
//!
//! opencode-router is not published on any registry, so a release builds it from a source
//! directory (`router.sourceDir` in `constants.json`, or `--source`), the way upstream does:
//!
//! ```text
//! cd <source> && <host bun> build src/cli.ts --compile --outfile <staging>/opencode-router[.exe]
//!     --define __OPENCODE_ROUTER_VERSION__="<package.json version>"
//!     --target <bun.compileTarget> --compile-executable-path <target's bun>
//! ```
//!
//! Both Buns come verified from the npm registry ([`crate::bun`]); passing the target's Bun
//! explicitly keeps cross builds off the network. Bun runs with an empty environment (a
//! throw-away `HOME` and `TMPDIR`, no proxy, no registry settings), so a build cannot pick
//! up anything from the machine that the cache key does not describe.
//!
//! **Cache.** The output lands in `<cache_root>/opencode-router/<target>/v<version>-<key16>/`
//! with the fetch cache's discipline (staging directory renamed into place, verified on
//! every use), keyed by the SHA-256 of the source tree, the Bun version, the target and
//! this builder's command line ([`BUILD_FORMAT`]). The key is computed before Bun is even
//! looked at, so an unchanged source costs a tree hash and one hash of the cached output,
//! and needs neither the network nor a cached Bun.
//!
//! **Reproducibility.** Bun builds (checked with 1.3.10 and 1.4.5) are byte-identical for the same source, Bun and
//! target, with two details this module pins down: the output's file name is embedded (as
//! `/$bunfs/root/<name>`), so it is always `opencode-router[.exe]` and `--out` is a copy;
//! and the entry point's path relative to the working directory is embedded in a comment,
//! so Bun runs in the source directory with the relative entry `src/cli.ts`.
//!
//! **Version.** The version comes from the source's `package.json` and must be a plain
//! semver. A mismatch with the pinned `router.version` is an error, not a warning: the
//! manifest records the pin as `routerVersion`, and a binary whose `--version` says
//! otherwise would make every runtime built from it lie about what it runs. Change the pin
//! (or pass `--constants`) to build another version.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use openwork_payload::targets::Target;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::constants::Constants;
use crate::error::{Error, Result};
use crate::fetch::cache::{Entry, sha256_file};
use crate::fetch::{self, FetchRequest, Registry, Source};
use crate::lock::{Input, InputsLock};

/// The cache directory name of router builds.
pub const CACHE_NAME: &str = "opencode-router";
/// The entry point, relative to the source directory (upstream's layout).
pub const ENTRY_POINT: &str = "src/cli.ts";
/// The global the build defines to the version, as upstream's source expects.
pub const VERSION_DEFINE: &str = "__OPENCODE_ROUTER_VERSION__";
/// Version of the build command line; part of the cache key, so that changing how Bun is
/// invoked never reuses an output built the old way.
pub const BUILD_FORMAT: u32 = 1;
/// Details of a build, beside the executable in its cache entry.
pub const BUILD_RECORD_FILE: &str = "build.json";

/// What to build, with which Bun, into which cache.
#[derive(Debug, Clone)]
pub struct RouterBuildRequest {
    /// The platform to build for.
    pub target: &'static Target,
    /// The source directory (with `package.json` and `src/cli.ts`).
    pub source: PathBuf,
    /// The version the source's `package.json` must have (the pin), if any.
    pub expected_version: Option<String>,
    /// The Bun version to build with (`bunVersion`).
    pub bun_version: String,
    /// The cache root for builds ([`crate::paths::default_cache_root`] by default).
    pub cache_root: PathBuf,
    /// The cache root for Bun (the same by default).
    pub bun_cache_root: PathBuf,
    /// Also copy the executable here (the cached one must not be modified).
    pub out: Option<PathBuf>,
    /// Use cached Bun and cached builds only; never touch the network.
    pub offline: bool,
    /// The registry for Bun; `None` discovers it the way npm does.
    pub registry: Option<Registry>,
    /// What Bun must be, per target (`inputs.lock.json`).
    pub lock: InputsLock,
    /// Accept a Bun the lock does not pin (local experiments).
    pub allow_unpinned: bool,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl RouterBuildRequest {
    /// A build of the source in `source` with the pinned `bunVersion` (checked against the
    /// built-in lock), into the default cache, with no version expectation.
    pub fn new(target: &'static Target, source: PathBuf, constants: &Constants) -> Self {
        RouterBuildRequest {
            target,
            source,
            expected_version: None,
            bun_version: constants.bun_version.clone(),
            cache_root: crate::paths::default_cache_root(),
            bun_cache_root: crate::paths::default_cache_root(),
            out: None,
            offline: false,
            registry: None,
            lock: InputsLock::built_in(),
            allow_unpinned: false,
            quiet: false,
        }
    }
}

/// The router a release or a staged bundle carries.
#[derive(Debug, Clone)]
pub struct RouterSource {
    /// The source directory (with `package.json` and `src/cli.ts`).
    pub dir: PathBuf,
    /// How reports name it: as given, not this machine's absolute path.
    pub shown: String,
    /// The version its `package.json` must say, when pinned in constants.json.
    pub expected_version: Option<String>,
}

impl RouterSource {
    /// `--router-source DIR` if given, else `router.sourceDir` of constants.json (under
    /// `workspace`, checked against `router.version`), else none: a release carries
    /// opencode alone unless a real router is named.
    pub fn named(
        flag: Option<PathBuf>,
        constants: &Constants,
        workspace: &Path,
    ) -> Option<RouterSource> {
        if let Some(dir) = flag {
            return Some(RouterSource {
                shown: dir.display().to_string(),
                dir,
                expected_version: None,
            });
        }
        constants.router.as_ref().map(|pin| RouterSource {
            dir: workspace.join(&pin.source_dir),
            shown: pin.source_dir.clone(),
            expected_version: Some(pin.version.clone()),
        })
    }
}

/// A built (or cached) opencode-router.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltRouter {
    /// The executable in the cache. Do not modify it: it is verified on every use.
    pub path: PathBuf,
    /// The copy made for [`RouterBuildRequest::out`].
    pub out: Option<PathBuf>,
    /// The version it reports (from `package.json`).
    pub version: String,
    /// Lower-case hex SHA-256 of the executable.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Target name.
    pub target: String,
    /// The Bun version it was built with.
    pub bun_version: String,
    /// Lower-case hex SHA-256 of the source tree (see [`source_tree_sha256`]).
    pub source_sha256: String,
    /// Whether it came from the cache (no build ran).
    pub from_cache: bool,
    /// Wall time of this call.
    pub seconds: f64,
}

/// `build.json`: what the cache knows about a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildRecord {
    build_format: u32,
    /// The cache key (see `cache_key`).
    key: String,
    version: String,
    target: String,
    compile_target: String,
    bun_version: String,
    host_bun_sha256: String,
    target_bun_sha256: String,
    source_sha256: String,
    file: String,
    sha256: String,
    size: u64,
    build_seconds: f64,
}

/// Builds opencode-router for `req.target`, or takes it from the cache when the same source
/// was already built with the same Bun for that target.
pub fn build_router(req: &RouterBuildRequest) -> Result<BuiltRouter> {
    let started = Instant::now();
    let progress = crate::progress::Progress::new("build-router", req.quiet);
    let target = req.target;
    let source = check_source(&req.source)?;
    let version = package_version(&source)?;
    if let Some(expected) = &req.expected_version
        && *expected != version
    {
        return Err(Error::Input {
            path: source.join("package.json"),
            reason: format!(
                "version {version} is not the pinned router.version {expected}; the manifest \
                 would name the pin, so build the pinned source or change the pin"
            ),
        });
    }
    let bun_version =
        crate::version::normalize(&req.bun_version).map_err(fetch::FetchError::from)?;
    let tree = source_tree_sha256(&source)?;
    let key = cache_key(target, &bun_version, &version, &tree);
    let file = format!("opencode-router{}", target.exe_suffix);
    // One build in the cache, an entry of the fetch cache's kind (the same paths, lock,
    // staging and commit; see `fetch::cache`):
    //   <cache_root>/opencode-router/<target>/v<version>-<key16>/opencode-router[.exe]
    //   <cache_root>/opencode-router/<target>/v<version>-<key16>/build.json (its BuildRecord)
    // Built in a staging directory, renamed into place complete, verified against its
    // record on every use, never modified once in place.
    let entry = Entry::new(
        &req.cache_root,
        CACHE_NAME,
        &target.name,
        &format!("{version}-{}", &key[..16]),
        &file,
    );
    // The record, if the entry is there, is the build `key` asks for, and its executable
    // still hashes to what the record says.
    let check = || -> Option<BuildRecord> {
        let text = fs_err::read_to_string(entry.dir.join(BUILD_RECORD_FILE)).ok()?;
        let record: BuildRecord = serde_json::from_str(&text).ok()?;
        if record.build_format != BUILD_FORMAT || record.key != key {
            return None;
        }
        let (sha256, size) = sha256_file(&entry.binary).ok()?;
        (sha256 == record.sha256 && size == record.size).then_some(record)
    };
    let finish = |record: BuildRecord, from_cache: bool| -> Result<BuiltRouter> {
        let out = match &req.out {
            Some(out) => {
                copy_out(&entry.binary, out)?;
                Some(out.clone())
            }
            None => None,
        };
        Ok(BuiltRouter {
            path: entry.binary.clone(),
            out,
            version: record.version,
            sha256: record.sha256,
            size: record.size,
            target: record.target,
            bun_version: record.bun_version,
            source_sha256: record.source_sha256,
            from_cache,
            seconds: started.elapsed().as_secs_f64(),
        })
    };

    // Entries never change once in place, so a verified one needs no lock.
    if let Some(record) = check() {
        progress.line(format_args!("using cached {}", entry.binary.display()));
        return finish(record, true);
    }
    let _lock = entry.lock()?;
    if let Some(record) = check() {
        return finish(record, true);
    }
    if entry.dir.exists() {
        progress.line(format_args!(
            "replacing damaged cache entry {}",
            entry.dir.display()
        ));
        fs_err::remove_dir_all(&entry.dir)?;
    }
    entry.remove_stale_staging();

    let host_target = crate::bun::host_target()?;
    let bun_request = |target: &'static Target| {
        let mut bun = FetchRequest::new(target, bun_version.clone());
        bun.pin_from(&req.lock, Input::Bun, &Source::Npm);
        bun.allow_unpinned = req.allow_unpinned;
        bun.cache_root = req.bun_cache_root.clone();
        bun.offline = req.offline;
        bun.registry = req.registry.clone();
        bun.quiet = req.quiet;
        crate::bun::fetch_bun(&bun)
    };
    let host_bun = bun_request(host_target)?;
    let target_bun = if host_target.name == target.name {
        host_bun.clone()
    } else {
        bun_request(target)?
    };

    let staging = entry.staging()?;
    let staged = staging.path().join(&file);
    let build_started = Instant::now();
    run_bun_build(
        &host_bun.path,
        &target_bun.path,
        target,
        &source,
        &version,
        &staged,
    )?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    check_output(&staged, target)?;
    if host_target.name == target.name {
        check_reports_version(&staged, &version)?;
    }
    let (sha256, size) = sha256_file(&staged)?;
    progress.line(format_args!(
        "built {file} {version} for {} with bun {bun_version} in {build_seconds:.1} s \
         ({:.1} MB, sha256 {})",
        target.name,
        size as f64 / 1e6,
        &sha256[..16]
    ));
    let record = BuildRecord {
        build_format: BUILD_FORMAT,
        key: key.clone(),
        version: version.clone(),
        target: target.name.clone(),
        compile_target: target.bun.compile_target.clone(),
        bun_version: bun_version.clone(),
        host_bun_sha256: host_bun.sha256,
        target_bun_sha256: target_bun.sha256,
        source_sha256: tree,
        file,
        sha256,
        size,
        build_seconds,
    };
    // The executable is durable before the entry that vouches for it becomes visible.
    fs_err::File::open(&staged)?.sync_all()?;
    entry.commit_record(
        staging,
        BUILD_RECORD_FILE,
        &record,
        || Ok(check().is_some()),
    )?;
    finish(record, false)
}

/// The source directory, canonical, with its entry point.
fn check_source(source: &Path) -> Result<PathBuf> {
    let input = |reason: String| Error::Input {
        path: source.to_path_buf(),
        reason,
    };
    let dir = fs_err::canonicalize(source).map_err(|e| {
        input(format!(
            "not an opencode-router source directory ({}); pass --source or set \
             router.sourceDir",
            e.kind()
        ))
    })?;
    if !dir.is_dir() {
        return Err(input("not a directory".into()));
    }
    if !dir.join(ENTRY_POINT).is_file() {
        return Err(input(format!(
            "has no {ENTRY_POINT}: not an opencode-router source directory"
        )));
    }
    Ok(dir)
}

/// The `version` of `<source>/package.json`, which must be a plain semver (it becomes part of
/// a cache path and of the executable's `--version`).
pub fn package_version(source: &Path) -> Result<String> {
    let path = source.join("package.json");
    let input = |reason: String| Error::Input {
        path: path.clone(),
        reason,
    };
    let text = fs_err::read_to_string(&path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input(format!("not valid JSON: {e}")))?;
    let version = json
        .get("version")
        .and_then(|v| v.as_str())
        .ok_or_else(|| input("has no \"version\" string".into()))?;
    if !crate::version::is_semver(version) {
        return Err(input(format!(
            "version {version:?} is not a plain semver (MAJOR.MINOR.PATCH[-PRE][+BUILD])"
        )));
    }
    Ok(version.to_owned())
}

/// Lower-case hex SHA-256 of a source tree: every regular file's path (relative, `/`
/// separated) and content, and every symlink's path and target, in path order; `.git` is
/// left out. Dependencies (`node_modules`) are in: they are part of what gets bundled.
pub fn source_tree_sha256(source: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(source, "", &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for (relative, path) in files {
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            let link = fs_err::read_link(&path)?;
            let link = link.to_string_lossy();
            hasher.update(format!("L {relative}\0{}\0{link}\0", link.len()).as_bytes());
        } else {
            let (sha256, size) = sha256_file(&path)?;
            hasher.update(format!("F {relative}\0{size}\0{sha256}\0").as_bytes());
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for dirent in fs_err::read_dir(dir)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let name = name.to_str().ok_or_else(|| Error::Input {
            path: dirent.path(),
            reason: "file name is not UTF-8".into(),
        })?;
        if prefix.is_empty() && name == ".git" {
            continue;
        }
        let relative = format!("{prefix}{name}");
        let file_type = dirent.file_type()?;
        if file_type.is_dir() {
            collect(&dirent.path(), &format!("{relative}/"), out)?;
        } else if file_type.is_file() || file_type.is_symlink() {
            out.push((relative, dirent.path()));
        } else {
            return Err(Error::Input {
                path: dirent.path(),
                reason: "not a regular file, directory or symlink".into(),
            });
        }
    }
    Ok(())
}

/// Hex SHA-256 of everything that decides the output.
fn cache_key(target: &Target, bun_version: &str, version: &str, tree: &str) -> String {
    let text = format!(
        "opencode-router build {BUILD_FORMAT}\ntarget {}\ncompile-target {}\nformat {}\n\
         arch {}\nbun {bun_version}\nversion {version}\nsource {tree}\n",
        target.name, target.bun.compile_target, target.format, target.arch
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn run_bun_build(
    host_bun: &Path,
    target_bun: &Path,
    target: &Target,
    source: &Path,
    version: &str,
    out: &Path,
) -> Result<()> {
    // Bun may write caches under HOME or TMPDIR: a throw-away directory keeps them out of
    // the cache entry and the user's home.
    let scratch = tempfile::Builder::new()
        .prefix("openwork-bun-build-")
        .tempdir()?;
    let mut command = Command::new(host_bun);
    command
        .arg("build")
        .arg(ENTRY_POINT)
        .arg("--compile")
        .arg("--outfile")
        .arg(out)
        .arg("--define")
        .arg(format!("{VERSION_DEFINE}={}", serde_json::json!(version)))
        .arg("--target")
        .arg(&target.bun.compile_target)
        .arg("--compile-executable-path")
        .arg(target_bun)
        .current_dir(source)
        .env_clear()
        .env("HOME", scratch.path())
        .env("TMPDIR", scratch.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    #[cfg(windows)]
    {
        command
            .env("TEMP", scratch.path())
            .env("TMP", scratch.path());
        if let Some(root) = std::env::var_os("SystemRoot") {
            command.env("SystemRoot", root);
        }
    }
    let output = command.output().map_err(|e| Error::Input {
        path: host_bun.to_path_buf(),
        reason: format!("could not run bun: {e}"),
    })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(Error::Input {
            path: source.to_path_buf(),
            reason: format!(
                "bun build failed ({}):\n{}",
                output.status,
                tail(text.trim(), 40)
            ),
        });
    }
    if !out.is_file() {
        return Err(Error::Input {
            path: out.to_path_buf(),
            reason: "bun build succeeded but wrote no executable".into(),
        });
    }
    Ok(())
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Refuses an output that is not the target's format and architecture.
fn check_output(path: &Path, target: &Target) -> Result<()> {
    let data = fs_err::read(path)?;
    let info = openwork_payload::container::identify(&data)?;
    if info.format != target.format || info.arch != target.arch {
        return Err(openwork_payload::Error::Executable(format!(
            "bun build --target {} produced {} {}, but target {} needs {} {}",
            target.bun.compile_target,
            info.format,
            info.arch,
            target.name,
            target.format,
            target.arch
        ))
        .into());
    }
    Ok(())
}

/// Runs a host build's `--version`: proves the define took and the executable starts.
fn check_reports_version(path: &Path, version: &str) -> Result<()> {
    let output = Command::new(path)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Input {
            path: path.to_path_buf(),
            reason: format!("the built executable does not start: {e}"),
        })?;
    let reported = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || reported.trim() != version {
        return Err(Error::Input {
            path: path.to_path_buf(),
            reason: format!(
                "the built executable's --version printed {:?} ({}), expected {version}",
                reported.trim(),
                output.status
            ),
        });
    }
    Ok(())
}

/// Copies the cached executable to `out` through a temporary file and a rename, so `out`
/// is never seen half-written.
fn copy_out(from: &Path, out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs_err::create_dir_all(parent)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".opencode-router-")
        .tempfile_in(parent)?;
    std::io::copy(&mut fs_err::File::open(from)?, temp.as_file_mut())?;
    temp.as_file_mut().flush()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    }
    temp.persist(out).map_err(|e| e.error)?;
    Ok(())
}
