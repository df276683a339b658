//! The update channel's keys: a TOML file, apart from the code-signing configuration, that
//! names each role's keys through the key sources release engineers already use.
//!
//! ```toml
//! [root]                                 # offline: only `init` and `rotate-root` read it
//! keys = [{ key = "file:root-1.pem" }, { key = "file:root-2.pem" }]
//! threshold = 2
//! expires-days = 365
//!
//! [targets]                              # the release job
//! keys = [{ pkcs11 = { module = "env:PKCS11_MODULE", token-label = "release",
//!                      key-label = "update-targets", pin = "env:UPDATE_HSM_PIN" } }]
//! expires-days = 180
//!
//! [snapshot]
//! keys = [{ key = "env:UPDATE_SNAPSHOT_KEY" }]
//!
//! [timestamp]                            # online: re-signed on a schedule
//! keys = [{ command = ["gcloud", "kms", "asymmetric-sign", "…", "--input-file={file}",
//!                      "--signature-file={out}"], public-key = "file:timestamp.pub.pem" }]
//! expires-days = 2
//! ```
//!
//! A key is ECDSA P-256 from one source: `key = <secret ref>` (a PEM or DER private key:
//! PKCS#8 or SEC1, read by the signer's PEM reader), `pkcs11 = { … }` (the signer's
//! PKCS#11 key source; the public key comes from the token), or `command = [argv]` with
//! `public-key = <ref>` (any signing tool or cloud KMS client: it reads the message from
//! `{file}` and writes the DER signature to `{out}`; no shell; `command-secrets` as in the
//! signing configuration). Secret references are the signer's (`env:`, `file:`,
//! `base64:`). A missing secret is always an error (exit 14): there is no "skip", since
//! metadata that is not signed is never published.
//!
//! Only the roles a command signs are loaded: `publish` never needs the root keys, so they
//! can stay offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openwork_signer::config::ModulePath;
use openwork_signer::key::pkcs11::Pkcs11Config;
use openwork_signer::secret::{Redactor, Secret, SecretRef};
use openwork_update_format::key::{InMemoryKey, PublicKey, SignError, Signer};
use openwork_update_format::metadata::Role;
use serde::Deserialize;
use x509_certificate::{EcdsaCurve, KeyAlgorithm, KeyInfoSigner};

use super::UpdateError;

/// Default expiry per role, in days. The timestamp's is short: a mirror that stops being
/// re-signed is noticed within it (a freeze attack lasts at most that long).
pub fn default_expiry_days(role: Role) -> u32 {
    match role {
        Role::Root => 365,
        Role::Targets | Role::Snapshot => 180,
        Role::Timestamp => 2,
    }
}

/// The parsed file; no secret read yet.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Where it came from, for messages.
    pub path: PathBuf,
    roles: BTreeMap<Role, RoleConfig>,
}

/// One role's keys, threshold and expiry.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// Its key sources.
    pub keys: Vec<KeySource>,
    /// How many must sign.
    pub threshold: u64,
    /// How long what it signs stays valid.
    pub expires_days: u32,
}

/// Where one key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A private key file or variable.
    Pem(SecretRef),
    /// A key on a PKCS#11 token.
    Pkcs11 {
        /// The module.
        module: ModulePath,
        /// The token's label.
        token_label: Option<String>,
        /// The slot.
        slot: Option<u64>,
        /// The key's label.
        key_label: Option<String>,
        /// The key's ID (hex in the file).
        key_id: Option<Vec<u8>>,
        /// The PIN.
        pin: SecretRef,
    },
    /// An external command.
    Command {
        /// argv with `{file}` and `{out}`.
        argv: Vec<String>,
        /// The secrets it reads from its environment (present, and redacted from its output).
        secrets: Vec<SecretRef>,
        /// Its public key (PEM).
        public_key: SecretRef,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    root: Option<RawRole>,
    targets: Option<RawRole>,
    snapshot: Option<RawRole>,
    timestamp: Option<RawRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRole {
    keys: Vec<RawKey>,
    threshold: Option<u64>,
    expires_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKey {
    key: Option<String>,
    pkcs11: Option<RawPkcs11>,
    command: Option<Vec<String>>,
    command_secrets: Option<Vec<String>>,
    public_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPkcs11 {
    module: String,
    token_label: Option<String>,
    slot: Option<u64>,
    key_label: Option<String>,
    key_id: Option<String>,
    pin: String,
}

impl KeysConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, UpdateError> {
        let text = fs_err::read_to_string(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses the text; relative references against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, UpdateError> {
        let bad = |reason: String| UpdateError::Config {
            path: path.to_owned(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut roles = BTreeMap::new();
        for (role, raw) in [
            (Role::Root, raw.root),
            (Role::Targets, raw.targets),
            (Role::Snapshot, raw.snapshot),
            (Role::Timestamp, raw.timestamp),
        ] {
            let Some(raw) = raw else { continue };
            let keys = raw
                .keys
                .into_iter()
                .map(|k| key_source(k, base).map_err(|r| bad(format!("[{role}] {r}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let threshold = raw.threshold.unwrap_or(1);
            if threshold == 0 || threshold > keys.len() as u64 {
                return Err(bad(format!(
                    "[{role}] threshold {threshold} with {} key(s): it must be between 1 and \
                     the number of keys",
                    keys.len()
                )));
            }
            let expires_days = raw.expires_days.unwrap_or(default_expiry_days(role));
            if expires_days == 0 {
                return Err(bad(format!("[{role}] expires-days must be at least 1")));
            }
            roles.insert(
                role,
                RoleConfig {
                    keys,
                    threshold,
                    expires_days,
                },
            );
        }
        Ok(Self {
            path: path.to_owned(),
            roles,
        })
    }

    /// The role's section, or an error naming the file and the role.
    pub fn role(&self, role: Role) -> Result<&RoleConfig, UpdateError> {
        self.roles.get(&role).ok_or_else(|| UpdateError::Config {
            path: self.path.clone(),
            reason: format!("it has no [{role}] section, which this command signs with"),
        })
    }

    /// Loads the role's keys (reads their secrets, logs in to tokens).
    pub fn signers(&self, role: Role) -> Result<Vec<Box<dyn Signer>>, UpdateError> {
        self.role(role)?
            .keys
            .iter()
            .map(|source| load(source, role))
            .collect()
    }
}

fn key_source(raw: RawKey, base: &Path) -> Result<KeySource, String> {
    let secret = |text: &str| SecretRef::parse(text, base).map_err(|e| e.to_string());
    let given = [
        raw.key.is_some(),
        raw.pkcs11.is_some(),
        raw.command.is_some(),
    ]
    .into_iter()
    .filter(|g| *g)
    .count();
    if given != 1 {
        return Err(format!(
            "a key needs exactly one of key = \"file:…\", pkcs11 = {{ … }} or command = [...]; \
             this one gives {given}"
        ));
    }
    if raw.command.is_none() && (raw.public_key.is_some() || raw.command_secrets.is_some()) {
        return Err("public-key and command-secrets belong with command only".into());
    }
    if let Some(key) = raw.key {
        return Ok(KeySource::Pem(secret(&key)?));
    }
    if let Some(p) = raw.pkcs11 {
        if p.key_label.is_none() && p.key_id.is_none() {
            return Err("pkcs11 needs key-label or key-id to find the key".into());
        }
        let key_id = p
            .key_id
            .map(|id| hex::decode(id.trim_start_matches("0x")))
            .transpose()
            .map_err(|_| "pkcs11 key-id must be hex".to_owned())?;
        let module = match p.module.strip_prefix("env:") {
            Some(name) => ModulePath::Env(name.to_owned()),
            None => ModulePath::Path(base.join(&p.module)),
        };
        return Ok(KeySource::Pkcs11 {
            module,
            token_label: p.token_label,
            slot: p.slot,
            key_label: p.key_label,
            key_id,
            pin: secret(&p.pin)?,
        });
    }
    let argv = raw.command.unwrap_or_default();
    if !argv.iter().any(|a| a.contains("{file}")) || !argv.iter().any(|a| a.contains("{out}")) {
        return Err(
            "command must name the message as \"{file}\" and the signature it writes as \
             \"{out}\", e.g. [\"openssl\", \"dgst\", \"-sha256\", \"-sign\", \"key.pem\", \
             \"-out\", \"{out}\", \"{file}\"]"
                .into(),
        );
    }
    let public_key = raw
        .public_key
        .ok_or("command needs public-key = \"file:….pem\": a command cannot say its key")?;
    Ok(KeySource::Command {
        argv,
        secrets: raw
            .command_secrets
            .unwrap_or_default()
            .iter()
            .map(|s| secret(s))
            .collect::<Result<_, _>>()?,
        public_key: secret(&public_key)?,
    })
}

fn need(reference: &SecretRef, role: Role) -> Result<Secret, UpdateError> {
    reference
        .resolve()
        .map_err(|e| UpdateError::Key {
            role,
            reason: e.to_string(),
        })?
        .map_err(|missing| UpdateError::MissingSecret {
            role,
            reason: missing.to_string(),
        })
}

fn load(source: &KeySource, role: Role) -> Result<Box<dyn Signer>, UpdateError> {
    let key_error = |reason: String| UpdateError::Key { role, reason };
    match source {
        KeySource::Pem(reference) => {
            let secret = need(reference, role)?;
            let pair = openwork_signer::key::pem::parse_private_key(secret.bytes())
                .map_err(|e| key_error(format!("{reference}: {e}")))?;
            token_signer(Box::new(pair), role, &reference.to_string())
        }
        KeySource::Pkcs11 {
            module,
            token_label,
            slot,
            key_label,
            key_id,
            pin,
        } => {
            let module = match module {
                ModulePath::Path(path) => path.clone(),
                ModulePath::Env(name) => PathBuf::from(
                    need(&SecretRef::Env(name.clone()), role)?
                        .text()
                        .map_err(|e| key_error(e.to_string()))?,
                ),
            };
            let pin = need(pin, role)?;
            let config = Pkcs11Config {
                module,
                token_label: token_label.clone(),
                slot: *slot,
                key_label: key_label.clone(),
                key_id: key_id.clone(),
                pin: zeroize::Zeroizing::new(
                    pin.text().map_err(|e| key_error(e.to_string()))?.to_owned(),
                ),
            };
            let key = openwork_signer::key::pkcs11::load_key(&config).map_err(|e| {
                if e.exit_code() == openwork_payload::ExitCode::Credentials {
                    UpdateError::Credentials {
                        role,
                        reason: e.to_string(),
                    }
                } else {
                    key_error(e.to_string())
                }
            })?;
            token_signer(key, role, "the PKCS#11 key")
        }
        KeySource::Command {
            argv,
            secrets,
            public_key,
        } => {
            let mut redactor = Redactor::default();
            for reference in secrets {
                redactor.add(&need(reference, role)?);
            }
            let pem = need(public_key, role)?;
            let public = PublicKey::from_pem(pem.text().map_err(|e| key_error(e.to_string()))?)
                .map_err(|e| key_error(format!("{public_key}: {e}")))?;
            Ok(Box::new(CommandKey {
                signer: openwork_signer::external::ExternalSigner::new(argv.clone(), redactor),
                public,
            }))
        }
    }
}

/// A key the signer crate loaded (a PEM key in memory, or on a PKCS#11 token), checked to
/// be P-256.
fn token_signer(
    key: Box<dyn KeyInfoSigner + Send + Sync>,
    role: Role,
    what: &str,
) -> Result<Box<dyn Signer>, UpdateError> {
    if key.key_algorithm() != Some(KeyAlgorithm::Ecdsa(EcdsaCurve::Secp256r1)) {
        return Err(UpdateError::Key {
            role,
            reason: format!(
                "{what} is {:?}; update metadata is signed with ECDSA P-256 keys (`openssl \
                 ecparam -name prime256v1 -genkey`)",
                key.key_algorithm()
            ),
        });
    }
    let public = PublicKey::ecdsa_p256(&key.public_key_data()).map_err(|e| UpdateError::Key {
        role,
        reason: e.to_string(),
    })?;
    Ok(Box::new(LoadedKey { key, public }))
}

struct LoadedKey {
    key: Box<dyn KeyInfoSigner + Send + Sync>,
    public: PublicKey,
}

impl Signer for LoadedKey {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        x509_certificate::Signer::<x509_certificate::Signature>::try_sign(
            self.key.as_ref(),
            message,
        )
        .map(Vec::from)
        .map_err(|e| SignError(e.to_string()))
    }
}

struct CommandKey {
    signer: openwork_signer::external::ExternalSigner,
    public: PublicKey,
}

impl Signer for CommandKey {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The message goes into a private temp file as `{file}`; the signature the command
    /// writes to `{out}` replaces it (the external signer's `{out}` contract).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let dir = tempfile::tempdir().map_err(|e| SignError(e.to_string()))?;
        let file = dir.path().join("metadata.cjson");
        fs_err::write(&file, message).map_err(|e| SignError(e.to_string()))?;
        self.signer
            .sign_file(&file)
            .map_err(|e| SignError(e.to_string()))?;
        fs_err::read(&file).map_err(|e| SignError(e.to_string()))
    }
}

/// A key in memory from PKCS#8 DER, as a boxed signer (tests and `init --generate`).
pub fn in_memory(der: &[u8]) -> Result<Box<dyn Signer>, UpdateError> {
    InMemoryKey::from_pkcs8(der)
        .map(|k| Box::new(k) as Box<dyn Signer>)
        .map_err(|e| UpdateError::Key {
            role: Role::Root,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KeysConfig, UpdateError> {
        KeysConfig::parse(text, Path::new("update-keys.toml"), Path::new("/cfg"))
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("[root]\nkeys = []\n", "threshold 1 with 0 key(s)"),
            (
                "[root]\nkeys = [{ key = \"file:a\" }]\nthreshold = 2\n",
                "threshold 2 with 1",
            ),
            (
                "[targets]\nkeys = [{ key = \"hunter2\" }]\n",
                "not a secret reference",
            ),
            (
                "[timestamp]\nkeys = [{ command = [\"sign\", \"{file}\"], public-key = \"file:p\" }]\n",
                "\"{out}\"",
            ),
            (
                "[timestamp]\nkeys = [{ command = [\"sign\", \"{file}\", \"{out}\"] }]\n",
                "needs public-key",
            ),
            (
                "[snapshot]\nkeys = [{ key = \"file:a\", pkcs11 = { module = \"m\", key-label = \"k\", pin = \"env:P\" } }]\n",
                "exactly one of",
            ),
            (
                "[snapshot]\nkeys = [{ pkcs11 = { module = \"m\", pin = \"env:P\" } }]\n",
                "key-label or key-id",
            ),
            ("[snapshots]\nkeys = []\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains("update-keys.toml"), "{text}: {message}");
        }
    }

    #[test]
    fn a_missing_secret_is_a_credentials_error_that_names_the_reference_only() {
        let config =
            parse("[targets]\nkeys = [{ key = \"env:OPENWORK_TEST_UNSET_UPDATE_KEY\" }]\n")
                .unwrap();
        let error = config.signers(Role::Targets).err().unwrap();
        assert!(
            matches!(
                error,
                UpdateError::MissingSecret {
                    role: Role::Targets,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("env:OPENWORK_TEST_UNSET_UPDATE_KEY"),
            "{error}"
        );
        assert_eq!(error.exit_code(), openwork_payload::ExitCode::Credentials);
    }
}
