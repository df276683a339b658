//! The data dir as a trust boundary, attacked for real: another uid (65534, through
//! `setpriv`) makes and seeds a data dir, plants a runtime dir with a forged stamp and an
//! impostor opencode, plants links where the server would write; a manifest and an impostor
//! dropped beside a packed server; a killed server's sidecar that outlives it while the next
//! start's GC removes its runtime. The server is the packed host build with the fixture
//! sidecar as its opencode.
//!
//! The attacks by another uid need root (CI runs as root); as anyone else those tests print
//! why they check nothing and return.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openwork_tests::fixtures::{describe, pack_host, packed_host_artifact, run_packed};
use openwork_tests::host_bin;
use openwork_tests::server::{ServerBuilder, fixture_starts, process_alive, wait_until};
use serde_json::Value;

/// The exit code of a refusal (`ExitCode::Untrusted`).
const UNTRUSTED: i32 = 15;
/// The attacker.
const OTHER_UID: u32 = openwork_tests::attacker::ATTACKER_ID;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "skipped: this attack needs root, to act as uid {OTHER_UID} through setpriv (CI runs as root)"
    );
    false
}

/// Runs `script` with `sh` as the attacker.
fn as_attacker(script: &str) {
    openwork_tests::require_tool("setpriv", "install util-linux");
    openwork_tests::attacker::run_shell(script);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The host server packed with the fixture sidecar as opencode (and, to vary the payload,
/// a small router made from `router_seed`).
fn packed_fixture(dir: &Path, name: &str, router_seed: Option<u64>) -> PathBuf {
    let fixture = host_bin("openwork-fixture-sidecar");
    let router = router_seed.map(|seed| {
        openwork_tests::fixtures::host_sidecar(dir, &format!("router-{seed}"), 4096, seed)
    });
    let mut sidecars = vec![("opencode", fixture.as_path())];
    if let Some(router) = &router {
        sidecars.push(("opencode-router", router.as_path()));
    }
    pack_host(&host_bin("openwork-server-v2"), &sidecars, &dir.join(name))
}

/// `runtime info --json` of `artifact` (for a data dir that need not exist).
fn runtime_info(artifact: &Path, data_dir: &Path, extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.extend(["runtime", "info", "--json"]);
    let out = run_packed(artifact, data_dir, &args);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits for a server that is expected to refuse; kills it and fails if it keeps running.
fn refused(mut child: Child, stderr: &Path) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not refuse and kept running; stderr:\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    (status.code().unwrap_or(-1), text)
}

/// Every path below `dir` (links not followed), sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The impostor: a script that leaves `marker` behind if it is ever run.
fn impostor(marker: &Path) -> String {
    format!("#!/bin/sh\necho pwned > '{}'\nexit 1\n", marker.display())
}

/// What the attacker needs to plant a runtime dir that passes the stamp check: the exact
/// directory name, the manifest, the digest.
struct Target {
    key: String,
    manifest: openwork_payload::Manifest,
    digest: String,
}

fn target_of(artifact: &Path, scratch_data_dir: &Path) -> Target {
    let info = runtime_info(artifact, scratch_data_dir, &[]);
    let runtime_dir = PathBuf::from(info["runtimeDir"].as_str().unwrap());
    Target {
        key: runtime_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        manifest: serde_json::from_value(info["manifest"].clone()).unwrap(),
        digest: info["digest"].as_str().unwrap().to_string(),
    }
}

/// Plants, as the attacker, `<data>/runtime/<key>` with the manifest, an impostor at
/// opencode's path, a lease and a stamp forged to match exactly what was planted; returns
/// the planted directory. `staging` is a directory the attacker can read.
fn plant_runtime(data: &Path, target: &Target, marker: &Path, staging: &Path) -> PathBuf {
    let dir = data.join("runtime").join(&target.key);
    let opencode = &target.manifest.files["opencode"].path;
    std::fs::write(staging.join("impostor"), impostor(marker)).unwrap();
    std::fs::write(staging.join("manifest.json"), target.manifest.to_json()).unwrap();
    as_attacker(&format!(
        "umask 000
         mkdir -p '{dir}/bin'
         cp '{staging}/impostor' '{dir}/{opencode}'
         chmod 755 '{dir}/{opencode}'
         cp '{staging}/manifest.json' '{dir}/manifest.json'
         : > '{dir}/.lease'",
        dir = dir.display(),
        staging = staging.display(),
    ));
    // The stamp holds only sizes, times and inode numbers: anyone can write a valid one.
    let stamp =
        openwork_runtime::stamp::Stamp::record(&dir, &target.manifest, &target.digest).unwrap();
    std::fs::write(staging.join("stamp.json"), stamp.to_json()).unwrap();
    as_attacker(&format!(
        "cp '{}/stamp.json' '{}/.stamp.json'",
        staging.display(),
        dir.display()
    ));
    // The forgery is good: the stamp check alone would run the impostor.
    let read = openwork_runtime::stamp::Stamp::read(&dir).expect("the forged stamp reads");
    read.check(&dir, &target.manifest, &target.digest)
        .expect("the forged stamp passes the stamp check");
    dir
}

/// A work dir others may traverse, the packed fixture in it, and a `staging` dir (0755) for
/// what the attacker plants.
fn packed_with_staging() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    chmod(work.path(), 0o755);
    let artifact = packed_fixture(work.path(), "packed", None);
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    chmod(&staging, 0o755);
    (work, artifact, staging)
}

#[test]
fn a_data_dir_made_and_seeded_by_another_uid_is_refused_and_nothing_planted_is_used() {
    if !is_root() {
        return;
    }
    let (work, artifact, staging) = packed_with_staging();
    // Where the victim's writes would land through the planted links: a directory of the
    // victim's own that the attacker cannot write.
    let victim = work.path().join("victim-files");
    std::fs::create_dir(&victim).unwrap();
    let marker = work.path().join("shared/impostor-ran");
    // A world-writable parent, as /tmp or a shared volume would be.
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let data = shared.join("data");
    let target = target_of(&artifact, &work.path().join("scratch"));

    as_attacker(&format!(
        "umask 000
         mkdir -m 777 '{data}'
         printf 'planted-client-token-0123456789\\n' > '{data}/token'
         printf 'planted-host-token-0123456789\\n' > '{data}/host-token'
         ln -s '{victim}/run-through-link' '{data}/run'
         ln -s '{victim}/logs-through-link' '{data}/logs'
         mkdir -p '{data}/runtime'
         ln -s '{victim}/locks-through-link' '{data}/runtime/.locks'",
        data = data.display(),
        victim = victim.display(),
    ));
    plant_runtime(&data, &target, &marker, &staging);
    let planted = tree(&data);
    let tokens = std::fs::read(data.join("token")).unwrap();

    // Started by hand: the test support would make the data dir private first.
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let stderr = work.path().join("server.stderr");
    let child = openwork_tests::fixtures::spawn_retrying(
        Command::new(&artifact)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--workspace")
            .arg(work.path())
            .env("FIXTURE_STATE_DIR", &state)
            .env_remove("OPENWORK_TOKEN")
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap()),
    );
    let (code, stderr) = refused(child, &stderr);
    assert_eq!(code, UNTRUSTED, "{stderr}");
    assert!(
        stderr.contains(&format!("refusing the data directory {}", data.display())),
        "{stderr}"
    );
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "what to do: {stderr}");

    assert!(!marker.exists(), "the impostor ran");
    assert!(fixture_starts(&state).is_empty(), "nothing ran at all");
    assert_eq!(
        tree(&victim),
        Vec::<String>::new(),
        "written through a link"
    );
    assert_eq!(tree(&data), planted, "the planted data dir was changed");
    assert_eq!(std::fs::read(data.join("token")).unwrap(), tokens);

    // The runtime commands refuse it too, and write nothing either.
    let out = run_packed(&artifact, &data, &["runtime", "extract"]);
    assert_eq!(out.status.code(), Some(UNTRUSTED), "{}", describe(&out));
    assert_eq!(tree(&victim), Vec::<String>::new());
    assert_eq!(tree(&data), planted);
}

#[test]
fn a_planted_runtime_dir_with_a_forged_stamp_never_runs() {
    if !is_root() {
        return;
    }
    let (work, artifact, staging) = packed_with_staging();
    let dir = work.path().join("server");
    let marker = work.path().join("impostor-ran");
    let builder = || ServerBuilder::executable(&artifact, &dir);
    drop(builder());
    let data = dir.join("data");
    let target = target_of(&artifact, &work.path().join("scratch"));
    // The data dir and runtime/ were open for a while (a bad umask, a shared volume), and
    // the attacker used that moment; the user has tightened them since.
    std::fs::create_dir(data.join("runtime")).unwrap();
    chmod(&data, 0o777);
    chmod(&data.join("runtime"), 0o777);
    chmod(&dir, 0o755);
    let planted = plant_runtime(&data, &target, &marker, &staging);
    chmod(&data, 0o700);
    chmod(&data.join("runtime"), 0o700);

    let (child, stderr) = builder().spawn();
    let (code, stderr) = refused(child, &stderr);
    assert_eq!(code, UNTRUSTED, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "refusing the runtime directory {}",
            planted.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(!marker.exists(), "the impostor ran");

    // The directory is made the user's again, its files are not: still refused.
    std::os::unix::fs::chown(&planted, Some(0), Some(0)).unwrap();
    chmod(&planted, 0o700);
    let (child, stderr) = builder().spawn();
    let (code, stderr) = refused(child, &stderr);
    assert_eq!(code, UNTRUSTED, "{stderr}");
    assert!(stderr.contains("the runtime directory's"), "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(!marker.exists(), "the impostor ran");
    assert!(fixture_starts(&dir.join("state")).is_empty());

    // Without the planted directory the same start runs what the server carries.
    std::fs::remove_dir_all(&planted).unwrap();
    let server = builder().start();
    let start = &server.starts()[0];
    let runtime_dir = server.ready["runtimeDir"].as_str().unwrap();
    assert_eq!(runtime_dir, planted.to_str().unwrap());
    assert!(
        start["exe"].as_str().unwrap().starts_with(runtime_dir),
        "{start}"
    );
    assert!(!marker.exists());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(Path::new(runtime_dir)),
        0o700,
        "a new runtime dir is private"
    );
    assert_eq!(mode(&Path::new(runtime_dir).join("bin")), 0o700);
}

#[test]
fn a_data_dir_or_token_file_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let builder = || ServerBuilder::fixture(dir.path());
    // (The builder makes the data dir private: open it up after.)
    let server = builder();
    chmod(&data, 0o777);
    let (child, stderr) = server.spawn();
    let (code, stderr) = refused(child, &stderr);
    assert_eq!(code, UNTRUSTED, "{stderr}");
    assert!(stderr.contains("writable by group and others"), "{stderr}");
    assert!(stderr.contains("chmod 700"), "{stderr}");
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_none(),
        "nothing written into it"
    );
    assert!(fixture_starts(&dir.path().join("state")).is_empty());

    chmod(&data, 0o700);
    let token_file = dir.path().join("my-token");
    std::fs::write(&token_file, "given-token-0123456789abcdef\n").unwrap();
    chmod(&token_file, 0o666);
    let (child, stderr) = builder().arg("--token-file").arg(&token_file).spawn();
    let (code, stderr) = refused(child, &stderr);
    assert_eq!(code, UNTRUSTED, "{stderr}");
    assert!(
        stderr.contains(&format!("refusing the token file {}", token_file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(!stderr.contains("given-token"), "the token is not echoed");
    // Readable by others only: used, with a warning.
    chmod(&token_file, 0o644);
    let server = builder().arg("--token-file").arg(&token_file).start();
    assert_eq!(server.token, "given-token-0123456789abcdef");
    assert!(server.stderr().contains("readable by other users"));
}

#[test]
fn a_manifest_beside_a_packed_server_does_not_replace_what_it_carries() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_fixture(work.path(), "packed", None);
    // The download folder: the packed server, and what someone dropped beside it.
    let downloads = work.path().join("downloads");
    std::fs::create_dir_all(downloads.join("bin")).unwrap();
    let server_exe = downloads.join("openwork-server-v2");
    std::fs::copy(&artifact, &server_exe).unwrap();
    let marker = work.path().join("impostor-ran");
    let impostor = impostor(&marker);
    std::fs::write(downloads.join("bin/opencode"), &impostor).unwrap();
    chmod(&downloads.join("bin/opencode"), 0o755);
    let mut manifest: openwork_payload::Manifest = serde_json::from_value(
        runtime_info(&artifact, &work.path().join("scratch"), &[])["manifest"].clone(),
    )
    .unwrap();
    {
        use sha2::Digest;
        let entry = manifest.files.get_mut("opencode").unwrap();
        entry.size = impostor.len() as u64;
        entry.sha256 = hex::encode(sha2::Sha256::digest(impostor.as_bytes()));
    }
    std::fs::write(downloads.join("manifest.json"), manifest.to_json()).unwrap();

    let dir = work.path().join("run");
    let server = ServerBuilder::executable(&server_exe, &dir).start();
    let runtime = server.get_json("/system/runtime");
    assert_eq!(runtime["payload"]["source"], "embedded", "{runtime}");
    assert_eq!(runtime["payload"]["path"], server_exe.to_str().unwrap());
    let runtime_dir = server.ready["runtimeDir"].as_str().unwrap();
    let opencode = server.sidecar("opencode");
    assert_eq!(opencode["state"], "running");
    assert!(
        opencode["executable"]
            .as_str()
            .unwrap()
            .starts_with(runtime_dir),
        "{opencode}"
    );
    let start = &server.starts()[0];
    assert!(start["exe"].as_str().unwrap().starts_with(runtime_dir));
    assert_eq!(start["pid"], opencode["pid"], "the fixture itself answers");
    assert_eq!(
        std::fs::read(Path::new(runtime_dir).join("bin/opencode")).unwrap(),
        std::fs::read(host_bin("openwork-fixture-sidecar")).unwrap(),
        "the carried opencode was installed"
    );
    assert!(!marker.exists(), "the impostor ran");
    assert!(
        server.stderr().contains("ignoring the manifest.json"),
        "the ignored manifest is logged: {}",
        server.stderr()
    );
    drop(server);

    // Named explicitly, the bundle is what runs (and is installed).
    let data = work.path().join("explicit");
    let bundle = downloads.to_str().unwrap();
    let info = runtime_info(&server_exe, &data, &["--bundle-dir", bundle]);
    assert_eq!(info["source"], "bundle-flag");
    let out = run_packed(
        &server_exe,
        &data,
        &["--bundle-dir", bundle, "runtime", "extract", "--json"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let extracted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let installed = Path::new(extracted["runtimeDir"].as_str().unwrap()).join("bin/opencode");
    assert_eq!(std::fs::read_to_string(installed).unwrap(), impostor);
}

/// The lifeline a server started (`<exe> __lifeline`, a child of the server).
#[cfg(target_os = "linux")]
fn lifeline_of(server_pid: u32) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(server_pid) && String::from_utf8_lossy(&cmdline).contains("__lifeline") {
            return pid;
        }
    }
    panic!("no lifeline process under server {server_pid}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_servers_sidecar_is_stopped_before_gc_removes_its_runtime() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("server");
    let data = dir.join("data");
    let first = packed_fixture(work.path(), "first", None);
    let next = packed_fixture(work.path(), "next", Some(7));
    // Two other runtimes, extracted before: with the next start's, the newest two.
    for seed in [1, 2] {
        let other = packed_host_artifact(work.path(), 64 << 10, seed);
        let out = run_packed(&other, &data, &["runtime", "extract"]);
        assert!(out.status.success(), "{}", describe(&out));
        std::thread::sleep(Duration::from_millis(5));
    }

    // A server whose sidecar outlives it: its lifeline is killed first, and the fixture
    // clears its parent-death signal (as a sidecar on macOS never has one).
    let mut server = ServerBuilder::executable(&first, &dir)
        .env("FIXTURE_OPENCODE_OUTLIVE_SERVER", "1")
        .start();
    let runtime_dir = PathBuf::from(server.ready["runtimeDir"].as_str().unwrap());
    let sidecar = server.starts()[0]["pid"].as_u64().unwrap() as u32;
    let lifeline = lifeline_of(server.pid());
    unsafe { libc::kill(lifeline as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || !process_alive(
        lifeline
    )));
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(5));
    drop(server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        process_alive(sidecar),
        "the sidecar did not outlive its server: the test would prove nothing"
    );
    // Its runtime is now the oldest: the next start's GC removes it.
    let stamp_path = runtime_dir.join(".stamp.json");
    let mut stamp: Value = serde_json::from_slice(&std::fs::read(&stamp_path).unwrap()).unwrap();
    stamp["completedAtMs"] = 1.into();
    std::fs::write(&stamp_path, serde_json::to_vec(&stamp).unwrap()).unwrap();

    let server = ServerBuilder::executable(&next, &dir).start();
    let stopped = !process_alive(sidecar);
    if !stopped {
        unsafe { libc::kill(sidecar as i32, libc::SIGKILL) };
    }
    assert!(
        !runtime_dir.exists(),
        "GC kept the old runtime: the test would prove nothing"
    );
    let stderr = server.stderr();
    assert!(
        stopped,
        "the killed server's sidecar still runs after the next start:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("(pid {sidecar},")))
        .unwrap_or_else(|| panic!("the leftover is not logged:\n{stderr}"));
    assert!(
        line.contains("left behind by a server that was killed"),
        "{line}"
    );
    assert!(
        line.contains(": stopped") || line.contains(": killed"),
        "{line}"
    );
    assert!(
        line.contains(runtime_dir.to_str().unwrap()),
        "recorded from its runtime dir: {line}"
    );
}
