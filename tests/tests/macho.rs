//! Mach-O end to end, on real stubs cross-linked for both darwin targets: build a region
//! with real content, inject it, find and extract it with the runtime's own locator, then
//! ad-hoc sign the packed file and find it again. Signing must not move or drop the
//! payload, and the layout check must catch what apple-codesign's verifier does not.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use goblin::mach::MachO;
use goblin::mach::load_command::CommandVariant;
use openwork_payload::container::{self, Arch, ExecutableFormat, macho};
use openwork_payload::{Error, archive};
use openwork_signer::entitlements;
use openwork_signer::macho::{
    CapturedX509Certificate, MachOPolicy, MachOSignOptions, sign_with_identity, verify_macho,
};
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::{SignatureState, check_macho_layout, sign_adhoc};
use openwork_tests::fixtures::{pseudo_random, region_from_sidecars};

#[test]
fn darwin_arm64_packed_then_signed_keeps_its_payload() {
    pack_sign_and_locate("darwin-arm64", Arch::Aarch64);
}

#[test]
fn darwin_x64_packed_then_signed_keeps_its_payload() {
    pack_sign_and_locate("darwin-x64", Arch::X86_64);
}

#[test]
fn injecting_twice_is_refused() {
    let stub = read(&openwork_tests::stub_for("darwin-arm64"));
    let (region, _) = real_region("darwin-arm64", 7);
    let packed = container::inject(&stub, &region).unwrap();
    let err = container::inject(&packed, &region).unwrap_err();
    assert!(matches!(err, Error::Executable(_)), "{err}");
    assert!(err.to_string().contains("already"), "{err}");
    // The format module refuses on its own too, not only through the locator.
    let err = macho::inject(&packed, &region).unwrap_err();
    assert!(err.to_string().contains(macho::SEGMENT_NAME), "{err}");
}

#[test]
fn a_flipped_byte_in_the_region_is_rejected() {
    let stub = read(&openwork_tests::stub_for("darwin-x64"));
    let (region, _) = real_region("darwin-x64", 11);
    let packed = container::inject(&stub, &region).unwrap();
    let (_, located) = container::locate(&packed).unwrap();
    let payload_at = located.payload_offset as usize;
    let manifest_at = located.manifest_offset as usize;
    let trailer_at = located.trailer_offset as usize;

    // In the payload: found, but its hash no longer matches (checked while extracting,
    // or on demand).
    let mut damaged = packed.clone();
    damaged[payload_at + located.payload.len() / 2] ^= 0x01;
    let (_, found) = container::locate(&damaged).unwrap();
    let err = found.verify_payload().unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(archive::extract(found.payload, &found.trailer, &found.manifest, dir.path()).is_err());

    // In the manifest or the trailer: refused by the locator itself.
    for at in [manifest_at + 2, trailer_at + 5] {
        let mut damaged = packed.clone();
        damaged[at] ^= 0x01;
        let err = container::locate(&damaged).unwrap_err();
        assert!(
            matches!(err, Error::ChecksumMismatch { .. } | Error::Corrupt { .. }),
            "flip at {at}: {err}"
        );
    }
}

#[test]
fn locating_reads_only_the_headers_of_a_large_file() {
    let stub = read(&openwork_tests::stub_for("darwin-arm64"));
    // A region of the real payload's size class; locating must not touch it.
    let mut region = vec![0u8; 64 << 20];
    let (small, _) = real_region("darwin-arm64", 3);
    let at = region.len() - small.len();
    region[at..].copy_from_slice(&small);
    let packed = container::inject(&stub, &region).unwrap();
    let mut times = Vec::new();
    for _ in 0..200 {
        let start = std::time::Instant::now();
        let bounds = macho::region_bounds(&packed).unwrap();
        times.push(start.elapsed());
        assert_eq!(bounds.len(), region.len());
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "macho::region_bounds on a {} MB file: median {median:?}",
        packed.len() >> 20
    );
    assert!(
        median < std::time::Duration::from_millis(1),
        "median {median:?}"
    );
}

/// The whole path for one target, checking every promise on the way.
fn pack_sign_and_locate(target: &str, arch: Arch) {
    let stub = read(&openwork_tests::stub_for(target));
    let info = container::identify(&stub).unwrap();
    assert_eq!((info.format, info.arch), (ExecutableFormat::MachO, arch));
    let before = Layout::of(&stub);

    let (region, sidecars) = real_region(target, 1);
    let packed = container::inject(&stub, &region).unwrap();

    // The runtime's locator finds exactly the region, in the new segment.
    let (format, located) = container::locate(&packed).unwrap();
    assert_eq!(format, ExecutableFormat::MachO);
    located.verify_payload().unwrap();
    let span = located.span();
    same(
        &packed[span.start as usize..span.end as usize],
        &region,
        "region",
    );
    assert_eq!(
        span.start, before.linkedit.start as u64,
        "region at __LINKEDIT's old offset"
    );
    let dir = tempfile::tempdir().unwrap();
    let stats = archive::extract(
        located.payload,
        &located.trailer,
        &located.manifest,
        dir.path(),
    )
    .unwrap();
    assert_eq!(stats.files, sidecars.len());
    for (name, bytes) in &sidecars {
        let entry = &located.manifest.files[name];
        same(&read(&entry.path_in(dir.path())), bytes, name);
    }

    // goblin reads the packed file; our segment sits right before __LINKEDIT, read-only.
    let after = Layout::of(&packed);
    let n = after.segments.len();
    assert_eq!(n, before.segments.len() + 1);
    assert_eq!(after.segments[..n - 2], before.segments[..n - 2]);
    assert_eq!(after.segments[n - 2..], [macho::SEGMENT_NAME, "__LINKEDIT"]);
    assert_eq!(
        after.payload_prot,
        Some((1, 1)),
        "maxprot and initprot read-only"
    );
    assert!(
        !after.signed,
        "the linker's signature is removed before injecting"
    );

    // Code and data are byte-for-byte the stub's; __LINKEDIT is the stub's minus its
    // signature, moved by whole pages.
    let code_and_data = before.content_start..before.linkedit.start;
    same(
        &packed[code_and_data.clone()],
        &stub[code_and_data.clone()],
        "__TEXT and __DATA",
    );
    let kept = before.linkedit.start..before.signature_start.unwrap_or(before.linkedit.end);
    same(&packed[after.linkedit.clone()], &stub[kept], "__LINKEDIT");
    assert_eq!(after.linkedit.end, packed.len());
    assert_eq!((after.linkedit.start - before.linkedit.start) % 0x4000, 0);

    // Ad-hoc signing hashes the region in place; the locator still finds it.
    let signed = sign_adhoc(&packed, "openwork-server-v2").unwrap();
    check_macho_layout(&signed).unwrap();
    openwork_signer::verify(&signed).unwrap();
    let identity = openwork_signer::identify(&signed).unwrap();
    assert_eq!(identity.signature, SignatureState::AdHoc);
    let (_, relocated) = container::locate(&signed).unwrap();
    relocated.verify_payload().unwrap();
    assert_eq!(relocated.span(), span, "signing moved the region");
    assert_eq!(relocated.manifest, located.manifest);
    let signed_layout = Layout::of(&signed);
    assert!(signed_layout.signed);
    assert_eq!(signed_layout.segments, after.segments);
    same(
        &signed[before.content_start..after.linkedit.start],
        &packed[before.content_start..after.linkedit.start],
        "code, data and payload after signing",
    );

    // The signature covers the payload: a changed byte in it fails verification.
    let mut tampered = signed.clone();
    tampered[(span.start + span.end) as usize / 2] ^= 1;
    let err = openwork_signer::verify(&tampered).unwrap_err();
    assert!(
        matches!(err, openwork_signer::Error::Verification(_)),
        "{err}"
    );

    // A byte appended after signing is neither signed nor noticed by apple-codesign's
    // verifier; the layout check catches it.
    let mut appended = signed.clone();
    appended.push(0);
    let err = check_macho_layout(&appended).unwrap_err();
    assert!(matches!(err, openwork_signer::Error::Layout(_)), "{err}");
}

/// The facts about a Mach-O the test compares before and after.
struct Layout {
    segments: Vec<String>,
    /// File range of __LINKEDIT.
    linkedit: Range<usize>,
    /// Where the first section's content starts (end of the header padding).
    content_start: usize,
    signed: bool,
    signature_start: Option<usize>,
    payload_prot: Option<(u32, u32)>,
}

impl Layout {
    fn of(data: &[u8]) -> Layout {
        let macho = MachO::parse(data, 0).expect("goblin parses the file");
        let mut segments = Vec::new();
        let mut linkedit = 0..0;
        let mut content_start = usize::MAX;
        let mut payload_prot = None;
        for segment in macho.segments.iter() {
            let name = segment.name().unwrap().to_string();
            if name == "__LINKEDIT" {
                linkedit = segment.fileoff as usize..(segment.fileoff + segment.filesize) as usize;
            }
            if name == macho::SEGMENT_NAME {
                payload_prot = Some((segment.maxprot, segment.initprot));
            }
            for (section, _) in segment.sections().unwrap() {
                if section.offset != 0 && section.size != 0 {
                    content_start = content_start.min(section.offset as usize);
                }
            }
            segments.push(name);
        }
        let signature_start = macho.load_commands.iter().find_map(|c| match &c.command {
            CommandVariant::CodeSignature(sig) => Some(sig.dataoff as usize),
            _ => None,
        });
        Layout {
            segments,
            linkedit,
            content_start,
            signed: signature_start.is_some(),
            signature_start,
            payload_prot,
        }
    }
}

/// A region carrying two pseudo-random sidecars, built the way the packager builds one.
/// Returns it and the sidecars.
fn real_region(target: &str, seed: u64) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let sidecars = vec![
        ("opencode".to_string(), pseudo_random(300_000, seed)),
        (
            "opencode-router".to_string(),
            pseudo_random(20_000, seed + 1),
        ),
    ];
    let region = region_from_sidecars(target, &sidecars, dir.path());
    (region, sidecars.into_iter().collect())
}

/// Asserts two byte ranges are equal, naming the first difference instead of printing
/// megabytes.
fn same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at} of {}", actual.len());
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn darwin_arm64_signed_with_an_rsa_certificate_verifies_and_keeps_its_payload() {
    sign_with_certificate_and_verify(
        "darwin-arm64",
        KeyKind::Rsa2048,
        entitlements::Role::BunSidecar,
    );
}

#[test]
fn darwin_x64_signed_with_an_ecdsa_certificate_verifies_and_keeps_its_payload() {
    sign_with_certificate_and_verify("darwin-x64", KeyKind::EcdsaP256, entitlements::Role::Stub);
}

/// A packed stub signed for release (certificate, hardened runtime, entitlements, a
/// timestamp from the in-process TSA): our verifier passes it under the release policy,
/// the payload is still found and verified, and every kind of tampering fails.
fn sign_with_certificate_and_verify(target: &str, kind: KeyKind, role: entitlements::Role) {
    let pki = TestPki::generate(kind);
    let tsa = TestTsa::start(&pki);
    let stub = read(&openwork_tests::stub_for(target));
    let (region, _) = real_region(target, 5);
    let packed = container::inject(&stub, &region).unwrap();
    let (_, located) = container::locate(&packed).unwrap();
    let span = located.span();
    let expected_entitlements = entitlements::for_role(role).map(str::to_owned);
    let options = MachOSignOptions {
        identifier: Some("openwork-server-v2".into()),
        hardened_runtime: true,
        entitlements: expected_entitlements.clone(),
        timestamp_url: Some(tsa.url()),
    };
    let started = std::time::Instant::now();
    let signed = sign_with_identity(&packed, &pki.signing_identity(), &options).unwrap();
    let signing = started.elapsed();
    let root = |der: &[u8]| CapturedX509Certificate::from_der(der.to_vec()).unwrap();
    let policy = MachOPolicy {
        entitlements: expected_entitlements.clone(),
        ..MachOPolicy::notarizable(vec![root(&pki.ca.der)], vec![root(&pki.tsa_ca.der)])
    };

    let started = std::time::Instant::now();
    let verified = verify_macho(&signed, &policy).unwrap_or_else(|e| panic!("{target}: {e}"));
    eprintln!(
        "{target} ({kind:?}, {} KB): signed with a timestamp in {signing:?}, verified in {:?}",
        signed.len() >> 10,
        started.elapsed()
    );
    assert_eq!(verified.identifier, "openwork-server-v2");
    assert!(verified.hardened_runtime());
    assert!(verified.timestamp.is_some());
    assert_eq!(
        verified.entitlements.is_some(),
        expected_entitlements.is_some()
    );
    assert!(
        verified
            .signer
            .as_deref()
            .unwrap()
            .contains("openwork test code signing")
    );
    assert_eq!(
        openwork_signer::identify(&signed).unwrap().signature,
        SignatureState::Certificate
    );

    // The runtime's locator still finds the payload where it was, intact.
    let (_, relocated) = container::locate(&signed).unwrap();
    relocated.verify_payload().unwrap();
    assert_eq!(relocated.span(), span, "signing moved the region");

    let fails = |data: &[u8], policy: &MachOPolicy, what: &str| {
        let err = verify_macho(data, policy)
            .err()
            .unwrap_or_else(|| panic!("{target}: {what} verified"));
        assert!(
            matches!(
                err,
                openwork_signer::Error::Verification(_) | openwork_signer::Error::Layout(_)
            ),
            "{target}: {what}: {err}"
        );
        err.to_string()
    };
    let linkedit = Layout::of(&signed).linkedit.start;
    let text = Layout::of(&signed).content_start;
    let mut code = signed.clone();
    code[text + 16] ^= 1;
    fails(&code, &policy, "a flipped byte in __TEXT");
    let mut payload = signed.clone();
    payload[(span.start + span.end) as usize / 2] ^= 1;
    let err = fails(&payload, &policy, "a flipped byte in the payload");
    assert!(err.contains("digest"), "{err}");
    assert!(
        span.end as usize <= linkedit,
        "the payload is before __LINKEDIT"
    );
    let mut appended = signed.clone();
    appended.push(0);
    fails(&appended, &policy, "an appended byte");

    let other = TestPki::generate(KeyKind::EcdsaP256);
    let wrong_root = MachOPolicy {
        roots: Some(vec![root(&other.ca.der)]),
        ..policy.clone()
    };
    let err = fails(&signed, &wrong_root, "another root");
    assert!(err.contains("does not chain"), "{err}");

    let adhoc = sign_adhoc(&packed, "openwork-server-v2").unwrap();
    let err = fails(&adhoc, &policy, "ad-hoc");
    assert!(err.contains("ad-hoc"), "{err}");

    // Bytes after __LINKEDIT (a payload appended the ELF way) are refused before signing,
    // instead of being dropped by apple-codesign.
    let mut trailing = packed.clone();
    trailing.extend_from_slice(&region[..64]);
    let err = sign_with_identity(&trailing, &pki.signing_identity(), &options).unwrap_err();
    assert!(
        matches!(err, openwork_signer::Error::Layout(_)),
        "{target}: {err}"
    );
    assert_eq!(tsa.requests(), 1, "refused before asking the TSA");
}
