//! The pinned Bun, per target, from the npm registry.
//!
//! Bun publishes every build as `@oven/bun-<platform>` with the executable at
//! `package/bin/bun[.exe]`, so it goes through the same machinery as opencode
//! ([`fetch_npm_bin`]): the registry's SHA-512 integrity, a goblin format and architecture
//! check, and the immutable cache (`<cache_root>/bun/<target>/v<version>/`), which a build
//! can use offline once warm.
//!
//! Two Buns take part in building opencode-router for a target: the host's runs
//! `bun build`, the target's is embedded through `--compile-executable-path`. Passing the
//! target's explicitly is what keeps cross builds off the network: without it Bun downloads
//! the target runtime itself, unverified, from its own CDN.

use std::path::PathBuf;

use openwork_payload::targets::{self, Target};

use crate::fetch::{self, FetchError, FetchRequest, FetchedBinary, Source};
use crate::lock::{Input, InputsLock};

/// The cache directory name of Bun entries (`<cache_root>/bun/<target>/v<version>/`).
pub const CACHE_NAME: &str = "bun";

/// The executable's file name inside the npm package's `bin/` for `target`.
pub fn file_name(target: &Target) -> String {
    format!("bun{}", target.exe_suffix)
}

/// The pinned Bun for `target` at `version` (checked against the built-in lock), fetched into the default cache unless it is
/// already there (verified against its record on every use); with `offline`, the cache only.
pub fn ensure_bun(target: &'static Target, version: &str, offline: bool) -> fetch::Result<PathBuf> {
    let mut req = FetchRequest::new(target, version);
    req.pin_from(&InputsLock::built_in(), Input::Bun, &Source::Npm);
    req.offline = offline;
    Ok(fetch_bun(&req)?.path)
}

/// [`ensure_bun`] with every knob of [`FetchRequest`] (cache root, registry, quiet).
pub fn fetch_bun(req: &FetchRequest) -> fetch::Result<FetchedBinary> {
    fetch::fetch_npm_bin(
        req,
        CACHE_NAME,
        &req.target.bun.npm_package,
        &file_name(req.target),
    )
}

/// The release target this machine is, whose Bun can run here.
pub fn host_target() -> fetch::Result<&'static Target> {
    targets::host_name()
        .and_then(targets::by_name)
        .ok_or_else(|| FetchError::UnknownTarget {
            name: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            known: targets::all()
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
