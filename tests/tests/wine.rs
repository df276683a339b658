//! The `windows-x64` build executed, not only parsed: the real release stub, packed by the
//! packager with Windows sidecars, run under Wine. Extraction, the warm start, `runtime
//! verify` and repair; `serve` with a Windows build of the fixture sidecar, over HTTP,
//! stopped over the API and by Ctrl-C; and the Job Object that must end every sidecar when
//! the server is killed outright.
//!
//! Needs `wine` (apt: wine wine64), mingw-w64 and the `x86_64-pc-windows-gnu` Rust target;
//! see tests/support/wine.rs for the prefix and the stand-in DLL. Skipped where Wine cannot
//! run the build (not Linux x86_64, or no wine outside CI).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use openwork_tests::fixtures::{describe, runtime_dirs, runtime_entries, tree_hashes};
use openwork_tests::server::wait_until;
use openwork_tests::wine::{self, Wine, WineServer, processes_below, unix_path, windows_path};
use openwork_tests::{host_bin, stub_for};
use serde_json::Value;

const TARGET: &str = "windows-x64";

/// The unpacked release stub for Windows, built once per test process.
fn stub() -> &'static Path {
    static STUB: OnceLock<PathBuf> = OnceLock::new();
    STUB.get_or_init(|| stub_for(TARGET))
}

/// The Windows fixture sidecar, copied into `dir` (Wine runs it from there).
fn fixture_in(dir: &Path) -> PathBuf {
    let fixture = dir.join("fixture.exe");
    std::fs::copy(wine::fixture_sidecar(), &fixture).unwrap();
    fixture
}

/// The stub serving in dev mode with the fixture as opencode (no payload read).
fn serve_fixture(wine: &Wine, dir: &Path) -> WineServer {
    let fixture = fixture_in(dir);
    WineServer::start(
        wine,
        stub(),
        dir,
        &[
            "--sidecar".into(),
            format!("opencode={}", windows_path(&fixture)),
        ],
        &[],
    )
}

/// Packs the Windows stub with the Windows fixture sidecar as opencode and the stub itself
/// as opencode-router (two real, different Windows executables); returns the artifact and
/// the packager's report.
fn pack(dir: &Path) -> (PathBuf, Value) {
    let fixture = fixture_in(dir);
    let out = dir.join("openwork-server-v2-windows-x64.exe");
    let output = std::process::Command::new(host_bin("openwork-packager"))
        .args(["pack", "--fast", "--json", "--target", TARGET])
        .arg("--stub")
        .arg(stub())
        .arg("--sidecar")
        .arg(format!("opencode={}", fixture.display()))
        .arg("--sidecar")
        .arg(format!("opencode-router={}", stub().display()))
        .args(["--router-version", "0.1.0"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "pack: {}", describe(&output));
    (out, json(&output))
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(output)))
}

/// `<artifact> runtime <command> --json --data-dir <data>` under Wine, and how long it took.
fn runtime(wine: &Wine, artifact: &Path, data: &Path, command: &str) -> (Output, Duration) {
    let started = Instant::now();
    let output = wine::output(
        wine.command(windows_path(artifact))
            .args(["runtime", command, "--json", "--data-dir"])
            .arg(windows_path(data))
            .env_remove("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR")
            .env_remove("OPENWORK_DATA_DIR"),
    );
    (output, started.elapsed())
}

/// Kills every Wine process whose executable lies below a directory when dropped, so that a
/// failing test leaves nothing running (Wine's processes are not the test's children).
struct KillBelow<'a>(&'a Path);

impl Drop for KillBelow<'_> {
    fn drop(&mut self) {
        for (pid, _) in processes_below(self.0) {
            signal(pid, Signal::Kill);
        }
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Interrupt,
    Kill,
}

/// Signals a Linux process. This file compiles on every host; it runs only where
/// [`Wine::get`] finds Wine, which is Linux.
fn signal(pid: u32, signal: Signal) {
    #[cfg(unix)]
    unsafe {
        let number = match signal {
            Signal::Interrupt => libc::SIGINT,
            Signal::Kill => libc::SIGKILL,
        };
        libc::kill(pid as i32, number);
    }
    #[cfg(not(unix))]
    {
        let _ = signal;
        unreachable!("no Wine here to have started process {pid}");
    }
}

/// The fixture's health answer, through the server's proxy.
fn opencode_health(server: &WineServer) -> Value {
    let response = server.request("GET", "/opencode/global/health", Some(&server.token), b"");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn a_packed_windows_server_extracts_verifies_and_repairs_its_runtime_under_wine() {
    let Some(wine) = Wine::get() else { return };
    let work = tempfile::tempdir().unwrap();
    let _reaper = KillBelow(work.path());
    let (artifact, report) = pack(work.path());
    let data = work.path().join("data");

    let (cold, cold_time) = runtime(wine, &artifact, &data, "extract");
    assert!(cold.status.success(), "cold extract: {}", describe(&cold));
    let first = json(&cold);
    assert_eq!(first["extracted"], true, "{first}");
    let digest = first["digest"].as_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(first["key"], format!("{version}-{}", &digest[..16]));
    let dir = unix_path(first["runtimeDir"].as_str().unwrap()).expect("a path on drive Z:");
    assert_eq!(runtime_dirs(&data), std::slice::from_ref(&dir));

    // Exactly the manifest's files, with the manifest's hashes, and the manifest itself.
    let files = tree_hashes(&dir);
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            ".lease",
            "bin/opencode-router.exe",
            "bin/opencode.exe",
            "manifest.json"
        ]
    );
    let manifest = &report["manifest"];
    for (name, entry) in manifest["files"].as_object().unwrap() {
        let path = entry["path"].as_str().unwrap();
        let (_, sha256) = files.iter().find(|(p, _)| p == path).unwrap();
        assert_eq!(entry["sha256"], *sha256, "{name}");
        let size = std::fs::metadata(dir.join(path)).unwrap().len();
        assert_eq!(entry["size"], size, "{name}");
    }
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(written, *manifest);

    let (warm, warm_time) = runtime(wine, &artifact, &data, "extract");
    assert!(warm.status.success(), "warm extract: {}", describe(&warm));
    let second = json(&warm);
    assert_eq!(second["extracted"], false, "{second}");
    assert_eq!(second["runtimeDir"], first["runtimeDir"]);
    assert_eq!(tree_hashes(&dir), files);

    let (verify, _) = runtime(wine, &artifact, &data, "verify");
    assert!(verify.status.success(), "verify: {}", describe(&verify));
    assert_eq!(json(&verify)["verified"], true);

    // A changed sidecar is damage: verify says so (exit 4), and the next start replaces
    // the directory, which needs Windows' rename and delete rules to hold under Wine.
    let router = dir.join("bin/opencode-router.exe");
    let mut bytes = std::fs::read(&router).unwrap();
    bytes.push(0);
    std::fs::write(&router, bytes).unwrap();
    let (verify, _) = runtime(wine, &artifact, &data, "verify");
    assert_eq!(verify.status.code(), Some(4), "{}", describe(&verify));
    assert!(
        json(&verify)["runtime"]
            .as_str()
            .unwrap()
            .contains("bin/opencode-router.exe"),
        "{}",
        describe(&verify)
    );
    let (repair, _) = runtime(wine, &artifact, &data, "extract");
    assert!(repair.status.success(), "repair: {}", describe(&repair));
    assert_eq!(json(&repair)["extracted"], true);
    assert_eq!(tree_hashes(&dir), files);
    assert_eq!(runtime_dirs(&data), std::slice::from_ref(&dir));
    let litter: Vec<String> = runtime_entries(&data)
        .into_iter()
        .filter(|n| n.starts_with(".tmp~") || n.starts_with(".trash~"))
        .collect();
    assert!(litter.is_empty(), "left after the repair: {litter:?}");
    let (verify, _) = runtime(wine, &artifact, &data, "verify");
    assert!(verify.status.success(), "{}", describe(&verify));

    eprintln!("under Wine: cold extract {cold_time:?}, warm {warm_time:?}");
}

#[test]
fn serve_under_wine_proxies_to_a_windows_sidecar_and_stops_cleanly() {
    let Some(wine) = Wine::get() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let _reaper = KillBelow(dir);
    let started = Instant::now();
    let mut server = serve_fixture(wine, dir);
    let ready_after = started.elapsed();
    let ready = &server.ready;
    assert_eq!(
        ready["runtimeDir"],
        Value::Null,
        "dev mode reads no payload"
    );
    assert_eq!(
        ready["tokenFile"],
        windows_path(&server.data_dir.join("token"))
    );
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"));

    let health = server.request("GET", "/health", None, b"");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["healthy"], true);
    assert_eq!(opencode_health(&server)["healthy"], true);
    let unauthorized = server.request("GET", "/opencode/global/health", None, b"");
    assert_eq!(unauthorized.status, 401);

    let sidecars = processes_below(dir);
    assert_eq!(sidecars.len(), 1, "the fixture alone: {sidecars:?}");
    assert!(sidecars[0].1.contains("fixture.exe serve"), "{sidecars:?}");

    let response = server.request("POST", "/system/shutdown", Some(&server.host_token), b"");
    assert_eq!(response.status, 202, "{}", response.text());
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", server.stderr());
    assert!(
        wait_until(Duration::from_secs(5), || processes_below(dir).is_empty()),
        "still running after a clean stop: {:?}",
        processes_below(dir)
    );

    eprintln!("under Wine: ready after {ready_after:?}");
}

#[test]
fn ctrl_c_under_wine_stops_the_server_cleanly() {
    let Some(wine) = Wine::get() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let _reaper = KillBelow(dir);
    let mut server = serve_fixture(wine, dir);
    assert_eq!(opencode_health(&server)["healthy"], true);

    // Wine turns SIGINT into a console Ctrl-C event: the only way to reach the server's
    // Windows signal path (`tokio::signal::ctrl_c`) from here.
    signal(server.linux_pid(), Signal::Interrupt);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", server.stderr());
    assert!(server.stderr().contains("Ctrl-C"), "{}", server.stderr());
    assert!(
        wait_until(Duration::from_secs(5), || processes_below(dir).is_empty()),
        "still running after Ctrl-C: {:?}",
        processes_below(dir)
    );
    let records = std::fs::read_dir(server.data_dir.join("run"))
        .unwrap()
        .count();
    assert_eq!(records, 0, "a clean stop leaves no run record");
}

#[test]
fn sigkill_of_the_server_under_wine_leaves_no_sidecar_or_grandchild() {
    let Some(wine) = Wine::get() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let _reaper = KillBelow(dir);
    let (artifact, _) = pack(dir);
    let spawn_child = [("FIXTURE_OPENCODE_SPAWN_CHILD", "1".to_string())];
    let server = WineServer::start(wine, &artifact, dir, &[], &spawn_child);
    let runtime_dir = unix_path(server.ready["runtimeDir"].as_str().unwrap()).unwrap();
    assert_eq!(opencode_health(&server)["healthy"], true);

    // The payload's opencode (the fixture) and the grandchild it started.
    let both = wait_until(Duration::from_secs(5), || {
        processes_below(&runtime_dir).len() == 2
    });
    assert!(
        both,
        "opencode and its child: {:?}",
        processes_below(&runtime_dir)
    );
    let status = server.request("GET", "/system/runtime", Some(&server.token), b"");
    assert_eq!(status.status, 200, "{}", status.text());
    let port = status.json()["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "opencode")
        .map(|s| s["port"].as_u64().unwrap())
        .unwrap();

    // SIGKILL of the Linux process: the Windows process dies without running any code of
    // its own, so only the kernel's (here wineserver's) closing of the job can act.
    let killed_at = Instant::now();
    signal(server.linux_pid(), Signal::Kill);
    let gone = wait_until(Duration::from_secs(10), || {
        processes_below(&runtime_dir).is_empty()
    });
    assert!(
        gone,
        "alive 10 s after SIGKILL of the server: {:?}",
        processes_below(&runtime_dir)
    );
    let gone_after = killed_at.elapsed();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_err(),
        "opencode's port {port} still answers"
    );
    drop(server);

    // The next start in the same data dir sweeps the dead server's record, and runs.
    let again = WineServer::start(wine, &artifact, dir, &[], &[]);
    assert_eq!(opencode_health(&again)["healthy"], true);
    let records: Vec<String> = std::fs::read_dir(again.data_dir.join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        records,
        [format!("{}.json", again.ready["pid"])],
        "{}",
        again.stderr()
    );

    eprintln!("under Wine: sidecars gone {gone_after:?} after SIGKILL of the server");
}

/// The control for the test above: Wine itself does not end a killed process's children,
/// so the test above passes because of the server's Job Object, not by default.
#[test]
fn wine_leaves_the_children_of_a_killed_process_running_without_a_job() {
    let Some(wine) = Wine::get() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let _reaper = KillBelow(dir);
    let fixture = fixture_in(dir);
    let mut parent = wine
        .command(windows_path(&fixture))
        .args(["serve", "--hostname", "127.0.0.1", "--port", "0"])
        .env("FIXTURE_OPENCODE_SPAWN_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run wine");
    // The fixture says it listens after its child is started.
    let mut stdout = std::io::BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the fixture ended before it listened");
    }
    let child_of = |processes: Vec<(u32, String)>| {
        processes
            .into_iter()
            .find(|(_, args)| args.ends_with("fixture.exe child"))
    };
    let started = wait_until(Duration::from_secs(5), || {
        child_of(processes_below(dir)).is_some()
    });
    assert!(started, "the fixture's child: {:?}", processes_below(dir));

    parent.kill().unwrap();
    parent.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child_of(processes_below(dir)).is_some(),
        "Wine ended the child of a killed process by itself: the no-orphan test above \
         no longer proves that the Job Object works"
    );
}
