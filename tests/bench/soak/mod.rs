//! The soak: the packed single-file server with the real opencode, under steady load
//! through its `/opencode/*` proxy from this process on loopback, while a fault injector
//! SIGKILLs opencode at random moments. What it checks, and reports as rows with targets:
//!
//! - no request is lost outside a restart window (a kill until the supervisor's `ready`
//!   event for the new opencode, plus a short grace); inside one, a request fails only with
//!   a clear 502/503/504 JSON error, and nothing ever hangs (no answer within 30 s);
//! - opencode's event stream, followed through the proxy, ends promptly when its opencode
//!   dies instead of hanging open;
//! - every kill shows in `/system/events` (one connection for the whole soak) as an `exited`
//!   with the killed pid and signal 9, then a `ready` of the new process;
//! - the server process's memory stays flat, and its file descriptors and the processes in
//!   its tree are the same at the end as after the warm-up (both counted at a quiet moment:
//!   load paused, nothing in flight); after SIGTERM it exits 0 and nothing is left running.
//!
//! The load is bounded: `rate` requests a second in all, paced (a late worker does not
//! burst to catch up), over a fixed time. Kills are at least `kill_gap.0` apart, so that
//! the supervisor's crash-loop limit (5 failures within 60 s) is never reached by design
//! with the default 16 s. The random choices come from one seed, printed and kept in the
//! JSON, so a run can be repeated.
//!
//! Linux only: the server's memory, descriptors and tree are read from /proc.

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch;
use openwork_packager::pack::Compression;
use openwork_payload::targets;

use crate::measure::{self, progress};
use crate::report::Report;

mod judge;
mod load;
mod sampler;
mod scheduler;
mod settings;

pub use settings::Settings;

use sampler::Server;
use scheduler::Soak;

/// Runs the soak, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    if !cfg!(target_os = "linux") {
        bail!("the soak reads the server's memory, descriptors and tree from /proc: Linux only");
    }
    if settings.kill_gap.0 > settings.kill_gap.1 {
        bail!("the shortest kill gap is longer than the longest");
    }
    let target = targets::host().context("this host is not one of the targets in targets/")?;
    let pins = Constants::built_in();
    progress(format_args!(
        "fetching opencode {} for {}",
        pins.opencode_version(),
        target.name
    ));
    let opencode = fetch::ensure_pinned_opencode(&target.name)?;
    let work = measure::work_tempdir(&settings.work_dir, "openwork-soak-")?;
    let artifact = match &settings.artifact {
        Some(given) => measure::absolute(given)?,
        // What is soaked is the server, not the compression: the fast level packs in seconds.
        None => {
            crate::serve::pack_artifact(target, &pins, &opencode, work.path(), Compression::fast())?
        }
    };

    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let server = Server::start(&artifact, work.path())?;
    progress(format_args!(
        "server ready on {}; soaking for {} s after {} s of warm-up (seed {})",
        server.addr,
        settings.duration.as_secs(),
        settings.warm_up.as_secs(),
        settings.seed
    ));
    let soak = Soak::new(settings, server);
    let observed = soak.run(&mut rng)?;
    let report = observed.report(settings, &artifact, pins.opencode_version());
    report.write_json(&settings.json)?;
    Ok(report)
}
