//! `inputs.lock.json`: the hash of every input a release is built from, per target.
//!
//! `constants.json` says which versions a release uses; the lock says which bytes. For each
//! target it holds opencode's and Bun's npm package, the tarball's integrity
//! (`sha512-…`, as the registry published it when the lock was made) and size, and the
//! SHA-256 and size of the executable inside. `fetch`, `release`, `build-router` and
//! `stage` refuse an input the lock does not name, or one whose registry integrity,
//! tarball size or executable hash differs from it, whichever registry, mirror or `.npmrc`
//! served it: the registry's own integrity field comes from the same place as the bytes,
//! so it vouches for nothing on its own. `--allow-unpinned` lets local experiments through
//! (never a release workflow). `openwork-packager lock` refreshes the lock from the
//! configured registry ([`crate::relock`]) and prints what changed, for a reviewer to read in
//! the diff.
//!
//! Targets whose packages a registry lacks have no entry; the GitHub release asset of a
//! target can be pinned too (`assetSha256`), by hand, since nothing here reaches GitHub.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use openwork_payload::manifest::is_sha256_hex;
use serde::{Deserialize, Serialize};

use crate::input_file::{self, InputFileError};

/// The file's name at the workspace root.
pub const FILE_NAME: &str = "inputs.lock.json";

/// The repository's lock at build time.
const BUILT_IN: &str = include_str!("../../inputs.lock.json");

/// The lock format's version; a reader refuses other versions.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputsLock {
    /// [`LOCK_VERSION`].
    pub lock_version: u32,
    /// opencode, per target.
    pub opencode: LockedPackages,
    /// Bun (the router's compiler and runtime), per target.
    pub bun: LockedPackages,
}

/// One input at one version, per target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedPackages {
    /// The version locked (what `constants.json` pins when the lock is current).
    pub version: String,
    /// Per target name.
    pub targets: BTreeMap<String, LockedInput>,
}

/// What one target's input must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedInput {
    /// The npm package.
    pub package: String,
    /// The tarball's Subresource Integrity as published (`sha512-<base64>`).
    pub integrity: String,
    /// The tarball's size in bytes: a download never grows past it.
    pub tarball_size: u64,
    /// SHA-256 (lower-case hex) of the executable in the package.
    pub sha256: String,
    /// The executable's size in bytes.
    pub size: u64,
    /// SHA-256 of the GitHub release asset (`targets/<t>.json` `githubAsset`), when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_sha256: Option<String>,
}

/// Which input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The opencode sidecar.
    Opencode,
    /// Bun, which builds opencode-router.
    Bun,
}

impl Input {
    /// Its name in the lock and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Input::Opencode => "opencode",
            Input::Bun => "bun",
        }
    }
}

impl InputsLock {
    /// The compiled-in lock.
    pub fn built_in() -> InputsLock {
        InputsLock::parse(BUILT_IN).unwrap_or_else(|e| panic!("{FILE_NAME}: {e}"))
    }

    /// Reads `path`, or returns the compiled-in lock when `None`.
    pub fn load(path: Option<&Path>) -> Result<InputsLock, InputFileError> {
        match path {
            None => Ok(InputsLock::built_in()),
            Some(path) => input_file::read(path, InputsLock::parse),
        }
    }

    /// Parses and checks a lock's text.
    pub fn parse(text: &str) -> std::result::Result<InputsLock, String> {
        let lock: InputsLock =
            serde_json::from_str(text).map_err(|e| format!("not a valid {FILE_NAME}: {e}"))?;
        lock.validate()?;
        Ok(lock)
    }

    /// Checks what serde cannot: the version, known targets, well-formed digests.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.lock_version != LOCK_VERSION {
            return Err(format!(
                "lockVersion {} is not {LOCK_VERSION}; this packager reads version {LOCK_VERSION} only",
                self.lock_version
            ));
        }
        for input in [Input::Opencode, Input::Bun] {
            let packages = self.packages(input);
            crate::version::normalize(&packages.version)
                .map_err(|e| format!("{}.version: {e}", input.name()))?;
            for (target, locked) in &packages.targets {
                let at = format!("{}.targets.{target}", input.name());
                let Some(target_def) = openwork_payload::targets::by_name(target) else {
                    return Err(format!("{at}: unknown target"));
                };
                for (field, digest) in [
                    ("sha256", Some(&locked.sha256)),
                    ("assetSha256", locked.asset_sha256.as_ref()),
                ] {
                    if let Some(digest) = digest
                        && !is_sha256_hex(digest)
                    {
                        return Err(format!(
                            "{at}.{field} is {digest:?}, not 64 lower-case hex digits"
                        ));
                    }
                }
                let package = match input {
                    Input::Opencode => &target_def.opencode.npm_package,
                    Input::Bun => &target_def.bun.npm_package,
                };
                if locked.package != *package {
                    return Err(format!(
                        "{at}.package is {:?}, but targets/{target}.json names {package:?}",
                        locked.package
                    ));
                }
                if locked.tarball_size == 0 {
                    return Err(format!("{at}.tarballSize is 0"));
                }
                if !locked.integrity.starts_with("sha512-") {
                    return Err(format!(
                        "{at}.integrity is {:?}, not a sha512 Subresource Integrity",
                        locked.integrity
                    ));
                }
            }
        }
        Ok(())
    }

    /// The entries of `input`.
    pub fn packages(&self, input: Input) -> &LockedPackages {
        match input {
            Input::Opencode => &self.opencode,
            Input::Bun => &self.bun,
        }
    }

    /// Mutable [`InputsLock::packages`].
    pub fn packages_mut(&mut self, input: Input) -> &mut LockedPackages {
        match input {
            Input::Opencode => &mut self.opencode,
            Input::Bun => &mut self.bun,
        }
    }

    /// What `input` for `target` at `version` must be, if the lock says.
    pub fn entry(&self, input: Input, target: &str, version: &str) -> Option<&LockedInput> {
        let packages = self.packages(input);
        let version = version.trim_start_matches('v');
        (packages.version.trim_start_matches('v') == version)
            .then(|| packages.targets.get(target))
            .flatten()
    }

    /// The lock as written to disk: pretty JSON, keys in a fixed order, a final newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("the lock serialises");
        text.push('\n');
        text
    }

    /// `<workspace root>/inputs.lock.json`.
    pub fn workspace_path() -> PathBuf {
        crate::paths::workspace_root().join(FILE_NAME)
    }
}

/// Lines saying what `new` changes from `old`, one per input and target: `+` added, `-`
/// removed, `~` changed (with the old and new values). Empty when they are the same.
pub fn diff(old: &InputsLock, new: &InputsLock) -> String {
    let mut out = String::new();
    for input in [Input::Opencode, Input::Bun] {
        let (a, b) = (old.packages(input), new.packages(input));
        if a.version != b.version {
            let _ = writeln!(
                out,
                "~ {} version {} -> {}",
                input.name(),
                a.version,
                b.version
            );
        }
        let targets: std::collections::BTreeSet<&String> =
            a.targets.keys().chain(b.targets.keys()).collect();
        for target in targets {
            let name = input.name();
            match (a.targets.get(target), b.targets.get(target)) {
                (None, Some(added)) => {
                    let _ = writeln!(
                        out,
                        "+ {name} {target} {}@{}: sha256 {} integrity {}",
                        added.package, b.version, added.sha256, added.integrity
                    );
                }
                (Some(removed), None) => {
                    let _ = writeln!(
                        out,
                        "- {name} {target} {}@{}: sha256 {}",
                        removed.package, a.version, removed.sha256
                    );
                }
                (Some(before), Some(after)) if before != after => {
                    let _ = writeln!(
                        out,
                        "~ {name} {target} {}@{}: sha256 {} -> {}, integrity {} -> {}",
                        after.package,
                        b.version,
                        before.sha256,
                        after.sha256,
                        before.integrity,
                        after.integrity
                    );
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_lock_parses_and_pins_the_constants_versions() {
        let lock = InputsLock::built_in();
        let constants = crate::constants::Constants::built_in();
        assert_eq!(lock.opencode.version, constants.opencode_version());
        assert_eq!(lock.bun.version, constants.bun_version);
        // Every target's Bun is locked: every target can build a router.
        for target in openwork_payload::targets::all() {
            assert!(
                lock.bun.targets.contains_key(&target.name),
                "bun for {} is not locked",
                target.name
            );
        }
        assert!(lock.opencode.targets.contains_key("linux-x64"));
        assert_eq!(InputsLock::parse(&lock.to_text()).unwrap(), lock);
    }

    #[test]
    fn entries_are_found_only_at_the_locked_version() {
        let lock = InputsLock::built_in();
        let v = lock.opencode.version.clone();
        assert!(lock.entry(Input::Opencode, "linux-x64", &v).is_some());
        assert!(
            lock.entry(Input::Opencode, "linux-x64", &format!("v{v}"))
                .is_some()
        );
        assert!(lock.entry(Input::Opencode, "linux-x64", "0.0.1").is_none());
        assert!(lock.entry(Input::Opencode, "no-such-target", &v).is_none());
    }

    #[test]
    fn malformed_locks_are_refused_with_the_field_named() {
        let good = InputsLock::built_in();
        let mut bad = good.clone();
        bad.lock_version = 2;
        assert!(bad.validate().unwrap_err().contains("lockVersion 2"));
        let mut bad = good.clone();
        bad.opencode.targets.get_mut("linux-x64").unwrap().sha256 = "ABC".into();
        let err = bad.validate().unwrap_err();
        assert!(err.contains("opencode.targets.linux-x64.sha256"), "{err}");
        let mut bad = good.clone();
        let entry = bad.opencode.targets["linux-x64"].clone();
        bad.opencode.targets.insert("beos-x64".into(), entry);
        assert!(bad.validate().unwrap_err().contains("unknown target"));
        let text = good.to_text().replace("\"tarballSize\"", "\"tarbalSize\"");
        assert!(InputsLock::parse(&text).is_err());
    }

    #[test]
    fn the_diff_names_each_change() {
        let old = InputsLock::built_in();
        assert_eq!(diff(&old, &old), "");
        let mut new = old.clone();
        new.opencode.targets.get_mut("linux-x64").unwrap().sha256 = "0".repeat(64);
        new.bun.targets.remove("darwin-x64");
        let text = diff(&old, &new);
        assert!(text.contains("~ opencode linux-x64"), "{text}");
        assert!(text.contains("- bun darwin-x64"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
