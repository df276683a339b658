//! Key sources on files that OpenSSL writes: PEM/DER keys in their three forms, PKCS#12 in
//! OpenSSL 3's default and legacy encryption, and their refusals.
#![cfg(feature = "testing")]

use std::path::{Path, PathBuf};
use std::process::Command;

use openwork_signer::Error;
use openwork_signer::key::{SigningIdentity, pem, pkcs11, pkcs12};
use openwork_signer::testing::{KeyKind, TestPki};
use x509_certificate::CapturedX509Certificate;

const P12_PASSWORD: &str = "correct horse battery staple";

fn run_openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .env("P12_PASSWORD", P12_PASSWORD)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Signs with the identity's key and checks the signature with its certificate's public key.
fn assert_signs(identity: &SigningIdentity) {
    let message = b"bytes to sign";
    let signature = identity.key().try_sign(message).expect("the key signs");
    let algorithm = identity.key().signature_algorithm().unwrap();
    let certificate = identity.certificate();
    let verification = algorithm
        .resolve_verification_algorithm(certificate.key_algorithm().unwrap())
        .unwrap();
    certificate
        .verify_signed_data_with_algorithm(message, signature.as_ref(), verification)
        .expect("the signature verifies with the certificate");
}

fn credentials_error(result: openwork_signer::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Credentials(message)) => message.to_string(),
        other => panic!("expected a credentials error, got {other:?}"),
    }
}

struct Files {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl Files {
    fn new(kind: KeyKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(kind);
        pki.write_files(dir.path()).unwrap();
        Files { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self) -> PathBuf {
        self.path("code-signing.key.pem")
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn chain(&self) -> Vec<u8> {
        self.read("code-signing.chain.pem")
    }
}

#[test]
fn traditional_pem_and_der_keys_are_read() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let files = Files::new(kind);
        let (tool, label) = match kind {
            KeyKind::Rsa2048 => ("rsa", "BEGIN RSA PRIVATE KEY"),
            KeyKind::EcdsaP256 => ("ec", "BEGIN EC PRIVATE KEY"),
        };
        let traditional = files.path("traditional.pem");
        let traditional_der = files.path("traditional.der");
        let pkcs8_der = files.path("pkcs8.der");
        let key = files.key();
        let mut convert = vec![tool, "-in", s(&key), "-out", s(&traditional)];
        if kind == KeyKind::Rsa2048 {
            convert.push("-traditional");
        }
        run_openssl(&convert);
        let mut convert_der = convert.clone();
        convert_der[4] = s(&traditional_der);
        convert_der.extend(["-outform", "DER"]);
        run_openssl(&convert_der);
        run_openssl(&[
            "pkey",
            "-in",
            s(&key),
            "-outform",
            "DER",
            "-out",
            s(&pkcs8_der),
        ]);
        let text = String::from_utf8(files.read("traditional.pem")).unwrap();
        assert!(text.contains(label), "{kind:?}: {text}");

        for key in [
            "traditional.pem",
            "traditional.der",
            "pkcs8.der",
            "code-signing.key.pem",
        ] {
            let identity = pem::load(&files.read(key), &files.chain())
                .unwrap_or_else(|e| panic!("{kind:?} {key}: {e}"));
            assert_eq!(identity.chain().len(), 1);
            assert_signs(&identity);
        }
    }
}

#[test]
fn an_ec_key_after_its_parameters_block_is_read_and_unsupported_curves_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ec.pem");
    let certificate = dir.path().join("ec.crt");
    run_openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-out", s(&key)]);
    run_openssl(&[
        "req",
        "-x509",
        "-key",
        s(&key),
        "-subj",
        "/CN=ec test",
        "-days",
        "2",
        "-out",
        s(&certificate),
    ]);
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN EC PARAMETERS-----"), "{text}");
    let identity = pem::load(text.as_bytes(), &std::fs::read(&certificate).unwrap()).unwrap();
    assert_signs(&identity);

    let p521 = dir.path().join("p521.pem");
    run_openssl(&[
        "ecparam",
        "-name",
        "secp521r1",
        "-genkey",
        "-noout",
        "-out",
        s(&p521),
    ]);
    let message = credentials_error(pem::parse_private_key(&std::fs::read(&p521).unwrap()));
    assert!(message.contains("P-521"), "{message}");
}

#[test]
fn encrypted_keys_are_refused_with_a_way_out() {
    let files = Files::new(KeyKind::Rsa2048);
    let pkcs8_pem = files.path("enc.pem");
    let pkcs8_der = files.path("enc.der");
    let traditional = files.path("enc-traditional.pem");
    let key = files.key();
    let key = s(&key);
    for (form, out) in [("PEM", &pkcs8_pem), ("DER", &pkcs8_der)] {
        run_openssl(&[
            "pkcs8",
            "-topk8",
            "-in",
            key,
            "-v2",
            "aes-256-cbc",
            "-passout",
            "env:P12_PASSWORD",
            "-outform",
            form,
            "-out",
            s(out),
        ]);
    }
    run_openssl(&[
        "rsa",
        "-in",
        key,
        "-traditional",
        "-aes256",
        "-passout",
        "env:P12_PASSWORD",
        "-out",
        s(&traditional),
    ]);
    for path in [pkcs8_pem, pkcs8_der, traditional] {
        let message = credentials_error(pem::parse_private_key(&std::fs::read(&path).unwrap()));
        assert!(message.contains("encrypted"), "{message}");
        assert!(message.contains(".p12"), "{message}");
        assert!(message.contains("decrypt"), "{message}");
    }

    let message = credentials_error(pem::parse_private_key(
        &files
            .pki
            .ca
            .pem
            .replace("CERTIFICATE", "DSA PRIVATE KEY")
            .into_bytes(),
    ));
    assert!(message.contains("found: DSA PRIVATE KEY"), "{message}");
}

fn export_p12(files: &Files, name: &str, extra: &[&str]) -> Vec<u8> {
    let (out, key) = (files.path(name), files.key());
    let (leaf, ca) = (files.path("code-signing.pem"), files.path("ca.pem"));
    let mut args = vec![
        "pkcs12",
        "-export",
        "-inkey",
        s(&key),
        "-in",
        s(&leaf),
        "-certfile",
        s(&ca),
        "-passout",
        "env:P12_PASSWORD",
        "-out",
        s(&out),
    ];
    args.extend(extra);
    run_openssl(&args);
    std::fs::read(out).unwrap()
}

fn is_code_signing_leaf(identity: &SigningIdentity) -> bool {
    identity.certificate().subject_common_name().as_deref() == Some("openwork test code signing")
}

#[test]
fn openssl_default_and_legacy_p12_files_load_with_the_leaf_and_its_chain() {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let files = Files::new(kind);
        let default = export_p12(&files, "default.p12", &[]);
        let legacy = export_p12(&files, "legacy.p12", &["-legacy"]);
        // The two really differ in their encryption: PBES2 (OID 1.2.840.113549.1.5.13)
        // only in OpenSSL 3's default.
        let pbes2 = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
        ];
        assert!(default.windows(pbes2.len()).any(|w| w == pbes2));
        assert!(!legacy.windows(pbes2.len()).any(|w| w == pbes2));

        for data in [default, legacy] {
            let identity = pkcs12::load(&data, P12_PASSWORD).unwrap();
            assert!(is_code_signing_leaf(&identity), "{kind:?}: {identity:?}");
            let ca = CapturedX509Certificate::from_der(files.pki.ca.der.clone()).unwrap();
            assert_eq!(identity.chain(), &[ca]);
            assert_signs(&identity);
        }
    }
}

#[test]
fn the_leaf_is_the_certificate_of_the_key_whatever_the_file_says() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let pki = TestPki::generate(KeyKind::EcdsaP256);
    let write = |chain: [&[u8]; 2]| {
        let mut store = KeyStore::new();
        store.add_entry(
            "identity",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                &pki.code_signing.key_pkcs8_der,
                [1u8; 20],
                chain.map(|der| Certificate::from_der(der).unwrap()),
            )),
        );
        store.writer(P12_PASSWORD).write().unwrap()
    };

    // Written by another tool than OpenSSL (p12-keystore's own writer, as Java writes).
    let identity =
        pkcs12::load(&write([&pki.code_signing.der, &pki.ca.der]), P12_PASSWORD).unwrap();
    assert!(is_code_signing_leaf(&identity), "{identity:?}");
    assert_eq!(identity.chain().len(), 1);
    assert_signs(&identity);

    // A file that ties the key to the CA certificate: a reader that believes it signs with
    // the CA's name; this one refuses.
    let data = write([&pki.ca.der, &pki.code_signing.der]);
    let reread = KeyStore::from_pkcs12(&data, P12_PASSWORD).unwrap();
    let (_, chain) = reread.private_key_chain().unwrap();
    assert!(chain.chain()[0].subject().contains("code signing CA"));
    let message = credentials_error(pkcs12::load(&data, P12_PASSWORD));
    assert!(message.contains("belongs to its private key"), "{message}");
}

#[test]
fn p12_refusals_say_what_is_wrong() {
    let files = Files::new(KeyKind::Rsa2048);
    let data = export_p12(&files, "id.p12", &[]);
    let wrong = "not the password";
    let message = credentials_error(pkcs12::load(&data, wrong));
    assert!(message.contains("password is wrong"), "{message}");
    assert!(!message.contains(wrong) && !message.contains(P12_PASSWORD));

    let no_key = export_p12(&files, "nokey.p12", &["-nokeys"]);
    let message = credentials_error(pkcs12::load(&no_key, P12_PASSWORD));
    assert!(message.contains("no private key"), "{message}");

    let message = credentials_error(pkcs12::load(b"not a pkcs12 file", P12_PASSWORD));
    assert!(message.contains("cannot read the PKCS#12"), "{message}");

    // Ed448: OpenSSL makes it, nothing here signs with it.
    let key = files.path("ed448.pem");
    let certificate = files.path("ed448.crt");
    let out = files.path("ed448.p12");
    run_openssl(&["genpkey", "-algorithm", "ed448", "-out", s(&key)]);
    run_openssl(&[
        "req",
        "-x509",
        "-key",
        s(&key),
        "-subj",
        "/CN=ed448",
        "-days",
        "2",
        "-out",
        s(&certificate),
    ]);
    run_openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        s(&key),
        "-in",
        s(&certificate),
        "-passout",
        "env:P12_PASSWORD",
        "-out",
        s(&out),
    ]);
    let message = credentials_error(pkcs12::load(&std::fs::read(&out).unwrap(), P12_PASSWORD));
    assert!(message.contains("Ed448"), "{message}");
}

#[test]
fn a_p12_with_two_keys_is_refused() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let first = TestPki::generate(KeyKind::EcdsaP256);
    let second = TestPki::generate(KeyKind::EcdsaP256);
    let mut store = KeyStore::new();
    for (alias, pki, id) in [("first", &first, 1u8), ("second", &second, 2u8)] {
        store.add_entry(
            alias,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                &pki.code_signing.key_pkcs8_der,
                [id; 20],
                [Certificate::from_der(&pki.code_signing.der).unwrap()],
            )),
        );
    }
    let data = store.writer(P12_PASSWORD).write().unwrap();
    let message = credentials_error(pkcs12::load(&data, P12_PASSWORD));
    assert!(message.contains("2 private keys"), "{message}");
    assert!(
        message.contains("\"first\"") && message.contains("\"second\""),
        "{message}"
    );
}

// --- PKCS#11 on SoftHSM2 ---

/// One SoftHSM2 store for this test process, made before the module is first loaded (the
/// module reads its configuration and token list when it starts): a token per test
/// situation, each holding the test PKI's code-signing key and certificate.
struct SoftHsm {
    module: PathBuf,
    pkis: Vec<(&'static str, TestPki)>,
    _dir: tempfile::TempDir,
}

const USER_PIN: &str = "123456";
const KEY_LABEL: &str = "code signing";
const KEY_ID: &str = "c0de";

fn softhsm() -> &'static SoftHsm {
    static SOFTHSM: std::sync::OnceLock<SoftHsm> = std::sync::OnceLock::new();
    SOFTHSM.get_or_init(|| {
        let module = softhsm_module();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // SAFETY: set once, before this process loads the module (the only reader, at its
        // C_Initialize); Rust's own environment readers take the same lock as set_var.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };

        let mut pkis = Vec::new();
        for (token, kind) in [
            ("rsa", KeyKind::Rsa2048),
            ("ecdsa", KeyKind::EcdsaP256),
            ("pin-test", KeyKind::EcdsaP256),
        ] {
            let pki = TestPki::generate(kind);
            let key = dir.path().join(format!("{token}.key.pem"));
            let certificate = dir.path().join(format!("{token}.der"));
            std::fs::write(&key, &pki.code_signing.key_pem).unwrap();
            std::fs::write(&certificate, &pki.code_signing.der).unwrap();
            let tool = |program: &str, args: &[&str]| {
                let output = Command::new(program)
                    .args(args)
                    .env("SOFTHSM2_CONF", &conf)
                    .output()
                    .unwrap_or_else(|e| panic!("{program} ({e}); apt-get install softhsm2 opensc"));
                assert!(
                    output.status.success(),
                    "{program} {args:?}: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            };
            tool(
                "softhsm2-util",
                &[
                    "--init-token",
                    "--free",
                    "--label",
                    token,
                    "--pin",
                    USER_PIN,
                    "--so-pin",
                    "654321",
                ],
            );
            tool(
                "softhsm2-util",
                &[
                    "--import",
                    s(&key),
                    "--token",
                    token,
                    "--label",
                    KEY_LABEL,
                    "--id",
                    KEY_ID,
                    "--pin",
                    USER_PIN,
                ],
            );
            tool(
                "pkcs11-tool",
                &[
                    "--module",
                    s(&module),
                    "--token-label",
                    token,
                    "--login",
                    "--pin",
                    USER_PIN,
                    "--write-object",
                    s(&certificate),
                    "--type",
                    "cert",
                    "--id",
                    KEY_ID,
                    "--label",
                    KEY_LABEL,
                ],
            );
            pkis.push((token, pki));
        }
        SoftHsm {
            module,
            pkis,
            _dir: dir,
        }
    })
}

/// libsofthsm2.so from the package's file list, or where distributions put it.
fn softhsm_module() -> PathBuf {
    let listed = Command::new("dpkg")
        .args(["-L", "libsofthsm2"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let known = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib64/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ];
    listed
        .lines()
        .filter(|line| line.ends_with("/libsofthsm2.so"))
        .chain(known)
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("SoftHSM2 is not installed: apt-get install softhsm2 opensc")
}

fn pkcs11_config(token: &str) -> pkcs11::Pkcs11Config {
    pkcs11::Pkcs11Config {
        module: softhsm().module.clone(),
        token_label: Some(token.into()),
        slot: None,
        key_label: Some(KEY_LABEL.into()),
        key_id: None,
        pin: String::from(USER_PIN).into(),
    }
}

fn token_pki(token: &str) -> &'static TestPki {
    &softhsm().pkis.iter().find(|(t, _)| *t == token).unwrap().1
}

#[test]
fn pkcs11_rsa_and_ecdsa_keys_sign_on_the_token() {
    for token in ["rsa", "ecdsa"] {
        let pki = token_pki(token);
        // The certificate from the token.
        let identity = pkcs11::load(&pkcs11_config(token), None).unwrap();
        assert!(is_code_signing_leaf(&identity), "{token}: {identity:?}");
        assert_eq!(
            identity.certificate().constructed_data(),
            pki.code_signing.der
        );
        assert!(
            identity.key().private_key_data().is_none(),
            "the key stays on the token"
        );
        assert_signs(&identity);

        // The certificate and chain given, the key found by its ID alone.
        let given =
            pem::parse_certificates(format!("{}{}", pki.code_signing.pem, pki.ca.pem).as_bytes())
                .unwrap();
        let config = pkcs11::Pkcs11Config {
            key_label: None,
            key_id: Some(hex::decode(KEY_ID).unwrap()),
            ..pkcs11_config(token)
        };
        let identity = pkcs11::load(&config, Some(given)).unwrap();
        assert_eq!(identity.chain().len(), 1);
        assert_signs(&identity);
        // Signing from several threads shares the one session safely.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| assert_signs(&identity));
            }
        });
    }
}

#[test]
fn pkcs11_refusals_say_what_is_wrong() {
    let wrong_pin = "999999";
    let config = pkcs11::Pkcs11Config {
        pin: String::from(wrong_pin).into(),
        ..pkcs11_config("pin-test")
    };
    let message = credentials_error(pkcs11::load(&config, None));
    assert!(
        message.contains("PIN") && message.contains("wrong"),
        "{message}"
    );
    assert!(message.contains("pin-test"), "{message}");
    assert!(
        !message.contains(wrong_pin) && !message.contains(USER_PIN),
        "{message}"
    );
    assert!(!format!("{config:?}").contains(wrong_pin));

    let config = pkcs11::Pkcs11Config {
        key_label: Some("release key".into()),
        ..pkcs11_config("rsa")
    };
    let message = credentials_error(pkcs11::load(&config, None));
    assert!(
        message.contains("no private key \"release key\""),
        "{message}"
    );
    assert!(
        message.contains("\"code signing\" (ID c0de)"),
        "keys listed: {message}"
    );

    let config = pkcs11::Pkcs11Config {
        token_label: Some("no such token".into()),
        ..pkcs11_config("rsa")
    };
    let message = credentials_error(pkcs11::load(&config, None));
    assert!(
        message.contains("no PKCS#11 token labelled \"no such token\""),
        "{message}"
    );
    assert!(message.contains("\"rsa\""), "tokens listed: {message}");

    // Another certificate than the key's.
    let other = pem::parse_certificates(token_pki("ecdsa").code_signing.pem.as_bytes()).unwrap();
    let message = credentials_error(pkcs11::load(&pkcs11_config("pin-test"), Some(other)));
    assert!(message.contains("does not belong"), "{message}");

    let config = pkcs11::Pkcs11Config {
        module: PathBuf::from("/nonexistent/libpkcs11.so"),
        ..pkcs11_config("rsa")
    };
    assert!(matches!(pkcs11::load(&config, None), Err(Error::Config(_))));
}
