//! Test support (feature `testing`): a throwaway PKI made at test time, an in-process
//! RFC 3161 time-stamp authority and a stand-in for the Azure Artifact Signing service,
//! both on the workspace's one test HTTP server ([`http`], from `openwork-testkit`). Never
//! compiled into release binaries.

pub mod azure;
pub mod pki;
pub mod tsa;

pub use openwork_testkit::http;

/// The largest request body the stand-ins read; larger ones are answered 413.
const MAX_BODY: usize = 1024 * 1024;

pub use pki::{KeyKind, TestPki};

use sha2::{Digest, Sha256};

/// Deterministic incompressible bytes (SHA-256 in counter mode over `seed`): overlays and
/// payloads that keep their size through zstd and differ by seed.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut hasher = Sha256::new();
        hasher.update(seed.as_bytes());
        hasher.update(counter.to_le_bytes());
        out.extend_from_slice(&hasher.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}
