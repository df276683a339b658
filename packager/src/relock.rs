//! `openwork-packager lock`: the lock computed again from what the registry serves now.
//!
//! Apart from [`crate::lock`], which only reads, writes and compares the lock file, because
//! this needs `fetch` (and [`crate::bun`]'s names), which itself reads the lock: the
//! dependencies point one way, `relock` → `fetch` → `lock`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::lock::{Input, InputsLock, LOCK_VERSION, LockedInput, LockedPackages};

/// What `openwork-packager lock` asks for.
#[derive(Debug, Clone)]
pub struct RefreshRequest {
    /// The versions to lock.
    pub constants: crate::constants::Constants,
    /// The lock as it is: `assetSha256` pins (set by hand) are kept where the executable
    /// did not change.
    pub previous: InputsLock,
    /// Where downloads are cached.
    pub cache_root: PathBuf,
    /// The registry; `None` discovers it the way npm does.
    pub registry: Option<crate::fetch::Registry>,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// The lock for `req.constants`' versions as the registry serves them now, and a note per
/// input the registry lacks (left out of the lock). Every package is downloaded (through
/// the cache) to hash the executable inside; its integrity is the registry's current one,
/// so a cached copy of other bytes is fetched again.
pub fn refresh(req: &RefreshRequest) -> Result<(InputsLock, Vec<String>)> {
    use crate::fetch::{FetchError, FetchRequest, announced_integrity, fetch_npm_bin};
    let mut lock = InputsLock {
        lock_version: LOCK_VERSION,
        opencode: LockedPackages {
            version: req.constants.opencode_version().to_owned(),
            targets: BTreeMap::new(),
        },
        bun: LockedPackages {
            version: req.constants.bun_version.trim_start_matches('v').to_owned(),
            targets: BTreeMap::new(),
        },
    };
    let mut missing = Vec::new();
    for input in [Input::Opencode, Input::Bun] {
        for target in openwork_payload::targets::all() {
            let (package, cache_name, file) = match input {
                Input::Opencode => (
                    &target.opencode.npm_package,
                    "opencode",
                    format!("opencode{}", target.exe_suffix),
                ),
                Input::Bun => (
                    &target.bun.npm_package,
                    crate::bun::CACHE_NAME,
                    crate::bun::file_name(target),
                ),
            };
            let version = lock.packages(input).version.clone();
            let mut fetch = FetchRequest::new(target, version.clone());
            fetch.cache_root = req.cache_root.clone();
            fetch.registry = req.registry.clone();
            fetch.quiet = req.quiet;
            let integrity = match announced_integrity(&fetch, package) {
                Ok(integrity) => integrity,
                Err(FetchError::VersionNotFound { .. }) => {
                    missing.push(format!(
                        "{} {}: the registry has no {package}@{version}; not locked",
                        input.name(),
                        target.name
                    ));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            fetch.expected_integrity = Some(integrity.clone());
            let fetched = fetch_npm_bin(&fetch, cache_name, package, &file)?;
            let kept_asset_pin = req
                .previous
                .entry(input, &target.name, &version)
                .filter(|old| old.sha256 == fetched.sha256)
                .and_then(|old| old.asset_sha256.clone());
            lock.packages_mut(input).targets.insert(
                target.name.clone(),
                LockedInput {
                    package: package.clone(),
                    integrity,
                    tarball_size: fetched.download_size.unwrap_or_default(),
                    sha256: fetched.sha256,
                    size: fetched.size,
                    asset_sha256: kept_asset_pin,
                },
            );
        }
    }
    lock.validate().map_err(Error::Usage)?;
    Ok((lock, missing))
}
