//! The runtime of `openwork-server-v2`: finding the payload, and keeping an intact,
//! versioned runtime directory of its sidecars.
//!
//! - [`source`]: where the payload comes from (bundle directory, bundle beside the
//!   executable, or embedded), in that order.
//! - [`layout`]: the data directory's layout, defined once.
//! - [`install`]: the extraction protocol (warm check, lock, temp dir, verify, rename).
//! - [`stamp`]: the completion stamp that makes warm starts cheap.
//! - [`lock`]: OS file locks and leases, which a crash always releases.
//! - [`gc`]: removal of unused runtimes and abandoned temp directories.
//! - [`trust`]: what on disk is trusted (ours, private), and creating files safely.
//! - [`workspace`]: the active workspace, switchable at run time and remembered.
//! - [`remote`]: remote access: TLS, pairing, per-device tokens, LAN discovery.
//! - [`env_vars`]: the documented environment (exit codes are shared with the packager:
//!   [`openwork_payload::ExitCode`]).
//!
//! The command-line layer lives in the binary (`src/main.rs`, `src/cli/`); everything here
//! can be called from tests without a process.

pub mod env_vars;
pub mod error;
pub mod gc;
pub mod http;
pub mod install;
pub mod layout;
pub mod lock;
pub mod process;
pub mod remote;
pub mod serve;
pub mod source;
pub mod stamp;
pub mod supervisor;
pub mod trust;
pub mod workspace;

pub use error::{Error, Result};
pub use openwork_payload::ExitCode;

/// This server's version, which keys its runtime directories (the one version there is:
/// see [`openwork_payload::SERVER_VERSION`]).
pub const SERVER_VERSION: &str = openwork_payload::SERVER_VERSION;
