//! What the soak does, as the command line resolved it.

use std::path::PathBuf;
use std::time::Duration;

/// What the soak does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long opencode is killed under load.
    pub duration: Duration,
    /// Load without kills before the baseline is taken.
    pub warm_up: Duration,
    /// Threads sending requests.
    pub workers: usize,
    /// Requests a second, all workers together.
    pub rate: f64,
    /// The shortest and longest gap between two kills.
    pub kill_gap: (Duration, Duration),
    /// Seed of every random choice.
    pub seed: u64,
    /// Where the temporary directory goes.
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// A packed artifact (for the host) to soak instead of packing one.
    pub artifact: Option<PathBuf>,
}
