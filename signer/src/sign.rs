//! Signing files as a configuration says: the one entry point for `openwork-signer sign`
//! and `openwork-packager release --sign`.
//!
//! [`Signers::load`] reads every secret the configuration names, up front, so a release
//! fails (or, by policy, skips a platform with a warning) before it fetches or builds
//! anything. [`Signers::sign_file`] then picks by the file's own format: Authenticode for
//! PE, codesign for Mach-O, nothing for ELF (Linux has no platform signature to check;
//! SHA256SUMS covers it).

use std::path::{Path, PathBuf};

use openwork_payload::container::ExecutableFormat;
use serde::Serialize;
use tracing::warn;

use crate::authenticode;
use crate::config::{KeySource, MissingSecretPolicy, ModulePath, Pkcs11Source, SigningConfig};
use crate::entitlements::{self, Role};
use crate::error::{Error, Result};
use crate::external::ExternalSigner;
use crate::identify::identify;
use crate::key::{self, SigningIdentity, pkcs11::Pkcs11Config};
use crate::macho::{self, MachOSignOptions};
use crate::notarize::AppStoreConnectKey;
use crate::secret::{Secret, SecretRef};
use crate::timestamp::TimestampConfig;

/// The signers a configuration yields, secrets read.
pub struct Signers {
    authenticode: Option<(Backend, authenticode::SignOptions)>,
    codesign: Option<(Backend, MachOSettings)>,
    /// What was skipped for missing secrets (warnings, also in reports).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers")
            .field("authenticode", &self.authenticode.is_some())
            .field("codesign", &self.codesign.is_some())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// How a key signs: in process with a key we hold (file or token), or by a command.
enum Backend {
    Identity(Box<SigningIdentity>),
    External(ExternalSigner),
}

struct MachOSettings {
    hardened_runtime: bool,
    timestamp_url: Option<String>,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignOutcome {
    /// The file's name (no directories: reports must not carry build-machine paths).
    pub file: String,
    /// `authenticode`, `codesign`, `skipped` or `not-applicable`.
    pub action: &'static str,
    /// Who signed: the certificate's subject, or the command's program name.
    pub signer: Option<String>,
    /// Why nothing was done, when nothing was.
    pub note: Option<String>,
}

impl SignOutcome {
    /// Whether the file now carries a signature made here.
    pub fn is_signed(&self) -> bool {
        matches!(self.action, "authenticode" | "codesign")
    }
}

impl Signers {
    /// Reads every secret `config` references and loads the keys. A missing secret fails
    /// with exit 14, or skips that platform when the policy is `skip`; a secret that is
    /// there but wrong (bad password, wrong key) always fails.
    pub fn load(config: &SigningConfig) -> Result<Self> {
        let mut skipped = Vec::new();
        let mut load = |section: &str, source: &KeySource| {
            load_backend(section, source, config.on_missing_secret, &mut skipped)
        };
        let authenticode = match &config.authenticode {
            Some(section) => load("authenticode", &section.key)?.map(|backend| {
                let options = authenticode::SignOptions {
                    description: section.description.clone(),
                    url: section.url.clone(),
                    timestamp: (!section.timestamp_urls.is_empty()).then(|| TimestampConfig {
                        urls: section.timestamp_urls.clone(),
                        attempts: section.timestamp_attempts,
                        timeout: section.timestamp_timeout,
                    }),
                };
                (backend, options)
            }),
            None => None,
        };
        let codesign = match &config.codesign {
            Some(section) => load("codesign", &section.key)?.map(|backend| {
                let settings = MachOSettings {
                    hardened_runtime: section.hardened_runtime,
                    timestamp_url: section.timestamp_url.clone(),
                };
                (backend, settings)
            }),
            None => None,
        };
        Ok(Self {
            authenticode,
            codesign,
            skipped,
        })
    }

    /// Signs `path` in place for its `role`, by its format.
    pub fn sign_file(&self, path: &Path, role: Role) -> Result<SignOutcome> {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let outcome = |action, signer, note: Option<&str>| SignOutcome {
            file: file.clone(),
            action,
            signer,
            note: note.map(str::to_owned),
        };
        let data = fs_err::read(path)?;
        let format = identify(&data)?.format;
        let (action, backend) = match format {
            ExecutableFormat::Elf => {
                return Ok(outcome(
                    "not-applicable",
                    None,
                    Some("ELF has no platform signature; SHA256SUMS covers it"),
                ));
            }
            ExecutableFormat::Pe => ("authenticode", self.authenticode.as_ref().map(|(b, _)| b)),
            ExecutableFormat::MachO => ("codesign", self.codesign.as_ref().map(|(b, _)| b)),
        };
        let signer = match backend {
            None => return Ok(outcome("skipped", None, Some(self.why_not(action)))),
            Some(Backend::External(command)) => {
                command.sign_file(path)?;
                program_name(command)
            }
            Some(Backend::Identity(identity)) => {
                let signed = match (&self.authenticode, &self.codesign, format) {
                    (Some((_, options)), _, ExecutableFormat::Pe) => {
                        authenticode::sign(&data, identity, options)?
                    }
                    (_, Some((_, settings)), ExecutableFormat::MachO) => {
                        let options = MachOSignOptions {
                            // The file name, as codesign does: sidecars keep their own names.
                            identifier: Some(file.clone()),
                            hardened_runtime: settings.hardened_runtime,
                            entitlements: entitlements::for_role(role).map(str::to_owned),
                            timestamp_url: settings.timestamp_url.clone(),
                        };
                        macho::sign_with_identity(&data, identity, &options)?
                    }
                    _ => unreachable!("a backend comes with its section's settings"),
                };
                write_in_place(path, &signed)?;
                identity.describe()
            }
        };
        Ok(outcome(action, Some(signer), None))
    }

    fn why_not(&self, section: &str) -> &'static str {
        if self
            .skipped
            .iter()
            .any(|s| s.starts_with(&format!("[{section}]")))
        {
            "its secrets are missing and on-missing-secret = \"skip\""
        } else {
            "the signing configuration has no section for this format"
        }
    }
}

/// The external signer's program name (no directories, no arguments: arguments may carry
/// secrets).
fn program_name(command: &ExternalSigner) -> String {
    command
        .command
        .first()
        .map(|program| {
            std::path::Path::new(program).file_name().map_or_else(
                || program.clone(),
                |name| name.to_string_lossy().into_owned(),
            )
        })
        .unwrap_or_default()
}

fn load_backend(
    section: &str,
    source: &KeySource,
    policy: MissingSecretPolicy,
    skipped: &mut Vec<String>,
) -> Result<Option<Backend>> {
    // Every secret of the section is resolved before any is used, so a skip names all of
    // the missing ones at once.
    let mut missing = Vec::new();
    let mut need = |reference: &SecretRef| -> Result<Option<Secret>> {
        Ok(match reference.resolve()? {
            Ok(secret) => Some(secret),
            Err(gone) => {
                missing.push(gone.to_string());
                None
            }
        })
    };
    let backend =
        match source {
            KeySource::Pkcs12 { file, password } => match (need(file)?, need(password)?) {
                (Some(file), Some(password)) => Some(Backend::Identity(Box::new(
                    key::pkcs12::load(file.bytes(), password.text()?)?,
                ))),
                _ => None,
            },
            KeySource::Pem { key, certificate } => match (need(key)?, need(certificate)?) {
                (Some(key), Some(certificate)) => Some(Backend::Identity(Box::new(
                    key::pem::load(key.bytes(), certificate.bytes())?,
                ))),
                _ => None,
            },
            KeySource::Pkcs11(p) => {
                let module = match &p.module {
                    ModulePath::Path(path) => Some(path.clone()),
                    ModulePath::Env(name) => need(&SecretRef::Env(name.clone()))?
                        .map(|path| path.text().map(PathBuf::from))
                        .transpose()?,
                };
                let pin = need(&p.pin)?;
                // None: the token holds the certificate; Some(None): its file is missing.
                let certificate = p.certificate.as_ref().map(&mut need).transpose()?;
                match (module, pin, certificate) {
                    (Some(module), Some(pin), None) => Some(pkcs11_backend(p, module, &pin, None)?),
                    (Some(module), Some(pin), Some(Some(certificate))) => {
                        Some(pkcs11_backend(p, module, &pin, Some(&certificate))?)
                    }
                    _ => None,
                }
            }
            KeySource::Command(argv) => Some(Backend::External(ExternalSigner {
                command: argv.clone(),
            })),
        };
    if backend.is_none() {
        missing_secrets(section, &missing, policy, skipped)?;
    }
    Ok(backend)
}

fn pkcs11_backend(
    source: &Pkcs11Source,
    module: PathBuf,
    pin: &Secret,
    certificate: Option<&Secret>,
) -> Result<Backend> {
    let certificates = certificate
        .map(|c| key::pem::parse_certificates(c.bytes()))
        .transpose()?;
    let config = Pkcs11Config {
        module,
        token_label: source.token_label.clone(),
        slot: source.slot,
        key_label: source.key_label.clone(),
        key_id: source.key_id.clone(),
        pin: pin.text()?.to_owned(),
    };
    Ok(Backend::Identity(Box::new(key::pkcs11::load(
        &config,
        certificates,
    )?)))
}

/// The App Store Connect key of `config`'s `[notarize]` section, its `.p8` written into
/// `dir` (owner-only) for notarytool; `None` without the section, or when its secrets are
/// missing and the policy is `skip`.
pub fn notary_key(config: &SigningConfig, dir: &Path) -> Result<Option<AppStoreConnectKey>> {
    let Some(section) = &config.notarize else {
        return Ok(None);
    };
    let mut missing = Vec::new();
    let mut need = |reference: &SecretRef| -> Result<Option<Secret>> {
        Ok(match reference.resolve()? {
            Ok(secret) => Some(secret),
            Err(gone) => {
                missing.push(gone.to_string());
                None
            }
        })
    };
    let (key_id, issuer, key) = (
        need(&section.key_id)?,
        need(&section.issuer)?,
        need(&section.key)?,
    );
    let (Some(key_id), Some(issuer), Some(key)) = (key_id, issuer, key) else {
        let mut skipped = Vec::new();
        missing_secrets("notarize", &missing, config.on_missing_secret, &mut skipped)?;
        return Ok(None);
    };
    let path = dir.join("AuthKey.p8");
    let mut file = fs_err::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(file.options_mut(), 0o600);
    std::io::Write::write_all(&mut file.open(&path)?, key.bytes())?;
    Ok(Some(AppStoreConnectKey {
        key_id: key_id.text()?.to_owned(),
        issuer_id: issuer.text()?.to_owned(),
        private_key_p8_path: path,
    }))
}

/// Applies the missing-secret policy: an error naming what is missing, or a warning and a
/// note in `skipped`.
fn missing_secrets(
    section: &str,
    missing: &[String],
    policy: MissingSecretPolicy,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let what = format!("[{section}] {}", missing.join(", "));
    match policy {
        MissingSecretPolicy::Fail => Err(Error::Credentials(format!(
            "{what}; provide it, or set on-missing-secret = \"skip\" to go on without \
             {section}"
        ))),
        MissingSecretPolicy::Skip => {
            warn!("{what}: {section} skipped (on-missing-secret = \"skip\")");
            skipped.push(what);
            Ok(())
        }
    }
}

/// Replaces `path`'s contents through a temp file and a rename, keeping its permissions:
/// a crash leaves the old file or the new one, never half of each.
fn write_in_place(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let permissions = fs_err::metadata(path)?.permissions();
    let mut temp = tempfile::Builder::new()
        .prefix(".signing-")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut temp, data)?;
    temp.as_file().sync_all()?;
    fs_err::set_permissions(temp.path(), permissions)?;
    temp.persist(path).map_err(|e| Error::Io(e.error))?;
    Ok(())
}
