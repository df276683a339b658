//! Pairing codes: how a device that has nothing gets its own token, with the host's
//! explicit approval.
//!
//! The host (holding the host token) asks for a code; the person types it on the device,
//! which sends it to `POST /pair` and receives a token of its own. A code is:
//!
//! - **short and typeable**: 8 characters from a 32-letter alphabet without look-alikes
//!   (no `0 O 1 I`), shown as `ABCD-EFGH`; case, spaces and dashes are ignored when typed;
//! - **single use**, and only one is pending at a time (a new one replaces it);
//! - **valid for 5 minutes** ([`CODE_TTL`]);
//! - **burned by [`MAX_WRONG_GUESSES`] wrong guesses**: 40 bits with 5 guesses per code the
//!   host approved leaves a LAN attacker a 2^-37 chance, and each burn is logged.
//!
//! Only the code's SHA-256 is kept, compared in constant time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a code stays valid (tests shorten it with `OPENWORK_SERVER_V2_PAIRING_TTL_MS`).
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// Wrong guesses that burn the pending code.
pub const MAX_WRONG_GUESSES: u32 = 5;
/// Characters of a code: 32 letters and digits, none easily mistaken for another.
const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Characters per code (5 bits each: 40 bits).
const CODE_LEN: usize = 8;

/// The pending code, if any.
#[derive(Debug)]
pub struct Pairing {
    ttl: Duration,
    pending: Mutex<Option<Pending>>,
}

#[derive(Debug)]
struct Pending {
    digest: [u8; 32],
    expires: Instant,
    wrong: u32,
}

/// A code just issued.
#[derive(Debug)]
pub struct IssuedCode {
    /// As shown to the person: `ABCD-EFGH`.
    pub code: String,
    /// How long it stays valid.
    pub valid_for: Duration,
}

/// Why a code was not accepted. The client is told only that it was refused; the log says
/// why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No code is pending (never issued, used, or burned).
    NoCode,
    /// The pending code is too old (it is dropped).
    Expired,
    /// Wrong; this many more wrong guesses burn the code.
    Wrong {
        /// Guesses left.
        left: u32,
    },
    /// Wrong, and that was the last guess: the code is burned.
    Burned,
}

impl Refusal {
    /// For the log.
    pub fn describe(self) -> String {
        match self {
            Refusal::NoCode => "no pairing code is pending".into(),
            Refusal::Expired => "the pairing code expired".into(),
            Refusal::Wrong { left } => {
                format!("wrong pairing code ({left} more wrong guesses burn it)")
            }
            Refusal::Burned => format!(
                "wrong pairing code: {MAX_WRONG_GUESSES} wrong guesses burned it; the host must ask for a new one"
            ),
        }
    }
}

impl Pairing {
    /// No code pending; codes will live for `ttl`.
    pub fn new(ttl: Duration) -> Pairing {
        Pairing {
            ttl,
            pending: Mutex::new(None),
        }
    }

    /// A new code, replacing any pending one.
    pub fn issue(&self) -> IssuedCode {
        let raw = random_code();
        *self.lock() = Some(Pending {
            digest: digest(&raw),
            expires: Instant::now() + self.ttl,
            wrong: 0,
        });
        IssuedCode {
            code: format!("{}-{}", &raw[..CODE_LEN / 2], &raw[CODE_LEN / 2..]),
            valid_for: self.ttl,
        }
    }

    /// Takes `typed` as the pending code: on success the code is used up.
    pub fn redeem(&self, typed: &str) -> Result<(), Refusal> {
        let mut pending = self.lock();
        let Some(code) = pending.as_mut() else {
            return Err(Refusal::NoCode);
        };
        if Instant::now() >= code.expires {
            *pending = None;
            return Err(Refusal::Expired);
        }
        if bool::from(digest(&normalize(typed)).ct_eq(&code.digest)) {
            *pending = None;
            return Ok(());
        }
        code.wrong += 1;
        if code.wrong >= MAX_WRONG_GUESSES {
            *pending = None;
            return Err(Refusal::Burned);
        }
        Err(Refusal::Wrong {
            left: MAX_WRONG_GUESSES - code.wrong,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a person typed, as the code it means: upper case, without spaces and dashes.
fn normalize(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

fn random_code() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; CODE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator works");
    // 256 is a multiple of 32: every letter is equally likely.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_typeable_single_use_and_forgiving_about_case_and_dashes() {
        let pairing = Pairing::new(CODE_TTL);
        let issued = pairing.issue();
        assert_eq!(issued.code.len(), CODE_LEN + 1);
        assert_eq!(&issued.code[4..5], "-");
        assert!(
            issued
                .code
                .bytes()
                .all(|b| b == b'-' || ALPHABET.contains(&b))
        );
        let typed = issued.code.to_ascii_lowercase().replace('-', " ");
        assert_eq!(pairing.redeem(&typed), Ok(()));
        assert_eq!(pairing.redeem(&issued.code), Err(Refusal::NoCode), "used");
    }

    #[test]
    fn wrong_guesses_burn_the_code() {
        let pairing = Pairing::new(CODE_TTL);
        let issued = pairing.issue();
        for left in (1..MAX_WRONG_GUESSES).rev() {
            assert_eq!(pairing.redeem("2222-2222"), Err(Refusal::Wrong { left }));
        }
        assert_eq!(pairing.redeem("2222-2222"), Err(Refusal::Burned));
        assert_eq!(pairing.redeem(&issued.code), Err(Refusal::NoCode));
    }

    #[test]
    fn an_old_code_expires_and_a_new_one_replaces_it() {
        let pairing = Pairing::new(Duration::ZERO);
        let issued = pairing.issue();
        assert_eq!(pairing.redeem(&issued.code), Err(Refusal::Expired));
        let pairing = Pairing::new(CODE_TTL);
        let old = pairing.issue();
        let new = pairing.issue();
        if old.code != new.code {
            assert_eq!(
                pairing.redeem(&old.code),
                Err(Refusal::Wrong {
                    left: MAX_WRONG_GUESSES - 1
                })
            );
        }
        assert_eq!(pairing.redeem(&new.code), Ok(()));
    }
}
