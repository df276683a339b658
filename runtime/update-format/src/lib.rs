//! The update channel of openwork-server-v2, defined once for its writer (`openwork-packager
//! update-repo`) and its reader (the server's `update` commands).
//!
//! An update repository is a directory of static files in the layout of
//! [The Update Framework](https://theupdateframework.github.io/specification/v1.0.33/)
//! 1.0 with consistent snapshots, so that any HTTPS host or object store serves it and
//! `tough`/`tuftool` read it:
//!
//! ```text
//! metadata/1.root.json  2.root.json …      root: the keys of every role (offline key)
//! metadata/<v>.targets.json                 targets: every file, its length, SHA-256, and our custom data
//! metadata/<v>.snapshot.json                snapshot: the version (length, hash) of targets.json
//! metadata/timestamp.json                   timestamp: the version (length, hash) of snapshot.json; short-lived
//! targets/<sha256>.<name>                   the files, content-addressed
//! ```
//!
//! Why TUF and not a signed list of our own: its roles defeat the attacks a signed list
//! does not (rollback to an older signed list, a frozen mirror that keeps serving an
//! expired one, mix-and-match of files from two releases, one stolen online key signing
//! anything), and a tool anyone can install (`tuftool`) can audit a repository we publish.
//!
//! - [`cjson`]: the OLPC canonical JSON that signatures cover.
//! - [`ids`]: the role and key-ID names the others share.
//! - [`key`]: ECDSA P-256 public keys in TUF's `ecdsa` form, key IDs, signature checks.
//! - [`metadata`]: the four roles, their signed envelopes, signing them.
//! - [`client`]: the client's checks of TUF's "detailed client workflow", in order, on a
//!   trusted state that is only ever replaced by metadata that passed every check.
//! - [`custom`]: what each target is for us (which release and platform, full artifact,
//!   sidecar, delta, stub), in the target's `custom` object.
//! - [`delta`]: the delta encoding (zstd with the old content as a reference prefix and a
//!   long window) and the compressed full contents, with their bounds.
//!
//! This crate knows nothing of async runtimes, HTTP or command lines (the server fetches,
//! the packager writes files); the client workflow takes its I/O through two small traits.
//! docs/UPDATES.md is the human description, including the measured figures.
#![deny(missing_docs)]

pub mod cjson;
pub mod client;
pub mod custom;
pub mod delta;
pub mod error;
pub mod ids;
pub mod key;
pub mod metadata;

pub use client::{Fetch, FetchError, Limits, Store, TrustedState};
pub use custom::{Content, Kind, ReleaseId, UpdateTarget};
pub use error::{Error, Result};
pub use key::{KeyId, PublicKey};
pub use metadata::{Role, RoleKeys, Root, Signed, Snapshot, Target, Targets, Timestamp};

/// The TUF specification version this crate writes, and the major version it reads.
pub const SPEC_VERSION: &str = "1.0.0";

/// Where the metadata files are, relative to the repository's root (tuftool's layout).
pub const METADATA_DIR: &str = "metadata";
/// Where the target files are, relative to the repository's root.
pub const TARGETS_DIR: &str = "targets";
