//! Errors of the runtime.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use openwork_payload::ExitCode;

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while preparing or inspecting a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A payload-format error (locating, validating, extracting).
    #[error(transparent)]
    Payload(#[from] openwork_payload::Error),
    /// The payload or bundle was packed for a different target.
    #[error(
        "this payload was packed for target {found}, but this is openwork-server-v2 for {expected}; download the artifact for your platform"
    )]
    WrongTarget {
        /// Target in the manifest.
        found: String,
        /// This binary's target.
        expected: String,
    },
    /// Another process held the lock for too long.
    #[error(
        "timed out after {waited:?} waiting for the lock {path} (another openwork-server-v2 is extracting the same runtime, or hangs); stop it or raise OPENWORK_SERVER_V2_LOCK_TIMEOUT"
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A runtime directory does not match its manifest.
    #[error(
        "runtime directory {dir} is damaged: {reason}; run `openwork-server-v2 runtime extract` to replace it"
    )]
    Damaged {
        /// The runtime directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// No runtime has been extracted for this payload yet.
    #[error("no runtime has been extracted at {0} yet; run `openwork-server-v2 runtime extract`")]
    NotExtracted(PathBuf),
    /// The disk is full or a file size limit was hit.
    #[error(
        "{context}: no space left (disk full or file size limit); free space under {data_dir} or point OPENWORK_DATA_DIR elsewhere"
    )]
    DiskFull {
        /// What was being written.
        context: String,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// Any other I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// The operation and path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A flag, environment variable or file the user gave is unusable.
    #[error("{0}")]
    BadInput(String),
    /// A combination of flags that is refused (e.g. a public address without
    /// `--remote-access`).
    #[error("{0}")]
    Usage(String),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another --port (0 = any free port)")]
    AddressUnavailable {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// opencode never became healthy (crash loop, or stopped before ready).
    #[error(
        "opencode did not become healthy: {0}; see its log with `--log-format text` output above or under the data dir's logs/"
    )]
    SidecarFailed(String),
    /// A file or directory the server would trust could have been written by someone else
    /// (see [`crate::trust`]).
    #[error("refusing {what} {path}: {problem}; {fix}")]
    Untrusted {
        /// What it is ("the data directory", "the token file", …).
        what: String,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Remote access without TLS, or a TLS certificate or key that cannot be used.
    #[error("{0}")]
    InsecureTransport(String),
    /// What answers at the address `server.json` names could not prove it is the server
    /// that wrote the file; no token was sent to it.
    #[error("{0}")]
    UnverifiedServer(String),
    /// No platform data directory could be determined.
    #[error(
        "cannot determine a data directory for this user; pass --data-dir or set OPENWORK_DATA_DIR"
    )]
    NoDataDir,
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The documented exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Payload(e) => e.kind().into(),
            Error::WrongTarget { .. } => ExitCode::WrongTarget,
            Error::LockTimeout { .. } => ExitCode::LockTimeout,
            Error::Damaged { .. } | Error::NotExtracted(_) => ExitCode::Integrity,
            Error::DiskFull { .. } | Error::Io { .. } | Error::NoDataDir => ExitCode::Io,
            Error::BadInput(_) => ExitCode::BadInput,
            Error::Usage(_) => ExitCode::Usage,
            Error::AddressUnavailable { .. } => ExitCode::AddressUnavailable,
            Error::SidecarFailed(_) => ExitCode::SidecarFailed,
            Error::Untrusted { .. } => ExitCode::Untrusted,
            Error::InsecureTransport(_) => ExitCode::InsecureTransport,
            Error::UnverifiedServer(_) => ExitCode::UnverifiedServer,
        }
    }
}

/// Whether an I/O error means "no room": ENOSPC, EDQUOT, or EFBIG from RLIMIT_FSIZE.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}
