//! Signing: ad-hoc and with a certificate, in memory and file to file. The layout is
//! checked before and after, and the certificates apple-codesign re-encoded are repaired.

use std::path::Path;

use apple_codesign::{CodeSignatureFlags, MachOSigner, SettingsScope, SigningSettings};
use der::Decode;
use der::asn1::ObjectIdentifier;
use x509_certificate::CapturedX509Certificate;

use super::layout::check_macho_layout;
use super::repair::restore_certificates;
use crate::error::{ConfigError, Error, NetworkError, Result, UnsupportedError};
use crate::key::SigningIdentity;

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
            .ok_or_else(|| {
                UnsupportedError::NoFileName {
                    path: input.to_owned(),
                }
                .into()
            }),
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
        let _ = fs_err::remove_file(&temporary);
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
    let identifier = options
        .identifier
        .as_deref()
        .ok_or(ConfigError::NoIdentifier)?;
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
            .map_err(|e| ConfigError::Entitlements {
                whose: "the entitlements",
                source: e.into(),
            })?;
    }
    if let Some(url) = &options.timestamp_url {
        settings
            .set_time_stamp_url(url.as_str())
            .map_err(|e| ConfigError::TimestampUrl {
                url: url.clone(),
                source: e.into(),
            })?;
    }
    let mut signed = Vec::with_capacity(data.len() + data.len() / 64 + 64 * 1024);
    signer
        .write_signed_binary(&settings, &mut signed)
        .map_err(|e| signing_error(e, options.timestamp_url.as_deref()))?;
    restore_certificates(&mut signed, identity)?;
    check_macho_layout(&signed)?;
    Ok(signed)
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
    match (error, timestamp_url) {
        (apple_codesign::AppleCodesignError::Cms(cms), Some(url))
            if cms.to_string().starts_with("Time-Stamp Protocol error") =>
        {
            NetworkError::CodesignTimestamp {
                url: url.to_owned(),
                source: cms.into(),
            }
            .into()
        }
        (error, _) => error.into(),
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
