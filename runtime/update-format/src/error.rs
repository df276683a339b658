//! What can be wrong with a repository, a role file or a download, with the fields a
//! caller or a test matches on.

use crate::ids::{KeyId, Role};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the shape of the role.
    #[error("the {role} metadata cannot be read: {reason}")]
    Parse {
        /// Which role.
        role: Role,
        /// serde's message.
        reason: String,
    },
    /// Something with no canonical form (a float).
    #[error("the metadata has no canonical JSON form: {reason}")]
    NotCanonical {
        /// serde's message.
        reason: String,
    },
    /// A well-formedness rule broken.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was read.
        what: String,
        /// What rule it breaks.
        reason: String,
    },
    /// A key that cannot be used.
    #[error("{key} cannot be used: {reason}")]
    BadKey {
        /// Which key (an ID or a description).
        key: String,
        /// Why.
        reason: String,
    },
    /// Fewer valid signatures of the role's keys than its threshold: signed by another key,
    /// tampered after signing, or not signed at all.
    #[error(
        "the {role} metadata has {valid} valid signature(s) from the {role} keys of root \
         version {root_version}, and needs {threshold}: it was signed by other keys or changed \
         after signing"
    )]
    Threshold {
        /// Which role.
        role: Role,
        /// The root whose keys were used.
        root_version: u64,
        /// Distinct keys whose signatures held.
        valid: u64,
        /// How many are needed.
        threshold: u64,
    },
    /// An older version than the one already trusted: a rollback attack, or a mirror
    /// serving stale files.
    #[error(
        "the {role} metadata offered is version {offered}, older than version {trusted} \
         already trusted: refusing a rollback"
    )]
    Rollback {
        /// Which role (for the snapshot's and timestamp's pins: the role pinned).
        role: Role,
        /// The trusted version.
        trusted: u64,
        /// The offered one.
        offered: u64,
    },
    /// A version other than the one the signing role pins (mix-and-match of files from
    /// two releases), or a root that is not the next.
    #[error("the {role} metadata is version {found}, and {pinned_by} says version {expected}")]
    VersionMismatch {
        /// Which role.
        role: Role,
        /// What pinned it (`the timestamp`, `the snapshot`, `the file name`).
        pinned_by: &'static str,
        /// The pinned version.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// Expired metadata: a freeze attack, or a repository nobody re-signed.
    #[error(
        "the {role} metadata (version {version}) expired at {expires}; it is now {now}: the \
         repository is frozen or was not re-signed in time"
    )]
    Expired {
        /// Which role.
        role: Role,
        /// Its version.
        version: u64,
        /// When it expired (RFC 3339).
        expires: String,
        /// The time of the check (RFC 3339).
        now: String,
    },
    /// Bytes that do not hash to what signed metadata names.
    #[error("{what} does not match the signed metadata: sha256 {computed}, expected {expected}")]
    HashMismatch {
        /// What was checked.
        what: String,
        /// The signed hash.
        expected: String,
        /// The computed hash.
        computed: String,
    },
    /// More or fewer bytes than signed metadata names, or more than a limit.
    #[error("{what} is {found} bytes; {expected}")]
    Length {
        /// What was checked.
        what: String,
        /// The length seen (at least).
        found: u64,
        /// What was expected, in words (`the metadata says 12`, `at most 1048576`).
        expected: String,
    },
    /// A role that pins another lacks the entry.
    #[error("the {role} metadata does not list {entry}")]
    Missing {
        /// The pinning role.
        role: Role,
        /// The missing entry.
        entry: String,
    },
    /// A key source that failed to sign (the writer's side).
    #[error("signing the {role} metadata with key {key} failed: {reason}")]
    Sign {
        /// Which role.
        role: Role,
        /// Which key.
        key: KeyId,
        /// Why.
        reason: String,
    },
    /// The repository could not be read.
    #[error("{file}: {source}")]
    Fetch {
        /// Which file.
        file: String,
        /// What the transport said.
        #[source]
        source: FetchError,
    },
    /// The trusted state could not be saved.
    #[error("cannot save the trusted {file}: {source}")]
    Store {
        /// Which file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A delta or compressed content that does not decode to what the metadata says.
    #[error("{what} does not decode: {reason}")]
    Decode {
        /// What was decoded.
        what: String,
        /// Why not.
        reason: String,
    },
}

/// `Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a fetch failed (what a [`crate::client::Fetch`] transport returns).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The file is longer than the limit (an endless or oversized download).
    #[error("longer than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Anything else (connection, status, I/O), in the transport's words.
    #[error("{0}")]
    Transport(String),
}
