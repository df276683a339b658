//! Pairing codes and the exchanges run over them: how a device that has nothing gets its own
//! token, with the host's explicit approval, even through a LAN with an attacker on it.
//!
//! The host (holding the host token) asks for a code; the person types it on the device (or
//! scans it in a [`PairingUrl`]), which runs the exchange of [`super::pake`] over it:
//! `POST /pair/start` ([`Pairing::start`]) and `POST /pair/finish` ([`Pairing::finish`]). A
//! code is:
//!
//! - **short and typeable**: 8 characters from a 32-letter alphabet without look-alikes
//!   (no `0 O 1 I`), shown as `ABCD-EFGH`; case, spaces and dashes are ignored when typed;
//! - **single use**, and only one is pending at a time (a new one replaces it); a used,
//!   replaced, expired or burned code ends every exchange begun with it;
//! - **valid for 5 minutes** ([`CODE_TTL`]);
//! - **guessed at a bounded rate, per source**: each source (an IPv4 address, or an IPv6
//!   /64, which one host can fill) has [`MAX_WRONG_GUESSES`] wrong guesses per code and is
//!   then refused for that code, while every other source keeps its own budget: one peer
//!   can no longer burn the code for everyone. All sources together have
//!   [`GLOBAL_WRONG_GUESSES`]; the last one burns the code. 40 bits against 4,096 guesses
//!   leaves an attacker who controls that many addresses 4,096 / 2^40 ≈ 2^-28 (1 in 270
//!   million) per code the host approved.
//! - **never spent by an input error**: a malformed message, a bad device name, an unknown
//!   or expired session cost nothing. Only a well-formed confirmation that is wrong is a
//!   guess.
//!
//! Exchanges in progress ("sessions") are bounded: [`SESSIONS_PER_SOURCE`] per source and
//! [`SESSIONS_TOTAL`] in all (the oldest gives way), each for [`SESSION_TTL`], and each
//! takes one confirmation. They are not guesses: without a confirmation a session reveals
//! nothing about the code.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pake::{self, Confirm, Message, MessageError, Transcript};

/// How long a code stays valid (tests shorten it with `OPENWORK_SERVER_V2_PAIRING_TTL_MS`).
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// Wrong guesses each source has per code.
pub const MAX_WRONG_GUESSES: u32 = 5;
/// Wrong guesses from all sources together that burn the code: enough for 819 sources to
/// spend their whole budgets, few enough that the odds stay at 2^-28 (see the module).
pub const GLOBAL_WRONG_GUESSES: u32 = 4096;
/// How long a started exchange waits for its confirmation. A device sends it right after
/// the first answer; a minute covers a slow phone on a bad link.
pub const SESSION_TTL: Duration = Duration::from_secs(60);
/// Exchanges in progress per source: a device needs one; a few cover retries.
pub const SESSIONS_PER_SOURCE: usize = 4;
/// Exchanges in progress in all. Each holds about 200 bytes.
pub const SESSIONS_TOTAL: usize = 256;
/// Characters of a code: 32 letters and digits, none easily mistaken for another.
const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Characters per code (5 bits each: 40 bits).
const CODE_LEN: usize = 8;

/// The bounds above, in one value (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// [`MAX_WRONG_GUESSES`].
    pub wrong_per_source: u32,
    /// [`GLOBAL_WRONG_GUESSES`].
    pub wrong_total: u32,
    /// [`SESSIONS_PER_SOURCE`].
    pub sessions_per_source: usize,
    /// [`SESSIONS_TOTAL`].
    pub sessions_total: usize,
    /// [`SESSION_TTL`].
    pub session_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wrong_per_source: MAX_WRONG_GUESSES,
            wrong_total: GLOBAL_WRONG_GUESSES,
            sessions_per_source: SESSIONS_PER_SOURCE,
            sessions_total: SESSIONS_TOTAL,
            session_ttl: SESSION_TTL,
        }
    }
}

/// Where guesses come from, for their budget: an IPv4 address, or the /64 of an IPv6 one
/// (a host is given a whole /64 and picks addresses in it at will). An IPv4 address mapped
/// into IPv6 (a dual-stack listener) counts as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source a connection from `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// The pending code and its exchanges, if any.
#[derive(Debug)]
pub struct Pairing {
    ttl: Duration,
    limits: Limits,
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    /// Normalised (see [`pake::normalize`]): the SPAKE2 password.
    code: String,
    expires: Instant,
    wrong_total: u32,
    /// Wrong guesses per source; only sources that guessed wrong are here, so it holds at
    /// most `wrong_total` entries.
    wrong: HashMap<Source, u32>,
    /// Oldest first.
    sessions: VecDeque<Session>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the code.
        f.debug_struct("Pending")
            .field("expires", &self.expires)
            .field("wrong_total", &self.wrong_total)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

struct Session {
    id: String,
    source: Source,
    expires: Instant,
    transcript: Transcript,
}

/// A code just issued.
#[derive(Debug)]
pub struct IssuedCode {
    /// As shown to the person: `ABCD-EFGH`.
    pub code: String,
    /// How long it stays valid.
    pub valid_for: Duration,
}

/// An exchange begun: the session's id and the server's SPAKE2 message.
#[derive(Debug)]
pub struct Started {
    /// Names the session in `POST /pair/finish` (32 hex digits).
    pub session: String,
    /// `msgB`.
    pub msg_b: Message,
}

/// Why a code was not accepted. The client is told only that it was refused; the log says
/// why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No code is pending (never issued, used, replaced or burned).
    NoCode,
    /// The pending code is too old (it is dropped).
    Expired,
    /// This source has used its wrong guesses for this code.
    OutOfGuesses,
    /// A wrong confirmation: the code differs, or the device saw another certificate (a
    /// relay). This many more wrong guesses from the same source are allowed.
    Wrong {
        /// Guesses this source has left.
        left: u32,
    },
    /// A wrong confirmation that reached the global cap: the code is burned.
    Burned {
        /// Wrong guesses in all.
        wrong: u32,
        /// Sources they came from.
        sources: usize,
    },
}

impl Refusal {
    /// Its kind: the log lines of each kind are limited in rate apart.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::NoCode => "pairing refused (no code pending)",
            Refusal::Expired => "pairing refused (code expired)",
            Refusal::OutOfGuesses => "pairing refused (address out of guesses)",
            Refusal::Wrong { .. } => "pairing refused (wrong guess)",
            Refusal::Burned { .. } => "pairing refused (code burned)",
        }
    }

    /// For the log (never the code).
    pub fn describe(self) -> String {
        match self {
            Refusal::NoCode => "no pairing code is pending".into(),
            Refusal::Expired => "the pairing code expired".into(),
            Refusal::OutOfGuesses => format!(
                "this address has used its {MAX_WRONG_GUESSES} wrong guesses for the pending code; it is refused until the host issues a new one"
            ),
            Refusal::Wrong { left: 0 } => format!(
                "wrong pairing code or another certificate seen (a relay?); that was this address's last of {MAX_WRONG_GUESSES} wrong guesses for this code"
            ),
            Refusal::Wrong { left } => format!(
                "wrong pairing code or another certificate seen (a relay?); {left} more wrong guesses from this address are allowed"
            ),
            Refusal::Burned { wrong, sources } => format!(
                "pairing code burned: {wrong} wrong guesses from {sources} addresses; someone on the network is guessing; the host must ask for a new code"
            ),
        }
    }
}

/// Why `POST /pair/start` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The code cannot be used (the client sees one uniform refusal).
    Refused(Refusal),
    /// `msgA` is malformed: an input error, no guess.
    BadMessage(MessageError),
}

/// Why `POST /pair/finish` failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FinishError<E> {
    /// The code cannot be used, or the confirmation was wrong.
    Refused(Refusal),
    /// No session with this id from this source: never started, expired, already
    /// confirmed, or its code was used, replaced or burned. No guess.
    UnknownSession,
    /// The confirmation was right but pairing itself failed; the code stays pending.
    NotPaired(E),
}

impl Pairing {
    /// No code pending; codes will live for `ttl`.
    pub fn new(ttl: Duration) -> Pairing {
        Pairing::with_limits(ttl, Limits::default())
    }

    /// [`Pairing::new`] with other bounds (tests).
    pub fn with_limits(ttl: Duration, limits: Limits) -> Pairing {
        Pairing {
            ttl,
            limits,
            pending: Mutex::new(None),
        }
    }

    /// A new code, replacing any pending one (and ending its exchanges).
    pub fn issue(&self) -> IssuedCode {
        let raw = random_code();
        *self.lock() = Some(Pending {
            code: raw.clone(),
            expires: Instant::now() + self.ttl,
            wrong_total: 0,
            wrong: HashMap::new(),
            sessions: VecDeque::new(),
        });
        IssuedCode {
            code: format!("{}-{}", &raw[..CODE_LEN / 2], &raw[CODE_LEN / 2..]),
            valid_for: self.ttl,
        }
    }

    /// Begins an exchange for `source` with its `msgA`, for a server whose certificate has
    /// `fingerprint` (`None` without TLS). Costs no guess.
    pub fn start(
        &self,
        source: Source,
        msg_a: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<Started, StartError> {
        let mut guard = self.lock();
        let pending = live(&mut guard).map_err(StartError::Refused)?;
        if pending.out_of_guesses(source, &self.limits) {
            return Err(StartError::Refused(Refusal::OutOfGuesses));
        }
        let (transcript, msg_b) =
            pake::respond(&pending.code, fingerprint, msg_a).map_err(StartError::BadMessage)?;
        let now = Instant::now();
        pending.sessions.retain(|s| s.expires > now);
        let of_source = pending
            .sessions
            .iter()
            .filter(|s| s.source == source)
            .count();
        if of_source >= self.limits.sessions_per_source
            && let Some(oldest) = pending.sessions.iter().position(|s| s.source == source)
        {
            pending.sessions.remove(oldest);
        }
        if pending.sessions.len() >= self.limits.sessions_total {
            pending.sessions.pop_front();
        }
        let session = format!("{:032x}", rand::random::<u128>());
        pending.sessions.push_back(Session {
            id: session.clone(),
            source,
            expires: now + self.limits.session_ttl,
            transcript,
        });
        Ok(Started { session, msg_b })
    }

    /// Takes `source`'s confirmation for `session`. A right one calls `pair` (adding the
    /// device) and, when that succeeds, uses the code up and returns what `pair` returned
    /// with the server's confirmation; when `pair` fails the code stays pending. A wrong one
    /// is one guess for `source`. The session ends either way.
    pub fn finish<T, E>(
        &self,
        source: Source,
        session: &str,
        confirm: &Confirm,
        pair: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, Confirm), FinishError<E>> {
        let mut guard = self.lock();
        let pending = live(&mut guard).map_err(FinishError::Refused)?;
        let now = Instant::now();
        pending.sessions.retain(|s| s.expires > now);
        let Some(at) = pending
            .sessions
            .iter()
            .position(|s| s.id == session && s.source == source)
        else {
            return Err(FinishError::UnknownSession);
        };
        let Some(ended) = pending.sessions.remove(at) else {
            return Err(FinishError::UnknownSession);
        };
        // Checked again here: the source may have spent its budget on other sessions
        // since this one started.
        if pending.out_of_guesses(source, &self.limits) {
            return Err(FinishError::Refused(Refusal::OutOfGuesses));
        }
        if ended.transcript.verify_client(confirm) {
            let paired = pair().map_err(FinishError::NotPaired)?;
            *guard = None;
            return Ok((paired, ended.transcript.server_confirm()));
        }
        pending.wrong_total += 1;
        let wrong = pending.wrong.entry(source).or_insert(0);
        *wrong += 1;
        let left = self.limits.wrong_per_source.saturating_sub(*wrong);
        if pending.wrong_total >= self.limits.wrong_total {
            let burned = Refusal::Burned {
                wrong: pending.wrong_total,
                sources: pending.wrong.len(),
            };
            *guard = None;
            return Err(FinishError::Refused(burned));
        }
        Err(FinishError::Refused(Refusal::Wrong { left }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pending {
    fn out_of_guesses(&self, source: Source, limits: &Limits) -> bool {
        self.wrong.get(&source).copied().unwrap_or(0) >= limits.wrong_per_source
    }
}

/// The pending code if it is still valid; an expired one is dropped.
fn live(pending: &mut Option<Pending>) -> Result<&mut Pending, Refusal> {
    match pending {
        None => Err(Refusal::NoCode),
        Some(code) if Instant::now() >= code.expires => {
            *pending = None;
            Err(Refusal::Expired)
        }
        Some(code) => Ok(code),
    }
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

/// The pairing URL, for a QR code: everything a device needs in one string.
///
/// `openwork://<address>/pair?code=<code>&fingerprint=<64 hex>[&also=<address>…]`, where
/// each address is `host:port` with an IP literal (`192.168.1.20:43117`,
/// `[fd00::1]:43117`): phones resolve `.local` names unreliably. `also` lists other
/// addresses of the same server (percent-encoded), to try when the first does not answer.
/// `code` and `fingerprint` are optional when parsing (a bare `host:port` is a target
/// too); a device that has the fingerprint pins it and still runs the same exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingUrl {
    /// Where the server listens, `host:port`, in order of preference (at least one).
    pub addresses: Vec<String>,
    /// The code, as shown (`ABCD-EFGH`).
    pub code: Option<String>,
    /// The certificate's SHA-256, 64 hex digits.
    pub fingerprint: Option<String>,
}

/// The URL's scheme and path.
const URL_SCHEME: &str = "openwork://";
const URL_PATH: &str = "/pair";
/// Addresses a URL carries at most (the QR code grows with each).
pub const URL_MAX_ADDRESSES: usize = 4;
/// What is percent-encoded in a query value: everything but letters, digits and `-._~:`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

impl std::fmt::Display for PairingUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.addresses.first().map_or("", String::as_str);
        write!(f, "{URL_SCHEME}{first}{URL_PATH}")?;
        let params = self
            .code
            .iter()
            .map(|code| ("code", code))
            .chain(self.fingerprint.iter().map(|fp| ("fingerprint", fp)))
            .chain(
                self.addresses
                    .iter()
                    .skip(1)
                    .take(URL_MAX_ADDRESSES - 1)
                    .map(|also| ("also", also)),
            );
        for (at, (key, value)) in params.enumerate() {
            let separator = if at == 0 { '?' } else { '&' };
            let value = percent_encoding::utf8_percent_encode(value, QUERY_VALUE);
            write!(f, "{separator}{key}={value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PairingUrl {
    type Err = String;

    /// An `openwork://…/pair?…` URL, or a bare `host:port`.
    fn from_str(text: &str) -> Result<PairingUrl, String> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix(URL_SCHEME) else {
            check_address(text)?;
            return Ok(PairingUrl {
                addresses: vec![text.to_string()],
                code: None,
                fingerprint: None,
            });
        };
        let (authority, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query),
            None => (rest, ""),
        };
        let authority = authority
            .strip_suffix(URL_PATH)
            .or_else(|| authority.strip_suffix("/"))
            .unwrap_or(authority);
        check_address(authority)?;
        let mut url = PairingUrl {
            addresses: vec![authority.to_string()],
            code: None,
            fingerprint: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("the URL's {key} is not UTF-8"))?
                .into_owned();
            match key {
                "code" => url.code = Some(value),
                "fingerprint" => url.fingerprint = Some(value),
                "also" => {
                    check_address(&value)?;
                    url.addresses.push(value);
                }
                // Later versions may add parameters; an older client ignores them.
                _ => {}
            }
        }
        Ok(url)
    }
}

/// A `host:port` a device can connect to: a port, and a host (IP literal, `[IPv6]` or name).
fn check_address(address: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{address:?} is not host:port (e.g. 192.168.1.20:43117, or the openwork://…/pair?code=… URL that `openwork-server-v2 pair` prints)"
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| {
            ip.split('%')
                .next()
                .unwrap_or_default()
                .parse::<Ipv6Addr>()
                .is_ok()
        })
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if host_ok && port.parse::<u16>().is_ok_and(|p| p != 0) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::pake::ClientStart;

    const FP: &str = "3b1f5e0c9d2a4b6c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";

    fn source(ip: &str) -> Source {
        Source::of(ip.parse().unwrap())
    }

    /// One whole exchange from `from` with `typed`; `Ok` when the device was paired (and the
    /// server's confirmation checked out).
    fn exchange(pairing: &Pairing, from: Source, typed: &str) -> Result<(), FinishError<()>> {
        let (client, msg_a) = ClientStart::new(typed, Some(FP));
        let started = pairing.start(from, &msg_a, Some(FP)).map_err(|e| match e {
            StartError::Refused(r) => FinishError::Refused(r),
            StartError::BadMessage(e) => panic!("{e}"),
        })?;
        let transcript = client.finish(&started.msg_b).unwrap();
        let ((), server) =
            pairing.finish(from, &started.session, &transcript.client_confirm(), || {
                Ok::<(), ()>(())
            })?;
        assert!(transcript.verify_server(&server));
        Ok(())
    }

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
        let ana = source("192.0.2.7");
        assert_eq!(exchange(&pairing, ana, &typed), Ok(()));
        assert_eq!(
            exchange(&pairing, ana, &issued.code),
            Err(FinishError::Refused(Refusal::NoCode)),
            "used"
        );
    }

    #[test]
    fn each_source_has_its_own_budget_and_others_still_pair() {
        let pairing = Pairing::new(CODE_TTL);
        let issued = pairing.issue();
        let wrong = if issued.code.starts_with('2') {
            "3333-3333"
        } else {
            "2222-2222"
        };
        let guesser = source("192.0.2.66");
        for left in (0..MAX_WRONG_GUESSES).rev() {
            assert_eq!(
                exchange(&pairing, guesser, wrong),
                Err(FinishError::Refused(Refusal::Wrong { left }))
            );
        }
        // Out of guesses: refused even with the right code, and before any arithmetic.
        assert_eq!(
            exchange(&pairing, guesser, &issued.code),
            Err(FinishError::Refused(Refusal::OutOfGuesses))
        );
        // The same /64 is the same source; another address is not.
        let v6 = source("2001:db8:1:2::10");
        assert_eq!(v6, source("2001:db8:1:2:ffff::1"));
        assert_ne!(v6, source("2001:db8:1:3::10"));
        assert_eq!(
            source("::ffff:192.0.2.66"),
            guesser,
            "IPv4 mapped into IPv6"
        );
        assert_eq!(v6.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            exchange(&pairing, source("192.0.2.7"), &issued.code),
            Ok(())
        );
    }

    #[test]
    fn the_global_cap_burns_the_code() {
        let limits = Limits {
            wrong_total: 7,
            ..Limits::default()
        };
        let pairing = Pairing::with_limits(CODE_TTL, limits);
        let issued = pairing.issue();
        let wrong = if issued.code.starts_with('2') {
            "3333-3333"
        } else {
            "2222-2222"
        };
        for n in 0..6u8 {
            let from = source(&format!("192.0.2.{n}"));
            assert!(matches!(
                exchange(&pairing, from, wrong),
                Err(FinishError::Refused(Refusal::Wrong { left: 4 }))
            ));
        }
        assert_eq!(
            exchange(&pairing, source("192.0.2.99"), wrong),
            Err(FinishError::Refused(Refusal::Burned {
                wrong: 7,
                sources: 7
            }))
        );
        assert_eq!(
            exchange(&pairing, source("192.0.2.100"), &issued.code),
            Err(FinishError::Refused(Refusal::NoCode)),
            "burned for everyone"
        );
    }

    #[test]
    fn input_errors_and_failed_saves_spend_nothing() {
        let pairing = Pairing::with_limits(
            CODE_TTL,
            Limits {
                wrong_per_source: 1,
                ..Limits::default()
            },
        );
        let issued = pairing.issue();
        let ana = source("192.0.2.7");
        // Malformed messages, an unknown session, a session from another address.
        for bad in [&[0x41u8; 3][..], &[0x42; 33], &[0u8; 40]] {
            assert!(matches!(
                pairing.start(ana, bad, Some(FP)),
                Err(StartError::BadMessage(_))
            ));
        }
        let (client, msg_a) = ClientStart::new(&issued.code, Some(FP));
        let started = pairing.start(ana, &msg_a, Some(FP)).unwrap();
        let transcript = client.finish(&started.msg_b).unwrap();
        let confirm = transcript.client_confirm();
        let ok = || Ok::<(), ()>(());
        assert_eq!(
            pairing.finish(ana, "feed", &confirm, ok),
            Err(FinishError::UnknownSession)
        );
        assert_eq!(
            pairing.finish(source("192.0.2.8"), &started.session, &confirm, ok),
            Err(FinishError::UnknownSession),
            "a session answers only the address that started it"
        );
        // The right confirmation, but the device could not be saved: the code stays.
        assert_eq!(
            pairing.finish(ana, &started.session, &confirm, || Err::<(), _>(
                "disk full"
            )),
            Err(FinishError::NotPaired("disk full"))
        );
        assert_eq!(
            pairing.finish(ana, &started.session, &confirm, ok),
            Err(FinishError::UnknownSession),
            "one confirmation per session"
        );
        // With a budget of one guess, all of the above cost nothing.
        assert_eq!(exchange(&pairing, ana, &issued.code), Ok(()));
    }

    #[test]
    fn sessions_are_bounded_and_end_with_their_code() {
        let pairing = Pairing::with_limits(
            CODE_TTL,
            Limits {
                sessions_per_source: 2,
                sessions_total: 3,
                ..Limits::default()
            },
        );
        let issued = pairing.issue();
        let start = |from: Source| {
            let (client, msg_a) = ClientStart::new(&issued.code, Some(FP));
            let started = pairing.start(from, &msg_a, Some(FP)).unwrap();
            let confirm = client.finish(&started.msg_b).unwrap().client_confirm();
            (started.session, confirm)
        };
        let ok = || Ok::<(), ()>(());
        let (a, b, c) = (
            source("192.0.2.1"),
            source("192.0.2.2"),
            source("192.0.2.3"),
        );
        let a1 = start(a);
        let a2 = start(a);
        let _a3 = start(a);
        assert_eq!(
            pairing.finish(a, &a1.0, &a1.1, ok),
            Err(FinishError::UnknownSession),
            "a source's oldest session gives way"
        );
        let b1 = start(b);
        let c1 = start(c);
        assert_eq!(
            pairing.finish(a, &a2.0, &a2.1, ok),
            Err(FinishError::UnknownSession),
            "the oldest of all gives way"
        );
        assert!(pairing.finish(b, &b1.0, &b1.1, ok).is_ok());
        assert_eq!(
            pairing.finish(c, &c1.0, &c1.1, ok),
            Err(FinishError::Refused(Refusal::NoCode)),
            "a used code ends every session"
        );
    }

    #[test]
    fn an_old_code_expires_and_a_new_one_replaces_it() {
        let pairing = Pairing::new(Duration::ZERO);
        let issued = pairing.issue();
        let ana = source("192.0.2.7");
        assert_eq!(
            exchange(&pairing, ana, &issued.code),
            Err(FinishError::Refused(Refusal::Expired))
        );
        let pairing = Pairing::new(CODE_TTL);
        let old = pairing.issue();
        let (client, msg_a) = ClientStart::new(&old.code, Some(FP));
        let started = pairing.start(ana, &msg_a, Some(FP)).unwrap();
        let confirm = client.finish(&started.msg_b).unwrap().client_confirm();
        let new = pairing.issue();
        assert_eq!(
            pairing.finish(ana, &started.session, &confirm, || Ok::<(), ()>(())),
            Err(FinishError::UnknownSession),
            "a replaced code ends its sessions"
        );
        assert_eq!(exchange(&pairing, ana, &new.code), Ok(()));
    }

    #[test]
    fn a_pairing_url_round_trips_with_ip_literals_and_alternatives() {
        let url = PairingUrl {
            addresses: vec![
                "192.168.1.20:43117".into(),
                "[fd00::1]:43117".into(),
                "10.0.0.5:43117".into(),
            ],
            code: Some("7KQ4-M2XH".into()),
            fingerprint: Some(FP.into()),
        };
        let text = url.to_string();
        assert_eq!(
            text,
            format!(
                "openwork://192.168.1.20:43117/pair?code=7KQ4-M2XH&fingerprint={FP}&also=%5Bfd00::1%5D:43117&also=10.0.0.5:43117"
            )
        );
        assert_eq!(text.parse::<PairingUrl>().unwrap(), url);
        let bare: PairingUrl = "myhost.local:43117".parse().unwrap();
        assert_eq!(bare.addresses, ["myhost.local:43117"]);
        assert_eq!(bare.code, None);
        for bad in [
            "",
            "host",
            "host:0",
            "host:port",
            "openwork://[zz]:1/pair",
            "a b:1",
        ] {
            let err = bad.parse::<PairingUrl>().unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }
}
