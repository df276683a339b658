//! The command lines of the three binaries: their `--help` (and every subcommand's) under
//! snapshot, so that a change to a flag, a default or a description shows in review; and the
//! server's environment variables parsed as strictly as its flags.
//!
//! Snapshots are in `tests/tests/snapshots/`; after an intended change, review and accept
//! them with `INSTA_UPDATE=always cargo test -p openwork-tests --test cli` (or
//! `cargo insta review`). Under `CI=true` a difference fails.

use std::path::Path;
use std::process::{Command, Output};

use openwork_runtime::env_vars;
use openwork_tests::host_bin;

/// `bin args…` with none of the server's variables set (help shows their values) and a
/// fixed terminal width.
fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin);
    command.args(args).env("COLUMNS", "100");
    for name in env_vars::ALL {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Snapshots `--help` of `bin` and of each of its subcommands, depth first.
fn snapshot_help(bin_name: &str) {
    let bin = host_bin(bin_name);
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(words) = pending.pop() {
        let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
        args.push("--help");
        let output = run(&bin, &args, &[]);
        assert!(
            output.status.success(),
            "{bin_name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        let help = String::from_utf8(output.stdout).unwrap();
        let name = std::iter::once(bin_name.to_string())
            .chain(words.iter().cloned())
            .collect::<Vec<_>>()
            .join("_");
        insta::assert_snapshot!(format!("help__{name}"), help);
        seen += 1;
        for sub in subcommands(&help).into_iter().rev() {
            let mut next = words.clone();
            next.push(sub);
            pending.push(next);
        }
    }
    assert!(
        seen > 1,
        "{bin_name} has subcommands; none was found in its help"
    );
}

#[test]
fn server_help() {
    snapshot_help("openwork-server-v2");
}

#[test]
fn packager_help() {
    snapshot_help("openwork-packager");
}

#[test]
fn signer_help() {
    snapshot_help("openwork-signer");
}

/// Runs the server (`runtime path`, which parses everything first) with one variable set.
fn server_with(name: &str, value: &str) -> (i32, String) {
    let data = tempfile::tempdir().unwrap();
    let output = run(
        &host_bin("openwork-server-v2"),
        &["runtime", "path"],
        &[
            (name, value),
            (env_vars::OPENWORK_DATA_DIR, data.path().to_str().unwrap()),
        ],
    );
    (
        output.status.code().expect("exited"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A bad value in the environment is a usage error (exit 2) that names the variable and
/// says what is expected, never silently replaced by the default.
#[test]
fn a_bad_environment_value_is_a_usage_error_naming_the_variable() {
    let cases = [
        (
            env_vars::OPENWORK_SERVER_V2_LOCK_TIMEOUT,
            "abc",
            "expected a whole number of seconds",
        ),
        (
            env_vars::OPENWORK_LOG,
            "verbose",
            "possible values: error, warn, info, debug, trace",
        ),
        (
            env_vars::OPENWORK_SERVER_V2_PAIRING_TTL_MS,
            "5min",
            "expected a whole number of milliseconds",
        ),
        (
            env_vars::OPENWORK_SERVER_V2_SUPERVISOR,
            "crash_limit",
            "`crash_limit` is not key=value",
        ),
    ];
    for (name, value, expected) in cases {
        let (code, stderr) = server_with(name, value);
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}'")),
            "{name}={value}: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}={value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the value comes from the environment variable {name}"
            )),
            "{name}={value}: {stderr}"
        );
    }
}

/// The same bad value given as a flag is the same usage error, without the tip.
#[test]
fn a_bad_flag_value_is_a_usage_error_naming_the_flag() {
    let output = run(
        &host_bin("openwork-server-v2"),
        &["--lock-timeout", "abc", "runtime", "path"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'abc' for '--lock-timeout <SECS>'"),
        "{stderr}"
    );
    assert!(!stderr.contains("environment variable"), "{stderr}");
}

/// A variable that is set but empty (or blank) counts as unset, as it always has.
#[test]
fn an_empty_environment_value_counts_as_unset() {
    for name in [
        env_vars::OPENWORK_SERVER_V2_LOCK_TIMEOUT,
        env_vars::OPENWORK_LOG,
        env_vars::OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR,
        env_vars::OPENWORK_SERVER_V2_PAIRING_TTL_MS,
    ] {
        for value in ["", "  "] {
            let (code, stderr) = server_with(name, value);
            assert_ne!(code, 2, "{name}={value:?}: {stderr}");
            assert!(!stderr.contains(name), "{name}={value:?}: {stderr}");
        }
    }
}
