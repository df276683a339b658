//! Errors of the packager's library, each mapped to a documented exit code.

use std::path::PathBuf;

pub use openwork_payload::ExitCode;

/// Result with the packager's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while packing or inspecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A payload-format error.
    #[error(transparent)]
    Payload(#[from] openwork_payload::Error),
    /// An input file that must not be used as it is.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why it is refused and what to do.
        reason: String,
    },
    /// A bad combination of arguments.
    #[error("{0}")]
    Usage(String),
    /// A committed record (the lock) no longer matches what it records (`lock --check`).
    #[error("{0}")]
    Stale(String),
    /// An I/O error (fs-err errors name their path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Fetching a sidecar failed.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// Signing or verifying a signature failed. Boxed: the signer's error carries its
    /// facts as fields, and every `Result` here would otherwise carry their size.
    #[error(transparent)]
    Sign(Box<openwork_signer::Error>),
    /// Writing or reading the update repository (`update-repo`).
    #[error(transparent)]
    Update(Box<crate::update::UpdateError>),
}

impl From<crate::update::UpdateError> for Error {
    fn from(error: crate::update::UpdateError) -> Self {
        Error::Update(Box::new(error))
    }
}

impl From<openwork_signer::Error> for Error {
    fn from(error: openwork_signer::Error) -> Self {
        Error::Sign(Box::new(error))
    }
}

impl From<crate::input_file::InputFileError> for Error {
    fn from(error: crate::input_file::InputFileError) -> Self {
        use crate::input_file::InputFileError;
        match error {
            InputFileError::Io(e) => Error::Io(e),
            InputFileError::Invalid { path, reason } => Error::Input { path, reason },
        }
    }
}

impl Error {
    /// The documented exit code.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Payload(e) => e.kind().into(),
            Error::Input { .. } => ExitCode::BadInput,
            Error::Usage(_) => ExitCode::Usage,
            Error::Stale(_) => ExitCode::Integrity,
            Error::Io(_) => ExitCode::Io,
            Error::Fetch(e) => e.exit_code(),
            Error::Sign(e) => e.exit_code(),
            Error::Update(e) => e.exit_code(),
        }
    }
}
