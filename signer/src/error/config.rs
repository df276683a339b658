//! The signing configuration (`signing.toml`) and the command line, where they are wrong.

use std::path::PathBuf;

use super::{BoxError, CredentialsError};

/// The signing configuration is wrong: what, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read (fs-err names it).
    #[error("{source}")]
    Read {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not this configuration's fields.
    #[error("{}: {}", path.display(), source.to_string().trim_end())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error (it shows the line).
        #[source]
        source: toml::de::Error,
    },
    /// A problem in the named configuration file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: Box<ConfigError>,
    },
    /// Certificates the configuration or command line names that cannot be read.
    #[error("{whose}: {source}")]
    Certificates {
        /// Which (`the trusted code-signing CAs`, a file).
        whose: String,
        /// Why (boxed: credentials errors are the largest of this crate's).
        #[source]
        source: Box<CredentialsError>,
    },
    /// Not exactly one key source in a section.
    #[error(
        "[{section}] needs exactly one key source: pkcs12 (+ password), key (+ certificate), \
         pkcs11 = {{ … }}, azure-artifact-signing = {{ … }} or command = [ … ]; {given} given"
    )]
    KeySources {
        /// The section.
        section: String,
        /// How many were given.
        given: usize,
    },
    /// A field that belongs to another key source.
    #[error("[{section}] {field} belongs with {with} only")]
    Stray {
        /// The section.
        section: String,
        /// The field.
        field: &'static str,
        /// The key source it belongs to.
        with: &'static str,
    },
    /// A key source without what it needs.
    #[error("[{section}] {needs}")]
    Incomplete {
        /// The section.
        section: String,
        /// What it needs, and an example.
        needs: &'static str,
    },
    /// A PKCS#11 key ID that is not hex.
    #[error("[{section}] pkcs11 key-id \"{id}\" is not hex")]
    KeyIdNotHex {
        /// The section.
        section: String,
        /// The value.
        id: String,
    },
    /// An Azure account or profile name with other characters.
    #[error("{field}: \"{value}\" is not a name (letters, digits and -)")]
    NotAName {
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// A URL that is not http(s).
    #[error("{field}: \"{url}\" is not an http(s) URL")]
    NotHttpUrl {
        /// The field.
        field: String,
        /// The value.
        url: String,
    },
    /// Azure Artifact Signing named for Apple code signing.
    #[error(
        "[codesign] azure-artifact-signing signs Windows files only; Apple code signing needs \
         a Developer ID certificate (pkcs12, key or pkcs11)"
    )]
    AzureForCodesign,
    /// Azure Artifact Signing asked to sign a file that is not PE.
    #[error("Azure Artifact Signing signs Windows files only")]
    AzureWindowsOnly,
    /// `timestamp = false` with a `timestamp-url`.
    #[error("codesign: timestamp = false and a timestamp-url contradict each other")]
    TimestampContradiction,
    /// `[notarize]` without `[codesign]`.
    #[error(
        "{}: [notarize] needs a [codesign] section: Apple notarizes only files signed with a \
         Developer ID certificate",
        path.display()
    )]
    NotarizeWithoutCodesign {
        /// The file.
        path: PathBuf,
    },
    /// Not a secret reference.
    #[error(
        "\"{text}\" is not a secret reference; write env:NAME, file:PATH or base64:env:NAME \
         (secrets themselves never go into the configuration)"
    )]
    SecretReference {
        /// What was written.
        text: String,
    },
    /// Time stamping without a URL.
    #[error("time stamping is on but no time-stamp URL is configured")]
    NoTimestampUrl,
    /// An Authenticode URL that is not ASCII.
    #[error(
        "the signature's URL {url:?} must be ASCII (Authenticode stores it as an IA5String); \
         percent-encode it"
    )]
    UrlNotAscii {
        /// The URL.
        url: String,
    },
    /// The PKCS#11 module cannot be loaded.
    #[error("cannot load the PKCS#11 module {module} ({source})")]
    Pkcs11Module {
        /// Its path.
        module: String,
        /// The loader's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// The signing command is not installed.
    #[error("the signing command \"{program}\" was not found; install it or give its full path")]
    CommandNotFound {
        /// The program.
        program: String,
    },
    /// The signing command cannot be started.
    #[error("cannot run the signing command \"{program}\": {source}")]
    CommandStart {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An empty signing command.
    #[error(
        "the signing command is empty; give the program and its arguments, with {{file}} \
         where the file to sign goes"
    )]
    EmptyCommand,
    /// A signing command that would not sign the file.
    #[error(
        "the signing command {command:?} has no {{file}} placeholder, so it would not sign the \
         file; put {{file}} where the file's path goes"
    )]
    NoFilePlaceholder {
        /// The command.
        command: Vec<String>,
    },
    /// A placeholder that is not `{file}` or `{out}`.
    #[error(
        "the signing command argument \"{arg}\" has the unknown placeholder {{{name}}}; the \
         placeholders are {{file}} and {{out}} ({{{{ and }}}} are literal braces)"
    )]
    UnknownPlaceholder {
        /// The argument.
        arg: String,
        /// The placeholder's name.
        name: String,
    },
    /// Mach-O signing without an identifier.
    #[error("no code signing identifier: give one (codesign uses the executable's file name)")]
    NoIdentifier,
    /// Entitlements that are not a plist.
    #[error("{whose} are not a valid plist: {source}")]
    Entitlements {
        /// `the entitlements` or `the expected entitlements`.
        whose: &'static str,
        /// The plist parser's error.
        #[source]
        source: BoxError,
    },
    /// A time-stamp URL apple-codesign does not take.
    #[error("time-stamp authority URL {url:?}: {source}")]
    TimestampUrl {
        /// The URL.
        url: String,
        /// apple-codesign's error.
        #[source]
        source: BoxError,
    },
    /// `--adhoc` with several files.
    #[error("--adhoc signs one file")]
    AdhocOneFile,
}
