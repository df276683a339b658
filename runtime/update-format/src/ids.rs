//! The names metadata, keys and errors share: a role and a key ID. A module of its own so
//! that errors can name them without depending on the modules that read metadata.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Lists every role's keys and thresholds; signed offline.
    Root,
    /// Lists the target files.
    Targets,
    /// Pins the version of targets.json.
    Snapshot,
    /// Pins the version of snapshot.json; re-signed often, expires soon.
    Timestamp,
}

impl Role {
    /// The four roles.
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

    /// `root`, `targets`, `snapshot`, `timestamp`: the `_type` and the file name's stem.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    /// The role's file name for `version` with consistent snapshots: `<version>.<role>.json`,
    /// except the timestamp, which has one name (clients start from it).
    pub fn file_name(self, version: u64) -> String {
        match self {
            Role::Timestamp => "timestamp.json".into(),
            other => format!("{version}.{}.json", other.name()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key ID: lower-case hex SHA-256 of the key's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
