//! Signatures that do not hold, grouped by what the check was about.

use std::path::PathBuf;

use openwork_payload::container::ExecutableFormat;

use super::BoxError;

/// A signature that does not match its file, or does not satisfy the policy asked for.
///
/// The groups follow the order of a verification: is there a signature, can it be read,
/// is its structure the format's, does it cover the whole file, does the file still hash
/// to what was signed, does the signature verify, is the certificate fit and trusted, is
/// the time stamp, does the signature satisfy the policy, and (for what Apple checks)
/// does the notary service accept it.
#[derive(Debug, thiserror::Error)]
pub enum VerificationError {
    /// The file carries no signature at all.
    #[error("{}", match .format {
        ExecutableFormat::Elf => "an ELF file has no signature to verify; check it against SHA256SUMS",
        ExecutableFormat::Pe => "the file is not signed (its Security directory names no certificate table)",
        ExecutableFormat::MachO => "the file has no code signature",
    })]
    NotSigned {
        /// The file's format.
        format: ExecutableFormat,
    },
    /// A part of the signature cannot be decoded (or encoded again to be checked).
    #[error("{what} is unreadable: {source}")]
    Unreadable {
        /// The part (`the CMS signature`, `the time-stamp token`, `certificate CN=…`).
        what: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// A part the signature must have is not there.
    #[error("the signature has no {what}")]
    Missing {
        /// The part (`code directory`, `signed attributes`).
        what: &'static str,
    },
    /// A part of the signature is cut short.
    #[error("{what} is truncated")]
    Truncated {
        /// The part.
        what: &'static str,
    },
    /// A part of the signature is not what the format prescribes.
    #[error("{what} is {found}; {expected}")]
    Structure {
        /// The part (`the SignedData's version`, `the number of signers`).
        what: &'static str,
        /// What the file has.
        found: String,
        /// What the format requires.
        expected: &'static str,
    },
    /// Bytes of the file that the signature does not cover.
    #[error(transparent)]
    Coverage(#[from] CoverageError),
    /// The file no longer hashes to what was signed: it changed after signing.
    #[error(
        "the file's digest {computed} differs from the signed digest {signed}: the file was \
         changed after it was signed"
    )]
    DigestMismatch {
        /// The digest of the file as it is (hex).
        computed: String,
        /// The digest the signature holds (hex).
        signed: String,
    },
    /// Mach-O page or special-slot hashes that do not match (apple-codesign's verifier).
    #[error("{}", problems.join("; "))]
    CodeHashes {
        /// apple-codesign's problems, one per hash.
        problems: Vec<String>,
    },
    /// The signed attributes are not over the signed content.
    #[error("{what}{}", suffix(source.as_ref()))]
    ContentDigest {
        /// Which binding does not hold.
        what: &'static str,
        /// The CMS library's error, where it gave one.
        #[source]
        source: Option<BoxError>,
    },
    /// The signature value does not verify with the signer's public key.
    #[error("{what} does not verify{}{}",
        key.as_ref().map(|k| format!(" with the public key of {k}")).unwrap_or_default(),
        suffix(source.as_ref()))]
    Signature {
        /// Whose signature.
        what: &'static str,
        /// The subject of the certificate whose key was used, where the message names it.
        key: Option<String>,
        /// The CMS library's error, where it gave one.
        #[source]
        source: Option<BoxError>,
    },
    /// The signer's certificate: absent, not fit for code signing, or not trusted.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// A time-stamp token that does not hold: its structure, its TSA's signature, the ESS
    /// binding to the TSA certificate, or that certificate's usage, validity and chain.
    #[error("{problem}")]
    Timestamp {
        /// What does not hold (the token checks name the field).
        problem: String,
    },
    /// The time stamp of an Authenticode signature does not hold.
    #[error("the time-stamp: {0}")]
    InTimestamp(#[source] Box<VerificationError>),
    /// A valid signature that the policy does not accept.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The embedded payload does not verify.
    #[error("the embedded payload: {0}")]
    Payload(#[source] openwork_payload::Error),
    /// Apple's notary service (or the fake that applies its rules) rejected a submission.
    #[error("notarization of {} was {status} (submission {id}): {issues}", path.display())]
    Notarization {
        /// The file submitted.
        path: PathBuf,
        /// The verdict (`Invalid`, `Rejected`).
        status: String,
        /// The submission ID.
        id: String,
        /// What Apple's log says, or why the log could not be read.
        issues: String,
    },
    /// What Apple would reject, found before uploading.
    #[error("{} would be rejected by Apple's notary service: {source}", path.display())]
    WouldBeRejected {
        /// The file.
        path: PathBuf,
        /// What fails.
        #[source]
        source: Box<VerificationError>,
    },
}

/// Bytes of the file outside what the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    /// The Mach-O code directory stops hashing before the signature starts.
    #[error(
        "the code directory hashes the first {code_limit} bytes but the signature starts at byte {signature_start}: the bytes in between are not covered"
    )]
    CodeLimit {
        /// `codeLimit`.
        code_limit: u64,
        /// Where `LC_CODE_SIGNATURE`'s range starts.
        signature_start: u64,
    },
    /// The Mach-O signature's claimed size exceeds its `LC_CODE_SIGNATURE` range.
    #[error("the signature blob claims {claimed} bytes but LC_CODE_SIGNATURE holds {size}")]
    BlobSize {
        /// The SuperBlob's length field.
        claimed: u64,
        /// The load command's size.
        size: u64,
    },
    /// Non-zero bytes in the Mach-O signature's padding.
    #[error("byte {at} after the signature blob is not padding: data there is not signed")]
    NotPadding {
        /// The offset of the first such byte in the file.
        at: u64,
    },
    /// The PE certificate table runs past the end of the file.
    #[error(
        "the certificate table ({start:#x}..{end:#x}) extends past the end of the {len}-byte file (truncated?)"
    )]
    TablePastEnd {
        /// Where the table starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// The file's length.
        len: usize,
    },
    /// The PE certificate table overlaps the hashed headers or sections.
    #[error(
        "the certificate table starts at {start:#x}, inside the headers or sections (which end at {covered:#x})"
    )]
    TableInsideImage {
        /// Where the table starts.
        start: usize,
        /// Where the headers and sections end.
        covered: usize,
    },
    /// Bytes after the PE certificate table.
    #[error(
        "{count} bytes follow the certificate table, which signers put last: the file was changed after it was signed"
    )]
    AfterTable {
        /// How many.
        count: usize,
    },
    /// A PE certificate table not at an 8-byte boundary.
    #[error(
        "the certificate table starts at {start:#x}, which is not 8-byte aligned as the PE format requires"
    )]
    TableMisaligned {
        /// Where the table starts.
        start: usize,
    },
    /// The PE certificate table is shorter than its one entry's header.
    #[error("the certificate table is {len} bytes, too short for a WIN_CERTIFICATE")]
    TableTooShort {
        /// Its length.
        len: usize,
    },
    /// The PE `WIN_CERTIFICATE` length disagrees with the table's.
    #[error(
        "the WIN_CERTIFICATE says it is {claimed} bytes but the certificate table is {len}; exactly one signature entry was expected"
    )]
    EntryLength {
        /// `dwLength`.
        claimed: usize,
        /// The table's length.
        len: usize,
    },
    /// Bytes inside the `WIN_CERTIFICATE` after the signature that are not padding.
    #[error("{count} bytes that are not padding follow the signature inside its WIN_CERTIFICATE")]
    AfterSignature {
        /// How many.
        count: usize,
    },
}

/// The signer's certificate does not qualify.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The certificate that signed is not among those the signature carries.
    #[error("{signer} is not embedded in the signature")]
    NotEmbedded {
        /// The signer's certificate, as the signature names it.
        signer: String,
    },
    /// Its extended key usage excludes what it was used for.
    #[error("{certificate} is not for {usage} (extended key usage{detail})")]
    Usage {
        /// `certificate <description>` or `the signer's certificate <subject>`.
        certificate: String,
        /// `code signing`.
        usage: &'static str,
        /// `: its extended key usage lacks codeSigning`, or empty.
        detail: &'static str,
    },
    /// Not a Developer ID Application certificate, as Apple's notarization requires.
    #[error(
        "{certificate} is not a Developer ID Application certificate; Apple notarizes only files \
         signed with one (Certificates, Identifiers & Profiles → Developer ID Application)"
    )]
    NotDeveloperId {
        /// The certificate, described.
        certificate: String,
    },
    /// The chain to a trusted root does not hold.
    #[error("{}", match .source {
        ChainError::Untrusted { .. } => format!("{certificate} does not chain to {anchor}: {source}"),
        _ => format!("the chain of {certificate}: {source}"),
    })]
    Chain {
        /// The signer's certificate (`the signing certificate CN=…`).
        certificate: String,
        /// What it had to reach (`a trusted root`, `a trusted CA`).
        anchor: &'static str,
        /// Where the chain breaks.
        #[source]
        source: ChainError,
    },
}

/// A signature that verifies but does not satisfy the policy asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Ad-hoc where a certificate is required.
    #[error("the signature is ad-hoc (no certificate), but a certificate signature is required")]
    AdHoc,
    /// No secure time stamp where one is required.
    #[error("{}", if *.any_format {
        "the signature has no time stamp; it stops verifying when the certificate expires (sign with a time-stamp authority)"
    } else {
        "the signature has no secure timestamp; sign with a time-stamp authority"
    })]
    NoTimestamp {
        /// Said of a signature of any format (`verify`), rather than of a Mach-O's.
        any_format: bool,
    },
    /// The hardened runtime flag is missing.
    #[error("the hardened runtime is not enabled in the signature's flags")]
    NoHardenedRuntime,
    /// The entitlements are not the expected ones.
    #[error(
        "the entitlements differ from the expected ones: signed with {}",
        found.as_deref().filter(|f| !f.is_empty()).unwrap_or("none")
    )]
    Entitlements {
        /// What the signature carries, if anything.
        found: Option<String>,
    },
    /// Alternative code directories (SHA-1 beside SHA-256), which this verifier does not
    /// check.
    #[error(
        "the signature has alternative code directories, which this verifier does not check; sign with SHA-256 only"
    )]
    AlternativeCodeDirectories,
}

/// `: <error>`, or nothing.
fn suffix(source: Option<&BoxError>) -> String {
    source.map(|s| format!(": {s}")).unwrap_or_default()
}

/// Why a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// A certificate on the way was not valid at the time checked.
    NotValid {
        /// The certificate, described.
        certificate: String,
        /// Its validity, as Unix seconds.
        not_before: i64,
        /// Its validity, as Unix seconds.
        not_after: i64,
    },
    /// No root was reached: the described certificate's issuer is neither a root nor a CA
    /// certificate among those the signature carries (or its signature does not verify).
    Untrusted {
        /// The certificate whose issuer was not found.
        certificate: String,
    },
    /// More certificates than are followed.
    TooLong {
        /// How many are followed.
        limit: usize,
    },
}

impl std::error::Error for ChainError {}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::NotValid {
                certificate,
                not_before,
                not_after,
            } => write!(
                f,
                "the certificate {certificate} is not valid at the signing time (valid from \
                 {not_before} to {not_after}, Unix seconds)"
            ),
            ChainError::Untrusted { certificate } => write!(
                f,
                "the issuer of {certificate} is neither a trusted root nor a CA certificate \
                 in the signature"
            ),
            ChainError::TooLong { limit } => {
                write!(f, "the chain is longer than {limit} certificates")
            }
        }
    }
}
