//! `build-router`: opencode-router built from source with the pinned Bun.

use std::path::PathBuf;

use clap::Args;
use openwork_packager::constants::Constants;
use openwork_packager::lock::InputsLock;
use openwork_packager::router::{BuiltRouter, RouterBuildRequest, RouterSource, build_router};
use openwork_packager::{Error, Result};

use super::{print_out, target_by_name};

/// `build-router` arguments.
#[derive(Debug, Args)]
pub struct BuildRouterArgs {
    /// Target name from targets/ [default: the host's]
    #[arg(long)]
    pub target: Option<String>,
    /// opencode-router source directory [default: router.sourceDir of constants.json; the
    /// process-contract stand-in is fixtures/opencode-router]
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Also copy the executable here
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Cache root for Bun and builds [default: <repo>/.local/runtime-assets]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only cached Bun and builds; fail rather than download
    #[arg(long)]
    pub offline: bool,
    /// Accept a Bun that inputs.lock.json does not pin (local experiments only)
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `build-router`.
pub fn run(args: BuildRouterArgs, constants: &Constants, lock: InputsLock) -> Result<()> {
    let BuildRouterArgs {
        target,
        source,
        out,
        cache_dir,
        offline,
        allow_unpinned,
        json,
    } = args;
    let workspace = openwork_packager::paths::workspace_root();
    let router = RouterSource::named(source, constants, &workspace).ok_or_else(|| {
        Error::Usage(
            "no opencode-router source is named: pass --source DIR (constants.json has no \
             `router`; the process-contract stand-in is fixtures/opencode-router)"
                .into(),
        )
    })?;
    let mut request =
        RouterBuildRequest::new(target_by_name(target.as_deref())?, router.dir, constants);
    request.expected_version = router.expected_version;
    request.lock = lock;
    request.allow_unpinned = allow_unpinned;
    if let Some(dir) = cache_dir {
        request.cache_root = dir.clone();
        request.bun_cache_root = dir;
    }
    request.out = out;
    request.offline = offline;
    let built = build_router(&request)?;
    print_out(&render(&built, json));
    Ok(())
}

fn render(built: &BuiltRouter, json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            serde_json::to_string_pretty(built).expect("serialises")
        );
    }
    format!(
        "{}\n  opencode-router {} for {}, {} bytes, sha256 {}\n  {} with bun {} in {:.2} s\n",
        built.out.as_ref().unwrap_or(&built.path).display(),
        built.version,
        built.target,
        built.size,
        built.sha256,
        if built.from_cache {
            "cached build"
        } else {
            "built"
        },
        built.bun_version,
        built.seconds,
    )
}
