//! TLS for remote access: the server's certificate (generated, or the user's), the rustls
//! acceptor, and the client side that pins a certificate by its SHA-256 (for `pair`, and for
//! any client that got the fingerprint from a pairing URL or the ready line).
//!
//! Why a self-signed certificate pinned by fingerprint, and not a CA: a server on a LAN
//! address has no public name a CA would certify, and a private CA would need installing on
//! every phone. The fingerprint travels with the pairing code (URL, QR code, mDNS prefix),
//! so a client checks exactly this certificate and nothing a LAN attacker could present.
//!
//! Only TLS 1.3 is offered: every client we serve (curl, node, reqwest, phones' stacks)
//! speaks it, and TLS 1.2 would add code to the stub for no one.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layout;
use crate::trust;

/// What to do about an untrusted `--tls-cert` or `--tls-key`.
const USER_FILE_FIX: &str = "another user could replace the certificate or read the key; make it yours and chmod 600 it, or pass other files";

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `<data dir>/tls/`: generated on the first remote start, then reused.
    DataDir,
    /// `--tls-cert` and `--tls-key`: PEM files the user owns.
    User {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

/// The server side of TLS, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts TLS connections (TLS 1.3, ALPN `http/1.1`).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// SHA-256 of the leaf certificate (DER), 64 lowercase hex digits: what clients pin.
    pub fingerprint: String,
    /// The certificate file.
    pub cert_file: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// The ring provider: one choice for the whole binary, so no process-wide default has to be
/// installed (and no second provider is linked).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER bytes, as 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// `<data dir>/tls/cert.pem` and `key.pem`.
pub fn data_dir_files(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join(layout::TLS_DIR);
    (
        dir.join(layout::TLS_CERT_FILE),
        dir.join(layout::TLS_KEY_FILE),
    )
}

/// The certificate and key to serve with: the user's, or the data dir's (generated now when
/// there is none yet, for `names`).
pub fn load(data_dir: &Path, source: &CertSource, names: &[String]) -> Result<ServerTls> {
    let (cert_file, cert_pem, key_pem) = match source {
        CertSource::User { cert, key } => {
            (cert.clone(), read_user_file(cert)?, read_user_file(key)?)
        }
        CertSource::DataDir => {
            let (cert_file, key_file) = data_dir_files(data_dir);
            let cert = read_data_dir_file(&cert_file, "the TLS certificate")?;
            let key = read_data_dir_file(&key_file, "the TLS key")?;
            match (cert, key) {
                (Some(cert), Some(key)) => (cert_file, cert, key),
                (None, None) => {
                    let fingerprint = rotate(data_dir, names)?;
                    tracing::info!(%fingerprint, file = %cert_file.display(), "generated a TLS certificate for remote access");
                    return load(data_dir, source, names);
                }
                _ => {
                    return Err(Error::InsecureTransport(format!(
                        "{} holds a certificate or a key but not both; run `openwork-server-v2 tls rotate` to make a new pair (paired devices then need the new fingerprint)",
                        cert_file.parent().unwrap_or(data_dir).display()
                    )));
                }
            }
        }
    };
    server_tls(&cert_file, &cert_pem, &key_pem)
}

/// The fingerprint of the data dir's certificate, without making one; `None` when there is
/// none yet.
pub fn data_dir_fingerprint(data_dir: &Path) -> Result<Option<String>> {
    let (cert_file, _) = data_dir_files(data_dir);
    let Some(pem) = read_data_dir_file(&cert_file, "the TLS certificate")? else {
        return Ok(None);
    };
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(|c| c.ok());
    match leaf {
        Some(leaf) => Ok(Some(fingerprint(&leaf))),
        None => Err(Error::InsecureTransport(format!(
            "{} holds no PEM certificate; run `openwork-server-v2 tls rotate`",
            cert_file.display()
        ))),
    }
}

fn server_tls(cert_file: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls> {
    let unusable = |what: &str, detail: String| {
        Error::InsecureTransport(format!(
            "cannot use the TLS {what} of {}: {detail}; pass PEM files with --tls-cert and --tls-key, or for the generated one run `openwork-server-v2 tls rotate`",
            cert_file.display()
        ))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| unusable("certificate", e.to_string()))?;
    let Some(leaf) = certs.first() else {
        return Err(unusable("certificate", "no CERTIFICATE block".into()));
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| unusable("key", e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| unusable("settings", e.to_string()))?
        .with_no_client_auth()
        // Also checks that the key is the certificate's.
        .with_single_cert(certs, key)
        .map_err(|e| unusable("certificate and key", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
        cert_file: cert_file.to_path_buf(),
    })
}

/// Makes a new self-signed ECDSA P-256 certificate for `names` and writes it with its key
/// into the data dir (key 0600; each file through an exclusively created temp file and a
/// rename, so a planted link is replaced, never followed). Returns its fingerprint. The old
/// pair is replaced: clients that pinned it must pair again, or be given the new fingerprint.
pub fn rotate(data_dir: &Path, names: &[String]) -> Result<String> {
    let (cert_pem, key_pem, der) = generate(names)?;
    let (cert_file, key_file) = data_dir_files(data_dir);
    let dir = cert_file.parent().unwrap_or(data_dir);
    trust::create_private_dir(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    trust::check_path(dir, "the TLS directory", true, trust::DATA_DIR_FIX)?;
    // The key first: a crash between the two leaves a key that is not the certificate's,
    // which the next start refuses (rustls checks the pair) instead of serving a stale one.
    trust::write_private_atomic(&key_file, key_pem.as_bytes())
        .map_err(|e| Error::io(format!("write {}", key_file.display()), e))?;
    trust::write_private_atomic(&cert_file, cert_pem.as_bytes())
        .map_err(|e| Error::io(format!("write {}", cert_file.display()), e))?;
    Ok(fingerprint(&der))
}

/// A self-signed certificate for `names` (DNS names or IP addresses): PEM certificate, PEM
/// key, and the certificate's DER.
fn generate(names: &[String]) -> Result<(String, String, Vec<u8>)> {
    let failed =
        |e: rcgen::Error| Error::InsecureTransport(format!("cannot make a TLS certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "openwork-server-v2");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

/// The names a generated certificate covers: `localhost`, this machine's host name (and
/// `<name>.local`, its mDNS name), and every address of every interface. Clients that pin
/// the fingerprint do not need them; `curl --cacert` and browsers check them.
pub fn certificate_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = super::host_name() {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    let mut addresses: Vec<IpAddr> = vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    addresses.extend(super::interface_addresses());
    for address in addresses {
        let text = address.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

/// Reads the data dir's certificate or key: not through a link, and only when ours and not
/// writable by others (exit 15 otherwise); `None` when there is none.
fn read_data_dir_file(path: &Path, what: &str) -> Result<Option<Vec<u8>>> {
    let Some(mut file) = trust::open_trusted(path, what)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    Ok(Some(bytes))
}

/// Reads `--tls-cert` or `--tls-key`: named by the user, so a link is followed, but what is
/// read must be theirs (or root's) and writable by nobody else, as for `--token-file`.
fn read_user_file(path: &Path) -> Result<Vec<u8>> {
    let cannot = |e: std::io::Error| {
        Error::InsecureTransport(format!(
            "cannot read {}: {e}; pass readable PEM files with --tls-cert and --tls-key",
            path.display()
        ))
    };
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    trust::check_open_file(&file, path, "the TLS file", USER_FILE_FIX)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

/// A client configuration that accepts exactly one server certificate: the one whose DER
/// has this SHA-256 (64 hex digits), whatever name or CA it claims. Signatures are still
/// verified, so the server must hold the certificate's key.
pub fn pinned_client_config(fingerprint: &str) -> Result<rustls::ClientConfig> {
    let expected = hex::decode(fingerprint.trim())
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| {
            Error::BadInput(format!(
                "{fingerprint:?} is not a certificate fingerprint (64 hex digits of SHA-256)"
            ))
        })?;
    client_config(Some(expected))
}

/// A client configuration that accepts any server certificate, for the pairing client
/// alone: it learns the certificate's fingerprint from the handshake, and the pairing
/// exchange ([`super::pake`]) authenticates that fingerprint with the code, which TLS
/// could not. Signatures are still verified, so the server holds the key of what it shows.
pub fn first_sight_client_config() -> rustls::ClientConfig {
    client_config(None).expect("TLS 1.3 with the ring provider is a valid setting")
}

fn client_config(expected: Option<Vec<u8>>) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::BadInput(format!("TLS settings: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate { expected, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts the one certificate whose SHA-256 is `expected` (see [`pinned_client_config`]),
/// or with no `expected`, any ([`first_sight_client_config`]).
#[derive(Debug)]
pub struct PinnedCertificate {
    expected: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = &self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        let digest = Sha256::digest(end_entity.as_ref());
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            digest.as_slice(),
            expected.as_slice(),
        )) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the pinned one",
                hex::encode(digest)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_private_reused_and_replaced_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load(dir.path(), &CertSource::DataDir, &names).unwrap();
        assert_eq!(first.fingerprint.len(), 64);
        let (cert, key) = data_dir_files(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(cert.parent().unwrap()), 0o700);
        }
        let again = load(dir.path(), &CertSource::DataDir, &names).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint, "reused");
        let rotated = rotate(dir.path(), &names).unwrap();
        assert_ne!(rotated, first.fingerprint);
        let after = load(dir.path(), &CertSource::DataDir, &names).unwrap();
        assert_eq!(after.fingerprint, rotated);
        // The user's files work the same, and a key that is not the certificate's is refused.
        let user = load(
            dir.path(),
            &CertSource::User {
                cert: cert.clone(),
                key: key.clone(),
            },
            &names,
        )
        .unwrap();
        assert_eq!(user.fingerprint, rotated);
        let other = tempfile::tempdir().unwrap();
        rotate(other.path(), &names).unwrap();
        let (_, other_key) = data_dir_files(other.path());
        let mismatch = load(
            dir.path(),
            &CertSource::User {
                cert,
                key: other_key,
            },
            &names,
        )
        .unwrap_err();
        assert!(
            matches!(mismatch, Error::InsecureTransport(_)),
            "{mismatch}"
        );
    }

    #[test]
    fn half_a_pair_is_refused_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        rotate(dir.path(), &names).unwrap();
        let (cert, _) = data_dir_files(dir.path());
        std::fs::remove_file(&cert).unwrap();
        let err = load(dir.path(), &CertSource::DataDir, &names).unwrap_err();
        assert!(err.to_string().contains("tls rotate"), "{err}");
    }

    #[test]
    fn a_fingerprint_must_be_a_sha256() {
        assert!(pinned_client_config(&"ab".repeat(32)).is_ok());
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            assert!(pinned_client_config(bad).is_err(), "{bad}");
        }
    }
}
