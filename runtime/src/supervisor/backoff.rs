//! When to restart a sidecar, and when to give up: exponential backoff with jitter, reset
//! after a healthy stretch, and a crash-loop limit. Pure (time is passed in), so every
//! rule is unit-tested without sleeping.
//!
//! Two stretches matter. A run that was healthy for `delay_reset` (10 s) was not a crash
//! loop: it is restarted after the initial delay again, though its failure still counts
//! toward the limit. Without that, a sidecar that dies now and then (the soak kills opencode
//! every 16-60 s) climbs to the 30 s cap and is down half the time, each death treated as
//! if it had followed the last one at once. A run healthy for `healthy_reset` (a minute)
//! forgets the failures altogether.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart policy's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// The delay never grows beyond this.
    pub max: Duration,
    /// A run healthy at least this long is restarted after `initial` again (its failure
    /// still counts toward `limit`).
    pub delay_reset: Duration,
    /// A run healthy at least this long forgives earlier failures.
    pub healthy_reset: Duration,
    /// Failures are counted over this sliding window…
    pub window: Duration,
    /// …and this many within it puts the sidecar in the `failed` state.
    pub limit: usize,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            delay_reset: Duration::from_secs(10),
            healthy_reset: Duration::from_secs(60),
            window: Duration::from_secs(60),
            limit: 5,
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay (the `attempt`th restart in a row, from 1).
    RestartAfter {
        /// The delay, jitter included.
        delay: Duration,
        /// Consecutive failures so far.
        attempt: u32,
    },
    /// Too many failures within the window: stop trying until asked.
    GiveUp {
        /// Failures within the window.
        failures: usize,
    },
}

/// One sidecar's failure history.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RestartPolicy,
    consecutive: u32,
    recent: VecDeque<Instant>,
}

impl Backoff {
    /// A fresh history.
    pub fn new(policy: RestartPolicy) -> Backoff {
        Backoff {
            policy,
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    /// Forgets every failure (a restart asked for over the API, or a healthy stretch).
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.recent.clear();
    }

    /// Records a failure at `now`. `healthy_for` is how long the run was healthy (zero if it
    /// never became ready); `jitter` is a number in [0, 1) that spreads the delay by ±20%
    /// so that several servers restarting together do not hammer in step.
    pub fn on_failure(&mut self, now: Instant, healthy_for: Duration, jitter: f64) -> Decision {
        if healthy_for >= self.policy.healthy_reset {
            self.reset();
        } else if healthy_for >= self.policy.delay_reset {
            self.consecutive = 0;
        }
        while let Some(&first) = self.recent.front() {
            if now.duration_since(first) >= self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.consecutive = self.consecutive.saturating_add(1);
        if self.recent.len() >= self.policy.limit {
            return Decision::GiveUp {
                failures: self.recent.len(),
            };
        }
        let exponent = self.consecutive.saturating_sub(1).min(20);
        let base = self
            .policy
            .initial
            .saturating_mul(1u32 << exponent)
            .min(self.policy.max);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let delay = base.mul_f64(factor).min(self.policy.max);
        Decision::RestartAfter {
            delay,
            attempt: self.consecutive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(backoff: &mut Backoff, start: Instant, gaps_ms: &[u64]) -> Vec<Decision> {
        let mut now = start;
        gaps_ms
            .iter()
            .map(|gap| {
                now += Duration::from_millis(*gap);
                backoff.on_failure(now, Duration::ZERO, 0.5)
            })
            .collect()
    }

    #[test]
    fn delays_double_from_the_initial_value_and_stop_at_the_cap() {
        let policy = RestartPolicy {
            limit: 100,
            window: Duration::from_millis(1),
            ..RestartPolicy::default()
        };
        let mut backoff = Backoff::new(policy);
        let got: Vec<u128> = delays(&mut backoff, Instant::now(), &[10; 10])
            .into_iter()
            .map(|d| match d {
                Decision::RestartAfter { delay, .. } => delay.as_millis(),
                Decision::GiveUp { .. } => panic!("gave up: {d:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_spreads_by_twenty_percent_either_way() {
        let mut low = Backoff::new(RestartPolicy::default());
        let mut high = Backoff::new(RestartPolicy::default());
        let now = Instant::now();
        assert_eq!(
            low.on_failure(now, Duration::ZERO, 0.0),
            Decision::RestartAfter {
                delay: Duration::from_millis(200),
                attempt: 1
            }
        );
        assert_eq!(
            high.on_failure(now, Duration::ZERO, 0.999_999),
            Decision::RestartAfter {
                delay: Duration::from_secs_f64(0.25 * (0.8 + 0.4 * 0.999_999)),
                attempt: 1
            }
        );
    }

    #[test]
    fn five_failures_within_a_minute_give_up() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let got = delays(&mut backoff, Instant::now(), &[0, 1000, 1000, 1000, 1000]);
        assert!(matches!(got[3], Decision::RestartAfter { attempt: 4, .. }));
        assert_eq!(got[4], Decision::GiveUp { failures: 5 });
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        // Four quick failures, then one 61 s later: only one is within the window.
        let got = delays(&mut backoff, Instant::now(), &[0, 10, 10, 10, 61_000]);
        assert!(
            matches!(got[4], Decision::RestartAfter { .. }),
            "{:?}",
            got[4]
        );
    }

    #[test]
    fn a_healthy_minute_resets_the_delay_and_the_count() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let now = Instant::now();
        for i in 0..4 {
            backoff.on_failure(now + Duration::from_millis(i), Duration::ZERO, 0.5);
        }
        let after_healthy_run = backoff.on_failure(
            now + Duration::from_millis(10),
            Duration::from_secs(60),
            0.5,
        );
        assert_eq!(
            after_healthy_run,
            Decision::RestartAfter {
                delay: Duration::from_millis(250),
                attempt: 1
            }
        );
    }

    #[test]
    fn a_run_healthy_for_ten_seconds_restarts_quickly_but_still_counts() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        // Two quick failures: the delay has doubled.
        backoff.on_failure(at(0), Duration::ZERO, 0.5);
        assert!(matches!(
            backoff.on_failure(at(1), Duration::ZERO, 0.5),
            Decision::RestartAfter { attempt: 2, .. }
        ));
        // Then a run healthy for 12 s: the initial delay again…
        assert_eq!(
            backoff.on_failure(at(15), Duration::from_secs(12), 0.5),
            Decision::RestartAfter {
                delay: Duration::from_millis(250),
                attempt: 1
            }
        );
        // …a run healthy for 9 s does double it…
        assert!(matches!(
            backoff.on_failure(at(27), Duration::from_secs(9), 0.5),
            Decision::RestartAfter { attempt: 2, .. }
        ));
        // …and the fifth failure within the minute gives up, however healthy its run.
        assert_eq!(
            backoff.on_failure(at(40), Duration::from_secs(12), 0.5),
            Decision::GiveUp { failures: 5 }
        );
    }

    #[test]
    fn reset_forgets_everything() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let now = Instant::now();
        for i in 0..4 {
            backoff.on_failure(now + Duration::from_millis(i), Duration::ZERO, 0.5);
        }
        backoff.reset();
        assert!(matches!(
            backoff.on_failure(now, Duration::ZERO, 0.5),
            Decision::RestartAfter { attempt: 1, .. }
        ));
    }
}
