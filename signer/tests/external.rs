//! The external signing command: osslsigncode signing a real PE through `{out}`, in-place
//! commands, the environment reaching the command, and the failures a user must understand.
#![cfg(feature = "testing")]

use std::path::{Path, PathBuf};
use std::process::Command;

use openwork_signer::Error;
use openwork_signer::config::{KeySource, SigningConfig};
use openwork_signer::external::{ExternalSigner, OUTPUT_LINES};
use openwork_signer::secret::Redactor;
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};

fn signer(argv: &[&str]) -> ExternalSigner {
    ExternalSigner::new(
        argv.iter().map(|s| s.to_string()).collect(),
        Redactor::default(),
    )
}

/// A small Windows executable from mingw.
fn build_pe(dir: &Path) -> PathBuf {
    let source = dir.join("hello.c");
    let exe = dir.join("hello.exe");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let output = Command::new("x86_64-w64-mingw32-gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .output()
        .expect("x86_64-w64-mingw32-gcc runs (apt: mingw-w64)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

fn osslsigncode(args: &[&str]) -> std::process::Output {
    Command::new("osslsigncode")
        .args(args)
        .output()
        .expect("osslsigncode runs (apt: osslsigncode)")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn osslsigncode_signs_a_pe_through_out_with_a_time_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(KeyKind::Rsa2048);
    let files = pki.write_files(dir.path()).unwrap();
    let tsa = TestTsa::start(&pki);
    let exe = build_pe(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    let unsigned = std::fs::read(&exe).unwrap();
    let exe_str = exe.to_str().unwrap();
    let ca = files.ca_pem.to_str().unwrap();
    let tsa_ca = files.tsa_ca_pem.to_str().unwrap();
    assert!(
        !osslsigncode(&["verify", "-CAfile", ca, "-in", exe_str])
            .status
            .success(),
        "unsigned files fail verification, so passing it below means something"
    );

    let url = tsa.url();
    signer(&[
        "osslsigncode",
        "sign",
        "-certs",
        files.chain_pem.to_str().unwrap(),
        "-key",
        files.key_pem.to_str().unwrap(),
        "-n",
        "openwork test",
        "-h",
        "sha256",
        "-ts",
        &url,
        "-in",
        "{file}",
        "-out",
        "{out}",
    ])
    .sign_file(&exe)
    .unwrap();

    let signed = std::fs::read(&exe).unwrap();
    assert_ne!(signed, unsigned);
    assert_eq!(tsa.requests(), 1);
    let verify = osslsigncode(&[
        "verify",
        "-CAfile",
        ca,
        "-TSA-CAfile",
        tsa_ca,
        "-in",
        exe_str,
    ]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    #[cfg(unix)]
    assert_eq!(mode(&exe), 0o750, "the signed file keeps the permissions");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".openwork-signing-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn in_place_commands_get_the_absolute_path_and_this_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact.bin");
    std::fs::write(&file, "payload").unwrap();
    // A relative path comes to the command absolute; the environment (where secrets come
    // from) arrives unchanged: the command appends what it saw.
    let relative = relative_to_cwd(&file);
    signer(&[
        "sh",
        "-c",
        r#"case "$1" in /*) ;; *) exit 9 ;; esac; printf ' %s|%s' "$1" "$PATH" >> "$1""#,
        "sh",
        "{file}",
    ])
    .sign_file(&relative)
    .unwrap();
    let expected = format!(
        "payload {}|{}",
        std::path::absolute(&relative).unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);

    // Placeholders work inside an argument; other braces (the shell's) stay.
    std::fs::write(&file, "x").unwrap();
    signer(&[
        "sh",
        "-c",
        r#"printf '%s' "$1" > "${1#--in=}""#,
        "sh",
        "--in={file}",
    ])
    .sign_file(&file)
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("--in={}", file.display())
    );
    signer(&[
        "sh",
        "-c",
        r#"printf '%s' "$2" > "$1""#,
        "sh",
        "{file}",
        "{{x}}",
    ])
    .sign_file(&file)
    .unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{x}");
}

/// `file` relative to the current directory, so that the test gives a relative path.
fn relative_to_cwd(file: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let depth = cwd.components().count() - 1;
    let mut relative = PathBuf::new();
    for _ in 0..depth {
        relative.push("..");
    }
    relative.join(file.strip_prefix("/").unwrap())
}

#[test]
fn a_failing_command_shows_its_status_and_output_and_leaves_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact.bin");
    std::fs::write(&file, "payload").unwrap();
    let error = signer(&[
        "sh",
        "-c",
        "echo token expired on stdout; echo cannot reach the HSM >&2; exit 3",
        "sh",
        "{file}",
        "{out}",
    ])
    .sign_file(&file)
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::SigningTool(_)), "{message}");
    assert!(message.contains("\"sh\" failed"), "{message}");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("token expired on stdout"), "{message}");
    assert!(message.contains("cannot reach the HSM"), "{message}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "payload");

    let error = signer(&["true", "{file}", "{out}"])
        .sign_file(&file)
        .unwrap_err();
    assert!(
        error.to_string().contains("wrote no signed file"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "payload");
}

/// Issue 17: a signing tool that prints the PIN it was given (from the environment, as
/// configured with `command-secrets`) and a configured secret of another section: neither
/// reaches the error, which shows only the end of the output.
#[test]
fn a_failing_command_that_prints_secrets_does_not_leak_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_pe(dir.path());
    let original = std::fs::read(&file).unwrap();
    std::fs::write(dir.path().join("p12.password"), "apple-p12-pass\n").unwrap();
    let config_path = dir.path().join("signing.toml");
    std::fs::write(
        &config_path,
        r#"
        [authenticode]
        command = ["sh", "-c", "for i in $(seq 1 40); do echo chatter $i; done; echo \"login with PIN $OPENWORK_TEST_LEAKY_PIN failed\" >&2; echo \"p12 password apple-p12-pass\"; exit 5", "sh", "{file}"]
        command-secrets = ["env:OPENWORK_TEST_LEAKY_PIN"]
        [codesign]
        command = ["true", "{file}"]
        command-secrets = ["file:p12.password"]
        "#,
    )
    .unwrap();
    // SAFETY: this test binary's other tests do not read this variable.
    unsafe { std::env::set_var("OPENWORK_TEST_LEAKY_PIN", "472913-hsm-pin") };
    let config = SigningConfig::load(&config_path).unwrap();
    let redactor = openwork_signer::sign::redactor(&config).unwrap();
    let KeySource::Command { argv, .. } = &config.authenticode.as_ref().unwrap().key else {
        panic!("a command key source")
    };
    let error = ExternalSigner::new(argv.clone(), redactor)
        .sign_file(&file)
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::SigningTool(_)), "{message}");
    assert!(
        !message.contains("472913-hsm-pin"),
        "the PIN leaked: {message}"
    );
    assert!(
        !message.contains("apple-p12-pass"),
        "a password leaked: {message}"
    );
    assert!(
        message.contains("login with PIN <redacted> failed"),
        "{message}"
    );
    assert!(message.contains("p12 password <redacted>"), "{message}");
    // A short tail: the end of stdout, not all 40 lines of chatter.
    assert!(message.contains("chatter 40"), "{message}");
    assert!(!message.contains("chatter 1\n"), "{message}");
    assert!(message.lines().count() <= 2 * OUTPUT_LINES + 3, "{message}");

    // Through the command line too: what reaches stderr.
    let sign_cli = || {
        Command::new(env!("CARGO_BIN_EXE_openwork-signer"))
            .args(["sign", "--config"])
            .arg(&config_path)
            .arg(&file)
            .output()
            .unwrap()
    };
    let output = sign_cli();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("login with PIN <redacted> failed"),
        "{stderr}"
    );
    for leaked in ["472913-hsm-pin", "apple-p12-pass"] {
        assert!(!stderr.contains(leaked), "{leaked} leaked: {stderr}");
        assert!(!stdout.contains(leaked), "{leaked} leaked: {stdout}");
    }

    // A command secret that is not set stops before the command runs (exit 14).
    unsafe { std::env::remove_var("OPENWORK_TEST_LEAKY_PIN") };
    let output = sign_cli();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(14), "{stderr}");
    assert!(
        stderr.contains("env:OPENWORK_TEST_LEAKY_PIN is not set"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), original);
}

#[test]
fn bad_templates_and_missing_programs_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact.bin");
    std::fs::write(&file, "payload").unwrap();
    let config_error = |argv: &[&str]| match signer(argv).sign_file(&file) {
        Err(Error::Config(message)) => message.to_string(),
        other => panic!("{argv:?}: expected a configuration error, got {other:?}"),
    };

    let message = config_error(&["openwork-no-such-signing-tool", "{file}"]);
    assert!(
        message.contains("openwork-no-such-signing-tool"),
        "{message}"
    );
    assert!(message.contains("not found"), "{message}");

    let message = config_error(&["osslsigncode", "sign", "-in", "artifact.bin"]);
    assert!(message.contains("no {file} placeholder"), "{message}");

    let message = config_error(&["osslsigncode", "-in", "{fille}"]);
    assert!(message.contains("{fille}"), "{message}");

    let message = config_error(&[]);
    assert!(message.contains("empty"), "{message}");

    assert!(matches!(
        signer(&["true", "{file}"]).sign_file(&dir.path().join("missing.bin")),
        Err(Error::Io(_))
    ));
}
