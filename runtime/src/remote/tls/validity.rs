//! How long a generated certificate is valid, when it is renewed, and how a certificate's
//! validity is read (x509-cert: the RustCrypto DER parser, already in the tree).
//!
//! | rule | value | why |
//! |---|---|---|
//! | valid from | 24 hours before it is made ([`BACKDATE`]) | a client whose clock is behind the host's (a phone on another time zone's misconfigured clock: up to 14 hours, plus margin) must not see a certificate that is "not yet valid" the moment it was renewed |
//! | valid until | 365 days after it is made ([`Timings::lifetime`]) | about a year, so a stolen key stops being accepted by clients that check dates, and well inside what Apple platforms accept for any TLS server certificate (825 days; 398 for public CAs) |
//! | renewed | with less than 30 days left ([`Timings::renew_before`]), checked at start and every minute ([`Timings::check_every`]) | a server runs for months: it must renew itself, not wait for a restart, and leave a month for devices that come back rarely to follow |
//! | also renewed | a validity longer than the policy allows (today's older certificates: 1975 to 4096), or one that has not begun yet | every generated certificate follows the policy after one start |
//!
//! Pinning clients ignore dates (they check the fingerprint); `curl --cacert`, browsers
//! and phone TLS stacks that trust the certificate as a CA check them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_cert::der::Decode;

/// How far before the moment it is made a generated certificate becomes valid.
pub const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
/// A validity longer than the policy by more than this is not ours (and is renewed).
const TOLERANCE: Duration = Duration::from_secs(24 * 60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The certificate policy's timings: the defaults, or shorter ones for tests (the hidden
/// `--tls-timings` flag: `lifetime_ms=…,renew_before_ms=…,check_ms=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a generated certificate is valid after it is made.
    pub lifetime: Duration,
    /// A generated certificate with less than this left is renewed.
    pub renew_before: Duration,
    /// How often a running server checks (and picks up a certificate `tls rotate` made).
    pub check_every: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            lifetime: 365 * DAY,
            renew_before: 30 * DAY,
            check_every: Duration::from_secs(60),
        }
    }
}

impl Timings {
    /// Parses `key=milliseconds` pairs separated by commas (`lifetime_ms`,
    /// `renew_before_ms`, `check_ms`); keys not given keep their defaults.
    pub fn from_flag_value(value: &str) -> Result<Timings, String> {
        let mut timings = Timings::default();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, ms) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=milliseconds"))?;
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| format!("`{pair}`: not a whole number of milliseconds"))?;
            let slot = match key.trim() {
                "lifetime_ms" => &mut timings.lifetime,
                "renew_before_ms" => &mut timings.renew_before,
                "check_ms" => &mut timings.check_every,
                other => {
                    return Err(format!(
                        "unknown key `{other}`; use lifetime_ms, renew_before_ms or check_ms"
                    ));
                }
            };
            *slot = Duration::from_millis(ms);
        }
        if timings.check_every.is_zero() {
            return Err("check_ms must be at least 1".into());
        }
        Ok(timings)
    }

    /// Whether a generated certificate with this validity is kept at `now`, or renewed
    /// (and why, for the log).
    pub fn verdict(&self, validity: &Validity, now: SystemTime) -> Verdict {
        let longest = self.lifetime + BACKDATE + TOLERANCE;
        let span = validity
            .not_after
            .duration_since(validity.not_before)
            .unwrap_or_default();
        if span > longest {
            return Verdict::Renew(format!(
                "it is valid from {} to {}, longer than the {} days of a certificate this server makes",
                date(validity.not_before),
                date(validity.not_after),
                (self.lifetime + BACKDATE).as_secs().div_ceil(DAY.as_secs())
            ));
        }
        if validity.not_before > now {
            return Verdict::Renew(format!(
                "it is not valid before {} (was the clock set back?)",
                date(validity.not_before)
            ));
        }
        match validity.not_after.duration_since(now) {
            Err(_) => Verdict::Renew(format!("it expired on {}", date(validity.not_after))),
            Ok(left) if left < self.renew_before => Verdict::Renew(format!(
                "it expires on {}, in less than the {} left at which it is renewed",
                date(validity.not_after),
                human(self.renew_before)
            )),
            Ok(_) => Verdict::Keep,
        }
    }

    /// For a certificate that is never replaced here (the user's): what to tell the user
    /// when it has less than [`Timings::renew_before`] left, has expired, or is not valid
    /// yet (`expires on …`); `None` when it is fine.
    pub fn expiring(&self, validity: &Validity, now: SystemTime) -> Option<String> {
        if validity.not_before > now {
            return Some(format!("is not valid before {}", date(validity.not_before)));
        }
        match validity.not_after.duration_since(now) {
            Err(_) => Some(format!("expired on {}", date(validity.not_after))),
            Ok(left) if left < self.renew_before => {
                Some(format!("expires on {}", date(validity.not_after)))
            }
            Ok(_) => None,
        }
    }
}

/// What to do with a generated certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It follows the policy and has time left.
    Keep,
    /// Replace it; the reason, for the log.
    Renew(String),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this.
    pub not_before: SystemTime,
    /// Not valid after this.
    pub not_after: SystemTime,
}

impl Validity {
    /// The validity of a certificate (DER).
    pub fn of(der: &[u8]) -> Result<Validity, String> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Validity {
            not_before: UNIX_EPOCH + validity.not_before.to_unix_duration(),
            not_after: UNIX_EPOCH + validity.not_after.to_unix_duration(),
        })
    }

    /// `now` to `now + lifetime`, backdated by [`BACKDATE`]: what a new certificate gets.
    pub fn starting(now: SystemTime, lifetime: Duration) -> Validity {
        Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH),
            not_after: now + lifetime,
        }
    }
}

/// A moment as the log shows it: `2027-01-05T12:00:00Z`.
pub fn date(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| x509_cert::der::DateTime::from_unix_duration(since).ok())
        .map_or_else(|| format!("{at:?}"), |at| at.to_string())
}

/// A duration as a person reads it: whole days, else seconds.
fn human(duration: Duration) -> String {
    if duration >= DAY {
        format!("{} days", duration.as_secs() / DAY.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_certificate_is_renewed_near_expiry_or_when_its_validity_breaks_the_policy() {
        let timings = Timings::default();
        let now = at(1_800_000_000);
        let fresh = Validity::starting(now, timings.lifetime);
        assert_eq!(timings.verdict(&fresh, now), Verdict::Keep);
        // 31 days left: kept; 29 days left: renewed.
        let later = now + timings.lifetime - 31 * DAY;
        assert_eq!(timings.verdict(&fresh, later), Verdict::Keep);
        let near = now + timings.lifetime - 29 * DAY;
        let Verdict::Renew(why) = timings.verdict(&fresh, near) else {
            panic!("kept with 29 days left");
        };
        assert!(why.contains("in less than the 30 days"), "{why}");
        let Verdict::Renew(why) = timings.verdict(&fresh, now + timings.lifetime + DAY) else {
            panic!("kept after expiry");
        };
        assert!(why.contains("expired on"), "{why}");
        // rcgen's defaults, which every certificate made before had.
        let legacy = Validity {
            not_before: at(157_766_400),   // 1975-01-01
            not_after: at(67_090_118_400), // 4096-01-01
        };
        let Verdict::Renew(why) = timings.verdict(&legacy, now) else {
            panic!("a 1975-4096 certificate was kept");
        };
        assert!(
            why.contains("1975-01-01") && why.contains("4096-01-01"),
            "{why}"
        );
        // Made by a clock that was ahead.
        let ahead = Validity::starting(now + 3 * DAY, timings.lifetime);
        assert!(matches!(timings.verdict(&ahead, now), Verdict::Renew(_)));
    }

    #[test]
    fn a_users_certificate_is_only_warned_about() {
        let timings = Timings::default();
        let now = at(1_800_000_000);
        // Ten years, as a user's own CA may issue: never "longer than the policy".
        let long = Validity::starting(now, 3650 * DAY);
        assert_eq!(timings.expiring(&long, now), None);
        let near = Validity::starting(now, 10 * DAY);
        assert!(
            timings
                .expiring(&near, now)
                .unwrap()
                .starts_with("expires on")
        );
        assert!(
            timings
                .expiring(&near, now + 11 * DAY)
                .unwrap()
                .starts_with("expired on")
        );
    }

    #[test]
    fn timings_parse_strictly() {
        let t = Timings::from_flag_value("lifetime_ms=3000, check_ms=50").unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(3));
        assert_eq!(t.check_every, Duration::from_millis(50));
        assert_eq!(t.renew_before, Timings::default().renew_before);
        for bad in ["lifetime=3", "lifetime_ms=x", "nope_ms=1", "check_ms=0"] {
            assert!(Timings::from_flag_value(bad).is_err(), "{bad}");
        }
    }
}
