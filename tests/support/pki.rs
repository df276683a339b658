//! A throw-away code-signing PKI, made with the `openssl` CLI at test time.
//!
//! Why generated and not checked in: certificates expire, and a key in the repository
//! invites being mistaken for a real one. Why the CLI and not a Rust crate: the signing
//! tools under test (osslsigncode, later signtool-compatible backends) read exactly these
//! PEM files, so they are produced by the same OpenSSL those tools trust, with no extra
//! dependency. Keys are unencrypted, so no password ever appears on a command line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test CA and a leaf certificate for Authenticode signing
/// (`extendedKeyUsage = codeSigning`), as PEM files in one directory.
#[derive(Debug, Clone)]
pub struct CodeSigningPki {
    /// The self-signed CA certificate: what a verifier is told to trust (`-CAfile`).
    pub ca_cert: PathBuf,
    /// The CA's private key (kept for tests that issue more certificates).
    pub ca_key: PathBuf,
    /// The code-signing leaf certificate, issued by the CA.
    pub leaf_cert: PathBuf,
    /// The leaf's private key, unencrypted.
    pub leaf_key: PathBuf,
}

/// Extensions of the leaf: a non-CA end entity that may only sign code, with key
/// identifiers so that verifiers can build the chain without guessing by name.
const LEAF_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Validity of the generated certificates: long enough for any test run, short enough to
/// be useless if one ever leaked out of a temporary directory.
const VALIDITY_DAYS: &str = "2";

impl CodeSigningPki {
    /// Generates a CA and a code-signing leaf into `dir` (which must exist). Panics with
    /// OpenSSL's own message if anything fails: a test cannot go on without its PKI.
    pub fn generate(dir: &Path) -> CodeSigningPki {
        let pki = CodeSigningPki {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            leaf_cert: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        };
        let leaf_csr = dir.join("leaf.csr");
        let leaf_ext = dir.join("leaf.ext");
        std::fs::write(&leaf_ext, LEAF_EXTENSIONS).expect("write the leaf's extension file");

        run(openssl()
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .arg("-keyout")
            .arg(&pki.ca_key)
            .arg("-out")
            .arg(&pki.ca_cert)
            .args(["-days", VALIDITY_DAYS, "-subj", "/CN=openwork test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        run(openssl()
            .args(["req", "-newkey", "rsa:2048", "-nodes"])
            .arg("-keyout")
            .arg(&pki.leaf_key)
            .arg("-out")
            .arg(&leaf_csr)
            .args(["-subj", "/CN=openwork test code signing"]));
        run(openssl()
            .args(["x509", "-req"])
            .arg("-in")
            .arg(&leaf_csr)
            .arg("-CA")
            .arg(&pki.ca_cert)
            .arg("-CAkey")
            .arg(&pki.ca_key)
            // A fixed serial rather than -CAcreateserial, which would leave a serial file
            // beside the CA certificate.
            .args(["-set_serial", "2", "-days", VALIDITY_DAYS])
            .arg("-extfile")
            .arg(&leaf_ext)
            .arg("-out")
            .arg(&pki.leaf_cert));
        pki
    }
}

/// Panics with a hint to install `tool` if it cannot be run. Tests that need an external
/// tool call this first, so that a missing tool fails loudly instead of the test passing
/// without having checked anything.
pub fn require_tool(tool: &str, install_hint: &str) {
    // Whether it starts is the question; its exit status for `--version` varies by tool.
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "`{tool}` is needed by this test and could not be run; {install_hint}"
    );
}

/// An `openssl` command, after checking that the tool is there.
fn openssl() -> Command {
    require_tool(
        "openssl",
        "install OpenSSL's command line tool (apt: openssl)",
    );
    Command::new("openssl")
}

/// Runs `command`, panicking with its output if it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
