//! `release`: the whole path from pins to a checksummed artifact for one target.
//!
//! fetch the pinned opencode (checked against `inputs.lock.json`, cached) → build
//! opencode-router from its source with the pinned Bun (cached), when a router is named
//! (`router` in constants.json, `--router-source`) → build the stub for the target (or take
//! `--stub`)
//! → pack → `dist/openwork-server-v2-<target>[.exe]`, `SHA256SUMS`, and
//! a JSON build report beside the artifact (`<artifact>.report.json`: versions, sources,
//! sizes, hashes, and each stage's time).
//!
//! With `--sign <config>` ([`openwork_signer::sign::Signers`]), copies of the sidecars are
//! signed before they are hashed into the manifest (a signature cannot be added to a file
//! inside the payload later), the packed artifact is signed, its signature verified, and
//! the runtime's locator run again on the signed bytes; only then is the artifact renamed
//! into place. Every intermediate file lives in a temp dir inside the dist dir, so a
//! failure leaves the dist dir as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openwork_signer::entitlements::Role;
use openwork_signer::sign::{SignOutcome, Signers};
use openwork_signer::verify::{VerifyPolicy, verify};

use serde::Serialize;
use sha2::{Digest, Sha256};

use openwork_payload::targets::Target;

use crate::constants::Constants;
use crate::error::Result;
use crate::fetch::{self, FetchRequest, Source};
use crate::lock::{Input, InputsLock};
use crate::pack::{self, Compression, PackReport, PackRequest, Versions};
use crate::router::{self, RouterBuildRequest, RouterSource};
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
    /// Where opencode comes from.
    pub source: Source,
    /// What every input must be.
    pub lock: InputsLock,
    /// Accept inputs the lock does not pin (local experiments).
    pub allow_unpinned: bool,
    /// The opencode-router to build and carry, if any.
    pub router: Option<RouterSource>,
    /// Sign sidecars and artifact with these (`--sign`).
    pub signing: Option<Arc<Signers>>,
}

/// What a release made and how: written as `<artifact>.report.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// Report layout version.
    pub report_version: u32,
    /// Target name.
    pub target: String,
    /// The artifact's file name in the dist dir.
    pub artifact: String,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// Versions packed.
    pub versions: ReportVersions,
    /// Where each input came from.
    pub inputs: Vec<ReportInput>,
    /// Sidecar bytes before compression.
    pub raw_size: u64,
    /// Payload bytes after compression.
    pub payload_size: u64,
    /// `payload_size / raw_size`.
    pub payload_ratio: f64,
    /// zstd level and window log.
    pub compression: ReportCompression,
    /// Archive mtime (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// What signing did to each sidecar and to the artifact (empty without `--sign`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignOutcome>,
    /// Seconds per stage, in order.
    pub timings: Vec<ReportTiming>,
    /// Total seconds.
    pub total_seconds: f64,
}

/// Versions in a [`BuildReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportVersions {
    /// openwork-server-v2.
    pub server: String,
    /// opencode.
    pub opencode: String,
    /// opencode-router, when the release carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
}

/// One input of a [`BuildReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportInput {
    /// `opencode`, `opencode-router` or `stub`.
    pub name: String,
    /// Where it came from (`npm:<package>@<version>`, `build:<dir>`, a path).
    pub source: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// The registry's integrity string, for downloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
    /// Whether a cache served it.
    pub from_cache: bool,
}

/// Compression settings in a [`BuildReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportCompression {
    /// zstd level.
    pub level: i32,
    /// zstd window log.
    pub window_log: u32,
}

/// One stage's time.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportTiming {
    /// `fetch-opencode`, `build-router`, `stub`, `pack`.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// Times stages in order.
struct Stopwatch {
    started: Instant,
    last: Instant,
    timings: Vec<ReportTiming>,
}

impl Stopwatch {
    fn new() -> Stopwatch {
        let now = Instant::now();
        Stopwatch {
            started: now,
            last: now,
            timings: Vec::new(),
        }
    }

    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        self.timings.push(ReportTiming {
            stage: stage.to_string(),
            seconds: now.duration_since(self.last).as_secs_f64(),
        });
        self.last = now;
    }
}

/// Runs a release for one target; returns the build report (also written beside the
/// artifact).
pub fn release(req: &ReleaseRequest) -> Result<BuildReport> {
    let mut clock = Stopwatch::new();
    let mut fetch_request = FetchRequest::new(req.target, req.constants.opencode_version());
    fetch_request.offline = req.offline;
    fetch_request.allow_unpinned = req.allow_unpinned;
    fetch_request.pin_from(&req.lock, Input::Opencode, &req.source);
    let opencode = fetch::fetch_opencode(&fetch_request, &req.source)?;
    clock.lap("fetch-opencode");
    let router = match &req.router {
        None => None,
        Some(source) => {
            let mut build = RouterBuildRequest::new(req.target, source.dir.clone(), &req.constants);
            build.expected_version = source.expected_version.clone();
            build.lock = req.lock.clone();
            build.allow_unpinned = req.allow_unpinned;
            build.offline = req.offline;
            let built = router::build_router(&build)?;
            clock.lap("build-router");
            Some(built)
        }
    };
    let stub = match &req.stub {
        Some(path) => path.clone(),
        None => {
            eprintln!("release: building the {} stub", req.target.name);
            stub::build_stub(&req.workspace, req.target, &req.stub_target_dir)?
        }
    };
    clock.lap("stub");
    let final_path = req.dist.join(req.target.artifact_name());
    let mut sidecars: Vec<(String, PathBuf)> =
        std::iter::once(("opencode".to_string(), opencode.path.clone()))
            .chain(
                router
                    .iter()
                    .map(|r| ("opencode-router".to_string(), r.path.clone())),
            )
            .collect();
    // With signing, signed copies and the unsigned artifact live here until the signed
    // artifact is checked; the dir goes when `work` drops, on success or error.
    let work = match req.signing {
        Some(_) => {
            fs_err::create_dir_all(&req.dist)?;
            Some(
                tempfile::Builder::new()
                    .prefix(".openwork-release-")
                    .tempdir_in(&req.dist)?,
            )
        }
        None => None,
    };
    let mut signatures = Vec::new();
    if let (Some(signers), Some(work)) = (&req.signing, &work) {
        for (name, path) in &mut sidecars {
            // Named as in the runtime dir: the name becomes the code signing identifier.
            let copy = work.path().join(format!("{name}{}", req.target.exe_suffix));
            fs_err::copy(&*path, &copy)?;
            signatures.push(signers.sign_file(&copy, Role::BunSidecar)?);
            *path = copy;
        }
        clock.lap("sign-sidecars");
    }
    let out = match &work {
        Some(work) => work.path().join(req.target.artifact_name()),
        None => final_path.clone(),
    };
    eprintln!("release: packing {}", final_path.display());
    let mut report = pack::pack(&PackRequest {
        stub: stub.clone(),
        sidecars,
        out: out.clone(),
        target: req.target,
        versions: Versions {
            opencode: req.constants.opencode_version().to_string(),
            router: router.as_ref().map(|r| r.version.clone()),
        },
        compression: req.compression,
        mtime: req.mtime,
    })?;
    clock.lap("pack");
    if let Some(signers) = &req.signing {
        let outcome = signers.sign_file(&out, Role::Stub)?;
        let signed = fs_err::read(&out)?;
        // The signature over the file as it now is, and the payload found on the signed
        // bytes with its hash checked: what a user's machine does first.
        let policy = VerifyPolicy {
            require_signature: outcome.is_signed(),
            ..VerifyPolicy::default()
        };
        verify(&signed, &policy)?;
        signatures.push(outcome);
        report.size = signed.len() as u64;
        report.sha256 = hex::encode(Sha256::digest(&signed));
        fs_err::rename(&out, &final_path)?;
        clock.lap("sign-artifact");
    }
    drop(work);
    update_sha256sums(&req.dist, &req.target.artifact_name(), &report.sha256)?;
    let stub_input = ReportInput {
        name: "stub".into(),
        source: if req.stub.is_some() {
            // The file name only: a build machine's paths do not belong in a report.
            format!(
                "file:{}",
                stub.file_name().unwrap_or_default().to_string_lossy()
            )
        } else {
            format!("cargo:{}", req.target.rust_triple)
        },
        // pack read and hashed the stub already.
        sha256: report.stub_sha256.clone(),
        size: report.stub_size,
        integrity: None,
        from_cache: false,
    };
    let build = build_report(
        req,
        &report,
        Inputs {
            opencode,
            router,
            stub: stub_input,
        },
        signatures,
        clock,
    );
    let mut json = serde_json::to_vec_pretty(&build).expect("a report serialises");
    json.push(b'\n');
    pack::write_atomically(&report_path(&req.dist, req.target), &json, false)?;
    Ok(build)
}

/// Where the build report of `target` goes.
pub fn report_path(dist: &Path, target: &Target) -> PathBuf {
    dist.join(format!("{}.report.json", target.artifact_name()))
}

/// What went into a release, for its report.
struct Inputs {
    opencode: fetch::FetchedBinary,
    router: Option<router::BuiltRouter>,
    stub: ReportInput,
}

fn build_report(
    req: &ReleaseRequest,
    report: &PackReport,
    Inputs {
        opencode,
        router,
        stub,
    }: Inputs,
    signatures: Vec<SignOutcome>,
    clock: Stopwatch,
) -> BuildReport {
    let mut inputs = vec![ReportInput {
        name: "opencode".into(),
        source: opencode.source,
        sha256: opencode.sha256,
        size: opencode.size,
        integrity: (!opencode.integrity.is_empty()).then_some(opencode.integrity),
        from_cache: opencode.from_cache,
    }];
    if let (Some(router), Some(source)) = (router, &req.router) {
        inputs.push(ReportInput {
            name: "opencode-router".into(),
            source: format!(
                "build:{} (source sha256 {}, bun {})",
                source.shown, router.source_sha256, router.bun_version
            ),
            sha256: router.sha256,
            size: router.size,
            integrity: None,
            from_cache: router.from_cache,
        });
    }
    inputs.push(stub);
    BuildReport {
        report_version: 1,
        target: req.target.name.clone(),
        artifact: req.target.artifact_name(),
        size: report.size,
        sha256: report.sha256.clone(),
        versions: ReportVersions {
            server: report.manifest.server_version.clone(),
            opencode: report.manifest.opencode_version.clone(),
            router: report.manifest.router_version.clone(),
        },
        inputs,
        raw_size: report.raw_size,
        payload_size: report.payload_size,
        payload_ratio: report.payload_size as f64 / report.raw_size.max(1) as f64,
        compression: ReportCompression {
            level: req.compression.level,
            window_log: openwork_payload::archive::ZSTD_WINDOW_LOG,
        },
        source_date_epoch: req.mtime,
        total_seconds: clock.started.elapsed().as_secs_f64(),
        signatures,
        timings: clock.timings,
    }
}

/// Sets `name`'s line in `<dist>/SHA256SUMS` (the `sha256sum -c` format), keeping the
/// other targets' lines, sorted by name; written atomically.
pub fn update_sha256sums(dist: &Path, name: &str, sha256: &str) -> Result<()> {
    let path = dist.join("SHA256SUMS");
    // Releases of several targets may share a dist dir and run at once (a CI matrix on one
    // machine): without the lock, each read-edit-rename could drop the other's line. The
    // lock file lives in the temp dir, keyed by the dist dir, so that dist/ holds only what
    // is published.
    let lock = fs_err::File::create(sha256sums_lock_path(dist)?)?;
    lock.file().lock()?;
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

/// `<temp>/openwork-sha256sums-<16 hex of the dist dir's canonical path>.lock`.
fn sha256sums_lock_path(dist: &Path) -> Result<PathBuf> {
    let canonical = fs_err::canonicalize(dist)?;
    let key = Sha256::digest(canonical.to_string_lossy().as_bytes());
    Ok(std::env::temp_dir().join(format!(
        "openwork-sha256sums-{}.lock",
        &hex::encode(key)[..16]
    )))
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
        let text = fs_err::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
        assert_eq!(
            text,
            format!("{}  a\n{}  b\n", "2".repeat(64), "3".repeat(64))
        );
        // Nothing but the sums: dist/ is what gets published.
        let names: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["SHA256SUMS"]);
    }
}
