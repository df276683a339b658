//! RFC 3161 time stamps against the in-process test TSA: the client's retries and checks,
//! the verifier, and OpenSSL's opinion of the tokens.
#![cfg(feature = "testing")]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use openwork_signer::Error;
use openwork_signer::testing::pki::TestCertificate;
use openwork_signer::testing::tsa::TestTsa;
use openwork_signer::testing::{KeyKind, TestPki};
use openwork_signer::timestamp::{TimestampConfig, request_token, verify_token};
use x509_certificate::CapturedX509Certificate;

const MESSAGE: &[u8] = b"the signature value a signer asks to have stamped";

fn config(urls: Vec<String>, attempts: u32) -> TimestampConfig {
    TimestampConfig {
        urls,
        attempts,
        timeout: Duration::from_secs(10),
    }
}

fn certificate(der: &[u8]) -> CapturedX509Certificate {
    CapturedX509Certificate::from_der(der.to_vec()).unwrap()
}

/// A URL on which nothing listens: a port the OS just handed out and took back.
fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}/")
}

fn network_error(result: openwork_signer::Result<Vec<u8>>) -> String {
    match result {
        Err(Error::Network(message)) => message.to_string(),
        other => panic!("expected a network error, got {other:?}"),
    }
}

#[test]
fn tokens_round_trip_for_rsa_and_ecdsa_tsas() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let pki = TestPki::generate(kind);
        let tsa = TestTsa::start(&pki);
        let before = SystemTime::now() - Duration::from_secs(2);
        let token = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
        let after = SystemTime::now() + Duration::from_secs(2);

        let info = verify_token(&token, MESSAGE, &[certificate(&pki.tsa_ca.der)]).unwrap();
        assert!(
            info.tsa_subject.contains("CN=openwork test TSA"),
            "{kind:?}: {}",
            info.tsa_subject
        );
        assert!(
            before <= info.gen_time && info.gen_time <= after,
            "{kind:?}"
        );
        assert!(!info.serial.is_empty());
        assert_eq!(tsa.requests(), 1);

        let error =
            verify_token(&token, b"another message", &[certificate(&pki.tsa_ca.der)]).unwrap_err();
        assert!(
            matches!(&error, Error::Verification(m) if m.to_string().contains("another message")),
            "{error}"
        );

        // Serial numbers differ between tokens.
        let second = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
        let second = verify_token(&second, MESSAGE, &[certificate(&pki.tsa_ca.der)]).unwrap();
        assert_ne!(second.serial, info.serial);
    }
}

#[test]
fn openssl_verifies_the_responses_and_tokens() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let pki = TestPki::generate(kind);
        let tsa = TestTsa::start(&pki);
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("msg"), MESSAGE).unwrap();
        std::fs::write(path("tsa-ca.pem"), &pki.tsa_ca.pem).unwrap();
        std::fs::write(path("tsa.pem"), &pki.tsa.pem).unwrap();

        // A query made by OpenSSL, answered by the test TSA, checked by OpenSSL.
        openssl(&[
            "ts",
            "-query",
            "-data",
            &p(&path("msg")),
            "-sha256",
            "-cert",
            "-out",
            &p(&path("req.tsq")),
        ]);
        let response = reqwest::blocking::Client::new()
            .post(tsa.url())
            .header("Content-Type", "application/timestamp-query")
            .body(std::fs::read(path("req.tsq")).unwrap())
            .send()
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/timestamp-reply"
        );
        std::fs::write(path("resp.tsr"), response.bytes().unwrap()).unwrap();
        // Against the request it answers, and against the data the request was for.
        for (against, file) in [("-queryfile", "req.tsq"), ("-data", "msg")] {
            openssl(&[
                "ts",
                "-verify",
                "-in",
                &p(&path("resp.tsr")),
                against,
                &p(&path(file)),
                "-CAfile",
                &p(&path("tsa-ca.pem")),
                "-untrusted",
                &p(&path("tsa.pem")),
            ]);
        }

        // A token from our client, checked by OpenSSL with the certificate from the token.
        let token = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
        std::fs::write(path("token.der"), &token).unwrap();
        openssl(&[
            "ts",
            "-verify",
            "-token_in",
            "-in",
            &p(&path("token.der")),
            "-data",
            &p(&path("msg")),
            "-CAfile",
            &p(&path("tsa-ca.pem")),
        ]);

        // OpenSSL refuses the token under another root, so its acceptance above means something.
        std::fs::write(path("ca.pem"), &pki.ca.pem).unwrap();
        let refused = Command::new("openssl")
            .args(["ts", "-verify", "-token_in", "-in"])
            .arg(path("token.der"))
            .arg("-data")
            .arg(path("msg"))
            .arg("-CAfile")
            .arg(path("ca.pem"))
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{kind:?}");
    }
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_dead_first_url_falls_through_to_the_second() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let tsa = TestTsa::start(&pki);
    let token = request_token(&config(vec![closed_url(), tsa.url()], 2), MESSAGE).unwrap();
    verify_token(&token, MESSAGE, &[certificate(&pki.tsa_ca.der)]).unwrap();
    assert_eq!(tsa.requests(), 1);
}

#[test]
fn unavailable_answers_are_retried_with_backoff() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let tsa = TestTsa::start(&pki);
    tsa.fail_next(2);
    let started = std::time::Instant::now();
    let token = request_token(&config(vec![tsa.url()], 3), MESSAGE).unwrap();
    verify_token(&token, MESSAGE, &[certificate(&pki.tsa_ca.der)]).unwrap();
    assert_eq!(tsa.requests(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "backoff 0.5 s + 1 s"
    );

    // With fewer attempts than failures the same TSA is given up on.
    tsa.fail_next(2);
    let message = network_error(request_token(&config(vec![tsa.url()], 2), MESSAGE));
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(message.contains("2 attempts"), "{message}");
}

#[test]
fn when_every_url_fails_the_error_names_each_and_why() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let tsa = TestTsa::start(&pki);
    tsa.fail_next(100);
    let dead = closed_url();
    let message = network_error(request_token(
        &config(vec![dead.clone(), tsa.url()], 2),
        MESSAGE,
    ));
    assert!(message.contains(&dead), "{message}");
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    assert!(message.contains(&tsa.url()), "{message}");
    assert!(
        message.contains("HTTP 503 Service Unavailable"),
        "{message}"
    );
    assert_eq!(tsa.requests(), 2);

    let unusable = network_error(request_token(&config(vec!["not a url".into()], 3), MESSAGE));
    assert!(unusable.contains("not a url"), "{unusable}");
    assert!(unusable.contains("1 attempt)"), "not retried: {unusable}");

    let none = request_token(&config(vec![], 3), MESSAGE).unwrap_err();
    assert!(matches!(none, Error::Config(_)), "{none}");
}

#[test]
fn a_token_for_another_nonce_or_message_is_refused_without_retrying() {
    let pki = TestPki::generate(KeyKind::Rsa2048);
    let tsa = TestTsa::start(&pki);

    tsa.wrong_nonce_once();
    let message = network_error(request_token(&config(vec![tsa.url()], 3), MESSAGE));
    assert!(message.contains("nonce differs"), "{message}");
    assert_eq!(tsa.requests(), 1);

    tsa.wrong_imprint_once();
    let message = network_error(request_token(&config(vec![tsa.url()], 3), MESSAGE));
    assert!(message.contains("imprint differs"), "{message}");
    assert_eq!(tsa.requests(), 2);

    // Another URL after a misbehaving one is still tried.
    tsa.wrong_nonce_once();
    let token = request_token(&config(vec![tsa.url(), tsa.url()], 1), MESSAGE).unwrap();
    verify_token(&token, MESSAGE, &[certificate(&pki.tsa_ca.der)]).unwrap();
    assert_eq!(tsa.requests(), 4);
}

#[test]
fn verification_needs_the_right_root_an_intact_signature_and_a_tsa_certificate() {
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let tsa = TestTsa::start(&pki);
    let token = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
    let root = certificate(&pki.tsa_ca.der);
    verify_token(&token, MESSAGE, std::slice::from_ref(&root)).unwrap();

    let other = TestPki::generate(KeyKind::EcdsaP256);
    for roots in [
        vec![certificate(&pki.ca.der)],
        vec![certificate(&other.tsa_ca.der)],
        vec![],
    ] {
        let error = verify_token(&token, MESSAGE, &roots).unwrap_err();
        assert!(
            matches!(&error, Error::Verification(m) if m.to_string().contains("does not chain")),
            "{error}"
        );
    }

    // A flipped bit in the signature (the token's last bytes) breaks it.
    let mut tampered = token.clone();
    *tampered.last_mut().unwrap() ^= 0x01;
    let error = verify_token(&tampered, MESSAGE, std::slice::from_ref(&root)).unwrap_err();
    assert!(matches!(error, Error::Verification(_)), "{error}");

    // A certificate without the time-stamping usage cannot make a valid token.
    let mut code_signing_as_tsa = pki.clone();
    code_signing_as_tsa.tsa = pki.code_signing.clone();
    let impostor = TestTsa::start(&code_signing_as_tsa);
    let token = request_token(&config(vec![impostor.url()], 1), MESSAGE).unwrap();
    let error = verify_token(&token, MESSAGE, &[certificate(&pki.ca.der)]).unwrap_err();
    assert!(
        matches!(&error, Error::Verification(m) if m.to_string().contains("not a TSA certificate")),
        "{error}"
    );
}

/// apple-codesign's time-stamp client (cryptographic-message-syntax) accepts the TSA's
/// answer, and the token it embeds in a Mach-O signature verifies as the time stamp of that
/// signature's value. Only for an RSA TSA: apple-codesign re-encodes ECDSA certificates in
/// the tokens it embeds, breaking their ESS hash (`macho::sign_with_identity` repairs that
/// after signing, and its tests cover it).
#[test]
fn apple_codesign_embeds_tokens_from_the_test_tsa() {
    use apple_codesign::macho_builder::MachOBuilder;
    use apple_codesign::{MachFile, MachOSigner, SettingsScope, SigningSettings};
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::{Decode, Encode};

    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let pki = TestPki::generate(kind);
        let tsa = TestTsa::start(&pki);
        let identity = pki.signing_identity();
        let unsigned = MachOBuilder::new_aarch64(goblin::mach::header::MH_EXECUTE)
            .write_macho()
            .unwrap();
        let mut settings = SigningSettings::default();
        settings.set_binary_identifier(SettingsScope::Main, "time-stamp-test");
        settings.set_signing_key(identity.key(), identity.certificate().clone());
        settings.set_time_stamp_url(tsa.url()).unwrap();
        let mut signed = Vec::new();
        MachOSigner::new(&unsigned)
            .unwrap()
            .write_signed_binary(&settings, &mut signed)
            .unwrap();
        assert_eq!(tsa.requests(), 1, "{kind:?}");
        if kind == KeyKind::EcdsaP256 {
            continue;
        }

        let file = MachFile::parse(&signed).unwrap();
        let signature = file
            .nth_macho(0)
            .unwrap()
            .code_signature()
            .unwrap()
            .unwrap();
        let cms = ContentInfo::from_der(signature.signature_data().unwrap().unwrap()).unwrap();
        let signed_data: SignedData = cms.content.decode_as().unwrap();
        let signer_info = signed_data.signer_infos.0.get(0).unwrap();
        let time_stamp_token = der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.14");
        let token = signer_info
            .unsigned_attrs
            .as_ref()
            .and_then(|attrs| attrs.iter().find(|a| a.oid == time_stamp_token))
            .expect("a time-stamp token in the unsigned attributes")
            .values
            .get(0)
            .unwrap()
            .to_der()
            .unwrap();
        let info = verify_token(
            &token,
            signer_info.signature.as_bytes(),
            &[certificate(&pki.tsa_ca.der)],
        )
        .unwrap();
        assert!(info.tsa_subject.contains("openwork test TSA"), "{kind:?}");
    }
}

/// Certificates for chain tests: a CA or a leaf, optionally a TSA (critical EKU
/// timeStamping), self-signed or issued.
fn rcgen_certificate(
    name: &str,
    ca: bool,
    tsa: bool,
    issuer: Option<&(rcgen::CertificateParams, rcgen::KeyPair)>,
) -> ((rcgen::CertificateParams, rcgen::KeyPair), TestCertificate) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    params.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    if tsa {
        // extKeyUsage = SEQUENCE { id-kp-timeStamping }, critical (RFC 3161 §2.3).
        let value = vec![
            0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
        ];
        let mut eku = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], value);
        eku.set_criticality(true);
        params.custom_extensions.push(eku);
    }
    let certificate = match issuer {
        Some((issuer_params, issuer_key)) => params
            .signed_by(&key, &Issuer::from_params(issuer_params, issuer_key))
            .unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let test = TestCertificate {
        der: certificate.der().to_vec(),
        pem: certificate.pem(),
        key_pkcs8_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    };
    ((params, key), test)
}

/// A TSA under an intermediate CA verifies through the intermediate its tokens carry; a
/// certificate that is not a CA cannot stand in for one, even when it chains to the root.
#[test]
fn chains_go_through_intermediate_cas_only() {
    let (root, root_certificate) = rcgen_certificate("chain test root", true, false, None);
    let (intermediate, intermediate_certificate) =
        rcgen_certificate("chain test intermediate", true, false, Some(&root));
    let (_, tsa_certificate) =
        rcgen_certificate("chain test TSA", false, true, Some(&intermediate));
    let (leaf, leaf_certificate) = rcgen_certificate("chain test leaf", false, false, Some(&root));
    let (_, rogue_certificate) = rcgen_certificate("rogue TSA", false, true, Some(&leaf));
    let roots = [certificate(&root_certificate.der)];

    let mut pki = TestPki::generate(KeyKind::EcdsaP256);
    pki.tsa = tsa_certificate;
    let tsa = TestTsa::start(&pki);
    let without_intermediate = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
    let error = verify_token(&without_intermediate, MESSAGE, &roots).unwrap_err();
    assert!(error.to_string().contains("does not chain"), "{error}");
    tsa.include_certificate(&intermediate_certificate.der);
    let with_intermediate = request_token(&config(vec![tsa.url()], 1), MESSAGE).unwrap();
    let info = verify_token(&with_intermediate, MESSAGE, &roots).unwrap();
    assert!(
        info.tsa_subject.contains("chain test TSA"),
        "{}",
        info.tsa_subject
    );

    pki.tsa = rogue_certificate;
    let rogue = TestTsa::start(&pki);
    rogue.include_certificate(&leaf_certificate.der);
    let token = request_token(&config(vec![rogue.url()], 1), MESSAGE).unwrap();
    let error = verify_token(&token, MESSAGE, &roots).unwrap_err();
    assert!(error.to_string().contains("does not chain"), "{error}");
}
