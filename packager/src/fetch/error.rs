//! Errors of `fetch`. Each names what it was working on (URL, path, expected and computed
//! digests) and says what to do about it.

use openwork_payload::ExitCode;
use std::io;
use std::path::PathBuf;

/// What went wrong while fetching a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The requested version is not a plain version number.
    #[error("invalid version {version:?}: expected a version such as 1.2.27 or v1.2.27")]
    InvalidVersion {
        /// What was asked for.
        version: String,
    },

    /// No target of that name in `targets/`.
    #[error("unknown target {name:?}; known targets: {known}")]
    UnknownTarget {
        /// What was asked for.
        name: String,
        /// The names in the target table.
        known: String,
    },

    /// No registry is configured anywhere we look.
    #[error(
        "no npm registry configured: set NPM_CONFIG_REGISTRY to your registry or mirror URL \
         (or `registry=` in the project's or your ~/.npmrc); {detail}"
    )]
    NoRegistry {
        /// Where we looked.
        detail: String,
    },

    /// A configured registry URL does not parse.
    #[error("invalid npm registry URL {url:?} from {origin}: {reason}; fix that setting")]
    InvalidRegistry {
        /// The value found (credentials removed).
        url: String,
        /// Which setting it came from.
        origin: String,
        /// Why it is not usable.
        reason: String,
    },

    /// The cache lacks the file and downloading is forbidden.
    #[error(
        "{what} is not in the cache at {} and offline mode forbids downloading it; \
         run once without --offline (with network) to fill the cache",
        path.display()
    )]
    Offline {
        /// The package and version.
        what: String,
        /// Where it would be.
        path: PathBuf,
    },

    /// The request failed (after retries, if it was worth retrying).
    #[error(
        "GET {url} failed after {attempts} attempt(s): {detail}; check the network, HTTPS_PROXY \
         and (for npm) NPM_CONFIG_REGISTRY or (for github) OPENWORK_GITHUB_RELEASES_URL"
    )]
    Http {
        /// The URL (credentials removed).
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        detail: String,
    },

    /// The registry answered with an HTTP error that retrying does not fix.
    #[error("GET {url} answered HTTP {status}{hint}")]
    HttpStatus {
        /// The URL (credentials removed).
        url: String,
        /// The status code.
        status: u16,
        /// What to do about it.
        hint: &'static str,
    },

    /// The registry does not know that package version.
    #[error(
        "the npm registry has no {package}@{version} (GET {url} answered 404); check the pinned version in constants.json and the registry setting"
    )]
    VersionNotFound {
        /// Package name.
        package: String,
        /// Version asked for.
        version: String,
        /// The version document's URL (credentials removed).
        url: String,
    },

    /// The version document is not what an npm registry serves.
    #[error(
        "unexpected version document from {url}: {detail}; is the registry setting an npm registry?"
    )]
    BadMetadata {
        /// The document's URL (credentials removed).
        url: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The downloaded tarball does not match `dist.integrity`.
    #[error(
        "integrity mismatch for {url}: expected {expected}, computed {computed}; the download \
         was corrupted or altered on the way (proxy, mirror); nothing was cached, try again or \
         check the registry"
    )]
    IntegrityMismatch {
        /// The tarball URL (credentials removed).
        url: String,
        /// From the version document.
        expected: String,
        /// Of the bytes received.
        computed: String,
    },

    /// The tarball lacks the executable.
    #[error(
        "{source_name}'s tarball has no {member}; the package layout changed, the fetch code needs updating"
    )]
    MissingMember {
        /// `npm:<package>@<version>`.
        source_name: String,
        /// The path looked for (`<top>/bin/opencode[.exe]`).
        member: String,
    },

    /// The executable is not for the requested target.
    #[error(
        "{member} from {source_name} is {found}, but target {target} needs {expected}; the \
         package does not match the target (check targets/{target}.json)"
    )]
    WrongBinary {
        /// `npm:<package>@<version>`.
        source_name: String,
        /// The path in the tarball.
        member: String,
        /// Target name.
        target: String,
        /// The target's format and architecture.
        expected: String,
        /// What goblin says the file is.
        found: String,
    },

    /// The executable does not hash to the pinned SHA-256.
    #[error(
        "sha256 mismatch for {what}: expected {expected} (pinned), computed {computed}; what \
         arrived differs from the pin: update the pin only if the change is expected"
    )]
    Sha256Mismatch {
        /// `npm:<package>@<version>`.
        what: String,
        /// The pin.
        expected: String,
        /// Of the executable.
        computed: String,
    },

    /// An input that nothing pinned: no entry in `inputs.lock.json` for its target and
    /// version, and no `--sha256`.
    #[error(
        "refusing {what} for {target}: inputs.lock.json pins no such input, so nothing \
         vouches for its content (a registry's integrity field comes from the same place as \
         the bytes); run `openwork-packager lock` and review its diff to pin the versions in \
         constants.json, pass --sha256 to pin this one, or pass --allow-unpinned to accept it \
         unchecked (a local experiment, never a release)"
    )]
    Unverified {
        /// The source (`npm:…`, `github:…`, `url:…`, `file:…`).
        what: String,
        /// Target name.
        target: String,
    },

    /// The registry announces other bytes than `inputs.lock.json` locked.
    #[error(
        "{what} for {target}: the registry announces {field} {found}, but inputs.lock.json \
         locked {locked}; the registry, a mirror or an .npmrc serves other bytes than were \
         locked, so nothing was downloaded; if the change is expected, run \
         `openwork-packager lock` and review its diff"
    )]
    LockMismatch {
        /// `npm:<package>@<version>`.
        what: String,
        /// Target name.
        target: String,
        /// Which property differs (`integrity`).
        field: &'static str,
        /// What the lock says.
        locked: String,
        /// What the registry says.
        found: String,
    },

    /// A download larger than the lock or the packager's ceiling allows, or of another size
    /// than the lock says; nothing past the limit was written.
    #[error(
        "{url} is not within the {limit} bytes allowed ({reason}); nothing past the limit \
         was written and nothing was cached"
    )]
    TooLarge {
        /// The URL (credentials removed).
        url: String,
        /// The most that was allowed.
        limit: u64,
        /// Where the limit came from.
        reason: String,
    },

    /// An archive that cannot be extracted safely or holds no single executable.
    #[error("{what}: {detail}; refusing to extract it")]
    BadArchive {
        /// The source (`github:…`, `url:…`, `file:…`).
        what: String,
        /// What is wrong with it (names the member).
        detail: String,
    },

    /// A URL given on the command line or in the environment that cannot be used.
    #[error("invalid URL {url:?} ({origin}): {reason}")]
    InvalidUrl {
        /// The value (credentials removed).
        url: String,
        /// Where it came from.
        origin: String,
        /// Why it is not usable.
        reason: String,
    },

    /// The cache holds this version, but not in a form this request may use, and offline
    /// mode forbids replacing it.
    #[error(
        "the cached {} cannot serve {what}: {reason}; run without --offline to fetch it \
         again, or ask for the source it came from",
        path.display()
    )]
    CacheUnusable {
        /// The request's source.
        what: String,
        /// The cache entry's directory.
        path: PathBuf,
        /// Why the entry does not do.
        reason: String,
    },

    /// A cache entry failed verification; it has been removed.
    #[error(
        "the cached {} is damaged ({detail}) and was removed; run without --offline to fetch it again",
        path.display()
    )]
    CacheCorrupt {
        /// The cache entry's directory.
        path: PathBuf,
        /// What did not verify.
        detail: String,
    },

    /// File-system error on a path named by the message.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// File-system error from `fs-err`, whose message already names the path.
    #[error(transparent)]
    FsIo(#[from] io::Error),
}

/// `Result` with [`FetchError`].
pub type Result<T, E = FetchError> = std::result::Result<T, E>;

/// Attaches an action and a path to an `io::Error`.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.into();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

impl FetchError {
    /// The packager's documented exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            FetchError::InvalidVersion { .. } | FetchError::UnknownTarget { .. } => ExitCode::Usage,
            FetchError::MissingMember { .. }
            | FetchError::Unverified { .. }
            | FetchError::BadArchive { .. } => ExitCode::BadInput,
            FetchError::InvalidUrl { .. } => ExitCode::Usage,
            FetchError::NoRegistry { .. }
            | FetchError::InvalidRegistry { .. }
            | FetchError::Offline { .. }
            | FetchError::CacheUnusable { .. }
            | FetchError::Http { .. }
            | FetchError::HttpStatus { .. }
            | FetchError::VersionNotFound { .. }
            | FetchError::BadMetadata { .. } => ExitCode::Network,
            FetchError::IntegrityMismatch { .. }
            | FetchError::LockMismatch { .. }
            | FetchError::TooLarge { .. }
            | FetchError::Sha256Mismatch { .. }
            | FetchError::CacheCorrupt { .. } => ExitCode::Integrity,
            FetchError::WrongBinary { .. } => ExitCode::WrongTarget,
            FetchError::Io { .. } | FetchError::FsIo(_) => ExitCode::Io,
        }
    }
}

impl From<crate::version::InvalidVersion> for FetchError {
    fn from(e: crate::version::InvalidVersion) -> Self {
        FetchError::InvalidVersion { version: e.version }
    }
}
