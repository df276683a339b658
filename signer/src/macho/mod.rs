//! Apple code signing of thin Mach-O files, ad-hoc ([`sign_adhoc`]) or with a certificate
//! ([`sign_with_identity`]), and their verification ([`verify_macho`]).
//!
//! An ad-hoc signature is a code directory (page hashes of the file up to the signature)
//! without a certificate. arm64 macOS refuses to run unsigned code, so every Mach-O we
//! ship or test is at least ad-hoc signed; releases are signed with a certificate, the
//! hardened runtime, per-binary entitlements ([`crate::entitlements`]) and a secure
//! timestamp, which is what notarization requires.
//!
//! apple-codesign is used because it signs from any OS. What it gets wrong is covered here:
//!
//! - it silently drops bytes that follow `__LINKEDIT` (a payload appended there would
//!   vanish): [`check_macho_layout`] refuses such input before signing;
//! - it re-encodes the certificates it embeds, which breaks ECDSA certificates: they are
//!   put back as issued after signing;
//! - its verifier passes bytes appended after the signature or hidden in the signature's
//!   padding, and never checks that the CMS signature is over the code directory, nor any
//!   chain, flag, entitlement or timestamp: [`verify_macho`] does.
//!
//! Universal (fat) files are refused although apple-codesign could sign them: we ship one
//! thin file per target, and every check here (layout, padding, restored certificates)
//! would have to be made per slice and for the fat header too.
//!
//! | module | concern | uses |
//! |---|---|---|
//! | `layout` | parsing a thin Mach-O; `__LINKEDIT` and the signature last, nothing after | — |
//! | `bun` | the stale tail `bun build --compile` leaves after its signature | `layout` |
//! | `superblob` | the embedded signature's SuperBlob, read and rewritten blob by blob | — |
//! | `repair` | certificates put back as issued after apple-codesign signed | `layout`, `superblob` |
//! | `sign` | ad-hoc and certificate signing, in memory and file to file | `layout`, `repair` |
//! | `verify` | [`MachOPolicy`] and what apple-codesign's verifier does not check | `layout` |
//!
//! Dependencies point one way, down the table: nothing a row uses uses it back.

mod bun;
mod layout;
mod repair;
mod sign;
mod superblob;
mod verify;

pub use apple_codesign::CodeSignatureFlags;
/// The certificate type of [`MachOPolicy`]'s roots, re-exported so that callers need no
/// dependency of their own.
pub use x509_certificate::CapturedX509Certificate;

pub use bun::stale_tail;
pub use layout::check_macho_layout;
pub use sign::{
    MachOSignOptions, sign_adhoc, sign_adhoc_file, sign_with_identity, sign_with_identity_file,
};
pub use verify::{MachOPolicy, MachOVerified, verify, verify_macho};

#[cfg(test)]
pub(crate) mod tests;
