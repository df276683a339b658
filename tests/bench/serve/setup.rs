//! What the contenders run: the packed artifact, the predecessor from the npm registry,
//! the runtime extracted once, and the stand-in the predecessor starts as its server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch::{self, FetchRequest, FetchedBinary};
use openwork_packager::pack::Compression;
use openwork_payload::targets::Target;
use serde_json::Value;

use crate::measure::{pack_pinned_opencode, release_stub};

/// The predecessor, as published on the npm registry (one package per platform, named
/// after the same platform names as targets/).
pub(super) mod orchestrator {
    pub const NAME: &str = "openwork-orchestrator";
    pub const VERSION: &str = "0.18.1";
    pub const FILE: &str = "openwork";
}

/// The orchestrator's command line, for the JSON (the values are filled in per run).
pub(super) const ORCHESTRATOR_ARGS_DOC: &str = "serve --workspace W --data-dir D --opencode-bin OPENCODE \
    --opencode-source external --openwork-server-bin STAND_IN --sidecar-source external \
    --allow-external --opencode-port P --openwork-port Q --sidecar-base-url <loopback, closed> \
    --sidecar-manifest <loopback, closed> --log-format json --no-color; env \
    OPENWORK_OPENCODE_USERNAME/PASSWORD with OPENWORK_INTERNAL_ALLOW_OPENCODE_CREDENTIALS=1";

/// Packs the pinned opencode into the release stub, with `compression`.
pub(crate) fn pack_artifact(
    target: &'static Target,
    pins: &Constants,
    opencode: &Path,
    work: &Path,
    compression: Compression,
) -> anyhow::Result<PathBuf> {
    let stub = release_stub(target)?;
    let artifact = work.join(target.artifact_name());
    pack_pinned_opencode(&stub, target, pins, opencode, &artifact, compression)?;
    Ok(artifact)
}

/// The orchestrator from the npm registry, integrity-checked and cached with the fetched
/// sidecars.
pub(super) fn fetch_orchestrator(target: &'static Target) -> anyhow::Result<FetchedBinary> {
    let package = format!("{}-{}", orchestrator::NAME, target.name);
    let file = format!("{}{}", orchestrator::FILE, target.exe_suffix);
    let mut request = FetchRequest::new(target, orchestrator::VERSION);
    // Its progress lines name the registry; this benchmark's output should not.
    request.quiet = true;
    // A baseline to measure against, never packed into anything: the registry's integrity
    // is enough, and inputs.lock.json is for what releases carry.
    request.allow_unpinned = true;
    Ok(fetch::fetch_npm_bin(
        &request,
        orchestrator::NAME,
        &package,
        &file,
    )?)
}

/// `runtime extract --json` into `data_dir`; returns the runtime directory.
pub(super) fn extract_runtime(artifact: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(artifact);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OPENWORK_") {
            cmd.env_remove(&key);
        }
    }
    // `--data-dir` after the subcommand: before it, clap refuses any subcommand (the
    // server's top level takes `serve`'s flags, so that `serve` can be left out).
    let output = cmd
        .args(["runtime", "extract", "--json"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} runtime extract", artifact.display()))?;
    if !output.status.success() {
        bail!(
            "runtime extract failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let out: Value =
        serde_json::from_slice(&output.stdout).context("runtime extract --json output")?;
    let dir = out["runtimeDir"]
        .as_str()
        .with_context(|| format!("no runtimeDir in {out}"))?;
    Ok(PathBuf::from(dir))
}

/// What the orchestrator runs as openwork-server. No registry here carries openwork-server,
/// and the orchestrator only starts it after opencode is healthy, so a process that merely
/// stays alive keeps it waiting (for 10 s) while its RSS is read.
pub(super) fn write_stand_in(work: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = work.join("openwork-server-stand-in");
    let script = "#!/bin/sh\nexec sleep 3600\n";
    std::fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}
