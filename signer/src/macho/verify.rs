//! Verification against a policy ([`MachOPolicy`]): what apple-codesign's verifier checks,
//! and what it does not (coverage, padding, the CMS signature over the code directory,
//! chain, flags, entitlements, timestamp).

use std::time::SystemTime;

use apple_codesign::{
    CodeSignatureFlags, CodeSigningSlot, EmbeddedSignature, MachOBinary, SettingsScope,
    SigningSettings, VerificationProblemType, verify_macho_data,
};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_certificate::CapturedX509Certificate;

use super::layout::{check_macho_layout, code_signature_range};
use crate::chain::{self, Anchors};
use openwork_payload::container::ExecutableFormat;

use crate::error::{
    CertificateError, ConfigError, CoverageError, PolicyError, Result, VerificationError,
};
use crate::key::describe_certificate;
use crate::timestamp::oid::TIME_STAMP_TOKEN;

const ID_KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// The extension Apple puts in Developer ID Application certificates.
const DEVELOPER_ID_APPLICATION: &str = "1.2.840.113635.100.6.1.13";

/// Verifies a signed thin Mach-O, ad-hoc or with any certificate: [`verify_macho`] with
/// [`MachOPolicy::any_signature`]. Whether a certificate is required is the caller's
/// policy (see [`crate::identify()`]).
pub fn verify(data: &[u8]) -> Result<()> {
    verify_macho(data, &MachOPolicy::any_signature()).map(|_| ())
}

/// What [`verify_macho`] requires of a signature.
#[derive(Debug, Clone, Default)]
pub struct MachOPolicy {
    /// Accept a signature without a certificate.
    pub allow_adhoc: bool,
    /// The signing certificate must chain to one of these; `None`: the chain the signature
    /// carries is checked up to its top, whoever issued that.
    pub roots: Option<Vec<CapturedX509Certificate>>,
    /// The hardened runtime flag must be set.
    pub require_hardened_runtime: bool,
    /// The embedded entitlements must equal these (plist XML, compared as parsed); `None`:
    /// not checked.
    pub entitlements: Option<String>,
    /// A secure timestamp must be present.
    pub require_timestamp: bool,
    /// A timestamp, when present, must come from an authority chaining to one of these;
    /// `None`: its signature is checked, its issuer is not.
    pub tsa_roots: Option<Vec<CapturedX509Certificate>>,
    /// The signing certificate must be a Developer ID Application certificate (Apple's
    /// marker extension), as notarization requires.
    pub require_developer_id: bool,
}

impl MachOPolicy {
    /// Any valid signature, ad-hoc included: what arm64 macOS needs to run a file.
    pub fn any_signature() -> Self {
        Self {
            allow_adhoc: true,
            ..Self::default()
        }
    }

    /// What notarization requires: a certificate chaining to `roots`, the hardened
    /// runtime and a secure timestamp from an authority chaining to `tsa_roots`. (Apple also
    /// wants a Developer ID certificate: with Apple's roots that follows from the chain;
    /// `require_developer_id` checks the marker where the roots are a test PKI's.)
    pub fn notarizable(
        roots: Vec<CapturedX509Certificate>,
        tsa_roots: Vec<CapturedX509Certificate>,
    ) -> Self {
        Self {
            allow_adhoc: false,
            roots: Some(roots),
            require_hardened_runtime: true,
            entitlements: None,
            require_timestamp: true,
            tsa_roots: Some(tsa_roots),
            require_developer_id: false,
        }
    }
}

/// What a verified Mach-O signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachOVerified {
    /// The code signing identifier.
    pub identifier: String,
    /// The team ID, if the signature has one.
    pub team_id: Option<String>,
    /// The code directory's flags (hardened runtime, ad-hoc, …).
    pub flags: CodeSignatureFlags,
    /// The embedded entitlements (plist XML), if any.
    pub entitlements: Option<String>,
    /// The signing certificate's subject; `None` for an ad-hoc signature.
    pub signer: Option<String>,
    /// When the time-stamp authority says the signature was made, if time-stamped.
    pub timestamp: Option<SystemTime>,
}

impl MachOVerified {
    /// Whether the hardened runtime flag is set.
    pub fn hardened_runtime(&self) -> bool {
        self.flags.contains(CodeSignatureFlags::RUNTIME)
    }
}

/// Verifies the signature of a thin Mach-O against `policy`, with checks of our own where
/// apple-codesign's verifier has none:
///
/// - layout ([`check_macho_layout`](super::check_macho_layout)): nothing after the signature or outside `__LINKEDIT`'s
///   end, the signature last; the code directory hashes every byte before the signature;
///   the padding after the signature blob is zeros (nothing hashes it);
/// - apple-codesign's `verify_macho_data`: every page hash and special-slot hash, and the
///   CMS signature over its signed attributes;
/// - that the CMS signature's message digest is the digest of this code directory (the
///   verifier above does not compare them), with the embedded leaf, and that the leaf
///   chains to `policy.roots`, valid at the timestamp (or now);
/// - flags, entitlements, and the timestamp token and its authority's chain.
///
/// Alternative code directories (SHA-1 next to SHA-256, for macOS before 10.11.4) are
/// refused: our signer never writes them, and they would need checks of their own.
pub fn verify_macho(data: &[u8], policy: &MachOPolicy) -> Result<MachOVerified> {
    check_macho_layout(data)?;
    let binary = MachOBinary::parse(data)?;
    let signature = binary
        .code_signature()?
        .ok_or(VerificationError::NotSigned {
            format: ExecutableFormat::MachO,
        })?;
    let (signature_start, _) = check_signature_padding(data)?;
    if signature.all_code_directories()?.len() != 1 {
        return Err(PolicyError::AlternativeCodeDirectories.into());
    }
    let directory = signature
        .code_directory()?
        .ok_or(VerificationError::Missing {
            what: "code directory",
        })?;
    // codeLimit64 is set only for files of 4 GiB and more; zero means "use codeLimit".
    let code_limit = match directory.code_limit_64 {
        Some(limit) if limit != 0 => limit,
        _ => u64::from(directory.code_limit),
    };
    if code_limit != signature_start {
        return Err(CoverageError::CodeLimit {
            code_limit,
            signature_start,
        }
        .into());
    }
    let cms = signature.signature_data()?.filter(|cms| !cms.is_empty());
    let problems: Vec<String> = verify_macho_data(data)
        .into_iter()
        .filter(|p| {
            // An ad-hoc signature's empty CMS blob is reported as missing or unparseable.
            !(cms.is_none()
                && matches!(
                    p.problem,
                    VerificationProblemType::NoCryptographicSignature
                        | VerificationProblemType::CmsError(_)
                ))
        })
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        return Err(VerificationError::CodeHashes { problems }.into());
    }

    let (signer, timestamp) = match cms {
        None if policy.allow_adhoc => (None, None),
        None => {
            return Err(PolicyError::AdHoc.into());
        }
        Some(cms) => {
            let directory_blob = signature
                .find_slot(CodeSigningSlot::CodeDirectory)
                .ok_or(VerificationError::Missing {
                    what: "code directory slot",
                })?
                .data;
            let (subject, timestamp) = verify_cms(&signature, directory_blob, cms, policy)?;
            (Some(subject), timestamp)
        }
    };
    if policy.require_timestamp && timestamp.is_none() {
        return Err(PolicyError::NoTimestamp { any_format: false }.into());
    }
    if policy.require_hardened_runtime && !directory.flags.contains(CodeSignatureFlags::RUNTIME) {
        return Err(PolicyError::NoHardenedRuntime.into());
    }
    let entitlements = signature.entitlements()?.map(|blob| blob.to_string());
    if let Some(expected) = &policy.entitlements {
        let expected = canonical_entitlements(expected).map_err(|e| ConfigError::Entitlements {
            whose: "the expected entitlements",
            source: e.into(),
        })?;
        let actual = match &entitlements {
            Some(xml) => {
                canonical_entitlements(xml).map_err(|e| VerificationError::Unreadable {
                    what: "the embedded entitlements (a plist)".into(),
                    source: e.into(),
                })?
            }
            None => String::new(),
        };
        if actual != expected {
            return Err(PolicyError::Entitlements {
                found: Some(actual),
            }
            .into());
        }
    }
    Ok(MachOVerified {
        identifier: directory.ident.to_string(),
        team_id: directory.team_name.as_ref().map(|t| t.to_string()),
        flags: directory.flags,
        entitlements,
        signer,
        timestamp,
    })
}

/// Checks that the bytes between the end of the signature's superblob and the end of the
/// `LC_CODE_SIGNATURE` range are zeros (signers pad to an estimated size; nothing hashes the
/// padding, so anything else there is unsigned data). Returns the signature's range.
fn check_signature_padding(data: &[u8]) -> Result<(u64, u64)> {
    let (start, size) = code_signature_range(data)?;
    let region = &data[start as usize..(start + size) as usize];
    let superblob_len = region
        .get(4..8)
        .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        .ok_or(VerificationError::Truncated {
            what: "the code signature",
        })?;
    if superblob_len > size {
        return Err(CoverageError::BlobSize {
            claimed: superblob_len,
            size,
        }
        .into());
    }
    if let Some(at) = region[superblob_len as usize..]
        .iter()
        .position(|&b| b != 0)
    {
        return Err(CoverageError::NotPadding {
            at: start + superblob_len + at as u64,
        }
        .into());
    }
    Ok((start, size))
}

/// The CMS signature: one signer, its message digest over `directory_blob`, its signature
/// with the embedded leaf, the leaf's chain, and the timestamp. Returns the leaf's subject
/// and the timestamp's time.
fn verify_cms(
    signature: &EmbeddedSignature<'_>,
    directory_blob: &[u8],
    cms: &[u8],
    policy: &MachOPolicy,
) -> Result<(String, Option<SystemTime>)> {
    let signed_data = signature.signed_data()?.ok_or(VerificationError::Missing {
        what: "CMS signed data",
    })?;
    let signers: Vec<_> = signed_data.signers().collect();
    let [signer] = signers.as_slice() else {
        return Err(VerificationError::Structure {
            what: "the number of CMS signers",
            found: signers.len().to_string(),
            expected: "exactly one is expected",
        }
        .into());
    };
    signer
        .verify_message_digest_with_content(directory_blob)
        .map_err(|e| VerificationError::ContentDigest {
            what: "the CMS signature is not over this file's code directory",
            source: Some(e.into()),
        })?;
    signer
        .verify_signature_with_signed_data(&signed_data)
        .map_err(|e| VerificationError::Signature {
            what: "the CMS signature",
            key: None,
            source: Some(e.into()),
        })?;
    let (issuer, serial) =
        signer
            .certificate_issuer_and_serial()
            .ok_or(VerificationError::Structure {
                what: "the CMS signer's identifier",
                found: "not an issuer and serial number".into(),
                expected: "Apple code signing names the signer by those",
            })?;
    let embedded = EmbeddedCms::parse(cms)?;
    let certificates = &embedded.certificates;
    let leaf = certificates
        .iter()
        .find(|c| c.issuer_name() == issuer && c.serial_number_asn1() == serial)
        .ok_or_else(|| CertificateError::NotEmbedded {
            signer: "the signing certificate".into(),
        })?;

    let timestamp = match &embedded.timestamp {
        Some(token) => verify_timestamp(token, policy)?,
        None => None,
    };
    let at = timestamp.unwrap_or_else(SystemTime::now);
    check_extended_key_usage(leaf, ID_KP_CODE_SIGNING, "code signing")?;
    if policy.require_developer_id
        && !leaf
            .iter_extensions()
            .any(|e| e.id.to_string() == DEVELOPER_ID_APPLICATION)
    {
        return Err(CertificateError::NotDeveloperId {
            certificate: describe_certificate(leaf),
        }
        .into());
    }
    chain::check_chain(leaf, certificates, anchors(policy.roots.as_deref()), at).map_err(
        |source| CertificateError::Chain {
            certificate: format!("the signing certificate {}", describe_certificate(leaf)),
            anchor: "a trusted root",
            source,
        },
    )?;
    Ok((certificate_subject(leaf), timestamp))
}

/// A time-stamp token (a DER CMS SignedData, as the authority encoded it) and the
/// signature value it time-stamps.
struct TimestampToken {
    token: Vec<u8>,
    signature: Vec<u8>,
}

/// What is read from the CMS signature with the RustCrypto `cms` types, which keep every
/// certificate's and the token's bytes as they are: cryptographic-message-syntax, which
/// apple-codesign uses, re-encodes certificates when it parses them (see
/// `restore_certificates` in the repair module), so an ECDSA chain read through it never verifies. These types
/// read DER only; apple-codesign writes DER.
struct EmbeddedCms {
    certificates: Vec<CapturedX509Certificate>,
    timestamp: Option<TimestampToken>,
}

impl EmbeddedCms {
    fn parse(cms: &[u8]) -> Result<Self> {
        let unreadable = |e: der::Error| VerificationError::Unreadable {
            what: "the CMS signature (as DER)".into(),
            source: e.into(),
        };
        let info = ContentInfo::from_der(cms).map_err(unreadable)?;
        let signed: SignedData = info.content.decode_as().map_err(unreadable)?;
        let mut certificates = Vec::new();
        for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
            if let CertificateChoices::Certificate(certificate) = choice {
                let der = certificate.to_der().map_err(unreadable)?;
                certificates.push(CapturedX509Certificate::from_der(der).map_err(|e| {
                    VerificationError::Unreadable {
                        what: "an embedded certificate".into(),
                        source: e.into(),
                    }
                })?);
            }
        }
        let timestamp = match signed.signer_infos.0.get(0) {
            None => None,
            Some(signer) => signer
                .unsigned_attrs
                .iter()
                .flat_map(|attributes| attributes.iter())
                .find(|attribute| attribute.oid == TIME_STAMP_TOKEN)
                .and_then(|attribute| attribute.values.get(0))
                .map(|value| value.to_der())
                .transpose()
                .map_err(unreadable)?
                .map(|token| TimestampToken {
                    token,
                    signature: signer.signature.as_bytes().to_vec(),
                }),
        };
        Ok(Self {
            certificates,
            timestamp,
        })
    }
}

/// The extended key usage a certificate must allow, if it restricts usage at all.
fn check_extended_key_usage(
    certificate: &CapturedX509Certificate,
    usage: ObjectIdentifier,
    what: &'static str,
) -> Result<()> {
    let unreadable = |what: String, e: der::Error| VerificationError::Unreadable {
        what,
        source: e.into(),
    };
    let parsed = x509_cert::Certificate::from_der(certificate.constructed_data()).map_err(|e| {
        unreadable(
            format!("certificate {}", describe_certificate(certificate)),
            e,
        )
    })?;
    let usages = parsed
        .tbs_certificate
        .get::<ExtendedKeyUsage>()
        .map_err(|e| unreadable("the extended key usage".into(), e))?;
    match usages {
        Some((_, ExtendedKeyUsage(oids)))
            if !oids.contains(&usage) && !oids.contains(&ANY_EXTENDED_KEY_USAGE) =>
        {
            Err(CertificateError::Usage {
                certificate: format!("certificate {}", describe_certificate(certificate)),
                usage: what,
                detail: "",
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// The subject as an RFC 4514 string.
fn certificate_subject(certificate: &CapturedX509Certificate) -> String {
    x509_cert::Certificate::from_der(certificate.constructed_data())
        .map(|c| c.tbs_certificate.subject.to_string())
        .unwrap_or_else(|_| describe_certificate(certificate))
}

/// Entitlements as apple-codesign writes them: parsed and serialized again, so that two
/// plists differing only in whitespace or header compare equal.
fn canonical_entitlements(
    xml: &str,
) -> std::result::Result<String, Box<apple_codesign::AppleCodesignError>> {
    let mut settings = SigningSettings::default();
    settings.set_entitlements_xml(SettingsScope::Main, xml)?;
    Ok(settings
        .entitlements_xml(SettingsScope::Main)?
        .unwrap_or_default())
}

/// Checks a time-stamp token against `policy.tsa_roots` (see [`crate::timestamp::verify_token`])
/// and returns its time. Without roots to check it against, a token proves nothing, so it
/// is ignored (and cannot satisfy `require_timestamp`).
fn verify_timestamp(token: &TimestampToken, policy: &MachOPolicy) -> Result<Option<SystemTime>> {
    let anchors = anchors(policy.tsa_roots.as_deref());
    let info = crate::timestamp::verify_token_with(&token.token, &token.signature, anchors)?;
    Ok(Some(info.gen_time))
}

/// A policy's roots, or (`None`) the top of the chain the signature carries.
fn anchors(roots: Option<&[CapturedX509Certificate]>) -> Anchors<'_> {
    roots.map_or(Anchors::Carried, Anchors::Roots)
}
