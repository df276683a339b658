//! Reading a file the packager is given in place of its compiled-in copy (`constants.json`,
//! `inputs.lock.json`).
//!
//! A leaf module with its own error: [`crate::error::Error`] takes [`InputFileError`] in
//! (as its `Io` and `Input` variants), so [`crate::constants`] and [`crate::lock`], which
//! `fetch` reads, need nothing from the crate's error type, whose `Fetch` variant needs
//! `fetch`: the dependencies point one way.

use std::path::{Path, PathBuf};

/// Why a given input file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    /// It cannot be read (fs-err names the file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It is not what it must be.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why it is refused and what to do.
        reason: String,
    },
}

/// Reads `path` and parses it with `parse`, whose error names what is wrong.
pub(crate) fn read<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, InputFileError> {
    let text = fs_err::read_to_string(path)?;
    parse(&text).map_err(|reason| InputFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    })
}
