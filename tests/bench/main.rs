//! `openwork-bench`: measures the figures docs/BENCHMARKS.md sets targets for, prints
//! them beside their targets and baselines, and writes them as JSON under `.local/bench/`.
//!
//! Benchmarks report; they are not tests. A missed target is printed as `MISSED` and still
//! exits 0, so that a run always leaves its numbers behind. Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the benchmark ran (whether or not every target was met) |
//! | 1 | the benchmark could not run (build, fetch, pack or I/O failure) |
//! | 2 | bad command line (clap's own code) |
//!
//! (The hidden `wait4` helper exits with the code of the command it ran.)
//!
//! Run it optimised, with the release packager built (the `release` benchmark runs it):
//! `cargo build --release -p openwork-packager && cargo run --release -p openwork-tests --bin openwork-bench -- all`.
// Elsewhere only the command line exists, to say that the benchmarks need unix.
#![cfg_attr(not(unix), allow(dead_code))]

#[cfg(unix)]
mod extraction;
#[cfg(unix)]
mod measure;
#[cfg(unix)]
mod overhead;
#[cfg(unix)]
mod procs;
#[cfg(unix)]
mod release;
mod report;
#[cfg(unix)]
mod serve;
#[cfg(unix)]
mod soak;
#[cfg(unix)]
mod update;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Benchmarks of openwork-server-v2 against the targets in docs/BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "openwork-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cold and warm extraction, peak RSS, stub size and payload size of a release artifact
    /// built from the pinned opencode
    Extraction(ExtractionArgs),
    /// Warm start to ready and idle RSS of `serve` from a packed artifact, beside bare
    /// `opencode serve` and openwork-orchestrator 0.18.1, all on the same opencode; and what
    /// its `/opencode/*` proxy adds over asking opencode directly (latency, throughput,
    /// sockets left in TIME-WAIT)
    Serve(ServeArgs),
    /// Wall time, stage shares, reproducibility and payload size of `openwork-packager
    /// release` with warm caches, beside `zstd` run by hand on the same sidecars (times
    /// the packager's release build: `cargo build --release -p openwork-packager` first)
    Release(ReleaseArgs),
    /// The packed server with the real opencode under steady load through its proxy while
    /// opencode is SIGKILLed at random moments (10 minutes by default): requests lost,
    /// hangs, restarts seen in /system/events, and the server's memory, descriptors and
    /// processes over time
    Soak(SoakArgs),
    /// Bytes a client downloads for each update along a chain of real opencode releases
    /// (linux-x64 1.18.29 -> ... -> 1.19.5) beside the full artifact and the zstd
    /// --patch-from floor, the Bun-changing step on its own with the parts-aware experiment,
    /// and the publisher's cost (encode time, repository size)
    Update(UpdateArgs),
    /// Every benchmark: extraction, serve, then release (--runs and --artifact apply to
    /// extraction and serve; the rest, and release, take their defaults: a release takes
    /// about a minute); --markdown writes all the tables into one document
    All(AllArgs),
    /// Runs a command and writes its spawn-to-exit time and peak RSS as JSON (used by the
    /// benchmarks themselves: see measure.rs for why children are measured through it)
    #[command(hide = true)]
    Wait4 {
        /// Where the JSON goes
        #[arg(long, value_name = "FILE")]
        report: PathBuf,
        /// The command and its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Debug, Args)]
struct ExtractionArgs {
    /// Cold extractions of each kind (ours, baseline), interleaved
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// In-process warm-start checks to time
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    warm_iterations: u32,
    /// Warm `runtime extract` processes to time
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    warm_processes: u32,
    /// Where artifacts and data directories are made (on the disk being measured)
    /// [default: <workspace>/.local/bench/work]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the JSON results go [default: <workspace>/.local/bench/extraction.json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Measure this packed artifact (for the host) instead of packing one from the pinned
    /// opencode; the pack figures are then skipped
    #[arg(long, value_name = "FILE")]
    artifact: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AllArgs {
    #[command(flatten)]
    extraction: ExtractionArgs,
    /// Also write every table, with the machine and commit it ran on, as one markdown
    /// document (docs/BENCHMARKS.md keeps the latest)
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Then run the soak too, with its defaults (10 more minutes)
    #[arg(long)]
    soak: bool,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Seconds of load with kills (after the warm-up)
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds of load without kills before the baseline is counted
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    warm_up: u64,
    /// Threads sending requests
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Requests a second, all workers together
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=2000))]
    rate: u64,
    /// Shortest and longest gap between two kills, in seconds; keep the shortest at 16 or
    /// more, or 5 kills can fall within the supervisor's 60 s crash-loop window
    #[arg(long, default_value = "16..60", value_name = "MIN..MAX", value_parser = parse_gap)]
    kill_gap: (u64, u64),
    /// Seed of the random kill moments and request mix [default: from the clock]
    #[arg(long)]
    seed: Option<u64>,
    /// Where the temporary home, workspace and data directory are made; keep it outside
    /// any git repository [default: the system's temporary directory]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the JSON results go [default: <workspace>/.local/bench/soak.json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Soak this packed artifact (for the host) instead of packing one
    #[arg(long, value_name = "FILE")]
    artifact: Option<PathBuf>,
}

/// `MIN..MAX` seconds.
fn parse_gap(text: &str) -> Result<(u64, u64), String> {
    let (min, max) = text
        .split_once("..")
        .ok_or_else(|| format!("expected MIN..MAX seconds, like 16..60, not {text:?}"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a whole number of seconds"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if min == 0 || min > max {
        return Err(format!("need 0 < MIN <= MAX, got {min}..{max}"));
    }
    Ok((min, max))
}

impl SoakArgs {
    /// The defaults, as clap gives them to a command line without soak flags.
    fn defaults() -> SoakArgs {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            soak: SoakArgs,
        }
        Defaults::parse_from(["soak"]).soak
    }

    #[cfg(unix)]
    fn into_settings(self) -> soak::Settings {
        let SoakArgs {
            duration,
            warm_up,
            workers,
            rate,
            kill_gap,
            seed,
            work_dir,
            json,
            artifact,
        } = self;
        soak::Settings {
            duration: std::time::Duration::from_secs(duration),
            warm_up: std::time::Duration::from_secs(warm_up),
            workers: workers as usize,
            rate: rate as f64,
            kill_gap: (
                std::time::Duration::from_secs(kill_gap.0),
                std::time::Duration::from_secs(kill_gap.1),
            ),
            seed: seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
            work_dir: work_dir.unwrap_or_else(std::env::temp_dir),
            json: json.unwrap_or_else(|| {
                openwork_tests::workspace_root()
                    .join(".local")
                    .join("bench")
                    .join("soak.json")
            }),
            artifact,
        }
    }
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// opencode versions of the chain, oldest first (linux-x64 packages on the registry)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1.18.29,1.18.30,1.18.31,1.18.32,1.18.33,1.18.34,1.19.5"
    )]
    versions: Vec<String>,
    /// Deltas from how many previous releases the publisher writes
    #[arg(long, default_value_t = 3, value_name = "N")]
    deltas: usize,
    /// zstd level of the publisher's deltas
    #[arg(long, default_value_t = openwork_update_format::delta::LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// zstd level of the publisher's whole compressed contents [default: --level]
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    full_level: Option<i32>,
    /// A stub of an earlier server build: the first release carries it, so that the second
    /// publishes (and the figures count) a stub delta
    #[arg(long, value_name = "FILE")]
    previous_stub: Option<PathBuf>,
    /// This release stub instead of building one from the tree
    #[arg(long, value_name = "FILE")]
    stub: Option<PathBuf>,
    /// Where artifacts, the repository and the floor's records are kept between runs
    /// [default: <workspace>/.local/bench/work/update]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the JSON results go [default: <workspace>/.local/bench/update.json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl UpdateArgs {
    #[cfg(unix)]
    fn into_settings(self) -> update::Settings {
        let UpdateArgs {
            versions,
            deltas,
            level,
            full_level,
            previous_stub,
            stub,
            work_dir,
            json,
        } = self;
        let bench_dir = openwork_tests::workspace_root()
            .join(".local")
            .join("bench");
        update::Settings {
            versions,
            deltas,
            level,
            full_level: full_level.unwrap_or(level),
            work_dir: work_dir.unwrap_or_else(|| bench_dir.join("work").join("update")),
            json: json.unwrap_or_else(|| bench_dir.join("update.json")),
            previous_stub,
            stub,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Timed rounds, each starting every contender once, in rotating order (after one
    /// untimed warm-up round)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Milliseconds a contender idles after it is ready before its RSS is read
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    idle_ms: u64,
    /// Where the temporary homes, workspaces and data directory are made; keep it outside
    /// any git repository, or opencode treats that repository as the project
    /// [default: the system's temporary directory]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the JSON results go [default: <workspace>/.local/bench/serve.json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Measure this packed artifact (for the host) instead of packing one from the pinned
    /// opencode
    #[arg(long, value_name = "FILE")]
    artifact: Option<PathBuf>,
    /// Requests each way for the proxy figure (`/opencode/*` vs opencode direct, 32
    /// connections); 0 leaves it out
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    proxy_requests: usize,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    /// Timed releases (after one untimed release that fills the caches)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Target to release, a name from targets/ [default: this host's]
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// Where the dist directories and the baseline's files are made
    /// [default: <workspace>/.local/bench/work]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the JSON results go [default: <workspace>/.local/bench/release.json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl ReleaseArgs {
    fn defaults() -> ReleaseArgs {
        ReleaseArgs {
            runs: 2,
            target: None,
            work_dir: None,
            json: None,
        }
    }

    #[cfg(unix)]
    fn into_settings(self) -> anyhow::Result<release::Settings> {
        let ReleaseArgs {
            runs,
            target,
            work_dir,
            json,
        } = self;
        let bench_dir = openwork_tests::workspace_root()
            .join(".local")
            .join("bench");
        let target = match target {
            Some(name) => name,
            None => openwork_payload::targets::host()
                .ok_or_else(|| anyhow::anyhow!("this host is not one of the targets in targets/"))?
                .name
                .clone(),
        };
        Ok(release::Settings {
            runs: runs as usize,
            target,
            work_dir: work_dir.unwrap_or_else(|| bench_dir.join("work")),
            json: json.unwrap_or_else(|| bench_dir.join("release.json")),
        })
    }
}

impl ServeArgs {
    /// The defaults, with the settings `all` shares with extraction.
    fn for_all(extraction: &ExtractionArgs) -> ServeArgs {
        ServeArgs {
            runs: extraction.runs,
            idle_ms: 2000,
            work_dir: None,
            json: None,
            artifact: extraction.artifact.clone(),
            proxy_requests: 20_000,
        }
    }

    #[cfg(unix)]
    fn into_settings(self) -> serve::Settings {
        let ServeArgs {
            runs,
            idle_ms,
            work_dir,
            json,
            artifact,
            proxy_requests,
        } = self;
        serve::Settings {
            runs: runs as usize,
            idle: std::time::Duration::from_millis(idle_ms),
            work_dir: work_dir.unwrap_or_else(std::env::temp_dir),
            json: json.unwrap_or_else(|| {
                openwork_tests::workspace_root()
                    .join(".local")
                    .join("bench")
                    .join("serve.json")
            }),
            artifact,
            proxy_requests,
        }
    }
}

impl ExtractionArgs {
    #[cfg(unix)]
    fn into_settings(self) -> extraction::Settings {
        let ExtractionArgs {
            runs,
            warm_iterations,
            warm_processes,
            work_dir,
            json,
            artifact,
        } = self;
        let bench_dir = openwork_tests::workspace_root()
            .join(".local")
            .join("bench");
        extraction::Settings {
            runs: runs as usize,
            warm_iterations: warm_iterations as usize,
            warm_processes: warm_processes as usize,
            work_dir: work_dir.unwrap_or_else(|| bench_dir.join("work")),
            json: json.unwrap_or_else(|| bench_dir.join("extraction.json")),
            artifact,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("openwork-bench: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(unix)]
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Extraction(args) => {
            extraction::run(&args.into_settings())?.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            serve::run(&args.into_settings())?.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Release(args) => {
            release::run(&args.into_settings()?)?.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak(args) => {
            soak::run(&args.into_settings())?.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Update(args) => {
            let settings = args.into_settings();
            let report = update::run(&settings)?;
            report.print();
            // The section docs/BENCHMARKS.md keeps, beside the JSON.
            std::fs::write(settings.json.with_extension("md"), report.render_markdown())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::All(AllArgs {
            extraction: args,
            markdown,
            soak,
        }) => {
            // One benchmark failing does not keep the others from leaving their figures.
            let machine = measure::machine_facts();
            let serve_args = ServeArgs::for_all(&args);
            let mut reports = Vec::new();
            let mut failed = false;
            let mut keep = |name: &str, result: anyhow::Result<report::Report>| match result {
                Ok(report) => {
                    report.print();
                    println!();
                    reports.push(report);
                }
                Err(err) => {
                    eprintln!("openwork-bench: {name}: error: {err:#}");
                    failed = true;
                }
            };
            keep("extraction", extraction::run(&args.into_settings()));
            keep("serve", serve::run(&serve_args.into_settings()));
            keep(
                "release",
                ReleaseArgs::defaults()
                    .into_settings()
                    .and_then(|settings| release::run(&settings)),
            );
            if soak {
                keep("soak", soak::run(&SoakArgs::defaults().into_settings()));
            }
            if let Some(path) = markdown {
                report::write_markdown(&path, &machine, &reports)?;
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Wait4 { report, command } => measure::wait4_helper(&report, &command),
    }
}

#[cfg(not(unix))]
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let _ = (cli, report::Verdict::Info);
    anyhow::bail!("the benchmarks measure processes with wait4 and run on Linux and macOS only")
}
