//! `openwork-packager release --sign`: signed sidecars inside the payload, a signed
//! artifact that osslsigncode, our verifier and the runtime's locator all accept, the
//! signed Windows artifact running under Wine, and the missing-secret policy and bad
//! credentials at the command line. The PKI and the RFC 3161 time-stamp authority are made
//! at test time (`openwork_signer::testing`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openwork_payload::archive;
use openwork_payload::container;
use openwork_signer::authenticode::{self, TrustAnchors};
use openwork_signer::entitlements;
use openwork_signer::macho::{CapturedX509Certificate, MachOPolicy, verify_macho};
use openwork_signer::testing::pki::TestPkiFiles;
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::verify::{VerifyPolicy, verify};
use openwork_tests::fixtures::describe;
use openwork_tests::release::{opencode_args, opencode_for, router_fixture, stand_in};
use openwork_tests::wine::{self, Wine, windows_path};
use openwork_tests::{host_bin, require_tool, stub_for};
use serde_json::Value;

/// A test PKI, its files, a running TSA, and a signing configuration using them.
struct Signing {
    pki: TestPki,
    files: TestPkiFiles,
    tsa: TestTsa,
    config: PathBuf,
}

impl Signing {
    fn new(dir: &Path, kind: KeyKind) -> Self {
        let pki = TestPki::generate(kind);
        let files = pki.write_files(dir).unwrap();
        let tsa = TestTsa::start(&pki);
        let config = dir.join("signing.toml");
        std::fs::write(
            &config,
            format!(
                "[authenticode]\nkey = \"file:code-signing.key.pem\"\n\
                 certificate = \"file:code-signing.chain.pem\"\n\
                 timestamp-urls = [\"{url}\"]\ndescription = \"openwork test\"\n\n\
                 [codesign]\nkey = \"file:code-signing.key.pem\"\n\
                 certificate = \"file:code-signing.chain.pem\"\ntimestamp-url = \"{url}\"\n",
                url = tsa.url()
            ),
        )
        .unwrap();
        Self {
            pki,
            files,
            tsa,
            config,
        }
    }

    fn roots(&self) -> VerifyPolicy {
        VerifyPolicy {
            roots: vec![certificate(&self.pki.ca.der)],
            tsa_roots: vec![certificate(&self.pki.tsa_ca.der)],
            require_timestamp: true,
            require_signature: true,
        }
    }
}

fn certificate(der: &[u8]) -> CapturedX509Certificate {
    CapturedX509Certificate::from_der(der.to_vec()).unwrap()
}

/// `release --target <target> --fast --sign <config>` into `dist`; returns the report.
fn signed_release(target: &str, signing: &Signing, work: &Path, dist: &Path) -> Value {
    signed_release_of(target, signing, work, dist, |_| {})
}

/// [`signed_release`], with `prepare` given opencode's stand-in (if the target has one)
/// before the release takes it.
fn signed_release_of(
    target: &str,
    signing: &Signing,
    work: &Path,
    dist: &Path,
    prepare: impl FnOnce(&Path),
) -> Value {
    let stand_in = stand_in(target, opencode_for(target), work);
    if let Some(file) = &stand_in {
        prepare(file);
    }
    let output = Command::new(host_bin("openwork-packager"))
        .args(["release", "--target", target, "--fast", "--json"])
        .arg("--stub")
        .arg(stub_for(target))
        .arg("--dist")
        .arg(dist)
        .arg("--sign")
        .arg(&signing.config)
        .args(opencode_args(target, stand_in.as_deref()))
        .arg("--router-source")
        .arg(router_fixture())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "release {target}: {}",
        describe(&output)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // Three signatures: both sidecars, then the artifact; the TSA stamped each.
    let signatures = report["signatures"].as_array().expect("signatures");
    assert_eq!(signatures.len(), 3, "{report:#}");
    assert!(
        signing.tsa.requests() >= 3,
        "{} TSA requests",
        signing.tsa.requests()
    );
    report
}

/// The sidecars of an artifact's payload, extracted into `dir`.
fn extract(artifact: &[u8], dir: &Path) {
    let (_, region) = container::locate(artifact).unwrap();
    archive::extract(region.payload, &region.trailer, &region.manifest, dir).unwrap();
}

#[test]
fn a_signed_windows_release_verifies_everywhere_and_runs_under_wine() {
    require_tool("osslsigncode", "install it (apt: osslsigncode)");
    let work = tempfile::tempdir().unwrap();
    let signing = Signing::new(work.path(), KeyKind::Rsa2048);
    let dist = work.path().join("dist");
    let report = signed_release("windows-x64", &signing, work.path(), &dist);
    let artifact = dist.join("openwork-server-v2-windows-x64.exe");
    for signature in report["signatures"].as_array().unwrap() {
        assert_eq!(signature["action"], "authenticode", "{signature}");
    }
    assert_eq!(
        report["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(&artifact).unwrap()
        )),
        "the report and SHA256SUMS describe the signed file"
    );

    // osslsigncode, with the test roots.
    let out = Command::new("osslsigncode")
        .arg("verify")
        .arg("-CAfile")
        .arg(&signing.files.ca_pem)
        .arg("-TSA-CAfile")
        .arg(&signing.files.tsa_ca_pem)
        .arg("-in")
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(out.status.success(), "osslsigncode: {}", describe(&out));

    // Ours, payload included.
    let data = std::fs::read(&artifact).unwrap();
    let verification = verify(&data, &signing.roots()).unwrap();
    assert_eq!(verification.payload_files, Some(2));
    assert!(verification.timestamp.is_some() && verification.chain_checked);

    // The sidecars were signed before they were hashed into the manifest: extracted, each
    // still verifies.
    let extracted = work.path().join("extracted");
    extract(&data, &extracted);
    let trust = TrustAnchors {
        code_signing: vec![certificate(&signing.pki.ca.der)],
        time_stamping: vec![certificate(&signing.pki.tsa_ca.der)],
        embedded: false,
    };
    for sidecar in ["opencode.exe", "opencode-router.exe"] {
        let file = std::fs::read(extracted.join("bin").join(sidecar)).unwrap();
        let verified =
            authenticode::verify(&file, &trust).unwrap_or_else(|e| panic!("{sidecar}: {e}"));
        assert!(verified.timestamp.is_some(), "{sidecar}");
    }

    // The signed artifact runs under Wine and extracts its runtime.
    let Some(wine) = Wine::get() else { return };
    let data_dir = work.path().join("data");
    let out = wine::output(
        wine.command(windows_path(&artifact))
            .args(["runtime", "extract", "--json", "--data-dir"])
            .arg(windows_path(&data_dir))
            .env_remove("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR")
            .env_remove("OPENWORK_DATA_DIR"),
    );
    assert!(out.status.success(), "runtime extract: {}", describe(&out));
    let extracted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(extracted["extracted"], true, "{extracted:#}");
    let runtime_dir = wine::unix_path(extracted["runtimeDir"].as_str().unwrap()).unwrap();
    let on_disk = std::fs::read(runtime_dir.join("bin/opencode.exe")).unwrap();
    authenticode::verify(&on_disk, &trust).expect("the sidecar Wine extracted is still signed");
}

#[test]
fn a_signed_macos_release_keeps_its_payload_and_the_sidecars_their_entitlements() {
    let work = tempfile::tempdir().unwrap();
    let signing = Signing::new(work.path(), KeyKind::EcdsaP256);
    let dist = work.path().join("dist");
    // What goes in as opencode carries a broken signature twice over, as opencode's darwin
    // builds ship (opencode issue 46313): Bun writes the program into its executable after
    // Bun's own ad hoc signature (a digest mismatch), and leaves a stale tail of the
    // template's longer signature after the end of the file's last segment (appended here).
    const STALE: usize = 4321;
    let mut given_len = 0;
    let report = signed_release_of("darwin-arm64", &signing, work.path(), &dist, |opencode| {
        let mut given = std::fs::read(opencode).unwrap();
        let broken = verify(&given, &VerifyPolicy::default()).unwrap_err();
        assert!(broken.to_string().contains("digest mismatch"), "{broken}");
        given_len = given.len();
        given.extend(std::iter::repeat_n(0xFA, STALE));
        std::fs::write(opencode, &given).unwrap();
        let err = verify(&given, &VerifyPolicy::default()).unwrap_err();
        assert!(
            err.to_string().contains("follow the end of __LINKEDIT"),
            "{err}"
        );
    });
    let signatures = report["signatures"].as_array().unwrap();
    for signature in signatures {
        assert_eq!(signature["action"], "codesign", "{signature}");
    }
    // The release re-signed it, dropped the tail, and said so.
    let opencode = signatures
        .iter()
        .find(|s| s["file"] == "opencode")
        .expect("opencode was signed");
    assert_eq!(
        opencode["note"],
        format!("dropped {STALE} stale bytes after __LINKEDIT before signing"),
        "{opencode}"
    );
    let data = std::fs::read(dist.join("openwork-server-v2-darwin-arm64")).unwrap();
    let policy = MachOPolicy {
        require_hardened_runtime: true,
        entitlements: None,
        ..MachOPolicy::notarizable(
            vec![certificate(&signing.pki.ca.der)],
            vec![certificate(&signing.pki.tsa_ca.der)],
        )
    };
    let stub = verify_macho(&data, &policy).unwrap();
    assert_eq!(stub.entitlements, None, "the stub needs no entitlements");
    assert_eq!(
        verify(&data, &signing.roots()).unwrap().payload_files,
        Some(2)
    );
    // What release.yml runs on the signed artifact, with no roots at hand: the carried
    // chains and the time stamp hold.
    let carried = VerifyPolicy {
        require_timestamp: true,
        require_signature: true,
        ..VerifyPolicy::default()
    };
    let verified = verify(&data, &carried).unwrap();
    assert!(verified.timestamp.is_some() && !verified.chain_checked);

    let extracted = work.path().join("extracted");
    extract(&data, &extracted);
    let sidecar_policy = MachOPolicy {
        entitlements: Some(entitlements::BUN_SIDECAR.to_string()),
        ..policy
    };
    for sidecar in ["opencode", "opencode-router"] {
        let file = std::fs::read(extracted.join("bin").join(sidecar)).unwrap();
        let verified =
            verify_macho(&file, &sidecar_policy).unwrap_or_else(|e| panic!("{sidecar}: {e}"));
        assert_eq!(verified.identifier, sidecar);
    }
    // Bun's program (its __BUN segment, hashed by the new signature) came through whole: the
    // signed opencode differs from what was given only in its signature.
    let signed = std::fs::read(extracted.join("bin/opencode")).unwrap();
    let given = std::fs::read(work.path().join("opencode-router-darwin-arm64")).unwrap();
    let signature_at = |data: &[u8]| {
        goblin::mach::MachO::parse(data, 0)
            .unwrap()
            .load_commands
            .iter()
            .find_map(|c| match c.command {
                goblin::mach::load_command::CommandVariant::CodeSignature(s) => {
                    Some(s.dataoff as usize)
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(given.len(), given_len + STALE);
    let (old, new) = (signature_at(&given), signature_at(&signed));
    // Load commands (the signature's size) differ in the first page; the rest is the same.
    assert_eq!(given[0x4000..old.min(new)], signed[0x4000..old.min(new)]);
}

fn signer(args: &[&str], dir: &Path) -> Output {
    Command::new(host_bin("openwork-signer"))
        .args(args)
        .current_dir(dir)
        .env_remove("OPENWORK_TEST_P12")
        .env_remove("OPENWORK_TEST_P12_PASSWORD")
        .output()
        .unwrap()
}

#[test]
fn missing_secrets_fail_or_skip_by_policy_and_bad_credentials_are_named() {
    let work = tempfile::tempdir().unwrap();
    let pe = work.path().join("server.exe");
    std::fs::copy(stub_for("windows-x64"), &pe).unwrap();
    let before = std::fs::read(&pe).unwrap();
    let write_config = |name: &str, policy: &str| {
        let path = work.path().join(name);
        std::fs::write(
            &path,
            format!(
                "on-missing-secret = \"{policy}\"\n[authenticode]\n\
                 pkcs12 = \"base64:env:OPENWORK_TEST_P12\"\npassword = \"env:OPENWORK_TEST_P12_PASSWORD\"\n"
            ),
        )
        .unwrap();
        path
    };
    write_config("fail.toml", "fail");
    let out = signer(
        &["sign", "--config", "fail.toml", "server.exe"],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(14), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("env:OPENWORK_TEST_P12 is not set")
            && stderr.contains("on-missing-secret = \"skip\""),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&pe).unwrap(), before, "nothing written");

    write_config("skip.toml", "skip");
    let out = signer(
        &["sign", "--config", "skip.toml", "server.exe"],
        work.path(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("WARN [authenticode] env:OPENWORK_TEST_P12 is not set"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(&pe).unwrap(), before, "left unsigned");

    // A real .p12 with a wrong password: exit 14, and the password is not echoed.
    let pki = TestPki::generate(KeyKind::Rsa2048);
    let files = pki.write_files(work.path()).unwrap();
    let p12 = work.path().join("identity.p12");
    let out = Command::new("openssl")
        .args([
            "pkcs12",
            "-export",
            "-passout",
            "pass:right-password",
            "-inkey",
        ])
        .arg(&files.key_pem)
        .arg("-in")
        .arg(&files.chain_pem)
        .arg("-out")
        .arg(&p12)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let encoded = base64_file(&p12);
    let mut wrong = Command::new(host_bin("openwork-signer"));
    wrong
        .args(["sign", "--config", "fail.toml", "server.exe"])
        .current_dir(work.path())
        .env("OPENWORK_TEST_P12", &encoded)
        .env("OPENWORK_TEST_P12_PASSWORD", "wrong-password");
    let out = wrong.output().unwrap();
    assert_eq!(out.status.code(), Some(14), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
    assert_eq!(std::fs::read(&pe).unwrap(), before, "nothing written");

    // The right password signs, and the signature verifies against the test root.
    let out = wrong
        .env("OPENWORK_TEST_P12_PASSWORD", "right-password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = signer(
        &[
            "verify",
            "server.exe",
            "--ca",
            files.ca_pem.to_str().unwrap(),
            "--require-signature",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", describe(&out));
}

fn base64_file(path: &Path) -> String {
    let out = Command::new("base64").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
