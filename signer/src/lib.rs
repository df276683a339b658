//! Signing and verification of openwork-server-v2 artifacts (docs/SIGNING.md).
//!
//! - [`sign`]: the entry point: a [`config::SigningConfig`] (TOML, secrets by
//!   [`secret`] reference) loaded into [`sign::Signers`], which sign a file by its format.
//! - [`mod@verify`]: any of our executables checked by its format, with the payload inside.
//! - [`authenticode`]: Authenticode for PE files, natively (digest, PKCS#7, RFC 3161 time
//!   stamp, checksum) and its verification.
//! - [`macho`]: Apple code signing through apple-codesign (certificate or ad hoc, hardened
//!   runtime, [`entitlements`], secure time stamp), with the layout and signature checks
//!   apple-codesign lacks (it drops bytes after `__LINKEDIT` when signing, and its verifier
//!   passes files with bytes appended after the signature).
//! - [`notarize`]: Apple notarization behind a trait: `xcrun notarytool`, and a fake that
//!   applies Apple's rules for tests.
//! - [`azure`]: Azure Artifact Signing, a remote Authenticode key (Entra ID credentials,
//!   sign and poll, the service's certificate chain).
//! - [`notary_api`]: notarization from any OS through Apple's Notary REST API (the same
//!   [`notarize::Notarizer`] trait), so a release can notarize on Linux.
//! - [`key`]: where keys come from (PEM, PKCS#12, PKCS#11), one [`key::SigningIdentity`]
//!   for every signer; [`external`]: a signing command instead (signtool, jsign, …).
//! - [`secret_file`]: a secret written to a file for a tool that reads only files, removed
//!   on every exit path (signals included) and swept at the next run after a SIGKILL.
//! - [`timestamp`]: the RFC 3161 client and token verification.
//! - [`mod@identify`]: what an executable is and whether it carries a signature.
//! - `testing` (feature `testing`): a throwaway PKI and an in-process time-stamp authority.
//!
//! The command line lives in `main.rs` only; everything here is callable from tests without
//! a process.
#![deny(missing_docs)]
#![deny(clippy::disallowed_methods)]

pub mod authenticode;
pub mod azure;
mod chain;
pub mod config;
pub mod entitlements;
pub mod error;
pub mod external;
pub mod identify;
pub mod key;
pub mod macho;
pub mod notarize;
pub mod notary_api;
pub mod secret;
pub mod secret_file;
pub mod sign;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timestamp;
pub mod verify;

pub use error::{Error, Result};
pub use identify::{Identity, SignatureState, identify};
pub use macho::{
    MachOPolicy, MachOSignOptions, MachOVerified, check_macho_layout, sign_adhoc, sign_adhoc_file,
    sign_with_identity, sign_with_identity_file, verify, verify_macho,
};
