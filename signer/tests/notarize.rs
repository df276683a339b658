//! Notarization: what is submitted, what the fake notary accepts and rejects (Apple's
//! rules for Developer ID software), and the `notarytool` command line, without running it.
#![cfg(feature = "testing")]

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use apple_codesign::macho_builder::MachOBuilder;
use goblin::mach::header::MH_EXECUTE;
use openwork_signer::entitlements::{self, Role};
use openwork_signer::macho::{MachOSignOptions, sign_with_identity};
use openwork_signer::notarize::{
    AppStoreConnectKey, FakeNotarizer, Notarizer, NotaryTool, Submission, SubmissionKind,
    format_log_issues, parse_submit_output, zip_executable,
};
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::{Error, sign_adhoc};
use x509_certificate::CapturedX509Certificate;

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(KeyKind::Rsa2048))
}

fn unsigned_macho() -> Vec<u8> {
    MachOBuilder::new_aarch64(MH_EXECUTE).write_macho().unwrap()
}

fn notary(pki: &TestPki) -> FakeNotarizer {
    FakeNotarizer::new(
        vec![CapturedX509Certificate::from_der(pki.ca.der.clone()).unwrap()],
        vec![CapturedX509Certificate::from_der(pki.tsa_ca.der.clone()).unwrap()],
    )
}

fn sign(options: MachOSignOptions) -> Vec<u8> {
    let options = MachOSignOptions {
        identifier: Some("opencode".into()),
        ..options
    };
    sign_with_identity(&unsigned_macho(), &pki().signing_identity(), &options).unwrap()
}

fn release_options(tsa: &TestTsa) -> MachOSignOptions {
    MachOSignOptions {
        identifier: None,
        hardened_runtime: true,
        entitlements: entitlements::for_role(Role::BunSidecar).map(str::to_owned),
        timestamp_url: Some(tsa.url()),
    }
}

/// Writes `data` as an executable named `name` in `dir`.
fn executable(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    fs_err::write(&path, data).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn rejection(notary: &FakeNotarizer, submission: &Submission) -> String {
    match notary.submit(submission) {
        Ok(outcome) => panic!("accepted: {outcome:?}"),
        Err(e @ Error::Verification(_)) => e.to_string(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn a_properly_signed_executable_is_zipped_accepted_and_not_stapleable() {
    let tsa = TestTsa::start(pki());
    let signed = sign(release_options(&tsa));
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = executable(dir.path(), "opencode", &signed);
    let submission = Submission::from_file(&path, work.path()).unwrap();
    assert_eq!(submission.kind, SubmissionKind::ZippedExecutable);
    assert!(!submission.stapleable);
    assert_eq!(submission.upload, work.path().join("opencode.zip"));
    let notary = notary(pki());
    let outcome = notary.submit(&submission).unwrap();
    assert!(!outcome.stapleable);
    assert!(!outcome.id.is_empty());
    assert_eq!(notary.submissions(), vec![submission]);
}

#[test]
fn ad_hoc_unsigned_no_runtime_and_no_timestamp_are_rejected_as_apple_does() {
    let tsa = TestTsa::start(pki());
    let notary = notary(pki());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "ad-hoc",
            sign_adhoc(&unsigned_macho(), "opencode").unwrap(),
            "The binary is not signed with a valid Developer ID certificate.",
        ),
        ("unsigned", unsigned_macho(), "The binary is not signed."),
        (
            "no-runtime",
            sign(MachOSignOptions {
                hardened_runtime: false,
                ..release_options(&tsa)
            }),
            "The executable does not have the hardened runtime enabled.",
        ),
        (
            "no-timestamp",
            sign(MachOSignOptions {
                timestamp_url: None,
                ..release_options(&tsa)
            }),
            "The signature does not include a secure timestamp.",
        ),
    ];
    let mut tampered = sign(release_options(&tsa));
    tampered[0x1000] ^= 1;
    cases.push((
        "tampered",
        tampered,
        "The signature of the binary is invalid.",
    ));
    for (name, data, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = executable(dir.path(), "opencode", &data);
        let submission = Submission::from_file(&path, dir.path()).unwrap();
        let err = rejection(&notary, &submission);
        assert!(
            err.contains(&format!("opencode: {message}")),
            "{name}: {err}"
        );
        assert!(err.contains("Invalid"), "{name}: {err}");
    }
    assert_eq!(notary.submissions().len(), 5);

    // A certificate from another root is not a Developer ID certificate.
    let other = TestPki::generate(KeyKind::EcdsaP256);
    let signed = sign_with_identity(
        &unsigned_macho(),
        &other.signing_identity(),
        &MachOSignOptions {
            identifier: Some("opencode".into()),
            ..release_options(&tsa)
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let submission =
        Submission::from_file(&executable(dir.path(), "opencode", &signed), dir.path()).unwrap();
    let err = rejection(&notary, &submission);
    assert!(err.contains("valid Developer ID certificate"), "{err}");
    assert!(!err.contains("hardened runtime"), "{err}");
}

#[test]
fn the_zip_round_trips_deterministically_with_the_executable_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = sign_adhoc(&unsigned_macho(), "opencode-router").unwrap();
    let path = executable(dir.path(), "opencode-router", &data);
    let zipped = zip_executable(&path).unwrap();
    assert_eq!(zipped, zip_executable(&path).unwrap(), "deterministic");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zipped)).unwrap();
    assert_eq!(archive.len(), 1);
    let mut entry = archive.by_index(0).unwrap();
    assert_eq!(entry.name(), "opencode-router");
    #[cfg(unix)]
    assert_eq!(entry.unix_mode().unwrap() & 0o777, 0o755);
    let mut unzipped = Vec::new();
    entry.read_to_end(&mut unzipped).unwrap();
    assert!(unzipped == data, "same bytes");
}

#[test]
fn archives_are_submitted_as_they_are_and_other_files_refused() {
    let dir = tempfile::tempdir().unwrap();
    let executable = executable(dir.path(), "opencode", &unsigned_macho());
    let zip = dir.path().join("bundle.zip");
    fs_err::write(&zip, zip_executable(&executable).unwrap()).unwrap();
    let submission = Submission::from_file(&zip, dir.path()).unwrap();
    assert_eq!(
        (
            submission.kind,
            submission.stapleable,
            submission.upload.as_path()
        ),
        (SubmissionKind::Zip, false, zip.as_path())
    );

    let pkg = dir.path().join("installer.pkg");
    fs_err::write(&pkg, b"xar!\0\x1c\0\x01").unwrap();
    let submission = Submission::from_file(&pkg, dir.path()).unwrap();
    assert_eq!(
        (submission.kind, submission.stapleable),
        (SubmissionKind::Pkg, true)
    );

    let mut image = vec![0u8; 4096];
    image[4096 - 512..4096 - 508].copy_from_slice(b"koly");
    let dmg = dir.path().join("disk.dmg");
    fs_err::write(&dmg, &image).unwrap();
    let submission = Submission::from_file(&dmg, dir.path()).unwrap();
    assert_eq!(
        (submission.kind, submission.stapleable),
        (SubmissionKind::Dmg, true)
    );

    let text = dir.path().join("notes.zip");
    fs_err::write(&text, b"not a zip").unwrap();
    let err = Submission::from_file(&text, dir.path()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn the_fake_can_reject_everything_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = executable(dir.path(), "opencode", &unsigned_macho());
    let submission = Submission::from_file(&path, dir.path()).unwrap();
    let notary = notary(pki()).rejecting_all("Team is not yet configured for notarization.");
    let err = rejection(&notary, &submission);
    assert!(err.contains("Team is not yet configured"), "{err}");
    assert_eq!(notary.submissions().len(), 1);
}

fn key() -> AppStoreConnectKey {
    AppStoreConnectKey {
        key_id: "KEYID12345".into(),
        issuer_id: "69a6de70-03db-47e3-e053-5b8c7c11a4d1".into(),
        private_key_p8_path: "/keys/AuthKey_KEYID12345.p8".into(),
    }
}

#[test]
fn notarytool_arguments_carry_the_key_but_nothing_prints_it() {
    let tool = NotaryTool::new(key());
    let args: Vec<String> = tool
        .submit_args(Path::new("/out/opencode.zip"))
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "notarytool",
            "submit",
            "/out/opencode.zip",
            "--key",
            "/keys/AuthKey_KEYID12345.p8",
            "--key-id",
            "KEYID12345",
            "--issuer",
            "69a6de70-03db-47e3-e053-5b8c7c11a4d1",
            "--wait",
            "--output-format",
            "json"
        ]
    );
    let log: Vec<String> = tool
        .log_args("2efe2717-52ef-43a5-96dc-0797e4ca1041")
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        &log[..3],
        ["notarytool", "log", "2efe2717-52ef-43a5-96dc-0797e4ca1041"]
    );
    assert!(log.contains(&"KEYID12345".to_string()));

    let shown = [
        NotaryTool::describe(&tool.submit_args(Path::new("/out/opencode.zip"))),
        format!("{tool:?}"),
        format!("{:?}", key()),
    ];
    for text in &shown {
        assert!(!text.contains("KEYID12345\""), "{text}");
        assert!(!text.contains("69a6de70"), "{text}");
        assert!(!text.contains(" KEYID12345"), "{text}");
    }
    assert!(
        shown[0].starts_with("xcrun notarytool submit /out/opencode.zip --key"),
        "{}",
        shown[0]
    );
    assert!(
        shown[0].contains("--key-id <redacted> --issuer <redacted>"),
        "{}",
        shown[0]
    );
}

#[test]
fn notarytool_output_and_logs_are_read() {
    let answer = parse_submit_output(
        r#"{"id":"2efe2717-52ef-43a5-96dc-0797e4ca1041","message":"Processing complete","status":"Invalid"}"#,
    )
    .unwrap();
    assert_eq!(answer.id, "2efe2717-52ef-43a5-96dc-0797e4ca1041");
    assert_eq!(answer.status, "Invalid");
    assert!(parse_submit_output("Error: HTTP status code: 401").is_err());

    let log = r#"{
        "logFormatVersion": 1,
        "status": "Invalid",
        "statusSummary": "Archive contains critical validation errors",
        "issues": [
            {"severity": "error", "code": null, "path": "opencode.zip/opencode",
             "message": "The signature does not include a secure timestamp.",
             "docUrl": "https://developer.apple.com/documentation/security", "architecture": "arm64"},
            {"severity": "error", "code": null, "path": "opencode.zip/opencode",
             "message": "The executable does not have the hardened runtime enabled.",
             "docUrl": null, "architecture": "arm64"}
        ]
    }"#;
    assert_eq!(
        format_log_issues(log),
        "opencode.zip/opencode (arm64): The signature does not include a secure timestamp.; \
         opencode.zip/opencode (arm64): The executable does not have the hardened runtime enabled."
    );
    assert_eq!(
        format_log_issues(
            r#"{"status":"Invalid","statusSummary":"Archive is broken","issues":null}"#
        ),
        "Archive is broken"
    );
}

#[test]
fn a_missing_key_file_is_a_credentials_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = executable(dir.path(), "opencode", &unsigned_macho());
    let submission = Submission::from_file(&path, dir.path()).unwrap();
    let err = NotaryTool::new(AppStoreConnectKey {
        private_key_p8_path: dir.path().join("missing.p8"),
        ..key()
    })
    .submit(&submission)
    .unwrap_err();
    assert!(matches!(err, Error::Credentials(_)), "{err}");
    assert!(!err.to_string().contains("KEYID12345"), "{err}");
}

/// Issue 17: `notarytool` reads the App Store Connect key from a file; a run stopped with
/// SIGTERM (a cancelled CI job) removes it, and a run killed with SIGKILL leaves it only
/// until the next run sweeps it. A stand-in `xcrun` on PATH holds the run in notarytool.
#[cfg(unix)]
#[test]
fn a_killed_notarize_run_leaves_no_key_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    const P8: &str = "-----BEGIN PRIVATE KEY-----\nMIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQgnotreal\n-----END PRIVATE KEY-----\n";
    let dir = tempfile::tempdir().unwrap();
    let (temp, bin) = (dir.path().join("tmp"), dir.path().join("bin"));
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let marker = dir.path().join("xcrun-started");
    let xcrun = bin.join("xcrun");
    let hold = format!(
        "#!/bin/sh\necho $$ > '{}.pid'\necho \"$@\" > '{}'\nexec sleep 60\n",
        marker.display(),
        marker.display()
    );
    std::fs::write(&xcrun, hold).unwrap();
    std::fs::set_permissions(&xcrun, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("signing.toml");
    std::fs::write(
        &config,
        "[codesign]\ncommand = [\"true\", \"{file}\"]\n[notarize]\nkey-id = \"env:T_KEY_ID\"\n\
         issuer = \"env:T_ISSUER\"\nkey = \"env:T_P8\"\n",
    )
    .unwrap();
    // A zip goes to notarytool as it is (no Mach-O preflight to pass).
    let upload = dir.path().join("server.zip");
    std::fs::write(&upload, b"PK\x03\x04 not really a zip").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_openwork-signer"))
            .arg("notarize")
            .arg(&upload)
            .arg("--config")
            .arg(&config)
            .args(["--notarizer", "notarytool"])
            .env("TMPDIR", &temp)
            .env("PATH", &path)
            .env("T_KEY_ID", "KEYID12345")
            .env("T_ISSUER", "69a6de70-03db-47e3-e053-5b8c7c11a4d1")
            .env("T_P8", P8)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let key_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&temp)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("openwork-signer-")
            })
            .map(|e| e.path().join("AuthKey.p8"))
            .collect()
    };
    let wait_for_xcrun = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "the stand-in xcrun never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let args = std::fs::read_to_string(&marker).unwrap();
        let sleeper = std::fs::read_to_string(marker.with_extension("pid")).unwrap();
        std::fs::remove_file(&marker).unwrap();
        (args, sleeper.trim().to_string())
    };
    let kill = |signal: &str, pid: &str| {
        std::process::Command::new("kill")
            .args([signal, pid])
            .status()
            .unwrap();
    };

    // SIGTERM while notarytool runs: the key existed, and is gone after.
    let mut run = start();
    let (args, sleeper) = wait_for_xcrun();
    let files = key_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), P8);
    assert!(args.contains(&files[0].display().to_string()), "{args}");
    kill("-TERM", &run.id().to_string());
    let status = run.wait().unwrap();
    kill("-KILL", &sleeper);
    assert_eq!(
        status.signal(),
        Some(15),
        "it dies of the signal: {status:?}"
    );
    assert!(!files[0].exists(), "the key survived SIGTERM");
    assert_eq!(
        key_files(),
        Vec::<std::path::PathBuf>::new(),
        "its directory survived"
    );

    // SIGKILL cannot be caught: the key stays, until the next run sweeps it.
    let mut run = start();
    let (_, sleeper) = wait_for_xcrun();
    run.kill().unwrap();
    run.wait().unwrap();
    kill("-KILL", &sleeper);
    let leftover = key_files();
    assert_eq!(leftover.len(), 1);
    std::fs::write(
        &xcrun,
        "#!/bin/sh\necho 'Error: HTTP status code: 401' >&2\nexit 1\n",
    )
    .unwrap();
    let output = start().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("HTTP status code: 401"), "{stderr}");
    assert!(
        !leftover[0].exists(),
        "the next run did not sweep the leftover key"
    );
    assert_eq!(key_files(), Vec::<std::path::PathBuf>::new());
    for secret in ["KEYID12345", "69a6de70", "notreal"] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }
}
