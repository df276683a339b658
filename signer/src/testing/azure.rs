//! A stand-in for Azure Artifact Signing and the identity services in front of it, on the
//! test HTTP server ([`super::http`]): Entra ID's token endpoint (client secret or federated
//! token), GitHub Actions' OIDC token endpoint, and the data plane's sign and poll, signing
//! with the test PKI's code-signing key and answering with its chain as the service does
//! (base64 of the base64 of a PKCS#7 certificate bag). What it checks of a request is what
//! the service checks: the credentials, the bearer token, the account and profile, the
//! algorithm, a 32-byte digest.
//!
//! Tests can make it fail the next signing operation, or answer 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::json;
use sha2::Sha256;

use super::MAX_BODY;
use super::TestPki;
use super::http::{Request, Response, TestServer};

/// The tenant the stand-in knows.
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The client id it knows.
pub const CLIENT_ID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
/// The client secret it takes.
pub const CLIENT_SECRET: &str = "Xq8~stand-in-client-secret.4fN2";
/// The federated token it takes as a client assertion.
pub const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.stand-in-federated-token.c2ln";
/// The request token GitHub Actions gives the job.
pub const GITHUB_REQUEST_TOKEN: &str = "stand-in-actions-request-token-77c1";
/// The account.
pub const ACCOUNT: &str = "openwork";
/// The certificate profile.
pub const PROFILE: &str = "release";

/// PKCS#7 `data`, the content type of a certificate bag.
const ID_DATA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

/// A running stand-in; stops when dropped.
pub struct TestArtifactSigning {
    server: TestServer,
    state: Arc<State>,
}

struct State {
    key: rsa::RsaPrivateKey,
    /// The PKCS#7 certificate bag, DER.
    chain: Vec<u8>,
    tokens: Mutex<Vec<String>>,
    operations: Mutex<HashMap<String, Operation>>,
    next: AtomicU64,
    faults: Mutex<Faults>,
    log: Mutex<Vec<String>>,
}

struct Operation {
    digest: Vec<u8>,
    polls_left: u32,
    failure: Option<String>,
}

#[derive(Default)]
struct Faults {
    fail_next_sign: Option<String>,
    unavailable: bool,
}

impl TestArtifactSigning {
    /// Starts the stand-in, signing with `pki`'s code-signing key (RSA).
    pub fn start(pki: &TestPki) -> Self {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&pki.code_signing.key_pkcs8_der)
            .expect("the stand-in signs with an RSA test PKI (KeyKind::Rsa2048)");
        let state = Arc::new(State {
            key,
            chain: certificate_bag(&[&pki.code_signing.der, &pki.ca.der]),
            tokens: Mutex::new(Vec::new()),
            operations: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
        });
        let server = {
            let state = Arc::clone(&state);
            TestServer::builder("test-artifact-signing")
                .max_body(MAX_BODY)
                .start(move |r| handle(r, &state))
                .expect("start the test-artifact-signing stand-in")
        };
        Self { server, state }
    }

    /// The data-plane endpoint.
    pub fn endpoint(&self) -> String {
        self.server.base_url()
    }

    /// Entra ID's authority.
    pub fn authority(&self) -> String {
        format!("{}/entra", self.server.base_url())
    }

    /// What GitHub Actions puts in `ACTIONS_ID_TOKEN_REQUEST_URL`.
    pub fn github_request_url(&self) -> String {
        format!("{}/github-oidc?api-version=2.0", self.server.base_url())
    }

    /// The next signing operation ends `Failed` with `message`.
    pub fn fail_next_sign(&self, message: &str) {
        self.state
            .faults
            .lock()
            .expect("stand-in state")
            .fail_next_sign = Some(message.into());
    }

    /// Every data-plane request answers 503 from now on.
    pub fn make_unavailable(&self) {
        self.state
            .faults
            .lock()
            .expect("stand-in state")
            .unavailable = true;
    }

    /// The requests so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().expect("stand-in state").clone()
    }
}

impl std::fmt::Debug for TestArtifactSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestArtifactSigning")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

/// A degenerate PKCS#7 SignedData holding only certificates (a `.p7b`).
fn certificate_bag(certificates: &[&[u8]]) -> Vec<u8> {
    let choices: Vec<CertificateChoices> = certificates
        .iter()
        .map(|der| {
            CertificateChoices::Certificate(x509_cert::Certificate::from_der(der).expect("DER"))
        })
        .collect();
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(choices).expect("a certificate set"),
        )),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    ContentInfo {
        content_type: crate::authenticode::structures::SIGNED_DATA,
        content: Any::encode_from(&signed).expect("SignedData encodes"),
    }
    .to_der()
    .expect("ContentInfo encodes")
}

fn handle(request: &Request, state: &State) -> Response {
    state.log.lock().expect("stand-in state").push(format!(
        "{} {}",
        request.method,
        request.path()
    ));
    let path = request.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("POST", ["entra", tenant, "oauth2", "v2.0", "token"]) => token(request, state, tenant),
        ("GET", ["github-oidc"]) => github(request),
        (
            method,
            [
                "codesigningaccounts",
                account,
                "certificateprofiles",
                profile,
                "sign",
                rest @ ..,
            ],
        ) => {
            if state.faults.lock().expect("stand-in state").unavailable {
                return Response::json(
                    503,
                    &json!({"errorDetail": {"code": "ServiceUnavailable", "message": "unavailable on purpose"}}),
                );
            }
            let authorized = request
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|t| {
                    state
                        .tokens
                        .lock()
                        .expect("stand-in state")
                        .iter()
                        .any(|k| k == t)
                });
            if !authorized {
                return Response::json(
                    401,
                    &json!({"errorDetail": {"code": "Unauthorized", "message": "the bearer token is missing or not valid for this resource"}}),
                );
            }
            if *account != ACCOUNT || *profile != PROFILE {
                return Response::json(
                    404,
                    &json!({"errorDetail": {"code": "NotFound", "message": format!("no certificate profile {account}/{profile}")}}),
                );
            }
            if request.query("api-version").is_none() {
                return Response::json(
                    400,
                    &json!({"errorDetail": {"code": "MissingApiVersion", "message": "api-version is required"}}),
                );
            }
            match (method, rest) {
                ("POST", []) => begin_sign(request, state),
                ("GET", [operation]) => poll(state, operation),
                _ => Response::json(405, &json!({"message": "no such operation"})),
            }
        }
        _ => Response::json(404, &json!({"message": "no such route"})),
    }
}

/// Entra ID's token endpoint. Its error descriptions quote what it got back, as some
/// identity services do, so that a test sees whether the signer redacts them.
fn token(request: &Request, state: &State, tenant: &str) -> Response {
    let form = form(&request.body);
    let get = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let refuse = |code: &str, description: String| {
        Response::json(
            401,
            &json!({"error": code, "error_description": description}),
        )
    };
    if tenant != TENANT_ID {
        return Response::json(
            400,
            &json!({"error": "invalid_tenant", "error_description": format!("AADSTS90002: Tenant '{tenant}' not found.")}),
        );
    }
    if get("grant_type") != "client_credentials" || get("scope") != crate::azure::SCOPE {
        return Response::json(
            400,
            &json!({"error": "invalid_request", "error_description": "AADSTS900144: grant_type or scope is wrong"}),
        );
    }
    if get("client_id") != CLIENT_ID {
        return refuse(
            "unauthorized_client",
            format!(
                "AADSTS700016: Application with identifier '{}' was not found.",
                get("client_id")
            ),
        );
    }
    let good = if let Some(secret) = form.get("client_secret") {
        if secret != CLIENT_SECRET {
            return refuse(
                "invalid_client",
                format!("AADSTS7000215: Invalid client secret provided: '{secret}'."),
            );
        }
        true
    } else {
        get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            && get("client_assertion") == FEDERATED_TOKEN
    };
    if !good {
        return refuse(
            "invalid_client",
            format!(
                "AADSTS700213: No matching federated identity record found for assertion '{}'.",
                get("client_assertion")
            ),
        );
    }
    let access = format!(
        "stand-in-access-token-{}",
        state.next.fetch_add(1, Ordering::SeqCst)
    );
    state
        .tokens
        .lock()
        .expect("stand-in state")
        .push(access.clone());
    Response::json(
        200,
        &json!({"token_type": "Bearer", "expires_in": 3599, "access_token": access}),
    )
}

fn github(request: &Request) -> Response {
    let authorized = request
        .header("authorization")
        .is_some_and(|h| h == format!("bearer {GITHUB_REQUEST_TOKEN}"));
    if !authorized {
        return Response::json(401, &json!({"message": "bad request token"}));
    }
    if request.query("audience") != Some("api%3A%2F%2FAzureADTokenExchange") {
        return Response::json(400, &json!({"message": "wrong audience"}));
    }
    Response::json(200, &json!({"count": 1, "value": FEDERATED_TOKEN}))
}

fn begin_sign(request: &Request, state: &State) -> Response {
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let digest = body["digest"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
    let (Some(digest), Some("RS256")) = (digest, body["signatureAlgorithm"].as_str()) else {
        return Response::json(
            400,
            &json!({"errorDetail": {"code": "BadRequest", "message": "signatureAlgorithm RS256 and a base64 digest are required"}}),
        );
    };
    if digest.len() != 32 {
        return Response::json(
            400,
            &json!({"errorDetail": {"code": "BadRequest", "message": "RS256 takes a 32-byte digest"}}),
        );
    }
    let id = format!(
        "6ba7b810-9dad-11d1-80b4-{:012}",
        state.next.fetch_add(1, Ordering::SeqCst)
    );
    let failure = state
        .faults
        .lock()
        .expect("stand-in state")
        .fail_next_sign
        .take();
    state.operations.lock().expect("stand-in state").insert(
        id.clone(),
        Operation {
            digest,
            polls_left: 1,
            failure,
        },
    );
    Response::json(202, &json!({"operationId": id, "status": "InProgress"})).with_header(
        "Operation-Location",
        &format!(
            "{}/{id}?api-version={}",
            request.path(),
            crate::azure::API_VERSION
        ),
    )
}

fn poll(state: &State, id: &str) -> Response {
    let mut operations = state.operations.lock().expect("stand-in state");
    let Some(operation) = operations.get_mut(id) else {
        return Response::json(
            404,
            &json!({"errorDetail": {"code": "NotFound", "message": "no such operation"}}),
        );
    };
    if operation.polls_left > 0 {
        operation.polls_left -= 1;
        return Response::json(200, &json!({"operationId": id, "status": "InProgress"}));
    }
    if let Some(message) = &operation.failure {
        return Response::json(
            200,
            &json!({"operationId": id, "status": "Failed", "error": {"message": message}}),
        );
    }
    let signature = state
        .key
        .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &operation.digest)
        .expect("the stand-in signs");
    let b64 = base64::engine::general_purpose::STANDARD;
    Response::json(
        200,
        &json!({
            "operationId": id,
            "status": "Succeeded",
            "signature": b64.encode(signature),
            "signingCertificate": b64.encode(b64.encode(&state.chain)),
        }),
    )
}

/// An `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
