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

/// Runs `program args` in `dir`, panicking with its output when it fails.
fn run_in(dir: &std::path::Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} in {}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Whether node can run here. Outside CI a missing node skips the client half of the test
/// (saying so); under CI it fails, so the check never silently goes missing there.
fn node_available() -> bool {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "node is needed for the TypeScript client's end-to-end test (scripts/test installs it)"
    );
    eprintln!("skipped the TypeScript client half: node is not installed (CI installs it)");
    false
}

/// A client that knows only the OpenWork handshake and opencode's published SDK, against the
/// packed server with the real opencode: every answer conforms to docs/openapi.json, the
/// capabilities are true of this opencode, a switched workspace is the one opencode serves,
/// and the generated TypeScript client plus `@opencode-ai/sdk` create and list a session.
#[test]
fn a_client_knowing_only_the_handshake_and_opencodes_sdk_works_through_the_packed_server() {
    use openwork_tests::contract::{self, Contract};
    use openwork_tests::http;
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let artifact = pack_host_with_pinned_opencode(dir.path());
    let server = ServerBuilder::executable(&artifact, dir.path())
        .isolated_home()
        .start();
    let mut contract = Contract::new(contract::checked_in_document());
    let token = server.token.clone();
    let host = server.host_token.clone();
    let auth = format!("Bearer {token}");
    let mut call = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let response = http::request(&server.addr, method, path, headers, body);
        contract.check(method, path, &response);
        response
    };
    let with_token = [("Authorization", auth.as_str())];
    for path in [
        "/health",
        "/system/health",
        "/openapi.json",
        "/system/runtime",
        "/workspaces",
        "/workspaces/active",
        "/capabilities",
        "/system/sidecars/opencode/logs?tail=3",
        "/opencode/global/health",
        "/opencode/session",
    ] {
        let response = call("GET", path, &with_token, b"");
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    }
    assert_eq!(call("GET", "/workspaces", &[], b"").status, 401);
    assert_eq!(call("GET", "/nowhere", &with_token, b"").status, 404);
    assert_eq!(call("PUT", "/capabilities", &with_token, b"").status, 405);

    // What /capabilities says a client can do, this opencode really offers.
    let capabilities = server.get_json("/capabilities");
    let doc = server.get_json("/opencode/doc");
    let offers = |path: &str, method: &str| doc["paths"][path].get(method).is_some();
    assert_eq!(
        capabilities["skills"],
        json!({"read": offers("/skill", "get"), "write": false})
    );
    assert_eq!(
        capabilities["mcp"],
        json!({"read": offers("/mcp", "get"), "write": offers("/mcp", "post")})
    );
    let config_has_plugins = doc["components"]["schemas"]["Config"]["properties"]
        .get("plugin")
        .is_some();
    assert_eq!(
        capabilities["plugins"],
        json!({
            "read": offers("/config", "get") && config_has_plugins,
            "write": offers("/config", "patch") && config_has_plugins,
        })
    );
    assert_eq!(capabilities["skills"]["read"], true, "{capabilities}");

    // Switch the workspace: the real opencode serves the new directory, unrestarted.
    let other = dir.path().join("another project");
    std::fs::create_dir(&other).unwrap();
    let other_dir = other.canonicalize().unwrap();
    let opencode_pid = server.sidecar("opencode")["pid"].clone();
    let host_auth = format!("Bearer {host}");
    let body = json!({ "directory": other }).to_string();
    let response = call(
        "PUT",
        "/workspaces/active",
        &[
            ("Authorization", host_auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let path = call("GET", "/opencode/path", &with_token, b"").json();
    assert_eq!(path["directory"], other_dir.to_str().unwrap(), "{path}");
    assert_eq!(
        server.sidecar("opencode")["pid"],
        opencode_pid,
        "not restarted"
    );

    if !node_available() {
        return;
    }
    let client_dir = openwork_tests::workspace_root().join("clients/typescript");
    if !client_dir.join("node_modules").exists() {
        run_in(&client_dir, "npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    run_in(&client_dir, "npm", &["run", "build"], &[]);
    let out = run_in(
        &client_dir,
        "node",
        &["test/e2e.mjs"],
        &[("OPENWORK_URL", &server.url), ("OPENWORK_TOKEN", &token)],
    );
    let seen: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the e2e script printed no JSON line ({e}): {out}"));
    assert_eq!(
        seen["baseUrl"],
        format!("{}/opencode", server.url),
        "{seen}"
    );
    assert_eq!(seen["directory"], other_dir.to_str().unwrap());
    assert_eq!(
        seen["sessionDirectory"],
        other_dir.to_str().unwrap(),
        "the session was made in the active workspace: {seen}"
    );
    assert!(seen["sessionTitle"].as_str().unwrap().starts_with("e2e "));
    assert_eq!(seen["firstEvent"], "snapshot");
    assert_eq!(seen["sidecars"], json!(["opencode"]));
    // The snapshot's id is `<epoch>-<seq>`; an id of another process is told so.
    assert_eq!(seen["firstEventIdIsEpochAndSeq"], true, "{seen}");
    assert_eq!(
        seen["resumed"][0],
        json!({"event": "lagged", "reason": "restarted", "missed": null}),
        "{seen}"
    );
    assert_eq!(seen["resumed"][1]["event"], "snapshot", "{seen}");
    // A dropped stream is resumed after the last id seen.
    assert_eq!(
        seen["reconnectedWith"],
        json!([null, seen["snapshotId"]]),
        "{seen}"
    );
}
