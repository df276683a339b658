//! The serve benchmark: how long a warm `openwork-server-v2 serve` takes from spawn to its
//! ready line, and how much memory the server process itself holds once idle, beside bare
//! `opencode serve` (the floor: what any supervisor has to wait for) and
//! openwork-orchestrator 0.18.1 (the Bun-compiled supervisor this server replaces), all
//! three running the same opencode executable, the one the packed artifact extracted.
//!
//! Every contender runs once per round, in an order rotated from round to round so that a
//! busy moment on the machine does not land on one contender only. Round 0 is an untimed
//! warm-up: page cache, and opencode's one-time database migration in each home. Each
//! contender has a HOME and XDG directories of its own under a temporary directory, and
//! every run a fresh, empty workspace outside any git repository, so that opencode neither
//! reads nor writes the user's files nor finds a project above the workspace.
//!
//! When a contender counts as started:
//! - ours: its ready line on stdout, which it prints once opencode has answered its health
//!   check (the server polls every 5 ms);
//! - bare opencode: the first 200 from `GET /global/health`, polled here every 5 ms;
//! - the orchestrator: its own `Healthy` log line for opencode (from then on it would let a
//!   client in); the first 200 of the same 5 ms poll of its opencode port is kept too, to
//!   tell its own overhead from its polling interval (250 ms).
//!
//! Memory is VmRSS of the contender's own process, not of its children, read from /proc
//! after it has been ready for `idle`. After SIGTERM, every process seen in a contender's
//! tree is checked: what outlives it is reported, then killed.
//!
//! Linux only: process trees and memory are read from /proc.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch::{self, FetchRequest, FetchedBinary};
use openwork_packager::pack::{self, Compression, PackRequest, Versions};
use openwork_payload::targets::{self, Target};
use openwork_runtime::source;
use serde_json::{Value, json};

use crate::measure;
use crate::measure::{Stats, byte_stats};
use crate::measure::{cargo_target_dir, file_size, load_average, progress};
use crate::overhead::{self, Side};
use crate::procs::{
    Running, check_nothing_left, describe_exit, isolated_command, mkdir, proc_name, vm_rss,
};
use crate::report::{Quantity, Report, Row, Target as Goal};

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

/// The targets docs/BENCHMARKS.md records.
mod goals {
    /// Warm start to ready over bare `opencode serve` to healthy.
    pub const WARM_READY_RATIO: f64 = 1.05;
    /// First start (extraction included) over warm start, both to ready.
    pub const FIRST_START_RATIO: f64 = 1.2;
    /// The server process's own idle RSS, in bytes (decimal MB, as all sizes here).
    pub const SERVER_RSS: u64 = 8_000_000;
}

/// The predecessor, as published on the npm registry (one package per platform, named
/// after the same platform names as targets/).
mod orchestrator {
    pub const NAME: &str = "openwork-orchestrator";
    pub const VERSION: &str = "0.18.1";
    pub const FILE: &str = "openwork";
}

/// Health poll interval for bare opencode and the orchestrator's opencode port.
const POLL: Duration = Duration::from_millis(5);
/// An unanswered health probe gets another beside it after this long (the server's own
/// readiness probes do the same).
const HEDGE: Duration = Duration::from_millis(50);
/// opencode's basic-auth user name (`OPENCODE_SERVER_USERNAME`'s default).
const OPENCODE_USER: &str = "opencode";

/// Runs the benchmark, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    if !cfg!(target_os = "linux") {
        bail!("the serve benchmark reads process trees and memory from /proc: Linux only");
    }
    let target = targets::host().context("this host is not one of the targets in targets/")?;
    let pins = Constants::built_in();
    let load_before = load_average();

    progress(format_args!(
        "fetching opencode {} for {}",
        pins.opencode_version(),
        target.name
    ));
    let opencode = fetch::ensure_pinned_opencode(&target.name)?;

    let work = measure::work_tempdir(&settings.work_dir, "openwork-bench-serve-")?;
    let work_path = work.path().to_path_buf();
    let artifact = match &settings.artifact {
        Some(given) => measure::absolute(given)?,
        None => pack_artifact(target, &pins, &opencode, &work_path, Compression::release())?,
    };

    progress(format_args!(
        "fetching {}-{}@{} (the predecessor)",
        orchestrator::NAME,
        target.name,
        orchestrator::VERSION
    ));
    let orchestrator = fetch_orchestrator(target).map_err(|e| format!("{e:#}"));
    if let Err(why) = &orchestrator {
        progress(format_args!("orchestrator unavailable, skipped: {why}"));
    }

    progress(format_args!("extracting the runtime once (untimed)"));
    let data_dir = mkdir(&work_path.join("server-data"))?;
    let runtime_dir = extract_runtime(&artifact, &data_dir)?;
    let manifest = source::load_embedded(&artifact)?.manifest;
    let runtime_opencode = manifest
        .files
        .get("opencode")
        .context("the artifact's manifest has no opencode")?
        .path_in(&runtime_dir);

    let mut contenders = vec![
        Contender::new(Kind::Ours, &work_path, artifact.clone())?,
        Contender::new(Kind::Bare, &work_path, runtime_opencode.clone())?,
    ];
    let mut orchestrator_error = None;
    let mut orchestrator_info = Value::Null;
    match &orchestrator {
        Ok(fetched) => {
            orchestrator_info = json!({
                "path": fetched.path,
                "source": fetched.source,
                "integrity": fetched.integrity,
                "sha256": fetched.sha256,
                "size": fetched.size,
            });
            contenders.push(Contender::new(
                Kind::Orchestrator,
                &work_path,
                fetched.path.clone(),
            )?);
        }
        Err(why) => orchestrator_error = Some(why.clone()),
    }
    let env = Environment {
        data_dir: data_dir.clone(),
        runtime_dir: runtime_dir.clone(),
        opencode: runtime_opencode.clone(),
        stand_in: write_stand_in(&work_path)?,
    };

    let mut order_log = Vec::new();
    let mut first_starts = Vec::new();
    for round in 0..=settings.runs {
        let timed = round > 0;
        let n = contenders.len();
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        order_log.push(
            order
                .iter()
                .map(|&i| contenders[i].kind.name())
                .collect::<Vec<_>>(),
        );
        progress(format_args!(
            "round {round}/{}{}: {}",
            settings.runs,
            if timed { "" } else { " (warm-up, not counted)" },
            order_log[round].join(", ")
        ));
        for &i in &order {
            let contender = &mut contenders[i];
            if contender.failed.is_some() {
                continue;
            }
            let workspace = mkdir(
                &work_path
                    .join("workspaces")
                    .join(format!("{}-{round}", contender.kind.name())),
            )?;
            match contender.run_once(&env, &workspace, round, settings.idle) {
                Ok(sample) => {
                    progress(format_args!(
                        "  {}: ready {:.1} ms, RSS {:.2} MB, stop {:.1} ms, {}",
                        contender.kind.name(),
                        sample.ready.as_secs_f64() * 1e3,
                        sample.rss as f64 / 1e6,
                        sample.stop.as_secs_f64() * 1e3,
                        sample.exit
                    ));
                    if timed {
                        contender.samples.push(sample);
                    }
                }
                // The predecessor is a guest here: whatever fails with it is reported and
                // the rest still measured. Our own server and bare opencode must work.
                Err(e) if contender.kind == Kind::Orchestrator => {
                    progress(format_args!("  orchestrator failed, dropped: {e:#}"));
                    contender.failed = Some(format!("{e:#}"));
                }
                Err(e) => return Err(e.context(format!("{} (round {round})", contender.kind))),
            }
        }
        if timed {
            let ready = first_start(&contenders[0], &env, &work_path, round, settings.idle)?;
            progress(format_args!(
                "  first start (extract + ready): {:.1} ms",
                ready.as_secs_f64() * 1e3
            ));
            first_starts.push(ready);
        }
    }
    let proxy = if settings.proxy_requests == 0 {
        Err("not asked for (--proxy-requests 0)".to_string())
    } else {
        progress(format_args!(
            "proxy overhead: {} requests each way over {} connections, through the server \
             and to its opencode directly, in {} rounds ordered ABBA",
            settings.proxy_requests,
            overhead::CONNECTIONS,
            overhead::ROUNDS
        ));
        proxy_overhead(&contenders[0], &env, &work_path, settings).map_err(|e| format!("{e:#}"))
    };
    if let Err(why) = &proxy {
        progress(format_args!("proxy overhead not measured: {why}"));
    }
    let tls = if settings.proxy_requests == 0 {
        Err("not asked for (--proxy-requests 0)".to_string())
    } else {
        progress(format_args!(
            "TLS: {TLS_HANDSHAKES} handshakes, then {} requests through a --tls on server and a \
             plain one over {} connections each, in {} rounds ordered ABBA",
            settings.proxy_requests,
            overhead::CONNECTIONS,
            overhead::ROUNDS
        ));
        tls_overhead(&contenders[0], &env, &work_path, settings).map_err(|e| format!("{e:#}"))
    };
    if let Err(why) = &tls {
        progress(format_args!("TLS not measured: {why}"));
    }

    let executables: Vec<&Path> = contenders.iter().map(|c| c.exe.as_path()).collect();
    let leftovers = check_nothing_left(&executables);

    let load_after = load_average();
    let ours = &contenders[0];
    let bare = &contenders[1];
    let orch = contenders.get(2);
    if let Some(orch) = orch
        && let Some(why) = &orch.failed
    {
        orchestrator_error = Some(why.clone());
    }
    let orch = orch.filter(|o| o.failed.is_none() && !o.samples.is_empty());
    let mut rows = rows(ours, bare, orch, orchestrator_error.as_deref(), settings);
    rows.insert(3, first_start_row(&first_starts, ours));
    match &proxy {
        Ok(figures) => rows.extend(figures.rows()),
        Err(why) => rows.push(Row::skipped("proxy: added latency, p50", why.clone())),
    }
    match &tls {
        Ok((figures, handshake)) => rows.extend(overhead::tls_rows(figures, handshake)),
        Err(why) => rows.push(Row::skipped("TLS: handshake, p50", why.clone())),
    }
    let report = Report {
        benchmark: "openwork-bench serve".into(),
        context: format!(
            "opencode {} {}, {} cores, {} timed rounds after one untimed round, contenders \
             rotated each round, RSS read after {:.1} s idle; 1-minute load average {} before, \
             {} after",
            pins.opencode_version(),
            target.name,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            settings.runs,
            settings.idle.as_secs_f64(),
            load_before.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            load_after.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
        ),
        rows,
        details: json!({
            "target": target.name,
            "artifact": {
                "path": settings.artifact,
                "size": file_size(&artifact)?,
            },
            "opencode": {
                "fetched": opencode,
                "run": "the artifact's extracted copy (the same file for all contenders)",
            },
            "orchestrator": {
                "package": format!("{}-{}@{}", orchestrator::NAME, target.name, orchestrator::VERSION),
                "fetched": orchestrator_info,
                "error": orchestrator_error,
                "arguments": ORCHESTRATOR_ARGS_DOC,
            },
            "rounds": order_log,
            "contenders": contenders.iter().map(Contender::details).collect::<Vec<_>>(),
            "proxy": match &proxy {
                Ok(figures) => figures.details(),
                Err(why) => json!({ "error": why }),
            },
            "tls": match &tls {
                Ok((figures, handshake)) => json!({
                    "handshakeMs": { "n": handshake.n, "p50": handshake.median_ms, "p99": handshake.p99_ms },
                    "tlsVsPlain": figures.details(),
                }),
                Err(why) => json!({ "error": why }),
            },
            "processesLeftAtEnd": leftovers,
            "loadAverage": { "before": load_before, "after": load_after },
            "unixTime": measure::unix_time(),
        }),
    };
    drop(contenders);
    report.write_json(&settings.json)?;
    if !leftovers.is_empty() {
        bail!("processes survived the benchmark's own cleanup: {leftovers:?}");
    }
    Ok(report)
}

fn rows(
    ours: &Contender,
    bare: &Contender,
    orch: Option<&Contender>,
    orch_error: Option<&str>,
    settings: &Settings,
) -> Vec<Row> {
    let ms = Quantity::ms;
    let bytes = Quantity::bytes;
    // Every contender passed in here has at least one sample.
    let ready = |c: &Contender| c.durations(|s| Some(s.ready)).expect("samples");
    let rss = |c: &Contender| byte_stats(c.samples.iter().map(|s| s.rss));
    let child_rss = |c: &Contender, name: &str| {
        byte_stats(
            c.samples
                .iter()
                .filter_map(|s| s.children.iter().find(|p| p.name == name).map(|p| p.rss)),
        )
    };
    let (ours_ready, bare_ready) = (ready(ours), ready(bare));
    let (ours_rss, bare_rss) = (rss(ours), rss(bare));
    let n = ours_ready.n;
    let mut rows = vec![
        Row::info(
            format!("warm start to ready, median of {n}"),
            ms(ours_ready.median_ms),
        )
        .against(ms(bare_ready.median_ms))
        .target(Goal::Ratio {
            max: goals::WARM_READY_RATIO,
        })
        .note(
            "spawn of the packed artifact (runtime already extracted) to its ready line on \
             stdout, vs spawn of bare `opencode serve` (the same executable) to the first 200 \
             from GET /global/health, polled every 5 ms with a second probe beside one \
             unanswered for 50 ms",
        ),
        Row::info("warm start to ready, min", ms(ours_ready.min_ms)).against(ms(bare_ready.min_ms)),
        Row::info("warm start to ready, max", ms(ours_ready.max_ms)).against(ms(bare_ready.max_ms)),
    ];
    let own: Vec<Duration> = ours
        .samples
        .iter()
        .filter_map(|s| Some(s.ready.saturating_sub(s.opencode_startup?)))
        .collect();
    if !own.is_empty() {
        rows.push(
            Row::info(
                "  server's own share (ready - opencode startupMs), median",
                ms(Stats::of(&own).median_ms),
            )
            .note(
                "the server's `startupMs` for opencode (its spawn to the server's first \
                 successful health poll, every 5 ms) taken from the ready time: the server's \
                 start-up, runtime check and lifeline before the spawn, and the ready line after",
            ),
        );
    }
    let orch_name = format!("openwork-orchestrator {}", orchestrator::VERSION);
    match orch {
        Some(orch) => {
            let orch_ready = ready(orch);
            rows.push(
                Row::info(
                    format!("warm start vs {orch_name}, median"),
                    ms(ours_ready.median_ms),
                )
                .against(ms(orch_ready.median_ms))
                .note(
                    "baseline: spawn of the orchestrator (`serve`, given the same opencode with \
                     --opencode-bin) to its own log line saying opencode is healthy",
                ),
            );
            rows.push(
                Row::info(
                    format!("warm start vs {orch_name}, min"),
                    ms(ours_ready.min_ms),
                )
                .against(ms(orch_ready.min_ms)),
            );
            rows.push(
                Row::info(
                    format!("warm start vs {orch_name}, max"),
                    ms(ours_ready.max_ms),
                )
                .against(ms(orch_ready.max_ms)),
            );
            if let Some(spawned) = orch.durations(|s| s.opencode_spawned) {
                rows.push(
                    Row::info(
                        "  orchestrator: spawn to spawning opencode, median",
                        ms(spawned.median_ms),
                    )
                    .note(
                        "from its `Process spawned` log line for opencode; before it, it runs \
                         `opencode --version` and waits for it",
                    ),
                );
            }
            if let Some(polled) = orch.durations(|s| s.polled) {
                rows.push(
                    Row::info(
                        "  orchestrator: spawn to its opencode answering 200, median",
                        ms(polled.median_ms),
                    )
                    .note(
                        "its opencode port polled here every 5 ms, as bare opencode's; the \
                         orchestrator itself polls every 250 ms",
                    ),
                );
            }
        }
        None => rows.push(Row::skipped(
            format!("warm start vs {orch_name}"),
            orch_error.unwrap_or("not measured"),
        )),
    }
    let rss_row = Row::info(
        format!("idle RSS, server process only, median of {n}"),
        bytes(ours_rss.median),
    );
    let rss_row = match orch {
        Some(orch) => rss_row.against(bytes(rss(orch).median)),
        None => rss_row,
    };
    rows.push(
        rss_row
            .target(Goal::Value {
                max: bytes(goals::SERVER_RSS),
            })
            .note(format!(
                "VmRSS from /proc/<pid>/status {:.1} s after ready, children not counted; \
                 baseline: the orchestrator's own process, likewise",
                settings.idle.as_secs_f64()
            )),
    );
    rows.push(
        Row::info("idle RSS, server process only, max", bytes(ours_rss.max)).target(Goal::Value {
            max: bytes(goals::SERVER_RSS),
        }),
    );
    // Told apart by executable: its process name depends on how it was spawned.
    let own_exe = std::fs::canonicalize(&ours.exe).ok();
    let lifeline = byte_stats(ours.samples.iter().filter_map(|s| {
        s.children
            .iter()
            .find(|p| p.exe.is_some() && p.exe == own_exe)
            .map(|p| p.rss)
    }));
    if lifeline.n > 0 {
        rows.push(
            Row::info(
                "  idle RSS, the server's lifeline process, median",
                bytes(lifeline.median),
            )
            .note(
                "the watchdog process the server starts beside its sidecars (not counted in \
                 the server's own figure)",
            ),
        );
    }
    rows.push(Row::info(
        "idle RSS, bare opencode serve, median",
        bytes(bare_rss.median),
    ));
    let under_ours = child_rss(ours, "opencode");
    if under_ours.n > 0 {
        rows.push(
            Row::info(
                "  idle RSS, opencode under openwork-server-v2, median",
                bytes(under_ours.median),
            )
            .against(bytes(bare_rss.median)),
        );
    }
    let stop = |c: &Contender| c.durations(|s| Some(s.stop)).expect("samples");
    let mut stop_note = format!(
        "SIGTERM to exit; exits: ours {}, bare opencode {}",
        exits(ours),
        exits(bare)
    );
    if let Some(orch) = orch {
        stop_note += &format!(
            ", orchestrator {} (median {:.1} ms)",
            exits(orch),
            stop(orch).median_ms
        );
    }
    for c in [Some(ours), Some(bare), orch].into_iter().flatten() {
        let left: Vec<String> = c
            .samples
            .iter()
            .flat_map(|s| s.orphans.iter().cloned())
            .collect();
        if !left.is_empty() {
            stop_note += &format!(
                "; {} left running after it exited (killed by the benchmark): {}",
                c.kind.name(),
                summarize(&left)
            );
        }
    }
    rows.push(
        Row::info("SIGTERM to exit, median", ms(stop(ours).median_ms))
            .against(ms(stop(bare).median_ms))
            .note(stop_note),
    );
    rows
}

/// The orchestrator's command line, for the JSON (the values are filled in per run).
const ORCHESTRATOR_ARGS_DOC: &str = "serve --workspace W --data-dir D --opencode-bin OPENCODE \
    --opencode-source external --openwork-server-bin STAND_IN --sidecar-source external \
    --allow-external --opencode-port P --openwork-port Q --sidecar-base-url <loopback, closed> \
    --sidecar-manifest <loopback, closed> --log-format json --no-color; env \
    OPENWORK_OPENCODE_USERNAME/PASSWORD with OPENWORK_INTERNAL_ALLOW_OPENCODE_CREDENTIALS=1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `openwork-server-v2 serve`, the packed artifact.
    Ours,
    /// `opencode serve`.
    Bare,
    /// `openwork serve` of openwork-orchestrator.
    Orchestrator,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "openwork-server-v2",
            Kind::Bare => "opencode",
            Kind::Orchestrator => "orchestrator",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One start of the packed artifact with an empty data directory: extraction of the whole
/// runtime, then the same readiness as a warm start. The data directory goes afterwards.
fn first_start(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    round: usize,
    idle: Duration,
) -> anyhow::Result<Duration> {
    let data_dir = work.join(format!("first-start-data-{round}"));
    let relative = env
        .runtime_dir
        .strip_prefix(&env.data_dir)
        .context("the runtime dir is not in the data dir")?;
    let fresh = Environment {
        runtime_dir: data_dir.join(relative),
        data_dir: mkdir(&data_dir)?,
        ..env.clone()
    };
    let workspace = mkdir(&work.join("workspaces").join(format!("first-{round}")))?;
    let sample = ours
        .run_once(&fresh, &workspace, round, idle)
        .with_context(|| format!("first start (round {round})"))?;
    std::fs::remove_dir_all(&data_dir).with_context(|| format!("remove {}", data_dir.display()))?;
    Ok(sample.ready)
}

/// First start against warm start, both to the ready line.
fn first_start_row(first_starts: &[Duration], ours: &Contender) -> Row {
    let warm = ours.durations(|s| Some(s.ready)).expect("samples");
    let first = Stats::of(first_starts);
    Row::info(
        format!("first start to ready, median of {}", first.n),
        Quantity::ms(first.median_ms),
    )
    .against(Quantity::ms(warm.median_ms))
    .target(Goal::Ratio {
        max: goals::FIRST_START_RATIO,
    })
    .note(
        "spawn of the packed artifact with an empty data dir (it extracts its runtime) to its \
         ready line, vs a warm start of the same artifact",
    )
}

/// What every run needs besides its contender.
#[derive(Clone)]
struct Environment {
    /// Our server's data directory, extracted once before the first round.
    data_dir: PathBuf,
    /// The runtime directory in it.
    runtime_dir: PathBuf,
    /// opencode in that runtime directory.
    opencode: PathBuf,
    /// What the orchestrator runs as its openwork-server.
    stand_in: PathBuf,
}

/// One contender, its isolated home and its measurements.
struct Contender {
    kind: Kind,
    exe: PathBuf,
    home: PathBuf,
    logs: PathBuf,
    samples: Vec<Sample>,
    failed: Option<String>,
}

/// One timed start.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    round: usize,
    /// Spawn to ready (see the module docs for what ready means per contender).
    #[serde(serialize_with = "as_ms")]
    ready: Duration,
    /// The orchestrator: spawn to the first 200 from its opencode port.
    #[serde(serialize_with = "as_ms_opt")]
    polled: Option<Duration>,
    /// The orchestrator: spawn to its log line saying it spawned opencode.
    #[serde(serialize_with = "as_ms_opt")]
    opencode_spawned: Option<Duration>,
    /// Ours: opencode's spawn to healthy as the server measured and logged it
    /// (`startupMs`), so that `ready` minus this is the server's own share.
    #[serde(serialize_with = "as_ms_opt")]
    opencode_startup: Option<Duration>,
    /// VmRSS of the contender's own process after the idle time.
    rss: u64,
    /// Its descendants then, with their VmRSS.
    children: Vec<ProcInfo>,
    /// SIGTERM to exit.
    #[serde(serialize_with = "as_ms")]
    stop: Duration,
    /// How it exited.
    exit: String,
    /// Processes of its tree still running `ORPHAN_GRACE` after it exited.
    orphans: Vec<String>,
    /// The orchestrator's own log lines up to opencode healthy, with their time since spawn.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timeline: Vec<String>,
    /// The first lines of its stderr.
    stderr_head: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct ProcInfo {
    pid: u32,
    name: String,
    exe: Option<PathBuf>,
    rss: u64,
}

impl Contender {
    fn new(kind: Kind, work: &Path, exe: PathBuf) -> anyhow::Result<Contender> {
        let home = mkdir(&work.join("homes").join(kind.name()))?;
        Ok(Contender {
            kind,
            exe,
            home,
            logs: mkdir(&work.join("logs"))?,
            samples: Vec::new(),
            failed: None,
        })
    }

    /// The contender's command: see [`isolated_command`].
    fn command(&self, workspace: &Path) -> anyhow::Result<Command> {
        isolated_command(&self.exe, &self.home, workspace)
    }

    fn run_once(
        &self,
        env: &Environment,
        workspace: &Path,
        round: usize,
        idle: Duration,
    ) -> anyhow::Result<Sample> {
        let stderr_path = self
            .logs
            .join(format!("{}-{round}.stderr", self.kind.name()));
        let mut cmd = self.command(workspace)?;
        cmd.stderr(
            std::fs::File::create(&stderr_path)
                .with_context(|| format!("create {}", stderr_path.display()))?,
        );
        let password = password(round);
        let mut opencode_port = None;
        match self.kind {
            Kind::Ours => {
                cmd.arg("serve")
                    .args(["--port", "0"])
                    .arg("--data-dir")
                    .arg(&env.data_dir)
                    .arg("--workspace")
                    .arg(workspace);
            }
            Kind::Bare => {
                let port = free_port()?;
                opencode_port = Some(port);
                cmd.args(["serve", "--hostname", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .env("OPENCODE_SERVER_PASSWORD", &password);
            }
            Kind::Orchestrator => {
                let port = free_port()?;
                opencode_port = Some(port);
                // Nothing may be downloaded: both sidecars are given, and the download
                // locations point at a closed loopback port in case it tries anyway.
                let nowhere = "http://127.0.0.1:9/";
                cmd.arg("serve")
                    .arg("--workspace")
                    .arg(workspace)
                    .arg("--data-dir")
                    .arg(self.home.join("orchestrator-data"))
                    .arg("--opencode-bin")
                    .arg(&env.opencode)
                    .args(["--opencode-source", "external"])
                    .arg("--openwork-server-bin")
                    .arg(&env.stand_in)
                    .args(["--sidecar-source", "external", "--allow-external"])
                    .arg("--opencode-port")
                    .arg(port.to_string())
                    .arg("--openwork-port")
                    .arg(free_port()?.to_string())
                    .args(["--sidecar-base-url", nowhere])
                    .arg("--sidecar-manifest")
                    .arg(format!("{nowhere}manifest.json"))
                    .args(["--log-format", "json", "--no-color"])
                    .env("OPENWORK_OPENCODE_USERNAME", OPENCODE_USER)
                    .env("OPENWORK_OPENCODE_PASSWORD", &password)
                    // It refuses given credentials unless told that this is intended.
                    .env("OPENWORK_INTERNAL_ALLOW_OPENCODE_CREDENTIALS", "1");
            }
        }
        let authorization = basic_auth(OPENCODE_USER, &password);

        let mut running = Running::spawn(&mut cmd, &stderr_path)?;
        let mut timeline = Vec::new();
        let (ready, polled, opencode_spawned) = match self.kind {
            Kind::Ours => {
                let (at, ready) = running.wait_ready_line()?;
                let dir = ready["runtimeDir"].as_str().map(PathBuf::from);
                if dir.as_deref() != Some(env.runtime_dir.as_path()) {
                    bail!(
                        "the server did not use the runtime extracted before (a warm start \
                         was wanted): {ready}"
                    );
                }
                (at.duration_since(running.spawned), None, None)
            }
            Kind::Bare => {
                let port = opencode_port.expect("bare opencode has a port");
                let at = running.poll_health(port, &authorization)?;
                (at.duration_since(running.spawned), None, None)
            }
            Kind::Orchestrator => {
                let port = opencode_port.expect("the orchestrator's opencode has a port");
                let seen = running.wait_orchestrator(port, &authorization)?;
                let since = |at: Instant| at.duration_since(running.spawned);
                timeline = seen
                    .timeline
                    .iter()
                    .map(|(at, what)| format!("{:.1} ms {what}", since(*at).as_secs_f64() * 1e3))
                    .collect();
                (
                    since(seen.healthy),
                    Some(since(seen.polled)),
                    seen.spawned.map(since),
                )
            }
        };
        running.observe();
        std::thread::sleep(idle);
        running.observe();
        let rss = vm_rss(running.pid())
            .with_context(|| format!("read the RSS of {} (it exited?)", self.kind))?;
        let children = running
            .descendants()
            .into_iter()
            .filter_map(|p| {
                Some(ProcInfo {
                    pid: p.pid,
                    name: proc_name(p.pid)?,
                    exe: std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok(),
                    rss: vm_rss(p.pid).ok()?,
                })
            })
            .collect();
        let (stop, status) = running.terminate()?;
        let orphans = running.left_behind();
        let opencode_startup = match self.kind {
            Kind::Ours => logged_startup(&stderr_path),
            _ => None,
        };
        Ok(Sample {
            round,
            ready,
            polled,
            opencode_spawned,
            opencode_startup,
            rss,
            children,
            stop,
            exit: describe_exit(status),
            orphans,
            timeline,
            stderr_head: head_lines(&stderr_path, 6),
        })
    }

    /// Statistics of one duration of every sample that has it; `None` if none has.
    fn durations(&self, pick: impl Fn(&Sample) -> Option<Duration>) -> Option<Stats> {
        let picked: Vec<Duration> = self.samples.iter().filter_map(pick).collect();
        (!picked.is_empty()).then(|| Stats::of(&picked))
    }

    fn details(&self) -> Value {
        json!({
            "name": self.kind.name(),
            "executable": self.exe,
            "failed": self.failed,
            "ready": self.durations(|s| Some(s.ready)),
            "samples": self.samples,
        })
    }
}

impl Running {
    /// When `GET /global/health` on `port` first answered 200, polled every [`POLL`] and
    /// hedged as the server's own readiness is: opencode 1.18 accepts connections about
    /// 0.4 s before it answers them and never answers those, so a probe unanswered for
    /// [`HEDGE`] gets another beside it. Without that the floor would wait out a probe's
    /// read limit and flatter every contender measured against it.
    fn poll_health(&mut self, port: u16, authorization: &str) -> anyhow::Result<Instant> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (answers, answered) = std::sync::mpsc::channel();
        let mut in_flight = 0usize;
        let mut newest: Option<Instant> = None;
        loop {
            let due = match newest {
                None => true,
                Some(at) if in_flight == 0 => at.elapsed() >= POLL,
                Some(at) => at.elapsed() >= HEDGE,
            };
            if due && in_flight < 16 {
                let (answers, authorization) = (answers.clone(), authorization.to_owned());
                std::thread::spawn(move || answers.send(health_ok(addr, &authorization)));
                in_flight += 1;
                newest = Some(Instant::now());
            }
            match answered.recv_timeout(POLL) {
                Ok(true) => return Ok(Instant::now()),
                Ok(false) => in_flight -= 1,
                Err(_) => {}
            }
            self.check_alive()?;
        }
    }

    /// Waits until the orchestrator has logged opencode healthy and its opencode port has
    /// answered 200.
    fn wait_orchestrator(&mut self, port: u16, authorization: &str) -> anyhow::Result<Seen> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (mut spawned, mut healthy, mut polled) = (None, None, None);
        let mut timeline = Vec::new();
        loop {
            while let Ok((at, line)) = self.lines.try_recv() {
                if let Some(entry) = orchestrator_own_line(&line) {
                    timeline.push((at, entry));
                }
                match orchestrator_event(&line) {
                    Some(OrchestratorEvent::Spawned) if spawned.is_none() => spawned = Some(at),
                    Some(OrchestratorEvent::Healthy) if healthy.is_none() => healthy = Some(at),
                    _ => {}
                }
            }
            if polled.is_none() && health_ok(addr, authorization) {
                polled = Some(Instant::now());
            }
            if let (Some(healthy), Some(polled)) = (healthy, polled) {
                return Ok(Seen {
                    spawned,
                    healthy,
                    polled,
                    timeline,
                });
            }
            self.check_alive()?;
            std::thread::sleep(POLL);
        }
    }
}

/// A packed server started for a load measurement, and what the load needs of it.
struct Loaded {
    server: Running,
    addr: SocketAddr,
    bearer: String,
    upstream_port: u16,
    upstream_pid: u32,
    /// The certificate's SHA-256 when it speaks TLS.
    fingerprint: Option<String>,
}

impl Loaded {
    /// Starts the packed server (`extra`: more serve flags) and reads its opencode's port and
    /// pid from `/system/runtime`.
    fn start(
        ours: &Contender,
        env: &Environment,
        work: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Loaded> {
        let workspace = mkdir(&work.join("workspaces").join(name))?;
        let stderr = ours.logs.join(format!("{name}.stderr"));
        let mut cmd = ours.command(&workspace)?;
        cmd.stderr(
            std::fs::File::create(&stderr)
                .with_context(|| format!("create {}", stderr.display()))?,
        )
        .arg("serve")
        .args(["--port", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--workspace")
        .arg(&workspace);
        let mut server = Running::spawn(&mut cmd, &stderr)?;
        let (_, ready) = server.wait_ready_line()?;
        let port = u16::try_from(ready["port"].as_u64().unwrap_or_default())?;
        let fingerprint = ready["tlsFingerprint"].as_str().map(str::to_string);
        let token_file = ready["tokenFile"]
            .as_str()
            .with_context(|| format!("no tokenFile in {ready}"))?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("read {token_file}"))?
            .trim()
            .to_string();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let bearer = format!("Bearer {token}");
        let runtime = match &fingerprint {
            Some(sha256) => {
                let request = format!(
                    "GET /system/runtime HTTP/1.1\r\nHost: localhost\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
                );
                let (_, headers, mut reader) =
                    openwork_tests::tls::open(port, sha256, &request, b"");
                openwork_tests::http::read_body(&mut reader, "GET", 200, &headers)
                    .context("GET /system/runtime over TLS")?
            }
            None => {
                openwork_tests::http::try_request(
                    &addr.to_string(),
                    "GET",
                    "/system/runtime",
                    &[("Authorization", bearer.as_str())],
                    b"",
                    Duration::from_secs(30),
                )
                .context("GET /system/runtime")?
                .body
            }
        };
        let runtime: Value =
            serde_json::from_slice(&runtime).context("/system/runtime is not JSON")?;
        let opencode = runtime["sidecars"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == "opencode"));
        let sidecar = |field: &str| {
            opencode
                .and_then(|s| s[field].as_u64())
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("no {field} of opencode in /system/runtime: {runtime}"))
        };
        Ok(Loaded {
            addr,
            bearer,
            upstream_port: u16::try_from(sidecar("port")?)?,
            upstream_pid: sidecar("pid")?,
            fingerprint,
            server,
        })
    }

    /// The load side that asks this server's `/opencode/global/health`.
    fn proxied_side(&self) -> Side {
        Side {
            addr: self.addr,
            path: "/opencode/global/health",
            authorization: self.bearer.clone(),
            processes: vec![
                ("server", self.server.pid()),
                ("opencode", self.upstream_pid),
            ],
            tls: self.fingerprint.clone(),
        }
    }

    /// Stops it; as after every round, its tree gets a grace before anything still running
    /// counts as left behind (and is killed when the `Running` is dropped).
    fn stop(mut self, what: &str) -> anyhow::Result<()> {
        self.server.terminate()?;
        let left = self.server.left_behind();
        if !left.is_empty() {
            progress(format_args!(
                "{what}: left running after their parent exited (killed): {}",
                summarize(&left)
            ));
        }
        Ok(())
    }
}

/// The proxy figure: the packed server's opencode asked through `/opencode/*` and directly,
/// the same load both ways (see overhead.rs).
fn proxy_overhead(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<overhead::Figures> {
    let loaded = Loaded::start(ours, env, work, &format!("proxy-{}", ours.kind.name()), &[])?;
    // The baseline is the very opencode behind the proxy, asked directly (see overhead.rs),
    // with its password from its environment, which only its own user can read.
    let password = environment_value(loaded.upstream_pid, "OPENCODE_SERVER_PASSWORD")?;
    let basic = basic_auth(OPENCODE_USER, &password);
    let figures = overhead::measure(
        &Side {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, loaded.upstream_port)),
            path: "/global/health",
            authorization: basic,
            processes: vec![("opencode", loaded.upstream_pid)],
            tls: None,
        },
        &loaded.proxied_side(),
        loaded.upstream_port,
        settings.proxy_requests,
        // The proxy's pool closes idle connections after 4 s: they are counted too.
        Duration::from_secs(6),
    )?;
    loaded.stop("proxy overhead")?;
    Ok(figures)
}

/// Handshakes timed one after another for the TLS row.
const TLS_HANDSHAKES: usize = 200;

/// The TLS figures: handshake time, and `/opencode/global/health` through a server with
/// `--tls on` against one without, side by side (each with its own opencode, loaded alike
/// in ABBA rounds, so neither opencode's history favours one side).
fn tls_overhead(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<(overhead::Figures, Stats)> {
    let plain = Loaded::start(ours, env, work, "tls-plain", &[])?;
    let tls = Loaded::start(ours, env, work, "tls-on", &["--tls", "on"])?;
    let sha256 = tls
        .fingerprint
        .clone()
        .context("the --tls on server's ready line has no tlsFingerprint")?;
    let handshake = overhead::handshakes(tls.addr.port(), &sha256, TLS_HANDSHAKES)?;
    let figures = overhead::measure(
        &plain.proxied_side(),
        &tls.proxied_side(),
        tls.upstream_port,
        settings.proxy_requests,
        Duration::from_secs(6),
    )?;
    plain.stop("TLS, plain server")?;
    tls.stop("TLS server")?;
    Ok((figures, handshake))
}

fn health_ok(addr: SocketAddr, authorization: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET /global/health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The status line is enough: reading to the end would wait on a server that keeps the
    // connection open despite `Connection: close`.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 ")
}

/// What the orchestrator said, and what was seen of its opencode, during one start.
struct Seen {
    /// It logged that it spawned opencode.
    spawned: Option<Instant>,
    /// It logged opencode healthy.
    healthy: Instant,
    /// Its opencode port first answered 200.
    polled: Instant,
    /// Its own log lines (not its children's output it passes on), as `component: message`.
    timeline: Vec<(Instant, String)>,
}

/// `component: message` of one of the orchestrator's own JSON log lines; `None` for
/// anything else, such as opencode's output that it passes on (those carry a `stream`).
fn orchestrator_own_line(line: &str) -> Option<String> {
    let value = serde_json::from_str::<Value>(line).ok()?;
    let attributes = &value["attributes"];
    if !attributes["stream"].is_null() {
        return None;
    }
    Some(format!(
        "{}: {}",
        attributes["service.component"].as_str()?,
        value["body"].as_str()?
    ))
}

/// The first `n` lines of a file, each cut at 300 characters.
fn head_lines(path: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .take(n)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum OrchestratorEvent {
    Spawned,
    Healthy,
}

/// The orchestrator's JSON log lines about opencode that matter here.
fn orchestrator_event(line: &str) -> Option<OrchestratorEvent> {
    let value = serde_json::from_str::<Value>(line).ok()?;
    if value["attributes"]["service.component"] != "opencode" {
        return None;
    }
    match value["body"].as_str()? {
        "Process spawned" => Some(OrchestratorEvent::Spawned),
        "Healthy" => Some(OrchestratorEvent::Healthy),
        _ => None,
    }
}

/// opencode's start-up time as our server logged it (`"startupMs":N` in its `ready` event
/// for opencode, in either log format); `None` if the log does not say.
fn logged_startup(stderr: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(stderr).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("opencode") && l.contains("startupMs"))?;
    let (_, rest) = line.split_once("startupMs")?;
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_millis)
}

/// `Basic <base64 user:password>`.
/// The value of `name` in the environment process `pid` was started with (Linux).
fn environment_value(pid: u32, name: &str) -> anyhow::Result<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("read the environment of {pid}"))?;
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
        .with_context(|| format!("{name} is not in the environment of {pid}"))
}

fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A password for one run's opencode (only loopback sees it; it needs no strength).
fn password(round: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{round}-{nanos:08x}-{:x}", std::process::id())
}

/// A port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The distinct exits of a contender's runs.
fn exits(c: &Contender) -> String {
    let mut all: Vec<&str> = c.samples.iter().map(|s| s.exit.as_str()).collect();
    all.sort_unstable();
    all.dedup();
    all.join(" / ")
}

/// `opencode x5, sh x5`.
fn summarize(names: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(name, n)| format!("{name} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn as_ms_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

/// Packs the pinned opencode into the release stub, with `compression`.
pub(crate) fn pack_artifact(
    target: &'static Target,
    pins: &Constants,
    opencode: &Path,
    work: &Path,
    compression: Compression,
) -> anyhow::Result<PathBuf> {
    let stub_dir = cargo_target_dir()?.join("bench-stubs");
    progress(format_args!("building the release stub"));
    let stub =
        openwork_packager::stub::build_stub(&openwork_tests::workspace_root(), target, &stub_dir)?;
    progress(format_args!(
        "packing with zstd level {}, {} threads",
        compression.level, compression.workers
    ));
    let artifact = work.join(target.artifact_name());
    pack::pack(&PackRequest {
        stub,
        sidecars: vec![("opencode".into(), opencode.to_path_buf())],
        out: artifact.clone(),
        target,
        versions: Versions {
            opencode: pins.opencode_version().to_string(),
            router: None,
        },
        compression,
        mtime: 0,
    })?;
    Ok(artifact)
}

/// The orchestrator from the npm registry, integrity-checked and cached with the fetched
/// sidecars.
fn fetch_orchestrator(target: &'static Target) -> anyhow::Result<FetchedBinary> {
    let package = format!("{}-{}", orchestrator::NAME, target.name);
    let file = format!("{}{}", orchestrator::FILE, target.exe_suffix);
    let mut request = FetchRequest::new(target, orchestrator::VERSION);
    // Its progress lines name the registry; this benchmark's output should not.
    request.quiet = true;
    // A baseline to measure against, never packed into anything: the registry's integrity
    // is enough, and inputs.lock.json is for what releases carry.
    request.allow_unpinned = true;
    Ok(fetch::fetch_npm_bin(
        &request,
        orchestrator::NAME,
        &package,
        &file,
    )?)
}

/// `runtime extract --json` into `data_dir`; returns the runtime directory.
fn extract_runtime(artifact: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(artifact);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OPENWORK_") {
            cmd.env_remove(&key);
        }
    }
    // `--data-dir` after the subcommand: before it, clap refuses any subcommand (the
    // server's top level takes `serve`'s flags, so that `serve` can be left out).
    let output = cmd
        .args(["runtime", "extract", "--json"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} runtime extract", artifact.display()))?;
    if !output.status.success() {
        bail!(
            "runtime extract failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let out: Value =
        serde_json::from_slice(&output.stdout).context("runtime extract --json output")?;
    let dir = out["runtimeDir"]
        .as_str()
        .with_context(|| format!("no runtimeDir in {out}"))?;
    Ok(PathBuf::from(dir))
}

/// What the orchestrator runs as openwork-server. No registry here carries openwork-server,
/// and the orchestrator only starts it after opencode is healthy, so a process that merely
/// stays alive keeps it waiting (for 10 s) while its RSS is read.
fn write_stand_in(work: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = work.join("openwork-server-stand-in");
    let script = "#!/bin/sh\nexec sleep 3600\n";
    std::fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(basic_auth("opencode", "pw"), "Basic b3BlbmNvZGU6cHc=");
    }

    #[test]
    fn orchestrator_lines() {
        let line = r#"{"body":"Healthy","attributes":{"service.component":"opencode","url":"x"}}"#;
        assert_eq!(orchestrator_event(line), Some(OrchestratorEvent::Healthy));
        let line = r#"{"body":"Process spawned","attributes":{"service.component":"opencode"}}"#;
        assert_eq!(orchestrator_event(line), Some(OrchestratorEvent::Spawned));
        let other = r#"{"body":"Healthy","attributes":{"service.component":"openwork-server"}}"#;
        assert_eq!(orchestrator_event(other), None);
        assert_eq!(orchestrator_event("[opencode] Healthy"), None);
    }

    #[test]
    fn orchestrator_own_lines_only() {
        let own =
            r#"{"body":"Process spawned","attributes":{"service.component":"opencode","pid":7}}"#;
        assert_eq!(
            orchestrator_own_line(own).as_deref(),
            Some("opencode: Process spawned")
        );
        let passed_on = r#"{"body":"listening","attributes":{"service.component":"opencode","stream":"stdout"}}"#;
        assert_eq!(orchestrator_own_line(passed_on), None);
    }

    #[test]
    fn startup_from_the_server_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z  INFO supervisor sidecar=opencode event=\"starting\" \
             details={\"event\":\"starting\",\"pid\":1,\"port\":2}\n\
             2026-01-01T00:00:01Z  INFO supervisor sidecar=opencode event=\"ready\" \
             details={\"event\":\"ready\",\"pid\":1,\"startupMs\":1155}\n",
        )
        .unwrap();
        assert_eq!(logged_startup(&log), Some(Duration::from_millis(1155)));
        std::fs::write(&log, "nothing\n").unwrap();
        assert_eq!(logged_startup(&log), None);
    }
}
