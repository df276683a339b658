//! Apple code signing of thin Mach-O files, ad-hoc ([`sign_adhoc`]) or with a certificate
//! ([`sign_with_identity`]), and their verification ([`verify_macho`]).
//!
//! An ad-hoc signature is a code directory (page hashes of the file up to the signature)
//! without a certificate. arm64 macOS refuses to run unsigned code, so every Mach-O we
//! ship or test is at least ad-hoc signed; releases are signed with a certificate, the
//! hardened runtime, per-binary entitlements ([`crate::entitlements`]) and a secure
//! timestamp, which is what notarization requires.
//!
//! apple-codesign is used because it signs from any OS. What it gets wrong is covered here:
//!
//! - it silently drops bytes that follow `__LINKEDIT` (a payload appended there would
//!   vanish): [`check_macho_layout`] refuses such input before signing;
//! - it re-encodes the certificates it embeds, which breaks ECDSA certificates: they are
//!   put back as issued after signing;
//! - its verifier passes bytes appended after the signature or hidden in the signature's
//!   padding, and never checks that the CMS signature is over the code directory, nor any
//!   chain, flag, entitlement or timestamp: [`verify_macho`] does.
//!
//! Universal (fat) files are refused although apple-codesign could sign them: we ship one
//! thin file per target, and every check here (layout, padding, restored certificates)
//! would have to be made per slice and for the fat header too.

use std::path::Path;
use std::time::SystemTime;

pub use apple_codesign::CodeSignatureFlags;
use apple_codesign::{
    CodeSigningSlot, EmbeddedSignature, MachOBinary, MachOSigner, SettingsScope, SigningSettings,
    VerificationProblemType, verify_macho_data,
};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{CertificateSet, SignedData, SignerInfos};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, Decode, Encode, Tagged};
use goblin::mach::load_command::CommandVariant;
use goblin::mach::{Mach, MachO};
use x509_cert::ext::pkix::ExtendedKeyUsage;
/// The certificate type of [`MachOPolicy`]'s roots, re-exported so that callers need no
/// dependency of their own.
pub use x509_certificate::CapturedX509Certificate;

use crate::chain::{self, Anchors, ChainError};
use crate::error::{Error, Result};
use crate::key::{SigningIdentity, describe_certificate};

const ID_KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
const ID_AA_TIME_STAMP_TOKEN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.14");

const LINKEDIT: &str = "__LINKEDIT";
/// The extension Apple puts in Developer ID Application certificates.
const DEVELOPER_ID_APPLICATION: &str = "1.2.840.113635.100.6.1.13";

/// Checks that a thin 64-bit Mach-O is laid out the way signing and verification need:
/// `__LINKEDIT` is the last segment, the file ends exactly where `__LINKEDIT` ends, and a
/// code signature, if present, is the last thing in `__LINKEDIT`.
pub fn check_macho_layout(data: &[u8]) -> Result<()> {
    let macho = parse_thin(data)?;
    let linkedit = macho
        .segments
        .iter()
        .find(|s| s.name().ok() == Some(LINKEDIT))
        .ok_or_else(|| Error::Layout("there is no __LINKEDIT segment".into()))?;
    let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
    for segment in macho.segments.iter() {
        if segment.fileoff == linkedit.fileoff && segment.name().ok() == Some(LINKEDIT) {
            continue;
        }
        if segment.filesize > 0
            && segment.fileoff.saturating_add(segment.filesize) > linkedit.fileoff
        {
            return Err(Error::Layout(format!(
                "segment {} ends after __LINKEDIT starts; __LINKEDIT must be the last segment",
                segment.name().unwrap_or("(unnamed)")
            )));
        }
    }
    let len = data.len() as u64;
    if len > linkedit_end {
        return Err(Error::Layout(format!(
            "{} bytes follow the end of __LINKEDIT; signing would drop them and signature verification would not cover them",
            len - linkedit_end
        )));
    }
    if len < linkedit_end {
        return Err(Error::Layout(format!(
            "__LINKEDIT ends at byte {linkedit_end} but the file has only {len} bytes (truncated?)"
        )));
    }
    for command in &macho.load_commands {
        if let CommandVariant::CodeSignature(signature) = &command.command {
            let end = u64::from(signature.dataoff) + u64::from(signature.datasize);
            if end != linkedit_end {
                return Err(Error::Layout(format!(
                    "the code signature ends at byte {end} but __LINKEDIT ends at byte {linkedit_end}; the signature must be last"
                )));
            }
        }
    }
    Ok(())
}

/// The segment `bun build --compile` keeps its program in on macOS (the module graph, in
/// section `__bun`).
const BUN_SEGMENT: &str = "__BUN";

/// How many bytes at the end of a Bun-compiled Mach-O are a stale tail that re-signing may
/// drop, or `None` when there is none (or the file is not one this applies to).
///
/// `bun build --compile` writes its program into the `__BUN` segment and a fresh signature
/// over a copy of the Bun template, but (Bun 1.3.x, fixed upstream in 2026) never truncates
/// the copy: when the template's own signature was longer, its end is left behind after the
/// new one, outside `__LINKEDIT`. Such a file fails `codesign --verify --strict`, and
/// opencode's darwin builds ship like that (opencode issue 46313). Nothing reads those
/// bytes: dyld maps segments only, and Bun reads its program from `__BUN`. So for a file
/// that has both a `__BUN` segment and a code signature, the tail is dropped before signing
/// (and reported); anywhere else bytes after `__LINKEDIT` may be a payload someone appended
/// on purpose, and [`check_macho_layout`] refuses them.
pub fn stale_tail(data: &[u8]) -> Result<Option<u64>> {
    let macho = parse_thin(data)?;
    let has_segment = |name: &str| macho.segments.iter().any(|s| s.name().ok() == Some(name));
    let signed = macho
        .load_commands
        .iter()
        .any(|c| matches!(c.command, CommandVariant::CodeSignature(_)));
    let Some(linkedit) = macho
        .segments
        .iter()
        .find(|s| s.name().ok() == Some(LINKEDIT))
    else {
        return Ok(None);
    };
    let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
    let len = data.len() as u64;
    Ok((has_segment(BUN_SEGMENT) && signed && len > linkedit_end).then(|| len - linkedit_end))
}

/// Ad-hoc signs a Mach-O held in memory, replacing any signature it has. `identifier` is
/// the code signing identifier (codesign uses the file name for a bare executable). The
/// layout is checked before signing, so that nothing is dropped, and after, so that what
/// is returned verifies as a whole.
pub fn sign_adhoc(data: &[u8], identifier: &str) -> Result<Vec<u8>> {
    check_macho_layout(data)?;
    let signer = MachOSigner::new(data)?;
    let mut settings = SigningSettings::default();
    settings.set_binary_identifier(SettingsScope::Main, identifier);
    let mut signed = Vec::with_capacity(data.len() + data.len() / 64 + 64 * 1024);
    signer.write_signed_binary(&settings, &mut signed)?;
    check_macho_layout(&signed)?;
    Ok(signed)
}

/// Verifies a signed thin Mach-O, ad-hoc or with any certificate: [`verify_macho`] with
/// [`MachOPolicy::any_signature`]. Whether a certificate is required is the caller's
/// policy (see [`crate::identify()`]).
pub fn verify(data: &[u8]) -> Result<()> {
    verify_macho(data, &MachOPolicy::any_signature()).map(|_| ())
}

/// Ad-hoc signs the Mach-O at `input` into `output` (which may be the same path). The
/// identifier defaults to the input's file name. `output` is written under a temporary
/// name and renamed into place, with the input's permissions, so that it is never seen
/// half-written.
pub fn sign_adhoc_file(input: &Path, output: &Path, identifier: Option<&str>) -> Result<()> {
    let data = fs_err::read(input)?;
    let identifier = identifier_or_file_name(input, identifier)?;
    let signed = sign_adhoc(&data, &identifier)?;
    write_beside(input, output, &signed)
}

/// The given identifier, or the file name of `input`, as codesign does for bare executables.
fn identifier_or_file_name(input: &Path, identifier: Option<&str>) -> Result<String> {
    match identifier {
        Some(id) => Ok(id.to_string()),
        None => input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Unsupported(format!("{} has no file name", input.display()))),
    }
}

/// Writes `bytes` to `output` under a temporary name, with `input`'s permissions (the
/// executable bit above all), and renames it into place.
fn write_beside(input: &Path, output: &Path, bytes: &[u8]) -> Result<()> {
    let permissions = fs_err::metadata(input)?.permissions();
    let mut temporary = output.as_os_str().to_owned();
    temporary.push(format!(".signing-{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let written = fs_err::write(&temporary, bytes)
        .and_then(|()| fs_err::set_permissions(&temporary, permissions))
        .and_then(|()| fs_err::rename(&temporary, output));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(written?)
}

/// How [`sign_with_identity`] signs a Mach-O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachOSignOptions {
    /// The code signing identifier. Required in memory; the file variant defaults it to the
    /// file name, as codesign does for a bare executable.
    pub identifier: Option<String>,
    /// Sets the hardened runtime flag, which notarization requires.
    pub hardened_runtime: bool,
    /// Entitlements as plist XML (see [`crate::entitlements`]); `None` for no entitlements.
    pub entitlements: Option<String>,
    /// An RFC 3161 time-stamp authority; notarization requires a secure timestamp.
    pub timestamp_url: Option<String>,
}

/// Signs a thin Mach-O held in memory with a certificate, replacing any signature it has.
///
/// The layout is checked before signing, because apple-codesign would silently drop bytes
/// after `__LINKEDIT`, and after, so that what is returned is covered as a whole. The team
/// ID is the certificate's organizational unit when that looks like an Apple team ID (ten
/// upper-case letters or digits: Developer ID certificates carry it there).
pub fn sign_with_identity(
    data: &[u8],
    identity: &SigningIdentity,
    options: &MachOSignOptions,
) -> Result<Vec<u8>> {
    check_macho_layout(data)?;
    let identifier = options.identifier.as_deref().ok_or_else(|| {
        Error::Config(
            "no code signing identifier: give one (codesign uses the executable's file name)"
                .into(),
        )
    })?;
    let signer = MachOSigner::new(data)?;
    let mut settings = SigningSettings::default();
    settings.set_binary_identifier(SettingsScope::Main, identifier);
    settings.set_signing_key(identity.key(), identity.certificate().clone());
    for certificate in identity.chain() {
        settings.chain_certificate(certificate.clone());
    }
    if let Some(team_id) = team_id_of(identity.certificate()) {
        settings.set_team_id(team_id);
    }
    if options.hardened_runtime {
        settings.set_code_signature_flags(SettingsScope::Main, CodeSignatureFlags::RUNTIME);
    }
    if let Some(xml) = &options.entitlements {
        settings
            .set_entitlements_xml(SettingsScope::Main, xml)
            .map_err(|e| Error::Config(format!("the entitlements are not a valid plist: {e}")))?;
    }
    if let Some(url) = &options.timestamp_url {
        settings
            .set_time_stamp_url(url.as_str())
            .map_err(|e| Error::Config(format!("time-stamp authority URL {url:?}: {e}")))?;
    }
    let mut signed = Vec::with_capacity(data.len() + data.len() / 64 + 64 * 1024);
    signer
        .write_signed_binary(&settings, &mut signed)
        .map_err(|e| signing_error(e, options.timestamp_url.as_deref()))?;
    restore_certificates(&mut signed, identity)?;
    check_macho_layout(&signed)?;
    Ok(signed)
}

/// Puts back, in the signature of a file apple-codesign just signed, the certificates as
/// they were issued.
///
/// apple-codesign 0.29 re-encodes the certificates it embeds in the CMS signature, and
/// those in the time-stamp token it receives, through its own ASN.1 types, which write
/// ECDSA signature algorithm identifiers with NULL parameters (RFC 5758 §3.2: they must be
/// absent). That changes the signed bytes of every ECDSA-signed certificate, so its
/// signature no longer verifies and the token's ESS hash no longer names its TSA
/// certificate: macOS would reject the chain, and so does [`verify_macho`]. RSA
/// certificates come through unchanged. Certificates are outside what the CMS signature
/// and the code directory cover, so they can be replaced after signing: the signer's with
/// the identity's own bytes, the TSA's by removing the added NULLs (any other difference
/// would still fail the token's ESS check). The result is shorter, so it fits the space
/// apple-codesign reserved; the load commands and every hash stay as they are.
fn restore_certificates(signed: &mut [u8], identity: &SigningIdentity) -> Result<()> {
    let (start, size) = code_signature_range(signed)?;
    let region = &mut signed[start as usize..(start + size) as usize];
    let superblob = Superblob::parse(region)?;
    let Some(cms_index) = superblob
        .blobs
        .iter()
        .position(|(slot, _)| *slot == CMS_SIGNATURE_SLOT)
    else {
        return Ok(());
    };
    let cms_blob = superblob.blobs[cms_index].1;
    let cms = cms_blob.get(8..).unwrap_or_default();
    if cms.is_empty() {
        return Ok(());
    }
    let repaired = repair_cms(cms, identity).map_err(|e| {
        Error::Verification(format!(
            "the CMS signature apple-codesign wrote cannot be read back: {e}"
        ))
    })?;
    let mut new_blob = Vec::with_capacity(repaired.len() + 8);
    new_blob.extend_from_slice(&cms_blob[..4]);
    new_blob.extend_from_slice(&((repaired.len() + 8) as u32).to_be_bytes());
    new_blob.extend_from_slice(&repaired);
    let mut blobs: Vec<(u32, &[u8])> = superblob.blobs.clone();
    blobs[cms_index].1 = &new_blob;
    let rebuilt = Superblob::write(superblob.magic, &blobs);
    if rebuilt.len() > region.len() {
        return Err(Error::Verification(format!(
            "the repaired signature ({} bytes) does not fit the {} bytes reserved for it",
            rebuilt.len(),
            region.len()
        )));
    }
    region.fill(0);
    region[..rebuilt.len()].copy_from_slice(&rebuilt);
    Ok(())
}

/// The code signature superblob's slot of the CMS signature.
const CMS_SIGNATURE_SLOT: u32 = 0x10000;

/// An embedded signature superblob: magic, total length, an index of (slot, offset), then
/// the blobs, each starting with its magic and length (big-endian).
struct Superblob<'a> {
    magic: [u8; 4],
    blobs: Vec<(u32, &'a [u8])>,
}

impl<'a> Superblob<'a> {
    fn parse(region: &'a [u8]) -> Result<Self> {
        let truncated = || Error::Verification("the code signature superblob is truncated".into());
        let be = |at: usize| -> Result<u32> {
            region
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(truncated)
        };
        let magic = region
            .get(..4)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
            .ok_or_else(truncated)?;
        let length = be(4)? as usize;
        let count = be(8)? as usize;
        let superblob = region.get(..length).ok_or_else(truncated)?;
        let mut blobs = Vec::with_capacity(count);
        for index in 0..count {
            let slot = be(12 + index * 8)?;
            let offset = be(16 + index * 8)? as usize;
            let blob_length = be(offset + 4)? as usize;
            let blob = superblob
                .get(offset..offset + blob_length)
                .ok_or_else(truncated)?;
            blobs.push((slot, blob));
        }
        Ok(Self { magic, blobs })
    }

    fn write(magic: [u8; 4], blobs: &[(u32, &[u8])]) -> Vec<u8> {
        let header = 12 + 8 * blobs.len();
        let total = header + blobs.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(blobs.len() as u32).to_be_bytes());
        let mut offset = header;
        for (slot, blob) in blobs {
            out.extend_from_slice(&slot.to_be_bytes());
            out.extend_from_slice(&(offset as u32).to_be_bytes());
            offset += blob.len();
        }
        for (_, blob) in blobs {
            out.extend_from_slice(blob);
        }
        out
    }
}

/// The CMS signature with the identity's certificates as issued and the time-stamp
/// token's ECDSA certificates without the NULL parameters apple-codesign added.
fn repair_cms(cms: &[u8], identity: &SigningIdentity) -> der::Result<Vec<u8>> {
    let mut info = ContentInfo::from_der(cms)?;
    let mut signed: SignedData = info.content.decode_as()?;
    let certificates = std::iter::once(identity.certificate())
        .chain(identity.chain())
        .map(|c| {
            x509_cert::Certificate::from_der(c.constructed_data())
                .map(CertificateChoices::Certificate)
        })
        .collect::<der::Result<Vec<_>>>()?;
    signed.certificates = Some(CertificateSet(SetOfVec::try_from(certificates)?));
    let mut signers = signed.signer_infos.0.into_vec();
    for signer in &mut signers {
        let Some(attributes) = signer.unsigned_attrs.take() else {
            continue;
        };
        let mut attributes = attributes.into_vec();
        for attribute in &mut attributes {
            if attribute.oid == ID_AA_TIME_STAMP_TOKEN {
                let tokens = attribute
                    .values
                    .iter()
                    .map(repair_token)
                    .collect::<der::Result<Vec<_>>>()?;
                attribute.values = SetOfVec::try_from(tokens)?;
            }
        }
        signer.unsigned_attrs = Some(SetOfVec::try_from(attributes)?);
    }
    signed.signer_infos = SignerInfos(SetOfVec::try_from(signers)?);
    info.content = Any::encode_from(&signed)?;
    info.to_der()
}

fn repair_token(token: &Any) -> der::Result<Any> {
    let mut info: ContentInfo = token.decode_as()?;
    let mut signed: SignedData = info.content.decode_as()?;
    if let Some(set) = signed.certificates.take() {
        let certificates = set
            .0
            .into_vec()
            .into_iter()
            .map(|choice| match choice {
                CertificateChoices::Certificate(mut certificate) => {
                    drop_ecdsa_null(&mut certificate.signature_algorithm);
                    drop_ecdsa_null(&mut certificate.tbs_certificate.signature);
                    CertificateChoices::Certificate(certificate)
                }
                other => other,
            })
            .collect::<Vec<_>>();
        signed.certificates = Some(CertificateSet(SetOfVec::try_from(certificates)?));
    }
    info.content = Any::encode_from(&signed)?;
    Any::encode_from(&info)
}

/// ECDSA signature algorithms (1.2.840.10045.4.*) take no parameters.
fn drop_ecdsa_null(algorithm: &mut spki::AlgorithmIdentifierOwned) {
    let ecdsa_signatures = ObjectIdentifier::new_unwrap("1.2.840.10045.4");
    let is_ecdsa = algorithm
        .oid
        .as_bytes()
        .starts_with(ecdsa_signatures.as_bytes());
    if is_ecdsa
        && algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p.tag() == der::Tag::Null)
    {
        algorithm.parameters = None;
    }
}

/// The file range of the code signature (`LC_CODE_SIGNATURE`): start and size.
fn code_signature_range(data: &[u8]) -> Result<(u64, u64)> {
    let macho = parse_thin(data)?;
    let (start, size) = macho
        .load_commands
        .iter()
        .find_map(|c| match &c.command {
            CommandVariant::CodeSignature(s) => Some((u64::from(s.dataoff), u64::from(s.datasize))),
            _ => None,
        })
        .ok_or_else(|| Error::Verification("the file has no code signature".into()))?;
    if data.len() < (start + size) as usize {
        return Err(Error::Layout(
            "the code signature extends past the end of the file".into(),
        ));
    }
    Ok((start, size))
}

/// [`sign_with_identity`] from `input` into `output` (which may be the same path), keeping
/// the input's permissions; the identifier defaults to the input's file name.
pub fn sign_with_identity_file(
    input: &Path,
    output: &Path,
    identity: &SigningIdentity,
    options: &MachOSignOptions,
) -> Result<()> {
    let data = fs_err::read(input)?;
    let options = MachOSignOptions {
        identifier: Some(identifier_or_file_name(
            input,
            options.identifier.as_deref(),
        )?),
        ..options.clone()
    };
    let signed = sign_with_identity(&data, identity, &options)?;
    write_beside(input, output, &signed)
}

/// A time-stamp authority that cannot be reached or refuses is a network problem, not a
/// signing bug. apple-codesign wraps it in a CMS error whose type this crate cannot name
/// (it is not a direct dependency), so it is recognised by its message.
fn signing_error(error: apple_codesign::AppleCodesignError, timestamp_url: Option<&str>) -> Error {
    match (&error, timestamp_url) {
        (apple_codesign::AppleCodesignError::Cms(cms), Some(url))
            if cms.to_string().starts_with("Time-Stamp Protocol error") =>
        {
            Error::Network(format!(
                "time-stamping through {url} failed: {cms}; check that the authority is reachable (and HTTPS_PROXY / NO_PROXY), or use another one"
            ))
        }
        _ => error.into(),
    }
}

/// The certificate's organizational unit if it has the shape of an Apple team ID. Other
/// organizational units (department names of an internal PKI) are not team IDs, and a
/// wrong team ID in a signature breaks library validation between our own binaries.
fn team_id_of(certificate: &CapturedX509Certificate) -> Option<String> {
    let parsed = x509_cert::Certificate::from_der(certificate.constructed_data()).ok()?;
    let organizational_unit = ObjectIdentifier::new_unwrap("2.5.4.11");
    parsed
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|attribute| attribute.oid == organizational_unit)
        .filter_map(|attribute| std::str::from_utf8(attribute.value.value()).ok())
        .find(|ou| {
            ou.len() == 10
                && ou
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .map(str::to_owned)
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
/// - layout ([`check_macho_layout`]): nothing after the signature or outside `__LINKEDIT`'s
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
        .ok_or_else(|| Error::Verification("the file has no code signature".into()))?;
    let (signature_start, _) = check_signature_padding(data)?;
    if signature.all_code_directories()?.len() != 1 {
        return Err(Error::Verification(
            "the signature has alternative code directories, which this verifier does not check; sign with SHA-256 only".into(),
        ));
    }
    let directory = signature
        .code_directory()?
        .ok_or_else(|| Error::Verification("the signature has no code directory".into()))?;
    // codeLimit64 is set only for files of 4 GiB and more; zero means "use codeLimit".
    let code_limit = match directory.code_limit_64 {
        Some(limit) if limit != 0 => limit,
        _ => u64::from(directory.code_limit),
    };
    if code_limit != signature_start {
        return Err(Error::Verification(format!(
            "the code directory hashes the first {code_limit} bytes but the signature starts at byte {signature_start}: the bytes in between are not covered"
        )));
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
        return Err(Error::Verification(problems.join("; ")));
    }

    let (signer, timestamp) = match cms {
        None if policy.allow_adhoc => (None, None),
        None => {
            return Err(Error::Verification(
                "the signature is ad-hoc (no certificate), but a certificate signature is required"
                    .into(),
            ));
        }
        Some(cms) => {
            let directory_blob = signature
                .find_slot(CodeSigningSlot::CodeDirectory)
                .ok_or_else(|| Error::Verification("the code directory slot is missing".into()))?
                .data;
            let (subject, timestamp) = verify_cms(&signature, directory_blob, cms, policy)?;
            (Some(subject), timestamp)
        }
    };
    if policy.require_timestamp && timestamp.is_none() {
        return Err(Error::Verification(
            "the signature has no secure timestamp; sign with a time-stamp authority".into(),
        ));
    }
    if policy.require_hardened_runtime && !directory.flags.contains(CodeSignatureFlags::RUNTIME) {
        return Err(Error::Verification(
            "the hardened runtime is not enabled in the signature's flags".into(),
        ));
    }
    let entitlements = signature.entitlements()?.map(|blob| blob.to_string());
    if let Some(expected) = &policy.entitlements {
        let expected = canonical_entitlements(expected).map_err(|e| {
            Error::Config(format!(
                "the expected entitlements are not a valid plist: {e}"
            ))
        })?;
        let actual = match &entitlements {
            Some(xml) => canonical_entitlements(xml).map_err(|e| {
                Error::Verification(format!(
                    "the embedded entitlements are not a valid plist: {e}"
                ))
            })?,
            None => String::new(),
        };
        if actual != expected {
            return Err(Error::Verification(format!(
                "the entitlements differ from the expected ones: signed with {}",
                if actual.is_empty() {
                    "none".to_string()
                } else {
                    actual
                }
            )));
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
        .ok_or_else(|| Error::Verification("the code signature is truncated".into()))?;
    if superblob_len > size {
        return Err(Error::Verification(format!(
            "the signature blob claims {superblob_len} bytes but LC_CODE_SIGNATURE holds {size}"
        )));
    }
    if let Some(at) = region[superblob_len as usize..]
        .iter()
        .position(|&b| b != 0)
    {
        return Err(Error::Verification(format!(
            "byte {} after the signature blob is not padding: data there is not signed",
            start + superblob_len + at as u64
        )));
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
    let signed_data = signature
        .signed_data()?
        .ok_or_else(|| Error::Verification("the CMS signature is empty".into()))?;
    let signers: Vec<_> = signed_data.signers().collect();
    let [signer] = signers.as_slice() else {
        return Err(Error::Verification(format!(
            "the CMS signature has {} signers; exactly one is expected",
            signers.len()
        )));
    };
    signer
        .verify_message_digest_with_content(directory_blob)
        .map_err(|e| {
            Error::Verification(format!(
                "the CMS signature is not over this file's code directory: {e}"
            ))
        })?;
    signer
        .verify_signature_with_signed_data(&signed_data)
        .map_err(|e| Error::Verification(format!("the CMS signature does not verify: {e}")))?;
    let (issuer, serial) = signer.certificate_issuer_and_serial().ok_or_else(|| {
        Error::Verification("the CMS signer is not identified by issuer and serial number".into())
    })?;
    let embedded = EmbeddedCms::parse(cms)?;
    let certificates = &embedded.certificates;
    let leaf = certificates
        .iter()
        .find(|c| c.issuer_name() == issuer && c.serial_number_asn1() == serial)
        .ok_or_else(|| {
            Error::Verification("the signing certificate is not embedded in the signature".into())
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
        return Err(Error::Verification(format!(
            "{} is not a Developer ID Application certificate; Apple notarizes only files \
             signed with one (Certificates, Identifiers & Profiles → Developer ID Application)",
            describe_certificate(leaf)
        )));
    }
    chain::check_chain(leaf, certificates, anchors(policy.roots.as_deref()), at).map_err(|e| {
        match e {
            ChainError::Untrusted { .. } => Error::Verification(format!(
                "the signing certificate {} does not chain to a trusted root: {e}",
                describe_certificate(leaf)
            )),
            other => Error::Verification(format!("signing certificate chain: {other}")),
        }
    })?;
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
/// [`restore_certificates`]), so an ECDSA chain read through it never verifies. These types
/// read DER only; apple-codesign writes DER.
struct EmbeddedCms {
    certificates: Vec<CapturedX509Certificate>,
    timestamp: Option<TimestampToken>,
}

impl EmbeddedCms {
    fn parse(cms: &[u8]) -> Result<Self> {
        let unreadable = |e: der::Error| {
            Error::Verification(format!("the CMS signature is not readable DER: {e}"))
        };
        let info = ContentInfo::from_der(cms).map_err(unreadable)?;
        let signed: SignedData = info.content.decode_as().map_err(unreadable)?;
        let mut certificates = Vec::new();
        for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
            if let CertificateChoices::Certificate(certificate) = choice {
                let der = certificate.to_der().map_err(unreadable)?;
                certificates.push(CapturedX509Certificate::from_der(der).map_err(|e| {
                    Error::Verification(format!("an embedded certificate is unreadable: {e}"))
                })?);
            }
        }
        let timestamp = match signed.signer_infos.0.get(0) {
            None => None,
            Some(signer) => signer
                .unsigned_attrs
                .iter()
                .flat_map(|attributes| attributes.iter())
                .find(|attribute| attribute.oid == ID_AA_TIME_STAMP_TOKEN)
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
    what: &str,
) -> Result<()> {
    let parsed = x509_cert::Certificate::from_der(certificate.constructed_data()).map_err(|e| {
        Error::Verification(format!(
            "certificate {} is unreadable: {e}",
            describe_certificate(certificate)
        ))
    })?;
    let usages = parsed
        .tbs_certificate
        .get::<ExtendedKeyUsage>()
        .map_err(|e| Error::Verification(format!("extended key usage unreadable: {e}")))?;
    match usages {
        Some((_, ExtendedKeyUsage(oids)))
            if !oids.contains(&usage) && !oids.contains(&ANY_EXTENDED_KEY_USAGE) =>
        {
            Err(Error::Verification(format!(
                "certificate {} is not for {what} (extended key usage)",
                describe_certificate(certificate)
            )))
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
fn canonical_entitlements(xml: &str) -> std::result::Result<String, String> {
    let mut settings = SigningSettings::default();
    settings
        .set_entitlements_xml(SettingsScope::Main, xml)
        .map_err(|e| e.to_string())?;
    Ok(settings
        .entitlements_xml(SettingsScope::Main)
        .map_err(|e| e.to_string())?
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
/// Parses a thin 64-bit Mach-O, refusing anything else by name.
fn parse_thin(data: &[u8]) -> Result<MachO<'_>> {
    match Mach::parse(data) {
        Ok(Mach::Binary(macho)) if macho.is_64 => Ok(macho),
        Ok(Mach::Binary(_)) => Err(Error::Unsupported(
            "32-bit Mach-O files are not supported".into(),
        )),
        Ok(Mach::Fat(_)) => Err(Error::Unsupported(
            "universal (fat) Mach-O files are not supported: sign each architecture's thin file"
                .into(),
        )),
        Err(e) => Err(Error::Unsupported(format!(
            "not a Mach-O file goblin can parse: {e}"
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apple_codesign::macho_builder::MachOBuilder;
    use goblin::mach::header::MH_EXECUTE;

    /// A small unsigned executable, as apple-codesign's own tests build them.
    pub(crate) fn unsigned_macho() -> Vec<u8> {
        MachOBuilder::new_aarch64(MH_EXECUTE).write_macho().unwrap()
    }

    fn has_signature(data: &[u8]) -> bool {
        MachOBinary::parse(data)
            .unwrap()
            .code_signature()
            .unwrap()
            .is_some()
    }

    #[test]
    fn signing_adds_a_signature_that_ends_the_file() {
        let unsigned = unsigned_macho();
        check_macho_layout(&unsigned).unwrap();
        assert!(!has_signature(&unsigned));
        let signed = sign_adhoc(&unsigned, "test").unwrap();
        assert!(has_signature(&signed));
        check_macho_layout(&signed).unwrap();
        verify(&signed).unwrap();
        // Everything before __LINKEDIT is hashed, not changed.
        let linkedit = MachO::parse(&unsigned, 0)
            .unwrap()
            .segments
            .iter()
            .find(|s| s.name().ok() == Some(LINKEDIT))
            .unwrap()
            .fileoff as usize;
        assert!(signed[0x1000..linkedit] == unsigned[0x1000..linkedit]);
    }

    #[test]
    fn signing_is_deterministic_and_resigning_replaces() {
        let unsigned = unsigned_macho();
        let once = sign_adhoc(&unsigned, "test").unwrap();
        assert_eq!(once, sign_adhoc(&unsigned, "test").unwrap());
        let twice = sign_adhoc(&once, "test").unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn only_a_bun_executable_has_a_stale_tail() {
        // Signed, bytes after __LINKEDIT, but no __BUN segment: those bytes may be a payload
        // someone appended on purpose, so they are not a stale tail and signing refuses them.
        // (A real Bun executable with a tail: tests/tests/signing.rs.)
        let mut signed = sign_adhoc(&unsigned_macho(), "test").unwrap();
        assert_eq!(stale_tail(&signed).unwrap(), None);
        signed.extend_from_slice(&[0xAB; 100]);
        assert_eq!(stale_tail(&signed).unwrap(), None);
        assert!(sign_adhoc(&signed, "test").is_err());
    }

    #[test]
    fn appended_bytes_are_caught_before_and_after_signing() {
        let mut unsigned = unsigned_macho();
        unsigned.push(0);
        let err = sign_adhoc(&unsigned, "test").unwrap_err();
        assert!(matches!(err, Error::Layout(_)), "{err}");
        assert!(
            err.to_string()
                .contains("1 bytes follow the end of __LINKEDIT"),
            "{err}"
        );

        let mut signed = sign_adhoc(&unsigned_macho(), "test").unwrap();
        signed.extend_from_slice(b"extra");
        let err = check_macho_layout(&signed).unwrap_err();
        assert!(err.to_string().contains("5 bytes follow"), "{err}");
    }

    #[test]
    fn a_signature_that_is_not_last_is_caught() {
        let mut signed = sign_adhoc(&unsigned_macho(), "test").unwrap();
        // Grow __LINKEDIT by 16 bytes without moving the signature.
        let macho = MachO::parse(&signed, 0).unwrap();
        let linkedit = macho
            .segments
            .iter()
            .find(|s| s.name().ok() == Some(LINKEDIT))
            .unwrap();
        let filesize_at = linkedit_command_offset(&macho) + 48;
        let filesize = linkedit.filesize + 16;
        signed[filesize_at..filesize_at + 8].copy_from_slice(&filesize.to_le_bytes());
        signed.extend_from_slice(&[0; 16]);
        let err = check_macho_layout(&signed).unwrap_err();
        assert!(
            err.to_string().contains("the signature must be last"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_page_fails_verification() {
        let mut signed = sign_adhoc(&unsigned_macho(), "test").unwrap();
        let err = verify(&unsigned_macho()).unwrap_err();
        assert!(matches!(err, Error::Verification(_)), "unsigned: {err}");
        // The last byte before __LINKEDIT: covered by the code directory's page digests.
        let linkedit = MachO::parse(&signed, 0)
            .unwrap()
            .segments
            .iter()
            .find(|s| s.name().ok() == Some(LINKEDIT))
            .unwrap()
            .fileoff as usize;
        signed[linkedit - 1] ^= 1;
        let err = verify(&signed).unwrap_err();
        assert!(matches!(err, Error::Verification(_)), "{err}");
    }

    #[test]
    fn non_macho_input_is_unsupported() {
        let err = check_macho_layout(b"\x7fELF and then some").unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
    }

    #[test]
    fn files_are_signed_in_place_with_their_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openwork-server-v2");
        fs_err::write(&path, unsigned_macho()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        sign_adhoc_file(&path, &path, None).unwrap();
        let signed = fs_err::read(&path).unwrap();
        assert!(has_signature(&signed));
        let binary = MachOBinary::parse(&signed).unwrap();
        let signature = binary.code_signature().unwrap().unwrap();
        let directory = signature.code_directory().unwrap().unwrap();
        assert_eq!(directory.ident, "openwork-server-v2");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs_err::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    /// A self-signed identity whose subject has `organizational_unit`.
    #[cfg(feature = "testing")]
    fn identity_with_ou(organizational_unit: &str) -> SigningIdentity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Developer ID Application: Test");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, organizational_unit);
        let certificate = params.self_signed(&key).unwrap();
        let signer =
            x509_certificate::InMemorySigningKeyPair::from_pkcs8_der(key.serialize_der()).unwrap();
        SigningIdentity::new(
            Box::new(signer),
            CapturedX509Certificate::from_der(certificate.der().to_vec()).unwrap(),
            Vec::new(),
        )
        .unwrap()
    }

    /// Notarization wants a Developer ID Application certificate: Apple marks those with
    /// an extension, which the policy looks for (a name that says so is not enough).
    #[cfg(feature = "testing")]
    #[test]
    fn a_developer_id_certificate_is_told_by_its_extension() {
        let policy = MachOPolicy {
            require_developer_id: true,
            ..MachOPolicy::default()
        };
        let options = MachOSignOptions {
            identifier: Some("opencode".into()),
            hardened_runtime: true,
            entitlements: None,
            timestamp_url: None,
        };
        let named_only = identity_with_ou("ABCDE12345");
        let signed = sign_with_identity(&unsigned_macho(), &named_only, &options).unwrap();
        let error = verify_macho(&signed, &policy).unwrap_err().to_string();
        assert!(error.contains("not a Developer ID Application"), "{error}");

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Developer ID Application: Test");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        // 1.2.840.113635.100.6.1.13, value NULL, as Apple issues it.
        let mut marker = rcgen::CustomExtension::from_oid_content(
            &[1, 2, 840, 113635, 100, 6, 1, 13],
            vec![5, 0],
        );
        marker.set_criticality(true);
        params.custom_extensions.push(marker);
        let certificate = params.self_signed(&key).unwrap();
        let developer_id = SigningIdentity::new(
            Box::new(
                x509_certificate::InMemorySigningKeyPair::from_pkcs8_der(key.serialize_der())
                    .unwrap(),
            ),
            CapturedX509Certificate::from_der(certificate.der().to_vec()).unwrap(),
            Vec::new(),
        )
        .unwrap();
        let signed = sign_with_identity(&unsigned_macho(), &developer_id, &options).unwrap();
        verify_macho(&signed, &policy).expect("a Developer ID certificate passes");
    }

    #[cfg(feature = "testing")]
    #[test]
    fn the_team_id_comes_from_an_organizational_unit_shaped_like_one() {
        let options = MachOSignOptions {
            identifier: Some("test".into()),
            ..MachOSignOptions::default()
        };
        for (organizational_unit, team_id) in [
            ("ABCDE12345", Some("ABCDE12345")),
            ("Engineering", None),
            ("abcde12345", None),
        ] {
            let identity = identity_with_ou(organizational_unit);
            let signed = sign_with_identity(&unsigned_macho(), &identity, &options).unwrap();
            let verified = verify_macho(&signed, &MachOPolicy::default()).unwrap();
            assert_eq!(
                verified.team_id.as_deref(),
                team_id,
                "{organizational_unit}"
            );
        }
    }

    fn linkedit_command_offset(macho: &MachO<'_>) -> usize {
        macho
            .load_commands
            .iter()
            .find(|c| match &c.command {
                CommandVariant::Segment64(s) => s.segname.starts_with(LINKEDIT.as_bytes()),
                _ => false,
            })
            .unwrap()
            .offset
    }
}
