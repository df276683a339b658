//! How a local command knows that what answers is the server that wrote `server.json`,
//! before it sends that server a token.
//!
//! `server.json` names the running server's port; after an unclean stop (SIGKILL, a crash)
//! it stays behind and names a port that anyone on the machine may bind next. `pair` used
//! to send the host token to whatever answered there. Now every start makes a fresh random
//! key, writes it into `server.json` (0600, in the 0700 data dir: only the user reads it)
//! and keeps it in memory; a local command sends a random nonce to `GET /system/identity`,
//! and sends its token only when the answer is the HMAC-SHA256 of that nonce under the key
//! it read. A squatter can't compute it (it can't read the file); a previous server's key
//! proves nothing about the next one (a new key each start); and the HMAC of a nonce the
//! client chose tells the world nothing about the key. A pid that no longer runs is caught
//! before any connection is made ([`crate::process::is_alive`]), and the next start removes
//! the stale file ([`super::ServerFile::remove_if_stale`]).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a key and of a nonce.
pub const LEN: usize = 32;
/// Bound into every proof, so that a proof is good for this purpose only.
const CONTEXT: &[u8] = b"openwork-server-v2 identity v1\n";

/// This server process's key (never logged: `Debug` hides it).
#[derive(Clone)]
pub struct IdentityKey([u8; LEN]);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey([redacted])")
    }
}

impl IdentityKey {
    /// A new random key.
    pub fn generate() -> IdentityKey {
        IdentityKey(random_bytes())
    }

    /// The key as `server.json` holds it: 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key read from `server.json`; `None` if it is not 64 hex digits.
    pub fn from_hex(text: &str) -> Option<IdentityKey> {
        let bytes: [u8; LEN] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(IdentityKey(bytes))
    }

    /// The proof for `nonce`: HMAC-SHA256 under this key of a fixed context and the nonce.
    pub fn prove(&self, nonce: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(nonce);
        mac.finalize().into_bytes().into()
    }

    /// Whether `proof` is the proof for `nonce` (compared in constant time).
    pub fn verify(&self, nonce: &[u8], proof: &[u8]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(nonce);
        mac.verify_slice(proof).is_ok()
    }
}

/// A random nonce for a challenge.
pub fn nonce() -> [u8; LEN] {
    random_bytes()
}

fn random_bytes() -> [u8; LEN] {
    use rand::TryRngCore;
    let mut bytes = [0u8; LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator works");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_proves_and_each_start_has_its_own() {
        let key = IdentityKey::generate();
        let nonce = nonce();
        let proof = key.prove(&nonce);
        let read_back = IdentityKey::from_hex(&key.to_hex()).unwrap();
        assert!(read_back.verify(&nonce, &proof));
        assert!(!read_back.verify(&super::nonce(), &proof), "another nonce");
        let next_start = IdentityKey::generate();
        assert!(!next_start.verify(&nonce, &proof), "another key");
        assert!(!read_back.verify(&nonce, &proof[..31]), "a cut proof");
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(IdentityKey::from_hex(bad).is_none(), "{bad}");
        }
    }
}
