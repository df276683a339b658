//! The certificate a running server presents, replaceable without a restart: rustls asks
//! [`LiveCertificate`] for the certificate at every handshake, so after a renewal (or a
//! `tls rotate` the server picks up) new connections get the new one while open
//! connections keep theirs. Whoever shows the fingerprint (`GET /system/runtime`,
//! `server.json`, mDNS) reads it here or follows [`LiveCertificate::watch`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::CertSource;
use super::store::{self, Files, Followers, Pair};
use super::succession::Succession;
use super::validity::{Timings, Validity, Verdict};
use crate::error::{Error, Result};

/// The certificate a TLS server presents now. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct LiveCertificate {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Current>,
    fingerprint: watch::Sender<String>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    fingerprint: String,
    validity: Option<Validity>,
    succession: Arc<Succession>,
}

impl std::fmt::Debug for LiveCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCertificate")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl LiveCertificate {
    /// Serves `key` (whose leaf has `fingerprint`), with the statements that lead to it.
    pub(super) fn new(
        key: CertifiedKey,
        fingerprint: String,
        validity: Option<Validity>,
        succession: Succession,
    ) -> LiveCertificate {
        let (sender, _) = watch::channel(fingerprint.clone());
        LiveCertificate {
            inner: Arc::new(Inner {
                current: RwLock::new(Current {
                    key: Arc::new(key),
                    fingerprint,
                    validity,
                    succession: Arc::new(succession),
                }),
                fingerprint: sender,
            }),
        }
    }

    fn current(&self) -> Current {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SHA-256 of the certificate presented to new connections now (64 hex digits).
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint
    }

    /// The fingerprint, told again whenever the certificate is replaced: what the mDNS
    /// advertisement and `server.json` follow.
    pub fn watch(&self) -> watch::Receiver<String> {
        self.inner.fingerprint.subscribe()
    }

    /// The statements that lead from the certificate with `fingerprint` to the one
    /// presented now: empty when it is the one presented now, `None` when nothing leads
    /// from it.
    pub fn succession_from(&self, fingerprint: &str) -> Option<Succession> {
        let current = self.current();
        let path = current.succession.leading_from(fingerprint);
        if path.is_empty() && !fingerprint.eq_ignore_ascii_case(&current.fingerprint) {
            return None;
        }
        Some(Succession {
            statements: path,
            ..Succession::default()
        })
    }

    /// The resolver a rustls server configuration asks at every handshake.
    pub(super) fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }

    /// Presents `pair` from now on (to new connections).
    fn replace(&self, pair: &Pair, succession: Succession) -> std::result::Result<(), String> {
        let key = pair.certified()?;
        let fingerprint = pair.fingerprint()?;
        let validity = Validity::of(&key.cert[0]).ok();
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Current {
            key: Arc::new(key),
            fingerprint: fingerprint.clone(),
            validity,
            succession: Arc::new(succession),
        };
        self.inner.fingerprint.send_replace(fingerprint);
        Ok(())
    }
}

#[derive(Debug)]
struct Resolver(LiveCertificate);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }
}

/// What the log says about the user's certificate close to expiry (`when`: "expires on …").
pub(super) fn user_certificate_expiring(cert: &std::path::Path, when: &str) -> String {
    format!(
        "the TLS certificate {} {when}; replace it (--tls-cert, --tls-key) and restart the server",
        cert.display()
    )
}

/// What one check of the certificate found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Nothing to do.
    Current,
    /// The data dir holds another certificate than the one presented (`tls rotate` made
    /// it, or another server of this data dir renewed it): it is presented now.
    PickedUp {
        /// The fingerprint presented before.
        previous: String,
        /// The one presented now.
        fingerprint: String,
    },
    /// The generated certificate was renewed (and is presented now).
    Renewed {
        /// The fingerprint presented before.
        previous: String,
        /// The one presented now.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// The user's certificate (`--tls-cert`) expires soon or has expired; it is never
    /// replaced, the user is told.
    UserCertificateExpiring(String),
}

/// Checks the certificate once at `now` (blocking: it reads files, and a renewal makes a
/// key and writes files): for the data dir's, picks up a replacement made elsewhere and
/// renews one that [`Timings::verdict`] says to renew, announcing it with a statement; for
/// the user's, says when it is close to expiry.
pub fn check(
    live: &LiveCertificate,
    data_dir: &std::path::Path,
    source: &CertSource,
    names: &[String],
    timings: &Timings,
    now: SystemTime,
) -> Result<Checked> {
    let presented = live.current();
    if let CertSource::User { cert, .. } = source {
        return Ok(
            match presented.validity.and_then(|v| timings.expiring(&v, now)) {
                Some(when) => {
                    Checked::UserCertificateExpiring(user_certificate_expiring(cert, &when))
                }
                None => Checked::Current,
            },
        );
    }
    let unusable = |file: &std::path::Path, e: String| {
        Error::InsecureTransport(format!(
            "cannot use the TLS certificate in {}: {e}",
            file.display()
        ))
    };
    let files = Files::of(data_dir);
    let held = store::lock(&files)?;
    store::settle(&held, &files)?;
    if let Some(pair) = store::current(&files)? {
        let fingerprint = pair.fingerprint().map_err(|e| unusable(&files.cert, e))?;
        if fingerprint != presented.fingerprint {
            let succession = Succession::read(&files.succession)?;
            live.replace(&pair, succession)
                .map_err(|e| unusable(&files.cert, e))?;
            return Ok(Checked::PickedUp {
                previous: presented.fingerprint,
                fingerprint,
            });
        }
    }
    let reason = match presented.validity {
        None => "its validity cannot be read".to_string(),
        Some(validity) => match timings.verdict(&validity, now) {
            Verdict::Keep => return Ok(Checked::Current),
            Verdict::Renew(reason) => reason,
        },
    };
    let replaced = store::replace(
        &held,
        &files,
        names,
        now,
        timings.lifetime,
        Followers::Announce,
    )?;
    live.replace(&replaced.pair, replaced.succession)
        .map_err(|e| unusable(&files.cert, e))?;
    Ok(Checked::Renewed {
        previous: presented.fingerprint,
        fingerprint: replaced.fingerprint,
        reason,
    })
}

/// Checks the certificate every [`Timings::check_every`] while the server runs (the start
/// checked it already), and logs what happened: a renewal or a pick-up at info level, a
/// user's certificate close to expiry as a warning at most once a day, a failure (the
/// certificate keeps being presented) as a warning each time it changes.
pub async fn keep_current(
    live: LiveCertificate,
    data_dir: PathBuf,
    source: CertSource,
    names: Vec<String>,
    timings: Timings,
) {
    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
    let mut every = tokio::time::interval(timings.check_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut last_failure: Option<String> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        every.tick().await;
        let checked = {
            let (live, data_dir, source, names) = (
                live.clone(),
                data_dir.clone(),
                source.clone(),
                names.clone(),
            );
            tokio::task::spawn_blocking(move || {
                check(
                    &live,
                    &data_dir,
                    &source,
                    &names,
                    &timings,
                    SystemTime::now(),
                )
            })
            .await
        };
        match checked {
            Ok(Ok(checked)) => {
                last_failure = None;
                match checked {
                    Checked::Current => {}
                    Checked::PickedUp {
                        previous,
                        fingerprint,
                    } => tracing::info!(
                        %previous,
                        %fingerprint,
                        "presenting the TLS certificate the data dir holds now (made by `tls rotate`, or renewed by another server of this data dir)"
                    ),
                    Checked::Renewed {
                        previous,
                        fingerprint,
                        reason,
                    } => tracing::info!(
                        %previous,
                        %fingerprint,
                        "renewed the TLS certificate ({reason}); paired devices follow the signed statement"
                    ),
                    Checked::UserCertificateExpiring(message) => {
                        if last_warning.is_none_or(|at| at.elapsed() >= DAY) {
                            tracing::warn!("{message}");
                            last_warning = Some(Instant::now());
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                if last_failure.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "could not check or renew the TLS certificate; the current one is still presented");
                    last_failure = Some(message);
                }
            }
            Err(e) => tracing::warn!(error = %e, "the TLS certificate check stopped"),
        }
    }
}
