//! RFC 3161 time stamps: asking a time-stamp authority (TSA) for a token, and checking one.
//!
//! A signature made with a code-signing certificate stops verifying when the certificate
//! expires, unless a TSA countersigned the time it was made. [`request_token`] asks for that
//! countersignature over any message (Authenticode and CMS signers pass their signature
//! value) and checks the answer before returning it, so that a misbehaving or misconfigured
//! TSA fails the signing run instead of producing a file that fails verification later.
//! [`verify_token`] checks a token completely: imprint, the TSA's signature, the ESS
//! certificate binding and the TSA's chain to roots the caller trusts.
//!
//! The HTTP client is reqwest's blocking client: proxies come from the usual environment
//! variables and HTTPS uses the system roots. It must not be called from inside an async
//! runtime.

use std::time::{Duration, SystemTime};

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{BitString, Int, OctetString};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Sequence};
use openwork_payload::error::display_chain;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::ext::pkix::name::GeneralNames;
use x509_cert::serial_number::SerialNumber;
use x509_certificate::{CapturedX509Certificate, DigestAlgorithm, SignatureAlgorithm};
use x509_tsp::{MessageImprint, TimeStampReq, TspVersion, TstInfo};

use openwork_retry::{Backoff, GaveUp};

use crate::chain::{Anchors, check_chain};
use crate::error::{ChainError, ConfigError, NetworkError, Result, VerificationError};

/// Where and how persistently to ask for time stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampConfig {
    /// TSA URLs, tried in order until one gives a valid token.
    pub urls: Vec<String>,
    /// Tries per URL for failures that may pass (connection, timeout, HTTP 5xx/408/429);
    /// 0 counts as 1.
    pub attempts: u32,
    /// Limit for each HTTP request, connection included.
    pub timeout: Duration,
}

impl Default for TimestampConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            attempts: 3,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a verified time-stamp token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// When the TSA says it saw the message.
    pub gen_time: SystemTime,
    /// The TSA certificate's subject, e.g. `CN=Example TSA,O=Example`.
    pub tsa_subject: String,
    /// The token's serial number, lowercase hex.
    pub serial: String,
}

/// Retries of one TSA: 0.5 s before the second attempt, doubled for each further one up
/// to 8 s (enough for a TSA behind a load balancer to recover, short enough for a release
/// job); the number of attempts is [`TimestampConfig::attempts`].
const RETRY: Backoff =
    Backoff::exponential(Duration::from_millis(500)).max_delay(Duration::from_secs(8));

/// Object identifiers used here and by the test TSA.
pub(crate) mod oid {
    use der::oid::ObjectIdentifier as Oid;

    pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    pub const CT_TST_INFO: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.1.4");
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    pub const SIGNING_CERTIFICATE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.12");
    pub const SIGNING_CERTIFICATE_V2: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.47");
    pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA1_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
    pub const SUBJECT_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.14");
    pub const EXTENDED_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
    pub const KP_TIME_STAMPING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.8");
    /// id-aa-timeStampToken: the unsigned attribute that carries a signature's time stamp.
    pub const TIME_STAMP_TOKEN: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.14");
}

/// `PKIStatusInfo` (RFC 3161 §2.4.2), defined here because x509-tsp takes it from a crate
/// this one does not depend on.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct PkiStatusInfo {
    /// 0 granted, 1 grantedWithMods, 2 rejection, 3 waiting, 4 revocationWarning,
    /// 5 revocationNotification.
    pub status: u8,
    #[asn1(optional = "true")]
    pub status_string: Option<Vec<String>>,
    #[asn1(optional = "true")]
    pub fail_info: Option<BitString>,
}

/// `TimeStampResp` (RFC 3161 §2.4.2) over [`PkiStatusInfo`].
#[derive(Clone, Debug, Sequence)]
pub(crate) struct TimeStampResp {
    pub status: PkiStatusInfo,
    #[asn1(optional = "true")]
    pub time_stamp_token: Option<ContentInfo>,
}

/// `IssuerSerial` (RFC 5035).
#[derive(Clone, Debug, Sequence)]
pub(crate) struct IssuerSerial {
    pub issuer: GeneralNames,
    pub serial_number: SerialNumber,
}

/// `ESSCertIDv2` (RFC 5035); the hash algorithm is absent when it is SHA-256, its default.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct EssCertIdV2 {
    #[asn1(optional = "true")]
    pub hash_algorithm: Option<AlgorithmIdentifierOwned>,
    pub cert_hash: OctetString,
    #[asn1(optional = "true")]
    pub issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificateV2` (RFC 5035); policies are kept undecoded.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct SigningCertificateV2 {
    pub certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    pub policies: Option<Any>,
}

/// `ESSCertID` (RFC 2634): a SHA-1 certificate hash.
#[derive(Clone, Debug, Sequence)]
struct EssCertId {
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificate` (RFC 2634).
#[derive(Clone, Debug, Sequence)]
struct SigningCertificate {
    certs: Vec<EssCertId>,
    #[asn1(optional = "true")]
    policies: Option<Any>,
}

/// Asks the TSAs in `config` for a time-stamp token over `message` (SHA-256 imprint, random
/// nonce, TSA certificate requested) and returns the checked `TimeStampToken` (a CMS
/// `ContentInfo`), DER.
///
/// URLs are tried in order. Failures that may pass (connection, timeout, HTTP 5xx, 408,
/// 429) are retried on the same URL with backoff; answers that are wrong (refused, not a
/// time-stamp response, a token for another request or with a broken signature) move on
/// to the next URL at once. The token's chain is not checked here: the verifier checks it
/// against its own roots.
pub fn request_token(config: &TimestampConfig, message: &[u8]) -> Result<Vec<u8>> {
    if config.urls.is_empty() {
        return Err(ConfigError::NoTimestampUrl.into());
    }
    let imprint = Sha256::digest(message).to_vec();
    let nonce = random_nonce();
    let request = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: MessageImprint {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: oid::SHA256,
                parameters: Some(Any::null()),
            },
            hashed_message: OctetString::new(imprint.clone()).expect("32 bytes"),
        },
        req_policy: None,
        nonce: Some(Int::new(&nonce).expect("8 bytes")),
        cert_req: true,
        extensions: None,
    };
    let body = request.to_der().expect("a time-stamp request encodes");
    let client = reqwest::blocking::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("openwork-signer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NetworkError::Client { source: e.into() })?;

    let retry = RETRY.attempts(config.attempts);
    let mut failures = Vec::new();
    for url in &config.urls {
        let mut tried = 0;
        let outcome = retry.retry(
            || {
                tried += 1;
                exchange(&client, url, &body, &imprint, &nonce)
            },
            |retrying| {
                tracing::warn!(
                    url,
                    attempt = retrying.attempt,
                    "time stamp failed, retrying: {}",
                    retrying.failure
                );
            },
        );
        match outcome {
            Ok(token) => {
                tracing::debug!(url, attempts = tried, "time stamp received");
                return Ok(token);
            }
            Err(GaveUp {
                failure: Failure::Transient(why) | Failure::Permanent(why),
                attempts,
            }) => {
                let plural = if attempts == 1 { "" } else { "s" };
                failures.push(format!("{url}: {why} ({attempts} attempt{plural})"));
            }
        }
    }
    Err(NetworkError::NoTimestamp { failures }.into())
}

/// Checks `token_der` (a `TimeStampToken`, as [`request_token`] returns and signatures
/// embed) as the time stamp of `message`: its imprint is the message's digest, the TSA's
/// signature over the signed attributes verifies, the signed attributes bind the TSTInfo
/// (messageDigest) and the TSA certificate (ESSCertID or ESSCertIDv2), the TSA certificate
/// has the time-stamping extended key usage, was valid at the stamped time and chains to
/// one of `roots` through certificates in the token.
pub fn verify_token(
    token_der: &[u8],
    message: &[u8],
    roots: &[CapturedX509Certificate],
) -> Result<TokenInfo> {
    verify_token_with(token_der, message, Anchors::Roots(roots))
}

/// [`verify_token`], with the TSA chain ending at `anchors` (roots, or the top of what the
/// token carries).
pub(crate) fn verify_token_with(
    token_der: &[u8],
    message: &[u8],
    anchors: Anchors<'_>,
) -> Result<TokenInfo> {
    let token = ContentInfo::from_der(token_der).map_err(|e| VerificationError::Unreadable {
        what: "the time-stamp token (as CMS)".into(),
        source: e.into(),
    })?;
    let invalid = |problem| VerificationError::Timestamp { problem };
    let checked = check_token(&token).map_err(invalid)?;
    let expected = digest_with(
        &checked.tst_info.message_imprint.hash_algorithm.oid,
        message,
    )
    .map_err(invalid)?;
    if checked.tst_info.message_imprint.hashed_message.as_bytes() != expected.as_slice() {
        return Err(VerificationError::ContentDigest {
            what: "the time stamp is for another message (its imprint does not match)",
            source: None,
        }
        .into());
    }
    let gen_time = SystemTime::UNIX_EPOCH + checked.tst_info.gen_time.to_unix_duration();
    check_tsa_certificate(&checked, gen_time, anchors).map_err(invalid)?;
    Ok(TokenInfo {
        gen_time,
        tsa_subject: checked.signer.parsed.tbs_certificate.subject.to_string(),
        serial: hex::encode(checked.tst_info.serial_number.as_bytes()),
    })
}

/// Why one exchange with a TSA failed, and whether trying the same URL again may help.
type Failure = openwork_retry::Failure<String>;

fn exchange(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &[u8],
    imprint: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, Failure> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/timestamp-query")
        .body(body.to_vec())
        .send()
        .map_err(|e| {
            // The URL starts the line already.
            let e = e.without_url();
            if e.is_builder() {
                Failure::Permanent(format!("not a usable URL ({})", display_chain(&e)))
            } else {
                Failure::Transient(display_chain(&e))
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        let why = format!("HTTP {status}");
        return Err(
            if status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                Failure::Transient(why)
            } else {
                Failure::Permanent(why)
            },
        );
    }
    let bytes = response.bytes().map_err(|e| {
        Failure::Transient(format!(
            "reading the answer: {}",
            display_chain(&e.without_url())
        ))
    })?;
    check_response(&bytes, imprint, nonce)
}

/// Checks a `TimeStampResp` against the request and returns its token, DER.
fn check_response(data: &[u8], imprint: &[u8], nonce: &[u8]) -> Result<Vec<u8>, Failure> {
    let bad = |why: String| Failure::Permanent(format!("bad response: {why}"));
    let response = TimeStampResp::from_der(data)
        .map_err(|e| bad(format!("not an RFC 3161 time-stamp response ({e})")))?;
    match response.status.status {
        0 | 1 => {}
        3 => {
            return Err(Failure::Transient(
                "the TSA asks to wait (status waiting)".into(),
            ));
        }
        status => {
            let text = response
                .status
                .status_string
                .map(|s| format!(": {}", s.join(" ")))
                .unwrap_or_default();
            return Err(Failure::Permanent(format!(
                "the TSA refused the request (PKI status {status}{text})"
            )));
        }
    }
    let token = response
        .time_stamp_token
        .ok_or_else(|| bad("status granted but no token".into()))?;
    let checked = check_token(&token).map_err(bad)?;
    let tst = &checked.tst_info;
    if tst.message_imprint.hash_algorithm.oid != oid::SHA256
        || tst.message_imprint.hashed_message.as_bytes() != imprint
    {
        return Err(bad(
            "the token is for another message (imprint differs)".into()
        ));
    }
    if tst.nonce.as_ref().map(|n| n.as_bytes()) != Some(nonce) {
        return Err(bad(
            "the token answers another request (nonce differs)".into()
        ));
    }
    token
        .to_der()
        .map_err(|e| bad(format!("cannot re-encode the token ({e})")))
}

/// A certificate both as parsed by the RustCrypto types (names, extensions) and as
/// x509-certificate keeps it (signature verification).
struct TokenCertificate {
    parsed: Certificate,
    captured: CapturedX509Certificate,
}

/// A token whose structure and signature are sound, not yet tied to a message or roots.
struct CheckedToken {
    tst_info: TstInfo,
    signer: TokenCertificate,
    certificates: Vec<TokenCertificate>,
}

/// Everything about a token that needs neither the message nor trust anchors: structure,
/// signed attributes, the ESS binding to the signer certificate, and the signature.
fn check_token(token: &ContentInfo) -> Result<CheckedToken, String> {
    if token.content_type != oid::SIGNED_DATA {
        return Err(format!(
            "the token is {} instead of CMS SignedData",
            token.content_type
        ));
    }
    let signed_data: SignedData = token
        .content
        .decode_as()
        .map_err(|e| format!("the token's SignedData cannot be read ({e})"))?;
    let encapsulated = &signed_data.encap_content_info;
    if encapsulated.econtent_type != oid::CT_TST_INFO {
        return Err(format!(
            "the token signs {} instead of a TSTInfo",
            encapsulated.econtent_type
        ));
    }
    let tst_info_der = encapsulated
        .econtent
        .as_ref()
        .ok_or("the token carries no TSTInfo")?
        .decode_as::<OctetString>()
        .map_err(|e| format!("the TSTInfo is not an OCTET STRING ({e})"))?
        .into_bytes();
    let tst_info = TstInfo::from_der(&tst_info_der)
        .map_err(|e| format!("the TSTInfo cannot be read ({e})"))?;

    let certificates = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            cms::cert::CertificateChoices::Certificate(c) => Some(c),
            cms::cert::CertificateChoices::Other(_) => None,
        })
        .map(|c| {
            let der = c.to_der().map_err(|e| e.to_string())?;
            let captured = CapturedX509Certificate::from_der(der).map_err(|e| e.to_string())?;
            Ok(TokenCertificate {
                parsed: c.clone(),
                captured,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("a certificate in the token cannot be read ({e})"))?;

    let signer_infos = signed_data.signer_infos.0.as_slice();
    let [signer_info] = signer_infos else {
        return Err(format!(
            "the token has {} signers instead of one",
            signer_infos.len()
        ));
    };
    let signer_index = certificates
        .iter()
        .position(|c| is_signer(&signer_info.sid, &c.parsed))
        .ok_or(
            "the TSA certificate is not in the token (a TSA must include it when asked; \
             RFC 3161 certReq)",
        )?;
    check_signer_info(signer_info, &tst_info_der, &certificates[signer_index])?;
    let mut certificates = certificates;
    let signer = certificates.remove(signer_index);
    Ok(CheckedToken {
        tst_info,
        signer,
        certificates,
    })
}

fn is_signer(sid: &SignerIdentifier, certificate: &Certificate) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            id.issuer == certificate.tbs_certificate.issuer
                && id.serial_number == certificate.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(id) => certificate
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == oid::SUBJECT_KEY_IDENTIFIER)
            .any(|e| {
                OctetString::from_der(e.extn_value.as_bytes())
                    .is_ok_and(|ski| ski.as_bytes() == id.0.as_bytes())
            }),
    }
}

/// The signed attributes bind the TSTInfo and the TSA certificate, and the signature over
/// them verifies with that certificate's key.
fn check_signer_info(
    signer_info: &SignerInfo,
    tst_info_der: &[u8],
    signer: &TokenCertificate,
) -> Result<(), String> {
    let attributes = signer_info
        .signed_attrs
        .as_ref()
        .ok_or("the TSA signature has no signed attributes")?;
    let single = |oid: ObjectIdentifier| -> Result<Option<&Any>, String> {
        let mut found = attributes.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (None, _) => Ok(None),
            (Some(a), None) if a.values.len() == 1 => Ok(a.values.get(0)),
            _ => Err(format!(
                "the signed attribute {oid} must appear once with one value"
            )),
        }
    };

    let content_type = single(oid::CONTENT_TYPE)?
        .ok_or("the signed attributes lack contentType")?
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| format!("contentType cannot be read ({e})"))?;
    if content_type != oid::CT_TST_INFO {
        return Err(format!(
            "the signed contentType is {content_type} instead of TSTInfo"
        ));
    }

    let digest_oid = &signer_info.digest_alg.oid;
    let message_digest = single(oid::MESSAGE_DIGEST)?
        .ok_or("the signed attributes lack messageDigest")?
        .decode_as::<OctetString>()
        .map_err(|e| format!("messageDigest cannot be read ({e})"))?;
    if message_digest.as_bytes() != digest_with(digest_oid, tst_info_der)?.as_slice() {
        return Err("the signed messageDigest does not match the TSTInfo".into());
    }

    let certificate_der = signer.captured.constructed_data();
    if let Some(v2) = single(oid::SIGNING_CERTIFICATE_V2)? {
        let v2: SigningCertificateV2 = v2
            .decode_as()
            .map_err(|e| format!("signingCertificateV2 cannot be read ({e})"))?;
        let first = v2.certs.first().ok_or("signingCertificateV2 is empty")?;
        let hash_oid = first.hash_algorithm.as_ref().map_or(oid::SHA256, |a| a.oid);
        if first.cert_hash.as_bytes() != digest_with(&hash_oid, certificate_der)?.as_slice() {
            return Err("signingCertificateV2 names another certificate than the TSA's".into());
        }
        check_issuer_serial(first.issuer_serial.as_ref(), &signer.parsed)?;
    } else if let Some(v1) = single(oid::SIGNING_CERTIFICATE)? {
        let v1: SigningCertificate = v1
            .decode_as()
            .map_err(|e| format!("signingCertificate cannot be read ({e})"))?;
        let first = v1.certs.first().ok_or("signingCertificate is empty")?;
        if first.cert_hash.as_bytes() != DigestAlgorithm::Sha1.digest_data(certificate_der) {
            return Err("signingCertificate names another certificate than the TSA's".into());
        }
        check_issuer_serial(first.issuer_serial.as_ref(), &signer.parsed)?;
    } else {
        return Err(
            "the signed attributes name no TSA certificate (signingCertificate or \
             signingCertificateV2, RFC 3161 §2.4.2)"
                .into(),
        );
    }

    let signed = attributes
        .to_der()
        .map_err(|e| format!("cannot encode the signed attributes ({e})"))?;
    let algorithm = signature_algorithm(&signer_info.signature_algorithm.oid, digest_oid)?;
    let key_algorithm = signer.captured.key_algorithm().ok_or_else(|| {
        format!(
            "the TSA certificate's key type ({}) is not supported",
            signer.captured.key_algorithm_oid()
        )
    })?;
    let verification = algorithm
        .resolve_verification_algorithm(key_algorithm)
        .map_err(|e| format!("cannot verify the TSA signature: {e}"))?;
    signer
        .captured
        .verify_signed_data_with_algorithm(signed, signer_info.signature.as_bytes(), verification)
        .map_err(|_| "the TSA signature does not verify with the TSA certificate".to_string())
}

fn check_issuer_serial(
    issuer_serial: Option<&IssuerSerial>,
    certificate: &Certificate,
) -> Result<(), String> {
    let Some(issuer_serial) = issuer_serial else {
        return Ok(());
    };
    let names_issuer = issuer_serial.issuer.iter().any(|name| {
        matches!(name, x509_cert::ext::pkix::name::GeneralName::DirectoryName(n)
            if *n == certificate.tbs_certificate.issuer)
    });
    if !names_issuer || issuer_serial.serial_number != certificate.tbs_certificate.serial_number {
        return Err("the ESS issuerSerial names another certificate than the TSA's".into());
    }
    Ok(())
}

/// The TSA certificate may stamp (critical timeStamping EKU), was valid at `gen_time`, and
/// chains to one of `roots` through the token's certificates.
fn check_tsa_certificate(
    token: &CheckedToken,
    gen_time: SystemTime,
    anchors: Anchors<'_>,
) -> Result<(), String> {
    let tsa = &token.signer;
    let subject = tsa.parsed.tbs_certificate.subject.to_string();
    let eku = tsa
        .parsed
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid::EXTENDED_KEY_USAGE)
        .ok_or_else(|| format!("the TSA certificate {subject} has no extended key usage"))?;
    let usages = ExtendedKeyUsage::from_der(eku.extn_value.as_bytes())
        .map_err(|e| format!("the TSA certificate's extended key usage cannot be read ({e})"))?;
    if !usages.0.contains(&oid::KP_TIME_STAMPING) || !eku.critical {
        return Err(format!(
            "the certificate {subject} is not a TSA certificate (RFC 3161 requires a critical \
             extended key usage timeStamping)"
        ));
    }

    let carried: Vec<CapturedX509Certificate> = token
        .certificates
        .iter()
        .map(|c| c.captured.clone())
        .collect();
    check_chain(&tsa.captured, &carried, anchors, gen_time).map_err(|e| match e {
        ChainError::Untrusted { .. } => format!(
            "the TSA certificate {} does not chain to a trusted time-stamping root: {e}",
            crate::key::describe_certificate(&tsa.captured)
        ),
        other => format!("the time-stamping chain at the stamped time: {other}"),
    })
}

fn digest_with(algorithm: &ObjectIdentifier, data: &[u8]) -> Result<Vec<u8>, String> {
    let algorithm = digest_algorithm(algorithm)?;
    Ok(algorithm.digest_data(data))
}

fn digest_algorithm(algorithm: &ObjectIdentifier) -> Result<DigestAlgorithm, String> {
    Ok(match *algorithm {
        oid::SHA1 => DigestAlgorithm::Sha1,
        oid::SHA256 => DigestAlgorithm::Sha256,
        oid::SHA384 => DigestAlgorithm::Sha384,
        oid::SHA512 => DigestAlgorithm::Sha512,
        other => return Err(format!("unsupported digest algorithm {other}")),
    })
}

/// The signature algorithm of a SignerInfo: either a combined OID or a key-type OID plus
/// the SignerInfo's digest algorithm (both occur in the wild).
fn signature_algorithm(
    signature: &ObjectIdentifier,
    digest: &ObjectIdentifier,
) -> Result<SignatureAlgorithm, String> {
    let digest = digest_algorithm(digest)?;
    Ok(match (*signature, digest) {
        (oid::SHA1_WITH_RSA, _) => SignatureAlgorithm::RsaSha1,
        (oid::SHA256_WITH_RSA, _) => SignatureAlgorithm::RsaSha256,
        (oid::SHA384_WITH_RSA, _) => SignatureAlgorithm::RsaSha384,
        (oid::SHA512_WITH_RSA, _) => SignatureAlgorithm::RsaSha512,
        (oid::RSA_ENCRYPTION, DigestAlgorithm::Sha1) => SignatureAlgorithm::RsaSha1,
        (oid::RSA_ENCRYPTION, DigestAlgorithm::Sha256) => SignatureAlgorithm::RsaSha256,
        (oid::RSA_ENCRYPTION, DigestAlgorithm::Sha384) => SignatureAlgorithm::RsaSha384,
        (oid::RSA_ENCRYPTION, DigestAlgorithm::Sha512) => SignatureAlgorithm::RsaSha512,
        (oid::ECDSA_WITH_SHA256, _) | (oid::EC_PUBLIC_KEY, DigestAlgorithm::Sha256) => {
            SignatureAlgorithm::EcdsaSha256
        }
        (oid::ECDSA_WITH_SHA384, _) | (oid::EC_PUBLIC_KEY, DigestAlgorithm::Sha384) => {
            SignatureAlgorithm::EcdsaSha384
        }
        (oid::ED25519, _) => SignatureAlgorithm::Ed25519,
        (other, digest) => {
            return Err(format!(
                "unsupported TSA signature algorithm {other} with {digest}"
            ));
        }
    })
}

/// 64 random bits, positive as a DER INTEGER (top bit clear, first byte not zero) so that
/// the TSA's echo can be compared byte for byte.
fn random_nonce() -> [u8; 8] {
    use rsa::rand_core::{OsRng, RngCore};
    let mut nonce = [0u8; 8];
    OsRng.fill_bytes(&mut nonce);
    nonce[0] = (nonce[0] & 0x7f).max(1);
    nonce
}
