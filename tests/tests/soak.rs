//! A short soak in the suite: `openwork-bench soak` for 40 s on a packed server with the
//! real pinned opencode, killed with SIGKILL every 10-13 s under 100 requests a second.
//! The benchmark judges its rows (nothing lost outside a restart window, nothing hung, every
//! kill seen in /system/events, streams ended, no descriptor, process or memory growth,
//! nothing left after SIGTERM); this test fails on any row that missed, so those properties
//! are checked on every CI run and not only in the 10-minute run that docs/BENCHMARKS.md
//! reports.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::process::Command;

use openwork_tests::fixtures::pack_host_with_pinned_opencode;
use serde_json::Value;

#[test]
fn a_short_soak_loses_hangs_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = pack_host_with_pinned_opencode(dir.path());
    let json = dir.path().join("soak.json");
    let output = Command::new(env!("CARGO_BIN_EXE_openwork-bench"))
        .args(["soak", "--duration", "40", "--warm-up", "5"])
        // Three or four kills; never 5 within the crash-loop window.
        .args(["--kill-gap", "10..13", "--seed", "20261121"])
        .arg("--artifact")
        .arg(&artifact)
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{table}\n{log}");

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let missed: Vec<&Value> = rows.iter().filter(|r| r["verdict"] == "missed").collect();
    assert!(missed.is_empty(), "missed targets:\n{table}\n{log}");
    let judged = rows.iter().filter(|r| r["verdict"] == "pass").count();
    assert!(judged >= 9, "fewer judged rows than expected:\n{table}");

    // The soak did what it says: kills happened, each in a window where the proxy refused
    // requests clearly, and the load was real.
    let value = |figure: &str| {
        rows.iter()
            .find(|r| r["figure"] == figure)
            .and_then(|r| r["value"]["amount"].as_f64())
            .unwrap_or_else(|| panic!("no row {figure:?}:\n{table}"))
    };
    assert!(value("opencode SIGKILLed") >= 3.0, "{table}");
    assert!(
        value("requests in restart windows answered 502/503/504 JSON") > 0.0,
        "{table}"
    );
    assert!(value("requests through /opencode/*") > 3000.0, "{table}");
}
