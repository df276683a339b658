//! Where the server's tokens come from: a file, the environment, or — with neither — a
//! generated token kept in a 0600 file under the data dir (reused on the next start, so
//! a client that saved it keeps working).
//!
//! A token is never read from a file someone else could have written ([`crate::trust`]):
//! a token file not owned by the user (or root) or writable by group or others is refused
//! (exit 15), the data dir's own token files are opened without following links, and a
//! new token is written to an exclusively created temp file, then renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::supervisor::random_secret;
use crate::trust;

/// A token and where it came from.
pub struct Token {
    /// The token itself. Never logged.
    pub value: String,
    /// The file holding it (given or generated), if any.
    pub file: Option<PathBuf>,
}

/// Shortest token accepted from a file or the environment: guessable tokens are refused.
const MIN_TOKEN_LEN: usize = 16;

/// The tokens given in the environment (`OPENWORK_TOKEN`, `OPENWORK_HOST_TOKEN`), which the
/// CLI reads: none when unset or blank. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct GivenTokens {
    /// The client token.
    pub client: Option<String>,
    /// The host token.
    pub host: Option<String>,
}

impl std::fmt::Debug for GivenTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |token: &Option<String>| if token.is_some() { "<given>" } else { "<none>" };
        f.debug_struct("GivenTokens")
            .field("client", &given(&self.client))
            .field("host", &given(&self.host))
            .finish()
    }
}

/// The client token: `--token-file`, else `env_value` (`OPENWORK_TOKEN`), else the
/// generated file `default_file`.
pub fn resolve(
    flag_file: Option<&Path>,
    env_name: &str,
    env_value: Option<String>,
    default_file: &Path,
) -> Result<Token> {
    if let Some(file) = flag_file {
        let text = read_flag_file(file)?;
        let value = checked(text.trim(), &format!("the token file {}", file.display()))?;
        return Ok(Token {
            value,
            file: Some(file.to_path_buf()),
        });
    }
    if let Some(value) = env_value {
        return Ok(Token {
            value: checked(value.trim(), env_name)?,
            file: None,
        });
    }
    if let Some(mut file) = trust::open_trusted(default_file, "the token file")? {
        let mut text = String::new();
        // Unreadable or unusable content is replaced by a new token below.
        if file.read_to_string(&mut text).is_ok()
            && let Ok(value) = checked(text.trim(), "")
        {
            warn_if_readable_by_others(&file, default_file);
            return Ok(Token {
                value,
                file: Some(default_file.to_path_buf()),
            });
        }
    }
    let value = random_secret();
    write_private(default_file, &value)?;
    Ok(Token {
        value,
        file: Some(default_file.to_path_buf()),
    })
}

/// Reads `--token-file`: the user named it, so a link is followed, but what is read must be
/// theirs (or root's) and writable by nobody else; checked on the open file.
fn read_flag_file(file: &Path) -> Result<String> {
    let cannot = |e: std::io::Error| {
        Error::BadInput(format!(
            "cannot read the token file {}: {e}; pass a readable file with --token-file",
            file.display()
        ))
    };
    let mut opened = std::fs::File::open(file).map_err(cannot)?;
    trust::check_open_file(&opened, file, "the token file", trust::TOKEN_FILE_FIX)?;
    let mut text = String::new();
    opened.read_to_string(&mut text).map_err(cannot)?;
    warn_if_readable_by_others(&opened, file);
    Ok(text)
}

fn checked(value: &str, what: &str) -> Result<String> {
    if value.len() < MIN_TOKEN_LEN || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::BadInput(format!(
            "{what} does not hold a usable token: it needs at least {MIN_TOKEN_LEN} characters, no spaces or control characters"
        )));
    }
    Ok(value.to_string())
}

/// Writes a new token to `path` with [`trust::write_private_atomic`]: never briefly
/// readable by others, half-written, or written anywhere but here.
fn write_private(path: &Path, value: &str) -> Result<()> {
    trust::write_private_atomic(path, format!("{value}\n").as_bytes())
        .map_err(|e| Error::io(format!("write the token file {}", path.display()), e))
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the token file is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &std::fs::File, _path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let first = resolve(None, "OPENWORK_TOKEN", None, &file).unwrap();
        assert_eq!(first.value.len(), 64);
        assert_eq!(first.file.as_deref(), Some(file.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = resolve(None, "OPENWORK_TOKEN", None, &file).unwrap();
        assert_eq!(first.value, second.value);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("given");
        std::fs::write(&given, "from-the-file-0123456789\n").unwrap();
        let default = dir.path().join("token");
        let token = resolve(
            Some(&given),
            "OPENWORK_TOKEN",
            Some("from-the-env-0123456789".into()),
            &default,
        )
        .unwrap();
        assert_eq!(token.value, "from-the-file-0123456789");
        let token = resolve(
            None,
            "OPENWORK_TOKEN",
            Some("from-the-env-0123456789".into()),
            &default,
        )
        .unwrap();
        assert_eq!(token.value, "from-the-env-0123456789");
        assert!(token.file.is_none());
        assert!(!default.exists(), "nothing generated when a token is given");
    }

    #[test]
    fn short_or_missing_tokens_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("token");
        let err = resolve(
            None,
            "OPENWORK_TOKEN",
            Some("short-secret".into()),
            &default,
        )
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), crate::ExitCode::BadInput);
        assert!(!err.to_string().contains("short-secret"));
        let err = resolve(
            Some(&dir.path().join("missing")),
            "OPENWORK_TOKEN",
            None,
            &default,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--token-file"), "{err}");
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_write_is_refused_one_they_can_read_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("given");
        std::fs::write(&given, "from-the-file-0123456789\n").unwrap();
        let default = dir.path().join("token");
        for mode in [0o666, 0o620, 0o602] {
            set_mode(&given, mode);
            let err = resolve(Some(&given), "OPENWORK_TOKEN", None, &default)
                .err()
                .unwrap();
            assert_eq!(
                err.exit_code(),
                crate::ExitCode::Untrusted,
                "{mode:o}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("writable by"), "{message}");
            assert!(message.contains("--token-file"), "{message}");
            assert!(
                !message.contains("from-the-file"),
                "the token is not echoed"
            );
        }
        set_mode(&given, 0o644);
        let token = resolve(Some(&given), "OPENWORK_TOKEN", None, &default).unwrap();
        assert_eq!(token.value, "from-the-file-0123456789");
        // The generated one is held to the same rule.
        let first = resolve(None, "OPENWORK_TOKEN", None, &default).unwrap();
        set_mode(&default, 0o660);
        let err = resolve(None, "OPENWORK_TOKEN", None, &default)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
        set_mode(&default, 0o600);
        assert_eq!(
            resolve(None, "OPENWORK_TOKEN", None, &default)
                .unwrap()
                .value,
            first.value
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_in_place_of_the_token_file_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // Dangling: a write through it would create outside/stolen.
        let default = data.join("token");
        std::os::unix::fs::symlink(outside.join("stolen"), &default).unwrap();
        let err = resolve(None, "OPENWORK_TOKEN", None, &default)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!outside.join("stolen").exists());
        // Pointing at a token someone else chose: not read either.
        std::fs::write(outside.join("chosen"), "chosen-by-someone-else-0123\n").unwrap();
        set_mode(&outside.join("chosen"), 0o600);
        std::fs::remove_file(&default).unwrap();
        std::os::unix::fs::symlink(outside.join("chosen"), &default).unwrap();
        assert!(resolve(None, "OPENWORK_TOKEN", None, &default).is_err());
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            1,
            "no temp file left, nothing generated"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_of_another_uid_is_refused() {
        if crate::trust::current_uid() != 0 {
            eprintln!("skipped: needs root to give a file to another uid (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("token");
        std::fs::write(&default, "planted-by-uid-65534-0123456789\n").unwrap();
        set_mode(&default, 0o600);
        std::os::unix::fs::chown(&default, Some(65534), Some(65534)).unwrap();
        let err = resolve(None, "OPENWORK_TOKEN", None, &default)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let err = resolve(
            Some(&default),
            "OPENWORK_TOKEN",
            None,
            &dir.path().join("t"),
        )
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
    }
}
