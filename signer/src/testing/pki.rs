//! A throwaway PKI: a code-signing root with a code-signing leaf, and a time-stamping root
//! with a TSA leaf. Validity starts in the past (backdated), as real certificates' do by the
//! time anything is signed with them, and ends years ahead.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rsa::pkcs8::EncodePrivateKey;

use crate::key::{SigningIdentity, pem};

/// The key type of the leaf certificates (roots use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 with SHA-256, what most code-signing certificates are.
    Rsa2048,
    /// ECDSA P-256 with SHA-256.
    EcdsaP256,
}

/// One certificate and its private key.
#[derive(Debug, Clone)]
pub struct TestCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// The whole test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// Root of the code-signing chain.
    pub ca: TestCertificate,
    /// Code-signing leaf (extended key usage codeSigning), issued by `ca`.
    pub code_signing: TestCertificate,
    /// Root of the time-stamping chain.
    pub tsa_ca: TestCertificate,
    /// Time-stamping leaf (critical extended key usage timeStamping), issued by `tsa_ca`.
    pub tsa: TestCertificate,
}

/// The PKI written out as files, for tools such as osslsigncode.
#[derive(Debug, Clone)]
pub struct TestPkiFiles {
    /// Code-signing root, PEM.
    pub ca_pem: PathBuf,
    /// Code-signing leaf key, PKCS#8 PEM.
    pub key_pem: PathBuf,
    /// Code-signing leaf then root, PEM.
    pub chain_pem: PathBuf,
    /// Code-signing leaf alone, PEM.
    pub cert_pem: PathBuf,
    /// Time-stamping root, PEM.
    pub tsa_ca_pem: PathBuf,
}

impl TestPki {
    /// Makes a fresh PKI with keys of `kind`.
    pub fn generate(kind: KeyKind) -> Self {
        let (ca, ca_key) = root(kind, "openwork test code signing CA");
        let (tsa_ca, tsa_ca_key) = root(kind, "openwork test time-stamping CA");
        let code_signing = leaf(
            kind,
            "openwork test code signing",
            ExtendedKeyUsagePurpose::CodeSigning,
            &ca.0,
            &ca_key,
        );
        let tsa = leaf(
            kind,
            "openwork test TSA",
            ExtendedKeyUsagePurpose::TimeStamping,
            &tsa_ca.0,
            &tsa_ca_key,
        );
        Self {
            ca: ca.1,
            code_signing,
            tsa_ca: tsa_ca.1,
            tsa,
        }
    }

    /// The code-signing leaf as a [`SigningIdentity`], with the root as its chain.
    pub fn signing_identity(&self) -> SigningIdentity {
        let chain = format!("{}{}", self.code_signing.pem, self.ca.pem);
        pem::load(self.code_signing.key_pem.as_bytes(), chain.as_bytes())
            .expect("the test PKI loads")
    }

    /// Writes the PEM files into `dir`.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<TestPkiFiles> {
        let files = TestPkiFiles {
            ca_pem: dir.join("ca.pem"),
            key_pem: dir.join("code-signing.key.pem"),
            chain_pem: dir.join("code-signing.chain.pem"),
            cert_pem: dir.join("code-signing.pem"),
            tsa_ca_pem: dir.join("tsa-ca.pem"),
        };
        fs_err::write(&files.ca_pem, &self.ca.pem)?;
        fs_err::write(&files.key_pem, &self.code_signing.key_pem)?;
        fs_err::write(
            &files.chain_pem,
            format!("{}{}", self.code_signing.pem, self.ca.pem),
        )?;
        fs_err::write(&files.cert_pem, &self.code_signing.pem)?;
        fs_err::write(&files.tsa_ca_pem, &self.tsa_ca.pem)?;
        Ok(files)
    }
}

fn key_pair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key"),
        // ring (rcgen's backend here) cannot generate RSA keys; the rsa crate can.
        KeyKind::Rsa2048 => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
            let der = key.to_pkcs8_der().expect("PKCS#8");
            KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                .expect("RSA key pair")
        }
    }
}

fn params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "openwork tests");
    params.distinguished_name = name;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    params
}

fn root(kind: KeyKind, common_name: &str) -> ((CertificateParams, TestCertificate), KeyPair) {
    let key = key_pair(kind);
    let mut params = params(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = params.self_signed(&key).expect("self-signed root");
    let test = TestCertificate {
        der: certificate.der().to_vec(),
        pem: certificate.pem(),
        key_pkcs8_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    };
    ((params, test), key)
}

fn leaf(
    kind: KeyKind,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer_params: &CertificateParams,
    issuer_key: &KeyPair,
) -> TestCertificate {
    let key = key_pair(kind);
    let mut params = params(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let time_stamping = usage == ExtendedKeyUsagePurpose::TimeStamping;
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(issuer_params, issuer_key);
    let mut certificate = params.signed_by(&key, &issuer).expect("leaf");
    if time_stamping {
        // RFC 3161 §2.3: a TSA certificate's extended key usage must be critical; rcgen
        // writes it non-critical, so re-issue with the extension marked.
        certificate = reissue_with_critical_eku(params, &key, &issuer);
    }
    TestCertificate {
        der: certificate.der().to_vec(),
        pem: certificate.pem(),
        key_pkcs8_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

fn reissue_with_critical_eku(
    mut params: CertificateParams,
    key: &KeyPair,
    issuer: &Issuer<'_, &KeyPair>,
) -> rcgen::Certificate {
    params.extended_key_usages.clear();
    // extKeyUsage (2.5.29.37) = SEQUENCE { id-kp-timeStamping (1.3.6.1.5.5.7.3.8) }
    let value = vec![
        0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
    ];
    let mut extension = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], value);
    extension.set_criticality(true);
    params.custom_extensions.push(extension);
    params.signed_by(key, issuer).expect("TSA leaf")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// OpenSSL, which osslsigncode builds on, accepts each leaf under its own root (the TSA
    /// leaf for time stamping; OpenSSL 3.0 has no code-signing purpose) and refuses it under
    /// the other root.
    #[test]
    fn openssl_accepts_the_chains_for_their_purposes() {
        for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
            let pki = TestPki::generate(kind);
            let dir = tempfile::tempdir().unwrap();
            let files = pki.write_files(dir.path()).unwrap();
            let tsa = dir.path().join("tsa.pem");
            fs_err::write(&tsa, &pki.tsa.pem).unwrap();
            let verify = |ca: &Path, purpose: &str, cert: &Path| {
                Command::new("openssl")
                    .args(["verify", "-purpose", purpose, "-CAfile"])
                    .arg(ca)
                    .arg(cert)
                    .output()
                    .expect("run openssl")
                    .status
                    .success()
            };
            assert!(verify(&files.ca_pem, "any", &files.cert_pem), "{kind:?}");
            assert!(verify(&files.tsa_ca_pem, "timestampsign", &tsa), "{kind:?}");
            assert!(!verify(&files.tsa_ca_pem, "any", &files.cert_pem));
            let identity = pki.signing_identity();
            assert_eq!(identity.chain().len(), 1, "the root, without the leaf");
        }
    }
}
