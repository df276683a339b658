//! The real thing: a single-file server packed with the pinned opencode from the npm
//! registry (cached, integrity-checked), started on a fresh data dir, proxied, restarted
//! after its opencode is killed, and stopped with SIGTERM.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::time::Duration;

use openwork_tests::fixtures::pack_host_with_pinned_opencode;
use openwork_tests::server::{ServerBuilder, process_alive, wait_until};

/// Every process whose executable lies under `dir` (Linux /proc).
fn processes_running_from(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe.starts_with(dir))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn the_packed_server_runs_real_opencode_restarts_it_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = pack_host_with_pinned_opencode(dir.path());
    let mut server = ServerBuilder::executable(&artifact, dir.path())
        .isolated_home()
        .start();

    let runtime_dir = std::path::PathBuf::from(server.ready["runtimeDir"].as_str().unwrap());
    assert!(
        runtime_dir.starts_with(&server.data_dir),
        "{}",
        server.ready
    );
    let health = server.get_json("/opencode/global/health");
    assert_eq!(health["healthy"], true, "{health}");
    let pinned = openwork_packager::constants::Constants::built_in()
        .opencode_version()
        .to_owned();
    assert_eq!(
        health["version"],
        pinned.as_str(),
        "opencode's own answer: {health}"
    );
    let runtime = server.get_json("/system/runtime");
    assert_eq!(runtime["manifest"]["opencodeVersion"], pinned.as_str());
    assert_eq!(runtime["payload"]["source"], "embedded");
    let first = server.sidecar("opencode");
    assert_eq!(first["state"], "running");
    let first_pid = first["pid"].as_u64().unwrap() as u32;
    assert!(
        std::fs::read_link(format!("/proc/{first_pid}/exe"))
            .unwrap()
            .starts_with(&runtime_dir),
        "opencode runs from the extracted runtime"
    );

    unsafe { libc::kill(first_pid as i32, libc::SIGKILL) };
    let mut latest = first.clone();
    let restarted = wait_until(Duration::from_secs(30), || {
        latest = server.sidecar("opencode");
        latest["state"] == "running" && latest["pid"] != first["pid"]
    });
    assert!(restarted, "not restarted: {latest}\n{}", server.stderr());
    assert_eq!(latest["restarts"], 1);
    assert_eq!(latest["lastExit"]["signal"], 9, "{latest}");
    assert_eq!(server.get_json("/opencode/global/health")["healthy"], true);
    assert!(!process_alive(first_pid));

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", server.stderr());
    let left = processes_running_from(&runtime_dir);
    assert!(
        left.is_empty(),
        "still running from the runtime dir: {left:?}"
    );
}
