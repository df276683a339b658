//! The packager's command line on real binaries: what `pack` refuses (with which exit code),
//! and what `inspect` reports for good and damaged artifacts of each format.

use std::path::Path;
use std::process::{Command, Output};

use openwork_tests::fixtures::{describe, host_sidecar, packed_host_artifact};
use openwork_tests::{host_bin, stub_for};
use serde_json::Value;

fn packager(args: &[&str]) -> Output {
    Command::new(host_bin("openwork-packager"))
        .args(args)
        .output()
        .unwrap()
}

fn pack(stub: &Path, opencode: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pack".to_string(),
        "--fast".into(),
        "--stub".into(),
        stub.display().to_string(),
        "--sidecar".into(),
        format!("opencode={}", opencode.display()),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(host_bin("openwork-packager"))
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn pack_refuses_bad_inputs_with_distinct_exit_codes() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let stub = host_bin("openwork-server-v2");
    let opencode = host_sidecar(dir, "opencode", 1024, 1);
    let out = dir.join("out");

    let link = dir.join("link");
    std::os::unix::fs::symlink(&opencode, &link).unwrap();
    let r = pack(&stub, &link, &out, &[]);
    assert_eq!(
        r.status.code(),
        Some(10),
        "symlink sidecar: {}",
        describe(&r)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("symlink"));

    let stub_link = dir.join("stub-link");
    std::os::unix::fs::symlink(&stub, &stub_link).unwrap();
    let r = pack(&stub_link, &opencode, &out, &[]);
    assert_eq!(r.status.code(), Some(10), "symlink stub: {}", describe(&r));

    let r = pack(&stub, dir, &out, &[]);
    assert_eq!(
        r.status.code(),
        Some(10),
        "directory sidecar: {}",
        describe(&r)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a regular file"));

    let text = dir.join("text");
    std::fs::write(&text, "#!/bin/sh\n").unwrap();
    let r = pack(&stub, &text, &out, &[]);
    assert_eq!(
        r.status.code(),
        Some(10),
        "non-executable sidecar: {}",
        describe(&r)
    );

    // An x86_64 ELF stub is the wrong format for Windows and the wrong arch for arm64 Linux.
    for target in ["windows-x64", "linux-arm64", "darwin-arm64"] {
        let r = pack(&stub, &opencode, &out, &["--target", target]);
        assert_eq!(r.status.code(), Some(9), "{target}: {}", describe(&r));
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(&format!("target {target} needs")),
            "{}",
            describe(&r)
        );
    }

    let r = pack(
        &stub,
        &opencode,
        &out,
        &["--sidecar", &format!("nonsense={}", opencode.display())],
    );
    assert_eq!(
        r.status.code(),
        Some(2),
        "unknown sidecar: {}",
        describe(&r)
    );
    let r = pack(
        &stub,
        &opencode,
        &out,
        &["--sidecar", &format!("opencode={}", opencode.display())],
    );
    assert_eq!(
        r.status.code(),
        Some(2),
        "repeated sidecar: {}",
        describe(&r)
    );

    // A packed file is not a stub.
    let packed = packed_host_artifact(dir, 1024, 2);
    let r = pack(&packed, &opencode, &out, &[]);
    assert_eq!(r.status.code(), Some(9), "packed stub: {}", describe(&r));
    assert!(String::from_utf8_lossy(&r.stderr).contains("already contains a payload"));

    assert!(!out.exists(), "a refused pack must not leave an output");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".openwork-packager-")
        })
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind");
}

#[test]
fn inspect_reports_and_verifies_elf_artifacts() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 1 << 20, 3);
    let r = packager(&["inspect", "--json", artifact.to_str().unwrap()]);
    assert!(r.status.success(), "{}", describe(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["format"], "elf");
    assert_eq!(v["arch"], "x86_64");
    assert_eq!(v["target"], "linux-x64");
    assert_eq!(v["verified"], true);
    assert_eq!(v["manifest"]["files"]["opencode"]["path"], "bin/opencode");
    let offset = v["payload"]["offset"].as_u64().unwrap();
    let length = v["payload"]["length"].as_u64().unwrap();
    assert_eq!(v["payload"]["sha256"].as_str().unwrap().len(), 64);
    let stub_len = std::fs::metadata(host_bin("openwork-server-v2"))
        .unwrap()
        .len();
    assert_eq!(offset, stub_len, "ELF payload starts right after the stub");

    let human = packager(&["inspect", artifact.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("verified:   yes"), "{text}");

    // A flipped payload byte: still found and described, but not verified, exit 4.
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[(offset + length / 2) as usize] ^= 0x10;
    let damaged = work.path().join("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    let r = packager(&["inspect", "--json", damaged.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(4), "{}", describe(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert!(v["error"].as_str().unwrap().contains("checksum mismatch"));

    let r = packager(&["inspect", host_bin("openwork-server-v2").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(3), "unpacked stub: {}", describe(&r));
}

#[test]
fn pack_and_inspect_a_windows_artifact() {
    let work = tempfile::tempdir().unwrap();
    let stub = stub_for("windows-x64");
    // A real PE x86_64 executable as the sidecar: the Windows stub itself.
    let sidecar = work.path().join("opencode.exe");
    std::fs::copy(&stub, &sidecar).unwrap();
    let out = work.path().join("openwork-server-v2-windows-x64.exe");
    let r = pack(&stub, &sidecar, &out, &["--target", "windows-x64"]);
    assert!(r.status.success(), "{}", describe(&r));
    let r = packager(&["inspect", "--json", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", describe(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["format"], "pe");
    assert_eq!(v["target"], "windows-x64");
    assert_eq!(
        v["manifest"]["files"]["opencode"]["path"],
        "bin/opencode.exe"
    );
    assert_eq!(v["verified"], true);
    assert_eq!(
        v["payload"]["offset"].as_u64().unwrap() % 8,
        0,
        "PE payload is 8-aligned"
    );
}

/// `release` with the same inputs and SOURCE_DATE_EPOCH twice: byte-identical artifacts
/// (sorted entries, fixed mtimes/owners/modes, fixed compression parameters), a checksum
/// line and a build report; another SOURCE_DATE_EPOCH gives other bytes. The default
/// release carries opencode alone, and its manifest says the server version the stub
/// reports; `--router-source` adds a router, which then runs.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn release_is_reproducible_and_reports_what_it_made() {
    openwork_packager::fetch::ensure_pinned_opencode("linux-x64").expect("the pinned opencode");
    let work = tempfile::tempdir().unwrap();
    let stub = host_bin("openwork-server-v2");
    let pinned = openwork_packager::constants::Constants::built_in()
        .opencode_version()
        .to_owned();
    let release_with = |dist: &str, epoch: &str, extra: &[&str]| {
        let dist = work.path().join(dist);
        let output = Command::new(host_bin("openwork-packager"))
            .args([
                "release",
                "--target",
                "linux-x64",
                "--fast",
                "--offline",
                "--json",
            ])
            .args(extra)
            .arg("--stub")
            .arg(&stub)
            .arg("--dist")
            .arg(&dist)
            .env("SOURCE_DATE_EPOCH", epoch)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let bytes = std::fs::read(dist.join("openwork-server-v2-linux-x64")).unwrap();
        (dist, report, bytes)
    };
    let release = |dist: &str, epoch: &str| release_with(dist, epoch, &[]);
    let (dist, report, first) = release("a", "1700000000");
    let (_, _, second) = release("b", "1700000000");
    assert!(first == second, "two releases of the same inputs differ");
    let (_, _, other) = release("c", "1600000000");
    assert!(first != other, "SOURCE_DATE_EPOCH has no effect");

    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&first));
    assert_eq!(report["sha256"], sha);
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    assert_eq!(sums, format!("{sha}  openwork-server-v2-linux-x64\n"));
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(dist.join("openwork-server-v2-linux-x64.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk["sha256"], sha);
    assert_eq!(report["versions"]["opencode"], pinned.as_str());
    assert_eq!(
        report["versions"]["server"],
        openwork_payload::SERVER_VERSION
    );
    assert!(report["versions"].get("router").is_none(), "{report}");
    assert_eq!(report["sourceDateEpoch"], 1700000000);
    let inputs = report["inputs"].as_array().unwrap();
    let names: Vec<&str> = inputs.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["opencode", "stub"],
        "the default release carries opencode alone"
    );
    assert!(
        inputs[0]["source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("npm:opencode-linux-x64@{pinned}"))
    );
    assert!(
        inputs[0]["integrity"]
            .as_str()
            .unwrap()
            .starts_with("sha512-")
    );
    let stages: Vec<&str> = report["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["fetch-opencode", "stub", "pack"]);
    let inspect = |artifact: &Path| -> Value {
        let output = packager(&["inspect", "--json", artifact.to_str().unwrap()]);
        assert!(output.status.success(), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let inspected = inspect(&dist.join("openwork-server-v2-linux-x64"));
    assert_eq!(inspected["verified"], true);
    let manifest = &inspected["manifest"];
    let files: Vec<&String> = manifest["files"].as_object().unwrap().keys().collect();
    assert_eq!(files, ["opencode"]);
    assert!(manifest.get("routerVersion").is_none(), "{manifest}");
    // One server version: the manifest's is the one the stub reports.
    assert_eq!(manifest["serverVersion"], openwork_payload::SERVER_VERSION);
    let reported = Command::new(&stub).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&reported.stdout).contains(openwork_payload::SERVER_VERSION),
        "{}",
        describe(&reported)
    );

    // With a router named: both sidecars, and it serves: real opencode and the router
    // built from the fixture source with the pinned Bun, both healthy under the supervisor.
    let fixture = openwork_packager::paths::workspace_root().join("fixtures/opencode-router");
    let (dist, report, _) = release_with(
        "with-router",
        "1700000000",
        &["--router-source", fixture.to_str().unwrap()],
    );
    assert_eq!(report["versions"]["router"], "0.1.0");
    let artifact = dist.join("openwork-server-v2-linux-x64");
    let inspected = inspect(&artifact);
    assert_eq!(inspected["manifest"]["routerVersion"], "0.1.0");
    assert!(inspected["manifest"]["files"]["opencode-router"].is_object());
    let mut server =
        openwork_tests::server::ServerBuilder::executable(&artifact, &work.path().join("run"))
            .isolated_home()
            .arg("--router")
            .start();
    let router = server.wait_state(
        "opencode-router",
        "running",
        std::time::Duration::from_secs(30),
    );
    assert!(
        router["executable"]
            .as_str()
            .unwrap()
            .contains("opencode-router")
    );
    assert_eq!(server.get_json("/opencode/global/health")["healthy"], true);
    server.signal(libc::SIGTERM);
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(15))
            .success()
    );
}

/// `stage` then `openwork-server-v2 --bundle-dir`: the dev loop runs the staged real
/// opencode and router under the same supervisor; a second `stage` finds nothing to do.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_staged_runtime_runs_with_bundle_dir() {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let fixture = openwork_packager::paths::workspace_root().join("fixtures/opencode-router");
    let stage = || {
        let output = Command::new(host_bin("openwork-packager"))
            .args(["stage", "--json", "--router-source"])
            .arg(&fixture)
            .arg("--dir")
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let first = stage();
    assert_eq!(first["unchanged"], false);
    assert!(first["manifest"]["files"]["opencode-router"].is_object());
    let second = stage();
    assert_eq!(second["unchanged"], true, "{second}");
    let builder = openwork_tests::server::ServerBuilder::executable(
        &host_bin("openwork-server-v2"),
        &work.path().join("run"),
    )
    .isolated_home()
    .arg("--bundle-dir")
    .arg(&bundle)
    .arg("--router");
    let mut server = builder.start();
    assert_eq!(
        server.get_json("/system/runtime")["payload"]["source"],
        "bundle-flag"
    );
    server.wait_state(
        "opencode-router",
        "running",
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        server.get_json("/opencode/global/health")["version"],
        openwork_packager::constants::Constants::built_in().opencode_version()
    );
    server.signal(libc::SIGTERM);
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(15))
            .success()
    );
}
