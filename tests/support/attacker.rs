//! Attacks from another local user, done for real. CI runs as root; the attacker runs as
//! `nobody` (uid 65534) through util-linux's `setpriv`, with Debian's `/usr/bin/python3` (a
//! pyenv shim under root's home is not reachable by other users) running a script from a
//! directory it may write.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::fixtures::describe;

/// The attacker's uid and gid.
pub const ATTACKER_ID: u32 = 65534;

/// The Python that every user can run.
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether this test can act as another user: it runs as root and has `setpriv` and a system
/// Python. When not, says why on stderr (the test then has nothing to prove here).
pub fn can_attack() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: attacks from another user need root (CI runs as root)");
        return false;
    }
    for tool in ["/usr/bin/setpriv", PYTHON] {
        if !Path::new(tool).exists() {
            eprintln!("skipped: {tool} is missing");
            return false;
        }
    }
    true
}

/// A directory under `parent` that the attacker may read and write (0777), with every
/// directory above it up to `parent` made traversable for it.
pub fn attacker_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("attacker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `program args…` as the attacker: another uid and gid, no supplementary groups.
pub fn as_attacker(program: &str) -> Command {
    let mut command = Command::new("/usr/bin/setpriv");
    command.args([
        format!("--reuid={ATTACKER_ID}"),
        format!("--regid={ATTACKER_ID}"),
        "--clear-groups".to_string(),
        "--".to_string(),
        program.to_string(),
    ]);
    command
}

/// Runs `script` with `sh -eu` as the attacker; panics if it fails.
pub fn run_shell(script: &str) {
    let output = as_attacker("/bin/sh")
        .args(["-euc", script])
        .output()
        .expect("run the attacker's script");
    assert!(
        output.status.success(),
        "the attacker's script failed: {}\n{script}",
        describe(&output)
    );
}

/// An attacker process, killed when dropped (only root's kill reaches it).
pub struct Attacker(Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `script` (Python) as the attacker, from `dir` (see [`attacker_dir`]), with `args`.
pub fn spawn_python(dir: &Path, name: &str, script: &str, args: &[String]) -> Attacker {
    spawn_script(as_attacker(PYTHON), dir, name, script, args)
}

/// Starts `script` with `launcher` (a Python, run as someone: [`as_attacker`], or a LAN
/// peer's `ip netns exec … python3`), from `dir`, with `args`; its stderr goes to
/// `<dir>/<name>.stderr`.
pub fn spawn_script(
    mut launcher: Command,
    dir: &Path,
    name: &str,
    script: &str,
    args: &[String],
) -> Attacker {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = launcher
        .arg(&path)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
        .spawn()
        .expect("start the attacker");
    Attacker(child)
}
