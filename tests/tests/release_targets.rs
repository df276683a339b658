//! `release` for every target in targets/, each from a real release stub, into one dist
//! directory, and what `inspect` makes of each artifact.

use std::path::Path;
use std::process::{Command, Output};

use openwork_tests::fixtures::describe;
use openwork_tests::release::{Opencode, PLAN, opencode_args, packager, router_fixture, stand_in};
use openwork_tests::{host_bin, stub_for};
use serde_json::Value;
use sha2::Digest;

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn release_for_every_target_gives_an_artifact_inspect_verifies() {
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    // All five release into one dist at once: `release` locks SHA256SUMS while it edits it,
    // so every line must survive.
    std::thread::scope(|scope| {
        for (target, opencode) in &PLAN {
            let (dist, work) = (&dist, work.path());
            scope.spawn(move || {
                let stub = stub_for(target);
                let stand_in = stand_in(target, *opencode, work);
                let mut release = Command::new(host_bin("openwork-packager"));
                release
                    .args(["release", "--target", target, "--fast", "--json"])
                    .arg("--stub")
                    .arg(&stub)
                    .arg("--dist")
                    .arg(dist);
                release.args(opencode_args(target, stand_in.as_deref()));
                // The router stand-in too, so that every target's release builds one.
                release.arg("--router-source").arg(router_fixture());
                let pinned = openwork_packager::constants::Constants::built_in();
                let version = match opencode {
                    Opencode::OtherVersion(version) => version,
                    _ => pinned.opencode_version(),
                };
                let output = release.output().unwrap();
                assert!(
                    output.status.success(),
                    "release {target}: {}",
                    describe(&output)
                );
                check_release(target, stand_in.as_deref(), &stub, dist, &output);
                let report: Value = serde_json::from_slice(&output.stdout).unwrap();
                assert_eq!(report["versions"]["opencode"], version, "{target}");
            });
        }
    });

    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), PLAN.len(), "SHA256SUMS:\n{sums}");
    for (target, _) in &PLAN {
        let name = openwork_payload::targets::by_name(target)
            .unwrap()
            .artifact_name();
        let expected = format!("{}  {name}", sha256_of(&dist.join(&name)));
        assert!(
            lines.contains(&expected.as_str()),
            "{expected} not in:\n{sums}"
        );
    }
}

/// The report names each input with its source and hash, and `inspect` verifies the
/// artifact as one for `target` with both sidecars.
fn check_release(target: &str, stand_in: Option<&Path>, stub: &Path, dist: &Path, output: &Output) {
    let spec = openwork_payload::targets::by_name(target).unwrap();
    let artifact = dist.join(spec.artifact_name());
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report: Value = serde_json::from_slice(
        &std::fs::read(dist.join(format!("{}.report.json", spec.artifact_name()))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report, printed,
        "{target}: the printed and the written report differ"
    );
    assert_eq!(report["target"], *target);
    assert_eq!(report["sha256"], sha256_of(&artifact), "{target}");

    let inputs = report["inputs"].as_array().unwrap();
    let input = |name: &str| {
        inputs
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{target}: no input {name} in {report:#}"))
    };
    assert_eq!(inputs.len(), 3, "{target}: {report:#}");
    let opencode_source = input("opencode")["source"].as_str().unwrap();
    match stand_in {
        None => {
            let constants = openwork_packager::constants::Constants::built_in();
            let package = format!(
                "npm:{}@{}",
                spec.opencode.npm_package,
                constants.opencode_version()
            );
            assert!(
                opencode_source.starts_with(&package),
                "{target}: {opencode_source}"
            );
            let integrity = input("opencode")["integrity"].as_str().unwrap();
            assert!(integrity.starts_with("sha512-"), "{target}: {integrity}");
        }
        Some(path) => {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(opencode_source, format!("file:{name}"), "{target}");
            assert_eq!(input("opencode")["sha256"], sha256_of(path), "{target}");
        }
    }
    let router_source = input("opencode-router")["source"].as_str().unwrap();
    assert!(
        router_source.starts_with("build:"),
        "{target}: {router_source}"
    );
    assert_eq!(input("stub")["sha256"], sha256_of(stub), "{target}");

    let r = packager(&["inspect", "--json", artifact.to_str().unwrap()]);
    assert!(r.status.success(), "inspect {target}: {}", describe(&r));
    let inspected: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(inspected["verified"], true, "{target}: {inspected:#}");
    assert_eq!(inspected["target"], *target);
    assert_eq!(
        inspected["format"],
        serde_json::to_value(spec.format).unwrap()
    );
    assert_eq!(inspected["arch"], serde_json::to_value(spec.arch).unwrap());
    // Windows artifacts, x64 and Arm64 alike, say what they are in file properties
    // (runtime/build.rs; tests/tests/pe.rs checks the rest of the resource).
    if spec.format == openwork_payload::container::ExecutableFormat::Pe {
        let data = std::fs::read(&artifact).unwrap();
        let pe = goblin::pe::PE::parse(&data).unwrap();
        let version = pe
            .resource_data
            .as_ref()
            .and_then(|r| r.version_info.as_ref())
            .and_then(|v| v.string_info.product_version());
        assert_eq!(
            version.as_deref(),
            Some(openwork_payload::SERVER_VERSION),
            "{target}: VERSIONINFO"
        );
    }
    let files = &inspected["manifest"]["files"];
    for sidecar in ["opencode", "opencode-router"] {
        assert_eq!(
            files[sidecar]["path"],
            spec.sidecar_path(sidecar),
            "{target}: {sidecar} in {files:#}"
        );
    }
}

/// linux-x64-musl, end to end on this glibc machine. Its stub is static, so the artifact
/// runs on any x64 Linux: released with the pinned musl opencode it extracts and verifies
/// that here. musl opencode itself cannot start here (it needs a musl libstdc++ and a musl
/// newer than Debian 12's: Alpine's userland), so the serving half packs the glibc opencode
/// into the same static stub and talks to it through the server.
#[test]
fn the_static_musl_server_extracts_and_serves_here() {
    let work = tempfile::tempdir().unwrap();
    let stub = stub_for("linux-x64-musl");
    let elf_bytes = std::fs::read(&stub).unwrap();
    let elf = goblin::elf::Elf::parse(&elf_bytes).unwrap();
    assert_eq!(elf.interpreter, None, "the musl stub is static");
    assert!(elf.libraries.is_empty(), "{:?}", elf.libraries);

    let release = |dist: &Path, opencode: &[String]| {
        let output = Command::new(host_bin("openwork-packager"))
            .args(["release", "--target", "linux-x64-musl", "--fast", "--json"])
            .arg("--stub")
            .arg(&stub)
            .arg("--dist")
            .arg(dist)
            .args(opencode)
            .output()
            .unwrap();
        assert!(output.status.success(), "release: {}", describe(&output));
        dist.join("openwork-server-v2-linux-x64-musl")
    };

    // The real release: musl opencode, pinned and locked.
    let artifact = release(&work.path().join("dist"), &[]);
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out =
        openwork_tests::fixtures::run_packed(&artifact, &data, &["runtime", "extract", "--json"]);
    assert!(out.status.success(), "runtime extract: {}", describe(&out));
    let extracted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let opencode = Path::new(extracted["runtimeDir"].as_str().unwrap()).join("bin/opencode");
    let lock = openwork_packager::lock::InputsLock::built_in();
    assert_eq!(
        sha256_of(&opencode),
        lock.opencode.targets["linux-x64-musl"].sha256,
        "the extracted opencode is the locked musl build"
    );
    let out = openwork_tests::fixtures::run_packed(&artifact, &data, &["runtime", "verify"]);
    assert!(out.status.success(), "runtime verify: {}", describe(&out));

    // Serving: the same static stub with the glibc opencode, which runs here. The lock pins
    // the musl build at this version, so the glibc one goes in under a version of its own.
    let glibc = openwork_packager::fetch::ensure_pinned_opencode("linux-x64").unwrap();
    let version = format!(
        "{}+glibc",
        openwork_packager::constants::Constants::built_in().opencode_version()
    );
    let args: Vec<String> = [
        "--source",
        "file",
        "--allow-unpinned",
        "--opencode-version",
        &version,
        "--path",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([glibc.display().to_string()])
    .collect();
    let artifact = release(&work.path().join("dist-serve"), &args);
    let server =
        openwork_tests::server::ServerBuilder::executable(&artifact, &work.path().join("serve"))
            .isolated_home()
            .start();
    let health = server.get_json("/opencode/global/health");
    assert_eq!(health["healthy"], true, "{health}");
    let runtime = server.get_json("/system/runtime");
    assert_eq!(
        runtime["manifest"]["target"], "linux-x64-musl",
        "{runtime:#}"
    );
}
