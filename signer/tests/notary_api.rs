//! The Linux notarizer (Apple's Notary REST API) against recorded answers: the service
//! cannot be reached from here, so a transport answers as Apple and S3 do, in order, and
//! records what was asked. Checked: the JWT (ES256, verifiable with the key's public half,
//! the claims Apple requires), the submission and its SHA-256, the S3 upload's signature
//! headers, the bounded wait, and the log's issues in the error on rejection.
#![cfg(feature = "testing")]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use openwork_signer::Error;
use openwork_signer::notarize::{Notarizer, NotaryCredentials, Submission, zip_executable};
use openwork_signer::notary_api::{HttpAnswer, HttpRequest, NotaryApi, Polling, Transport};
use openwork_signer::secret::Secret;
use openwork_signer::testing::{KeyKind, TestPki};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const KEY_ID: &str = "2X9R4HXF34";
const ISSUER: &str = "57246542-96fe-1a63-e053-0824d011072a";

/// Answers in order, records requests.
struct Recorded {
    answers: Mutex<VecDeque<(u16, String)>>,
    requests: Mutex<Vec<HttpRequest>>,
}

impl Recorded {
    fn new(answers: &[(u16, &str)]) -> Self {
        Self {
            answers: Mutex::new(answers.iter().map(|(s, b)| (*s, b.to_string())).collect()),
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Transport for &Recorded {
    fn send(&self, request: &HttpRequest) -> openwork_signer::Result<HttpAnswer> {
        self.requests.lock().unwrap().push(request.clone());
        let (status, body) =
            self.answers.lock().unwrap().pop_front().unwrap_or_else(|| {
                panic!("no recorded answer for {} {}", request.method, request.url)
            });
        Ok(HttpAnswer {
            status,
            body: body.into_bytes(),
        })
    }
}

fn credentials(pki: &TestPki) -> NotaryCredentials {
    NotaryCredentials {
        key_id: Zeroizing::new(KEY_ID.into()),
        issuer_id: Zeroizing::new(ISSUER.into()),
        private_key: Secret::from_text(&pki.code_signing.key_pem),
    }
}

const SUBMITTED: &str = r#"{"data":{"type":"newSubmissions","id":"2efe2717-52ef-43a5-96dc-0797e4ca1041","attributes":{"awsAccessKeyId":"ASIAEXAMPLEKEYID","awsSecretAccessKey":"s3-secret-example/abc","awsSessionToken":"FwoGZXIvYXdzEXAMPLESESSION","bucket":"notary-submissions-prod","object":"prod/AQAAAEXAMPLE/server.zip"}},"meta":{}}"#;
const IN_PROGRESS: &str = r#"{"data":{"type":"submissions","id":"2efe2717-52ef-43a5-96dc-0797e4ca1041","attributes":{"status":"In Progress","name":"server.zip","createdDate":"2026-12-06T19:40:00.000Z"}},"meta":{}}"#;

fn status(status: &str) -> String {
    IN_PROGRESS.replace("In Progress", status)
}

fn submission(dir: &std::path::Path) -> Submission {
    let exe = dir.join("server");
    std::fs::write(&exe, b"\xcf\xfa\xed\xfe not really a mach-o").unwrap();
    let upload = dir.join("server.zip");
    std::fs::write(&upload, zip_executable(&exe).unwrap()).unwrap();
    Submission::from_file(&upload, dir).unwrap()
}

fn quick() -> Polling {
    Polling {
        interval: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn an_accepted_submission_is_submitted_uploaded_and_polled() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let dir = tempfile::tempdir().unwrap();
    let submission = submission(dir.path());
    let accepted = status("Accepted");
    let recorded = Recorded::new(&[
        (200, SUBMITTED),
        (200, ""),
        (200, IN_PROGRESS),
        (200, IN_PROGRESS),
        (200, &accepted),
    ]);
    let outcome = NotaryApi::new(credentials(&pki), &recorded)
        .with_polling(quick())
        .submit(&submission)
        .unwrap();
    assert_eq!(outcome.id, "2efe2717-52ef-43a5-96dc-0797e4ca1041");
    assert!(!outcome.stapleable);

    let requests = recorded.requests.lock().unwrap();
    let shown: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.url))
        .collect();
    assert_eq!(
        shown,
        [
            "POST https://appstoreconnect.apple.com/notary/v2/submissions",
            "PUT https://notary-submissions-prod.s3.us-west-2.amazonaws.com/prod/AQAAAEXAMPLE/server.zip",
            "GET https://appstoreconnect.apple.com/notary/v2/submissions/2efe2717-52ef-43a5-96dc-0797e4ca1041",
            "GET https://appstoreconnect.apple.com/notary/v2/submissions/2efe2717-52ef-43a5-96dc-0797e4ca1041",
            "GET https://appstoreconnect.apple.com/notary/v2/submissions/2efe2717-52ef-43a5-96dc-0797e4ca1041",
        ]
    );
    // The submission names the file and its SHA-256.
    let zip = std::fs::read(&submission.upload).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["submissionName"], "server.zip");
    assert_eq!(body["sha256"], hex::encode(Sha256::digest(&zip)));

    // The JWT: ES256 by the key, the claims Apple requires.
    let header = |r: &HttpRequest, name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let jwt = header(&requests[0], "Authorization").unwrap();
    let jwt = jwt.strip_prefix("Bearer ").unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&b64.decode(part).unwrap()).unwrap()
    };
    let (head, claims) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(head["alg"], "ES256");
    assert_eq!(head["kid"], KEY_ID);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "appstoreconnect-v1");
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 1200);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat.abs_diff(now) < 60);
    {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pki.code_signing.key_pem).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&b64.decode(parts[2]).unwrap()).unwrap();
        key.verifying_key()
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the JWT's signature verifies with the key's public half");
    }

    // The upload: the zip, signed with the temporary credentials (SigV4, session token).
    let upload = &requests[1];
    assert_eq!(upload.body, zip);
    let authorization = header(upload, "Authorization").unwrap();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEKEYID/"),
        "{authorization}"
    );
    assert!(
        authorization.contains("/us-west-2/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="),
        "{authorization}"
    );
    assert_eq!(
        header(upload, "x-amz-security-token").as_deref(),
        Some("FwoGZXIvYXdzEXAMPLESESSION")
    );
    assert_eq!(
        header(upload, "x-amz-content-sha256"),
        Some(hex::encode(Sha256::digest(&zip)))
    );
    assert!(!authorization.contains("s3-secret-example"));
}

#[test]
fn a_rejection_shows_the_issues_of_the_log() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let dir = tempfile::tempdir().unwrap();
    let invalid = status("Invalid");
    let logs = r#"{"data":{"type":"submissionsLog","id":"2efe2717-52ef-43a5-96dc-0797e4ca1041","attributes":{"developerLogUrl":"https://notary-artifacts-prod.s3.amazonaws.com/prod/2efe2717/developer_log.json?X-Amz-Signature=abc"}}}"#;
    let log = r#"{"logFormatVersion":1,"status":"Invalid","statusSummary":"Archive contains critical validation errors","issues":[{"severity":"error","path":"server.zip/server","message":"The signature does not include a secure timestamp.","architecture":"arm64"}]}"#;
    let recorded = Recorded::new(&[
        (200, SUBMITTED),
        (200, ""),
        (200, &invalid),
        (200, logs),
        (200, log),
    ]);
    let error = NotaryApi::new(credentials(&pki), &recorded)
        .with_polling(quick())
        .submit(&submission(dir.path()))
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Verification(_)), "{message}");
    assert!(message.contains("was Invalid"), "{message}");
    assert!(
        message.contains(
            "server.zip/server (arm64): The signature does not include a secure timestamp."
        ),
        "{message}"
    );
    let requests = recorded.requests.lock().unwrap();
    assert!(requests[3].url.ends_with("/logs"), "{:?}", requests[3].url);
    assert!(
        requests[4].headers.is_empty(),
        "the pre-signed log URL takes no token"
    );
}

#[test]
fn a_refused_key_is_a_credential_error_and_the_wait_is_bounded() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let dir = tempfile::tempdir().unwrap();
    let refused = format!(
        r#"{{"errors":[{{"status":"401","code":"NOT_AUTHORIZED","title":"Authentication credentials are missing or invalid.","detail":"Provide a properly configured and signed bearer token for key {KEY_ID}"}}]}}"#
    );
    let recorded = Recorded::new(&[(401, &refused)]);
    let error = NotaryApi::new(credentials(&pki), &recorded)
        .submit(&submission(dir.path()))
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Credentials(_)), "{message}");
    assert!(message.contains("signed bearer token"), "{message}");
    assert!(!message.contains(KEY_ID), "the key id leaked: {message}");

    let many: Vec<(u16, &str)> = [(200, SUBMITTED), (200, "")]
        .into_iter()
        .chain(std::iter::repeat_n((200, IN_PROGRESS), 50))
        .collect();
    let recorded = Recorded::new(&many);
    let error = NotaryApi::new(credentials(&pki), &recorded)
        .with_polling(Polling {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(100),
        })
        .submit(&submission(dir.path()))
        .unwrap_err();
    assert!(matches!(error, Error::Network(_)), "{error}");
    assert!(error.to_string().contains("still in progress"), "{error}");
    assert!(recorded.requests.lock().unwrap().len() < 12);

    // A key that is not an EC P-256 PKCS#8 key.
    let rsa = TestPki::generate(KeyKind::Rsa2048);
    let recorded = Recorded::new(&[]);
    let error = NotaryApi::new(credentials(&rsa), &recorded)
        .submit(&submission(dir.path()))
        .unwrap_err();
    assert!(matches!(error, Error::Credentials(_)), "{error}");
    assert!(error.to_string().contains("AuthKey_"), "{error}");
}

/// The command line picks the API notarizer (`--notarizer api`, or `notarizer = "api"` in
/// `[notarize]`), which reads the key from memory: a key that is not an App Store Connect
/// key stops it before any request (exit 14), and nothing is written to the temp dir.
#[test]
fn the_command_line_selects_the_api_notarizer() {
    let rsa = TestPki::generate(KeyKind::Rsa2048);
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let submission = submission(dir.path());
    for (flag, notarizer) in [(true, ""), (false, "notarizer = \"api\"\n")] {
        let config = dir.path().join("signing.toml");
        std::fs::write(
            &config,
            format!(
                "[codesign]\ncommand = [\"true\", \"{{file}}\"]\n[notarize]\nkey-id = \
                 \"env:T_KEY_ID\"\nissuer = \"env:T_ISSUER\"\nkey = \"env:T_P8\"\n{notarizer}"
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openwork-signer"));
        command
            .arg("notarize")
            .arg(&submission.upload)
            .arg("--config")
            .arg(&config)
            .env("TMPDIR", &temp)
            .env("T_KEY_ID", KEY_ID)
            .env("T_ISSUER", ISSUER)
            .env("T_P8", &rsa.code_signing.key_pem);
        if flag {
            command.args(["--notarizer", "api"]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(14), "{stderr}");
        assert!(stderr.contains("AuthKey_"), "{stderr}");
        assert!(
            !stderr.contains(KEY_ID) && !stderr.contains(ISSUER),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_dir(&temp).unwrap().count(),
            0,
            "a key was written"
        );
    }
}
