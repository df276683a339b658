//! Authenticode signing and verification of PE files, in pure Rust.
//!
//! What is signed is the PE image digest (SHA-256 over the headers without CheckSum and
//! the Security directory entry, the sections in file order, and the overlay up to the
//! certificate table). The payload region lives in that overlay, so the signature covers
//! it; sign after packing, never before.
//!
//! The signature is a PKCS#7 SignedData (built from `cms`/`x509-cert` types) whose
//! content is Microsoft's SpcIndirectDataContent ([`structures`] documents the Microsoft
//! parts), appended to the file as a WIN_CERTIFICATE and recorded in the Security data
//! directory, as signtool and osslsigncode write it. Nothing is delegated to those tools:
//! release signing runs on every host, and the verifier is also what checks artifacts
//! afterwards, so it must be stricter than Windows about where bytes may hide (nothing
//! after the certificate table, no gaps between sections).

mod image;
mod sign;
pub mod structures;
mod verify;

use x509_certificate::CapturedX509Certificate;

use crate::chain::Anchors;
use crate::error::{ConfigError, Error, Result};
use crate::key::SigningIdentity;
use crate::timestamp::TimestampConfig;

/// What signs the signed attributes of an Authenticode signature: a key held here (a
/// [`SigningIdentity`] from a file or a token), or a remote service that signs a digest and
/// answers with the certificate it signed with (Azure Artifact Signing, whose certificates
/// live three days). The attributes do not name the certificate, so they can be built
/// before it is known.
pub trait AttributeSigner {
    /// Who signs, for messages (never key material).
    fn describe(&self) -> String;
    /// Signs `message` (the DER SET OF the signed attributes) with SHA-256.
    fn sign_attributes(&self, message: &[u8]) -> Result<Signature>;
}

/// A signature of the signed attributes and the certificates that vouch for it.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The signature value.
    pub value: Vec<u8>,
    /// How it was made (RSA or ECDSA with SHA-256).
    pub algorithm: x509_certificate::SignatureAlgorithm,
    /// The signing certificate.
    pub certificate: CapturedX509Certificate,
    /// The certificates above it.
    pub chain: Vec<CapturedX509Certificate>,
}

/// What goes into a signature besides the file.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Program name shown by Windows' prompts (SpcSpOpusInfo `programName`).
    pub description: Option<String>,
    /// "More information" URL (SpcSpOpusInfo `moreInfo`); ASCII only.
    pub url: Option<String>,
    /// Where to get an RFC 3161 time-stamp of the signature; `None` signs without one
    /// (the signature then stops verifying when the certificate expires).
    pub timestamp: Option<TimestampConfig>,
}

/// The certificates a verification trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    /// Roots (or intermediates) the signer's certificate must chain to.
    pub code_signing: Vec<CapturedX509Certificate>,
    /// Roots a time-stamp authority's certificate must chain to.
    pub time_stamping: Vec<CapturedX509Certificate>,
    /// Where a list above is empty, trust the top of the chain the signature itself
    /// carries instead (the signer's, or the time-stamp token's): every signature, digest,
    /// usage and validity is still checked, but not who issued the top certificate. For
    /// checking right after signing, where the file must be intact and the roots of a
    /// public TSA are not at hand.
    pub embedded: bool,
}

impl TrustAnchors {
    /// What a chain must end at: `roots`, or, when they are empty and `embedded` is set,
    /// the top of the carried chain.
    pub(crate) fn anchors<'a>(&self, roots: &'a [CapturedX509Certificate]) -> Anchors<'a> {
        if roots.is_empty() && self.embedded {
            Anchors::Carried
        } else {
            Anchors::Roots(roots)
        }
    }

    /// Reads the trusted CA certificates from PEM (any number each) or DER (one each)
    /// data; empty data trusts no CA of that kind.
    pub fn parse(code_signing: &[u8], time_stamping: &[u8]) -> Result<Self> {
        let read = |data: &[u8], what: &str| {
            if data.is_empty() {
                return Ok(Vec::new());
            }
            crate::key::pem::parse_certificates(data).map_err(|error| match error {
                Error::Credentials(source) => ConfigError::Certificates {
                    whose: format!("the trusted {what} CAs"),
                    source: Box::new(source),
                }
                .into(),
                other => other,
            })
        };
        Ok(Self {
            code_signing: read(code_signing, "code-signing")?,
            time_stamping: read(time_stamping, "time-stamping")?,
            embedded: false,
        })
    }
}

/// What a verified signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signer's certificate subject (RFC 4514 string).
    pub signer: String,
    /// The signer's certificate issuer (RFC 4514 string).
    pub issuer: String,
    /// The Authenticode SHA-256 digest of the file, which the signature matches.
    pub digest: [u8; 32],
    /// The verified time-stamp, if the signature has one.
    pub timestamp: Option<Timestamp>,
}

/// A verified RFC 3161 time-stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// When the time-stamp authority saw the signature.
    pub time: std::time::SystemTime,
    /// The time-stamp authority's certificate subject.
    pub authority: String,
}

impl Verified {
    /// The digest in lowercase hex, as reports print it.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// Signs the PE file `pe` and returns the signed file.
///
/// An existing signature is replaced. The file is padded with zeros to a multiple of 8,
/// the signature appended, the Security directory pointed at it and the CheckSum
/// recomputed (always, also where the input had none, as osslsigncode does).
/// With an RSA key the output is the same for the same input and options; ECDSA
/// signatures are randomized.
pub fn sign(pe: &[u8], identity: &SigningIdentity, options: &SignOptions) -> Result<Vec<u8>> {
    sign::sign(pe, identity, options)
}

/// [`sign`] with any [`AttributeSigner`] (a remote signing service).
pub fn sign_with(
    pe: &[u8],
    signer: &dyn AttributeSigner,
    options: &SignOptions,
) -> Result<Vec<u8>> {
    sign::sign(pe, signer, options)
}

/// Verifies the Authenticode signature of `pe` against `trust`.
///
/// Checks the image digest, the signed attributes, the signer's signature, the chain to
/// a trusted CA (each signature, CA constraints, validity at the time-stamp's time or
/// else now, codeSigning usage of the leaf), the time-stamp if there is one, and that
/// the certificate table is 8-aligned and last in the file.
pub fn verify(pe: &[u8], trust: &TrustAnchors) -> Result<Verified> {
    verify::verify(pe, trust)
}

/// The Authenticode SHA-256 digest of `pe`: over the file as it is, up to its
/// certificate table if it is signed.
pub fn digest(pe: &[u8]) -> Result<[u8; 32]> {
    let image = image::PeImage::parse(pe)?;
    Ok(image.digest(pe))
}
