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
//!
//! | concern | module | what it guarantees |
//! |---|---|---|
//! | validity | [`validity`] | a generated certificate is valid from a day before it is made to a year after, and renewed with 30 days left (or when it breaks that policy) |
//! | the data dir's pair | [`store`] | replaced under a lock, switched through one file (`next.json`), so a crash never leaves a key that is not its certificate's |
//! | paired devices follow | [`succession`] | the old key signs a statement naming the new certificate; [`verify_succession`] is the one verifier |
//! | no restart | [`live`] | rustls asks for the certificate at each handshake: a renewal reaches new connections at once |
//! | what it names | [`certificate_names`] | localhost, loopback, the host name and the addresses the server is bound to; link-local only when bound |

mod live;
pub mod store;
pub mod succession;
pub mod validity;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

pub use live::{Checked, LiveCertificate, check, keep_current};
pub use store::{Followers, Replaced};
pub use succession::{Statement, Succession, SuccessionError, verify as verify_succession};
pub use validity::{Timings, Validity, Verdict};

use crate::error::{Error, Result};
use crate::trust;
use store::{Files, Pair};

/// What to do about an untrusted `--tls-cert` or `--tls-key`.
const USER_FILE_FIX: &str = "another user could replace the certificate or read the key; make it yours and chmod 600 it, or pass other files";

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `<data dir>/tls/`: generated on the first remote start, renewed before it expires.
    DataDir,
    /// `--tls-cert` and `--tls-key`: PEM files the user owns (never replaced here).
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
    /// Accepts TLS connections (TLS 1.3, ALPN `http/1.1`), presenting [`Self::certificate`].
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The certificate presented now: replaced when it is renewed.
    pub certificate: LiveCertificate,
    /// The certificate file.
    pub cert_file: PathBuf,
}

impl ServerTls {
    /// SHA-256 of the leaf certificate presented now (DER), 64 lowercase hex digits: what
    /// clients pin.
    pub fn fingerprint(&self) -> String {
        self.certificate.fingerprint()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificate", &self.certificate)
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
    let files = Files::of(data_dir);
    (files.cert, files.key)
}

/// The certificate and key to serve with: the user's (a warning when it is close to
/// expiry), or the data dir's, made now for `names` when there is none yet and renewed now
/// when [`Timings::verdict`] says so (announced to paired devices with a statement).
pub fn load(
    data_dir: &Path,
    source: &CertSource,
    names: &[String],
    timings: &Timings,
) -> Result<ServerTls> {
    let now = SystemTime::now();
    let (cert_file, pair, succession) = match source {
        CertSource::User { cert, key } => {
            let pair = Pair {
                certificate: read_user_file(cert)?,
                key: read_user_file(key)?,
            };
            (cert.clone(), pair, Succession::default())
        }
        CertSource::DataDir => {
            let files = Files::of(data_dir);
            let (pair, succession) = load_data_dir(&files, names, timings, now)?;
            (files.cert, pair, succession)
        }
    };
    let unusable = |detail: String| {
        Error::InsecureTransport(format!(
            "cannot use the TLS {detail} of {}; pass PEM files with --tls-cert and --tls-key, or for the generated one run `openwork-server-v2 tls rotate --forget`",
            cert_file.display()
        ))
    };
    let key = pair.certified().map_err(unusable)?;
    let fingerprint = fingerprint(&key.cert[0]);
    let validity = Validity::of(&key.cert[0]).ok();
    if let (CertSource::User { .. }, Some(when)) =
        (source, validity.and_then(|v| timings.expiring(&v, now)))
    {
        tracing::warn!("{}", live::user_certificate_expiring(&cert_file, &when));
    }
    let certificate = LiveCertificate::new(key, fingerprint, validity, succession);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| unusable(format!("settings: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.resolver());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        certificate,
        cert_file,
    })
}

/// The data dir's pair and the statements kept: made when there is none, renewed when the
/// policy says so. A pair that cannot be used (a key that is not the certificate's) is
/// returned as it is, for [`load`] to refuse: replacing it would cut off every device
/// without the user deciding so (`tls rotate --forget`).
fn load_data_dir(
    files: &Files,
    names: &[String],
    timings: &Timings,
    now: SystemTime,
) -> Result<(Pair, Succession)> {
    let held = store::lock(files)?;
    store::settle(&held, files)?;
    let why = match store::current(files)? {
        None => None,
        Some(pair) => {
            let verdict = match (pair.certified(), pair.leaf()) {
                (Ok(_), Ok(leaf)) => match Validity::of(&leaf) {
                    Ok(validity) => timings.verdict(&validity, now),
                    Err(e) => Verdict::Renew(format!("its validity cannot be read ({e})")),
                },
                _ => Verdict::Keep,
            };
            match verdict {
                Verdict::Keep => return Ok((pair, Succession::read(&files.succession)?)),
                Verdict::Renew(why) => Some(why),
            }
        }
    };
    let replaced = store::replace(
        &held,
        files,
        names,
        now,
        timings.lifetime,
        Followers::Announce,
    )?;
    match why {
        None => {
            tracing::info!(fingerprint = %replaced.fingerprint, file = %files.cert.display(), "generated a TLS certificate for remote access");
        }
        Some(why) => tracing::info!(
            previous = replaced.previous.as_deref().unwrap_or_default(),
            fingerprint = %replaced.fingerprint,
            "renewed the TLS certificate ({why}); paired devices follow the signed statement"
        ),
    }
    Ok((replaced.pair, replaced.succession))
}

/// The fingerprint of the data dir's certificate, without making one; `None` when there is
/// none yet.
pub fn data_dir_fingerprint(data_dir: &Path) -> Result<Option<String>> {
    let files = Files::of(data_dir);
    let Some(pair) = store::current(&files)? else {
        return Ok(None);
    };
    pair.fingerprint().map(Some).map_err(|e| {
        Error::InsecureTransport(format!(
            "{} holds no usable certificate ({e}); run `openwork-server-v2 tls rotate --forget`",
            files.cert.display()
        ))
    })
}

/// Makes a new certificate and key for `names` in the data dir (valid a year; key 0600;
/// see [`store`] for how it is switched). With [`Followers::Announce`] the old key signs a
/// statement that leads paired devices to the new certificate; with
/// [`Followers::Forget`] (a key that may be stolen) none is written and the kept ones are
/// dropped: devices pair again. A running server of this data dir presents the new
/// certificate within [`Timings::check_every`].
pub fn rotate(data_dir: &Path, names: &[String], followers: Followers) -> Result<Replaced> {
    let files = Files::of(data_dir);
    let held = store::lock(&files)?;
    store::replace(
        &held,
        &files,
        names,
        SystemTime::now(),
        Timings::default().lifetime,
        followers,
    )
}

/// The names a generated certificate covers for a server bound to `bind`: `localhost`, the
/// loopback addresses, this machine's host name (and `<name>.local`, its mDNS name), and
/// the addresses the server is reached at (see [`names_for`]). Clients that pin the
/// fingerprint do not need them; `curl --cacert` and browsers check them.
pub fn certificate_names(bind: IpAddr) -> Vec<String> {
    names_for(
        bind,
        super::host_name().as_deref(),
        &super::interface_addresses(),
    )
}

/// [`certificate_names`] with the host name and interface addresses given: a specific bind
/// is named as it is (a link-local one too: the user chose it); an unspecified one (`0.0.0.0`
/// for IPv4, `::` for both families) names every interface address of its families that
/// is neither loopback nor link-local. A link-local address is not what a LAN client is
/// given, and naming it (and every other interface: VPNs, container bridges) to any
/// unauthenticated TLS client tells more about the machine than the user serves.
pub fn names_for(bind: IpAddr, host: Option<&str>, interfaces: &[IpAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = host {
        names.push(format!("{host}.local"));
        names.push(host.to_string());
    }
    let mut addresses = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if bind.is_unspecified() {
        addresses.extend(
            interfaces.iter().copied().filter(|a| {
                !a.is_loopback() && !is_link_local(a) && (bind.is_ipv6() || a.is_ipv4())
            }),
        );
    } else {
        addresses.push(bind);
    }
    for address in addresses {
        let text = address.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

/// `169.254.0.0/16` or `fe80::/10`.
fn is_link_local(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Reads `--tls-cert` or `--tls-key`: named by the user, so a link is followed, but what is
/// read must be theirs (or root's) and writable by nobody else, as for `--token-file`.
fn read_user_file(path: &Path) -> Result<String> {
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
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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

    fn names() -> Vec<String> {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn a_generated_certificate_is_private_reused_and_replaced_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let timings = Timings::default();
        let first = load(dir.path(), &CertSource::DataDir, &names(), &timings).unwrap();
        assert_eq!(first.fingerprint().len(), 64);
        let (cert, key) = data_dir_files(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(cert.parent().unwrap()), 0o700);
        }
        let again = load(dir.path(), &CertSource::DataDir, &names(), &timings).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint(), "reused");
        let rotated = rotate(dir.path(), &names(), Followers::Announce).unwrap();
        assert_ne!(rotated.fingerprint, first.fingerprint());
        assert_eq!(rotated.previous, Some(first.fingerprint()));
        let after = load(dir.path(), &CertSource::DataDir, &names(), &timings).unwrap();
        assert_eq!(after.fingerprint(), rotated.fingerprint);
        // The user's files work the same, and a key that is not the certificate's is refused.
        let user = load(
            dir.path(),
            &CertSource::User {
                cert: cert.clone(),
                key: key.clone(),
            },
            &names(),
            &timings,
        )
        .unwrap();
        assert_eq!(user.fingerprint(), rotated.fingerprint);
        let other = tempfile::tempdir().unwrap();
        rotate(other.path(), &names(), Followers::Announce).unwrap();
        let (_, other_key) = data_dir_files(other.path());
        let mismatch = load(
            dir.path(),
            &CertSource::User {
                cert,
                key: other_key,
            },
            &names(),
            &timings,
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
        rotate(dir.path(), &names(), Followers::Announce).unwrap();
        let (cert, _) = data_dir_files(dir.path());
        std::fs::remove_file(&cert).unwrap();
        let err = load(
            dir.path(),
            &CertSource::DataDir,
            &names(),
            &Timings::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tls rotate --forget"), "{err}");
        // Which is what --forget is for; announcing needs the old pair.
        assert!(rotate(dir.path(), &names(), Followers::Announce).is_err());
        rotate(dir.path(), &names(), Followers::Forget).unwrap();
        load(
            dir.path(),
            &CertSource::DataDir,
            &names(),
            &Timings::default(),
        )
        .unwrap();
    }

    #[test]
    fn a_check_renews_a_near_expiry_certificate_tells_followers_and_picks_up_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let short = Timings {
            lifetime: std::time::Duration::from_secs(3600),
            renew_before: std::time::Duration::from_secs(1800),
            ..Timings::default()
        };
        let server = load(dir.path(), &CertSource::DataDir, &names(), &short).unwrap();
        let first = server.fingerprint();
        let mut told = server.certificate.watch();
        let now = SystemTime::now();
        let checked = |at| {
            check(
                &server.certificate,
                dir.path(),
                &CertSource::DataDir,
                &names(),
                &short,
                at,
            )
            .unwrap()
        };
        assert_eq!(checked(now), Checked::Current);
        let Checked::Renewed {
            previous,
            fingerprint,
            reason,
        } = checked(now + std::time::Duration::from_secs(2000))
        else {
            panic!("not renewed with 1600 s of 3600 left");
        };
        assert_eq!(previous, first);
        assert!(reason.contains("expires on"), "{reason}");
        assert_eq!(server.fingerprint(), fingerprint);
        assert!(told.has_changed().unwrap());
        assert_eq!(*told.borrow_and_update(), fingerprint);
        // The statement the server serves leads from the first certificate to it.
        let served = server.certificate.succession_from(&first).unwrap();
        assert_eq!(served.statements.len(), 1);
        let (cert, _) = data_dir_files(dir.path());
        let presented = Pair {
            certificate: std::fs::read_to_string(&cert).unwrap(),
            key: String::new(),
        }
        .leaf()
        .unwrap();
        assert_eq!(
            verify_succession(&first, &presented, &served),
            Ok(fingerprint.clone())
        );
        assert_eq!(
            server.certificate.succession_from(&fingerprint),
            Some(Succession::default())
        );
        assert_eq!(server.certificate.succession_from(&"ab".repeat(32)), None);

        // `tls rotate` elsewhere: picked up at the next check.
        let rotated = rotate(dir.path(), &names(), Followers::Announce).unwrap();
        assert_eq!(
            checked(SystemTime::now()),
            Checked::PickedUp {
                previous: fingerprint.clone(),
                fingerprint: rotated.fingerprint.clone()
            }
        );
        assert_eq!(
            server
                .certificate
                .succession_from(&first)
                .unwrap()
                .statements
                .len(),
            2
        );
    }

    #[test]
    fn a_users_certificate_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        rotate(dir.path(), &names(), Followers::Announce).unwrap();
        let (cert, key) = data_dir_files(dir.path());
        let user = CertSource::User {
            cert: cert.clone(),
            key,
        };
        let timings = Timings::default();
        let server = load(dir.path(), &user, &names(), &timings).unwrap();
        let before = std::fs::read(&cert).unwrap();
        let in_eleven_months = SystemTime::now() + std::time::Duration::from_secs(340 * 86400);
        let checked = check(
            &server.certificate,
            dir.path(),
            &user,
            &names(),
            &timings,
            in_eleven_months,
        )
        .unwrap();
        let Checked::UserCertificateExpiring(message) = checked else {
            panic!("{checked:?}");
        };
        assert!(message.contains("replace it (--tls-cert"), "{message}");
        assert_eq!(std::fs::read(&cert).unwrap(), before, "never replaced");
    }

    #[test]
    fn a_certificate_names_what_the_server_is_bound_to_and_link_local_only_when_bound() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let interfaces = [
            ip("127.0.0.1"),
            ip("192.168.1.20"),
            ip("169.254.7.7"),
            ip("10.8.0.3"),
            ip("::1"),
            ip("fe80::1c2b:3aff:fe4d:5e6f"),
            ip("2001:db8::20"),
        ];
        let names = |bind: &str| names_for(ip(bind), Some("studio"), &interfaces);
        let base = ["localhost", "studio.local", "studio", "127.0.0.1", "::1"];
        assert_eq!(
            names("0.0.0.0"),
            [&base[..], &["192.168.1.20", "10.8.0.3"]].concat()
        );
        assert_eq!(
            names("::"),
            [&base[..], &["192.168.1.20", "10.8.0.3", "2001:db8::20"]].concat()
        );
        assert_eq!(
            names("192.168.1.20"),
            [&base[..], &["192.168.1.20"]].concat()
        );
        assert_eq!(names("169.254.7.7"), [&base[..], &["169.254.7.7"]].concat());
        assert_eq!(names("127.0.0.1"), base);
        assert_eq!(
            names_for(ip("0.0.0.0"), None, &[]),
            ["localhost", "127.0.0.1", "::1"]
        );
    }

    #[test]
    fn a_fingerprint_must_be_a_sha256() {
        assert!(pinned_client_config(&"ab".repeat(32)).is_ok());
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            assert!(pinned_client_config(bad).is_err(), "{bad}");
        }
    }
}
