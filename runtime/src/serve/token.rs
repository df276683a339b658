//! Where the server's tokens come from: a file, the environment, or — with neither — a
//! generated token kept in a 0600 file under the data dir (reused on the next start, so
//! a client that saved it keeps working).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::supervisor::random_secret;

/// A token and where it came from.
pub struct Token {
    /// The token itself. Never logged.
    pub value: String,
    /// The file holding it (given or generated), if any.
    pub file: Option<PathBuf>,
}

/// Shortest token accepted from a file or the environment: guessable tokens are refused.
const MIN_TOKEN_LEN: usize = 16;

/// The client token: `--token-file`, else `env_value` (`OPENWORK_TOKEN`), else the
/// generated file `default_file`.
pub fn resolve(
    flag_file: Option<&Path>,
    env_name: &str,
    env_value: Option<String>,
    default_file: &Path,
) -> Result<Token> {
    if let Some(file) = flag_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::BadInput(format!(
                "cannot read the token file {}: {e}; pass a readable file with --token-file",
                file.display()
            ))
        })?;
        let value = checked(text.trim(), &format!("the token file {}", file.display()))?;
        warn_if_readable_by_others(file);
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
    if let Ok(text) = std::fs::read_to_string(default_file)
        && let Ok(value) = checked(text.trim(), "")
    {
        return Ok(Token {
            value,
            file: Some(default_file.to_path_buf()),
        });
    }
    let value = random_secret();
    write_private(default_file, &value)?;
    Ok(Token {
        value,
        file: Some(default_file.to_path_buf()),
    })
}

fn checked(value: &str, what: &str) -> Result<String> {
    if value.len() < MIN_TOKEN_LEN || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::BadInput(format!(
            "{what} does not hold a usable token: it needs at least {MIN_TOKEN_LEN} characters, no spaces or control characters"
        )));
    }
    Ok(value.to_string())
}

/// Writes `value` to `path` readable by the owner only: a temp file created 0600, then
/// renamed over, so the token is never briefly readable by others or half-written.
fn write_private(path: &Path, value: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(value.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("write the token file {}", path.display()), e)
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %file.display(),
            "the token file is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

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
}
