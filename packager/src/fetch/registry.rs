//! Which npm registry to ask, and with which credentials: the same places npm itself looks,
//! in npm's order of precedence.
//!
//! 1. `NPM_CONFIG_REGISTRY` / `npm_config_registry` in the environment;
//! 2. `registry=` in the project's `.npmrc`, then in the user's (`NPM_CONFIG_USERCONFIG`, else
//!    `~/.npmrc`);
//! 3. `npm config get registry`, if npm is installed (this also covers npm's global and
//!    built-in configuration, so no registry host is ever written into this code);
//! 4. otherwise an error asking for `NPM_CONFIG_REGISTRY`.
//!
//! Also honoured from the `.npmrc` files: scoped registries (`@scope:registry=`), bearer and
//! basic credentials keyed by registry path (`//host/path/:_authToken=`, `:_auth=`), and
//! `${VAR}` expansion in values. Credentials live in [`Secret`], whose `Debug` is redacted;
//! they are only ever put into `Authorization` headers marked sensitive.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use reqwest::Url;

use super::error::{FetchError, Result};

/// Environment variables that name the registry, in the spellings npm accepts.
pub const REGISTRY_ENV_VARS: [&str; 2] = ["NPM_CONFIG_REGISTRY", "npm_config_registry"];
/// Environment variables that name the user's `.npmrc`.
pub const USERCONFIG_ENV_VARS: [&str; 2] = ["NPM_CONFIG_USERCONFIG", "npm_config_userconfig"];

/// A credential string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that needs it: an `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How to authenticate to a registry path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `_authToken`: `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `_auth`: `Authorization: Basic <base64 user:password>`.
    Basic(Secret),
}

impl Credential {
    /// The `Authorization` header value.
    pub(crate) fn header_value(&self) -> String {
        match self {
            Credential::Bearer(token) => format!("Bearer {}", token.expose()),
            Credential::Basic(auth) => format!("Basic {}", auth.expose()),
        }
    }
}

/// A resolved npm registry configuration.
#[derive(Debug, Clone)]
pub struct Registry {
    default: Url,
    origin: String,
    scopes: BTreeMap<String, Url>,
    credentials: Vec<(String, Credential)>,
}

impl Registry {
    /// A registry given explicitly (a `--registry` flag, a test server), without
    /// credentials or scopes.
    pub fn new(url: &str) -> Result<Self> {
        Ok(Registry {
            default: parse_registry_url(url, "an explicit registry URL")?,
            origin: "an explicit registry URL".into(),
            scopes: BTreeMap::new(),
            credentials: Vec::new(),
        })
    }

    /// Finds the registry the way npm does (see the module docs), reading the `.npmrc` in
    /// `project_dir` and the user's.
    pub fn discover(project_dir: &Path) -> Result<Self> {
        let env_registry = REGISTRY_ENV_VARS.iter().find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (*name, v))
        });
        let user_config = USERCONFIG_ENV_VARS
            .iter()
            .find_map(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|home| home.join(".npmrc")));
        // Lowest precedence first: later files override earlier ones.
        let mut files = Vec::new();
        for path in user_config.into_iter().chain([project_dir.join(".npmrc")]) {
            match fs_err::read_to_string(&path) {
                Ok(text) => files.push((path, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let lookup = |name: &str| std::env::var(name).ok();
        resolve(env_registry, &files, &lookup, || {
            npm_config_get_registry(project_dir)
        })
    }

    /// The registry serving `package` (its scope's, else the default).
    pub fn url_for(&self, package: &str) -> &Url {
        package
            .split_once('/')
            .filter(|(scope, _)| scope.starts_with('@'))
            .and_then(|(scope, _)| self.scopes.get(scope))
            .unwrap_or(&self.default)
    }

    /// `<registry>/<package>/<version>`: the version document (scoped names encoded as
    /// npm does, `@scope%2fname`).
    pub fn version_url(&self, package: &str, version: &str) -> Result<Url> {
        let base = self.url_for(package);
        let path = format!("{}/{}", package.replace('/', "%2f"), version);
        base.join(&path).map_err(|e| FetchError::InvalidRegistry {
            url: redact_url(base),
            origin: self.origin.clone(),
            reason: format!("cannot append {path:?}: {e}"),
        })
    }

    /// The credential configured for `url`'s registry path, if any (the longest matching
    /// `//host/path/` key, as npm matches them), and only over https: npm's keys name a host
    /// and path but no scheme, so an `http://` tarball URL on the registry's host would
    /// otherwise carry the token in clear text. Plain http to a loopback address (a local
    /// mirror, a test registry) never leaves the machine and keeps it.
    pub(crate) fn credential_for(&self, url: &Url) -> Option<&Credential> {
        if url.scheme() != "https" && !is_loopback(url) {
            return None;
        }
        let nerfed = nerf_dart(url)?;
        self.credentials
            .iter()
            .filter(|(key, _)| nerfed.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, credential)| credential)
    }

    /// The default registry, without credentials, for messages.
    pub fn display_url(&self) -> String {
        redact_url(&self.default)
    }

    /// Which setting the default registry came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Resolves the configuration from its sources, highest precedence first: the environment
/// variable, the `.npmrc` files (lowest precedence first), then `npm` itself.
fn resolve(
    env_registry: Option<(&str, String)>,
    files: &[(PathBuf, String)],
    env: &dyn Fn(&str) -> Option<String>,
    npm: impl FnOnce() -> Option<String>,
) -> Result<Registry> {
    let mut file_registry: Option<(String, String)> = None;
    let mut scopes: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut credentials: BTreeMap<String, Credential> = BTreeMap::new();
    for (path, text) in files {
        let origin = format!("`registry=` in {}", path.display());
        for (key, value) in parse_npmrc(text, env) {
            if key == "registry" {
                file_registry = Some((value, origin.clone()));
            } else if let Some(scope) = key.strip_suffix(":registry").filter(|s| s.starts_with('@'))
            {
                scopes.insert(
                    scope.to_owned(),
                    (value, format!("`{key}=` in {}", path.display())),
                );
            } else if let Some(prefix) = key
                .strip_suffix(":_authToken")
                .filter(|k| k.starts_with("//"))
            {
                credentials.insert(
                    normalize_key(prefix),
                    Credential::Bearer(Secret::new(value)),
                );
            } else if let Some(prefix) = key.strip_suffix(":_auth").filter(|k| k.starts_with("//"))
            {
                credentials.insert(normalize_key(prefix), Credential::Basic(Secret::new(value)));
            }
        }
    }
    let (url, origin) = if let Some((name, value)) = env_registry {
        (value, format!("the {name} environment variable"))
    } else if let Some(found) = file_registry {
        found
    } else if let Some(value) = npm() {
        (value, "`npm config get registry`".to_owned())
    } else {
        let looked: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        return Err(FetchError::NoRegistry {
            detail: format!(
                "looked at {}, .npmrc files [{}] and `npm config get registry` (npm not found or failed)",
                REGISTRY_ENV_VARS.join("/"),
                looked.join(", ")
            ),
        });
    };
    let mut parsed_scopes = BTreeMap::new();
    for (scope, (value, scope_origin)) in scopes {
        parsed_scopes.insert(scope, parse_registry_url(&value, &scope_origin)?);
    }
    Ok(Registry {
        default: parse_registry_url(&url, &origin)?,
        origin,
        scopes: parsed_scopes,
        credentials: credentials.into_iter().collect(),
    })
}

/// Asks npm, which knows its global and built-in configuration too.
fn npm_config_get_registry(project_dir: &Path) -> Option<String> {
    let program = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let output = Command::new(program)
        .args(["config", "get", "registry"])
        .current_dir(project_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let value = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !value.is_empty() && value != "undefined").then_some(value)
}

/// Parses `.npmrc` (ini) lines into key/value pairs with `${VAR}` expanded and quotes
/// removed. Sections, comments and malformed lines are skipped.
fn parse_npmrc(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (expand_env(key.trim(), env), expand_env(value, env))
        })
        .collect()
}

/// npm's `${VAR}` expansion (`\${` escapes it). Unset variables expand to nothing.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('\\') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&env(&rest[start + 2..start + 2 + len]).unwrap_or_default());
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    out
}

/// `//host[:port]/path/` with a trailing slash, the form credential keys are compared in.
fn normalize_key(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// npm's "nerf dart" of a URL: `//host[:port]/path`, no scheme, credentials, query.
fn nerf_dart(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("//{host}{port}{}", url.path()))
}

fn parse_registry_url(value: &str, origin: &str) -> Result<Url> {
    let invalid = |reason: String| FetchError::InvalidRegistry {
        url: value.split_once('@').map_or(value.to_owned(), |(_, host)| {
            format!("<credentials>@{host}")
        }),
        origin: origin.to_owned(),
        reason,
    };
    let value = value.trim();
    let with_slash = if value.ends_with('/') {
        value.to_owned()
    } else {
        format!("{value}/")
    };
    let url = Url::parse(&with_slash).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            "only http and https registries are supported".into(),
        ));
    }
    if url.host_str().is_none() {
        return Err(invalid("no host".into()));
    }
    Ok(url)
}

/// `url` without user name, password, query or fragment, for messages.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`): a local mirror or
/// test server, reached without TLS or a proxy.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "MIRROR" => Some("http://127.0.0.1:4873".into()),
            _ => None,
        }
    }

    #[test]
    fn npmrc_parsing_expands_env_and_strips_quotes() {
        let text = "; comment\n# other\n[section]\nregistry = \"${MIRROR}/npm\"\n\
                    //127.0.0.1:4873/npm/:_authToken=${TOKEN}\nkey='x'\nliteral=\\${TOKEN}\nnot a pair\n";
        let pairs = parse_npmrc(text, &env);
        assert_eq!(
            pairs,
            [
                (
                    "registry".to_owned(),
                    "http://127.0.0.1:4873/npm".to_owned()
                ),
                (
                    "//127.0.0.1:4873/npm/:_authToken".to_owned(),
                    "s3cret".to_owned()
                ),
                ("key".to_owned(), "x".to_owned()),
                ("literal".to_owned(), "${TOKEN}".to_owned()),
            ]
        );
        assert_eq!(expand_env("a${UNSET}b${TOKEN", &env), "ab${TOKEN");
    }

    #[test]
    fn precedence_env_then_project_then_user_then_npm() {
        let user = (
            PathBuf::from("/home/u/.npmrc"),
            "registry=http://127.0.0.1:1/user\n".to_owned(),
        );
        let project = (
            PathBuf::from("/p/.npmrc"),
            "registry=http://127.0.0.1:2/project\n".to_owned(),
        );
        let never = || -> Option<String> { panic!("npm must not be asked") };

        let r = resolve(
            Some(("NPM_CONFIG_REGISTRY", "http://127.0.0.1:3/env".into())),
            &[user.clone(), project.clone()],
            &env,
            never,
        )
        .unwrap();
        assert_eq!(r.display_url(), "http://127.0.0.1:3/env/");
        assert!(r.origin().contains("NPM_CONFIG_REGISTRY"));

        let r = resolve(None, &[user.clone(), project], &env, never).unwrap();
        assert_eq!(r.display_url(), "http://127.0.0.1:2/project/");
        assert!(r.origin().contains("/p/.npmrc"));

        let r = resolve(None, &[user], &env, never).unwrap();
        assert_eq!(r.display_url(), "http://127.0.0.1:1/user/");

        let r = resolve(None, &[], &env, || Some("http://127.0.0.1:4/".into())).unwrap();
        assert_eq!(r.display_url(), "http://127.0.0.1:4/");
        assert!(r.origin().contains("npm config"));

        let err = resolve(None, &[], &env, || None).unwrap_err();
        assert!(matches!(err, FetchError::NoRegistry { .. }));
        assert!(err.to_string().contains("set NPM_CONFIG_REGISTRY"), "{err}");
    }

    /// The registry configured by one `.npmrc` with `text`.
    fn from_npmrc(text: &str) -> Registry {
        resolve(
            None,
            &[(PathBuf::from(".npmrc"), text.to_owned())],
            &env,
            || None,
        )
        .unwrap()
    }

    #[test]
    fn scopes_credentials_and_urls() {
        let r = from_npmrc(
            "registry=http://127.0.0.1:5/npm/\n@corp:registry=http://127.0.0.1:6/corp\n\
             //127.0.0.1:5/npm/:_authToken=${TOKEN}\n//127.0.0.1:6/:_auth=dXNlcjpwdw==\n",
        );
        assert_eq!(
            r.version_url("opencode-linux-x64", "1.2.27")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5/npm/opencode-linux-x64/1.2.27"
        );
        assert_eq!(
            r.version_url("@corp/tool", "2.0.0").unwrap().as_str(),
            "http://127.0.0.1:6/corp/@corp%2ftool/2.0.0"
        );
        assert_eq!(r.url_for("@other/x").as_str(), "http://127.0.0.1:5/npm/");

        let tarball = Url::parse("http://127.0.0.1:5/npm/opencode-linux-x64/-/x.tgz").unwrap();
        assert_eq!(
            r.credential_for(&tarball).unwrap().header_value(),
            "Bearer s3cret"
        );
        let scoped = Url::parse("http://127.0.0.1:6/corp/@corp%2ftool").unwrap();
        assert_eq!(
            r.credential_for(&scoped).unwrap().header_value(),
            "Basic dXNlcjpwdw=="
        );
        let elsewhere = Url::parse("http://127.0.0.1:7/npm/x").unwrap();
        assert!(r.credential_for(&elsewhere).is_none());

        let debug = format!("{r:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("dXNlcjpwdw"),
            "{debug}"
        );
    }

    /// npm's credential keys name no scheme: a token for `//mirror.test/npm/` must still not
    /// go to `http://mirror.test/npm/…` (a tarball URL a registry document can name), where
    /// anyone on the path reads it.
    #[test]
    fn credentials_go_over_https_or_loopback_only() {
        let r = from_npmrc(
            "registry=https://mirror.test/npm/\n//mirror.test/npm/:_authToken=${TOKEN}\n",
        );
        let https = Url::parse("https://mirror.test/npm/opencode-linux-x64/-/x.tgz").unwrap();
        assert_eq!(
            r.credential_for(&https).unwrap().header_value(),
            "Bearer s3cret"
        );
        let clear = Url::parse("http://mirror.test/npm/opencode-linux-x64/-/x.tgz").unwrap();
        assert!(r.credential_for(&clear).is_none());
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        let err = Registry::new("ftp://127.0.0.1/").unwrap_err();
        assert!(matches!(err, FetchError::InvalidRegistry { .. }));
        let err = Registry::new("not a url").unwrap_err();
        assert!(err.to_string().contains("explicit registry URL"), "{err}");
        let url = Url::parse("http://user:pw@127.0.0.1:8/npm/?token=x").unwrap();
        assert_eq!(redact_url(&url), "http://127.0.0.1:8/npm/");
    }
}
