//! Timing child processes and their peak RSS, and order statistics.
//!
//! A child's `ru_maxrss` starts at its parent's high-water mark: Linux copies it across
//! fork and keeps the larger of it and the new image's across exec. The benchmark holds a
//! packed artifact and a whole sidecar in memory, so a child spawned from it would report
//! the benchmark's peak, not its own. Children are therefore measured through a small
//! helper, this same executable's hidden `wait4` subcommand: it starts with a few MB, spawns
//! the command, reaps it with `wait4` and reports its rusage and its spawn-to-exit time on
//! the monotonic clock (so helper start-up is not counted).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// What the helper reports about one child.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    /// Monotonic clock just before the spawn, in nanoseconds.
    pub start_ns: u64,
    /// Monotonic clock when `wait4` returned, in nanoseconds.
    pub end_ns: u64,
    /// Peak resident set size in bytes (`ru_maxrss`: at least the helper's few MB).
    pub max_rss: u64,
    /// CPU time, user and system, in nanoseconds: unlike the wall time, hardly inflated by
    /// other work on the machine.
    pub cpu_ns: u64,
}

impl Measured {
    /// Spawn to exit.
    pub fn wall(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }

    /// User and system CPU time.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns)
    }
}

/// One child measured by the helper, with its stdout.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Time and peak RSS.
    pub measured: Measured,
    /// Its stdout.
    pub stdout: Vec<u8>,
}

/// Runs `cmd` to completion through the helper, with stdout and stderr captured in files
/// under `scratch`. Fails unless it exits 0.
pub fn run_measured(cmd: &Command, scratch: &Path) -> anyhow::Result<Finished> {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let report = scratch.join("rusage.json");
    let mut helper = through_helper(cmd, &report)?;
    helper.stdout(create(&out_path)?).stderr(create(&err_path)?);
    let status = helper.status().context("spawn the wait4 helper")?;
    if !status.success() {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!("{cmd:?} failed ({status}):\n{text}");
    }
    let stdout =
        std::fs::read(&out_path).with_context(|| format!("read {}", out_path.display()))?;
    Ok(Finished {
        measured: read_report(&report)?,
        stdout,
    })
}

/// What the baseline pipeline cost.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline {
    /// From zstd's spawn to the last exit, plus the `sync`.
    pub wall: Duration,
    /// zstd's peak RSS.
    pub zstd_rss: u64,
    /// tar's peak RSS.
    pub tar_rss: u64,
    /// zstd's and tar's CPU time, user and system (the `sync` is not counted: the kernel's
    /// writeback threads do its work, as they do most of an fsync's).
    pub cpu: Duration,
}

/// `zstd -dc --long=<window_log> <payload> | tar -x -C <dir> && sync`, each side through
/// the helper (no shell).
pub fn zstd_tar_sync(
    payload: &Path,
    dir: &Path,
    window_log: u32,
    scratch: &Path,
) -> anyhow::Result<Pipeline> {
    let zstd_report = scratch.join("zstd.json");
    let tar_report = scratch.join("tar.json");
    let zstd_err = scratch.join("zstd.stderr");
    let tar_err = scratch.join("tar.stderr");
    let mut zstd = Command::new("zstd");
    zstd.arg("-dcq")
        .arg(format!("--long={window_log}"))
        .arg(payload);
    let mut zstd = through_helper(&zstd, &zstd_report)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(create(&zstd_err)?)
        .spawn()
        .context("spawn the wait4 helper for zstd")?;
    let pipe = zstd.stdout.take().expect("piped stdout");
    let mut tar = Command::new("tar");
    tar.arg("-x").arg("-C").arg(dir);
    let tar = through_helper(&tar, &tar_report)?
        .stdin(pipe)
        .stdout(Stdio::null())
        .stderr(create(&tar_err)?)
        .spawn()
        .context("spawn the wait4 helper for tar")?;
    for (mut child, stderr, what) in [(zstd, &zstd_err, "zstd"), (tar, &tar_err, "tar")] {
        let status = child.wait().with_context(|| format!("wait for {what}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(stderr).unwrap_or_default();
            bail!("{what} failed ({status}):\n{text}");
        }
    }
    let zstd = read_report(&zstd_report)?;
    let tar = read_report(&tar_report)?;
    let sync_start = monotonic_ns();
    sync();
    let sync_end = monotonic_ns();
    let decoded =
        Duration::from_nanos(zstd.end_ns.max(tar.end_ns) - zstd.start_ns.min(tar.start_ns));
    Ok(Pipeline {
        wall: decoded + Duration::from_nanos(sync_end - sync_start),
        zstd_rss: zstd.max_rss,
        tar_rss: tar.max_rss,
        cpu: zstd.cpu() + tar.cpu(),
    })
}

/// The hidden `wait4` subcommand: runs `command` with this process's stdio, writes its
/// [`Measured`] as JSON to `report`, and exits as it did (1 if a signal ended it).
pub fn wait4_helper(report: &Path, command: &[OsString]) -> anyhow::Result<ExitCode> {
    let (program, args) = command.split_first().context("no command given")?;
    let start_ns = monotonic_ns();
    let child = Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("spawn {}", Path::new(program).display()))?;
    let pid = child.id() as libc::pid_t;
    // From here the pid is reaped only by this wait4 (`Child` does not wait on drop).
    drop(child);
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our own child.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    let end_ns = monotonic_ns();
    let raw = usage.ru_maxrss.max(0) as u64;
    let max_rss = if cfg!(target_os = "macos") {
        raw
    } else {
        raw * 1024
    };
    let timeval_ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    let measured = Measured {
        start_ns,
        end_ns,
        max_rss,
        cpu_ns: timeval_ns(usage.ru_utime) + timeval_ns(usage.ru_stime),
    };
    std::fs::write(report, serde_json::to_vec(&measured)?)
        .with_context(|| format!("write {}", report.display()))?;
    Ok(if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::FAILURE
    })
}

/// `cmd`, run through this executable's `wait4` helper with the same environment changes
/// and working directory.
fn through_helper(cmd: &Command, report: &Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("find this executable")?;
    let mut helper = Command::new(exe);
    helper
        .arg("wait4")
        .arg("--report")
        .arg(report)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => helper.env(key, value),
            None => helper.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        helper.current_dir(dir);
    }
    Ok(helper)
}

fn read_report(path: &Path) -> anyhow::Result<Measured> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

/// Flushes every dirty page of the system to disk.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The monotonic clock in nanoseconds, comparable across processes (unlike `Instant`).
fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes to it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes; CLOCK_MONOTONIC exists on every unix we build for.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn create(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

/// Order statistics of a sample of durations, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// Median (mean of the middle two for even `n`).
    pub median_ms: f64,
    /// Smallest.
    pub min_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Every sample, in the order measured.
    pub samples_ms: Vec<f64>,
}

impl Stats {
    /// Statistics of `samples` (at least one).
    pub fn of(samples: &[Duration]) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        let samples_ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median_ms = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let rank = (n * 99).div_ceil(100).max(1);
        Stats {
            n,
            median_ms,
            min_ms: sorted[0],
            p99_ms: sorted[rank - 1],
            max_ms: sorted[n - 1],
            samples_ms,
        }
    }
}

/// Order statistics of byte counts (or any counts).
pub struct ByteStats {
    /// Number of values.
    pub n: usize,
    /// Median (mean of the middle two for even `n`); 0 for none.
    pub median: u64,
    /// Smallest; 0 for none.
    pub min: u64,
    /// Largest; 0 for none.
    pub max: u64,
}

pub fn byte_stats(values: impl Iterator<Item = u64>) -> ByteStats {
    let mut sorted: Vec<u64> = values.collect();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = match n {
        0 => 0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    };
    ByteStats {
        n,
        median,
        min: sorted.first().copied().unwrap_or(0),
        max: sorted.last().copied().unwrap_or(0),
    }
}

/// A fresh temporary directory named `<prefix>…` inside `dir` (made if missing), removed
/// when dropped: where a benchmark's files go.
pub fn work_tempdir(dir: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .with_context(|| format!("create a directory in {}", dir.display()))
}

/// `path` made absolute (against the working directory), for a path given on the command
/// line.
pub fn absolute(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolve {}", path.display()))
}

/// The 1-minute load average, where the system publishes it: other work on the machine
/// inflates every figure, so each report says how busy it was.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// What a reader needs to compare figures across runs: when, which commit, and the
/// machine (CPU model and count, memory, kernel), as `(what, value)` lines.
pub fn machine_facts() -> Vec<(&'static str, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or_else(|| "unknown CPU".to_string(), |m| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(|| "unknown".to_string(), |kb| format!("{:.1} GB", kb / 1e6));
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map_or_else(String::new, |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    vec![
        ("run", date),
        ("commit", commit),
        (
            "machine",
            format!("{model}, {cores} cores, {memory_gb} RAM, Linux {kernel}"),
        ),
        (
            "load average before",
            load_average().map_or_else(|| "unknown".into(), |l| format!("{l:.2}")),
        ),
    ]
}

/// A progress line on stderr (stdout carries the table).
pub fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("bench: {args}");
}

/// A file's size, with its path in the error.
pub fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len())
}

/// The cargo target directory this binary was built into (`<target dir>/<profile>/<exe>`).
pub fn cargo_target_dir() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    exe.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .context("this executable is not inside a cargo target directory")
}

/// The npm tarball's size, if the fetch cache's record beside `binary` keeps it.
pub fn npm_tarball_size(binary: &Path) -> Option<u64> {
    let record = binary
        .parent()?
        .join(openwork_packager::fetch::cache::RECORD_FILE);
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(record).ok()?).ok()?;
    value.get("tarballSize")?.as_u64()
}

/// Seconds since the Unix epoch, for the reports' `unixTime`.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The release stub of `openwork-server-v2` for `target`, built into the benchmarks' own
/// directory of the cargo target dir.
pub fn release_stub(
    target: &'static openwork_payload::targets::Target,
) -> anyhow::Result<std::path::PathBuf> {
    let stub_dir = cargo_target_dir()?.join("bench-stubs");
    progress(format_args!(
        "building the release stub into {}",
        stub_dir.display()
    ));
    Ok(openwork_packager::stub::build_stub(
        &openwork_tests::workspace_root(),
        target,
        &stub_dir,
    )?)
}

/// Packs the pinned opencode (and nothing else, as a release does) into `stub` at `out`.
pub fn pack_pinned_opencode(
    stub: &Path,
    target: &'static openwork_payload::targets::Target,
    pins: &openwork_packager::constants::Constants,
    opencode: &Path,
    out: &Path,
    compression: openwork_packager::pack::Compression,
) -> anyhow::Result<openwork_packager::pack::PackReport> {
    use openwork_packager::pack::{self, PackRequest, Versions};
    progress(format_args!(
        "packing with zstd level {} --long={}, {} threads",
        compression.level,
        openwork_payload::archive::ZSTD_WINDOW_LOG,
        compression.workers
    ));
    Ok(pack::pack(&PackRequest {
        stub: stub.to_path_buf(),
        sidecars: vec![("opencode".into(), opencode.to_path_buf())],
        out: out.to_path_buf(),
        target,
        versions: Versions {
            opencode: pins.opencode_version().to_string(),
            router: None,
        },
        compression,
        mtime: 0,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_medians() {
        let s = byte_stats([5u64, 1, 3].into_iter());
        assert_eq!((s.n, s.median, s.max), (3, 3, 5));
        assert_eq!(s.min, 1);
        let s = byte_stats([4u64, 1, 3, 2].into_iter());
        assert_eq!(s.median, 2);
    }

    #[test]
    fn order_statistics() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = Stats::of(&ms(&[5, 1, 3]));
        assert_eq!(
            (s.median_ms, s.min_ms, s.p99_ms, s.max_ms),
            (3.0, 1.0, 5.0, 5.0)
        );
        let s = Stats::of(&ms(&[4, 1, 3, 2]));
        assert_eq!(s.median_ms, 2.5);
        let s = Stats::of(&ms(&(1..=200).collect::<Vec<_>>()));
        assert_eq!(s.p99_ms, 198.0);
    }
}
