//! `matrix`: the CI release matrix, made from targets/ so that the list of targets exists
//! in one place. `.github/workflows/release.yml` runs this and feeds the output to
//! `strategy.matrix` with `fromJSON`.

use openwork_payload::targets::{self, SigningKind, Target};
use serde::Serialize;

/// One job of the release matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MatrixEntry {
    /// Target name (`--target`).
    pub target: String,
    /// The runner label that builds it natively.
    pub runner: String,
    /// Rust target triple of the stub.
    pub triple: String,
    /// The artifact's file name.
    pub artifact: String,
    /// How it is signed: `none`, `authenticode`, `codesign`.
    pub signing: SigningKind,
    /// `MACOSX_DEPLOYMENT_TARGET` for Mach-O targets, empty elsewhere (an empty string, not
    /// a missing key, so that workflow expressions can use it on every runner).
    pub macos_deployment_target: String,
    /// The runner cross-links the stub with cargo-zigbuild, which the job installs first.
    pub cross_build: bool,
}

/// The GitHub Actions matrix: `{"include": [one entry per target]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// One entry per target, in targets/ order.
    pub include: Vec<MatrixEntry>,
}

impl From<&Target> for MatrixEntry {
    fn from(target: &Target) -> Self {
        Self {
            target: target.name.clone(),
            runner: target.ci_runner.clone(),
            triple: target.rust_triple.clone(),
            artifact: target.artifact_name(),
            signing: target.signing,
            macos_deployment_target: target.macos_deployment_target.clone().unwrap_or_default(),
            cross_build: target.cross_build,
        }
    }
}

/// The matrix of every target.
pub fn matrix() -> Matrix {
    Matrix {
        include: targets::all().iter().map(MatrixEntry::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_a_job_with_its_runner() {
        let matrix = matrix();
        let names: Vec<&str> = matrix.include.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(names.len(), targets::all().len());
        for name in [
            "linux-x64",
            "linux-x64-musl",
            "linux-arm64",
            "linux-arm64-musl",
            "darwin-arm64",
            "darwin-x64",
            "windows-x64",
            "windows-arm64",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let json = serde_json::to_value(&matrix).unwrap();
        let windows = json["include"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == "windows-x64")
            .unwrap();
        assert_eq!(windows["artifact"], "openwork-server-v2-windows-x64.exe");
        assert_eq!(windows["signing"], "authenticode");
        assert_eq!(windows["macos-deployment-target"], "");
        assert_eq!(windows["cross-build"], false);
        let musl = json["include"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == "linux-x64-musl")
            .unwrap();
        assert_eq!(musl["cross-build"], true);
        assert_eq!(musl["triple"], "x86_64-unknown-linux-musl");
    }
}
