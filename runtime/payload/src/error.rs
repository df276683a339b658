//! Errors of the payload format. Each says what is wrong and what to do about it; the
//! binaries map [`ErrorKind`] to their documented exit codes.

use std::io;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reading or writing a payload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The executable carries no payload region at all.
    #[error(
        "no embedded payload found ({detail}); this executable was not packed by openwork-packager, the file is truncated (an incomplete download?), or the payload was stripped"
    )]
    NoPayload {
        /// Where the search stopped.
        detail: String,
    },
    /// The payload was written by a newer, incompatible packager.
    #[error(
        "payload format {found_major}.{found_minor} is newer than this reader supports (format {supported_major}.x); use a newer openwork-server-v2 / openwork-packager"
    )]
    NewerFormat {
        /// Major version found in the trailer.
        found_major: u16,
        /// Minor version found in the trailer.
        found_minor: u16,
        /// Major version this crate reads.
        supported_major: u16,
    },
    /// A structure is damaged: truncated, out of bounds, or internally inconsistent.
    #[error(
        "the {what} is corrupt: {detail}; the artifact is damaged or was modified, download or package it again"
    )]
    Corrupt {
        /// Which part (trailer, manifest, payload, archive, executable).
        what: &'static str,
        /// What exactly does not hold.
        detail: String,
    },
    /// Bytes do not hash to what the trailer or manifest promises.
    #[error(
        "checksum mismatch for {what}: expected sha256 {expected}, got {computed}; the artifact or runtime directory is damaged or was modified"
    )]
    ChecksumMismatch {
        /// What was hashed.
        what: String,
        /// Hash the trailer or manifest records.
        expected: String,
        /// Hash of the bytes actually present.
        computed: String,
    },
    /// An archive entry that must never be extracted.
    #[error("refusing unsafe archive entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The entry's name as stored.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// The manifest is not a valid manifest of this format.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// A manifest written by a newer, incompatible packager.
    #[error(
        "manifest version {found} is newer than this reader supports ({supported}); use a newer openwork-server-v2 / openwork-packager"
    )]
    NewerManifest {
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
    /// The input is not an executable this format can live in, or not the expected one.
    #[error("{0}")]
    Executable(String),
    /// An I/O error, with the operation and path it happened on.
    #[error("{context}: {source}")]
    Io {
        /// The operation and path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Coarse classes of [`Error`], one per documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No payload in the executable.
    NoPayload,
    /// Newer format or manifest version.
    NewerFormat,
    /// Damaged or tampered data (corrupt structure or checksum mismatch).
    Integrity,
    /// An archive entry that would escape or is not a plain file named in the manifest.
    UnsafeArchive,
    /// Wrong or unsupported executable.
    Executable,
    /// File system failure (disk full, permissions, …).
    Io,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoPayload { .. } => ErrorKind::NoPayload,
            Error::NewerFormat { .. } | Error::NewerManifest { .. } => ErrorKind::NewerFormat,
            Error::Corrupt { .. } | Error::ChecksumMismatch { .. } | Error::Manifest(_) => {
                ErrorKind::Integrity
            }
            Error::UnsafeEntry { .. } => ErrorKind::UnsafeArchive,
            Error::Executable(_) => ErrorKind::Executable,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}

/// An error and its causes on one line, `a: b: c`, each cause once. HTTP clients keep the
/// useful part in the sources (reqwest's "error sending request" hides "Connection
/// refused"), so the packager's downloads and the signer's time-stamp requests print this.
pub fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
