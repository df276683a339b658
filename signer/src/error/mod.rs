//! Errors of the signer. Each names what it was working on; `main.rs` maps them to exit
//! codes through [`Error::exit_code`].
//!
//! One variant of [`Error`] per exit code class, each holding an enum of its own concern
//! with the facts as typed fields (paths, counts, what was expected and what was found)
//! and the underlying error as its `source`:
//!
//! | variant | concern | exit code |
//! |---|---|---|
//! | [`Error::Unsupported`] | [`UnsupportedError`]: not a file (or a signature) this signer handles | wrong target |
//! | [`Error::Layout`] | [`LayoutError`]: a Mach-O whose layout signing would lose or hide bytes of | integrity |
//! | [`Error::Verification`] | [`VerificationError`]: a signature that does not hold, grouped by what is checked | integrity |
//! | [`Error::Credentials`] | [`CredentialsError`]: keys, certificates, secrets and the services that hold them | credentials |
//! | [`Error::Config`] | [`ConfigError`]: the signing configuration and command line | bad input |
//! | [`Error::Network`] | [`NetworkError`]: a time-stamp authority or signing/notary service not reached | network |
//! | [`Error::SigningTool`] | [`SigningToolError`]: an external signing command failed | failure |
//! | [`Error::Codesign`] | apple-codesign's own error | failure |
//! | [`Error::Io`] | a file (fs-err names it) | I/O |

mod config;
mod credentials;
mod verification;

use std::path::PathBuf;

pub use config::ConfigError;
pub use credentials::{CredentialsError, Pkcs11Error, Pkcs12Error, ServiceError};
pub use verification::{
    CertificateError, ChainError, CoverageError, PolicyError, VerificationError,
};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any underlying error kept as a `source` (the DER, CMS, zip, PKCS#11 and HTTP crates each
/// have their own type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong while signing or inspecting a file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed (the message names the file: fs-err).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input is not a kind of file this operation handles.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedError),
    /// An executable whose layout would lose data or hide data from verification when
    /// signed (Mach-O bytes after `__LINKEDIT`).
    #[error("bad executable layout: {0}")]
    Layout(#[from] LayoutError),
    /// A signature that does not match the file it is in.
    #[error("signature verification failed: {0}")]
    Verification(#[from] VerificationError),
    /// A key, certificate or secret that cannot be used: missing, unreadable, a wrong
    /// password, a key that is not the certificate's, an unsupported key type.
    #[error("signing credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The signing configuration is wrong (names what and where).
    #[error("signing configuration: {0}")]
    Config(#[from] ConfigError),
    /// A time-stamp authority or the notary service could not be reached or refused.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// An external signing command failed (its status and output are in the message).
    #[error(transparent)]
    SigningTool(#[from] SigningToolError),
    /// apple-codesign refused or failed. Boxed: its error type is large, and every
    /// `Result` of this crate would otherwise carry its size.
    #[error("apple-codesign failed: {0}")]
    Codesign(#[source] Box<apple_codesign::AppleCodesignError>),
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

/// `From` a concern's nested error into [`Error`], through the variant that holds it.
macro_rules! nested_from {
    ($($inner:ty => $outer:ident),* $(,)?) => {$(
        impl From<$inner> for Error {
            fn from(error: $inner) -> Self {
                Error::from($outer::from(error))
            }
        }
    )*};
}

nested_from! {
    CoverageError => VerificationError,
    CertificateError => VerificationError,
    PolicyError => VerificationError,
    Pkcs12Error => CredentialsError,
    Pkcs11Error => CredentialsError,
    ServiceError => CredentialsError,
}

/// A file, or a signature in it, that this signer does not handle.
#[derive(Debug, thiserror::Error)]
pub enum UnsupportedError {
    /// Not an executable of a format the payload crate knows (ELF, PE, Mach-O).
    #[error(transparent)]
    NotExecutable(#[from] openwork_payload::Error),
    /// A Mach-O this signer does not sign: 32-bit, universal, or unparsable.
    #[error("{}", match .kind {
        MachOKind::ThirtyTwoBit => "32-bit Mach-O files are not supported",
        MachOKind::Fat => "universal (fat) Mach-O files are not supported: sign each architecture's thin file",
    })]
    MachO {
        /// Which kind.
        kind: MachOKind,
    },
    /// goblin cannot parse the file as Mach-O.
    #[error("not a Mach-O file goblin can parse: {source}")]
    NotMachO {
        /// goblin's error.
        #[source]
        source: goblin::error::Error,
    },
    /// A PE file Authenticode cannot sign or check here.
    #[error("{0}")]
    Pe(PeProblem),
    /// A PE file whose structure does not hold together.
    #[error("not a well-formed PE file: {problem}")]
    MalformedPe {
        /// What does not hold (offsets, sizes).
        problem: String,
    },
    /// The PE headers cannot be read at all.
    #[error("unreadable PE headers: {source}")]
    PeHeaders {
        /// goblin's error.
        #[source]
        source: goblin::error::Error,
    },
    /// The signed file would exceed what a PE certificate table can address.
    #[error(
        "the signed file would be {size} bytes; the PE format cannot locate a certificate \
         table beyond 4 GiB"
    )]
    PeTooLarge {
        /// The size the signed file would have.
        size: usize,
    },
    /// An Authenticode signature using an algorithm this verifier does not check.
    #[error("{what} uses {kind} algorithm {algorithm}; {supported}")]
    Algorithm {
        /// Who uses it (the file's digest, the signer).
        what: &'static str,
        /// Digest, key or signature.
        kind: &'static str,
        /// The algorithm found (an OID, or a key and signature algorithm).
        algorithm: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A `WIN_CERTIFICATE` of another revision or type than PKCS#7 SignedData 2.0.
    #[error(
        "the certificate table holds a WIN_CERTIFICATE of revision {revision:#06x} and \
         type {kind:#06x}; only revision 2.0 PKCS#7 SignedData (0x0200, 0x0002) is supported"
    )]
    WinCertificate {
        /// `wRevision`.
        revision: u16,
        /// `wCertificateType`.
        kind: u16,
    },
    /// The signer is named by subject key identifier.
    #[error(
        "the signer is identified by subject key identifier; Authenticode uses issuer and \
         serial number"
    )]
    SignerIdentifier,
    /// The signature cannot be checked with the signer's key at all.
    #[error("cannot verify the signer's signature: {source}")]
    VerifyingKey {
        /// The key's error.
        #[source]
        source: BoxError,
    },
    /// The Authenticode structures cannot be encoded.
    #[error("cannot encode the Authenticode signature: {source}")]
    Encoding {
        /// The DER encoder's error.
        #[from]
        source: der::Error,
    },
    /// A path without a file name where one is needed (a code signing identifier, a zip
    /// entry).
    #[error("{} has no usable file name", path.display())]
    NoFileName {
        /// The path.
        path: PathBuf,
    },
    /// A file the notary service does not take.
    #[error(
        "{} is not a Mach-O executable, a zip, a dmg or a pkg; the notary service takes only those",
        path.display()
    )]
    NotNotarizable {
        /// The file.
        path: PathBuf,
    },
    /// `xcrun notarytool` cannot be run (not macOS, no Xcode).
    #[error("cannot run `{command}` ({source}): notarization needs Xcode's notarytool, on macOS")]
    NoNotarytool {
        /// The command line, secrets left out.
        command: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of Mach-O refused by [`UnsupportedError::MachO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachOKind {
    /// A 32-bit file.
    ThirtyTwoBit,
    /// A universal (fat) file.
    Fat,
}

/// A PE file Authenticode cannot sign or check here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeProblem {
    /// An object file.
    #[error(
        "the PE file has no optional header (an object file, not an executable); only \
         executables and DLLs can be Authenticode-signed"
    )]
    NoOptionalHeader,
    /// Too few data directories.
    #[error(
        "the PE optional header has no Security data directory entry, so there is nowhere to \
         record a signature; relink with the default 16 data directories"
    )]
    NoSecurityDirectory,
    /// A gap or overlap between the headers and the sections' raw data.
    #[error(
        "the PE file's headers and sections are not contiguous (raw data at {found:#x} where \
         {expected:#x} was expected): Authenticode would leave a gap unhashed or hash bytes \
         twice, so this signer refuses such files"
    )]
    NotContiguous {
        /// Where the next raw data starts.
        found: usize,
        /// Where the covered bytes end.
        expected: usize,
    },
}

/// A thin Mach-O laid out so that signing would drop bytes or leave them unverified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// No `__LINKEDIT` segment.
    #[error("there is no __LINKEDIT segment")]
    NoLinkedit,
    /// A segment that is not `__LINKEDIT` ends after `__LINKEDIT` starts.
    #[error("segment {segment} ends after __LINKEDIT starts; __LINKEDIT must be the last segment")]
    LinkeditNotLast {
        /// The segment's name.
        segment: String,
    },
    /// Bytes after `__LINKEDIT`: signing would drop them.
    #[error(
        "{count} bytes follow the end of __LINKEDIT; signing would drop them and signature verification would not cover them"
    )]
    AfterLinkedit {
        /// How many.
        count: u64,
    },
    /// The file ends before `__LINKEDIT` does.
    #[error(
        "__LINKEDIT ends at byte {linkedit_end} but the file has only {len} bytes (truncated?)"
    )]
    Truncated {
        /// Where `__LINKEDIT` ends.
        linkedit_end: u64,
        /// The file's length.
        len: u64,
    },
    /// The code signature is not the last thing in `__LINKEDIT`.
    #[error(
        "the code signature ends at byte {signature_end} but __LINKEDIT ends at byte {linkedit_end}; the signature must be last"
    )]
    SignatureNotLast {
        /// Where `LC_CODE_SIGNATURE`'s range ends.
        signature_end: u64,
        /// Where `__LINKEDIT` ends.
        linkedit_end: u64,
    },
    /// `LC_CODE_SIGNATURE` names bytes the file does not have.
    #[error("the code signature extends past the end of the file")]
    SignaturePastEnd,
}

/// A time-stamp authority, signing service or notary service that could not be reached, or
/// answered with something unusable.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The HTTP client cannot be built (TLS roots, proxy settings).
    #[error("cannot set up the HTTP client: {source}")]
    Client {
        /// reqwest's error.
        #[source]
        source: BoxError,
    },
    /// Every configured time-stamp authority failed.
    #[error(
        "no time-stamp authority gave a time stamp: {}. Check the time-stamp URLs and that \
         this machine can reach them (proxies come from HTTPS_PROXY/HTTP_PROXY)",
        failures.join("; ")
    )]
    NoTimestamp {
        /// Per URL: what went wrong and after how many attempts.
        failures: Vec<String>,
    },
    /// A time-stamp authority answered with a token that is not DER.
    #[error("the time-stamp authority answered with a token that is not DER: {source}")]
    TimestampToken {
        /// The DER decoder's error.
        #[source]
        source: der::Error,
    },
    /// apple-codesign's time-stamp request failed.
    #[error(
        "time-stamping through {url} failed: {source}; check that the authority is reachable (and HTTPS_PROXY / NO_PROXY), or use another one"
    )]
    CodesignTimestamp {
        /// The authority.
        url: String,
        /// apple-codesign's error.
        #[source]
        source: BoxError,
    },
    /// A service could not be reached (the message names it; secrets are redacted).
    #[error("cannot reach {service}: {detail}")]
    Unreachable {
        /// The service.
        service: String,
        /// The transport's error, redacted.
        detail: String,
    },
    /// A service answered with an HTTP error that is not about the credentials.
    #[error("{service} failed (HTTP {status}){at}: {message}{hint}")]
    Status {
        /// The service.
        service: String,
        /// The HTTP status.
        status: u16,
        /// ` at <url>`, or empty.
        at: String,
        /// What the service said.
        message: String,
        /// What to do about it (`; try again later`), or empty.
        hint: &'static str,
    },
    /// A service's answer lacks what the protocol promises.
    #[error("{service} answered {what}")]
    Answer {
        /// The service.
        service: String,
        /// What was wrong with the answer.
        what: String,
    },
    /// An operation did not finish in time.
    #[error("{what} did not finish within {seconds} s")]
    Timeout {
        /// The operation.
        what: String,
        /// The limit.
        seconds: u64,
    },
    /// Apple had not decided about a submission when polling gave up.
    #[error(
        "notarization of {} was still in progress after {seconds} s (submission {id}); Apple \
         may still accept it: `notarytool info {id}` tells",
        path.display()
    )]
    NotarizationPending {
        /// The file submitted.
        path: PathBuf,
        /// How long was waited.
        seconds: u64,
        /// The submission ID.
        id: String,
    },
    /// `notarytool submit` gave no usable answer.
    #[error("`{command}` failed ({status}): {why}; stderr: {stderr}")]
    Notarytool {
        /// The command line, secrets left out.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What was wrong with its output.
        why: String,
        /// The end of its standard error, redacted.
        stderr: String,
    },
}

/// An external signing command that failed.
#[derive(Debug, thiserror::Error)]
pub enum SigningToolError {
    /// It exited unsuccessfully.
    #[error("the signing command \"{program}\" failed ({status}) signing {}{output}", file.display())]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The file it was signing.
        file: PathBuf,
        /// Its output, redacted, as `; stderr: …` (or empty).
        output: String,
    },
    /// It succeeded but did not write `{out}`.
    #[error(
        "the signing command \"{program}\" succeeded but wrote no signed file at {{out}}{output}"
    )]
    NoOutput {
        /// The program.
        program: String,
        /// Its output, redacted, as `; stderr: …` (or empty).
        output: String,
    },
}

#[cfg(test)]
mod tests {
    /// Every `Result` of this crate carries an [`super::Error`]: it stays small (clippy's
    /// `result_large_err` draws the line at 128 bytes).
    #[test]
    fn errors_stay_small() {
        use std::mem::size_of;
        let sizes = [
            ("Error", size_of::<super::Error>()),
            ("VerificationError", size_of::<super::VerificationError>()),
            ("CredentialsError", size_of::<super::CredentialsError>()),
            ("ConfigError", size_of::<super::ConfigError>()),
            ("NetworkError", size_of::<super::NetworkError>()),
            ("UnsupportedError", size_of::<super::UnsupportedError>()),
        ];
        assert!(sizes[0].1 < 128, "{sizes:?}");
    }
}
