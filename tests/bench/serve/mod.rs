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

use std::path::Path;

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch::{self};
use openwork_packager::pack::Compression;
use openwork_payload::targets::{self};
use openwork_runtime::source;
use serde_json::{Value, json};

use crate::measure;
use crate::measure::{file_size, load_average, progress};
use crate::overhead::{self};
use crate::procs::{check_nothing_left, mkdir};
use crate::report::{Report, Row};

mod contender;
mod judge;
mod load;
mod settings;
mod setup;

pub use settings::Settings;
pub(crate) use setup::pack_artifact;

use contender::{Contender, Environment, Kind, first_start};
use judge::{first_start_row, rows};
use load::{TLS_HANDSHAKES, proxy_overhead, tls_overhead};
use setup::{
    ORCHESTRATOR_ARGS_DOC, extract_runtime, fetch_orchestrator, orchestrator, write_stand_in,
};

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
