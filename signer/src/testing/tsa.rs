//! An in-process RFC 3161 time-stamp authority for tests: a handler of the test HTTP server
//! ([`super::http`]) that answers time-stamp queries with tokens signed by the test PKI's
//! TSA key, as real TSAs do (SignedData over a TSTInfo, the TSA certificate included when
//! asked, signed attributes contentType, messageDigest and signingCertificateV2), so that
//! our verifier, OpenSSL, osslsigncode and apple-codesign can all check its tokens.
//!
//! Tests can make it misbehave: answer HTTP 503 for the next requests, or sign a token
//! for another nonce or message once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{GeneralizedTime, Int, OctetString, SetOfVec};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::GeneralName;
use x509_certificate::{InMemorySigningKeyPair, Sign, SignatureAlgorithm, Signer};
use x509_tsp::{Accuracy, TimeStampReq, TspVersion, TstInfo};

use super::MAX_BODY;
use super::TestPki;
use super::http::{Request, Response, TestServer};
use crate::timestamp::{
    EssCertIdV2, IssuerSerial, PkiStatusInfo, SigningCertificateV2, TimeStampResp, oid,
};

/// The policy this TSA stamps under (an arbitrary test OID under the "example" arc).
const TEST_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.3.4.1");

/// A running test TSA; stops when dropped.
pub struct TestTsa {
    server: TestServer,
    shared: Arc<Shared>,
}

struct Shared {
    key: InMemorySigningKeyPair,
    certificate: Certificate,
    certificate_der: Vec<u8>,
    requests: AtomicUsize,
    serial: AtomicU64,
    faults: Mutex<Faults>,
    extra_certificates: Mutex<Vec<Certificate>>,
}

#[derive(Default)]
struct Faults {
    unavailable: u32,
    wrong_nonce: bool,
    wrong_imprint: bool,
}

impl TestTsa {
    /// Starts a TSA signing with `pki.tsa` on 127.0.0.1 with a free port.
    pub fn start(pki: &TestPki) -> TestTsa {
        let key = InMemorySigningKeyPair::from_pkcs8_der(&pki.tsa.key_pkcs8_der)
            .expect("the test TSA key loads");
        let certificate = Certificate::from_der(&pki.tsa.der).expect("the test TSA certificate");
        let shared = Arc::new(Shared {
            key,
            certificate,
            certificate_der: pki.tsa.der.clone(),
            requests: AtomicUsize::new(0),
            serial: AtomicU64::new(1),
            faults: Mutex::new(Faults::default()),
            extra_certificates: Mutex::new(Vec::new()),
        });
        let server = {
            let shared = Arc::clone(&shared);
            TestServer::builder("test-tsa")
                .max_body(MAX_BODY)
                .start(move |request| handle(request, &shared))
                .expect("start the test-tsa stand-in")
        };
        TestTsa { server, shared }
    }

    /// The URL to POST time-stamp queries to.
    pub fn url(&self) -> String {
        format!("{}/", self.server.base_url())
    }

    /// How many time-stamp queries arrived, answered or failed on purpose.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answers the next `count` queries with HTTP 503.
    pub fn fail_next(&self, count: u32) {
        self.faults().unavailable = count;
    }

    /// Signs the next token with a nonce other than the query's.
    pub fn wrong_nonce_once(&self) {
        self.faults().wrong_nonce = true;
    }

    /// Signs the next token over another message imprint than the query's.
    pub fn wrong_imprint_once(&self) {
        self.faults().wrong_imprint = true;
    }

    /// Adds a certificate (DER) to the tokens' certificates besides the TSA's own, as TSAs
    /// under an intermediate CA send it.
    pub fn include_certificate(&self, der: &[u8]) {
        let certificate = Certificate::from_der(der).expect("a DER certificate");
        self.shared
            .extra_certificates
            .lock()
            .expect("test TSA state")
            .push(certificate);
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.shared.faults.lock().expect("test TSA state")
    }
}

impl std::fmt::Debug for TestTsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTsa")
            .field("url", &self.url())
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

fn handle(request: &Request, shared: &Shared) -> Response {
    if request.method != "POST" {
        return Response::new(405, "text/plain", "POST only\n");
    }
    if request.body.len() > 64 * 1024 {
        return Response::new(413, "text/plain", "too large\n");
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let faults = {
        let mut faults = shared.faults.lock().expect("test TSA state");
        if faults.unavailable > 0 {
            faults.unavailable -= 1;
            None
        } else {
            Some(std::mem::take(&mut *faults))
        }
    };
    let Some(faults) = faults else {
        return Response::new(503, "text/plain", "unavailable on purpose\n");
    };
    Response::new(
        200,
        "application/timestamp-reply",
        answer(shared, &request.body, &faults),
    )
}

/// The DER `TimeStampResp` for a query: a token, or a rejection when the query is not one.
fn answer(shared: &Shared, query: &[u8], faults: &Faults) -> Vec<u8> {
    let response = match TimeStampReq::from_der(query) {
        Ok(request) => TimeStampResp {
            status: PkiStatusInfo {
                status: 0,
                status_string: None,
                fail_info: None,
            },
            time_stamp_token: Some(token(shared, &request, faults)),
        },
        Err(e) => TimeStampResp {
            status: PkiStatusInfo {
                status: 2,
                status_string: Some(vec![format!("not a TimeStampReq: {e}")]),
                fail_info: None,
            },
            time_stamp_token: None,
        },
    };
    response.to_der().expect("a time-stamp response encodes")
}

fn token(shared: &Shared, request: &TimeStampReq, faults: &Faults) -> ContentInfo {
    let mut imprint = request.message_imprint.clone();
    if faults.wrong_imprint {
        let mut hash = imprint.hashed_message.as_bytes().to_vec();
        hash[0] ^= 0xff;
        imprint.hashed_message = OctetString::new(hash).expect("an imprint");
    }
    let nonce = request.nonce.as_ref().map(|nonce| {
        let mut bytes = nonce.as_bytes().to_vec();
        if faults.wrong_nonce {
            *bytes.last_mut().expect("a nonce has bytes") ^= 0x01;
        }
        Int::new(&bytes).expect("a nonce")
    });
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970");
    let tst_info = TstInfo {
        version: TspVersion::V1,
        policy: request.req_policy.unwrap_or(TEST_POLICY),
        message_imprint: imprint,
        serial_number: positive_int(shared.serial.fetch_add(1, Ordering::SeqCst)),
        gen_time: GeneralizedTime::from_unix_duration(Duration::from_secs(now.as_secs()))
            .expect("the current time"),
        accuracy: Some(Accuracy {
            seconds: Some(1),
            millis: None,
            micros: None,
        }),
        ordering: false,
        nonce,
        tsa: None,
        extensions: None,
    };
    let tst_info_der = tst_info.to_der().expect("a TSTInfo encodes");

    let tbs = &shared.certificate.tbs_certificate;
    let signing_certificate = SigningCertificateV2 {
        certs: vec![EssCertIdV2 {
            hash_algorithm: None,
            cert_hash: octets(&Sha256::digest(&shared.certificate_der)),
            issuer_serial: Some(IssuerSerial {
                issuer: vec![GeneralName::DirectoryName(tbs.issuer.clone())],
                serial_number: tbs.serial_number.clone(),
            }),
        }],
        policies: None,
    };
    let signed_attributes = SetOfVec::try_from(vec![
        attribute(oid::CONTENT_TYPE, &oid::CT_TST_INFO),
        attribute(oid::MESSAGE_DIGEST, &octets(&Sha256::digest(&tst_info_der))),
        attribute(oid::SIGNING_CERTIFICATE_V2, &signing_certificate),
    ])
    .expect("distinct attributes");
    let signed = signed_attributes
        .to_der()
        .expect("signed attributes encode");
    let signature = shared
        .key
        .try_sign(&signed)
        .expect("the test TSA key signs");

    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: sha256(),
        signed_attrs: Some(signed_attributes),
        signature_algorithm: signature_algorithm(&shared.key),
        signature: octets(signature.as_ref()),
        unsigned_attrs: None,
    };
    let certificates = request.cert_req.then(|| {
        let extra = shared.extra_certificates.lock().expect("test TSA state");
        let all = std::iter::once(&shared.certificate)
            .chain(extra.iter())
            .map(|c| CertificateChoices::Certificate(c.clone()));
        CertificateSet(SetOfVec::from_iter(all).expect("distinct certificates"))
    });
    let signed_data = SignedData {
        // Version 3: the encapsulated content is not id-data (RFC 5652 §5.1).
        version: CmsVersion::V3,
        digest_algorithms: SetOfVec::try_from(vec![sha256()]).expect("one algorithm"),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::CT_TST_INFO,
            econtent: Some(Any::encode_from(&octets(&tst_info_der)).expect("TSTInfo")),
        },
        certificates,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).expect("one signer")),
    };
    ContentInfo {
        content_type: oid::SIGNED_DATA,
        content: Any::encode_from(&signed_data).expect("SignedData encodes"),
    }
}

fn attribute(oid: ObjectIdentifier, value: &(impl der::EncodeValue + der::Tagged)) -> Attribute {
    Attribute {
        oid,
        values: SetOfVec::try_from(vec![Any::encode_from(value).expect("attribute value")])
            .expect("one value"),
    }
}

fn octets(bytes: &[u8]) -> OctetString {
    OctetString::new(bytes.to_vec()).expect("an octet string")
}

fn sha256() -> AlgorithmIdentifierOwned {
    // RFC 5754 §2: SHA-2 identifiers are generated with absent parameters.
    AlgorithmIdentifierOwned {
        oid: oid::SHA256,
        parameters: None,
    }
}

fn signature_algorithm(key: &InMemorySigningKeyPair) -> AlgorithmIdentifierOwned {
    let (oid, parameters) = match key.signature_algorithm().expect("a known key type") {
        SignatureAlgorithm::RsaSha256 => (oid::SHA256_WITH_RSA, Some(Any::null())),
        SignatureAlgorithm::EcdsaSha256 => (oid::ECDSA_WITH_SHA256, None),
        SignatureAlgorithm::EcdsaSha384 => (oid::ECDSA_WITH_SHA384, None),
        SignatureAlgorithm::Ed25519 => (oid::ED25519, None),
        other => panic!("the test TSA does not sign with {other}"),
    };
    AlgorithmIdentifierOwned { oid, parameters }
}

/// A DER INTEGER for a counter: minimal big-endian bytes, a leading zero when the top bit
/// is set so that it stays positive.
fn positive_int(value: u64) -> Int {
    let bytes = value.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    let mut minimal = bytes[start..].to_vec();
    if minimal[0] & 0x80 != 0 {
        minimal.insert(0, 0);
    }
    Int::new(&minimal).expect("an integer")
}
