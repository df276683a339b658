//! Shared helpers for the end-to-end tests: where the workspace's binaries are, how to get a
//! real stub for each target (cross-linked here with cargo-zigbuild), and small fixtures.

pub mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The cargo target directory the tests were built into (`…/target/<profile>/deps/<test>` →
/// `…/target`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Path of a workspace binary built for the host in the same profile as the tests. The test
/// command builds all binaries first (`cargo test --workspace` does); a missing one is a
/// build problem, so this panics with the command to run.
pub fn host_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (the README's test command does)",
        path.display()
    );
    path
}

/// A real release stub of `openwork-server-v2` for `target` (a name from targets/), built
/// once per test process into a target directory of its own (the outer cargo holds the
/// lock on the main one). Cross targets link through cargo-zigbuild.
pub fn stub_for(target: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let spec = openwork_payload::targets::by_name(target).expect("known target");
    let stub_target_dir = target_dir().join("stubs");
    let out = stub_target_dir
        .join(&spec.rust_triple)
        .join("release")
        .join(format!("openwork-server-v2{}", spec.exe_suffix));
    let native = openwork_payload::targets::host_name() == Some(target);
    let mut cmd = Command::new("cargo");
    if native {
        cmd.arg("build");
    } else {
        cmd.arg("zigbuild");
    }
    cmd.args(["--release", "--quiet", "-p", "openwork-runtime", "--bin", "openwork-server-v2"])
        .args(["--target", &spec.rust_triple])
        .arg("--target-dir")
        .arg(&stub_target_dir)
        .current_dir(workspace_root());
    if let Some(min) = &spec.macos_deployment_target {
        cmd.env("MACOSX_DEPLOYMENT_TARGET", min);
    }
    let status = cmd.status().expect("run cargo to build a stub");
    assert!(
        status.success(),
        "building the {target} stub failed; cross targets need `pip install ziglang cargo-zigbuild` and `rustup target add {}`",
        spec.rust_triple
    );
    assert!(out.exists(), "{} was not produced", out.display());
    out
}
pub mod pki;
