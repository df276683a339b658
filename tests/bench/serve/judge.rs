//! The judge: the contenders' samples as the report's rows, against the targets
//! docs/BENCHMARKS.md records.

use std::time::Duration;

use super::contender::{Contender, summarize};
use super::settings::Settings;
use super::setup::orchestrator;
use crate::measure::{Stats, byte_stats};
use crate::report::{Quantity, Row, Target as Goal};

/// The targets docs/BENCHMARKS.md records.
mod goals {
    /// Warm start to ready over bare `opencode serve` to healthy (issue 16: no slower than
    /// opencode on its own).
    pub const WARM_READY_RATIO: f64 = 1.0;
    /// First start (extraction included) over warm start, both to ready.
    pub const FIRST_START_RATIO: f64 = 1.2;
    /// The server process's own idle RSS, in bytes (decimal MB, as all sizes here).
    pub const SERVER_RSS: u64 = 8_000_000;
}

pub(super) fn rows(
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

/// First start against warm start, both to the ready line.
pub(super) fn first_start_row(first_starts: &[Duration], ours: &Contender) -> Row {
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

/// The distinct exits of a contender's runs.
pub(super) fn exits(c: &Contender) -> String {
    let mut all: Vec<&str> = c.samples.iter().map(|s| s.exit.as_str()).collect();
    all.sort_unstable();
    all.dedup();
    all.join(" / ")
}
