//! What the serve benchmark does, as the command line resolved it.

use std::path::PathBuf;
use std::time::Duration;

/// What the benchmark does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed rounds (each contender once per round).
    pub runs: usize,
    /// How long a contender idles after it is ready before its RSS is read.
    pub idle: Duration,
    /// Where the temporary directory goes.
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// A packed artifact to measure instead of packing one.
    pub artifact: Option<PathBuf>,
    /// Requests each way for the proxy figure (0: not measured).
    pub proxy_requests: usize,
}
