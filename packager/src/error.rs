//! Errors of the packager's library, each mapped to a documented exit code.

use std::path::PathBuf;

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
    /// An I/O error (fs-err errors name their path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Fetching a sidecar failed.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}

/// The packager's exit codes (docs/PACKAGER.md). Codes shared with the runtime mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Unexpected failure.
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// The artifact carries no payload.
    NoPayload = 3,
    /// Damaged or tampered artifact, or a checksum mismatch of a download.
    Integrity = 4,
    /// The artifact needs a newer packager.
    NewerFormat = 5,
    /// The artifact's archive holds an entry that must never be extracted.
    UnsafeArchive = 6,
    /// File system failure.
    Io = 7,
    /// Wrong executable format or architecture for the target.
    WrongTarget = 9,
    /// An input file that is refused (symlink, not a regular file, unknown sidecar).
    BadInput = 10,
    /// Network or registry failure.
    Network = 11,
}

impl Error {
    /// The documented exit code.
    pub fn exit_code(&self) -> ExitCode {
        use openwork_payload::ErrorKind;
        match self {
            Error::Payload(e) => match e.kind() {
                ErrorKind::NoPayload => ExitCode::NoPayload,
                ErrorKind::NewerFormat => ExitCode::NewerFormat,
                ErrorKind::Integrity => ExitCode::Integrity,
                ErrorKind::UnsafeArchive => ExitCode::UnsafeArchive,
                ErrorKind::Executable => ExitCode::WrongTarget,
                ErrorKind::Io => ExitCode::Io,
            },
            Error::Input { .. } => ExitCode::BadInput,
            Error::Usage(_) => ExitCode::Usage,
            Error::Io(_) => ExitCode::Io,
            Error::Fetch(e) => crate::fetch::exit_code(e),
        }
    }
}
