//! The target table, read from the data files in the repository's `targets/` directory
//! (compiled in, so every binary carries the same table).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::container::{Arch, ExecutableFormat};

/// The target data files, in release-matrix order.
const TARGET_FILES: [&str; 5] = [
    include_str!("../../../targets/linux-x64.json"),
    include_str!("../../../targets/linux-arm64.json"),
    include_str!("../../../targets/darwin-arm64.json"),
    include_str!("../../../targets/darwin-x64.json"),
    include_str!("../../../targets/windows-x64.json"),
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
    let name = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-x64",
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "aarch64") => "darwin-arm64",
        ("macos", "x86_64") => "darwin-x64",
        ("windows", "x86_64") => "windows-x64",
        _ => return None,
    };
    Some(name)
}

/// The target this code was compiled for.
pub fn host() -> Option<&'static Target> {
    host_name().and_then(by_name)
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
                "linux-arm64",
                "darwin-arm64",
                "darwin-x64",
                "windows-x64"
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
    }
}
