//! Authenticode signing and verification checked against osslsigncode, on small PE files
//! cross-compiled with mingw-w64 at test time and given an overlay (where the payload of a
//! packed executable lives).
//!
//! Needs `x86_64-w64-mingw32-gcc`, `i686-w64-mingw32-gcc` and `osslsigncode`; a missing
//! tool fails the test with the package to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use openwork_signer::Error;
use openwork_signer::authenticode::{self, SignOptions, TrustAnchors};
use openwork_signer::testing::noise;
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::timestamp::TimestampConfig;
use sha2::{Digest, Sha256};
use x509_certificate::CapturedX509Certificate;

/// Size of the overlay given to the test executables: a few KB, odd, so that signing must
/// pad.
const OVERLAY_LEN: usize = 5 * 1024 + 3;

#[derive(Debug, Clone, Copy)]
enum Arch {
    /// PE32+, `x86_64-w64-mingw32-gcc`.
    X64,
    /// PE32, `i686-w64-mingw32-gcc`.
    X86,
}

fn require_tool(name: &str, package: &str) {
    let found = Command::new(name).arg("--version").output().is_ok();
    assert!(
        found,
        "`{name}` is needed by this test and was not found on PATH: install it (apt-get install {package})"
    );
}

/// A freshly linked console program, without overlay, built once per architecture.
fn bare_executable(arch: Arch) -> &'static [u8] {
    static X64: OnceLock<Vec<u8>> = OnceLock::new();
    static X86: OnceLock<Vec<u8>> = OnceLock::new();
    let (cell, compiler) = match arch {
        Arch::X64 => (&X64, "x86_64-w64-mingw32-gcc"),
        Arch::X86 => (&X86, "i686-w64-mingw32-gcc"),
    };
    cell.get_or_init(|| {
        require_tool(compiler, "mingw-w64");
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("hello.c");
        std::fs::write(
            &source,
            "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        )
        .expect("write hello.c");
        let exe = dir.path().join("hello.exe");
        let output = Command::new(compiler)
            .arg("-O2")
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .output()
            .expect("run the mingw compiler");
        assert!(
            output.status.success(),
            "{compiler} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read(&exe).expect("read hello.exe")
    })
}

/// The program with an overlay of deterministic noise.
fn executable(arch: Arch) -> Vec<u8> {
    let mut pe = bare_executable(arch).to_vec();
    pe.extend_from_slice(&noise("overlay", OVERLAY_LEN));
    pe
}

/// A test PKI, its files and a scratch directory.
struct Fixture {
    dir: tempfile::TempDir,
    pki: TestPki,
    ca_pem: PathBuf,
    tsa_ca_pem: PathBuf,
    key_pem: PathBuf,
    chain_pem: PathBuf,
}

impl Fixture {
    fn new(kind: KeyKind) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(kind);
        let files = pki.write_files(dir.path()).expect("write the PKI");
        Fixture {
            dir,
            pki,
            ca_pem: files.ca_pem,
            tsa_ca_pem: files.tsa_ca_pem,
            key_pem: files.key_pem,
            chain_pem: files.chain_pem,
        }
    }

    fn trust(&self) -> TrustAnchors {
        TrustAnchors::parse(self.pki.ca.pem.as_bytes(), self.pki.tsa_ca.der.as_slice())
            .expect("trust anchors")
    }

    fn sign(&self, pe: &[u8], options: &SignOptions) -> Vec<u8> {
        authenticode::sign(pe, &self.pki.signing_identity(), options).expect("sign")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs with osslsigncode, as a reference signer.
    fn osslsigncode_sign(&self, pe: &[u8]) -> Vec<u8> {
        self.osslsigncode_sign_with(pe, &[])
    }

    /// Signs with osslsigncode, with extra arguments.
    fn osslsigncode_sign_with(&self, pe: &[u8], extra: &[&str]) -> Vec<u8> {
        require_tool("osslsigncode", "osslsigncode");
        let input = self.path("reference-in.exe");
        let output = self.path("reference-out.exe");
        std::fs::write(&input, pe).unwrap();
        let _ = std::fs::remove_file(&output);
        let run = Command::new("osslsigncode")
            .args(["sign", "-h", "sha256", "-certs"])
            .arg(&self.chain_pem)
            .arg("-key")
            .arg(&self.key_pem)
            .arg("-in")
            .arg(&input)
            .arg("-out")
            .arg(&output)
            .args(extra)
            .output()
            .expect("run osslsigncode");
        assert!(run.status.success(), "osslsigncode sign: {}", text(&run));
        std::fs::read(&output).unwrap()
    }

    /// `osslsigncode verify -CAfile <ca> [-TSA-CAfile <tsa ca>]`: success and output.
    fn osslsigncode_verify(&self, pe: &[u8], ca: &Path) -> (bool, String) {
        require_tool("osslsigncode", "osslsigncode");
        let file = self.path("verify.exe");
        std::fs::write(&file, pe).unwrap();
        let run = Command::new("osslsigncode")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg("-TSA-CAfile")
            .arg(&self.tsa_ca_pem)
            .arg("-in")
            .arg(&file)
            .output()
            .expect("run osslsigncode");
        (run.status.success(), text(&run))
    }
}

fn certificate(der: &[u8]) -> CapturedX509Certificate {
    CapturedX509Certificate::from_der(der.to_vec()).expect("certificate")
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The value after `label` on its line of osslsigncode's output.
fn field<'a>(output: &'a str, label: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim())
}

/// The CheckSum field of a PE file.
fn checksum_field(pe: &[u8]) -> u32 {
    let at = pe_header(pe) + 24 + 64;
    u32::from_le_bytes(pe[at..at + 4].try_into().unwrap())
}

fn pe_header(pe: &[u8]) -> usize {
    u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize
}

/// File offset of the Security directory entry.
fn security_entry_offset(pe: &[u8]) -> usize {
    let optional = pe_header(pe) + 24;
    let magic = u16::from_le_bytes([pe[optional], pe[optional + 1]]);
    let directories = optional + if magic == 0x20b { 112 } else { 96 };
    directories + 4 * 8
}

/// The Security directory entry: (file offset, size) of the certificate table.
fn security_entry(pe: &[u8]) -> (usize, usize) {
    let at = security_entry_offset(pe);
    let read = |at: usize| u32::from_le_bytes(pe[at..at + 4].try_into().unwrap()) as usize;
    (read(at), read(at + 4))
}

/// Asserts that both verifiers accept `signed` and that osslsigncode computes our digest
/// and our checksum.
fn assert_verifies(fixture: &Fixture, signed: &[u8]) {
    let ours = authenticode::verify(signed, &fixture.trust()).expect("our verify");
    assert!(
        ours.signer.contains("openwork test code signing"),
        "{ours:?}"
    );
    let (ok, output) = fixture.osslsigncode_verify(signed, &fixture.ca_pem);
    assert!(ok, "osslsigncode verify failed:\n{output}");
    assert_eq!(
        field(&output, "Calculated message digest").map(str::to_lowercase),
        Some(ours.digest_hex()),
        "{output}"
    );
    assert_eq!(
        field(&output, "PE checksum"),
        Some(format!("{:08X}", checksum_field(signed)).as_str()),
        "osslsigncode prints one checksum when the stored one is right:\n{output}"
    );
}

#[test]
fn signed_pe32_plus_files_verify_with_rsa_and_ecdsa_keys() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let fixture = Fixture::new(kind);
        let signed = fixture.sign(&executable(Arch::X64), &SignOptions::default());
        assert_verifies(&fixture, &signed);
    }
}

#[test]
fn signed_pe32_files_verify() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let signed = fixture.sign(&executable(Arch::X86), &SignOptions::default());
    assert_verifies(&fixture, &signed);
}

#[test]
fn the_layout_is_as_signers_write_it() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let input = executable(Arch::X64);
    assert_ne!(input.len() % 8, 0, "the input must need padding");
    let signed = fixture.sign(&input, &SignOptions::default());
    let (start, size) = security_entry(&signed);
    assert_eq!(start, input.len().next_multiple_of(8));
    assert_eq!(start + size, signed.len(), "the table is last");
    assert_eq!(size % 8, 0);
    let checksum = pe_header(&input) + 24 + 64;
    let security = security_entry_offset(&input);
    let changed: Vec<usize> = (0..input.len())
        .filter(|&i| signed[i] != input[i])
        .collect();
    assert!(
        changed.iter().all(
            |&i| (checksum..checksum + 4).contains(&i) || (security..security + 8).contains(&i)
        ),
        "only CheckSum and the Security entry change before the table: {changed:x?}"
    );
    let header = &signed[start..start + 8];
    assert_eq!(
        u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize,
        size
    );
    assert_eq!(
        header[4..8],
        [0x00, 0x02, 0x02, 0x00],
        "revision 2.0, PKCS#7"
    );
    assert!(signed[input.len()..start].iter().all(|b| *b == 0));
}

#[test]
fn the_checksum_is_written_also_where_the_input_had_none() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let mut input = executable(Arch::X64);
    let at = pe_header(&input) + 24 + 64;
    input[at..at + 4].fill(0);
    let signed = fixture.sign(&input, &SignOptions::default());
    assert_ne!(checksum_field(&signed), 0);
    // osslsigncode does the same with the same input, and agrees on the value.
    let reference = fixture.osslsigncode_sign(&input);
    assert_ne!(checksum_field(&reference), 0);
    assert_verifies(&fixture, &signed);
}

#[test]
fn our_digest_matches_osslsigncode_and_we_verify_its_signatures() {
    for arch in [Arch::X64, Arch::X86] {
        let fixture = Fixture::new(KeyKind::Rsa2048);
        let input = executable(arch);
        let reference = fixture.osslsigncode_sign(&input);
        let (ok, output) = fixture.osslsigncode_verify(&reference, &fixture.ca_pem);
        assert!(ok, "{output}");
        let digest = authenticode::digest(&reference).expect("digest");
        assert_eq!(
            field(&output, "Calculated message digest").map(str::to_lowercase),
            Some(hex::encode(digest)),
            "{arch:?}: {output}"
        );
        let verified = authenticode::verify(&reference, &fixture.trust()).expect("verify");
        assert_eq!(verified.digest, digest);
        assert!(verified.timestamp.is_none());
        // Our own signature of the same input covers the same bytes.
        let ours = fixture.sign(&input, &SignOptions::default());
        assert_eq!(authenticode::digest(&ours).unwrap(), digest, "{arch:?}");
    }
}

#[test]
fn a_changed_overlay_byte_fails_both_verifiers() {
    let fixture = Fixture::new(KeyKind::EcdsaP256);
    let input = executable(Arch::X64);
    let mut signed = fixture.sign(&input, &SignOptions::default());
    signed[input.len() - 100] ^= 0x01;
    let error = authenticode::verify(&signed, &fixture.trust()).unwrap_err();
    assert!(
        matches!(&error, Error::Verification(m) if m.to_string().contains("changed after it was signed")),
        "{error}"
    );
    let (ok, output) = fixture.osslsigncode_verify(&signed, &fixture.ca_pem);
    assert!(!ok, "osslsigncode accepted a changed file:\n{output}");
}

#[test]
fn bytes_after_the_certificate_table_are_refused() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let mut signed = fixture.sign(&executable(Arch::X64), &SignOptions::default());
    signed.push(0);
    let error = authenticode::verify(&signed, &fixture.trust()).unwrap_err();
    assert!(
        matches!(&error, Error::Verification(m) if m.to_string().contains("1 bytes follow the certificate table")),
        "{error}"
    );
}

#[test]
fn signing_is_deterministic_and_re_signing_replaces() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let input = executable(Arch::X64);
    let options = SignOptions {
        description: Some("openwork server".into()),
        url: Some("https://openwork.invalid/".into()),
        timestamp: None,
    };
    let once = fixture.sign(&input, &options);
    assert_eq!(
        fixture.sign(&input, &options),
        once,
        "same input, same bytes"
    );
    assert_eq!(fixture.sign(&once, &options), once, "re-signing replaces");

    // A signature by someone else is replaced too, leaving only ours.
    let reference = fixture.osslsigncode_sign(&input);
    let replaced = fixture.sign(&reference, &options);
    assert_eq!(replaced, once);
    let (ok, output) = fixture.osslsigncode_verify(&replaced, &fixture.ca_pem);
    assert!(ok, "{output}");
    assert_eq!(field(&output, "Number of verified signatures"), Some("1"));
    assert_eq!(
        field(&output, "Text description"),
        Some("openwork server"),
        "{output}"
    );
    assert_eq!(
        field(&output, "URL description"),
        Some("https://openwork.invalid/"),
        "{output}"
    );
}

#[test]
fn a_wrong_ca_fails_with_a_clear_error() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let other = Fixture::new(KeyKind::Rsa2048);
    let signed = fixture.sign(&executable(Arch::X64), &SignOptions::default());
    let error = authenticode::verify(&signed, &other.trust()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::Verification(_))
            && message.contains("does not chain to a trusted CA")
            && message.contains("openwork test code signing CA"),
        "{message}"
    );
    let (ok, output) = fixture.osslsigncode_verify(&signed, &other.ca_pem);
    assert!(!ok, "{output}");
}

#[test]
fn a_certificate_without_code_signing_usage_is_refused() {
    // The time-stamping root's TSA leaf signs fine but is not for code.
    let fixture = Fixture::new(KeyKind::EcdsaP256);
    let chain = format!("{}{}", fixture.pki.tsa.pem, fixture.pki.tsa_ca.pem);
    let identity =
        openwork_signer::key::pem::load(fixture.pki.tsa.key_pem.as_bytes(), chain.as_bytes())
            .unwrap();
    let signed =
        authenticode::sign(&executable(Arch::X64), &identity, &SignOptions::default()).unwrap();
    let trust = TrustAnchors {
        code_signing: vec![certificate(&fixture.pki.tsa_ca.der)],
        ..TrustAnchors::default()
    };
    let error = authenticode::verify(&signed, &trust)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not for code signing"), "{error}");
}

#[test]
fn unsigned_truncated_and_foreign_files_are_errors_not_panics() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let input = executable(Arch::X64);
    let error = authenticode::verify(&input, &fixture.trust()).unwrap_err();
    assert!(error.to_string().contains("not signed"), "{error}");

    let signed = fixture.sign(&input, &SignOptions::default());
    let (start, _) = security_entry(&signed);
    // Cut inside the table, inside the overlay, inside the sections, inside the headers.
    for len in [signed.len() - 1, start + 4, 0x3000, 0x100, 0x3c, 0] {
        let cut = &signed[..len];
        let verify = authenticode::verify(cut, &fixture.trust());
        assert!(verify.is_err(), "verify accepted {len} bytes");
        let sign = authenticode::sign(
            cut,
            &fixture.pki.signing_identity(),
            &SignOptions::default(),
        );
        let error = sign.expect_err("signed a truncated file").to_string();
        if len > start {
            assert!(error.contains("past the end"), "{len}: {error}");
        }
    }
    let error = authenticode::digest(b"#!/bin/sh\necho not a PE\n").unwrap_err();
    assert!(matches!(error, Error::Unsupported(_)), "{error}");

    // A damaged WIN_CERTIFICATE header.
    let mut damaged = signed.clone();
    damaged[start + 6] = 0x01;
    let error = authenticode::verify(&damaged, &fixture.trust()).unwrap_err();
    assert!(error.to_string().contains("WIN_CERTIFICATE"), "{error}");
}

#[test]
fn a_signed_packed_executable_still_finds_and_verifies_its_payload() {
    use openwork_payload::container;
    use openwork_payload::manifest::{FileEntry, Manifest};
    use openwork_payload::region::build_region;

    let fixture = Fixture::new(KeyKind::Rsa2048);
    let payload = noise("payload", 64 * 1024 + 5);
    let manifest = Manifest {
        manifest_version: 1,
        server_version: "0.1.0".into(),
        opencode_version: "1.18.32".into(),
        router_version: Some("0.1.0".into()),
        target: "windows-x64".into(),
        files: [(
            "opencode".to_string(),
            FileEntry {
                path: "bin/opencode.exe".into(),
                size: payload.len() as u64,
                sha256: hex::encode(Sha256::digest(&payload)),
                mode: 0o755,
            },
        )]
        .into(),
    };
    let region = build_region(&payload, &manifest.to_json(), payload.len() as u64);
    let packed = container::inject(bare_executable(Arch::X64), &region).expect("inject");
    let signed = fixture.sign(&packed, &SignOptions::default());
    assert_verifies(&fixture, &signed);

    let (format, located) = container::locate(&signed).expect("locate after signing");
    assert_eq!(format, container::ExecutableFormat::Pe);
    assert_eq!(located.payload, payload.as_slice());
    located.verify_payload().expect("payload hash");
    let (start, _) = security_entry(&signed);
    assert!(
        located.span().end <= start as u64,
        "the region is inside the signed part"
    );
}

fn timestamping(tsa: &TestTsa) -> SignOptions {
    SignOptions {
        timestamp: Some(TimestampConfig {
            urls: vec![tsa.url()],
            attempts: 1,
            timeout: std::time::Duration::from_secs(10),
        }),
        ..SignOptions::default()
    }
}

#[test]
fn time_stamped_signatures_verify_with_both_verifiers() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let fixture = Fixture::new(kind);
        let tsa = TestTsa::start(&fixture.pki);
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
        let signed = fixture.sign(&executable(Arch::X64), &timestamping(&tsa));
        assert_eq!(tsa.requests(), 1);
        assert_verifies(&fixture, &signed);
        let verified = authenticode::verify(&signed, &fixture.trust()).unwrap();
        let timestamp = verified.timestamp.expect("a time-stamp");
        assert!(
            timestamp.authority.contains("openwork test TSA"),
            "{timestamp:?}"
        );
        assert!(timestamp.time >= before, "{timestamp:?}");
        let (_, output) = fixture.osslsigncode_verify(&signed, &fixture.ca_pem);
        assert!(
            output.contains("Timestamp Server Signature verification: ok"),
            "{kind:?}: {output}"
        );
    }
}

#[test]
fn we_verify_osslsigncode_time_stamps() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let tsa = TestTsa::start(&fixture.pki);
    let url = tsa.url();
    let signed = fixture.osslsigncode_sign_with(&executable(Arch::X64), &["-ts", &url]);
    let verified = authenticode::verify(&signed, &fixture.trust()).expect("verify");
    assert!(verified.timestamp.is_some());
}

#[test]
fn a_time_stamp_from_an_untrusted_authority_fails() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let tsa = TestTsa::start(&fixture.pki);
    let signed = fixture.sign(&executable(Arch::X64), &timestamping(&tsa));
    let mut trust = fixture.trust();
    trust.time_stamping = vec![certificate(&fixture.pki.ca.der)];
    let error = authenticode::verify(&signed, &trust).unwrap_err();
    assert!(
        matches!(&error, Error::Verification(m) if m.to_string().starts_with("the time-stamp")),
        "{error}"
    );
}

#[test]
fn an_unreachable_time_stamp_authority_fails_signing() {
    let fixture = Fixture::new(KeyKind::Rsa2048);
    let tsa = TestTsa::start(&fixture.pki);
    let options = timestamping(&tsa);
    drop(tsa);
    let error = authenticode::sign(
        &executable(Arch::X64),
        &fixture.pki.signing_identity(),
        &options,
    )
    .unwrap_err();
    assert!(matches!(error, Error::Network(_)), "{error}");
}

/// Damage anywhere in the headers or the start of the signature gives errors (or, where
/// the byte does not matter, a result), never a panic.
#[test]
fn damaged_headers_and_signatures_never_panic() {
    let fixture = Fixture::new(KeyKind::EcdsaP256);
    let signed = fixture.sign(&executable(Arch::X64), &SignOptions::default());
    let identity = fixture.pki.signing_identity();
    let trust = fixture.trust();
    let (table, _) = security_entry(&signed);
    let offsets = (0..0x400).chain(table..table + 96);
    let checksum = pe_header(&signed) + 24 + 64..pe_header(&signed) + 24 + 68;
    for at in offsets {
        for value in [0x00, 0x7f, 0xff] {
            let mut damaged = signed.clone();
            if damaged[at] == value {
                continue;
            }
            damaged[at] = value;
            // Whatever they return, none of them may panic.
            let digest = authenticode::digest(&damaged);
            let verified = authenticode::verify(&damaged, &trust);
            let _ = authenticode::sign(&damaged, &identity, &SignOptions::default());
            // Only the CheckSum field is outside the signature.
            match verified {
                Ok(verified) => {
                    assert!(
                        checksum.contains(&at),
                        "a change at {at:#x} (table at {table:#x}) to {value:#x} verified"
                    );
                    assert_eq!(Some(verified.digest), digest.ok());
                }
                Err(_) => assert!(!checksum.contains(&at), "{at:#x}"),
            }
        }
    }
}
