//! Azure Artifact Signing (formerly Trusted Signing) as an Authenticode key: the service
//! holds the key and a certificate that lives about three days; we send it the SHA-256
//! digest of the signature's signed attributes and get back the signature and the
//! certificate chain it signed with. The RFC 3161 time stamp that keeps the signature valid
//! after those three days is always added (Microsoft's authority unless configured).
//!
//! | step | request | answer |
//! |---|---|---|
//! | token | `POST {authority}/{tenant}/oauth2/v2.0/token`, client credentials, scope `https://codesigning.azure.net/.default`; with a client secret, or a federated token as `client_assertion` (workload identity federation) | `access_token`, `expires_in` |
//! | federated token from GitHub Actions | `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=api://AzureADTokenExchange`, `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` (the job needs `permissions: id-token: write`) | `value` |
//! | sign | `POST {endpoint}/codesigningaccounts/{account}/certificateprofiles/{profile}/sign?api-version=2022-06-15-preview`, `{"signatureAlgorithm": "RS256", "digest": base64}` | 202, `operationId` |
//! | poll (bounded) | `GET …/sign/{operationId}?api-version=…` | `status` `InProgress`, then `Succeeded` with `signature` (base64) and `signingCertificate` (base64 of the base64 of a PKCS#7 certificate bag) |
//!
//! The endpoint and the authority are configurable (the service has one endpoint per
//! region; tests point both at a local stand-in, `testing::azure`). Exit codes: credentials
//! that Entra ID refuses, a token the service refuses, and a signing operation the service
//! fails are credential errors (14); a service that cannot be reached or answers 5xx is a
//! network error (11). Every message goes through a [`Redactor`] that knows the secrets.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use der::{Decode, Encode};
use openwork_retry::{Backoff, Failure};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use x509_certificate::{CapturedX509Certificate, SignatureAlgorithm};
use zeroize::Zeroizing;

use crate::authenticode::{AttributeSigner, Signature};
use crate::error::{Error, NetworkError, Result, ServiceError};
use crate::external::tail;
use crate::secret::{Redactor, Secret};

/// Entra ID's public cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The audience of the tokens the service takes.
pub const SCOPE: &str = "https://codesigning.azure.net/.default";
/// Polling a signing operation: 0.1 s before the first status request, doubled up to 2 s
/// (operations usually finish within a second); given up when the next request would
/// start after the client's timeout.
const POLL: Backoff =
    Backoff::exponential(Duration::from_millis(100)).max_delay(Duration::from_secs(2));

/// The data-plane API version the sign and poll requests name.
pub const API_VERSION: &str = "2022-06-15-preview";
/// The audience Entra ID expects of a federated token.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Microsoft's RFC 3161 authority for Artifact Signing, used when no other is configured.
pub const DEFAULT_TIMESTAMP_URL: &str = "http://timestamp.acs.microsoft.com";

/// How the signer proves who it is to Entra ID (secrets resolved).
pub enum AzureCredential {
    /// An app registration's client secret.
    ClientSecret(Secret),
    /// A federated token (workload identity federation), read from a file or a variable.
    FederatedToken(Secret),
    /// GitHub Actions' OIDC token, asked for at the URL with the request token the runner
    /// gives a job with `id-token: write`.
    GitHubActions {
        /// `ACTIONS_ID_TOKEN_REQUEST_URL`.
        request_url: Secret,
        /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        request_token: Secret,
    },
}

/// A configured, credentialed Artifact Signing client.
pub struct AzureSigner {
    endpoint: String,
    account: String,
    profile: String,
    authority: String,
    tenant_id: Secret,
    client_id: Secret,
    credential: AzureCredential,
    timeout: Duration,
    redactor: Redactor,
    http: reqwest::blocking::Client,
    token: Mutex<Option<(Zeroizing<String>, Instant)>>,
}

/// The parts of an [`AzureSigner`] that are not secret.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// The regional endpoint, e.g. `https://eus.codesigning.azure.net`.
    pub endpoint: String,
    /// The Artifact Signing account.
    pub account: String,
    /// The certificate profile.
    pub profile: String,
    /// Entra ID's authority.
    pub authority: String,
    /// The longest a signing operation (and each request) may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for AzureSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSigner")
            .field("endpoint", &self.endpoint)
            .field("account", &self.account)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OperationAnswer {
    #[serde(rename = "operationId")]
    operation_id: String,
    status: String,
    #[serde(default)]
    signature: Option<String>,
    #[serde(rename = "signingCertificate", default)]
    signing_certificate: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl AzureSigner {
    /// A client for `settings` authenticating as `client_id` in `tenant_id` with
    /// `credential`; fetches a token now, so wrong credentials fail before anything is
    /// built.
    pub fn connect(
        settings: AzureSettings,
        tenant_id: Secret,
        client_id: Secret,
        credential: AzureCredential,
    ) -> Result<Self> {
        let mut redactor = Redactor::new([&tenant_id, &client_id]);
        match &credential {
            AzureCredential::ClientSecret(secret) | AzureCredential::FederatedToken(secret) => {
                redactor.add(secret)
            }
            AzureCredential::GitHubActions {
                request_url,
                request_token,
            } => {
                redactor.add(request_url);
                redactor.add(request_token);
            }
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("openwork-signer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NetworkError::Client { source: e.into() })?;
        let signer = Self {
            endpoint: settings.endpoint.trim_end_matches('/').to_owned(),
            account: settings.account,
            profile: settings.profile,
            authority: settings.authority.trim_end_matches('/').to_owned(),
            tenant_id,
            client_id,
            credential,
            timeout: settings.timeout,
            redactor,
            http,
            token: Mutex::new(None),
        };
        signer.token()?;
        Ok(signer)
    }

    /// The profile, for reports: `account/profile`.
    pub fn name(&self) -> String {
        format!("Azure Artifact Signing {}/{}", self.account, self.profile)
    }

    /// A valid access token: the cached one, or a new one when it is about to expire.
    fn token(&self) -> Result<Zeroizing<String>> {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let client_id = self.client_id.text()?;
        let assertion;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", SCOPE),
        ];
        match &self.credential {
            AzureCredential::ClientSecret(secret) => form.push(("client_secret", secret.text()?)),
            AzureCredential::FederatedToken(token) => {
                assertion = Zeroizing::new(token.text()?.trim().to_owned());
                form.push(("client_assertion", &assertion));
            }
            AzureCredential::GitHubActions {
                request_url,
                request_token,
            } => {
                assertion = self.github_token(request_url, request_token)?;
                form.push(("client_assertion", &assertion));
            }
        }
        if !matches!(self.credential, AzureCredential::ClientSecret(_)) {
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority,
            self.tenant_id.text()?
        );
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .map_err(|e| self.unreachable("Entra ID", &e))?;
        let status = response.status();
        let body = Zeroizing::new(response.text().unwrap_or_default());
        if !status.is_success() {
            return Err(ServiceError::Refused {
                refusal: "Entra ID refused the signer's credentials".into(),
                status: status.as_u16(),
                message: self.service_message(&body),
                hint: "; check the tenant id, the client id and the client secret or \
                       federated credential of [authenticode] azure-artifact-signing",
            }
            .into());
        }
        let answer: TokenAnswer =
            serde_json::from_str(&body).map_err(|_| ServiceError::Answer {
                service: "Entra ID".into(),
                problem: "an answer without an access token".into(),
            })?;
        let token = Zeroizing::new(answer.access_token);
        // Renewed five minutes before it expires (tokens live about an hour).
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).saturating_sub(300));
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    fn github_token(
        &self,
        request_url: &Secret,
        request_token: &Secret,
    ) -> Result<Zeroizing<String>> {
        let url = request_url.text()?;
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = Zeroizing::new(format!(
            "{url}{separator}audience={}",
            FEDERATED_AUDIENCE.replace(':', "%3A").replace('/', "%2F")
        ));
        let response = self
            .http
            .get(url.as_str())
            .header("Authorization", format!("bearer {}", request_token.text()?))
            .send()
            .map_err(|e| self.unreachable("GitHub Actions' token service", &e))?;
        let status = response.status();
        let body = Zeroizing::new(response.text().unwrap_or_default());
        #[derive(Deserialize)]
        struct Answer {
            value: String,
        }
        match serde_json::from_str::<Answer>(&body) {
            Ok(answer) if status.is_success() => Ok(Zeroizing::new(answer.value)),
            _ => Err(ServiceError::Refused {
                refusal: "GitHub Actions gave no OIDC token".into(),
                status: status.as_u16(),
                message: self.service_message(&body),
                hint: "; the job needs `permissions: id-token: write`",
            }
            .into()),
        }
    }

    /// Signs `digest` (SHA-256) and returns the signature and the certificates (leaf
    /// first).
    pub fn sign_digest(
        &self,
        digest: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<CapturedX509Certificate>)> {
        let token = self.token()?;
        let base = format!(
            "{}/codesigningaccounts/{}/certificateprofiles/{}/sign",
            self.endpoint, self.account, self.profile
        );
        let body = serde_json::json!({
            "signatureAlgorithm": "RS256",
            "digest": base64::engine::general_purpose::STANDARD.encode(digest),
        });
        let response = self
            .http
            .post(format!("{base}?api-version={API_VERSION}"))
            .bearer_auth(token.as_str())
            .json(&body)
            .send()
            .map_err(|e| self.unreachable("the Artifact Signing service", &e))?;
        let mut first = Some(self.operation(response)?);
        // Each answer names the operation the next poll asks about.
        let mut operation_id = String::new();
        let poll = POLL.deadline(self.timeout);
        let answer = poll
            .retry(
                || {
                    let answer = match first.take() {
                        Some(answer) => answer,
                        None => {
                            let response = self
                                .http
                                .get(format!("{base}/{operation_id}?api-version={API_VERSION}"))
                                .bearer_auth(token.as_str())
                                .send()
                                .map_err(|e| {
                                    Failure::Permanent(
                                        self.unreachable("the Artifact Signing service", &e),
                                    )
                                })?;
                            self.operation(response).map_err(Failure::Permanent)?
                        }
                    };
                    operation_id.clone_from(&answer.operation_id);
                    if answer.status == "InProgress" || answer.status == "NotStarted" {
                        // Still running: polled again (the ID is all the next poll needs).
                        Err(Failure::Transient(()))
                    } else {
                        Ok(answer)
                    }
                },
                |_| {},
            )
            .map_err(|gave_up| match gave_up.failure {
                Failure::Permanent(error) => error,
                Failure::Transient(()) => NetworkError::Timeout {
                    what: format!("{}: signing operation {operation_id}", self.name()),
                    seconds: self.timeout.as_secs(),
                }
                .into(),
            })?;
        if answer.status != "Succeeded" {
            let why = answer
                .error
                .map(|e| self.service_message(&e.to_string()))
                .unwrap_or_else(|| "no details".into());
            return Err(ServiceError::NotSigned {
                service: self.name(),
                operation: answer.operation_id,
                status: answer.status,
                why,
            }
            .into());
        }
        let missing = |what: &str| ServiceError::Answer {
            service: self.name(),
            problem: format!("the signing operation succeeded without {what}"),
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(answer.signature.ok_or_else(|| missing("a signature"))?)
            .map_err(|_| missing("a base64 signature"))?;
        let certificates = parse_signing_certificate(
            &answer
                .signing_certificate
                .ok_or_else(|| missing("a certificate"))?,
        )?;
        Ok((signature, certificates))
    }

    /// The operation an answer describes, or the error it is.
    fn operation(&self, response: reqwest::blocking::Response) -> Result<OperationAnswer> {
        let status = response.status();
        let body = response.text().unwrap_or_default();
        if status.is_server_error() {
            return Err(NetworkError::Status {
                service: self.name(),
                status: status.as_u16(),
                at: String::new(),
                message: self.service_message(&body),
                hint: "; try again later",
            }
            .into());
        }
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => {
                    "; the signing identity needs the \"Artifact Signing Certificate Profile \
                     Signer\" role on the certificate profile"
                }
                404 => "; check endpoint (the account's region), account and certificate-profile",
                _ => "",
            };
            return Err(ServiceError::Refused {
                refusal: format!("{} refused to sign", self.name()),
                status: status.as_u16(),
                message: self.service_message(&body),
                hint,
            }
            .into());
        }
        serde_json::from_str(&body).map_err(|e| {
            NetworkError::Answer {
                service: self.name(),
                what: format!(
                    "something other than an operation ({e}): {}",
                    self.service_message(&body)
                ),
            }
            .into()
        })
    }

    /// What a service said in an error answer: its message fields, or the end of the body;
    /// redacted.
    fn service_message(&self, body: &str) -> String {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let pick = |pointer: &str| {
                    v.pointer(pointer)
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                };
                pick("/error_description")
                    .or_else(|| pick("/error/message"))
                    .or_else(|| pick("/errorDetail/message"))
                    .or_else(|| pick("/message"))
                    .or_else(|| pick("/title"))
                    .or_else(|| pick("/error"))
            })
            .unwrap_or_else(|| body.to_owned());
        let message = tail(&self.redactor.redact(&message));
        if message.is_empty() {
            "no details".into()
        } else {
            message
        }
    }

    fn unreachable(&self, what: &str, error: &reqwest::Error) -> Error {
        NetworkError::Unreachable {
            service: what.to_owned(),
            detail: self.redactor.redact(&error.to_string()),
        }
        .into()
    }
}

impl AttributeSigner for AzureSigner {
    fn describe(&self) -> String {
        self.name()
    }

    fn sign_attributes(&self, message: &[u8]) -> Result<Signature> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let (value, mut certificates) = self.sign_digest(&digest)?;
        let certificate = certificates.remove(0);
        check_rsa_signature(&certificate, &digest, &value).map_err(|problem| {
            ServiceError::Answer {
                service: self.name(),
                problem,
            }
        })?;
        Ok(Signature {
            value,
            algorithm: SignatureAlgorithm::RsaSha256,
            certificate,
            chain: certificates,
        })
    }
}

/// Checks an RS256 signature over `digest` against the certificate's RSA key: a service
/// answer that does not match (a key rotated between sign and certificate, a proxy) fails
/// here, with a clear message, rather than in a verifier later.
fn check_rsa_signature(
    certificate: &CapturedX509Certificate,
    digest: &[u8; 32],
    signature: &[u8],
) -> std::result::Result<(), String> {
    use rsa::pkcs8::DecodePublicKey;
    let parsed = x509_cert::Certificate::from_der(certificate.constructed_data())
        .map_err(|e| format!("its certificate does not parse: {e}"))?;
    let spki = parsed
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("its certificate's key does not encode: {e}"))?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| "its certificate's key is not RSA; RS256 needs an RSA profile".to_string())?;
    key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), digest, signature)
        .map_err(|_| "the signature it returned does not match the certificate it returned".into())
}

/// The certificates of a `signingCertificate` field, leaf first. The service sends the
/// base64 of the base64 text of a PKCS#7 certificate bag; DER or PEM certificates, once or
/// twice base64-encoded, are taken as well.
pub fn parse_signing_certificate(field: &str) -> Result<Vec<CapturedX509Certificate>> {
    let bad = |why: &str| ServiceError::Answer {
        service: "Azure Artifact Signing".into(),
        problem: format!("the service's signing certificate {why}"),
    };
    let decode = |text: &[u8]| {
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD.decode(compact)
    };
    let mut bytes = decode(field.as_bytes()).map_err(|_| bad("is not base64"))?;
    if bytes.first() != Some(&0x30) && !bytes.starts_with(b"-----") {
        bytes = decode(&bytes).map_err(|_| bad("is neither DER nor base64 of it"))?;
    }
    let mut certificates = if bytes.starts_with(b"-----") || bytes.first() != Some(&0x30) {
        crate::key::pem::parse_certificates(&bytes)?
    } else if let Ok(info) = cms::content_info::ContentInfo::from_der(&bytes) {
        let signed: cms::signed_data::SignedData = info
            .content
            .decode_as()
            .map_err(|e| bad(&format!("is a PKCS#7 that is not SignedData: {e}")))?;
        let mut all = Vec::new();
        for choice in signed
            .certificates
            .map(|set| set.0.into_vec())
            .unwrap_or_default()
        {
            if let cms::cert::CertificateChoices::Certificate(certificate) = choice {
                let der = certificate.to_der().map_err(|e| bad(&e.to_string()))?;
                all.push(CapturedX509Certificate::from_der(der).map_err(|e| bad(&e.to_string()))?);
            }
        }
        all
    } else {
        crate::key::pem::parse_certificates(&bytes)?
    };
    if certificates.is_empty() {
        return Err(bad("holds no certificate").into());
    }
    // The leaf is the certificate that issued none of the others.
    let issues_another = |candidate: &CapturedX509Certificate| {
        certificates.iter().any(|other| {
            other.constructed_data() != candidate.constructed_data()
                && other.issuer_name() == candidate.subject_name()
        })
    };
    if let Some(leaf) = certificates.iter().position(|c| !issues_another(c)) {
        let leaf = certificates.remove(leaf);
        certificates.insert(0, leaf);
    }
    Ok(certificates)
}
