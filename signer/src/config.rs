//! The signing configuration: a TOML file that says how to sign each kind of executable,
//! with secrets only by reference ([`crate::secret`]).
//!
//! ```toml
//! on-missing-secret = "skip"          # or "fail" (the default)
//!
//! [authenticode]                      # Windows PE files
//! pkcs11 = { module = "env:PKCS11_MODULE", token-label = "release",
//!            key-label = "code-signing", pin = "env:HSM_PIN" }
//! timestamp-urls = ["http://timestamp.example"]
//!
//! [codesign]                          # macOS Mach-O files
//! pkcs12 = "base64:env:APPLE_CERTIFICATE_P12"
//! password = "env:APPLE_CERTIFICATE_PASSWORD"
//!
//! [notarize]
//! key-id = "env:APPLE_API_KEY_ID"
//! issuer = "env:APPLE_API_ISSUER"
//! key = "env:APPLE_API_KEY_P8"
//! ```
//!
//! A section's key comes from exactly one of: `pkcs12` + `password`, `key` + `certificate`
//! (PEM or DER files), `pkcs11 = { … }`, or `command = [argv with "{file}"]` (signtool,
//! jsign, osslsigncode or a cloud signer's client). docs/SIGNING.md is the user's guide.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Error, Result};
use crate::secret::SecretRef;

/// Apple's time-stamp authority: notarization accepts only its "secure timestamp".
pub const APPLE_TIMESTAMP_URL: &str = "http://timestamp.apple.com/ts01";

/// What to do when a referenced secret is not there (an unset variable, a missing file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingSecretPolicy {
    /// Stop with exit code 14: a release must not ship unsigned by accident.
    #[default]
    Fail,
    /// Leave that kind of file unsigned, with a warning (forks, pull requests, dev builds).
    Skip,
}

/// The whole configuration, parsed and checked; secrets not yet read.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// Where the configuration came from (for messages).
    pub path: PathBuf,
    /// The policy for missing secrets.
    pub on_missing_secret: MissingSecretPolicy,
    /// Windows Authenticode, if configured.
    pub authenticode: Option<AuthenticodeSection>,
    /// Apple codesign, if configured.
    pub codesign: Option<CodesignSection>,
    /// Apple notarization, if configured.
    pub notarize: Option<NotarizeSection>,
}

/// Where a signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PKCS#12 file and its password.
    Pkcs12 {
        /// The `.p12`/`.pfx` bytes.
        file: SecretRef,
        /// Its password.
        password: SecretRef,
    },
    /// A PKCS#8 key and its certificate chain, PEM or DER.
    Pem {
        /// The private key.
        key: SecretRef,
        /// The leaf certificate, then the chain.
        certificate: SecretRef,
    },
    /// A key on a PKCS#11 token or HSM.
    Pkcs11(Pkcs11Source),
    /// Azure Artifact Signing: the service signs, with a certificate of its own.
    Azure(AzureSource),
    /// An external command that signs a file in place (`{file}`) or writes `{out}`.
    Command {
        /// The argv template.
        argv: Vec<String>,
        /// The secrets the command reads from its environment (`command-secrets`): they
        /// must be there (or the missing-secret policy applies), and its output is
        /// redacted of them.
        secrets: Vec<SecretRef>,
    },
}

/// A PKCS#11 key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Source {
    /// The PKCS#11 module (shared library): a path, or `env:NAME` for a variable that
    /// holds the path (CI runners install vendors' modules in different places).
    pub module: ModulePath,
    /// The token's label.
    pub token_label: Option<String>,
    /// The slot id.
    pub slot: Option<u64>,
    /// The private key's label.
    pub key_label: Option<String>,
    /// The private key's id (CKA_ID), hex in the file.
    pub key_id: Option<Vec<u8>>,
    /// The user PIN.
    pub pin: SecretRef,
    /// The certificate chain, when the token does not hold the certificate.
    pub certificate: Option<SecretRef>,
}

/// An Azure Artifact Signing certificate profile, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSource {
    /// The account's regional endpoint, e.g. `https://eus.codesigning.azure.net`.
    pub endpoint: String,
    /// The Artifact Signing account.
    pub account: String,
    /// The certificate profile.
    pub certificate_profile: String,
    /// Entra ID's authority (default: the public cloud's).
    pub authority: String,
    /// The directory (tenant) id.
    pub tenant_id: SecretRef,
    /// The app registration's (or managed identity's) client id.
    pub client_id: SecretRef,
    /// How the client proves itself.
    pub credential: AzureCredentialSource,
    /// The longest a signing operation may take.
    pub timeout: Duration,
}

/// How the Artifact Signing client authenticates, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentialSource {
    /// `client-secret = <ref>`.
    ClientSecret(SecretRef),
    /// `federated-token = <ref>`: a token file (`AZURE_FEDERATED_TOKEN_FILE`) or variable.
    FederatedToken(SecretRef),
    /// `federated-token = "github-actions"`: GitHub Actions' OIDC token.
    GitHubActions,
}

/// Where a PKCS#11 module is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModulePath {
    /// A path (relative ones against the configuration file's directory).
    Path(PathBuf),
    /// An environment variable holding the path.
    Env(String),
}

/// `[authenticode]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticodeSection {
    /// The key.
    pub key: KeySource,
    /// RFC 3161 time-stamp authorities, tried in order.
    pub timestamp_urls: Vec<String>,
    /// Tries per authority.
    pub timestamp_attempts: u32,
    /// Timeout per request.
    pub timestamp_timeout: Duration,
    /// Program description shown by Windows' UAC prompt (SpcSpOpusInfo).
    pub description: Option<String>,
    /// Program URL (SpcSpOpusInfo).
    pub url: Option<String>,
}

/// `[codesign]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodesignSection {
    /// The key (a Developer ID Application certificate for notarized releases).
    pub key: KeySource,
    /// Hardened runtime (required for notarization); default on.
    pub hardened_runtime: bool,
    /// Time-stamp authority; `None` signs without a timestamp. Default: Apple's.
    pub timestamp_url: Option<String>,
}

/// `[notarize]`: an App Store Connect API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotarizeSection {
    /// The key id.
    pub key_id: SecretRef,
    /// The issuer id (a UUID).
    pub issuer: SecretRef,
    /// The `.p8` private key's contents.
    pub key: SecretRef,
    /// Which client talks to the notary service; `None`: the platform's default.
    pub notarizer: Option<NotarizerKind>,
}

/// Which client notarizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotarizerKind {
    /// `xcrun notarytool` (macOS with Xcode).
    Notarytool,
    /// The Notary REST API, from any OS ([`crate::notary_api`]).
    Api,
}

impl NotarizerKind {
    /// notarytool on macOS, where Xcode is; the API elsewhere.
    pub fn platform_default() -> Self {
        if cfg!(target_os = "macos") {
            NotarizerKind::Notarytool
        } else {
            NotarizerKind::Api
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    on_missing_secret: MissingSecretPolicy,
    authenticode: Option<RawAuthenticode>,
    codesign: Option<RawCodesign>,
    notarize: Option<RawNotarize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKey {
    pkcs12: Option<String>,
    password: Option<String>,
    key: Option<String>,
    certificate: Option<String>,
    pkcs11: Option<RawPkcs11>,
    command: Option<Vec<String>>,
    command_secrets: Option<Vec<String>>,
    azure_artifact_signing: Option<RawAzure>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAzure {
    endpoint: String,
    account: String,
    certificate_profile: String,
    tenant_id: String,
    client_id: String,
    client_secret: Option<String>,
    federated_token: Option<String>,
    authority: Option<String>,
    timeout_seconds: Option<u64>,
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
    certificate: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAuthenticode {
    #[serde(flatten)]
    key: RawKey,
    #[serde(default)]
    timestamp_urls: Vec<String>,
    timestamp_attempts: Option<u32>,
    timestamp_timeout_seconds: Option<u64>,
    description: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCodesign {
    #[serde(flatten)]
    key: RawKey,
    hardened_runtime: Option<bool>,
    timestamp: Option<bool>,
    timestamp_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNotarize {
    key_id: String,
    issuer: String,
    key: String,
    notarizer: Option<NotarizerKind>,
}

impl SigningConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read { source })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base_dir)
    }

    /// Parses configuration text; `base_dir` anchors relative `file:` references and paths.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let secret = |text: &str| SecretRef::parse(text, base_dir);
        let authenticode = raw
            .authenticode
            .map(|a| -> Result<AuthenticodeSection> {
                let key = key_source(a.key, "authenticode", base_dir)?;
                for url in &a.timestamp_urls {
                    check_url(url, "authenticode.timestamp-urls")?;
                }
                // The service's certificates live three days: without a time stamp its
                // signatures would stop verifying then.
                let timestamp_urls =
                    if matches!(key, KeySource::Azure(_)) && a.timestamp_urls.is_empty() {
                        vec![crate::azure::DEFAULT_TIMESTAMP_URL.to_owned()]
                    } else {
                        a.timestamp_urls
                    };
                Ok(AuthenticodeSection {
                    key,
                    timestamp_urls,
                    timestamp_attempts: a.timestamp_attempts.unwrap_or(3).max(1),
                    timestamp_timeout: Duration::from_secs(
                        a.timestamp_timeout_seconds.unwrap_or(30),
                    ),
                    description: a.description,
                    url: a.url,
                })
            })
            .transpose()
            .map_err(|e| in_file(e, path))?;
        let codesign = raw
            .codesign
            .map(|c| -> Result<CodesignSection> {
                let key = key_source(c.key, "codesign", base_dir)?;
                if matches!(key, KeySource::Azure(_)) {
                    return Err(ConfigError::AzureForCodesign.into());
                }
                let timestamp_url = match (c.timestamp.unwrap_or(true), c.timestamp_url) {
                    (false, Some(_)) => {
                        return Err(ConfigError::TimestampContradiction.into());
                    }
                    (false, None) => None,
                    (true, url) => Some(url.unwrap_or_else(|| APPLE_TIMESTAMP_URL.into())),
                };
                if let Some(url) = &timestamp_url {
                    check_url(url, "codesign.timestamp-url")?;
                }
                Ok(CodesignSection {
                    key,
                    hardened_runtime: c.hardened_runtime.unwrap_or(true),
                    timestamp_url,
                })
            })
            .transpose()
            .map_err(|e| in_file(e, path))?;
        let notarize = raw
            .notarize
            .map(|n| -> Result<NotarizeSection> {
                Ok(NotarizeSection {
                    key_id: secret(&n.key_id)?,
                    issuer: secret(&n.issuer)?,
                    key: secret(&n.key)?,
                    notarizer: n.notarizer,
                })
            })
            .transpose()
            .map_err(|e| in_file(e, path))?;
        if notarize.is_some() && codesign.is_none() {
            return Err(ConfigError::NotarizeWithoutCodesign {
                path: path.to_owned(),
            }
            .into());
        }
        Ok(Self {
            path: path.to_owned(),
            on_missing_secret: raw.on_missing_secret,
            authenticode,
            codesign,
            notarize,
        })
    }
}

fn key_source(raw: RawKey, section: &str, base_dir: &Path) -> Result<KeySource> {
    let secret = |text: String| SecretRef::parse(&text, base_dir);
    let given = [
        raw.pkcs12.is_some(),
        raw.key.is_some(),
        raw.pkcs11.is_some(),
        raw.command.is_some(),
        raw.azure_artifact_signing.is_some(),
    ]
    .into_iter()
    .filter(|&g| g)
    .count();
    if given != 1 {
        return Err(ConfigError::KeySources {
            section: section.to_owned(),
            given,
        }
        .into());
    }
    let stray = |field: &'static str, with: &'static str| -> Error {
        ConfigError::Stray {
            section: section.to_owned(),
            field,
            with,
        }
        .into()
    };
    let incomplete = |needs: &'static str| -> Error {
        ConfigError::Incomplete {
            section: section.to_owned(),
            needs,
        }
        .into()
    };
    if raw.pkcs12.is_none() && raw.password.is_some() {
        return Err(stray("password", "pkcs12"));
    }
    if raw.command.is_none() && raw.command_secrets.is_some() {
        return Err(stray("command-secrets", "command"));
    }
    if raw.key.is_none() && raw.certificate.is_some() {
        return Err(stray(
            "certificate",
            "key (pkcs11 takes its own certificate)",
        ));
    }
    if let Some(file) = raw.pkcs12 {
        let password = raw.password.ok_or_else(|| {
            incomplete("pkcs12 needs a password reference (password = \"env:NAME\")")
        })?;
        return Ok(KeySource::Pkcs12 {
            file: secret(file)?,
            password: secret(password)?,
        });
    }
    if let Some(key) = raw.key {
        let certificate = raw.certificate.ok_or_else(|| {
            incomplete("key needs its certificate (certificate = \"file:chain.pem\")")
        })?;
        return Ok(KeySource::Pem {
            key: secret(key)?,
            certificate: secret(certificate)?,
        });
    }
    if let Some(p) = raw.pkcs11 {
        if p.key_label.is_none() && p.key_id.is_none() {
            return Err(incomplete(
                "pkcs11 needs key-label or key-id to find the key",
            ));
        }
        let key_id = p
            .key_id
            .map(|id| {
                hex::decode(id.trim_start_matches("0x")).map_err(|_| ConfigError::KeyIdNotHex {
                    section: section.to_owned(),
                    id: id.clone(),
                })
            })
            .transpose()?;
        let module = match p.module.strip_prefix("env:") {
            Some(name) => ModulePath::Env(name.to_owned()),
            None => ModulePath::Path(base_dir.join(&p.module)),
        };
        return Ok(KeySource::Pkcs11(Pkcs11Source {
            module,
            token_label: p.token_label,
            slot: p.slot,
            key_label: p.key_label,
            key_id,
            pin: secret(p.pin)?,
            certificate: p.certificate.map(secret).transpose()?,
        }));
    }
    if let Some(a) = raw.azure_artifact_signing {
        return azure_source(a, section, base_dir);
    }
    let command = raw.command.unwrap_or_default();
    if command.is_empty() || !command.iter().any(|a| a.contains("{file}")) {
        return Err(incomplete(
            "command must be an argument list naming the file to sign as \"{file}\", e.g. \
             [\"jsign\", \"--storetype\", \"…\", \"{file}\"]",
        ));
    }
    let secrets = raw
        .command_secrets
        .unwrap_or_default()
        .into_iter()
        .map(secret)
        .collect::<Result<_>>()?;
    Ok(KeySource::Command {
        argv: command,
        secrets,
    })
}

fn azure_source(a: RawAzure, section: &str, base_dir: &Path) -> Result<KeySource> {
    let secret = |text: &str| SecretRef::parse(text, base_dir);
    let field = |name: &str| format!("[{section}] azure-artifact-signing {name}");
    check_url(&a.endpoint, &field("endpoint"))?;
    let authority = a
        .authority
        .unwrap_or_else(|| crate::azure::DEFAULT_AUTHORITY.to_owned());
    check_url(&authority, &field("authority"))?;
    for (name, value) in [
        ("account", &a.account),
        ("certificate-profile", &a.certificate_profile),
    ] {
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ConfigError::NotAName {
                field: field(name),
                value: value.clone(),
            }
            .into());
        }
    }
    let credential = match (a.client_secret, a.federated_token) {
        (Some(secret_ref), None) => AzureCredentialSource::ClientSecret(secret(&secret_ref)?),
        (None, Some(token)) if token == "github-actions" => AzureCredentialSource::GitHubActions,
        (None, Some(token)) => AzureCredentialSource::FederatedToken(secret(&token)?),
        _ => {
            return Err(ConfigError::Incomplete {
                section: section.to_owned(),
                needs: "azure-artifact-signing needs exactly one of client-secret = \
                        \"env:AZURE_CLIENT_SECRET\" and federated-token = \"github-actions\" \
                        (or a reference to a token file)",
            }
            .into());
        }
    };
    Ok(KeySource::Azure(AzureSource {
        endpoint: a.endpoint,
        account: a.account,
        certificate_profile: a.certificate_profile,
        authority,
        tenant_id: secret(&a.tenant_id)?,
        client_id: secret(&a.client_id)?,
        credential,
        timeout: Duration::from_secs(a.timeout_seconds.unwrap_or(300)),
    }))
}

/// The variables GitHub Actions gives a job with `permissions: id-token: write`.
pub const GITHUB_OIDC_VARIABLES: [&str; 2] = [
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
];

impl KeySource {
    /// Every secret reference of this key source.
    pub fn secret_references(&self) -> Vec<&SecretRef> {
        match self {
            KeySource::Pkcs12 { file, password } => vec![file, password],
            KeySource::Pem { key, certificate } => vec![key, certificate],
            KeySource::Pkcs11(p) => std::iter::once(&p.pin).chain(&p.certificate).collect(),
            KeySource::Command { secrets, .. } => secrets.iter().collect(),
            KeySource::Azure(a) => {
                let mut all = vec![&a.tenant_id, &a.client_id];
                match &a.credential {
                    AzureCredentialSource::ClientSecret(r)
                    | AzureCredentialSource::FederatedToken(r) => all.push(r),
                    AzureCredentialSource::GitHubActions => {}
                }
                all
            }
        }
    }
}

impl SigningConfig {
    /// Every secret reference in the configuration, all sections: what output of other
    /// programs is redacted of.
    pub fn secret_references(&self) -> Vec<&SecretRef> {
        let mut all = Vec::new();
        if let Some(section) = &self.authenticode {
            all.extend(section.key.secret_references());
        }
        if let Some(section) = &self.codesign {
            all.extend(section.key.secret_references());
        }
        if let Some(n) = &self.notarize {
            all.extend([&n.key_id, &n.issuer, &n.key]);
        }
        all
    }
}

fn check_url(url: &str, field: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::NotHttpUrl {
            field: field.to_owned(),
            url: url.to_owned(),
        }
        .into())
    }
}

fn in_file(error: Error, path: &Path) -> Error {
    match error {
        Error::Config(source) => ConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        }
        .into(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SigningConfig> {
        SigningConfig::parse(text, Path::new("signing.toml"), Path::new("/cfg"))
    }

    #[test]
    fn a_full_configuration_parses() {
        let config = parse(
            r#"
            on-missing-secret = "skip"
            [authenticode]
            pkcs11 = { module = "lib/softhsm2.so", token-label = "t", key-id = "0a0B", pin = "env:PIN" }
            timestamp-urls = ["http://tsa.one", "https://tsa.two"]
            description = "openwork server"
            [codesign]
            pkcs12 = "base64:env:P12"
            password = "env:P12_PASSWORD"
            [notarize]
            key-id = "env:KEY_ID"
            issuer = "env:ISSUER"
            key = "file:AuthKey.p8"
            "#,
        )
        .unwrap();
        assert_eq!(config.on_missing_secret, MissingSecretPolicy::Skip);
        let authenticode = config.authenticode.unwrap();
        let KeySource::Pkcs11(p) = authenticode.key else {
            panic!("pkcs11 expected")
        };
        assert_eq!(p.module, ModulePath::Path("/cfg/lib/softhsm2.so".into()));
        assert_eq!(p.key_id, Some(vec![0x0a, 0x0b]));
        assert_eq!(authenticode.timestamp_urls.len(), 2);
        assert_eq!(authenticode.timestamp_attempts, 3);
        let codesign = config.codesign.unwrap();
        assert!(codesign.hardened_runtime);
        assert_eq!(codesign.timestamp_url.as_deref(), Some(APPLE_TIMESTAMP_URL));
        assert_eq!(
            config.notarize.unwrap().key,
            SecretRef::File("/cfg/AuthKey.p8".into())
        );
    }

    /// The configuration release.yml signs with parses, and names only secrets.
    #[test]
    fn the_release_workflow_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/signing.toml");
        let config = SigningConfig::load(&path).unwrap();
        assert_eq!(config.on_missing_secret, MissingSecretPolicy::Fail);
        let authenticode = config.authenticode.unwrap();
        assert!(matches!(
            authenticode.key,
            KeySource::Pkcs11(Pkcs11Source {
                module: ModulePath::Env(_),
                ..
            })
        ));
        assert!(!authenticode.timestamp_urls.is_empty());
        let codesign = config.codesign.unwrap();
        assert!(codesign.hardened_runtime);
        assert_eq!(codesign.timestamp_url.as_deref(), Some(APPLE_TIMESTAMP_URL));
        assert!(config.notarize.is_some());
    }

    /// The Azure Artifact Signing alternative release.yml signs with parses: federated
    /// credentials from GitHub Actions, a time stamp.
    #[test]
    fn the_release_workflow_azure_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/signing-azure.toml");
        let config = SigningConfig::load(&path).unwrap();
        let authenticode = config.authenticode.unwrap();
        let KeySource::Azure(azure) = &authenticode.key else {
            panic!("azure-artifact-signing expected: {:?}", authenticode.key)
        };
        assert_eq!(azure.credential, AzureCredentialSource::GitHubActions);
        assert_eq!(azure.authority, crate::azure::DEFAULT_AUTHORITY);
        assert_eq!(azure.tenant_id, SecretRef::Env("AZURE_TENANT_ID".into()));
        assert_eq!(
            authenticode.timestamp_urls[0],
            crate::azure::DEFAULT_TIMESTAMP_URL
        );
        assert!(config.codesign.is_some() && config.notarize.is_some());
    }

    #[test]
    fn azure_artifact_signing_always_time_stamps_and_names_its_mistakes() {
        let base = "endpoint = \"https://eus.codesigning.azure.net\", account = \"a\", \
                    certificate-profile = \"p\", tenant-id = \"env:T\", client-id = \"env:C\"";
        let config = parse(&format!(
            "[authenticode]\nazure-artifact-signing = {{ {base}, client-secret = \"env:S\" }}\n"
        ))
        .unwrap();
        let authenticode = config.authenticode.unwrap();
        assert_eq!(
            authenticode.timestamp_urls,
            [crate::azure::DEFAULT_TIMESTAMP_URL]
        );
        let cases = [
            (format!("[authenticode]\nazure-artifact-signing = {{ {base} }}\n"), "exactly one of client-secret"),
            (
                format!("[authenticode]\nazure-artifact-signing = {{ {base}, client-secret = \"env:S\", federated-token = \"github-actions\" }}\n"),
                "exactly one of client-secret",
            ),
            (
                format!("[authenticode]\nazure-artifact-signing = {{ {base}, client-secret = \"s3cret\" }}\n"),
                "not a secret reference",
            ),
            (
                format!("[codesign]\nazure-artifact-signing = {{ {base}, client-secret = \"env:S\" }}\n"),
                "signs Windows files only",
            ),
            (
                "[authenticode]\nazure-artifact-signing = { endpoint = \"eus\", account = \"a\", certificate-profile = \"p\", tenant-id = \"env:T\", client-id = \"env:C\", client-secret = \"env:S\" }\n".to_owned(),
                "not an http(s) URL",
            ),
        ];
        for (text, expected) in cases {
            let message = parse(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("[authenticode]\n", "exactly one key source"),
            (
                "[authenticode]\npkcs12 = \"env:A\"\npassword = \"env:B\"\ncommand = [\"x\", \"{file}\"]\n",
                "exactly one key source",
            ),
            ("[authenticode]\npkcs12 = \"env:A\"\n", "needs a password"),
            (
                "[codesign]\nkey = \"file:k.pem\"\n",
                "needs its certificate",
            ),
            (
                "[authenticode]\ncommand = [\"signtool\", \"sign\"]\n",
                "\"{file}\"",
            ),
            (
                "[authenticode]\npkcs12 = \"hunter2\"\npassword = \"env:B\"\n",
                "not a secret reference",
            ),
            (
                "[authenticode]\npkcs11 = { module = \"m.so\", pin = \"env:P\" }\n",
                "key-label or key-id",
            ),
            (
                "[codesign]\npkcs12 = \"env:A\"\npassword = \"env:B\"\ntimestamp = false\ntimestamp-url = \"http://x\"\n",
                "contradict",
            ),
            (
                "[notarize]\nkey-id = \"env:A\"\nissuer = \"env:B\"\nkey = \"env:C\"\n",
                "needs a [codesign] section",
            ),
            ("[authenticod]\n", "unknown field"),
            (
                "[authenticode]\nkey = \"file:k\"\ncertificate = \"file:c\"\ncommand-secrets = [\"env:PIN\"]\n",
                "command-secrets belongs with command only",
            ),
            (
                "[authenticode]\nkey = \"file:k\"\ncertificate = \"file:c\"\ntimestamp-urls = [\"ftp://x\"]\n",
                "not an http(s) URL",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                matches!(error, Error::Config(_)),
                "{text}: {error:?} is not a configuration error"
            );
            let message = error.to_string();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains("signing.toml"), "{text}: {message}");
        }
    }
}
