//! `constants.json`: the version pins, the single source of truth for what a release
//! contains. The repository's copy is compiled in; `--constants FILE` reads another.

use std::collections::BTreeMap;
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
    /// Known SHA-256s of opencode per source and target.
    #[serde(default)]
    pub opencode_sha256: OpencodeSha256,
}

/// `opencodeSha256`: `{"github": {"<target>": "<hex>"}, "npm": {"<target>": "<hex>"}}`.
///
/// Keyed by source first because the two pin different files: `github` pins the release
/// asset as published (`opencode-<platform>.{zip,tar.gz}`, what a mirror or an
/// air-gapped copy also holds), `npm` pins the executable inside the npm package (the
/// registry's own integrity already covers the tarball, so this pins the build itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpencodeSha256 {
    /// SHA-256 of the GitHub release asset, per target.
    #[serde(default)]
    pub github: BTreeMap<String, String>,
    /// SHA-256 of the executable in the npm package, per target.
    #[serde(default)]
    pub npm: BTreeMap<String, String>,
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
        let constants: Constants = serde_json::from_str(BUILT_IN).expect("constants.json parses");
        if let Err(e) = constants.validate() {
            panic!("constants.json: {e}");
        }
        constants
    }

    /// Checks what serde cannot: plain versions, known targets, well-formed digests.
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::fetch::normalize_version(&self.opencode_version).map_err(|_| {
            format!(
                "opencodeVersion {:?} is not a version such as 1.2.27 or v1.2.27",
                self.opencode_version
            )
        })?;
        for (source, pins) in [
            ("github", &self.opencode_sha256.github),
            ("npm", &self.opencode_sha256.npm),
        ] {
            for (target, sha256) in pins {
                if openwork_payload::targets::by_name(target).is_none() {
                    return Err(format!(
                        "opencodeSha256.{source} names unknown target {target:?}"
                    ));
                }
                let well_formed = sha256.len() == 64
                    && sha256
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if !well_formed {
                    return Err(format!(
                        "opencodeSha256.{source}.{target} is {sha256:?}, not 64 lower-case hex digits (a SHA-256)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads `path`, or returns the compiled-in pins when `None`.
    pub fn load(path: Option<&Path>) -> Result<Constants> {
        let Some(path) = path else {
            return Ok(Constants::built_in());
        };
        let text = fs_err::read_to_string(path).map_err(Error::Io)?;
        let constants: Constants = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            reason: format!("not a valid constants.json: {e}"),
        })?;
        constants.validate().map_err(|reason| Error::Input {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(constants)
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

    fn parse(pins: &str) -> std::result::Result<Constants, String> {
        let text = format!(
            r#"{{"serverVersion":"0.1.0","opencodeVersion":"v1.2.27","bunVersion":"1.0.0",
            "router":{{"sourceDir":"x","version":"0.1.0"}},"opencodeSha256":{pins}}}"#
        );
        let c: Constants = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn sha256_pins_shape_and_errors() {
        let hex = "ab".repeat(32);
        let c = parse(&format!(r#"{{"github":{{"linux-x64":"{hex}"}}}}"#)).unwrap();
        assert_eq!(c.opencode_version(), "1.2.27");
        assert_eq!(c.opencode_sha256.github["linux-x64"], hex);
        assert!(c.opencode_sha256.npm.is_empty());
        assert_eq!(
            parse("{}").unwrap().opencode_sha256,
            OpencodeSha256::default()
        );

        let err = parse(&format!(r#"{{"gihtub":{{"linux-x64":"{hex}"}}}}"#)).unwrap_err();
        assert!(err.contains("unknown field `gihtub`"), "{err}");
        let err = parse(&format!(r#"{{"npm":{{"linux-x65":"{hex}"}}}}"#)).unwrap_err();
        assert!(err.contains("unknown target \"linux-x65\""), "{err}");
        let err = parse(r#"{"npm":{"linux-x64":"abc"}}"#).unwrap_err();
        assert!(err.contains("opencodeSha256.npm.linux-x64"), "{err}");
        // The old flat shape is refused with a message naming the sources.
        let err = parse(&format!(r#"{{"linux-x64":"{hex}"}}"#)).unwrap_err();
        assert!(err.contains("expected `github` or `npm`"), "{err}");
    }
}
