use apple_codesign::MachOBinary;
use goblin::mach::MachO;
use goblin::mach::load_command::CommandVariant;

use super::layout::LINKEDIT;
use super::*;
use crate::error::Error;
use crate::key::SigningIdentity;
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
        fs_err::read_dir(dir.path()).unwrap().count(),
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
    let mut marker =
        rcgen::CustomExtension::from_oid_content(&[1, 2, 840, 113635, 100, 6, 1, 13], vec![5, 0]);
    marker.set_criticality(true);
    params.custom_extensions.push(marker);
    let certificate = params.self_signed(&key).unwrap();
    let developer_id = SigningIdentity::new(
        Box::new(
            x509_certificate::InMemorySigningKeyPair::from_pkcs8_der(key.serialize_der()).unwrap(),
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
