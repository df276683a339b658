//! `release` for every target in targets/, each from a real release stub, into one dist
//! directory, and what `inspect` makes of each artifact.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openwork_tests::fixtures::describe;
use openwork_tests::{host_bin, stub_for};
use serde_json::Value;
use sha2::Digest;

/// Where a target's opencode comes from.
enum Opencode {
    /// The pinned version from the npm registry, as a real release gets it.
    Pinned,
    /// The real opencode at a version the registry does serve, fetched (integrity-checked)
    /// into this test's own cache and handed to `release` as a file.
    OtherVersion(&'static str),
    /// No opencode of any version for the target, so the router Bun builds for it stands
    /// in: a real executable of the right format and architecture is all packing needs.
    Router,
}

/// The configured registry has only some of opencode's platform packages: the pinned
/// version for linux-x64 alone, other versions for windows-x64 and linux-arm64, and nothing
/// for macOS. A target becomes `Pinned` once the registry serves its pinned package.
const PLAN: [(&str, Opencode); 5] = [
    ("linux-x64", Opencode::Pinned),
    ("linux-arm64", Opencode::OtherVersion("1.18.18")),
    ("darwin-arm64", Opencode::Router),
    ("darwin-x64", Opencode::Router),
    ("windows-x64", Opencode::OtherVersion("1.18.32")),
];

fn packager(args: &[&str]) -> Output {
    Command::new(host_bin("openwork-packager"))
        .args(args)
        .output()
        .unwrap()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Stdout's last line: the path `fetch` and `build-router` print.
fn printed_path(output: &Output) -> PathBuf {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    PathBuf::from(stdout.trim().lines().last().expect("a path on stdout"))
}

/// The stand-in for targets without the pinned package, once it is on disk.
fn stand_in(target: &str, opencode: &Opencode, work: &Path) -> Option<PathBuf> {
    Some(match opencode {
        Opencode::Pinned => return None,
        Opencode::OtherVersion(version) => {
            // Under the packager's cache root, so it is kept as that is, but apart from the
            // entries that releases and the dev loop read.
            let cache = openwork_packager::fetch::default_cache_root().join("release-targets");
            let r = packager(&[
                "fetch",
                "--target",
                target,
                "--version",
                version,
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
            let r = packager(&[
                "build-router",
                "--target",
                target,
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
                let stand_in = stand_in(target, opencode, work);
                let mut release = Command::new(host_bin("openwork-packager"));
                release
                    .args(["release", "--target", target, "--fast", "--json"])
                    .arg("--stub")
                    .arg(&stub)
                    .arg("--dist")
                    .arg(dist);
                if let Some(file) = &stand_in {
                    // No pin in constants.json vouches for a stand-in.
                    release
                        .args(["--source", "file", "--allow-unverified", "--path"])
                        .arg(file);
                }
                let version = match opencode {
                    Opencode::OtherVersion(version) => {
                        release.args(["--opencode-version", version]);
                        version
                    }
                    _ => "1.2.27",
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
    let files = &inspected["manifest"]["files"];
    for sidecar in ["opencode", "opencode-router"] {
        assert_eq!(
            files[sidecar]["path"],
            spec.sidecar_path(sidecar),
            "{target}: {sidecar} in {files:#}"
        );
    }
}
