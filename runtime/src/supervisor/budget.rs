//! How often a restart may be asked for over the API: a token bucket per sidecar. Pure (time
//! is passed in), so every rule is unit-tested without sleeping.
//!
//! A restart costs a sidecar start (opencode: about a second of CPU and every client's
//! streams and sessions cut), so a client in a loop could keep opencode down and a core busy:
//! one restarted opencode 5,416 times in ten minutes. The default budget is a burst of 3
//! (a user who clicks "restart" a few times, or a tool that retries, is served at once), then
//! one every 20 s: long enough that opencode is healthy again before the next (a real start
//! takes 1–2 s), short enough that nobody waits long for a restart they really need. A loop
//! gets at most 3 + 30 restarts in ten minutes.
//!
//! A restart asked for while one is under way is not counted: it changes nothing (see
//! `Supervisor::request_restart`).

use std::time::{Duration, Instant};

/// The budget's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudgetPolicy {
    /// Restarts that may be asked for back to back.
    pub burst: u32,
    /// One more restart is allowed every this long (up to `burst`).
    pub refill: Duration,
}

impl Default for RestartBudgetPolicy {
    fn default() -> Self {
        RestartBudgetPolicy {
            burst: 3,
            refill: Duration::from_secs(20),
        }
    }
}

/// One sidecar's budget: how much of the burst is left, as of when.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    policy: RestartBudgetPolicy,
    /// The restarts available at `at`, as time: `refill` per restart (a part of one is a
    /// restart partly earned back). Whole nanoseconds, so no rounding drifts.
    credit: Duration,
    at: Instant,
}

impl RestartBudget {
    /// A full budget at `now`.
    pub fn new(policy: RestartBudgetPolicy, now: Instant) -> RestartBudget {
        RestartBudget {
            policy,
            credit: policy.refill.saturating_mul(policy.burst),
            at: now,
        }
    }

    /// Takes one restart at `now`; `Err(wait)` when none is left: one will be after `wait`.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let full = self.policy.refill.saturating_mul(self.policy.burst);
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        self.credit = self.credit.saturating_add(elapsed).min(full);
        if self.credit >= self.policy.refill {
            self.credit -= self.policy.refill;
            return Ok(());
        }
        Err(self.policy.refill - self.credit)
    }

    /// The policy.
    pub fn policy(&self) -> RestartBudgetPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_per_refill_and_the_wait_is_said() {
        let start = Instant::now();
        let mut budget = RestartBudget::new(RestartBudgetPolicy::default(), start);
        for _ in 0..3 {
            assert_eq!(budget.take(start), Ok(()));
        }
        assert_eq!(budget.take(start), Err(20 * SECOND));
        // Refused asks cost nothing: the wait only shrinks.
        assert_eq!(budget.take(start + 5 * SECOND), Err(15 * SECOND));
        assert_eq!(budget.take(start + 20 * SECOND), Ok(()));
        assert_eq!(budget.take(start + 20 * SECOND), Err(20 * SECOND));
        // A long pause refills the burst, never more.
        let later = start + 3600 * SECOND;
        for _ in 0..3 {
            assert_eq!(budget.take(later), Ok(()));
        }
        assert!(budget.take(later).is_err());
    }

    #[test]
    fn ten_minutes_of_a_loop_get_the_burst_and_one_per_refill() {
        let start = Instant::now();
        let mut budget = RestartBudget::new(RestartBudgetPolicy::default(), start);
        let mut granted = 0;
        let mut at = start;
        while at <= start + 600 * SECOND {
            if budget.take(at).is_ok() {
                granted += 1;
            }
            at += Duration::from_millis(100);
        }
        assert_eq!(granted, 3 + 30);
    }

    #[test]
    fn a_zero_refill_never_refuses() {
        let start = Instant::now();
        let policy = RestartBudgetPolicy {
            burst: 1,
            refill: Duration::ZERO,
        };
        let mut budget = RestartBudget::new(policy, start);
        for _ in 0..10 {
            assert_eq!(budget.take(start), Ok(()));
        }
    }
}
