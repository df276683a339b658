//! `constants.json`: the versions a release is built from. The repository's copy is compiled
//! in; `--constants FILE` reads another. Which bytes those versions are is locked in
//! `inputs.lock.json` ([`crate::lock`]); the server's own version is the workspace's Cargo
//! version ([`openwork_payload::SERVER_VERSION`]), so there is one of it.

use std::path::Path;

use serde::Deserialize;

use crate::input_file::{self, InputFileError};

/// The repository's constants.json at build time.
const BUILT_IN: &str = include_str!("../../constants.json");

/// The pins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constants {
    /// opencode version (a leading `v` is accepted).
    pub opencode_version: String,
    /// The opencode-router source, when a release carries one. Without it a release
    /// carries opencode alone.
    #[serde(default)]
    pub router: Option<RouterPin>,
    /// Bun version used to compile the router.
    pub bun_version: String,
}

/// Where opencode-router comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterPin {
    /// Source directory, relative to the repository root.
    pub source_dir: String,
    /// Its version.
    pub version: String,
}

impl Constants {
    /// The compiled-in pins.
    pub fn built_in() -> Constants {
        Constants::parse(BUILT_IN).unwrap_or_else(|e| panic!("constants.json: {e}"))
    }

    /// Parses and checks a constants.json text.
    pub fn parse(text: &str) -> std::result::Result<Constants, String> {
        let constants: Constants = serde_json::from_str(text).map_err(|e| {
            let moved = if e.to_string().contains("serverVersion") {
                " (the server's version is the workspace's Cargo version now)"
            } else if e.to_string().contains("opencodeSha256") {
                " (pins moved to inputs.lock.json: run `openwork-packager lock`)"
            } else {
                ""
            };
            format!("not a valid constants.json: {e}{moved}")
        })?;
        constants.validate()?;
        Ok(constants)
    }

    /// Checks what serde cannot: plain versions.
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::version::normalize(&self.opencode_version).map_err(|_| {
            format!(
                "opencodeVersion {:?} is not a version such as 1.18.32 or v1.18.32",
                self.opencode_version
            )
        })?;
        crate::version::normalize(&self.bun_version)
            .map_err(|_| format!("bunVersion {:?} is not a version", self.bun_version))?;
        Ok(())
    }

    /// Reads `path`, or returns the compiled-in pins when `None`.
    pub fn load(path: Option<&Path>) -> Result<Constants, InputFileError> {
        match path {
            None => Ok(Constants::built_in()),
            Some(path) => input_file::read(path, Constants::parse),
        }
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
        crate::version::normalize(c.opencode_version()).unwrap();
        // The default release carries opencode alone: the router is a test fixture here.
        assert_eq!(c.router, None);
    }

    #[test]
    fn a_router_is_named_by_its_source_and_old_fields_say_where_they_went() {
        let c = Constants::parse(
            r#"{"opencodeVersion":"v1.18.32","bunVersion":"1.3.10",
            "router":{"sourceDir":"x","version":"0.1.0"}}"#,
        )
        .unwrap();
        assert_eq!(c.opencode_version(), "1.18.32");
        assert_eq!(c.router.unwrap().source_dir, "x");

        let err = Constants::parse(
            r#"{"serverVersion":"0.2.0","opencodeVersion":"1.18.32","bunVersion":"1.3.10"}"#,
        )
        .unwrap_err();
        assert!(err.contains("Cargo version"), "{err}");
        let err = Constants::parse(
            r#"{"opencodeVersion":"1.18.32","bunVersion":"1.3.10","opencodeSha256":{}}"#,
        )
        .unwrap_err();
        assert!(err.contains("inputs.lock.json"), "{err}");
        let err =
            Constants::parse(r#"{"opencodeVersion":"latest","bunVersion":"1.3.10"}"#).unwrap_err();
        assert!(err.contains("opencodeVersion"), "{err}");
    }
}
