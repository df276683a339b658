//! Inputs for `openwork-packager release` in tests: the packager itself, and a real
//! opencode (or a stand-in of the right format) for targets whose pinned package the
//! configured registry does not serve.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::fixtures::describe;
use crate::host_bin;

/// Where a target's opencode comes from.
#[derive(Debug, Clone, Copy)]
pub enum Opencode {
    /// The pinned version from the npm registry, as a real release gets it.
    Pinned,
    /// The real opencode at a version the registry does serve, fetched (integrity-checked)
    /// into the tests' own cache and handed to `release` as a file.
    OtherVersion(&'static str),
    /// No opencode of any version for the target, so the router Bun builds for it stands
    /// in: a real executable of the right format and architecture is all packing needs.
    Router,
}

/// The configured registry has only some of opencode's platform packages: the pinned
/// version for the x64 Linux builds (glibc and musl, plain and baseline) and windows-x64,
/// another version for the arm64 Linux builds, and nothing for macOS, windows-x64-baseline
/// or windows-arm64. A target becomes `Pinned` once the registry serves its pinned package
/// and `openwork-packager lock` has locked it.
pub const PLAN: [(&str, Opencode); 12] = [
    ("linux-x64", Opencode::Pinned),
    ("linux-x64-baseline", Opencode::Pinned),
    ("linux-x64-musl", Opencode::Pinned),
    ("linux-x64-baseline-musl", Opencode::Pinned),
    ("linux-arm64", Opencode::OtherVersion("1.18.18")),
    ("linux-arm64-musl", Opencode::OtherVersion("1.18.18")),
    ("darwin-arm64", Opencode::Router),
    ("darwin-x64", Opencode::Router),
    ("darwin-x64-baseline", Opencode::Router),
    ("windows-x64", Opencode::Pinned),
    ("windows-x64-baseline", Opencode::Router),
    ("windows-arm64", Opencode::Router),
];

/// The opencode-router stand-in's source (a test fixture: no release carries it unless
/// pointed at it).
pub fn router_fixture() -> PathBuf {
    openwork_packager::paths::workspace_root().join("fixtures/opencode-router")
}

/// How `target`'s opencode is had here.
pub fn opencode_for(target: &str) -> Opencode {
    PLAN.iter()
        .find(|(name, _)| *name == target)
        .map(|(_, opencode)| *opencode)
        .unwrap_or_else(|| panic!("{target} is not in the plan"))
}

/// Runs `openwork-packager` with `args`.
pub fn packager(args: &[&str]) -> Output {
    Command::new(host_bin("openwork-packager"))
        .args(args)
        .output()
        .unwrap()
}

/// Stdout's last line: the path `fetch` and `build-router` print.
fn printed_path(output: &Output) -> PathBuf {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    PathBuf::from(stdout.trim().lines().last().expect("a path on stdout"))
}

/// The stand-in opencode for `target`, once it is on disk (built into `work` for
/// `Router`); `None` for `Pinned`.
pub fn stand_in(target: &str, opencode: Opencode, work: &Path) -> Option<PathBuf> {
    Some(match opencode {
        Opencode::Pinned => return None,
        Opencode::OtherVersion(version) => {
            // Under the packager's cache root, so it is kept as that is, but apart from the
            // entries that releases and the dev loop read.
            let cache = openwork_packager::paths::default_cache_root().join("release-targets");
            // Not in the lock (another version than the pin), so allowed explicitly.
            let r = packager(&[
                "fetch",
                "--target",
                target,
                "--version",
                version,
                "--allow-unpinned",
                "--cache-dir",
                cache.to_str().unwrap(),
            ]);
            assert!(
                r.status.success(),
                "fetch {target}@{version}: {}",
                describe(&r)
            );
            printed_path(&r)
        }
        Opencode::Router => {
            let out = work.join(format!("opencode-router-{target}"));
            let fixture = router_fixture();
            let r = packager(&[
                "build-router",
                "--target",
                target,
                "--source",
                fixture.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(
                r.status.success(),
                "build-router {target}: {}",
                describe(&r)
            );
            out
        }
    })
}

/// `release` arguments that bring `target`'s opencode as planned: `--source file` with
/// the stand-in (which no pin vouches for) and its version.
pub fn opencode_args(target: &str, stand_in: Option<&Path>) -> Vec<String> {
    let Some(file) = stand_in else {
        return Vec::new();
    };
    let mut args: Vec<String> = ["--source", "file", "--allow-unpinned", "--path"]
        .map(String::from)
        .to_vec();
    args.push(file.display().to_string());
    if let Opencode::OtherVersion(version) = opencode_for(target) {
        args.extend(["--opencode-version".to_string(), version.to_string()]);
    }
    args
}
