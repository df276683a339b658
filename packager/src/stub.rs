//! Building the `openwork-server-v2` stub for a target: `cargo build --release` for the
//! host, `cargo zigbuild --release` when cross-linking (zig links macOS and Windows stubs
//! here without Apple's or Microsoft's SDKs, because the stub needs no system framework).

use std::path::{Path, PathBuf};
use std::process::Command;

use openwork_payload::targets::{self, Target};

use crate::error::{Error, Result};

/// Builds the release stub for `target` from the workspace at `workspace` into
/// `target_dir`; returns the executable's path.
pub fn build_stub(workspace: &Path, target: &Target, target_dir: &Path) -> Result<PathBuf> {
    // The host's own triple builds with plain cargo (a `-baseline` target shares its
    // triple); any other links through zig, which brings the C library and linker.
    let native = targets::host().is_some_and(|host| host.rust_triple == target.rust_triple);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg(if native { "build" } else { "zigbuild" })
        .args(["--release", "--quiet", "--locked", "-p", "openwork-runtime"])
        .args([
            "--bin",
            "openwork-server-v2",
            "--target",
            &target.rust_triple,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    if let Some(min) = &target.macos_deployment_target {
        cmd.env("MACOSX_DEPLOYMENT_TARGET", min);
    }
    let status = cmd.status().map_err(|e| {
        Error::Usage(format!(
            "cannot run cargo to build the {} stub: {e}",
            target.name
        ))
    })?;
    if !status.success() {
        let hint = if native {
            String::new()
        } else {
            format!(
                "; cross targets need `pip install ziglang cargo-zigbuild` and `rustup target add {}`",
                target.rust_triple
            )
        };
        return Err(Error::Usage(format!(
            "building the {} stub failed{hint}",
            target.name
        )));
    }
    let out = stub_path(target, target_dir);
    if !out.is_file() {
        return Err(Error::Input {
            path: out,
            reason: "cargo succeeded but did not produce the stub".into(),
        });
    }
    Ok(out)
}

/// Where [`build_stub`] puts the stub for `target`.
pub fn stub_path(target: &Target, target_dir: &Path) -> PathBuf {
    target_dir
        .join(&target.rust_triple)
        .join("release")
        .join(format!("openwork-server-v2{}", target.exe_suffix))
}
