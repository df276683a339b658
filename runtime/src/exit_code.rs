//! The process exit codes, documented in docs/RUNTIME.md. One per class of failure, so that
//! a desktop app or script can tell "damaged download" from "disk full" without parsing text.

use openwork_payload::ErrorKind;

/// Exit codes of `openwork-server-v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// An unexpected internal error.
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// No payload: not embedded, no bundle directory.
    NoPayload = 3,
    /// Damaged or tampered payload, manifest, trailer or runtime directory.
    Integrity = 4,
    /// The payload needs a newer openwork-server-v2.
    NewerFormat = 5,
    /// The archive holds an entry that must never be extracted.
    UnsafeArchive = 6,
    /// File system failure: disk full, file size limit, permissions.
    Io = 7,
    /// Another process held the runtime lock for longer than the timeout.
    LockTimeout = 8,
    /// The payload was packed for another target, or this is not a usable executable.
    WrongTarget = 9,
}

impl ExitCode {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ErrorKind> for ExitCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NoPayload => ExitCode::NoPayload,
            ErrorKind::NewerFormat => ExitCode::NewerFormat,
            ErrorKind::Integrity => ExitCode::Integrity,
            ErrorKind::UnsafeArchive => ExitCode::UnsafeArchive,
            ErrorKind::Executable => ExitCode::WrongTarget,
            ErrorKind::Io => ExitCode::Io,
        }
    }
}
