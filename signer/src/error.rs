//! Errors of the signer. Each names what it was working on; `main.rs` maps them to exit
//! codes.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while signing or inspecting a file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed (the message names the file: fs-err).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input is not a kind of file this operation handles.
    #[error("{0}")]
    Unsupported(String),
    /// An executable whose layout would lose data or hide data from verification when
    /// signed (Mach-O bytes after `__LINKEDIT`, PE bytes outside every section).
    #[error("bad executable layout: {0}")]
    Layout(String),
    /// A signature that does not match the file it is in.
    #[error("signature verification failed: {0}")]
    Verification(String),
    /// A key, certificate or secret that cannot be used: missing, unreadable, a wrong
    /// password, a key that is not the certificate's, an unsupported key type.
    #[error("signing credentials: {0}")]
    Credentials(String),
    /// The signing configuration is wrong (names what and where).
    #[error("signing configuration: {0}")]
    Config(String),
    /// A time-stamp authority or the notary service could not be reached or refused.
    #[error("{0}")]
    Network(String),
    /// An external signing command failed (its status and output are in the message).
    #[error("{0}")]
    SigningTool(String),
    /// apple-codesign refused or failed. Boxed: its error type is large, and every
    /// `Result` of this crate would otherwise carry its size.
    #[error("apple-codesign failed: {0}")]
    Codesign(Box<apple_codesign::AppleCodesignError>),
}

impl Error {
    /// The documented exit code (the table shared by every openwork binary).
    pub fn exit_code(&self) -> openwork_payload::ExitCode {
        use openwork_payload::ExitCode;
        match self {
            Error::Codesign(_) | Error::SigningTool(_) => ExitCode::Failure,
            Error::Io(_) => ExitCode::Io,
            Error::Unsupported(_) => ExitCode::WrongTarget,
            Error::Layout(_) | Error::Verification(_) => ExitCode::Integrity,
            Error::Credentials(_) => ExitCode::Credentials,
            Error::Config(_) => ExitCode::BadInput,
            Error::Network(_) => ExitCode::Network,
        }
    }
}

impl From<apple_codesign::AppleCodesignError> for Error {
    fn from(error: apple_codesign::AppleCodesignError) -> Self {
        Error::Codesign(Box::new(error))
    }
}
