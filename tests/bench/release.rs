//! The release benchmark: `openwork-packager release` end to end with warm caches, as a
//! developer or CI runs it after the first time: wall time, where it goes (the build
//! report's per-stage `timings`), whether two runs give the same bytes, and how small the
//! payload is beside the npm tarball and beside `zstd` run by hand on the same sidecars.
//!
//! The packager is run as a process, not called as a library, so that the figure is what a
//! person waits for: start-up, the cache checks, the SHA256SUMS and report writes included.
//! One untimed run first fills the caches (opencode, the stub build); it is an artifact
//! like the others and takes part in the byte-for-byte comparison. The release is the
//! default one: opencode alone (no router is named in constants.json).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use openwork_packager::fetch;
use openwork_packager::release::report_path;
use openwork_payload::archive::{ZSTD_RELEASE_LEVEL, ZSTD_WINDOW_LOG};
use openwork_payload::targets::{self, Target};
use serde_json::json;

use crate::measure::{self, Measured, Stats};
use crate::measure::{file_size, load_average, progress};
use crate::report::{Quantity, Report, Row, Target as Goal, Verdict};

/// What the benchmark does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed releases.
    pub runs: usize,
    /// Target to release.
    pub target: String,
    /// Where dist directories and the baseline's files are made.
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
}

/// The targets docs/BENCHMARKS.md records.
mod goals {
    /// A warm-cache release, in seconds.
    pub const WALL_SECONDS: f64 = 60.0;
    /// Payload size, in percent of the raw sidecars.
    pub const PAYLOAD_PERCENT: f64 = 24.0;
}

/// Used when the caller sets no `SOURCE_DATE_EPOCH`: any fixed value does, since the
/// question is whether runs agree with each other, not which date they carry.
const FIXED_EPOCH: u64 = 1_700_000_000;

/// The stages the build report times, in order.
const STAGES: [&str; 3] = ["fetch-opencode", "stub", "pack"];

/// Runs the benchmark, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    let target = targets::by_name(&settings.target)
        .with_context(|| format!("{} is not one of the targets in targets/", settings.target))?;
    let packager = packager_binary()?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number"))?,
        Err(_) => FIXED_EPOCH,
    };
    let load_before = load_average();

    let work = measure::work_tempdir(&settings.work_dir, "release-")?;

    progress(format_args!(
        "untimed release for {} to fill the caches",
        target.name
    ));
    let warm_up = release_once(&packager, target, epoch, work.path(), "warm-up")?;
    let mut runs = Vec::with_capacity(settings.runs);
    for i in 1..=settings.runs {
        progress(format_args!("timed release {i} of {}", settings.runs));
        measure::sync();
        runs.push(release_once(
            &packager,
            target,
            epoch,
            work.path(),
            &format!("run-{i}"),
        )?);
    }
    let identical = byte_identical(std::iter::once(&warm_up).chain(&runs))?;

    progress(format_args!(
        "baseline: tar of the same sidecars, then zstd -{ZSTD_RELEASE_LEVEL} --long={ZSTD_WINDOW_LOG} -T2"
    ));
    let baseline = zstd_baseline(target, epoch, work.path())?;
    let npm_tarball = opencode_tarball_size(target);
    let load_after = load_average();

    let last = &runs[runs.len() - 1].report;
    let rows = rows(&runs, &identical, &baseline, npm_tarball, last);
    let stage_shares: serde_json::Map<String, serde_json::Value> = STAGES
        .iter()
        .map(|stage| {
            let share = median(runs.iter().map(|r| r.share(stage)));
            (stage.to_string(), json!(share))
        })
        .collect();
    let report = Report {
        benchmark: "openwork-bench release".into(),
        context: format!(
            "`openwork-packager release --target {}` (zstd level {} --long={}), warm caches, \
             {} cores, {} timed runs after one untimed one, SOURCE_DATE_EPOCH={epoch}; \
             1-minute load average {} before, {} after",
            target.name,
            last.compression_level,
            ZSTD_WINDOW_LOG,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            settings.runs,
            load_before.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            load_after.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
        ),
        rows,
        details: json!({
            "target": target.name,
            "sourceDateEpoch": epoch,
            "byteIdentical": identical.same,
            "sha256": identical.sha256,
            "comparedArtifacts": identical.compared,
            "warmUp": warm_up.json(),
            "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
            "wall": Stats::of(&runs.iter().map(|r| r.measured.wall()).collect::<Vec<_>>()),
            "stageShares": stage_shares,
            "baseline": {
                "command": format!("zstd -{ZSTD_RELEASE_LEVEL} --long={ZSTD_WINDOW_LOG} -T2"),
                "tarSize": baseline.tar_size,
                "zstdSize": baseline.zstd_size,
                "seconds": baseline.measured.wall().as_secs_f64(),
                "cpuSeconds": baseline.measured.cpu().as_secs_f64(),
                "peakRss": baseline.measured.max_rss,
            },
            "opencodeNpmTarballSize": npm_tarball,
            "loadAverage": { "before": load_before, "after": load_after },
            "unixTime": measure::unix_time(),
        }),
    };
    report.write_json(&settings.json)?;
    Ok(report)
}

/// One release: its process figures and what its build report says.
struct Run {
    measured: Measured,
    artifact: PathBuf,
    report: BuildFigures,
    raw: serde_json::Value,
}

impl Run {
    /// A stage's share of the packager's own total, in percent.
    fn share(&self, stage: &str) -> f64 {
        100.0 * self.report.stage(stage) / self.report.total_seconds.max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "wallSeconds": self.measured.wall().as_secs_f64(),
            "cpuSeconds": self.measured.cpu().as_secs_f64(),
            "peakRss": self.measured.max_rss,
            "report": self.raw,
        })
    }
}

/// The build report's fields this benchmark reads (the JSON is kept whole beside them).
struct BuildFigures {
    timings: Vec<(String, f64)>,
    total_seconds: f64,
    raw_size: u64,
    payload_size: u64,
    size: u64,
    sha256: String,
    compression_level: i64,
}

impl BuildFigures {
    fn parse(value: &serde_json::Value) -> anyhow::Result<BuildFigures> {
        let num = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("the build report has no number `{key}`"))
        };
        let timings = value
            .get("timings")
            .and_then(serde_json::Value::as_array)
            .context("the build report has no `timings`")?
            .iter()
            .filter_map(|t| {
                Some((
                    t.get("stage")?.as_str()?.to_owned(),
                    t.get("seconds")?.as_f64()?,
                ))
            })
            .collect();
        Ok(BuildFigures {
            timings,
            total_seconds: num("totalSeconds")?,
            raw_size: num("rawSize")? as u64,
            payload_size: num("payloadSize")? as u64,
            size: num("size")? as u64,
            sha256: value
                .get("sha256")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            compression_level: value
                .pointer("/compression/level")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or_default(),
        })
    }

    /// Seconds a stage took; 0 for one the report does not list.
    fn stage(&self, name: &str) -> f64 {
        self.timings
            .iter()
            .find(|(stage, _)| stage == name)
            .map_or(0.0, |(_, s)| *s)
    }
}

/// `openwork-packager release` into a fresh dist directory under `work/<name>`.
fn release_once(
    packager: &Path,
    target: &Target,
    epoch: u64,
    work: &Path,
    name: &str,
) -> anyhow::Result<Run> {
    let dir = work.join(name);
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("create {}", dist.display()))?;
    let mut cmd = Command::new(packager);
    cmd.args(["release", "--target", &target.name, "--dist"])
        .arg(&dist)
        .current_dir(openwork_tests::workspace_root())
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    let finished = measure::run_measured(&cmd, &dir)?;
    let report_file = report_path(&dist, target);
    let raw: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report_file).with_context(|| format!("read {}", report_file.display()))?,
    )
    .with_context(|| format!("parse {}", report_file.display()))?;
    let report = BuildFigures::parse(&raw)?;
    progress(format_args!(
        "  {:.1} s wall, packager total {:.1} s ({})",
        finished.measured.wall().as_secs_f64(),
        report.total_seconds,
        report
            .timings
            .iter()
            .map(|(stage, s)| format!("{stage} {s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Run {
        measured: finished.measured,
        artifact: dist.join(target.artifact_name()),
        report,
        raw,
    })
}

/// Whether the artifacts are the same bytes.
struct Identical {
    same: bool,
    compared: usize,
    sha256: Vec<String>,
}

/// Compares whole files, not the reports' hashes: the claim is about bytes on disk.
fn byte_identical<'a>(runs: impl Iterator<Item = &'a Run>) -> anyhow::Result<Identical> {
    let mut first: Option<Vec<u8>> = None;
    let mut result = Identical {
        same: true,
        compared: 0,
        sha256: Vec::new(),
    };
    for run in runs {
        let bytes = std::fs::read(&run.artifact)
            .with_context(|| format!("read {}", run.artifact.display()))?;
        match &first {
            None => first = Some(bytes),
            Some(first) => result.same &= *first == bytes,
        }
        result.compared += 1;
        result.sha256.push(run.report.sha256.clone());
    }
    Ok(result)
}

/// `zstd` by hand on a tar of the same sidecar.
struct Baseline {
    tar_size: u64,
    zstd_size: u64,
    measured: Measured,
}

/// Threads fixed at 2 rather than `-T0`: the same on this 2-core machine, and still
/// comparable when the benchmark runs on a bigger one.
fn zstd_baseline(target: &'static Target, epoch: u64, work: &Path) -> anyhow::Result<Baseline> {
    // From the cache the untimed release filled: no download.
    let opencode = fetch::ensure_pinned_opencode(&target.name)?;

    let dir = work.join("baseline");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let tar = dir.join("sidecars.tar");
    let zst = dir.join("sidecars.tar.zst");
    let mut cmd = Command::new("tar");
    cmd.arg("-cf")
        .arg(&tar)
        .args(["--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{epoch}"));
    cmd.arg("-C")
        .arg(opencode.parent().context("opencode has no directory")?)
        .arg(opencode.file_name().context("opencode has no name")?);
    let status = cmd.status().context("run tar")?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    measure::sync();
    let mut zstd = Command::new("zstd");
    zstd.args([
        &format!("-{ZSTD_RELEASE_LEVEL}"),
        &format!("--long={ZSTD_WINDOW_LOG}"),
        "-T2",
        "-q",
        "-f",
    ])
    .arg(&tar)
    .arg("-o")
    .arg(&zst);
    let finished = measure::run_measured(&zstd, &dir)
        .context("zstd (the baseline) failed; is the zstd command installed?")?;
    Ok(Baseline {
        tar_size: file_size(&tar)?,
        zstd_size: file_size(&zst)?,
        measured: finished.measured,
    })
}

fn rows(
    runs: &[Run],
    identical: &Identical,
    baseline: &Baseline,
    npm_tarball: Option<u64>,
    last: &BuildFigures,
) -> Vec<Row> {
    let n = runs.len();
    let wall = Stats::of(&runs.iter().map(|r| r.measured.wall()).collect::<Vec<_>>());
    let seconds = |ms: f64| Quantity::seconds(ms / 1e3);
    let mut rows = vec![
        Row::info(
            format!("release wall time, median of {n}"),
            seconds(wall.median_ms),
        )
        .target(Goal::Value {
            max: Quantity::seconds(goals::WALL_SECONDS),
        })
        .note(
            "spawn to exit of `openwork-packager release` (release build), warm caches: \
                 cache checks, stub `cargo build` (up to date), pack, SHA256SUMS, report",
        ),
        Row::info("release wall time, max", seconds(wall.max_ms)),
        Row::info(
            "release CPU time (user+sys), median",
            Quantity::seconds(median(runs.iter().map(|r| r.measured.cpu().as_secs_f64()))),
        ),
        Row::info(
            "packager peak RSS, max",
            Quantity::bytes(runs.iter().map(|r| r.measured.max_rss).max().unwrap_or(0)),
        ),
    ];
    for stage in STAGES {
        let secs = median(runs.iter().map(|r| r.report.stage(stage)));
        let share = median(runs.iter().map(|r| r.share(stage)));
        let mut row = Row::info(format!("stage {stage}, median"), Quantity::seconds(secs)).note(
            format!("{share:.1} % of the packager's own total (build report `timings`)"),
        );
        if stage == "pack" {
            row = row
                .against(Quantity::seconds(baseline.measured.wall().as_secs_f64()))
                .note(format!(
                    "{share:.1} % of the packager's own total; baseline: `zstd \
                     -{ZSTD_RELEASE_LEVEL} --long={ZSTD_WINDOW_LOG} -T2` of a `tar` of the same two sidecars (the \
                     pack stage also builds the tar, hashes, injects and self-checks)"
                ));
        }
        rows.push(row);
    }
    rows.push(Row {
        figure: format!("artifacts byte-identical ({} releases)", identical.compared),
        value: None,
        target: None,
        baseline: None,
        ratio: None,
        verdict: if identical.same {
            Verdict::Pass
        } else {
            Verdict::Missed
        },
        note: Some(format!(
            "the untimed release and every timed one, same SOURCE_DATE_EPOCH, compared byte \
             for byte; sha256 {}",
            dedup(&identical.sha256).join(", ")
        )),
    });
    let percent = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
    rows.push(
        Row::info(
            "payload / raw sidecars",
            Quantity::percent(percent(last.payload_size, last.raw_size)),
        )
        .against(Quantity::percent(percent(
            baseline.zstd_size,
            baseline.tar_size,
        )))
        .target(Goal::Value {
            max: Quantity::percent(goals::PAYLOAD_PERCENT),
        })
        .note(format!(
            "`payloadSize / rawSize` of the release's sidecars ({:.2} MB raw); \
             baseline: the zstd CLI's output over its tar",
            last.raw_size as f64 / 1e6
        )),
    );
    rows.push(
        Row::info("payload size", Quantity::bytes(last.payload_size))
            .against(Quantity::bytes(baseline.zstd_size))
            .note(format!(
                "baseline: `zstd -{ZSTD_RELEASE_LEVEL} --long={ZSTD_WINDOW_LOG} -T2` of a tar \
                 of the same sidecar"
            )),
    );
    rows.push(match npm_tarball {
        Some(tarball) => Row::info(
            "payload vs opencode's npm tarball",
            Quantity::bytes(last.payload_size),
        )
        .against(Quantity::bytes(tarball))
        .note("baseline: opencode's npm gzip tarball"),
        None => Row::skipped(
            "payload vs opencode's npm tarball",
            "the fetch cache's record keeps no tarball size",
        ),
    });
    rows.push(Row::info("artifact size", Quantity::bytes(last.size)));
    rows
}

/// The release binary of the packager beside this one: timing a debug build would measure
/// the wrong thing, and building it from here would fight the outer cargo for its lock.
fn packager_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    let path = exe.with_file_name(format!("openwork-packager{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p openwork-packager`",
            path.display()
        );
    }
    if !exe.parent().is_some_and(|dir| dir.ends_with("release")) {
        progress(format_args!(
            "warning: not a release build; the packager's figures are a debug build's"
        ));
    }
    Ok(path)
}

/// The npm tarball's size from the fetch cache's record, when it keeps it.
fn opencode_tarball_size(target: &Target) -> Option<u64> {
    measure::npm_tarball_size(&fetch::ensure_pinned_opencode(&target.name).ok()?)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let samples: Vec<Duration> = values
        .map(|v| Duration::from_secs_f64(v.max(0.0)))
        .collect();
    Stats::of(&samples).median_ms / 1e3
}

fn dedup(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        if !out.contains(value) {
            out.push(value.clone());
        }
    }
    out
}
