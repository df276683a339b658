//! The external signing command: osslsigncode signing a real PE through `{out}`, in-place
//! commands, the environment reaching the command, and the failures a user must understand.
#![cfg(feature = "testing")]

use std::path::{Path, PathBuf};
use std::process::Command;

use openwork_signer::Error;
use openwork_signer::external::ExternalSigner;
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};

fn signer(argv: &[&str]) -> ExternalSigner {
    ExternalSigner {
        command: argv.iter().map(|s| s.to_string()).collect(),
    }
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

#[test]
fn bad_templates_and_missing_programs_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact.bin");
    std::fs::write(&file, "payload").unwrap();
    let config_error = |argv: &[&str]| match signer(argv).sign_file(&file) {
        Err(Error::Config(message)) => message,
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
