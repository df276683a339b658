//! Shared helpers for the end-to-end tests: where the workspace's binaries are, how to get a
//! real stub for each target (cross-linked here with cargo-zigbuild), and small fixtures.

#[cfg(unix)]
pub mod attacker;
pub mod contract;
pub mod fixtures;
pub mod http;
pub mod netns;
pub mod release;
pub mod server;
pub mod sse;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// HOME and the XDG base directories, all inside `home`: set on a server (or bare opencode)
/// so that opencode neither reads nor writes the user's files.
pub fn isolated_home_env(home: &Path) -> [(&'static str, PathBuf); 5] {
    [
        ("HOME", home.to_path_buf()),
        ("XDG_CONFIG_HOME", home.join(".config")),
        ("XDG_DATA_HOME", home.join(".local/share")),
        ("XDG_CACHE_HOME", home.join(".cache")),
        ("XDG_STATE_HOME", home.join(".local/state")),
    ]
}

/// The workspace root.
pub use openwork_packager::paths::workspace_root;

/// The cargo target directory the tests were built into (`…/target/<profile>/deps/<test>` →
/// `…/target`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Path of a workspace binary built for the host in the same profile as the tests. The test
/// command builds all binaries first (`cargo test --workspace` does); a missing one is a
/// build problem, so this panics with the command to run.
pub fn host_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (the README's test command does)",
        path.display()
    );
    path
}

/// A real release stub of `openwork-server-v2` for `target` (a name from targets/), built
/// once per test process into a target directory of its own (the outer cargo holds the
/// lock on the main one). Cross targets link through cargo-zigbuild.
pub fn stub_for(target: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let spec = openwork_payload::targets::by_name(target).expect("known target");
    openwork_packager::stub::build_stub(&workspace_root(), spec, &target_dir().join("stubs"))
        .unwrap_or_else(|e| panic!("{e}"))
}
pub mod wine;

/// Panics with a hint to install `tool` if it cannot be run. Tests that need an external
/// tool call this first, so that a missing tool fails loudly instead of the test passing
/// without having checked anything.
pub fn require_tool(tool: &str, install_hint: &str) {
    // Whether it starts is the question; its exit status for `--version` varies by tool.
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "`{tool}` is needed by this test and could not be run; {install_hint}"
    );
}
