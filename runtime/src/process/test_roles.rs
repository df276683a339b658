//! For the tests that start processes from their own test binary, each playing a role (a
//! server, a sidecar, a lifeline): the binary re-run with a filter that selects one test,
//! which reads its role from an environment variable and does nothing without one.

use std::process::Command;

/// A command running only the test `name` of `module` (its `module_path!()`), in this test
/// binary, with `var` set to `role`.
pub(crate) fn this_test_binary(module: &str, name: &str, var: &str, role: &str) -> Command {
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args([&format!("{module}::{name}"), "--exact", "--nocapture"])
        .env(var, role);
    cmd
}
