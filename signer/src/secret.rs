//! Secrets by reference: a configuration names where a secret is, never the secret itself.
//!
//! A reference is `env:NAME` (the variable's value), `file:PATH` (the file's bytes; a
//! relative path is relative to the configuration file), or either behind `base64:`
//! (`base64:env:APPLE_CERTIFICATE_P12`) for binary secrets kept in CI variables, which hold
//! text. A [`Secret`] prints as `<redacted>` in `Debug`, so neither logs nor error chains
//! can carry it, and its bytes are zeroed when it is dropped (as are the intermediate copies
//! made while decoding it). What other programs print (an external signing command, a
//! notary tool) goes through a [`Redactor`] that knows every configured secret before it
//! can reach an error or a log.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{ConfigError, CredentialsError, Error, Result};

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file.
    File(PathBuf),
    /// Base64 text from another reference, decoded.
    Base64(Box<SecretRef>),
}

/// A resolved secret. Never printed; zeroed when dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

/// Why a reference gave no secret: the case a missing-secret policy may forgive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret {
    /// The reference, e.g. `env:APPLE_CERTIFICATE_P12` (a name, not a value).
    pub reference: String,
}

impl fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reference.split_once(':') {
            Some(("file", path)) => write!(f, "the secret file {path} does not exist"),
            _ => write!(f, "{} is not set", self.reference),
        }
    }
}

impl SecretRef {
    /// Parses `env:NAME`, `file:PATH` or `base64:<reference>`; relative file paths are
    /// resolved against `base_dir` (the configuration file's directory).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self> {
        let bad = || -> Error {
            ConfigError::SecretReference {
                text: text.to_owned(),
            }
            .into()
        };
        let (scheme, rest) = text.split_once(':').ok_or_else(bad)?;
        match scheme {
            "env" if is_env_name(rest) => Ok(SecretRef::Env(rest.to_owned())),
            "file" if !rest.is_empty() => Ok(SecretRef::File(base_dir.join(rest))),
            "base64" => match SecretRef::parse(rest, base_dir)? {
                SecretRef::Base64(_) => Err(bad()),
                inner => Ok(SecretRef::Base64(Box::new(inner))),
            },
            _ => Err(bad()),
        }
    }

    /// Reads the secret. `Ok(Err(_))` is a secret that is not there (an unset or empty
    /// variable, a missing file), which the caller's policy decides about; `Err` is a
    /// secret that is there but unusable (unreadable file, bad base64).
    pub fn resolve(&self) -> Result<Result<Secret, MissingSecret>> {
        let missing = || {
            Ok(Err(MissingSecret {
                reference: self.to_string(),
            }))
        };
        match self {
            SecretRef::Env(name) => match std::env::var_os(name) {
                Some(value) if !value.is_empty() => {
                    let value = value
                        .into_string()
                        .map_err(|_| CredentialsError::SecretNotUtf8 { what: name.clone() })?;
                    Ok(Ok(Secret(Zeroizing::new(value.into_bytes()))))
                }
                _ => missing(),
            },
            SecretRef::File(path) => match fs_err::read(path) {
                Ok(bytes) => Ok(Ok(Secret(Zeroizing::new(bytes)))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
                Err(source) => Err(CredentialsError::SecretUnreadable { source }.into()),
            },
            SecretRef::Base64(inner) => match inner.resolve()? {
                Ok(text) => {
                    // CI variables often carry the line breaks of `base64` output.
                    let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
                        text.0
                            .iter()
                            .copied()
                            .filter(|b| !b.is_ascii_whitespace())
                            .collect(),
                    );
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&*compact)
                        .map(Zeroizing::new)
                        .map_err(|_| CredentialsError::SecretNotBase64 {
                            reference: inner.to_string(),
                        })?;
                    Ok(Ok(Secret(bytes)))
                }
                Err(missing) => Ok(Err(missing)),
            },
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Base64(inner) => write!(f, "base64:{inner}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Secret {
    /// A secret from text already in memory (an ID read with another secret).
    pub fn from_text(text: &str) -> Self {
        Secret(Zeroizing::new(text.as_bytes().to_vec()))
    }

    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text (passwords, PINs, key ids), without a trailing line break that a
    /// file written by `echo` carries.
    pub fn text(&self) -> Result<&str> {
        let text = std::str::from_utf8(&self.0).map_err(|_| CredentialsError::SecretNotUtf8 {
            what: "a text secret".into(),
        })?;
        Ok(text.trim_end_matches(['\r', '\n']))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What replaces a secret in text shown to people.
pub const REDACTED: &str = "<redacted>";

/// Removes known secrets from text that another program wrote (an external signing
/// command's output, a notary tool's errors) before it goes into an error or a log:
/// signing tools print PINs, passwords and tokens in their diagnostics.
///
/// Each secret is looked for as its text (without a trailing line break), its base64 form
/// (how CI variables hold binary secrets), and, for a multi-line secret such as a PEM key,
/// each of its lines of 8 characters or more (a tool may print part of it). Longer forms
/// are replaced first, so that a secret containing another is removed whole.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<Zeroizing<String>>,
}

impl Redactor {
    /// A redactor for `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut redactor = Self::default();
        for secret in secrets {
            redactor.add(secret);
        }
        redactor
    }

    /// Adds a secret to look for.
    pub fn add(&mut self, secret: &Secret) {
        let text = Zeroizing::new(String::from_utf8_lossy(secret.bytes()).into_owned());
        let trimmed = text.trim();
        let mut forms = vec![trimmed.to_owned()];
        if trimmed.contains('\n') {
            forms.extend(
                trimmed
                    .lines()
                    .map(str::trim)
                    .filter(|line| line.len() >= 8)
                    .map(str::to_owned),
            );
        }
        let base64 = base64::engine::general_purpose::STANDARD;
        forms.push(base64.encode(secret.bytes()));
        forms.push(base64.encode(trimmed.as_bytes()));
        for form in forms {
            let form = Zeroizing::new(form);
            if !form.is_empty() && !self.needles.contains(&form) {
                self.needles.push(form);
            }
        }
        self.needles
            .sort_by_key(|needle| std::cmp::Reverse(needle.len()));
    }

    /// Adds every secret `other` knows.
    pub fn extend(&mut self, other: &Redactor) {
        for needle in &other.needles {
            if !self.needles.contains(needle) {
                self.needles.push(needle.clone());
            }
        }
        self.needles
            .sort_by_key(|needle| std::cmp::Reverse(needle.len()));
    }

    /// `text` with every secret replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                let redacted = text.replace(needle.as_str(), REDACTED);
                // The text held a secret: the copy that did is zeroed before it goes.
                drop(Zeroizing::new(std::mem::replace(&mut text, redacted)));
            }
        }
        text
    }

    /// How many forms of secrets it looks for.
    pub fn len(&self) -> usize {
        self.needles.len()
    }

    /// Whether it knows no secret.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms of secrets)", self.needles.len())
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SecretRef> {
        SecretRef::parse(text, Path::new("/config"))
    }

    #[test]
    fn references_parse_and_print_without_values() {
        assert_eq!(parse("env:A_1").unwrap(), SecretRef::Env("A_1".into()));
        assert_eq!(
            parse("file:keys/k.pem").unwrap(),
            SecretRef::File("/config/keys/k.pem".into())
        );
        assert_eq!(
            parse("base64:env:P12").unwrap().to_string(),
            "base64:env:P12"
        );
        for bad in [
            "hunter2",
            "env:",
            "env:1A",
            "env:A-B",
            "file:",
            "base64:base64:env:A",
            "vault:x",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("env:NAME"), "{bad}: {error}");
        }
    }

    #[test]
    fn secrets_resolve_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("pin"), "1234\n").unwrap();
        fs_err::write(dir.path().join("p12.b64"), "AAEC\n/w==\n").unwrap();
        let pin = SecretRef::parse("file:pin", dir.path()).unwrap();
        let secret = pin.resolve().unwrap().unwrap();
        assert_eq!(secret.text().unwrap(), "1234");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        let p12 = SecretRef::parse("base64:file:p12.b64", dir.path()).unwrap();
        assert_eq!(p12.resolve().unwrap().unwrap().bytes(), [0, 1, 2, 0xff]);

        let gone = SecretRef::parse("file:nope", dir.path()).unwrap();
        let missing = gone.resolve().unwrap().unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let unset = SecretRef::parse("env:OPENWORK_TEST_UNSET_SECRET", dir.path()).unwrap();
        assert_eq!(
            unset.resolve().unwrap().unwrap_err().to_string(),
            "env:OPENWORK_TEST_UNSET_SECRET is not set"
        );
        fs_err::write(dir.path().join("bad"), "not base64!").unwrap();
        let bad = SecretRef::parse("base64:file:bad", dir.path()).unwrap();
        let error = bad.resolve().unwrap_err().to_string();
        assert!(error.contains("is not base64"), "{error}");
        assert!(!error.contains("not base64!"), "the value leaked: {error}");
    }

    #[test]
    fn the_redactor_removes_every_form_of_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("pin"), "hunter22\n").unwrap();
        fs_err::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\nAwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let secret = |name: &str| {
            SecretRef::parse(&format!("file:{name}"), dir.path())
                .unwrap()
                .resolve()
                .unwrap()
                .unwrap()
        };
        let (pin, key) = (secret("pin"), secret("key.pem"));
        let redactor = Redactor::new([&pin, &key]);
        let output = "login with hunter22 failed\nkey line AwEHBG0wawIBAQQg seen\n\
                      env: aHVudGVyMjIK\nall clear";
        let shown = redactor.redact(output);
        for leaked in ["hunter22", "AwEHBG0wawIBAQQg", "aHVudGVyMjIK"] {
            assert!(!shown.contains(leaked), "{leaked} leaked: {shown}");
        }
        assert!(shown.contains("login with <redacted> failed"), "{shown}");
        assert!(shown.ends_with("all clear"), "{shown}");
        assert_eq!(
            format!("{redactor:?}"),
            format!("Redactor({} forms of secrets)", redactor.len())
        );
    }
}
