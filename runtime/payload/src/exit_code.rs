//! The exit codes of every openwork binary, in one table, so that a script or desktop app
//! can tell "damaged download" from "disk full" from "offline" without parsing text. The
//! runtime, the packager and the signer share it; docs/RUNTIME.md and docs/PACKAGER.md list it.

use crate::error::ErrorKind;

/// Documented process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// An unexpected internal error.
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// No payload: not embedded (or the file is truncated), no bundle.
    NoPayload = 3,
    /// Damaged or tampered payload, manifest, trailer, runtime directory or download.
    Integrity = 4,
    /// The payload needs a newer reader.
    NewerFormat = 5,
    /// An archive entry that must never be extracted.
    UnsafeArchive = 6,
    /// File system failure: disk full, file size limit, permissions.
    Io = 7,
    /// Another process held the runtime lock for longer than the timeout (runtime).
    LockTimeout = 8,
    /// Wrong executable format or architecture, or a payload for another target.
    WrongTarget = 9,
    /// A refused input file: symlink, not a regular file, bad constants (packager).
    BadInput = 10,
    /// Network or registry failure, or offline with a cold cache (packager).
    Network = 11,
    /// The server could not get opencode healthy: it kept failing until the crash-loop
    /// limit (server).
    SidecarFailed = 12,
    /// The server's address could not be bound: port in use, or not a local address
    /// (server).
    AddressUnavailable = 13,
    /// Signing credentials cannot be used: a missing secret (when the policy says fail),
    /// a wrong password, a key that is not the certificate's, an unsupported key type
    /// (signer, packager).
    Credentials = 14,
    /// A file or directory the server would trust is not the user's own: the data dir, a
    /// runtime dir, a token file or a sidecar record owned by another user, writable by group
    /// or others, or a symbolic link where none may be (server).
    Untrusted = 15,
    /// Plain HTTP was asked for on an address other machines can reach, or the TLS
    /// certificate or key cannot be used (server).
    InsecureTransport = 16,
    /// What answers at the address a local command was given (`server.json`) could not
    /// prove it is the server that wrote it: a stale record whose port another program
    /// holds, or an impostor. Nothing was sent to it (server).
    UnverifiedServer = 17,
}

impl ExitCode {
    /// Every code, in numeric order: the table the docs mirror (a test in
    /// `tests/tests/docs.rs` compares them).
    pub const ALL: &[ExitCode] = &[
        ExitCode::Ok,
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::NoPayload,
        ExitCode::Integrity,
        ExitCode::NewerFormat,
        ExitCode::UnsafeArchive,
        ExitCode::Io,
        ExitCode::LockTimeout,
        ExitCode::WrongTarget,
        ExitCode::BadInput,
        ExitCode::Network,
        ExitCode::SidecarFailed,
        ExitCode::AddressUnavailable,
        ExitCode::Credentials,
        ExitCode::Untrusted,
        ExitCode::InsecureTransport,
        ExitCode::UnverifiedServer,
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Its name in the docs' tables, where each row's meaning starts with it.
    pub fn name(self) -> &'static str {
        match self {
            ExitCode::Ok => "success",
            ExitCode::Failure => "unexpected internal error",
            ExitCode::Usage => "bad command line",
            ExitCode::NoPayload => "no payload",
            ExitCode::Integrity => "integrity",
            ExitCode::NewerFormat => "newer format",
            ExitCode::UnsafeArchive => "unsafe archive entry",
            ExitCode::Io => "file system",
            ExitCode::LockTimeout => "lock timeout",
            ExitCode::WrongTarget => "wrong target",
            ExitCode::BadInput => "bad input",
            ExitCode::Network => "network",
            ExitCode::SidecarFailed => "sidecar failed",
            ExitCode::AddressUnavailable => "address unavailable",
            ExitCode::Credentials => "credentials",
            ExitCode::Untrusted => "untrusted files",
            ExitCode::InsecureTransport => "insecure transport",
            ExitCode::UnverifiedServer => "unverified server",
        }
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
