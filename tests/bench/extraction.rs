//! The extraction benchmark: a release artifact built from the pinned opencode, extracted
//! cold by the packed server and by `zstd -dc | tar -x && sync` from the same payload bytes,
//! then checked warm in-process; plus peak RSS, stub size and payload size.
//!
//! Every cold run gets a fresh data directory, and the system's dirty pages are flushed
//! (untimed) before each run, so that no run pays for the writeback of the one before. The
//! artifact and the payload file stay in the page cache: "cold" means no runtime directory
//! yet, as on a first start, not a cold disk cache.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch;
use openwork_packager::pack::Compression;
use openwork_payload::archive::{self, ZSTD_WINDOW_LOG};
use openwork_payload::targets;
use openwork_payload::{Manifest, Trailer, container};
use openwork_runtime::env_vars;
use openwork_runtime::install::{self, PrepareOptions, VerifyMode};
use openwork_runtime::layout::DataLayout;
use openwork_runtime::source;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::measure::{self, Stats};
use crate::measure::{file_size, load_average, npm_tarball_size, progress};
use crate::report::{Quantity, Report, Row, Target as Goal};

/// What the benchmark does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Cold extractions of each kind.
    pub runs: usize,
    /// In-process warm checks.
    pub warm_iterations: usize,
    /// Warm `runtime extract` processes.
    pub warm_processes: usize,
    /// Where artifacts and data directories are made.
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// A packed artifact to measure instead of packing one.
    pub artifact: Option<PathBuf>,
}

/// The targets docs/BENCHMARKS.md records.
mod goals {
    /// Cold extraction time over `zstd -dc | tar -x && sync`.
    pub const COLD_RATIO: f64 = 1.2;
    /// A warm start's check, in milliseconds.
    pub const WARM_MS: f64 = 5.0;
    /// Peak RSS beyond the zstd window, in bytes (decimal MB, as all sizes here).
    pub const RSS_BEYOND_WINDOW: u64 = 64_000_000;
    /// The stripped release stub, in bytes.
    pub const STUB_SIZE: u64 = 2_500_000;
    /// Payload size, in percent of the raw sidecars.
    pub const PAYLOAD_PERCENT: f64 = 24.0;
}

/// Runs the benchmark, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    let target = targets::host().context("this host is not one of the targets in targets/")?;
    let pins = Constants::built_in();
    let load_before = load_average();

    progress(format_args!(
        "fetching opencode {} for {}",
        pins.opencode_version(),
        target.name
    ));
    let opencode = fetch::ensure_pinned_opencode(&target.name)?;
    let raw_size = file_size(&opencode)?;
    let npm_tarball = npm_tarball_size(&opencode);

    let stub = measure::release_stub(target)?;
    let stub_size = file_size(&stub)?;

    let work = measure::work_tempdir(&settings.work_dir, "run-")?;
    let (artifact, packing) = match &settings.artifact {
        Some(given) => (measure::absolute(given)?, None),
        None => {
            let compression = Compression::release();
            let artifact = work.path().join(target.artifact_name());
            let started = Instant::now();
            let packed = measure::pack_pinned_opencode(
                &stub,
                target,
                &pins,
                &opencode,
                &artifact,
                compression,
            )?;
            let packing = Packing {
                time: started.elapsed(),
                compress_seconds: packed.compress_seconds,
                compression,
            };
            (artifact, Some(packing))
        }
    };
    let artifact_size = file_size(&artifact)?;
    let payload = Payload::cut_from(&artifact, &work.path().join("payload.zst"))?;

    progress(format_args!("in-process breakdown of one extraction"));
    let breakdown = breakdown(settings.runs, &opencode, &payload, work.path())?;
    let cold = cold_runs(settings, &artifact, &payload, work.path())?;
    progress(format_args!("warm starts"));
    let warm = warm_runs(settings, &artifact, &cold.data_dir, work.path())?;

    let load_after = load_average();
    let rows = rows(&RowInputs {
        cold: &cold,
        warm: &warm,
        breakdown: &breakdown,
        stub_size,
        raw_size: payload.manifest.total_size(),
        payload_size: payload.bytes.len() as u64,
        artifact_size,
        packing: packing.as_ref(),
        npm_tarball,
    });
    let report = Report {
        benchmark: "openwork-bench extraction".into(),
        context: format!(
            "opencode {} {} ({:.2} MB raw), {} cores{}, {} cold runs of each kind interleaved \
             after one untimed pair; 1-minute load average {} before, {} after",
            pins.opencode_version(),
            target.name,
            raw_size as f64 / 1e6,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            if sha_ni() { ", SHA-NI" } else { "" },
            settings.runs,
            load_before.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            load_after.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
        ),
        rows,
        details: json!({
            "target": target.name,
            "opencode": { "path": opencode, "size": raw_size, "npmTarballSize": npm_tarball },
            "stub": { "path": stub, "size": stub_size },
            "artifact": {
                "path": settings.artifact,
                "size": artifact_size,
                "payloadSize": payload.bytes.len(),
                "windowLog": ZSTD_WINDOW_LOG,
            },
            "pack": packing.as_ref().map(|p| json!({
                "seconds": p.time.as_secs_f64(),
                "compressSeconds": p.compress_seconds,
                "level": p.compression.level,
                "workers": p.compression.workers,
            })),
            "cold": {
                "ours": cold.ours,
                "baseline": cold.baseline,
                "oursCpu": cold.ours_cpu,
                "baselineCpu": cold.baseline_cpu,
                "oursPeakRss": cold.ours_rss,
                "zstdPeakRss": cold.zstd_rss,
                "tarPeakRss": cold.tar_rss,
            },
            "breakdown": breakdown,
            "warm": {
                "inProcess": warm.in_process,
                "process": warm.process,
                "processPeakRss": warm.process_rss,
            },
            "loadAverage": { "before": load_before, "after": load_after },
            "unixTime": measure::unix_time(),
        }),
    };
    report.write_json(&settings.json)?;
    Ok(report)
}

/// How the artifact was packed, when this run packed it.
struct Packing {
    time: Duration,
    compress_seconds: f64,
    compression: Compression,
}

/// The payload cut out of the artifact, in memory and as a file for `zstd`.
struct Payload {
    bytes: Vec<u8>,
    file: PathBuf,
    trailer: Trailer,
    manifest: Manifest,
}

impl Payload {
    fn cut_from(artifact: &Path, file: &Path) -> anyhow::Result<Payload> {
        let data =
            std::fs::read(artifact).with_context(|| format!("read {}", artifact.display()))?;
        let (_, region) = container::locate(&data)?;
        std::fs::write(file, region.payload)
            .with_context(|| format!("write {}", file.display()))?;
        Ok(Payload {
            bytes: region.payload.to_vec(),
            file: file.to_path_buf(),
            trailer: region.trailer.clone(),
            manifest: region.manifest.clone(),
        })
    }
}

struct Cold {
    ours: Stats,
    baseline: Stats,
    /// CPU time (user + system) of ours and of zstd + tar.
    ours_cpu: Stats,
    baseline_cpu: Stats,
    ours_rss: Vec<u64>,
    zstd_rss: Vec<u64>,
    tar_rss: Vec<u64>,
    /// The data directory of the last run of ours, extracted: the warm runs use it.
    data_dir: PathBuf,
}

fn cold_runs(
    settings: &Settings,
    artifact: &Path,
    payload: &Payload,
    work: &Path,
) -> anyhow::Result<Cold> {
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let (mut ours_cpu, mut baseline_cpu) = (Vec::new(), Vec::new());
    let (mut ours_rss, mut zstd_rss, mut tar_rss) = (Vec::new(), Vec::new(), Vec::new());
    let opencode = payload
        .manifest
        .files
        .get("opencode")
        .context("the manifest has no opencode")?;
    let mut data_dir = PathBuf::new();
    // Round 0 is an untimed warm-up (page cache, dynamic loader, disk).
    for round in 0..=settings.runs {
        let timed = round > 0;
        progress(format_args!(
            "cold round {round}/{}{}",
            settings.runs,
            if timed { "" } else { " (warm-up, not counted)" }
        ));

        data_dir = fresh_dir(work, &format!("cold-ours-{round}"))?;
        settle();
        let finished = measure::run_measured(&runtime_extract(artifact, &data_dir), work)?;
        let out: serde_json::Value =
            serde_json::from_slice(&finished.stdout).context("runtime extract --json output")?;
        if out["extracted"] != true {
            bail!("runtime extract into a fresh data directory did not extract: {out}");
        }
        if timed {
            ours.push(finished.measured.wall());
            ours_rss.push(finished.measured.max_rss);
            ours_cpu.push(finished.measured.cpu());
        }

        let base_dir = fresh_dir(work, &format!("cold-base-{round}"))?;
        settle();
        let pipeline = measure::zstd_tar_sync(&payload.file, &base_dir, ZSTD_WINDOW_LOG, work)?;
        let extracted = file_size(&opencode.path_in(&base_dir))?;
        if extracted != opencode.size {
            bail!(
                "the baseline extracted {extracted} bytes of opencode, not {}",
                opencode.size
            );
        }
        if timed {
            baseline.push(pipeline.wall);
            baseline_cpu.push(pipeline.cpu);
            zstd_rss.push(pipeline.zstd_rss);
            tar_rss.push(pipeline.tar_rss);
        }
        remove_dir(&base_dir)?;
        if round < settings.runs {
            remove_dir(&data_dir)?;
        }
    }
    Ok(Cold {
        ours: Stats::of(&ours),
        baseline: Stats::of(&baseline),
        ours_cpu: Stats::of(&ours_cpu),
        baseline_cpu: Stats::of(&baseline_cpu),
        ours_rss,
        zstd_rss,
        tar_rss,
        data_dir,
    })
}

/// Where one cold extraction spends its time, measured in-process piece by piece, each
/// after [`settle`]: the decoding thread's work, the writing thread's two parts, and the
/// two threads together without process start-up, lock, stamp and rename.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Breakdown {
    /// zstd decoding only, into a sink, on one thread.
    decode: Stats,
    /// SHA-256 of the raw sidecar, from memory.
    sha256_raw: Stats,
    /// Writing the raw sidecar from memory into a new file and fsyncing it.
    write_fsync: Stats,
    /// `archive::extract` into a fresh directory: decode, hashes, write, fsync.
    extract: Stats,
}

fn breakdown(
    runs: usize,
    opencode: &Path,
    payload: &Payload,
    work: &Path,
) -> anyhow::Result<Breakdown> {
    let raw = std::fs::read(opencode).with_context(|| format!("read {}", opencode.display()))?;
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for round in 0..runs {
        let dir = fresh_dir(work, &format!("extract-{round}"))?;
        settle();
        let started = Instant::now();
        archive::extract(
            payload.bytes.as_slice(),
            &payload.trailer,
            &payload.manifest,
            &dir,
        )?;
        samples[3].push(started.elapsed());
        remove_dir(&dir)?;

        settle();
        let started = Instant::now();
        let mut decoder = zstd::stream::read::Decoder::with_buffer(payload.bytes.as_slice())?;
        decoder.window_log_max(ZSTD_WINDOW_LOG)?;
        let decoded = std::io::copy(&mut decoder, &mut std::io::sink())?;
        samples[0].push(started.elapsed());
        if decoded != payload.trailer.uncompressed_len {
            bail!(
                "decoded {decoded} bytes, the trailer says {}",
                payload.trailer.uncompressed_len
            );
        }

        settle();
        let started = Instant::now();
        std::hint::black_box(Sha256::digest(&raw));
        samples[1].push(started.elapsed());

        let dir = fresh_dir(work, &format!("write-{round}"))?;
        settle();
        let started = Instant::now();
        let path = dir.join("opencode");
        let mut file = std::fs::File::create_new(&path)
            .with_context(|| format!("create {}", path.display()))?;
        // In the pieces the extraction writes, not in one 141 MB call.
        for piece in raw.chunks(256 * 1024) {
            file.write_all(piece)?;
        }
        file.sync_all()?;
        drop(file);
        samples[2].push(started.elapsed());
        remove_dir(&dir)?;
    }
    let [decode, sha256_raw, write_fsync, extract] = samples.map(|s| Stats::of(&s));
    Ok(Breakdown {
        decode,
        sha256_raw,
        write_fsync,
        extract,
    })
}

struct Warm {
    in_process: Stats,
    process: Stats,
    process_rss: Vec<u64>,
}

fn warm_runs(
    settings: &Settings,
    artifact: &Path,
    data_dir: &Path,
    work: &Path,
) -> anyhow::Result<Warm> {
    let layout = DataLayout::resolve(Some(data_dir.to_path_buf()))?;
    let options = PrepareOptions {
        verify: VerifyMode::Fast,
        lock_timeout: Duration::from_secs(10),
        server_version: openwork_runtime::SERVER_VERSION.to_string(),
    };
    let check = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let source = source::load_embedded(artifact)?;
        let prepared = install::prepare(&source, &layout, &options)?;
        let elapsed = started.elapsed();
        if prepared.extracted {
            bail!("the warm check extracted again: the cold run's directory was not reused");
        }
        Ok(elapsed)
    };
    for _ in 0..settings.warm_iterations.min(50) {
        check()?;
    }
    let in_process = (0..settings.warm_iterations)
        .map(|_| check())
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut process = Vec::new();
    let mut process_rss = Vec::new();
    for _ in 0..settings.warm_processes {
        let finished = measure::run_measured(&runtime_extract(artifact, data_dir), work)?;
        let out: serde_json::Value =
            serde_json::from_slice(&finished.stdout).context("runtime extract --json output")?;
        if out["extracted"] != false {
            bail!("a warm runtime extract extracted again: {out}");
        }
        process.push(finished.measured.wall());
        process_rss.push(finished.measured.max_rss);
    }
    Ok(Warm {
        in_process: Stats::of(&in_process),
        process: Stats::of(&process),
        process_rss,
    })
}

struct RowInputs<'a> {
    cold: &'a Cold,
    warm: &'a Warm,
    breakdown: &'a Breakdown,
    stub_size: u64,
    raw_size: u64,
    payload_size: u64,
    artifact_size: u64,
    packing: Option<&'a Packing>,
    npm_tarball: Option<u64>,
}

fn rows(i: &RowInputs<'_>) -> Vec<Row> {
    let RowInputs {
        cold,
        warm,
        breakdown,
        stub_size,
        raw_size,
        payload_size,
        artifact_size,
        packing,
        npm_tarball,
    } = i;
    let window = 1u64 << ZSTD_WINDOW_LOG;
    let ours_rss = cold.ours_rss.iter().copied().max().unwrap_or(0);
    let zstd_rss = cold.zstd_rss.iter().copied().max().unwrap_or(0);
    let tar_rss = cold.tar_rss.iter().copied().max().unwrap_or(0);
    let n = cold.ours.n;
    let ms = Quantity::ms;
    let mut rows = vec![
        Row::info(
            format!("cold extract, median of {n}"),
            ms(cold.ours.median_ms),
        )
        .against(ms(cold.baseline.median_ms))
        .target(Goal::Ratio {
            max: goals::COLD_RATIO,
        })
        .note(
            "`openwork-server-v2 runtime extract` (spawn to exit: locate, decode, hash, \
             write, fsync, stamp, rename) vs `zstd -dc --long=27 payload.zst | tar -x -C dir \
             && sync` on the same bytes",
        ),
        Row::info("cold extract, min", ms(cold.ours.min_ms)).against(ms(cold.baseline.min_ms)),
        Row::info(
            "cold extract CPU time (user+sys), median",
            ms(cold.ours_cpu.median_ms),
        )
        .against(ms(cold.baseline_cpu.median_ms))
        .note(
            "baseline: zstd + tar; the writeback behind fsync and sync is mostly done by \
             kernel threads and not counted",
        ),
        Row::info(
            "  in-process: decode only, all frames on one thread",
            ms(breakdown.decode.median_ms),
        ),
        Row::info(
            "  in-process: SHA-256 of raw sidecar",
            ms(breakdown.sha256_raw.median_ms),
        ),
        Row::info(
            "  in-process: write + fsync raw sidecar",
            ms(breakdown.write_fsync.median_ms),
        ),
        Row::info(
            "  in-process: archive::extract (all its threads)",
            ms(breakdown.extract.median_ms),
        )
        .note(
            "the pieces, timed one by one in this process: the frames are decoded on one \
             thread per core (up to four), the caller writes each file and a thread of its \
             own hashes it, so on two cores archive::extract takes about (decode + SHA-256 + \
             write) / 2 plus the first frame and the fsync. Writing into the page cache \
             varies 2x from minute to minute on this kind of VM: read these for proportions",
        ),
        Row::info(
            format!("warm check in-process, median of {}", warm.in_process.n),
            ms(warm.in_process.median_ms),
        )
        .target(Goal::Value {
            max: ms(goals::WARM_MS),
        })
        .note(
            "source::load_embedded + install::prepare on an extracted data dir \
             (map, locate, lease, stamp)",
        ),
        Row::info("warm check in-process, p99", ms(warm.in_process.p99_ms)).target(Goal::Value {
            max: ms(goals::WARM_MS),
        }),
        Row::info(
            format!(
                "warm `runtime extract` process, median of {}",
                warm.process.n
            ),
            ms(warm.process.median_ms),
        ),
        Row::info(
            format!("peak RSS, cold runtime extract, max of {n}"),
            Quantity::bytes(ours_rss),
        )
        .against(Quantity::bytes(zstd_rss))
        .note(format!(
            "ru_maxrss from wait4, including the mapped payload pages; baseline: the zstd \
             process (tar: {:.2} MB)",
            tar_rss as f64 / 1e6
        )),
        Row::info(
            format!(
                "  beyond 2^{ZSTD_WINDOW_LOG} B (a one-frame payload's window; frames hold less)"
            ),
            Quantity::bytes(ours_rss.saturating_sub(window)),
        )
        .target(Goal::Value {
            max: Quantity::bytes(goals::RSS_BEYOND_WINDOW),
        }),
        Row::info("release stub, stripped", Quantity::bytes(*stub_size)).target(Goal::Value {
            max: Quantity::bytes(goals::STUB_SIZE),
        }),
    ];
    rows.push(match packing {
        Some(p) => Row::info(
            format!(
                "pack (zstd -{} --long={ZSTD_WINDOW_LOG}, {} threads)",
                p.compression.level, p.compression.workers
            ),
            Quantity::seconds(p.time.as_secs_f64()),
        ),
        None => Row::skipped("pack", "not measured: --artifact was given"),
    });
    let payload = Row::info("payload (zstd)", Quantity::bytes(*payload_size));
    rows.push(match npm_tarball {
        Some(size) => payload
            .against(Quantity::bytes(*size))
            .note("baseline: the npm tarball (gzip)"),
        None => payload
            .note("baseline skipped: the fetch cache record does not keep the npm tarball's size"),
    });
    rows.push(
        Row::info(
            "payload, % of raw",
            Quantity::percent(*payload_size as f64 * 100.0 / *raw_size as f64),
        )
        .target(Goal::Value {
            max: Quantity::percent(goals::PAYLOAD_PERCENT),
        }),
    );
    rows.push(Row::info(
        "packed artifact",
        Quantity::bytes(*artifact_size),
    ));
    rows
}

/// `<artifact> --data-dir <dir> runtime extract --json`, isolated from the caller's env.
fn runtime_extract(artifact: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(artifact);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["runtime", "extract", "--json"])
        .env_remove(env_vars::OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR)
        .env_remove(env_vars::OPENWORK_DATA_DIR)
        .env_remove(env_vars::OPENWORK_SERVER_V2_LOCK_TIMEOUT)
        .env(env_vars::OPENWORK_LOG, "warn");
    cmd
}

/// Before each timed run: flush every dirty page (the previous run's files and deletions)
/// and give the disk a moment, so that no run pays for the one before.
fn settle() {
    measure::sync();
    std::thread::sleep(Duration::from_millis(200));
}

fn fresh_dir(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = work.join(name);
    if dir.exists() {
        remove_dir(&dir)?;
    }
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

fn sha_ni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
