//! The generated certificate in `<data dir>/tls/`, and replacing it without ever leaving a
//! key that is not its certificate's.
//!
//! ```text
//! tls/cert.pem          the certificate (what `curl --cacert` is given)
//! tls/key.pem           its key (0600)
//! tls/succession.json   signed statements from replaced certificates (see `succession`)
//! tls/next.json         a replacement that is decided but not yet in place (a crash left it)
//! tls/.lock             held while the pair is read for a change or replaced
//! ```
//!
//! A replacement (renewal, `tls rotate`) runs under the lock in this order: make the new
//! pair; sign and write the statement (with the old key, which is still in place); write
//! `next.json` holding the new key and certificate — the moment the replacement happens;
//! then write `key.pem`, `cert.pem` and remove `next.json`. Two files cannot be renamed at
//! once, so `next.json` is what makes the switch atomic: a crash before it leaves the old
//! pair (and perhaps a statement naming a certificate never served, which the next
//! replacement's statement supersedes); a crash after it is finished by whoever takes the
//! lock next ([`settle`]), and readers take `next.json` as the current pair meanwhile.
//! Every file is written through an exclusive temp file and a rename (0600), and read only
//! when it is ours and not a link (exit 15 otherwise).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use super::succession::{Statement, Succession};
use super::validity::Validity;
use crate::error::{Error, Result};
use crate::lock::{self, ExclusiveLock};
use crate::{layout, trust};

/// How long a replacement waits for another process's (which takes milliseconds).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of `<data dir>/tls/`.
#[derive(Debug, Clone)]
pub struct Files {
    /// `tls/`.
    pub dir: PathBuf,
    /// `cert.pem`.
    pub cert: PathBuf,
    /// `key.pem`.
    pub key: PathBuf,
    /// `succession.json`.
    pub succession: PathBuf,
    /// `next.json`.
    pub next: PathBuf,
    /// `.lock`.
    pub lock: PathBuf,
}

impl Files {
    /// The files of `data_dir`'s `tls/`.
    pub fn of(data_dir: &Path) -> Files {
        let dir = data_dir.join(layout::TLS_DIR);
        Files {
            cert: dir.join(layout::TLS_CERT_FILE),
            key: dir.join(layout::TLS_KEY_FILE),
            succession: dir.join(layout::TLS_SUCCESSION_FILE),
            next: dir.join(layout::TLS_NEXT_FILE),
            lock: dir.join(layout::TLS_LOCK_FILE),
            dir,
        }
    }
}

/// A certificate (PEM, leaf first) and its key (PEM).
#[derive(Clone, Serialize, Deserialize)]
pub struct Pair {
    /// The certificate chain, PEM.
    pub certificate: String,
    /// The private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pair")
            .field("fingerprint", &self.fingerprint().ok())
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// The leaf certificate (DER).
    pub fn leaf(&self) -> std::result::Result<CertificateDer<'static>, String> {
        CertificateDer::pem_slice_iter(self.certificate.as_bytes())
            .next()
            .ok_or_else(|| "no CERTIFICATE block".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The leaf's SHA-256, as clients pin it.
    pub fn fingerprint(&self) -> std::result::Result<String, String> {
        self.leaf().map(|leaf| super::fingerprint(&leaf))
    }

    /// The pair as rustls serves it; fails when the key is not the certificate's.
    pub fn certified(&self) -> std::result::Result<CertifiedKey, String> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.certificate.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("certificate: {e}"))?;
        if certs.is_empty() {
            return Err("certificate: no CERTIFICATE block".into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| format!("key: {e}"))?;
        CertifiedKey::from_der(certs, key, &super::provider())
            .map_err(|e| format!("certificate and key: {e}"))
    }
}

/// A new self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses),
/// valid for `validity`.
pub fn generate(names: &[String], validity: Validity) -> Result<Pair> {
    let failed =
        |e: rcgen::Error| Error::InsecureTransport(format!("cannot make a TLS certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "openwork-server-v2");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset_date_time(validity.not_before)?;
    params.not_after = offset_date_time(validity.not_after)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(Pair {
        certificate: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn offset_date_time(at: SystemTime) -> Result<time::OffsetDateTime> {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| {
        Error::InsecureTransport(format!(
            "cannot make a TLS certificate valid until {secs} s after 1970: {e}"
        ))
    })
}

/// Takes `tls/.lock` (making `tls/` 0700 if needed): held while the pair is replaced, or read
/// by a process that may replace it.
pub fn lock(files: &Files) -> Result<ExclusiveLock> {
    trust::create_private_dir(&files.dir)
        .map_err(|e| Error::io(format!("create {}", files.dir.display()), e))?;
    trust::check_path(&files.dir, "the TLS directory", true, trust::DATA_DIR_FIX)?;
    lock::lock_exclusive(
        &files.lock,
        LOCK_TIMEOUT,
        "to finish replacing the TLS certificate",
    )
}

/// The pair in place, or decided (`next.json`); `None` when there is none yet. Half a pair
/// is an error that says how to start over.
pub fn current(files: &Files) -> Result<Option<Pair>> {
    if let Some(next) = read(&files.next, "the TLS certificate being put in place")? {
        let pair: Pair = serde_json::from_slice(&next).map_err(|e| {
            Error::InsecureTransport(format!(
                "{} is not readable ({e}); remove it, or run `openwork-server-v2 tls rotate --forget` (paired devices must pair again)",
                files.next.display()
            ))
        })?;
        return Ok(Some(pair));
    }
    let cert = read(&files.cert, "the TLS certificate")?;
    let key = read(&files.key, "the TLS key")?;
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(Pair {
            certificate: String::from_utf8_lossy(&cert).into_owned(),
            key: String::from_utf8_lossy(&key).into_owned(),
        })),
        _ => Err(Error::InsecureTransport(format!(
            "{} holds a certificate or a key but not both; run `openwork-server-v2 tls rotate --forget` to make a new pair (paired devices must pair again)",
            files.dir.display()
        ))),
    }
}

/// Finishes a replacement a crash interrupted: `next.json` into `key.pem` and `cert.pem`.
/// The caller holds the lock.
pub fn settle(_held: &ExclusiveLock, files: &Files) -> Result<()> {
    let Some(bytes) = read(&files.next, "the TLS certificate being put in place")? else {
        return Ok(());
    };
    let pair: Pair = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InsecureTransport(format!(
            "{} is not readable ({e}); remove it, or run `openwork-server-v2 tls rotate --forget`",
            files.next.display()
        ))
    })?;
    put_in_place(files, &pair)
}

fn put_in_place(files: &Files, pair: &Pair) -> Result<()> {
    let write = |path: &Path, text: &str| {
        trust::write_private_atomic(path, text.as_bytes())
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    };
    write(&files.key, &pair.key)?;
    write(&files.cert, &pair.certificate)?;
    match std::fs::remove_file(&files.next) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", files.next.display()), e))
        }
        _ => Ok(()),
    }
}

/// What paired devices get when the certificate is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followers {
    /// A statement signed by the old key: devices that pinned it follow.
    Announce,
    /// Nothing, and the statements kept so far are dropped: every device pairs again (for
    /// a key that may have been stolen).
    Forget,
}

/// A replacement that happened.
#[derive(Debug)]
pub struct Replaced {
    /// The new pair, in place.
    pub pair: Pair,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The fingerprint of the pair it replaced, if there was one.
    pub previous: Option<String>,
    /// Whether a statement leads from the previous certificate to this one.
    pub announced: bool,
    /// The statements kept now.
    pub succession: Succession,
}

/// Replaces the pair (or makes the first) for `names`, valid from `now` for `lifetime`;
/// with [`Followers::Announce`], the old key signs a statement naming the new certificate.
/// The caller holds the lock.
pub fn replace(
    held: &ExclusiveLock,
    files: &Files,
    names: &[String],
    now: SystemTime,
    lifetime: Duration,
    followers: Followers,
) -> Result<Replaced> {
    settle(held, files)?;
    let old = match followers {
        Followers::Announce => current(files)?,
        // A pair that cannot even be read is what --forget is for.
        Followers::Forget => current(files).ok().flatten(),
    };
    let pair = generate(names, Validity::starting(now, lifetime))?;
    let fingerprint = pair.fingerprint().map_err(Error::InsecureTransport)?;
    let previous = old.as_ref().and_then(|old| old.fingerprint().ok());
    let mut succession = match followers {
        Followers::Announce => Succession::read(&files.succession)?,
        Followers::Forget => Succession::default(),
    };
    let announced = match (&old, followers) {
        (Some(old), Followers::Announce) => {
            let cannot_sign = |e: String| {
                Error::InsecureTransport(format!(
                    "cannot sign the statement that leads paired devices to the new certificate with the old key ({e}); run `openwork-server-v2 tls rotate --forget` instead (paired devices must pair again)"
                ))
            };
            let certified = old.certified().map_err(cannot_sign)?;
            let issued_ms = now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let statement = Statement::sign(
                certified.cert[0].as_ref(),
                certified.key.as_ref(),
                &fingerprint,
                issued_ms,
            )
            .map_err(cannot_sign)?;
            succession.push(statement);
            true
        }
        _ => false,
    };
    succession
        .write(&files.succession)
        .map_err(|e| Error::io(format!("write {}", files.succession.display()), e))?;
    // The switch.
    let next =
        serde_json::to_vec(&pair).map_err(|e| Error::io("encode", std::io::Error::other(e)))?;
    trust::write_private_atomic(&files.next, &next)
        .map_err(|e| Error::io(format!("write {}", files.next.display()), e))?;
    put_in_place(files, &pair)?;
    Ok(Replaced {
        pair,
        fingerprint,
        previous,
        announced,
        succession,
    })
}

/// Reads a file of `tls/`: not through a link, and only when ours and not writable by
/// others (exit 15 otherwise); `None` when there is none.
fn read(path: &Path, what: &str) -> Result<Option<Vec<u8>>> {
    let Some(mut file) = trust::open_trusted(path, what)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    fn names() -> Vec<String> {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn a_replacement_announces_the_new_certificate_with_the_old_key_and_forget_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::of(dir.path());
        let held = lock(&files).unwrap();
        let now = SystemTime::now();
        let first = replace(&held, &files, &names(), now, YEAR, Followers::Announce).unwrap();
        assert_eq!(first.previous, None);
        assert!(!first.announced, "nothing to announce from");
        let second = replace(&held, &files, &names(), now, YEAR, Followers::Announce).unwrap();
        assert_eq!(second.previous.as_deref(), Some(first.fingerprint.as_str()));
        assert!(second.announced);
        let kept = Succession::read(&files.succession).unwrap();
        assert_eq!(kept, second.succession);
        let presented = second.pair.leaf().unwrap();
        assert_eq!(
            super::super::succession::verify(&first.fingerprint, &presented, &kept),
            Ok(second.fingerprint.clone())
        );
        assert_eq!(
            current(&files).unwrap().unwrap().fingerprint().unwrap(),
            second.fingerprint
        );
        assert!(!files.next.exists());

        let third = replace(&held, &files, &names(), now, YEAR, Followers::Forget).unwrap();
        assert!(!third.announced);
        let kept = Succession::read(&files.succession).unwrap();
        assert!(kept.statements.is_empty(), "forgotten: {kept:?}");
        assert!(
            super::super::succession::verify(
                &second.fingerprint,
                &third.pair.leaf().unwrap(),
                &kept
            )
            .is_err()
        );
    }

    #[test]
    fn a_replacement_interrupted_after_its_decision_is_finished_by_the_next_lock_holder() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::of(dir.path());
        let held = lock(&files).unwrap();
        let now = SystemTime::now();
        let old = replace(&held, &files, &names(), now, YEAR, Followers::Announce).unwrap();
        // A crash right after next.json was written: key.pem and cert.pem are the old pair.
        let decided = generate(&names(), Validity::starting(now, YEAR)).unwrap();
        trust::write_private_atomic(&files.next, &serde_json::to_vec(&decided).unwrap()).unwrap();
        // Readers already see the decided pair; the key never mismatches the certificate.
        let seen = current(&files).unwrap().unwrap();
        assert_eq!(seen.fingerprint(), decided.fingerprint());
        assert!(seen.certified().is_ok());
        let on_disk = std::fs::read_to_string(&files.cert).unwrap();
        assert_eq!(on_disk, old.pair.certificate, "not in place yet");
        settle(&held, &files).unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.cert).unwrap(),
            decided.certificate
        );
        assert_eq!(std::fs::read_to_string(&files.key).unwrap(), decided.key);
        assert!(!files.next.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [&files.key, &files.cert, &files.succession] {
                let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", file.display());
            }
        }
    }

    #[test]
    fn a_generated_certificate_is_valid_for_the_policys_span() {
        let now = SystemTime::now();
        let pair = generate(&names(), Validity::starting(now, YEAR)).unwrap();
        let validity = Validity::of(&pair.leaf().unwrap()).unwrap();
        let secs = |at: SystemTime| at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            secs(validity.not_before),
            secs(now) - super::super::validity::BACKDATE.as_secs()
        );
        assert_eq!(secs(validity.not_after), secs(now) + YEAR.as_secs());
    }
}
