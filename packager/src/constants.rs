//! `constants.json`: the version pins, the single source of truth for what a release
//! contains. The repository's copy is compiled in; `--constants FILE` reads another.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The repository's constants.json at build time.
const BUILT_IN: &str = include_str!("../../constants.json");

/// The pins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Constants {
    /// Version written into manifests as `serverVersion`.
    pub server_version: String,
    /// opencode version (a leading `v` is accepted).
    pub opencode_version: String,
    /// The opencode-router source.
    pub router: RouterPin,
    /// Bun version used to compile the router.
    pub bun_version: String,
    /// Known SHA-256 per `<target>` or `<target>/<source>`, for sources without their own
    /// integrity data.
    #[serde(default)]
    pub opencode_sha256: std::collections::BTreeMap<String, String>,
}

/// Where opencode-router comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterPin {
    /// Source directory, relative to the repository root.
    pub source_dir: String,
    /// Its version.
    pub version: String,
}

impl Constants {
    /// The compiled-in pins.
    pub fn built_in() -> Constants {
        serde_json::from_str(BUILT_IN).expect("constants.json is valid")
    }

    /// Reads `path`, or returns the compiled-in pins when `None`.
    pub fn load(path: Option<&Path>) -> Result<Constants> {
        let Some(path) = path else {
            return Ok(Constants::built_in());
        };
        let text = fs_err::read_to_string(path).map_err(Error::Io)?;
        serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            reason: format!("not a valid constants.json: {e}"),
        })
    }

    /// The opencode version without a leading `v`.
    pub fn opencode_version(&self) -> &str {
        self.opencode_version.trim_start_matches('v')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_pins_parse() {
        let c = Constants::built_in();
        assert!(!c.opencode_version().starts_with('v'));
        assert!(!c.server_version.is_empty());
    }
}
