//! Log lines about refused requests, limited in rate: a peer without a token sent 10,328
//! wrong requests a second over one keep-alive connection, each logged, and the log grew
//! 2 MB a second. Now each kind of refusal (a status, a refused pairing) is logged at most
//! [`BURST`] times a second; the rest are counted, and the count is told with the next line
//! of that kind that is logged ("… and 7,571 more like it"), or by [`LogLimit::flush`] when no
//! further one comes. The failure counts of the health panel still count every refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind logged a second, at most.
pub const BURST: u32 = 5;
/// The window the burst is counted in.
const WINDOW: Duration = Duration::from_secs(1);

/// A kind of refusal: what it is and a number that tells its variants apart (the status).
pub type Kind = (&'static str, u16);

/// The counts behind the limit.
#[derive(Debug, Default)]
pub struct LogLimit {
    kinds: Mutex<HashMap<Kind, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    /// Left out since the last line of this kind that was logged.
    untold: u64,
}

impl LogLimit {
    /// Whether a line of `kind` may be logged now: `Some(n)` with how many of its kind
    /// were left out before it (to be told with it), `None` when it is to be left out (and
    /// counted).
    pub fn admit(&self, kind: Kind) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: Kind, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let window = kinds.entry(kind).or_insert(Window {
            started: now,
            logged: 0,
            untold: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            window.started = now;
            window.logged = 0;
        }
        if window.logged < BURST {
            window.logged += 1;
            Some(std::mem::take(&mut window.untold))
        } else {
            window.untold += 1;
            None
        }
    }

    /// The kinds with refusals left out and not told yet, and how many, for a summary line;
    /// their counts start again from zero. Kinds quiet for a while are forgotten.
    pub fn flush(&self) -> Vec<(Kind, u64)> {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let untold = kinds
            .iter_mut()
            .filter(|(_, w)| w.untold > 0)
            .map(|(kind, w)| (*kind, std::mem::take(&mut w.untold)))
            .collect();
        kinds.retain(|_, w| now.duration_since(w.started) < 60 * WINDOW);
        untold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_the_rest_counted_and_told_with_the_next_line() {
        let limit = LogLimit::default();
        let kind = ("request", 401);
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(kind, start), Some(0));
        }
        for _ in 0..7_571 {
            assert_eq!(limit.admit_at(kind, start), None);
        }
        // Another kind has a budget of its own.
        assert_eq!(limit.admit_at(("request", 421), start), Some(0));
        // The next window's first line tells the count.
        assert_eq!(limit.admit_at(kind, start + WINDOW), Some(7_571));
        assert_eq!(limit.admit_at(kind, start + WINDOW), Some(0));
        // Two lines of this window are logged already: three more are, five are counted.
        for _ in 0..(BURST + 3) {
            limit.admit_at(kind, start + WINDOW);
        }
        assert_eq!(limit.flush(), vec![(kind, 5)]);
        assert!(limit.flush().is_empty(), "told once");
    }
}
