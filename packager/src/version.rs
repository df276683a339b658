//! Version strings as the packager takes them: the pins in `constants.json` and the lock,
//! `--version`, and a router source's `package.json`.

/// A version that is not a plain version number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {version:?}: expected a version such as 1.2.27 or v1.2.27")]
pub struct InvalidVersion {
    /// What was given.
    pub version: String,
}

/// `1.2.27` from `1.2.27` or `v1.2.27`; refuses anything that is not a plain version (it
/// becomes part of a URL and of a cache path).
pub fn normalize(version: &str) -> Result<String, InvalidVersion> {
    let bare = version
        .trim()
        .strip_prefix(['v', 'V'])
        .unwrap_or(version.trim());
    let plain = bare.starts_with(|c: char| c.is_ascii_digit())
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if plain {
        Ok(bare.to_owned())
    } else {
        Err(InvalidVersion {
            version: version.to_owned(),
        })
    }
}

/// `MAJOR.MINOR.PATCH[-PRE][+BUILD]` as semver.org defines it (no `v`, no leading zeros).
pub fn is_semver(version: &str) -> bool {
    semver::Version::parse(version).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(normalize("1.2.27").unwrap(), "1.2.27");
        assert_eq!(normalize("v1.2.27").unwrap(), "1.2.27");
        assert_eq!(normalize(" V2.0.0-beta.1+b5 ").unwrap(), "2.0.0-beta.1+b5");
        for bad in ["", "v", "latest", "1.2/../x", "../1", "1 2"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn semver() {
        for good in [
            "0.1.0",
            "1.22.333",
            "1.0.0-beta.1",
            "1.0.0-rc-1+build.5",
            "0.0.0+x",
        ] {
            assert!(is_semver(good), "{good}");
        }
        for bad in [
            "",
            "1",
            "1.2",
            "v1.2.3",
            "01.2.3",
            "1.2.3.4",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3-a..b",
            "^1.2.3",
            "1.2.x",
            "1.2.3/../x",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }
}
