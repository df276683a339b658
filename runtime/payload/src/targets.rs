//! The target table, read from the data files in the repository's `targets/` directory
//! (compiled in, so every binary carries the same table).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::container::{Arch, ExecutableFormat};

/// The target data files, in release-matrix order. For each Rust triple, the first target
/// that names it is the one a binary built for that triple calls its own ([`host`]); the
/// others (`-baseline`) share its stub and differ only in the sidecars they carry.
const TARGET_FILES: [&str; 12] = [
    include_str!("../../../targets/linux-x64.json"),
    include_str!("../../../targets/linux-x64-baseline.json"),
    include_str!("../../../targets/linux-x64-musl.json"),
    include_str!("../../../targets/linux-x64-baseline-musl.json"),
    include_str!("../../../targets/linux-arm64.json"),
    include_str!("../../../targets/linux-arm64-musl.json"),
    include_str!("../../../targets/darwin-arm64.json"),
    include_str!("../../../targets/darwin-x64.json"),
    include_str!("../../../targets/darwin-x64-baseline.json"),
    include_str!("../../../targets/windows-x64.json"),
    include_str!("../../../targets/windows-x64-baseline.json"),
    include_str!("../../../targets/windows-arm64.json"),
];

/// One platform openwork-server-v2 is released for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Short name, used in artifact names (`openwork-server-v2-<name>[.exe]`).
    pub name: String,
    /// Rust target triple the stub is built for.
    pub rust_triple: String,
    /// Executable file suffix (`.exe` on Windows, else empty).
    pub exe_suffix: String,
    /// Executable container format.
    pub format: ExecutableFormat,
    /// CPU architecture.
    pub arch: Arch,
    /// Where opencode for this target comes from.
    pub opencode: OpencodeSource,
    /// The Bun build used to compile opencode-router for this target.
    pub bun: BunSource,
    /// How the final artifact is signed: `none`, `authenticode` or `codesign`.
    pub signing: SigningKind,
    /// The CI runner label that builds this target natively.
    pub ci_runner: String,
    /// Minimum macOS version (`MACOSX_DEPLOYMENT_TARGET`), Mach-O targets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macos_deployment_target: Option<String>,
    /// The CI runner cross-links the stub with cargo-zigbuild: its triple is not the
    /// runner's own (musl on a glibc runner, Windows on Arm on an x64 runner).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_build: bool,
}

/// Names of opencode's published builds for a target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpencodeSource {
    /// opencode's own platform package on the npm registry.
    pub npm_package: String,
    /// The asset name of opencode's GitHub release.
    pub github_asset: String,
}

/// Names of Bun's build for a target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BunSource {
    /// Bun's platform package on the npm registry.
    pub npm_package: String,
    /// The `bun build --target` value.
    pub compile_target: String,
}

/// How a target's executables are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigningKind {
    /// Not signed (Linux).
    None,
    /// Windows Authenticode.
    Authenticode,
    /// Apple codesign (and notarization).
    Codesign,
}

impl Target {
    /// `openwork-server-v2-<name>[.exe]`.
    pub fn artifact_name(&self) -> String {
        format!("openwork-server-v2-{}{}", self.name, self.exe_suffix)
    }

    /// The sidecar's file path inside a runtime directory (`bin/<name>[.exe]`).
    pub fn sidecar_path(&self, sidecar: &str) -> String {
        format!("bin/{sidecar}{}", self.exe_suffix)
    }
}

/// Every target, in release-matrix order.
pub fn all() -> &'static [Target] {
    static TARGETS: OnceLock<Vec<Target>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        TARGET_FILES
            .iter()
            .map(|json| serde_json::from_str(json).expect("targets/*.json is valid"))
            .collect()
    })
}

/// The target with this name.
pub fn by_name(name: &str) -> Option<&'static Target> {
    all().iter().find(|t| t.name == name)
}

/// The name of the target this code was compiled for, if it is one of ours.
pub fn host_name() -> Option<&'static str> {
    host().map(|t| t.name.as_str())
}

/// The target this code was compiled for: the first in the table with this build's OS,
/// architecture and C library (`linux-x64` for a glibc build, `linux-x64-musl` for a musl
/// one; never a `-baseline` target, which shares its stub with the one before it).
pub fn host() -> Option<&'static Target> {
    let os = match std::env::consts::OS {
        "linux" => "linux",
        "macos" => "apple-darwin",
        "windows" => "windows",
        _ => return None,
    };
    let musl = cfg!(target_env = "musl");
    all().iter().find(|t| {
        t.rust_triple.starts_with(std::env::consts::ARCH)
            && t.rust_triple.contains(os)
            && t.rust_triple.ends_with("musl") == musl
    })
}

/// Whether a payload packed for the target `payload` runs in a stub built as `stub`: the
/// packager puts a target's payload into the stub built for that target's triple, so the
/// two agree when their triples do (`linux-x64-baseline` in a `linux-x64` stub).
pub fn payload_fits(payload: &str, stub: &Target) -> bool {
    by_name(payload).is_some_and(|t| t.rust_triple == stub.rust_triple)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_consistent() {
        let names: Vec<_> = all().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-x64",
                "linux-x64-baseline",
                "linux-x64-musl",
                "linux-x64-baseline-musl",
                "linux-arm64",
                "linux-arm64-musl",
                "darwin-arm64",
                "darwin-x64",
                "darwin-x64-baseline",
                "windows-x64",
                "windows-x64-baseline",
                "windows-arm64",
            ]
        );
        for t in all() {
            let expect_format = if t.rust_triple.contains("linux") {
                ExecutableFormat::Elf
            } else if t.rust_triple.contains("apple") {
                ExecutableFormat::MachO
            } else {
                ExecutableFormat::Pe
            };
            assert_eq!(t.format, expect_format, "{}", t.name);
            assert_eq!(
                t.exe_suffix == ".exe",
                t.format == ExecutableFormat::Pe,
                "{}",
                t.name
            );
            assert_eq!(
                t.macos_deployment_target.is_some(),
                t.format == ExecutableFormat::MachO
            );
            let arch_word = if t.arch == Arch::X86_64 {
                "x86_64"
            } else {
                "aarch64"
            };
            assert!(t.rust_triple.starts_with(arch_word), "{}", t.name);
        }
        assert_eq!(host().map(|t| t.name.as_str()), host_name());
        let host = host().expect("tests run on a release target");
        assert!(!host.name.contains("baseline"), "{}", host.name);
        assert!(payload_fits(&host.name, host));
    }

    #[test]
    fn a_baseline_payload_fits_its_plain_stub_and_nothing_else_crosses() {
        let stub = |name| by_name(name).unwrap();
        assert!(payload_fits("linux-x64-baseline", stub("linux-x64")));
        assert!(payload_fits(
            "linux-x64-baseline-musl",
            stub("linux-x64-musl")
        ));
        assert!(payload_fits("windows-x64-baseline", stub("windows-x64")));
        assert!(!payload_fits("linux-x64-musl", stub("linux-x64")));
        assert!(!payload_fits("linux-x64", stub("linux-x64-musl")));
        assert!(!payload_fits("windows-arm64", stub("windows-x64")));
        assert!(!payload_fits("no-such-target", stub("linux-x64")));
        // Each triple's first target is a plain (not baseline) one: the one `host` picks.
        for t in all() {
            let first = all()
                .iter()
                .find(|o| o.rust_triple == t.rust_triple)
                .unwrap();
            assert!(!first.name.contains("baseline"), "{}", first.name);
            assert_eq!(t.name.contains("musl"), t.rust_triple.ends_with("musl"));
            assert_eq!(
                t.cross_build,
                t.rust_triple.ends_with("musl") || t.name == "windows-arm64",
                "{}",
                t.name
            );
        }
    }
}
