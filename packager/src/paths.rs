//! Where the packager finds the workspace it was built in, and its caches.

use std::path::{Path, PathBuf};

/// The cache directory under the workspace root (git-ignored).
pub const DEFAULT_CACHE_DIR: &str = ".local/runtime-assets";

/// The workspace root this crate was built in (the directory with `constants.json`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `<workspace root>/.local/runtime-assets`.
pub fn default_cache_root() -> PathBuf {
    workspace_root().join(DEFAULT_CACHE_DIR)
}
