//! The PE container end to end, on the real runtime stub cross-linked for `windows-x64`:
//! pack, find, verify and extract; then sign (with osslsigncode, and with our own
//! Authenticode signer; the PKI is the signer's test PKI, made at test time) and do it all
//! again; then damage the signed file and check that both our verifier and Authenticode
//! notice.
//!
//! Needs `cargo-zigbuild` (or mingw-w64) for the stub and the `osslsigncode` command line
//! tool; a missing tool fails the test with a hint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use openwork_payload::archive;
use openwork_payload::container::{self, ExecutableFormat};
use openwork_payload::region::REGION_ALIGN;
use openwork_payload::{Error, PayloadRegion};
use openwork_signer::authenticode::{self, SignOptions, TrustAnchors};
use openwork_signer::testing::noise;
use openwork_signer::testing::pki::TestPkiFiles;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_tests::fixtures::region_from_sidecars;
use openwork_tests::require_tool;
use tempfile::TempDir;

const TARGET: &str = "windows-x64";

/// The unsigned Windows stub's bytes, built once per test process.
fn stub() -> &'static [u8] {
    static STUB: OnceLock<Vec<u8>> = OnceLock::new();
    STUB.get_or_init(|| std::fs::read(openwork_tests::stub_for(TARGET)).expect("read the stub"))
}

/// A test's working directory, its sidecars and the region made of them.
struct Packing {
    dir: TempDir,
    /// Logical name and contents of each sidecar.
    sidecars: Vec<(String, Vec<u8>)>,
    region: Vec<u8>,
}

impl Packing {
    /// Two sidecars of odd sizes, a manifest for `windows-x64`, tar, zstd, region.
    fn new() -> Packing {
        let dir = tempfile::tempdir().expect("temp dir");
        let sidecars = vec![
            ("opencode".to_string(), noise("opencode", 256 * 1024 + 1001)),
            (
                "opencode-router".to_string(),
                noise("router", 10 * 1024 + 3),
            ),
        ];
        let region = region_from_sidecars(TARGET, &sidecars, dir.path());
        Packing {
            dir,
            sidecars,
            region,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Extracts `region` into a fresh directory and compares every file with its source.
    fn assert_extracts(&self, region: &PayloadRegion<'_>, into: &str) {
        let dest = self.path(into);
        std::fs::create_dir(&dest).expect("create extraction dir");
        let stats = archive::extract(region.payload, &region.trailer, &region.manifest, &dest)
            .expect("extract the payload");
        assert_eq!(stats.files, self.sidecars.len());
        for (name, bytes) in &self.sidecars {
            let entry = &region.manifest.files[name];
            let extracted = std::fs::read(entry.path_in(&dest)).expect("read extracted file");
            assert!(extracted == *bytes, "{name} differs after extraction");
        }
    }

    /// A fresh code-signing PKI, written into the working directory for osslsigncode.
    fn pki(&self) -> TestPkiFiles {
        TestPki::generate(KeyKind::Rsa2048)
            .write_files(self.dir.path())
            .expect("write the test PKI")
    }

    /// Signs `input` into `output` with osslsigncode (SHA-256, no timestamp).
    fn sign(&self, pki: &TestPkiFiles, input: &Path, output: &Path) {
        let out = osslsigncode()
            .args(["sign", "-h", "sha256", "-n", "openwork-server-v2 test"])
            .arg("-certs")
            .arg(&pki.chain_pem)
            .arg("-key")
            .arg(&pki.key_pem)
            .arg("-in")
            .arg(input)
            .arg("-out")
            .arg(output)
            .output()
            .expect("run osslsigncode sign");
        assert!(
            out.status.success(),
            "osslsigncode sign failed:\n{}",
            show(&out)
        );
    }
}

fn osslsigncode() -> Command {
    require_tool("osslsigncode", "install it (apt: osslsigncode)");
    Command::new("osslsigncode")
}

/// `osslsigncode verify` against the test CA only.
fn verify(pki: &TestPkiFiles, file: &Path) -> Output {
    osslsigncode()
        .arg("verify")
        .arg("-CAfile")
        .arg(&pki.ca_pem)
        .arg("-in")
        .arg(file)
        .output()
        .expect("run osslsigncode verify")
}

fn show(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The file range of the certificate table, per goblin's reading of the Security directory.
fn certificate_table(pe: &goblin::pe::PE<'_>) -> Option<std::ops::Range<usize>> {
    let dir = pe
        .header
        .optional_header?
        .data_directories
        .get_certificate_table()
        .copied()?;
    let start = dir.virtual_address as usize;
    Some(start..start + dir.size as usize)
}

/// Offsets of the optional header's CheckSum and of the Security directory entry.
fn header_fields(data: &[u8]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let pe = u32::from_le_bytes(data[0x3c..0x40].try_into().unwrap()) as usize;
    let optional = pe + 4 + 20;
    let checksum = optional + 64;
    let security = optional + 112 + 4 * 8; // PE32+
    (checksum..checksum + 4, security..security + 8)
}

fn pack(packing: &Packing, stub: &[u8]) -> Vec<u8> {
    let packed = container::inject(stub, &packing.region).expect("inject into the PE stub");
    std::fs::write(packing.path("packed.exe"), &packed).expect("write packed.exe");
    packed
}

/// The signed file's payload is where the unsigned one's was, intact, and extracts (into
/// `label`).
fn assert_payload_survived_signing(packing: &Packing, packed: &[u8], signed: &[u8], label: &str) {
    let (_, region) = container::locate(signed).expect("locate in the signed file");
    let (_, unsigned_region) = container::locate(packed).unwrap();
    assert_eq!(region.span(), unsigned_region.span());
    region
        .verify_payload()
        .expect("payload checksum after signing");
    packing.assert_extracts(&region, label);
}

#[test]
fn unsigned_packed_stub_yields_its_payload() {
    let packing = Packing::new();
    let stub = stub();
    let packed = pack(&packing, stub);

    // The stub's bytes are untouched: its checksum is zero, so not even that changes.
    assert_eq!(&packed[..stub.len()], stub);
    let (format, region) = container::locate(&packed).expect("locate the payload");
    assert_eq!(format, ExecutableFormat::Pe);
    assert_eq!(region.payload_offset % REGION_ALIGN as u64, 0);
    assert_eq!(region.span().end as usize, packed.len());
    assert_eq!(&packed[region.span().start as usize..], &packing.region[..]);
    region.verify_payload().expect("payload checksum");
    assert_eq!(region.manifest.target, TARGET);
    packing.assert_extracts(&region, "unsigned");

    // An independent full parse still sees the same executable.
    let before = goblin::pe::PE::parse(stub).expect("goblin parses the stub");
    let after = goblin::pe::PE::parse(&packed).expect("goblin parses the packed file");
    assert_eq!(after.entry, before.entry);
    assert_eq!(after.sections, before.sections);
    assert_eq!(after.libraries, before.libraries);
    assert!(after.certificates.is_empty());
    assert_eq!(
        container::identify(&packed).unwrap().format,
        ExecutableFormat::Pe
    );
}

#[test]
fn signed_packed_stub_verifies_and_yields_its_payload() {
    let packing = Packing::new();
    let pki = packing.pki();
    let packed = pack(&packing, stub());
    let signed_path = packing.path("signed.exe");
    packing.sign(&pki, &packing.path("packed.exe"), &signed_path);

    let out = verify(&pki, &signed_path);
    assert!(
        out.status.success(),
        "osslsigncode verify failed:\n{}",
        show(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Signature verification: ok"));

    let signed = std::fs::read(&signed_path).expect("read signed.exe");
    let pe = goblin::pe::PE::parse(&signed).expect("goblin parses the signed file");
    assert_eq!(pe.certificates.len(), 1);
    let table = certificate_table(&pe).expect("a Security directory");
    assert_eq!(table.end, signed.len(), "the certificate table is last");

    // Signing appended the table and set two header fields; the region did not move.
    let (checksum, security) = header_fields(&signed);
    let changed: Vec<usize> = (0..packed.len())
        .filter(|&i| packed[i] != signed[i])
        .collect();
    assert!(
        changed
            .iter()
            .all(|i| checksum.contains(i) || security.contains(i)),
        "signing changed bytes outside CheckSum and the Security entry: {changed:x?}"
    );
    assert!(table.start >= packed.len());
    assert!(signed[packed.len()..table.start].iter().all(|b| *b == 0));

    let bounds = container::region_bounds(ExecutableFormat::Pe, &signed).unwrap();
    assert_eq!(bounds.end, packed.len());
    assert_payload_survived_signing(&packing, &packed, &signed, "signed");
}

#[test]
fn a_flipped_payload_byte_fails_both_verifiers() {
    let packing = Packing::new();
    let pki = packing.pki();
    pack(&packing, stub());
    packing.sign(
        &pki,
        &packing.path("packed.exe"),
        &packing.path("signed.exe"),
    );
    let signed = std::fs::read(packing.path("signed.exe")).unwrap();
    let (_, region) = container::locate(&signed).unwrap();
    let at = region.payload_offset as usize + region.payload.len() / 2;

    let mut tampered = signed.clone();
    tampered[at] ^= 0x01;
    let tampered_path = packing.path("tampered.exe");
    std::fs::write(&tampered_path, &tampered).unwrap();

    // The trailer and manifest are intact, so the region is found; the payload hash fails.
    let (_, region) = container::locate(&tampered).expect("region still found");
    let err = region.verify_payload().unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    let dest = packing.path("tampered-out");
    std::fs::create_dir(&dest).unwrap();
    assert!(archive::extract(region.payload, &region.trailer, &region.manifest, &dest).is_err());

    let out = verify(&pki, &tampered_path);
    assert!(
        !out.status.success(),
        "osslsigncode accepted a tampered file:\n{}",
        show(&out)
    );

    // A flipped manifest byte is caught before anything is extracted.
    let mut tampered = signed;
    tampered[region.manifest_offset as usize + 5] ^= 0x01;
    let err = container::locate(&tampered).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
}

#[test]
fn injecting_into_a_signed_stub_is_refused() {
    let packing = Packing::new();
    let pki = packing.pki();
    let stub_path = packing.path("stub.exe");
    std::fs::write(&stub_path, stub()).unwrap();
    packing.sign(&pki, &stub_path, &packing.path("signed-stub.exe"));
    let signed_stub = std::fs::read(packing.path("signed-stub.exe")).unwrap();

    let err = container::inject(&signed_stub, &packing.region).unwrap_err();
    assert!(matches!(err, Error::Executable(_)), "{err}");
    assert!(
        err.to_string().contains("sign after packing, never before"),
        "{err}"
    );
    // A signed stub without a payload is simply "no payload".
    let err = container::locate(&signed_stub).unwrap_err();
    assert!(matches!(err, Error::NoPayload { .. }), "{err}");
}

#[test]
fn a_truncated_or_extended_signed_file_is_an_error_not_a_panic() {
    let packing = Packing::new();
    let pki = packing.pki();
    let packed = pack(&packing, stub());
    packing.sign(
        &pki,
        &packing.path("packed.exe"),
        &packing.path("signed.exe"),
    );
    let signed = std::fs::read(packing.path("signed.exe")).unwrap();
    let (_, region) = container::locate(&signed).unwrap();
    let overlay_start = container::region_bounds(ExecutableFormat::Pe, &signed)
        .unwrap()
        .start;

    let cuts = [
        signed.len() - 1,
        (packed.len() + signed.len()) / 2,
        packed.len(),
        region.trailer_offset as usize + 64,
        region.manifest_offset as usize + 3,
        region.payload_offset as usize + region.payload.len() / 2,
        overlay_start,
        overlay_start / 2,
        0x200,
        0x40,
        2,
        0,
    ];
    for cut in cuts {
        let err = container::locate(&signed[..cut]).unwrap_err();
        if cut >= overlay_start {
            // The Security directory now points past the end: damaged, say so.
            assert!(matches!(err, Error::Corrupt { .. }), "cut at {cut}: {err}");
        }
    }

    // Bytes appended after the certificate table are outside every signature.
    let mut extended = signed.clone();
    extended.extend_from_slice(&[0; 8]);
    let err = container::locate(&extended).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("after signing"), "{err}");
}

#[test]
fn a_checksum_the_stub_carries_is_kept_true() {
    // The cross-linked stub has CheckSum 0; one linked with /RELEASE would carry one.
    let packing = Packing::new();
    let mut stub = stub().to_vec();
    let (checksum, _) = header_fields(&stub);
    stub[checksum.clone()].copy_from_slice(&1u32.to_le_bytes());
    let packed = pack(&packing, &stub);
    let stored = u32::from_le_bytes(packed[checksum].try_into().unwrap());
    assert_ne!(stored, 1);

    // osslsigncode prints "Current" and "Calculated" checksums only when they differ.
    let pki = packing.pki();
    let out = verify(&pki, &packing.path("packed.exe"));
    let text = show(&out);
    assert!(!text.contains("invalid PE checksum"), "{text}");
    assert!(text.contains(&format!("{stored:08X}")), "{text}");
}

#[test]
fn a_packed_stub_signed_by_our_signer_verifies_and_yields_its_payload() {
    let packing = Packing::new();
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let files = pki
        .write_files(packing.dir.path())
        .expect("write the test PKI");
    let packed = pack(&packing, stub());
    let signed = authenticode::sign(&packed, &pki.signing_identity(), &SignOptions::default())
        .expect("sign the packed stub");
    let signed_path = packing.path("signed.exe");
    std::fs::write(&signed_path, &signed).unwrap();

    let out = verify(&files, &signed_path);
    assert!(
        out.status.success(),
        "osslsigncode refused our signature:\n{}",
        show(&out)
    );
    let trust = TrustAnchors::parse(pki.ca.pem.as_bytes(), b"").unwrap();
    authenticode::verify(&signed, &trust).expect("our verifier accepts it");

    assert_payload_survived_signing(&packing, &packed, &signed, "signed-by-us");
}

/// The stub carries what Explorer, SmartScreen and signing services read: VERSIONINFO with
/// the server's one version, product and company, and an application manifest that runs
/// it as the invoking user with UTF-8 and long paths. Packing and signing keep both.
#[test]
fn the_stub_carries_its_version_info_and_manifest_through_packing_and_signing() {
    let check = |data: &[u8], label: &str| {
        let pe = goblin::pe::PE::parse(data).unwrap();
        let resources = pe
            .resource_data
            .as_ref()
            .unwrap_or_else(|| panic!("{label}: no resources"));
        let version = resources
            .version_info
            .as_ref()
            .unwrap_or_else(|| panic!("{label}: no VERSIONINFO"));
        let strings = &version.string_info;
        assert_eq!(
            strings.product_version().as_deref(),
            Some(openwork_payload::SERVER_VERSION),
            "{label}"
        );
        assert_eq!(
            strings.file_version().as_deref(),
            Some(openwork_payload::SERVER_VERSION),
            "{label}"
        );
        assert_eq!(strings.product_name().as_deref(), Some("OpenWork Server"));
        assert_eq!(strings.company_name().as_deref(), Some("OpenWork"));
        assert_eq!(
            strings.original_filename().as_deref(),
            Some("openwork-server-v2.exe")
        );
        let fixed = version.fixed_info.as_ref().expect("VS_FIXEDFILEINFO");
        let numeric: Vec<&str> = openwork_payload::SERVER_VERSION.split('.').collect();
        // The raw fields: goblin 0.10's `file_version()` reads the file *date* fields.
        let file_version = goblin::pe::resource::VersionField::from_ms_ls(
            fixed.file_version_ms,
            fixed.file_version_ls,
        );
        assert_eq!(
            fixed.product_version().to_string(),
            file_version.to_string(),
            "{label}"
        );
        assert_eq!(
            file_version.to_string(),
            format!("{}.{}.{}.0", numeric[0], numeric[1], numeric[2]),
            "{label}"
        );
        let manifest = resources
            .manifest_data
            .as_ref()
            .unwrap_or_else(|| panic!("{label}: no application manifest"));
        let manifest = std::str::from_utf8(manifest.data).unwrap();
        for needle in [
            r#"level="asInvoker""#,
            "<activeCodePage",
            ">UTF-8<",
            "<longPathAware",
        ] {
            assert!(manifest.contains(needle), "{label}: {needle} in {manifest}");
        }
    };
    check(stub(), "the stub");
    let packing = Packing::new();
    let packed = pack(&packing, stub());
    check(&packed, "the packed stub");
    let pki = TestPki::generate(KeyKind::Rsa2048);
    let signed =
        authenticode::sign(&packed, &pki.signing_identity(), &SignOptions::default()).unwrap();
    check(&signed, "the signed stub");
}
