//! Retrying with backoff, for the blocking HTTP clients of the packager (downloads) and the
//! signer (time stamps, Azure Artifact Signing, Apple's notary service).
//!
//! Every caller says the same three things: what one attempt is, which failures are worth
//! another ([`Failure::Transient`]) and which are not ([`Failure::Permanent`]), and its
//! [`Backoff`] (the delays, how many attempts, how long in all). The loop itself, the
//! delays and the sleeping are [backon]'s; this crate adds what backon leaves to each
//! caller: the two kinds of failure as one type, the number of attempts made (error
//! messages report it), and a deadline on the wall clock, which a poll needs (backon's
//! `total_delay` counts only the sleeps, not the requests between them).
//!
//! | caller | attempts | delays | deadline |
//! |---|---|---|---|
//! | packager downloads | 4 | 0.5 s, doubled | — |
//! | time-stamp requests, per authority | configured (3) | 0.5 s, doubled up to 8 s | — |
//! | Azure Artifact Signing, polling an operation | unbounded | 0.1 s, doubled up to 2 s | the client's timeout |
//! | Apple notary service, polling a submission | unbounded | constant (15 s) | the polling timeout (1 h) |
//!
//! Each caller keeps its own policy beside its code, as a [`Backoff`] value.
//!
//! [backon]: https://docs.rs/backon

#![deny(missing_docs)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, BlockingRetryable, ConstantBuilder, ExponentialBuilder};

/// Why one attempt failed: `T` for failures another attempt may fix (a connection refused,
/// a timeout, HTTP 5xx, an operation still in progress), `P` for those it will not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<T, P = T> {
    /// Worth another attempt, if the policy allows one.
    Transient(T),
    /// Ends the retrying at once.
    Permanent(P),
}

/// The last failure, once the retrying has stopped: a permanent one, or a transient one
/// when the attempts or the deadline ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<T, P = T> {
    /// The failure of the last attempt.
    pub failure: Failure<T, P>,
    /// How many attempts were made, the last included.
    pub attempts: u32,
}

/// A transient failure about to be retried, for the caller to log.
#[derive(Debug)]
pub struct Retrying<'a, T> {
    /// What went wrong.
    pub failure: &'a T,
    /// The attempt that failed (the first is 1).
    pub attempt: u32,
    /// The wait before the next attempt.
    pub delay: Duration,
}

/// A retry policy: the delays between attempts, and when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    schedule: Schedule,
    attempts: Option<u32>,
    deadline: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    /// `first`, then doubled after each attempt, up to `max`.
    Exponential {
        first: Duration,
        max: Option<Duration>,
    },
    Constant(Duration),
}

impl Backoff {
    /// Waits `first` before the second attempt and twice as long before each further
    /// one, without a limit on the attempts until [`Backoff::attempts`] sets one.
    pub const fn exponential(first: Duration) -> Self {
        Self {
            schedule: Schedule::Exponential { first, max: None },
            attempts: None,
            deadline: None,
        }
    }

    /// Waits `delay` between any two attempts.
    pub const fn constant(delay: Duration) -> Self {
        Self {
            schedule: Schedule::Constant(delay),
            attempts: None,
            deadline: None,
        }
    }

    /// Stops doubling an exponential delay at `max`.
    pub const fn max_delay(mut self, max: Duration) -> Self {
        if let Schedule::Exponential { first, .. } = self.schedule {
            self.schedule = Schedule::Exponential {
                first,
                max: Some(max),
            };
        }
        self
    }

    /// Makes at most `attempts` attempts, the first included; 0 counts as 1.
    pub const fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(if attempts == 0 { 1 } else { attempts });
        self
    }

    /// Gives up rather than wait when the next attempt would start more than `within`
    /// after the first one started (requests included, not just the waits).
    pub const fn deadline(mut self, within: Duration) -> Self {
        self.deadline = Some(within);
        self
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the policy says stop;
    /// `on_retry` hears of each transient failure before the wait that follows it.
    pub fn retry<T, R, P>(
        &self,
        attempt: impl FnMut() -> Result<T, Failure<R, P>>,
        on_retry: impl FnMut(Retrying<'_, R>),
    ) -> Result<T, GaveUp<R, P>> {
        self.retry_sleeping(std::thread::sleep, attempt, on_retry)
    }

    fn retry_sleeping<T, R, P>(
        &self,
        sleep: impl Fn(Duration) + 'static,
        mut attempt: impl FnMut() -> Result<T, Failure<R, P>>,
        mut on_retry: impl FnMut(Retrying<'_, R>),
    ) -> Result<T, GaveUp<R, P>> {
        let made = Cell::new(0u32);
        let delays = Deadline {
            delays: self.delays(),
            deadline: self.deadline.map(|within| Instant::now() + within),
        };
        (|| {
            made.set(made.get() + 1);
            attempt()
        })
        .retry(delays)
        .sleep(sleep)
        .when(|failure| matches!(failure, Failure::Transient(_)))
        .notify(|failure, delay| {
            if let Failure::Transient(failure) = failure {
                on_retry(Retrying {
                    failure,
                    attempt: made.get(),
                    delay,
                });
            }
        })
        .call()
        .map_err(|failure| GaveUp {
            failure,
            attempts: made.get(),
        })
    }

    /// The waits between attempts, as backon computes them.
    fn delays(&self) -> Box<dyn Iterator<Item = Duration> + Send + Sync + Unpin> {
        let retries = self.attempts.map(|a| a.saturating_sub(1) as usize);
        match self.schedule {
            Schedule::Exponential { first, max } => {
                let builder = ExponentialBuilder::new()
                    .with_min_delay(first)
                    .with_factor(2.0);
                let builder = match max {
                    Some(max) => builder.with_max_delay(max),
                    None => builder.without_max_delay(),
                };
                let builder = match retries {
                    Some(retries) => builder.with_max_times(retries),
                    None => builder.without_max_times(),
                };
                Box::new(builder.build())
            }
            Schedule::Constant(delay) => {
                let builder = ConstantBuilder::new().with_delay(delay);
                let builder = match retries {
                    Some(retries) => builder.with_max_times(retries),
                    None => builder.without_max_times(),
                };
                Box::new(builder.build())
            }
        }
    }
}

/// Ends a schedule when its next wait would pass the deadline.
struct Deadline<I> {
    delays: I,
    deadline: Option<Instant>,
}

impl<I: Iterator<Item = Duration>> Iterator for Deadline<I> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.delays.next()?;
        match self.deadline {
            Some(deadline) if Instant::now() + delay > deadline => None,
            _ => Some(delay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What [`run`] saw: the result, the attempts made, the waits, and the attempts
    /// `on_retry` was told of.
    type Run = (
        Result<&'static str, GaveUp<&'static str>>,
        usize,
        Vec<Duration>,
        Vec<u32>,
    );

    /// Runs `policy` over `outcomes` (one per attempt; past their end, transient), with a
    /// sleep that records instead of waiting.
    fn run(policy: Backoff, outcomes: &[Result<&'static str, Failure<&'static str>>]) -> Run {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&slept);
        let mut made = 0;
        let mut told = Vec::new();
        let result = policy.retry_sleeping(
            move |d| recorder.lock().unwrap().push(d),
            || {
                made += 1;
                outcomes
                    .get(made - 1)
                    .cloned()
                    .unwrap_or(Err(Failure::Transient("again")))
            },
            |retrying| told.push(retrying.attempt),
        );
        let slept = slept.lock().unwrap().clone();
        (result, made, slept, told)
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_transient_failure_is_retried_with_doubling_waits() {
        let policy = Backoff::exponential(MS(500)).attempts(4);
        let outcomes = [
            Err(Failure::Transient("502")),
            Err(Failure::Transient("reset")),
            Ok("body"),
        ];
        let (result, made, slept, told) = run(policy, &outcomes);
        assert_eq!(result, Ok("body"));
        assert_eq!(made, 3);
        assert_eq!(slept, [MS(500), MS(1000)]);
        assert_eq!(told, [1, 2]);
    }

    #[test]
    fn the_attempt_limit_is_kept_and_reported() {
        let policy = Backoff::exponential(MS(500)).attempts(4);
        let (result, made, slept, _) = run(policy, &[]);
        assert_eq!(
            result,
            Err(GaveUp {
                failure: Failure::Transient("again"),
                attempts: 4
            })
        );
        assert_eq!(made, 4);
        assert_eq!(slept, [MS(500), MS(1000), MS(2000)]);
        // 0 attempts means one, never none.
        let (_, made, slept, _) = run(Backoff::exponential(MS(1)).attempts(0), &[]);
        assert_eq!((made, slept.len()), (1, 0));
    }

    #[test]
    fn a_permanent_failure_stops_at_once() {
        let policy = Backoff::exponential(MS(500)).attempts(4);
        let outcomes = [
            Err(Failure::Transient("503")),
            Err(Failure::Permanent("404")),
        ];
        let (result, made, slept, _) = run(policy, &outcomes);
        assert_eq!(
            result,
            Err(GaveUp {
                failure: Failure::Permanent("404"),
                attempts: 2
            })
        );
        assert_eq!(made, 2);
        assert_eq!(slept, [MS(500)]);
    }

    #[test]
    fn waits_stop_growing_at_the_maximum() {
        // The time-stamp policy: 0.5 s doubled up to 8 s.
        let policy = Backoff::exponential(MS(500))
            .max_delay(MS(8000))
            .attempts(7);
        let (_, made, slept, _) = run(policy, &[]);
        assert_eq!(made, 7);
        assert_eq!(
            slept,
            [MS(500), MS(1000), MS(2000), MS(4000), MS(8000), MS(8000)]
        );
        let (_, _, slept, _) = run(Backoff::constant(MS(15)).attempts(3), &[]);
        assert_eq!(slept, [MS(15), MS(15)]);
    }

    #[test]
    fn a_deadline_ends_an_unbounded_poll() {
        // The recording sleep does not wait, so the deadline passes in real time: give
        // the first attempt time to take, and the next wait cannot fit.
        let policy = Backoff::constant(MS(30)).deadline(MS(50));
        let started = Instant::now();
        let mut made = 0;
        let result: Result<(), _> = policy.retry_sleeping(
            |_| {},
            || {
                made += 1;
                std::thread::sleep(MS(25));
                Err(Failure::<_, ()>::Transient("in progress"))
            },
            |_| {},
        );
        let gave_up = result.unwrap_err();
        assert_eq!(gave_up.failure, Failure::Transient("in progress"));
        assert_eq!(gave_up.attempts, made);
        // 25 ms + 30 ms > 50 ms after the second attempt at the latest.
        assert!((1..=2).contains(&made), "{made} attempts");
        assert!(started.elapsed() < MS(1000));
    }
}
