//! Signing and verification of openwork-server-v2 artifacts.
//!
//! - [`macho`]: ad-hoc Apple code signing of Mach-O files with apple-codesign, in pure Rust
//!   so that Linux CI and tests can sign, and a layout check that apple-codesign itself
//!   lacks (it drops bytes appended after `__LINKEDIT` when signing, and its verifier
//!   passes files with bytes appended after the signature).
//! - [`mod@identify`]: what an executable is and whether it carries a signature, for tests and
//!   for inspecting finished artifacts.
//!
//! The command line lives in `main.rs` only; everything here is callable from tests without
//! a process. Certificate signing, Authenticode and notarization come later, behind the
//! same kind of functions.
#![deny(missing_docs)]

pub mod error;
pub mod identify;
pub mod key;
pub mod macho;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use identify::{Identity, SignatureState, identify};
pub use macho::{check_macho_layout, sign_adhoc, sign_adhoc_file, verify};
