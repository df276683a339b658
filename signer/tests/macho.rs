//! Certificate signing and verification of Mach-O files on a small executable built by
//! apple-codesign's `MachOBuilder`, with the throwaway PKI and the in-process TSA. (The real
//! cross-linked stubs with a payload are signed in the workspace's tests/tests/macho.rs.)
#![cfg(feature = "testing")]

use std::sync::OnceLock;

use apple_codesign::macho_builder::MachOBuilder;
use apple_codesign::{CodeSignatureFlags, verify_macho_data};
use goblin::mach::MachO;
use goblin::mach::header::MH_EXECUTE;
use goblin::mach::load_command::CommandVariant;
use openwork_signer::entitlements::{self, Role};
use openwork_signer::macho::{
    MachOPolicy, MachOSignOptions, sign_with_identity, sign_with_identity_file, verify_macho,
};
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::{Error, SignatureState, identify, sign_adhoc};
use x509_certificate::CapturedX509Certificate;

fn unsigned_macho() -> Vec<u8> {
    MachOBuilder::new_aarch64(MH_EXECUTE).write_macho().unwrap()
}

/// One PKI per key type for the whole test binary: RSA key generation is slow.
fn pki(kind: KeyKind) -> &'static TestPki {
    static RSA: OnceLock<TestPki> = OnceLock::new();
    static ECDSA: OnceLock<TestPki> = OnceLock::new();
    match kind {
        KeyKind::Rsa2048 => RSA.get_or_init(|| TestPki::generate(kind)),
        KeyKind::EcdsaP256 => ECDSA.get_or_init(|| TestPki::generate(kind)),
    }
}

fn certificate(der: &[u8]) -> CapturedX509Certificate {
    CapturedX509Certificate::from_der(der.to_vec()).unwrap()
}

fn release_options(tsa: &TestTsa) -> MachOSignOptions {
    MachOSignOptions {
        identifier: Some("opencode".into()),
        hardened_runtime: true,
        entitlements: entitlements::for_role(Role::BunSidecar).map(str::to_owned),
        timestamp_url: Some(tsa.url()),
    }
}

/// The small executable signed as a release sidecar with `kind`'s PKI (certificate,
/// hardened runtime, Bun entitlements, a time stamp from a TSA that lives just for it).
fn release_signed(kind: KeyKind) -> (&'static TestPki, Vec<u8>) {
    let pki = pki(kind);
    let tsa = TestTsa::start(pki);
    let signed = sign_with_identity(
        &unsigned_macho(),
        &pki.signing_identity(),
        &release_options(&tsa),
    )
    .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    (pki, signed)
}

/// The policy a notarized Bun sidecar must meet, under `pki`'s roots.
fn release_policy(pki: &TestPki) -> MachOPolicy {
    MachOPolicy {
        entitlements: entitlements::for_role(Role::BunSidecar).map(str::to_owned),
        ..MachOPolicy::notarizable(
            vec![certificate(&pki.ca.der)],
            vec![certificate(&pki.tsa_ca.der)],
        )
    }
}

fn linkedit_offset(data: &[u8]) -> usize {
    MachO::parse(data, 0)
        .unwrap()
        .segments
        .iter()
        .find(|s| s.name().ok() == Some("__LINKEDIT"))
        .unwrap()
        .fileoff as usize
}

fn signature_range(data: &[u8]) -> (usize, usize) {
    MachO::parse(data, 0)
        .unwrap()
        .load_commands
        .iter()
        .find_map(|c| match &c.command {
            CommandVariant::CodeSignature(s) => Some((s.dataoff as usize, s.datasize as usize)),
            _ => None,
        })
        .unwrap()
}

fn verification_error(data: &[u8], policy: &MachOPolicy) -> String {
    match verify_macho(data, policy) {
        Ok(verified) => panic!("verified: {verified:?}"),
        Err(e @ (Error::Verification(_) | Error::Layout(_))) => e.to_string(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn signed_with_rsa_and_ecdsa_keys_verifies_against_the_release_policy() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let pki = pki(kind);
        let tsa = TestTsa::start(pki);
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
        let signed = sign_with_identity(
            &unsigned_macho(),
            &pki.signing_identity(),
            &release_options(&tsa),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(tsa.requests(), 1, "{kind:?}: one time stamp");
        let verified =
            verify_macho(&signed, &release_policy(pki)).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(verified.identifier, "opencode");
        assert!(verified.hardened_runtime(), "{kind:?}");
        assert!(!verified.flags.contains(CodeSignatureFlags::ADHOC));
        assert_eq!(verified.team_id, None, "the test certificate has no OU");
        let subject = verified.signer.as_deref().unwrap();
        assert!(
            subject.contains("CN=openwork test code signing"),
            "{subject}"
        );
        let entitlements = verified.entitlements.as_deref().unwrap();
        assert!(
            entitlements.contains("com.apple.security.cs.allow-jit"),
            "{entitlements}"
        );
        let stamped = verified.timestamp.expect("a verified timestamp");
        assert!(
            stamped >= before && stamped <= std::time::SystemTime::now(),
            "{stamped:?}"
        );
        assert_eq!(
            identify(&signed).unwrap().signature,
            SignatureState::Certificate,
            "{kind:?}"
        );
        openwork_signer::verify(&signed).unwrap();
    }
}

#[test]
fn a_flipped_byte_in_code_fails() {
    let (pki, signed) = release_signed(KeyKind::EcdsaP256);
    let mut tampered = signed.clone();
    tampered[linkedit_offset(&signed) - 1] ^= 1;
    let err = verification_error(&tampered, &release_policy(pki));
    assert!(err.contains("digest"), "{err}");
    // In the load commands (page 0) too.
    let mut tampered = signed.clone();
    tampered[40] ^= 0x80;
    verification_error(&tampered, &MachOPolicy::any_signature());
}

#[test]
fn one_appended_byte_fails_although_apple_codesign_passes_it() {
    let (pki, mut signed) = release_signed(KeyKind::EcdsaP256);
    signed.push(0);
    assert!(
        verify_macho_data(&signed).is_empty(),
        "apple-codesign's blind spot"
    );
    let err = verification_error(&signed, &release_policy(pki));
    assert!(
        err.contains("1 bytes follow the end of __LINKEDIT"),
        "{err}"
    );
}

#[test]
fn data_in_the_signature_padding_fails_although_apple_codesign_passes_it() {
    let (_, mut signed) = release_signed(KeyKind::EcdsaP256);
    let (start, size) = signature_range(&signed);
    let last = start + size - 1;
    assert_eq!(
        signed[last], 0,
        "apple-codesign pads the signature with zeros"
    );
    signed[last] = 0x41;
    assert!(
        verify_macho_data(&signed).is_empty(),
        "apple-codesign's blind spot"
    );
    let err = verification_error(&signed, &MachOPolicy::any_signature());
    assert!(err.contains("is not padding"), "{err}");
}

/// A code directory changed after signing (its identifier, here) still has valid page and
/// slot hashes; only the CMS message digest shows that it is not what was signed, and
/// apple-codesign's verifier does not compare them.
#[test]
fn a_code_directory_that_is_not_the_signed_one_fails() {
    let (_, mut signed) = release_signed(KeyKind::EcdsaP256);
    let (start, size) = signature_range(&signed);
    let at = start
        + signed[start..start + size]
            .windows(9)
            .position(|w| w == b"opencode\0")
            .expect("the identifier in the code directory");
    signed[at] = b'e';
    assert!(
        verify_macho_data(&signed).is_empty(),
        "apple-codesign's blind spot"
    );
    let err = verification_error(&signed, &MachOPolicy::any_signature());
    assert!(err.contains("not over this file's code directory"), "{err}");
}

#[test]
fn a_certificate_from_another_root_fails() {
    let (pki, signed) = release_signed(KeyKind::EcdsaP256);
    let other = TestPki::generate(KeyKind::EcdsaP256);
    let mut policy = release_policy(pki);
    policy.roots = Some(vec![certificate(&other.ca.der)]);
    let err = verification_error(&signed, &policy);
    assert!(err.contains("does not chain to a trusted root"), "{err}");
    // The time-stamping root is not a code-signing root, and the other way round.
    let mut policy = release_policy(pki);
    policy.roots = Some(vec![certificate(&pki.tsa_ca.der)]);
    verification_error(&signed, &policy);
    let mut policy = release_policy(pki);
    policy.tsa_roots = Some(vec![certificate(&pki.ca.der)]);
    verification_error(&signed, &policy);
}

#[test]
fn ad_hoc_is_refused_when_a_certificate_is_required() {
    let pki = pki(KeyKind::EcdsaP256);
    let signed = sign_adhoc(&unsigned_macho(), "opencode").unwrap();
    let verified = verify_macho(&signed, &MachOPolicy::any_signature()).unwrap();
    assert_eq!(verified.signer, None);
    assert!(verified.flags.contains(CodeSignatureFlags::ADHOC));
    let err = verification_error(&signed, &release_policy(pki));
    assert!(err.contains("ad-hoc"), "{err}");
    let err = verification_error(&unsigned_macho(), &MachOPolicy::any_signature());
    assert!(err.contains("no code signature"), "{err}");
}

#[test]
fn the_policy_catches_runtime_entitlements_and_timestamp() {
    let pki = pki(KeyKind::EcdsaP256);
    let tsa = TestTsa::start(pki);
    let identity = pki.signing_identity();
    let sign = |options: MachOSignOptions| {
        sign_with_identity(&unsigned_macho(), &identity, &options).unwrap()
    };

    let no_runtime = sign(MachOSignOptions {
        hardened_runtime: false,
        ..release_options(&tsa)
    });
    let err = verification_error(&no_runtime, &release_policy(pki));
    assert!(err.contains("hardened runtime"), "{err}");

    let stub_entitlements = sign(MachOSignOptions {
        entitlements: entitlements::for_role(Role::Stub).map(str::to_owned),
        ..release_options(&tsa)
    });
    let err = verification_error(&stub_entitlements, &release_policy(pki));
    assert!(err.contains("entitlements differ"), "{err}");
    let verified = verify_macho(
        &stub_entitlements,
        &MachOPolicy {
            entitlements: None,
            ..release_policy(pki)
        },
    )
    .unwrap();
    assert_eq!(verified.entitlements, None);

    let no_timestamp = sign(MachOSignOptions {
        timestamp_url: None,
        ..release_options(&tsa)
    });
    let err = verification_error(&no_timestamp, &release_policy(pki));
    assert!(err.contains("no secure timestamp"), "{err}");
    let verified = verify_macho(
        &no_timestamp,
        &MachOPolicy {
            require_timestamp: false,
            ..release_policy(pki)
        },
    )
    .unwrap();
    assert_eq!(verified.timestamp, None);
}

#[test]
fn entitlements_compare_as_plists_not_as_text() {
    let (pki, signed) = release_signed(KeyKind::EcdsaP256);
    let reformatted = entitlements::BUN_SIDECAR
        .replace('\t', "        ")
        .replace("<true/>", "<true />");
    verify_macho(
        &signed,
        &MachOPolicy {
            entitlements: Some(reformatted),
            ..release_policy(pki)
        },
    )
    .unwrap();
}

#[test]
fn input_with_bytes_after_linkedit_is_refused_before_signing() {
    let pki = pki(KeyKind::EcdsaP256);
    let mut unsigned = unsigned_macho();
    unsigned.extend_from_slice(b"payload");
    let options = MachOSignOptions {
        identifier: Some("x".into()),
        ..MachOSignOptions::default()
    };
    let err = sign_with_identity(&unsigned, &pki.signing_identity(), &options).unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{err}");
    assert!(err.to_string().contains("7 bytes follow"), "{err}");
}

#[test]
fn an_unreachable_time_stamp_authority_is_a_network_error() {
    let pki = pki(KeyKind::EcdsaP256);
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = MachOSignOptions {
        identifier: Some("x".into()),
        timestamp_url: Some(format!("http://127.0.0.1:{port}/")),
        ..MachOSignOptions::default()
    };
    let err = sign_with_identity(&unsigned_macho(), &pki.signing_identity(), &options).unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn an_identifier_is_required_in_memory() {
    let pki = pki(KeyKind::EcdsaP256);
    let err = sign_with_identity(
        &unsigned_macho(),
        &pki.signing_identity(),
        &MachOSignOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn files_are_signed_with_their_name_and_permissions() {
    let pki = pki(KeyKind::Rsa2048);
    let tsa = TestTsa::start(pki);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("opencode-router");
    let output = dir.path().join("signed");
    fs_err::write(&input, unsigned_macho()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&input, std::fs::Permissions::from_mode(0o751)).unwrap();
    }
    let options = MachOSignOptions {
        identifier: None,
        ..release_options(&tsa)
    };
    sign_with_identity_file(&input, &output, &pki.signing_identity(), &options).unwrap();
    let verified = verify_macho(&fs_err::read(&output).unwrap(), &release_policy(pki)).unwrap();
    assert_eq!(verified.identifier, "opencode-router");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(&output).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o751);
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary left"
    );
}

#[test]
fn universal_binaries_are_refused() {
    let pki = pki(KeyKind::EcdsaP256);
    let thin = unsigned_macho();
    let mut builder = apple_codesign::UniversalBinaryBuilder::default();
    builder.add_binary(&thin).unwrap();
    builder
        .add_binary(MachOBuilder::new_x86_64(MH_EXECUTE).write_macho().unwrap())
        .unwrap();
    let mut fat = Vec::new();
    builder.write(&mut fat).unwrap();
    let options = MachOSignOptions {
        identifier: Some("x".into()),
        ..MachOSignOptions::default()
    };
    let err = sign_with_identity(&fat, &pki.signing_identity(), &options).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("universal"), "{err}");
}

/// OpenSSL, independently of our code, accepts the CMS signature we write: over the code
/// directory, by the leaf, chaining to the root, for both key types.
#[test]
fn openssl_verifies_the_cms_signature_over_the_code_directory() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let (pki, signed) = release_signed(kind);
        let binary = apple_codesign::MachOBinary::parse(&signed).unwrap();
        let signature = binary.code_signature().unwrap().unwrap();
        let directory = signature
            .find_slot(apple_codesign::CodeSigningSlot::CodeDirectory)
            .unwrap()
            .data;
        let cms = signature.signature_data().unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_files(dir.path()).unwrap();
        fs_err::write(dir.path().join("cms.der"), cms).unwrap();
        fs_err::write(dir.path().join("cd.bin"), directory).unwrap();
        let verify = |content: &str| {
            std::process::Command::new("openssl")
                .args([
                    "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
                ])
                .args([
                    "-in",
                    "cms.der",
                    "-content",
                    content,
                    "-out",
                    "/dev/null",
                    "-CAfile",
                ])
                .arg(&files.ca_pem)
                .current_dir(dir.path())
                .output()
                .expect("run openssl")
        };
        let output = verify("cd.bin");
        assert!(
            output.status.success(),
            "{kind:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut other = directory.to_vec();
        *other.last_mut().unwrap() ^= 1;
        fs_err::write(dir.path().join("other.bin"), other).unwrap();
        assert!(!verify("other.bin").status.success(), "{kind:?}");
    }
}

/// Why the signer puts the certificates back after apple-codesign: alone, it re-encodes
/// ECDSA certificates so that they no longer verify.
#[test]
fn apple_codesign_alone_breaks_ecdsa_certificates() {
    let pki = pki(KeyKind::EcdsaP256);
    let identity = pki.signing_identity();
    let unsigned = unsigned_macho();
    let signer = apple_codesign::MachOSigner::new(&unsigned).unwrap();
    let mut settings = apple_codesign::SigningSettings::default();
    settings.set_binary_identifier(apple_codesign::SettingsScope::Main, "x");
    settings.set_signing_key(identity.key(), identity.certificate().clone());
    settings.chain_certificate(certificate(&pki.ca.der));
    let mut signed = Vec::new();
    signer.write_signed_binary(&settings, &mut signed).unwrap();
    assert!(
        !signed
            .windows(pki.code_signing.der.len())
            .any(|w| w == pki.code_signing.der.as_slice()),
        "the leaf is not embedded as issued"
    );
    let policy = MachOPolicy {
        roots: Some(vec![certificate(&pki.ca.der)]),
        ..MachOPolicy::default()
    };
    let err = verification_error(&signed, &policy);
    assert!(err.contains("does not chain"), "{err}");

    let ours = sign_with_identity(
        &unsigned,
        &identity,
        &MachOSignOptions {
            identifier: Some("x".into()),
            ..MachOSignOptions::default()
        },
    )
    .unwrap();
    assert!(
        ours.windows(pki.code_signing.der.len())
            .any(|w| w == pki.code_signing.der.as_slice())
    );
    verify_macho(&ours, &policy).unwrap();
}
