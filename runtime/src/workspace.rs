//! The active workspace: the directory opencode and opencode-router work in, chosen at start
//! and switchable at run time (`PUT /workspaces/active`, host token), remembered across
//! restarts in `<data dir>/workspace.json`.
//!
//! Which directory a start uses, first match wins:
//!
//! 1. `--workspace DIR`: the command line is the newest statement of intent, so it wins, and
//!    it becomes the remembered choice (a desktop app that passes it every time gets exactly
//!    what it passes; one that wants the server to remember a switch omits it).
//! 2. The remembered choice, if that directory still exists (if not: a warning, and on to 3).
//! 3. The current directory.
//!
//! Switching does not restart opencode: opencode serves any directory per request (the
//! `x-opencode-directory` header, which the proxy adds for clients that name none), so a
//! switch costs nothing and no client loses its connection or its event stream. The router
//! takes its directory on its command line, so it is restarted to follow.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::http::response::ApiError;
use crate::trust;

/// One workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workspace {
    /// Stable id: the first 16 hex digits of the SHA-256 of the directory path.
    pub id: String,
    /// The directory's name.
    pub name: String,
    /// The directory: absolute and canonical.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub directory: PathBuf,
}

impl Workspace {
    /// The workspace for `directory` (already absolute and canonical).
    pub fn new(directory: PathBuf) -> Workspace {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(directory.to_string_lossy().as_bytes());
        Workspace {
            id: hex::encode(&digest[..8]),
            name: directory
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| directory.to_string_lossy().into_owned()),
            directory,
        }
    }
}

/// What `<data dir>/workspace.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    directory: PathBuf,
}

/// Where a start's workspace came from (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--workspace`.
    Flag,
    /// The remembered choice.
    Remembered,
    /// The current directory.
    CurrentDir,
}

/// The workspace a start uses (see the module docs for the order), and where it came from.
/// `file` is `<data dir>/workspace.json`; an explicit `flag` is written there.
pub fn resolve_at_start(flag: Option<&Path>, file: &Path) -> Result<(PathBuf, Origin)> {
    if let Some(dir) = flag {
        let canonical = existing_dir(dir).map_err(|problem| {
            Error::BadInput(format!(
                "--workspace {}: {problem}; give an existing directory",
                dir.display()
            ))
        })?;
        if remembered(file)?.as_deref() != Some(canonical.as_path()) {
            remember(file, &canonical)
                .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        }
        return Ok((canonical, Origin::Flag));
    }
    if let Some(dir) = remembered(file)? {
        match existing_dir(&dir) {
            Ok(canonical) => return Ok((canonical, Origin::Remembered)),
            Err(problem) => tracing::warn!(
                "the remembered workspace {} cannot be used ({problem}); using the current directory",
                dir.display()
            ),
        }
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("read the current directory", e))?;
    let canonical = existing_dir(&cwd).map_err(|problem| {
        Error::BadInput(format!(
            "the current directory {}: {problem}; pass --workspace DIR",
            cwd.display()
        ))
    })?;
    Ok((canonical, Origin::CurrentDir))
}

/// `dir` canonicalised, if it exists and is a directory; otherwise what is wrong, in words.
fn existing_dir(dir: &Path) -> std::result::Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    if !canonical.is_dir() {
        return Err("not a directory".into());
    }
    Ok(canonical)
}

/// The remembered directory; `None` when there is none or it cannot be parsed (a warning).
/// A file that is not ours, or is a link, is refused (exit 15): it decides where opencode
/// works.
fn remembered(file: &Path) -> Result<Option<PathBuf>> {
    let Some(mut opened) = trust::open_trusted(file, "the remembered workspace")? else {
        return Ok(None);
    };
    let mut text = String::new();
    let parsed = opened
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Remembered>(&text).map_err(|e| e.to_string()));
    match parsed {
        Ok(remembered) => Ok(Some(remembered.directory)),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", file.display());
            Ok(None)
        }
    }
}

fn remember(file: &Path, dir: &Path) -> std::io::Result<()> {
    let mut json = serde_json::to_vec(&Remembered {
        directory: dir.to_path_buf(),
    })?;
    json.push(b'\n');
    trust::write_private_atomic(file, &json)
}

/// Why a switch was refused. Each has its own HTTP status and error code.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The directory was not given as an absolute path.
    #[error("{0}: give an absolute path")]
    Relative(String),
    /// Nothing is there (or it cannot be reached).
    #[error("{path}: {problem}; give an existing directory")]
    NotFound {
        /// As given.
        path: String,
        /// What the file system said.
        problem: String,
    },
    /// Something is there, but not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// The choice could not be written to the data directory; nothing was switched.
    #[error("could not remember the workspace in {path}: {source}; nothing was switched")]
    Persist {
        /// `workspace.json`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl SwitchError {
    /// The stable error code of the JSON error body.
    pub fn code(&self) -> &'static str {
        self.api_error().code()
    }

    /// The API's error for it (its code and status).
    pub fn api_error(&self) -> ApiError {
        match self {
            SwitchError::Relative(_) => ApiError::WorkspaceNotAbsolute,
            SwitchError::NotFound { .. } => ApiError::WorkspaceNotFound,
            SwitchError::NotADirectory(_) => ApiError::WorkspaceNotADirectory,
            SwitchError::Persist { .. } => ApiError::WorkspaceNotSaved,
        }
    }
}

/// The active workspace, shared by the API (which switches it and answers with it), the
/// proxy (which tells opencode which directory to serve) and the supervisor (which starts
/// the router in it).
pub struct ActiveWorkspace {
    current: watch::Sender<Workspace>,
    file: PathBuf,
    /// One switch at a time, so the file and the current value never disagree.
    switching: Mutex<()>,
}

impl ActiveWorkspace {
    /// `workspace` is active; switches are remembered in `file`.
    pub fn new(workspace: Workspace, file: PathBuf) -> ActiveWorkspace {
        ActiveWorkspace {
            current: watch::channel(workspace).0,
            file,
            switching: Mutex::new(()),
        }
    }

    /// The active workspace.
    pub fn get(&self) -> Workspace {
        self.current.borrow().clone()
    }

    /// Follows switches.
    pub fn subscribe(&self) -> watch::Receiver<Workspace> {
        self.current.subscribe()
    }

    /// Makes `directory` (absolute, existing) the active workspace, remembering it first.
    /// `Ok((workspace, changed))`: `changed` is false when it was already active. Blocking
    /// file I/O: call it off the async thread.
    pub fn switch(&self, directory: &str) -> std::result::Result<(Workspace, bool), SwitchError> {
        let given = Path::new(directory);
        if !given.is_absolute() {
            return Err(SwitchError::Relative(directory.to_string()));
        }
        let canonical = std::fs::canonicalize(given).map_err(|e| SwitchError::NotFound {
            path: directory.to_string(),
            problem: e.to_string(),
        })?;
        if !canonical.is_dir() {
            return Err(SwitchError::NotADirectory(directory.to_string()));
        }
        let _one_at_a_time = self.switching.lock().unwrap_or_else(|e| e.into_inner());
        if self.current.borrow().directory == canonical {
            return Ok((self.get(), false));
        }
        remember(&self.file, &canonical).map_err(|source| SwitchError::Persist {
            path: self.file.clone(),
            source,
        })?;
        let workspace = Workspace::new(canonical);
        self.current.send_replace(workspace.clone());
        Ok((workspace, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_is_remembered_then_the_remembered_choice_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data/workspace.json");
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let (dir, origin) = resolve_at_start(Some(&a), &file).unwrap();
        assert_eq!(
            (dir.clone(), origin),
            (a.canonicalize().unwrap(), Origin::Flag)
        );
        assert_eq!(
            resolve_at_start(None, &file).unwrap(),
            (dir, Origin::Remembered)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_remembered_directory_that_is_gone_falls_back_to_the_current_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("workspace.json");
        remember(&file, &tmp.path().join("gone")).unwrap();
        let (dir, origin) = resolve_at_start(None, &file).unwrap();
        assert_eq!(origin, Origin::CurrentDir);
        assert_eq!(
            dir,
            std::env::current_dir().unwrap().canonicalize().unwrap()
        );
    }

    #[test]
    fn a_switch_is_checked_canonicalised_and_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("workspace.json");
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let active = ActiveWorkspace::new(Workspace::new(a.canonicalize().unwrap()), file.clone());
        let mut follower = active.subscribe();

        let err = |dir: &str| active.switch(dir).unwrap_err().code();
        assert_eq!(err("relative/dir"), "workspace_not_absolute");
        assert_eq!(
            err(tmp.path().join("missing").to_str().unwrap()),
            "workspace_not_found"
        );
        assert_eq!(
            err(tmp.path().join("f").to_str().unwrap()),
            "workspace_not_a_directory"
        );
        assert!(!follower.has_changed().unwrap(), "refusals change nothing");
        assert!(!file.exists(), "refusals remember nothing");

        let roundabout = a.join("..").join("b");
        let (switched, changed) = active.switch(roundabout.to_str().unwrap()).unwrap();
        assert!(changed);
        assert_eq!(switched.directory, b.canonicalize().unwrap());
        assert_eq!(switched.name, "b");
        assert!(follower.has_changed().unwrap());
        assert_eq!(follower.borrow_and_update().directory, switched.directory);
        assert_eq!(
            remembered(&file).unwrap().as_deref(),
            Some(switched.directory.as_path())
        );
        let (_, changed) = active.switch(b.to_str().unwrap()).unwrap();
        assert!(!changed, "the active one again is no change");
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_in_place_of_the_remembered_choice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("workspace.json");
        let elsewhere = tmp.path().join("elsewhere.json");
        std::fs::write(&elsewhere, r#"{"directory":"/"}"#).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        let err = resolve_at_start(None, &file).unwrap_err();
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
    }
}
