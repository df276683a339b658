//! Test support (feature `testing`): a throwaway PKI made at test time and an in-process
//! RFC 3161 time-stamp authority. Never compiled into release binaries.

pub mod pki;
pub mod tsa;

pub use pki::{KeyKind, TestPki};
