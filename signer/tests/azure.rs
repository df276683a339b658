//! Azure Artifact Signing against the local stand-in (`testing::azure`): the signer's own
//! command line, configured by TOML with secrets in its environment, signs a PE through
//! the token exchange (client secret, federated token from GitHub Actions), sign and poll,
//! with the service's certificate chain and a time stamp; osslsigncode and our verifier
//! accept the result. Wrong credentials and a failing service stop with a clear message,
//! the right exit code, and no secret.
#![cfg(feature = "testing")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use openwork_payload::container::pe::testing::minimal_pe;
use openwork_signer::authenticode::{self, TrustAnchors};
use openwork_signer::testing::azure::{self, TestArtifactSigning};
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki, noise};

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(KeyKind::Rsa2048))
}

struct Setup {
    dir: tempfile::TempDir,
    service: TestArtifactSigning,
    tsa: TestTsa,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            service: TestArtifactSigning::start(pki()),
            tsa: TestTsa::start(pki()),
        }
    }

    /// A configuration with the given credential line(s) and an unsigned PE to sign.
    fn config(&self, credential: &str) -> (PathBuf, PathBuf) {
        let config = self.dir.path().join("signing.toml");
        std::fs::write(
            &config,
            format!(
                "[authenticode]\nazure-artifact-signing = {{ endpoint = \"{}\", account = \
                 \"{}\", certificate-profile = \"{}\", authority = \"{}\", tenant-id = \
                 \"env:AZURE_TENANT_ID\", client-id = \"env:AZURE_CLIENT_ID\", {credential} }}\n\
                 timestamp-urls = [\"{}\"]\ndescription = \"OpenWork server\"\n",
                self.service.endpoint(),
                azure::ACCOUNT,
                azure::PROFILE,
                self.service.authority(),
                self.tsa.url(),
            ),
        )
        .unwrap();
        let file = self.dir.path().join("openwork-server-v2.exe");
        std::fs::write(&file, minimal_pe(&noise("azure", 4099))).unwrap();
        (config, file)
    }

    fn sign(&self, config: &Path, file: &Path, env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_openwork-signer"));
        command
            .args(["sign", "--config"])
            .arg(config)
            .arg(file)
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
            .env("AZURE_TENANT_ID", azure::TENANT_ID)
            .env("AZURE_CLIENT_ID", azure::CLIENT_ID);
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    }

    /// Signs with the right client secret, expecting failure with `code`; the message.
    fn refused(&self, config: &Path, file: &Path, code: i32) -> String {
        let output = self.sign(
            config,
            file,
            &[("AZURE_CLIENT_SECRET", azure::CLIENT_SECRET)],
        );
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{message}");
        message
    }

    /// osslsigncode and our verifier both accept `file`, chained to the test roots, with a
    /// time stamp.
    fn assert_verifies(&self, file: &Path) {
        let files = pki().write_files(self.dir.path()).unwrap();
        let output = Command::new("osslsigncode")
            .arg("verify")
            .arg("-in")
            .arg(file)
            .arg("-CAfile")
            .arg(&files.ca_pem)
            .arg("-TSA-CAfile")
            .arg(&files.tsa_ca_pem)
            .output()
            .expect("osslsigncode runs (apt: osslsigncode)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "osslsigncode refused the signature:\n{text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("Signature verification: ok"), "{text}");
        let trust =
            TrustAnchors::parse(pki().ca.pem.as_bytes(), pki().tsa_ca.pem.as_bytes()).unwrap();
        let verified = authenticode::verify(&std::fs::read(file).unwrap(), &trust).unwrap();
        assert!(verified.timestamp.is_some(), "no time stamp: {verified:?}");
        // The service's certificate, not one of ours: the chain came from the answer.
        assert!(
            verified.signer.contains("openwork test code signing"),
            "{verified:?}"
        );
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_client_secret_signs_through_the_service_with_its_chain_and_a_time_stamp() {
    let setup = Setup::new();
    let (config, file) = setup.config("client-secret = \"env:AZURE_CLIENT_SECRET\"");
    let output = setup.sign(
        &config,
        &file,
        &[("AZURE_CLIENT_SECRET", azure::CLIENT_SECRET)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("authenticode by Azure Artifact Signing openwork/release"),
        "{stdout}"
    );
    setup.assert_verifies(&file);
    let requests = setup.service.requests();
    let path = format!(
        "/codesigningaccounts/{}/certificateprofiles/{}/sign",
        azure::ACCOUNT,
        azure::PROFILE
    );
    assert_eq!(
        requests[..3],
        [
            format!("POST /entra/{}/oauth2/v2.0/token", azure::TENANT_ID),
            format!("POST {path}"),
            format!("GET {path}/{}", requests[2].rsplit('/').next().unwrap()),
        ],
        "token, sign, then poll: {requests:?}"
    );
    assert!(
        requests.len() >= 4,
        "the operation is polled to its end: {requests:?}"
    );
    assert_eq!(setup.tsa.requests(), 1);
}

#[test]
fn github_actions_workload_identity_federation_signs() {
    let setup = Setup::new();
    let (config, file) = setup.config("federated-token = \"github-actions\"");
    let url = setup.service.github_request_url();
    let output = setup.sign(
        &config,
        &file,
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", url.as_str()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                azure::GITHUB_REQUEST_TOKEN,
            ),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    setup.assert_verifies(&file);
    assert_eq!(setup.service.requests()[0], "GET /github-oidc");

    // A federated token file (AKS workload identity, other CI systems) works the same way.
    let token_file = setup.dir.path().join("federated-token");
    std::fs::write(&token_file, format!("{}\n", azure::FEDERATED_TOKEN)).unwrap();
    let (config, file) = setup.config("federated-token = \"file:federated-token\"");
    let output = setup.sign(&config, &file, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    setup.assert_verifies(&file);

    // Without the id-token permission, GitHub gives no request variables: a missing secret.
    let (config, file) = setup.config("federated-token = \"github-actions\"");
    let output = setup.sign(&config, &file, &[]);
    assert_eq!(output.status.code(), Some(14), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("env:ACTIONS_ID_TOKEN_REQUEST_URL is not set"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn wrong_credentials_and_service_errors_are_credential_errors_without_secrets() {
    let setup = Setup::new();
    let (config, file) = setup.config("client-secret = \"env:AZURE_CLIENT_SECRET\"");
    let original = std::fs::read(&file).unwrap();
    let wrong = "Zz9~a-wrong-secret-that-the-service-echoes";
    let output = setup.sign(&config, &file, &[("AZURE_CLIENT_SECRET", wrong)]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(14), "{message}");
    assert!(
        message.contains("Entra ID refused the signer's credentials"),
        "{message}"
    );
    assert!(message.contains("AADSTS7000215"), "{message}");
    assert!(!message.contains(wrong), "the secret leaked: {message}");
    assert!(
        !message.contains(azure::CLIENT_ID),
        "the client id leaked: {message}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), original);

    setup
        .service
        .fail_next_sign("the certificate profile is suspended");
    let message = setup.refused(&config, &file, 14);
    assert!(message.contains("did not sign"), "{message}");
    assert!(message.contains("Failed"), "{message}");
    assert!(
        message.contains("the certificate profile is suspended"),
        "{message}"
    );
    assert!(!message.contains(azure::CLIENT_SECRET), "{message}");
    assert_eq!(std::fs::read(&file).unwrap(), original);

    // An account that is not there: the service's 404, with what to check.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("account = \"openwork\"", "account = \"elsewhere\"");
    std::fs::write(&config, text).unwrap();
    let message = setup.refused(&config, &file, 14);
    assert!(message.contains("HTTP 404"), "{message}");
    assert!(message.contains("check endpoint"), "{message}");

    // A service that is down is a network failure (exit 11), not a credential problem.
    let (config, file) = setup.config("client-secret = \"env:AZURE_CLIENT_SECRET\"");
    setup.service.make_unavailable();
    let message = setup.refused(&config, &file, 11);
    assert!(message.contains("HTTP 503"), "{message}");
}
