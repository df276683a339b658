//! The scheduler: warm-up, then load with SIGKILLs of opencode at seeded random moments,
//! samples at quiet moments (load paused, nothing in flight), and the stop; what it saw goes
//! to the judge.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use openwork_tests::server::wait_until;

use super::judge::{Kill, Observed};
use super::load::{HANG, Shared, follow_opencode_events, load, watch_events};
use super::sampler::{SAMPLE_EVERY, Sample, Server};
use super::settings::Settings;
use crate::measure::{load_average, progress};
use crate::procs::{check_nothing_left, describe_exit};

/// The soak in progress.
pub(super) struct Soak<'a> {
    pub(super) settings: &'a Settings,
    pub(super) server: Server,
    pub(super) shared: Arc<Shared>,
}

impl<'a> Soak<'a> {
    pub(super) fn new(settings: &'a Settings, server: Server) -> Soak<'a> {
        let shared = Arc::new(Shared {
            addr: server.addr.clone(),
            authorization: format!("Bearer {}", server.token),
            stop_load: AtomicBool::new(false),
            stop_watching: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            following: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            events_reconnects: AtomicUsize::new(0),
        });
        Soak {
            settings,
            server,
            shared,
        }
    }

    pub(super) fn run(mut self, rng: &mut fastrand::Rng) -> anyhow::Result<Observed> {
        let load_before = load_average();
        let events = {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || watch_events(&shared))
        };
        let follower = {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || follow_opencode_events(&shared))
        };
        let per_worker = self.settings.rate / self.settings.workers as f64;
        let workers: Vec<_> = (0..self.settings.workers)
            .map(|i| {
                let shared = Arc::clone(&self.shared);
                let seed = rng.u64(..);
                std::thread::spawn(move || load(&shared, per_worker, seed, i))
            })
            .collect();

        std::thread::sleep(self.settings.warm_up);
        let after_warm_up = self.quiet_sample(Instant::now())?;
        let started = Instant::now();
        progress(format_args!(
            "after the warm-up: RSS {:.2} MB, {} descriptors, tree: {}",
            after_warm_up.rss as f64 / 1e6,
            after_warm_up.fds,
            after_warm_up.tree_summary()
        ));

        let (kills, samples) = self.inject_faults(rng, started)?;

        // The last kill's restart finishes before the end is counted.
        let settled = wait_until(Duration::from_secs(90), || {
            self.server.running_opencode().is_some()
        });
        if !settled {
            progress(format_args!(
                "opencode did not come back after the last kill"
            ));
        }
        self.shared.stop_load.store(true, Ordering::SeqCst);
        let mut requests = Vec::new();
        for worker in workers {
            requests.extend(worker.join().expect("a load worker panicked"));
        }
        let at_end = self.quiet_sample(started)?;
        let load_after = load_average();

        self.shared.stop_watching.store(true, Ordering::SeqCst);
        let (_, status) = self.server.running.terminate()?;
        let mut left_after_stop = self.server.running.left_behind();
        let opencode_exe = self.server.runtime_dir.join("opencode");
        left_after_stop.extend(check_nothing_left(&[
            self.server.artifact.as_path(),
            opencode_exe.as_path(),
        ]));
        let streams = follower.join().expect("the stream follower panicked");
        events.join().expect("the events watcher panicked");
        let events = std::mem::take(&mut *self.shared.events.lock().expect("events"));
        Ok(Observed {
            requests,
            kills,
            events,
            events_reconnects: self.shared.events_reconnects.load(Ordering::SeqCst),
            streams,
            samples,
            after_warm_up,
            at_end,
            exit: describe_exit(status),
            left_after_stop,
            started,
            load_average: (load_before, load_after),
        })
    }

    /// Kills opencode at random moments until the soak's time is up, sampling the server
    /// every [`SAMPLE_EVERY`].
    pub(super) fn inject_faults(
        &mut self,
        rng: &mut fastrand::Rng,
        started: Instant,
    ) -> anyhow::Result<(Vec<Kill>, Vec<Sample>)> {
        let deadline = started + self.settings.duration;
        let (shortest, longest) = self.settings.kill_gap;
        let gap = |rng: &mut fastrand::Rng| shortest + (longest - shortest).mul_f64(rng.f64());
        let mut next_kill = started + gap(rng);
        let mut next_sample = started;
        let mut kills = Vec::new();
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let now = Instant::now();
            if now >= next_sample {
                samples.push(self.server.sample(started)?);
                self.server.running.observe();
                next_sample += SAMPLE_EVERY;
            }
            if now >= next_kill {
                // Only a running opencode is killed (a kill while it restarts would be a
                // second failure in one window); otherwise try again shortly.
                match self.server.running_opencode() {
                    Some(pid) => {
                        // SAFETY: kill(2) on the server's opencode, checked just before.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                        let at = Instant::now();
                        kills.push(Kill { at, pid });
                        progress(format_args!(
                            "{:>6.1} s: killed opencode {pid} (kill {})",
                            at.duration_since(started).as_secs_f64(),
                            kills.len()
                        ));
                        next_kill = at + gap(rng);
                    }
                    None => next_kill = now + Duration::from_millis(200),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((kills, samples))
    }

    /// The server's sample at a quiet moment: load paused, nothing in flight, the opencode
    /// event stream open (it holds two descriptors in the server).
    pub(super) fn quiet_sample(&mut self, since: Instant) -> anyhow::Result<Sample> {
        self.shared.paused.store(true, Ordering::SeqCst);
        let quiet = wait_until(HANG + Duration::from_secs(5), || {
            self.shared.in_flight.load(Ordering::SeqCst) == 0
        });
        let following = wait_until(Duration::from_secs(15), || {
            self.shared.following.load(Ordering::SeqCst)
        });
        // The server closes a finished connection a moment after the client has read it.
        std::thread::sleep(Duration::from_millis(500));
        let sample = self.server.sample(since);
        self.server.running.observe();
        self.shared.paused.store(false, Ordering::SeqCst);
        if !quiet || !following {
            bail!(
                "no quiet moment to count at (requests in flight: {}, event stream open: \
                 {following})",
                self.shared.in_flight.load(Ordering::SeqCst)
            );
        }
        sample
    }
}

impl Drop for Soak<'_> {
    /// However the soak ends, its threads stop: the load at once, the watchers when their
    /// connections end (the server is killed when `server` drops, right after this).
    fn drop(&mut self) {
        self.shared.stop_load.store(true, Ordering::SeqCst);
        self.shared.stop_watching.store(true, Ordering::SeqCst);
    }
}
