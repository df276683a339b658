//! The payload format of openwork-server-v2, defined once for its writer (the packager)
//! and its reader (the runtime).
//!
//! A packed executable is a stub plus one *region*:
//!
//! ```text
//! [ zstd frames: tar of the sidecars ][ manifest JSON ][ 0-7 zero bytes ][ trailer, 128 bytes ]
//! ```
//!
//! - [`trailer`]: the fixed-size trailer and its byte layout.
//! - [`manifest`]: the JSON table of contents, also used by bundle and runtime directories.
//! - [`region`]: building and validating a region given its bounds.
//! - [`archive`]: the deterministic tar + zstd frames inside the region, and safe extraction
//!   with inline hashing, decoding frames in parallel.
//! - [`container`]: where ELF, PE and Mach-O keep the region, one module each behind the
//!   same two functions, `region_bounds` and `inject`.
//! - [`targets`]: the target table from `targets/`.
//! - [`exit_code`]: the exit codes every openwork binary documents.
//!
//! This crate knows nothing of async runtimes, HTTP or command lines, so that the packager,
//! the runtime and fuzz targets can all use it. The byte layout is documented for humans in
//! `docs/FORMAT.md`.
#![deny(missing_docs)]

pub mod archive;
pub mod container;
pub mod error;
pub mod exit_code;
pub mod manifest;
pub mod region;
pub mod targets;
pub mod trailer;

pub use container::{Arch, BinaryInfo, ExecutableFormat};
pub use error::{Error, ErrorKind, Result};
pub use exit_code::ExitCode;
pub use manifest::{FileEntry, Manifest};
pub use region::PayloadRegion;
pub use trailer::Trailer;

/// The openwork-server-v2 version: the workspace's Cargo version, the one version there is.
/// The packager writes it into manifests (`serverVersion`) and the runtime reports it and
/// keys its runtime directories by it, both from this constant.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
