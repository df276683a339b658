//! The packager's command line: clap types converted into library requests.

mod build_router;
mod update_repo;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use openwork_packager::constants::Constants;
use openwork_packager::fetch::Source;
use openwork_packager::lock::{Input, InputsLock};
use openwork_packager::pack::{self, Compression, PackRequest, Versions};
use openwork_packager::router::RouterSource;
use openwork_packager::{Error, Result, inspect};
use openwork_payload::targets;

/// Builds and inspects openwork-server-v2 release artifacts.
#[derive(Debug, Parser)]
#[command(name = "openwork-packager", version, about)]
pub struct Cli {
    /// Version pins to use instead of the built-in constants.json
    #[arg(long, global = true, value_name = "FILE")]
    pub constants: Option<PathBuf>,
    /// Input hashes to use instead of the built-in inputs.lock.json (for `lock`: the file
    /// to refresh) [default: <repo>/inputs.lock.json]
    #[arg(long, global = true, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put sidecars into a runtime stub: manifest, deterministic tar, zstd, inject, self-check
    Pack(PackArgs),
    /// Show where an artifact's payload sits and verify every hash in it
    Inspect(InspectArgs),
    /// Fetch the pinned opencode for a target into the cache
    Fetch(FetchArgs),
    /// Fetch opencode, build the router and the stub, pack: dist/openwork-server-v2-<target>[.exe],
    /// SHA256SUMS and a build report
    Release(ReleaseArgs),
    /// Build opencode-router from source with the pinned Bun for a target (cached)
    BuildRouter(build_router::BuildRouterArgs),
    /// Stage the pinned opencode and a locally built router as a bundle directory for
    /// `openwork-server-v2 --bundle-dir` (the dev loop; near-instant when nothing changed)
    Stage(StageArgs),
    /// Refresh inputs.lock.json from the configured registry: opencode's and Bun's integrity,
    /// tarball size and executable SHA-256 for every target; prints what changed
    Lock(LockArgs),
    /// Print the CI release matrix from targets/ as one line of JSON
    /// (`{"include": [{"target", "runner", "triple", "artifact", "signing", …}]}`)
    Matrix,
    /// The update channel's signed repository: create it, publish a release into it (with
    /// deltas), re-sign its timestamp, rotate its root keys, verify it as a client would
    UpdateRepo(update_repo::UpdateRepoArgs),
}

/// `release` arguments.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Target name from targets/ [default: the host's]
    #[arg(long)]
    pub target: Option<String>,
    /// Use this prebuilt stub instead of building one
    #[arg(long, value_name = "FILE")]
    pub stub: Option<PathBuf>,
    /// Output directory
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub dist: PathBuf,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Use only cached downloads
    #[arg(long)]
    pub offline: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Where opencode comes from
    #[arg(long, value_enum, default_value_t = FetchSource::Npm)]
    pub source: FetchSource,
    /// The opencode binary or release asset, with --source file
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// The opencode release asset's URL, with --source url
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Where opencode's GitHub releases are, with --source github: a mirror with the same layout [default: GitHub's]
    #[arg(long, value_name = "URL", env = openwork_packager::fetch::GITHUB_RELEASES_ENV, hide_env_values = true)]
    pub github_releases: Option<String>,
    /// Accept inputs that inputs.lock.json does not pin (local experiments; never a release)
    #[arg(long, alias = "allow-unverified")]
    pub allow_unpinned: bool,
    /// Build opencode-router from this source and carry it [default: router.sourceDir of
    /// constants.json, if any; otherwise the release carries opencode alone]
    #[arg(long, value_name = "DIR", conflicts_with = "no_router")]
    pub router_source: Option<PathBuf>,
    /// Leave out the router that constants.json names
    #[arg(long)]
    pub no_router: bool,
    /// opencode's version, for the manifest and the cache [default: the pin in
    /// constants.json] (say it when --source file or url brings another version)
    #[arg(long, value_name = "VERSION")]
    pub opencode_version: Option<String>,
    /// Sign the sidecars and the artifact as this signing config says (docs/SIGNING.md);
    /// its secrets are read before anything is fetched or built
    #[arg(long, value_name = "CONFIG")]
    pub sign: Option<PathBuf>,
}

/// How `pack` and `release` compress the payload.
#[derive(Debug, Args)]
pub struct CompressionArgs {
    /// Compress quickly (zstd level 3) instead of for release (level 18, long window)
    #[arg(long, conflicts_with = "level")]
    pub fast: bool,
    /// zstd level (1-22), always with the 128 MiB long window [default: 18]
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: Option<i32>,
}

impl CompressionArgs {
    fn compression(&self) -> Compression {
        let mut compression = if self.fast {
            Compression::fast()
        } else {
            Compression::release()
        };
        if let Some(level) = self.level {
            compression.level = level;
        }
        compression
    }
}

/// `stage` arguments.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Target name from targets/ [default: the host's]
    #[arg(long)]
    pub target: Option<String>,
    /// The bundle directory [default: .local/runtime-assets/bundle/<target>]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use only cached downloads and builds
    #[arg(long)]
    pub offline: bool,
    /// Build opencode-router from this source and stage it [default: router.sourceDir of
    /// constants.json, if any]
    #[arg(long, value_name = "DIR", conflicts_with = "no_router")]
    pub router_source: Option<PathBuf>,
    /// Leave out the router that constants.json names
    #[arg(long)]
    pub no_router: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `pack` arguments.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The openwork-server-v2 stub built for --target
    #[arg(long, value_name = "FILE")]
    pub stub: PathBuf,
    /// A sidecar as NAME=FILE (opencode is required, opencode-router optional)
    #[arg(long = "sidecar", value_name = "NAME=FILE", required = true, value_parser = parse_sidecar)]
    pub sidecars: Vec<(String, PathBuf)>,
    /// Output file
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Target name from targets/ [default: the host's]
    #[arg(long)]
    pub target: Option<String>,
    /// opencode version for the manifest [default: constants.json]
    #[arg(long)]
    pub opencode_version: Option<String>,
    /// opencode-router version for the manifest, with an opencode-router sidecar
    /// [default: router.version of constants.json]
    #[arg(long)]
    pub router_version: Option<String>,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The artifact
    pub artifact: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `fetch` arguments.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Target name from targets/ [default: the host's]
    #[arg(long)]
    pub target: Option<String>,
    /// opencode version [default: constants.json]
    #[arg(long)]
    pub version: Option<String>,
    /// Cache root [default: <repo>/.local/runtime-assets]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only the cache; fail rather than download
    #[arg(long)]
    pub offline: bool,
    /// Where to get opencode: the npm registry, GitHub releases, a local file, a URL
    #[arg(long, value_enum, default_value_t = FetchSource::Npm)]
    pub source: FetchSource,
    /// The local binary or release asset (.tar.gz, .zip) for --source file
    #[arg(long, value_name = "FILE", required_if_eq("source", "file"))]
    pub path: Option<PathBuf>,
    /// The release asset (.tar.gz, .zip) or binary to download for --source url
    #[arg(long, required_if_eq("source", "url"))]
    pub url: Option<String>,
    /// Where opencode's GitHub releases are, with --source github: a mirror with the same layout [default: GitHub's]
    #[arg(long, value_name = "URL", env = openwork_packager::fetch::GITHUB_RELEASES_ENV, hide_env_values = true)]
    pub github_releases: Option<String>,
    /// Expected SHA-256 of the download or file (of the executable for npm), instead of
    /// the pin in inputs.lock.json
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<String>,
    /// Accept an input that inputs.lock.json does not pin (local experiments only)
    #[arg(long, alias = "allow-unverified")]
    pub allow_unpinned: bool,
}

/// `lock` arguments.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Do not write: exit 4 if the lock differs from what the registry serves
    #[arg(long)]
    pub check: bool,
    /// Cache root for the downloads [default: <repo>/.local/runtime-assets]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `fetch --source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FetchSource {
    /// opencode's platform package on the npm registry (integrity-checked)
    Npm,
    /// opencode's GitHub release asset (needs a pin; --github-releases for a mirror)
    Github,
    /// A local binary or release asset (--path)
    File,
    /// A release asset or binary at a URL (--url)
    Url,
}

/// `--source` with its `--path` / `--url`, as the fetch layer's [`Source`].
fn opencode_source(
    source: FetchSource,
    path: Option<PathBuf>,
    url: Option<String>,
    github_releases: Option<String>,
) -> Result<Source> {
    match (source, path, url) {
        (FetchSource::Npm, None, None) => Ok(Source::Npm),
        (FetchSource::Github, None, None) => Ok(Source::Github(github_releases)),
        (FetchSource::File, Some(path), None) => Ok(Source::File(path)),
        (FetchSource::Url, None, Some(url)) => Ok(Source::Url(url)),
        _ => Err(Error::Usage(
            "--path goes with --source file only, --url with --source url only".into(),
        )),
    }
}

fn parse_sha256(value: &str) -> std::result::Result<String, String> {
    let hex = value.trim().to_ascii_lowercase();
    if openwork_payload::manifest::is_sha256_hex(&hex) {
        Ok(hex)
    } else {
        Err(format!("expected 64 hex digits (a SHA-256), got {value:?}"))
    }
}

pub(crate) fn parse_sidecar(value: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE, got {value:?}"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("expected NAME=FILE, got {value:?}"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

fn target_by_name(name: Option<&str>) -> Result<&'static targets::Target> {
    let name = match name {
        Some(n) => n,
        None => targets::host_name().ok_or_else(|| {
            Error::Usage("this host is not a release target; pass --target".into())
        })?,
    };
    targets::by_name(name).ok_or_else(|| {
        let known: Vec<_> = targets::all().iter().map(|t| t.name.as_str()).collect();
        Error::Usage(format!(
            "unknown target {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

/// The mtime of archive entries: SOURCE_DATE_EPOCH for reproducible builds, else 0.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        }),
        Err(_) => Ok(0),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let constants = Constants::load(cli.constants.as_deref())?;
    if let Command::Lock(args) = cli.command {
        return run_lock(args, &constants, cli.lock);
    }
    let lock = InputsLock::load(cli.lock.as_deref())?;
    match cli.command {
        Command::Pack(args) => run_pack(args, &constants),
        Command::Inspect(args) => run_inspect(args),
        Command::Fetch(args) => run_fetch(args, &constants, &lock),
        Command::Release(args) => run_release(args, constants, lock),
        Command::BuildRouter(args) => build_router::run(args, &constants, lock),
        Command::Stage(args) => run_stage(args, &constants, lock),
        Command::Lock(_) => unreachable!("handled above"),
        Command::UpdateRepo(args) => update_repo::run(args),
        Command::Matrix => {
            let matrix = openwork_packager::matrix::matrix();
            print_out(&format!(
                "{}\n",
                serde_json::to_string(&matrix).expect("the matrix serialises")
            ));
            Ok(())
        }
    }
}

fn run_pack(args: PackArgs, constants: &Constants) -> Result<()> {
    let PackArgs {
        stub,
        sidecars,
        out,
        target,
        opencode_version,
        router_version,
        compression,
        json,
    } = args;
    let compression = compression.compression();
    let request = PackRequest {
        stub,
        sidecars,
        out,
        target: target_by_name(target.as_deref())?,
        versions: Versions {
            opencode: opencode_version
                .map(|v| v.trim_start_matches('v').to_string())
                .unwrap_or_else(|| constants.opencode_version().to_string()),
            router: router_version.or_else(|| constants.router.as_ref().map(|r| r.version.clone())),
        },
        compression,
        mtime: source_date_epoch()?,
    };
    print_report(&pack::pack(&request)?, json);
    Ok(())
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let (inspection, failure) = inspect::inspect(&args.artifact)?;
    if args.json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&inspection).expect("serialises")
        ));
    } else {
        print_out(&inspect::render(&args.artifact, &inspection));
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

fn run_fetch(args: FetchArgs, constants: &Constants, lock: &InputsLock) -> Result<()> {
    use openwork_packager::fetch::{FetchRequest, fetch_opencode};
    let FetchArgs {
        target,
        version,
        cache_dir,
        offline,
        source,
        path,
        url,
        github_releases,
        sha256,
        allow_unpinned,
    } = args;
    let target = target_by_name(target.as_deref())?;
    let source = opencode_source(source, path, url, github_releases)?;
    let mut request = FetchRequest::new(
        target,
        version.unwrap_or_else(|| constants.opencode_version().to_string()),
    );
    if let Some(dir) = cache_dir {
        request.cache_root = dir;
    }
    request.offline = offline;
    request.allow_unpinned = allow_unpinned;
    request.pin_from(lock, Input::Opencode, &source);
    if let Some(sha256) = sha256 {
        match source {
            Source::Npm => request.expected_sha256 = Some(sha256),
            _ => request.asset_sha256 = Some(sha256),
        }
    }
    let fetched = fetch_opencode(&request, &source)?;
    print_out(&format!("{}\n", fetched.path.display()));
    Ok(())
}

fn run_release(args: ReleaseArgs, constants: Constants, lock: InputsLock) -> Result<()> {
    use openwork_packager::release::{ReleaseRequest, release};
    let ReleaseArgs {
        target,
        stub,
        dist,
        compression,
        offline,
        json,
        source,
        path,
        url,
        github_releases,
        allow_unpinned,
        router_source,
        no_router,
        opencode_version,
        sign,
    } = args;
    let source = opencode_source(source, path, url, github_releases)?;
    // Secrets first: a release that cannot be signed fails before minutes of building.
    let signing = sign
        .map(|config| -> Result<_> {
            let config = openwork_signer::config::SigningConfig::load(&config)?;
            Ok(std::sync::Arc::new(openwork_signer::sign::Signers::load(
                &config,
            )?))
        })
        .transpose()?;
    let mut constants = constants;
    if let Some(version) = opencode_version {
        constants.opencode_version = version;
    }
    let workspace = openwork_packager::paths::workspace_root();
    let router = if no_router {
        None
    } else {
        RouterSource::named(router_source, &constants, &workspace)
    };
    // A target directory of its own: the cargo that runs this command may hold the lock
    // on the default one.
    let stub_target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("release-stubs");
    let request = ReleaseRequest {
        target: target_by_name(target.as_deref())?,
        constants,
        workspace,
        stub,
        stub_target_dir,
        dist,
        compression: compression.compression(),
        mtime: source_date_epoch()?,
        offline,
        source,
        lock,
        allow_unpinned,
        router,
        signing,
    };
    let report = release(&request)?;
    if json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).expect("serialises")
        ));
    } else {
        let stages: Vec<String> = report
            .timings
            .iter()
            .map(|t| format!("{} {:.1} s", t.stage, t.seconds))
            .collect();
        print_out(&format!(
            "{}\n  {} bytes, sha256 {}\n  payload {} bytes from {} bytes of sidecars ({:.1}%)\n  {:.1} s: {}\n",
            request.dist.join(&report.artifact).display(),
            report.size,
            report.sha256,
            report.payload_size,
            report.raw_size,
            100.0 * report.payload_ratio,
            report.total_seconds,
            stages.join(", "),
        ));
    }
    Ok(())
}

fn run_stage(args: StageArgs, constants: &Constants, lock: InputsLock) -> Result<()> {
    use openwork_packager::fetch::{FetchRequest, fetch_opencode};
    use openwork_packager::router::{RouterBuildRequest, build_router};
    use openwork_packager::stage::{self, StageRequest};
    let StageArgs {
        target,
        dir,
        offline,
        router_source,
        no_router,
        json,
    } = args;
    let target = target_by_name(target.as_deref())?;
    let workspace = openwork_packager::paths::workspace_root();
    let mut fetch = FetchRequest::new(target, constants.opencode_version());
    fetch.offline = offline;
    fetch.pin_from(&lock, Input::Opencode, &Source::Npm);
    let opencode = fetch_opencode(&fetch, &Source::Npm)?;
    let mut sidecars = vec![("opencode".to_string(), opencode.path)];
    let router = if no_router {
        None
    } else {
        RouterSource::named(router_source, constants, &workspace)
    };
    let mut router_version = None;
    if let Some(router) = &router {
        let mut build = RouterBuildRequest::new(target, router.dir.clone(), constants);
        build.expected_version = router.expected_version.clone();
        build.lock = lock.clone();
        build.offline = offline;
        build.quiet = true;
        let built = build_router(&build)?;
        router_version = Some(built.version);
        sidecars.push(("opencode-router".to_string(), built.path));
    }
    let report = stage::stage(&StageRequest {
        target,
        sidecars,
        versions: Versions {
            opencode: constants.opencode_version().to_string(),
            router: router_version,
        },
        dir: dir.unwrap_or_else(|| stage::default_dir(&workspace, target)),
    })?;
    if json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).expect("serialises")
        ));
    } else {
        print_out(&format!(
            "{}\n  {} in {:.2} s; run it with: openwork-server-v2 --bundle-dir {}{}\n",
            report.dir.display(),
            if report.unchanged {
                "unchanged"
            } else {
                "staged"
            },
            report.seconds,
            report.dir.display(),
            if router.is_none() { "" } else { " --router" },
        ));
    }
    Ok(())
}

fn run_lock(args: LockArgs, constants: &Constants, path: Option<PathBuf>) -> Result<()> {
    use openwork_packager::lock;
    use openwork_packager::relock::{self, RefreshRequest};
    let path = path.unwrap_or_else(InputsLock::workspace_path);
    let previous = InputsLock::load(Some(&path))?;
    let (fresh, missing) = relock::refresh(&RefreshRequest {
        constants: constants.clone(),
        previous: previous.clone(),
        cache_root: args
            .cache_dir
            .unwrap_or_else(openwork_packager::paths::default_cache_root),
        registry: None,
        quiet: false,
    })?;
    for note in &missing {
        eprintln!("lock: {note}");
    }
    let diff = lock::diff(&previous, &fresh);
    if diff.is_empty() {
        print_out(&format!("{} is up to date\n", path.display()));
        return Ok(());
    }
    print_out(&diff);
    if args.check {
        return Err(Error::Stale(format!(
            "{} differs from what the registry serves (above); run `openwork-packager lock` \
             and review the diff",
            path.display()
        )));
    }
    pack::write_atomically(&path, fresh.to_text().as_bytes(), false)?;
    print_out(&format!("wrote {}\n", path.display()));
    Ok(())
}

/// Prints what `pack` or `release` made.
fn print_report(report: &pack::PackReport, json: bool) {
    if json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(report).expect("serialises")
        ));
        return;
    }
    print_out(&format!(
        "{}\n  {} bytes, sha256 {}\n  payload {} bytes from {} bytes of sidecars ({:.1}%), compressed in {:.1} s\n",
        report.out.display(),
        report.size,
        report.sha256,
        report.payload_size,
        report.raw_size,
        100.0 * report.payload_size as f64 / report.raw_size.max(1) as f64,
        report.compress_seconds,
    ));
}

/// Prints to stdout; a closed pipe is not an error.
pub(crate) fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}
