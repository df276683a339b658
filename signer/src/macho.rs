//! Ad-hoc Apple code signing of Mach-O files, and the layout check that must surround it.
//!
//! An ad-hoc signature is a code directory (page hashes of the file up to the signature)
//! without a certificate. arm64 macOS refuses to run unsigned code, so every Mach-O we
//! ship or test is at least ad-hoc signed; releases are re-signed with a certificate.
//!
//! apple-codesign is used because it signs from any OS. It has two blind spots that
//! [`check_macho_layout`] covers, before and after signing: it silently drops bytes that
//! follow `__LINKEDIT` (a payload appended there would vanish), and its verifier passes a
//! file with bytes appended after the signature (unsigned data would go unnoticed).

use std::path::Path;

use apple_codesign::{
    MachOBinary, MachOSigner, SettingsScope, SigningSettings, VerificationProblemType,
    verify_macho_data,
};
use goblin::mach::load_command::CommandVariant;
use goblin::mach::{Mach, MachO};

use crate::error::{Error, Result};

const LINKEDIT: &str = "__LINKEDIT";

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

/// Verifies a signed thin Mach-O: [`check_macho_layout`], then apple-codesign's verifier,
/// which recomputes the digest of every page up to the signature and of the special slots
/// and compares them with the code directory. A missing certificate is not a failure here:
/// ad-hoc signatures have none, and whether one is required is the caller's policy (see
/// [`crate::identify()`]).
pub fn verify(data: &[u8]) -> Result<()> {
    check_macho_layout(data)?;
    // Ad-hoc signatures carry an empty CMS blob, which the verifier reports as missing or
    // unparseable.
    let adhoc = !has_cms_signature(data)?;
    let problems: Vec<String> = verify_macho_data(data)
        .into_iter()
        .filter(|p| {
            !(adhoc
                && matches!(
                    p.problem,
                    VerificationProblemType::NoCryptographicSignature
                        | VerificationProblemType::CmsError(_)
                ))
        })
        .map(|p| p.to_string())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Verification(problems.join("; ")))
    }
}

/// Ad-hoc signs the Mach-O at `input` into `output` (which may be the same path). The
/// identifier defaults to the input's file name. `output` is written under a temporary
/// name and renamed into place, with the input's permissions, so that it is never seen
/// half-written.
pub fn sign_adhoc_file(input: &Path, output: &Path, identifier: Option<&str>) -> Result<()> {
    let data = fs_err::read(input)?;
    let identifier = match identifier {
        Some(id) => id.to_string(),
        None => input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Unsupported(format!("{} has no file name", input.display())))?,
    };
    let signed = sign_adhoc(&data, &identifier)?;
    let permissions = fs_err::metadata(input)?.permissions();
    let mut temporary = output.as_os_str().to_owned();
    temporary.push(format!(".signing-{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let written = fs_err::write(&temporary, &signed)
        .and_then(|()| fs_err::set_permissions(&temporary, permissions))
        .and_then(|()| fs_err::rename(&temporary, output));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(written?)
}

/// Whether a Mach-O's embedded signature holds a (non-empty) CMS blob, that is, a
/// certificate signature rather than an ad-hoc one.
pub(crate) fn has_cms_signature(data: &[u8]) -> Result<bool> {
    let binary = MachOBinary::parse(data)?;
    let Some(signature) = binary.code_signature()? else {
        return Ok(false);
    };
    Ok(signature
        .signature_data()?
        .is_some_and(|cms| !cms.is_empty()))
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
