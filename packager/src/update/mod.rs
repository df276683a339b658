//! `update-repo`: the publisher's side of the update channel.
//!
//! A repository directory (TUF 1.0 with consistent snapshots, in the layout
//! `openwork_update_format` defines) is created once (`init`, with the offline root keys),
//! extended by each release (`publish`: the artifacts, the stubs, the sidecars compressed
//! and as deltas from the last N releases, then new targets, snapshot and timestamp),
//! kept fresh (`timestamp`: the short-lived timestamp re-signed on a schedule), and its keys
//! changed (`rotate-root`). Every command writes new files first, each through a temp file
//! and a rename, and `timestamp.json` last: clients start from it, so until it is renamed
//! into place they see the repository as it was, and a crash leaves nothing half-written
//! that any client reads. A re-run after a crash writes the same targets again and
//! replaces the unreferenced metadata the crashed run left.
//!
//! - [`keys`]: the keys configuration and its key sources (PEM, PKCS#11, a command).
//! - [`repo`]: reading and writing the repository.
//! - [`publish`]: what a release adds, deltas included.

pub mod keys;
pub mod publish;
pub mod repo;

use std::path::PathBuf;

use openwork_payload::ExitCode;
use openwork_update_format::metadata::Role;

/// What can go wrong publishing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The keys configuration is wrong.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A secret the keys configuration names is not there.
    #[error("the {role} key: {reason}")]
    MissingSecret {
        /// The role.
        role: Role,
        /// Which reference (never a value).
        reason: String,
    },
    /// A key that cannot sign (wrong type, unreadable, not the one the root names).
    #[error("the {role} key: {reason}")]
    Key {
        /// The role.
        role: Role,
        /// Why.
        reason: String,
    },
    /// Credentials refused (a wrong PIN).
    #[error("the {role} key: {reason}")]
    Credentials {
        /// The role.
        role: Role,
        /// Why.
        reason: String,
    },
    /// The repository is not in a state this command can extend.
    #[error("the repository {}: {reason}", dir.display())]
    Repository {
        /// Its directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Metadata or contents that do not verify, or that could not be signed.
    #[error(transparent)]
    Format(#[from] openwork_update_format::Error),
    /// An artifact that cannot be published.
    #[error(transparent)]
    Payload(#[from] openwork_payload::Error),
    /// I/O (fs-err errors name their path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl UpdateError {
    /// The documented exit code.
    pub fn exit_code(&self) -> ExitCode {
        use openwork_update_format::Error as F;
        match self {
            UpdateError::Config { .. } | UpdateError::Key { .. } => ExitCode::BadInput,
            UpdateError::MissingSecret { .. } | UpdateError::Credentials { .. } => {
                ExitCode::Credentials
            }
            UpdateError::Repository { .. } => ExitCode::BadInput,
            UpdateError::Format(F::Sign { .. }) => ExitCode::Credentials,
            UpdateError::Format(_) => ExitCode::Integrity,
            UpdateError::Payload(e) => e.kind().into(),
            UpdateError::Io(_) => ExitCode::Io,
        }
    }
}
