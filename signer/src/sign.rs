//! Signing files as a configuration says: the one entry point for `openwork-signer sign`
//! and `openwork-packager release --sign`.
//!
//! [`Signers::load`] reads every secret the configuration names, up front, so a release
//! fails (or, by policy, skips a platform with a warning) before it fetches or builds
//! anything. [`Signers::sign_file`] then picks by the file's own format: Authenticode for
//! PE, codesign for Mach-O, nothing for ELF (Linux has no platform signature to check;
//! SHA256SUMS covers it).

use std::path::{Path, PathBuf};

use openwork_payload::container::{self, ExecutableFormat};
use serde::Serialize;
use tracing::warn;
use zeroize::Zeroizing;

use crate::authenticode;
use crate::azure::{AzureCredential, AzureSettings, AzureSigner};
use crate::config::{
    AzureCredentialSource, AzureSource, GITHUB_OIDC_VARIABLES, KeySource, MissingSecretPolicy,
    ModulePath, Pkcs11Source, SigningConfig,
};
use crate::entitlements::{self, Role};
use crate::error::{ConfigError, CredentialsError, Error, Result, UnsupportedError};
use crate::external::ExternalSigner;
use crate::key::{self, SigningIdentity, pkcs11::Pkcs11Config};
use crate::macho::{self, MachOSignOptions};
use crate::notarize::NotaryCredentials;
use crate::secret::{Redactor, Secret, SecretRef};
use crate::timestamp::TimestampConfig;

/// The signers a configuration yields, secrets read.
pub struct Signers {
    authenticode: Option<Signer>,
    codesign: Option<Signer>,
    /// The sections skipped for missing secrets (`on-missing-secret = "skip"`).
    skipped: Vec<&'static str>,
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
    /// Azure Artifact Signing (Authenticode only; the configuration refuses it for
    /// codesign).
    Azure(Box<AzureSigner>),
}

/// One platform's key and what its signatures carry besides the file.
struct Signer {
    backend: Backend,
    settings: Settings,
}

enum Settings {
    Authenticode(authenticode::SignOptions),
    Codesign {
        hardened_runtime: bool,
        timestamp_url: Option<String>,
    },
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
    /// Why nothing was done, when nothing was, or what was changed besides the signature.
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
        let redactor = redactor(config)?;
        let mut load = |section: &'static str, source: &KeySource| {
            load_backend(section, source, config, &redactor, &mut skipped)
        };
        let authenticode = match &config.authenticode {
            Some(section) => load("authenticode", &section.key)?.map(|backend| Signer {
                backend,
                settings: Settings::Authenticode(authenticode::SignOptions {
                    description: section.description.clone(),
                    url: section.url.clone(),
                    timestamp: (!section.timestamp_urls.is_empty()).then(|| TimestampConfig {
                        urls: section.timestamp_urls.clone(),
                        attempts: section.timestamp_attempts,
                        timeout: section.timestamp_timeout,
                    }),
                }),
            }),
            None => None,
        };
        let codesign = match &config.codesign {
            Some(section) => load("codesign", &section.key)?.map(|backend| Signer {
                backend,
                settings: Settings::Codesign {
                    hardened_runtime: section.hardened_runtime,
                    timestamp_url: section.timestamp_url.clone(),
                },
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
        let mut data = fs_err::read(path)?;
        let format = container::identify(&data)
            .map_err(UnsupportedError::NotExecutable)?
            .format;
        let (action, signer) = match format {
            ExecutableFormat::Elf => {
                return Ok(outcome(
                    "not-applicable",
                    None,
                    Some("ELF has no platform signature; SHA256SUMS covers it"),
                ));
            }
            ExecutableFormat::Pe => ("authenticode", &self.authenticode),
            ExecutableFormat::MachO => ("codesign", &self.codesign),
        };
        let Some(signer) = signer else {
            return Ok(outcome("skipped", None, Some(self.why_not(action))));
        };
        // A Bun sidecar's stale tail (see `macho::stale_tail`) goes before any signer sees
        // the file: apple-codesign would drop it silently, codesign refuses the file.
        let mut note = None;
        if format == ExecutableFormat::MachO
            && role == Role::BunSidecar
            && let Some(stale) = macho::stale_tail(&data)?
        {
            warn!(
                "{file}: dropping {stale} stale bytes after the end of __LINKEDIT (left behind \
                 by bun build --compile after its signature) before re-signing"
            );
            data.truncate(data.len() - stale as usize);
            // An external command signs the file on disk; an identity signs `data` and
            // writes the result once, below.
            if matches!(signer.backend, Backend::External(_)) {
                write_in_place(path, &data)?;
            }
            note = Some(format!(
                "dropped {stale} stale bytes after __LINKEDIT before signing"
            ));
        }
        let who = match &signer.backend {
            Backend::External(command) => {
                command.sign_file(path)?;
                program_name(command)
            }
            Backend::Azure(azure) => {
                let Settings::Authenticode(options) = &signer.settings else {
                    return Err(ConfigError::AzureWindowsOnly.into());
                };
                write_in_place(
                    path,
                    &authenticode::sign_with(&data, azure.as_ref(), options)?,
                )?;
                azure.name()
            }
            Backend::Identity(identity) => {
                let signed = match &signer.settings {
                    Settings::Authenticode(options) => {
                        authenticode::sign(&data, identity, options)?
                    }
                    Settings::Codesign {
                        hardened_runtime,
                        timestamp_url,
                    } => {
                        let options = MachOSignOptions {
                            // The file name, as codesign does: sidecars keep their own names.
                            identifier: Some(file.clone()),
                            hardened_runtime: *hardened_runtime,
                            entitlements: entitlements::for_role(role).map(str::to_owned),
                            timestamp_url: timestamp_url.clone(),
                        };
                        macho::sign_with_identity(&data, identity, &options)?
                    }
                };
                write_in_place(path, &signed)?;
                identity.describe()
            }
        };
        Ok(outcome(action, Some(who), note.as_deref()))
    }

    fn why_not(&self, section: &'static str) -> &'static str {
        if self.skipped.contains(&section) {
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

/// A redactor that knows every secret of `config` that is there (the missing ones are the
/// missing-secret policy's business, and cannot leak).
pub fn redactor(config: &SigningConfig) -> Result<Redactor> {
    let mut redactor = Redactor::default();
    for reference in config.secret_references() {
        if let Ok(secret) = reference.resolve()? {
            redactor.add(&secret);
        }
    }
    Ok(redactor)
}

fn load_backend(
    section: &'static str,
    source: &KeySource,
    config: &SigningConfig,
    redactor: &Redactor,
    skipped: &mut Vec<&'static str>,
) -> Result<Option<Backend>> {
    let policy = config.on_missing_secret;
    let mut secrets = SectionSecrets::default();
    let mut need = |reference: &SecretRef| secrets.need(reference);
    let backend = match source {
        KeySource::Pkcs12 { file, password } => match (need(file)?, need(password)?) {
            (Some(file), Some(password)) => Some(Backend::Identity(Box::new(key::pkcs12::load(
                file.bytes(),
                password.text()?,
            )?))),
            _ => None,
        },
        KeySource::Pem { key, certificate } => match (need(key)?, need(certificate)?) {
            (Some(key), Some(certificate)) => Some(Backend::Identity(Box::new(key::pem::load(
                key.bytes(),
                certificate.bytes(),
            )?))),
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
        KeySource::Azure(a) => azure_backend(a, &mut need)?,
        KeySource::Command { argv, secrets } => {
            let mut present = true;
            for reference in secrets {
                present &= need(reference)?.is_some();
            }
            present.then(|| Backend::External(ExternalSigner::new(argv.clone(), redactor.clone())))
        }
    };
    if backend.is_none() {
        secrets.settle(section, policy)?;
        skipped.push(section);
    }
    Ok(backend)
}

fn azure_backend(
    a: &AzureSource,
    need: &mut impl FnMut(&SecretRef) -> Result<Option<Secret>>,
) -> Result<Option<Backend>> {
    let tenant = need(&a.tenant_id)?;
    let client = need(&a.client_id)?;
    let credential = match &a.credential {
        AzureCredentialSource::ClientSecret(r) => need(r)?.map(AzureCredential::ClientSecret),
        AzureCredentialSource::FederatedToken(r) => need(r)?.map(AzureCredential::FederatedToken),
        AzureCredentialSource::GitHubActions => {
            let [url, token] = GITHUB_OIDC_VARIABLES;
            let url = need(&SecretRef::Env(url.to_owned()))?;
            let token = need(&SecretRef::Env(token.to_owned()))?;
            match (url, token) {
                (Some(request_url), Some(request_token)) => Some(AzureCredential::GitHubActions {
                    request_url,
                    request_token,
                }),
                _ => None,
            }
        }
    };
    let (Some(tenant), Some(client), Some(credential)) = (tenant, client, credential) else {
        return Ok(None);
    };
    let settings = AzureSettings {
        endpoint: a.endpoint.clone(),
        account: a.account.clone(),
        profile: a.certificate_profile.clone(),
        authority: a.authority.clone(),
        timeout: a.timeout,
    };
    Ok(Some(Backend::Azure(Box::new(AzureSigner::connect(
        settings, tenant, client, credential,
    )?))))
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
        pin: Zeroizing::new(pin.text()?.to_owned()),
    };
    Ok(Backend::Identity(Box::new(key::pkcs11::load(
        &config,
        certificates,
    )?)))
}

/// The App Store Connect key of `config`'s `[notarize]` section, in memory; `None`
/// without the section, or when its secrets are missing and the policy is `skip`.
pub fn notary_key(config: &SigningConfig) -> Result<Option<NotaryCredentials>> {
    let Some(section) = &config.notarize else {
        return Ok(None);
    };
    let mut secrets = SectionSecrets::default();
    let (key_id, issuer, key) = (
        secrets.need(&section.key_id)?,
        secrets.need(&section.issuer)?,
        secrets.need(&section.key)?,
    );
    let (Some(key_id), Some(issuer), Some(private_key)) = (key_id, issuer, key) else {
        secrets.settle("notarize", config.on_missing_secret)?;
        return Ok(None);
    };
    Ok(Some(NotaryCredentials {
        key_id: Zeroizing::new(key_id.text()?.to_owned()),
        issuer_id: Zeroizing::new(issuer.text()?.to_owned()),
        private_key,
    }))
}

/// A section's secrets, read one by one: every reference is resolved before any secret is
/// used, so that the missing-secret policy sees (and names) all the missing ones at once.
#[derive(Default)]
struct SectionSecrets {
    missing: Vec<String>,
}

impl SectionSecrets {
    /// The secret, or `None` (noted) when it is not there.
    fn need(&mut self, reference: &SecretRef) -> Result<Option<Secret>> {
        Ok(match reference.resolve()? {
            Ok(secret) => Some(secret),
            Err(gone) => {
                self.missing.push(gone.to_string());
                None
            }
        })
    }

    /// Applies the missing-secret policy to what was missing: an error naming it, or a
    /// warning (and the caller goes on without the section).
    fn settle(self, section: &str, policy: MissingSecretPolicy) -> Result<()> {
        let what = format!("[{section}] {}", self.missing.join(", "));
        match policy {
            MissingSecretPolicy::Fail => Err(CredentialsError::SecretMissing {
                section: section.to_owned(),
                missing: self.missing.join(", "),
            }
            .into()),
            MissingSecretPolicy::Skip => {
                warn!("{what}: {section} skipped (on-missing-secret = \"skip\")");
                Ok(())
            }
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
