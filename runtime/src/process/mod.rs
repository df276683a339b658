//! Spawning sidecars so that none outlives the server, on every platform, even when the server
//! is killed with SIGKILL and gets no chance to clean up.
//!
//! No single mechanism covers every way a server dies, so they are layered:
//!
//! | mechanism | platform | what it catches |
//! |---|---|---|
//! | a process group per sidecar ([`sidecar_command`]) | unix | a stop reaches the sidecar's own children (opencode starts language servers) |
//! | `PR_SET_PDEATHSIG(SIGKILL)` ([`sidecar_command`]) | Linux | the sidecar itself, by the kernel, however the server dies; not its children |
//! | the [`Lifeline`] watchdog | unix | whole process groups, however the server dies (macOS has no pdeathsig at all) |
//! | a Job Object with KILL_ON_JOB_CLOSE ([`contain_children`]) | Windows | every descendant, by the kernel |
//! | [`RunRecord`] and [`sweep_leftovers`] | all (kills on Linux and macOS) | whatever survived even the lifeline (killed along with the server), at the next start |
//!
//! Why the server puts *itself* into the Job Object rather than each child: a child assigned
//! after it was created could start its own children before the assignment (the usual fix,
//! creating it suspended and resuming its thread, needs the thread handle, which neither std
//! nor tokio expose). Children of a process in a job are in the job from their first
//! instruction.
//!
//! The intended order of calls in the server:
//!
//! 1. [`contain_children`] first thing (Windows; a no-op elsewhere);
//! 2. [`sweep_leftovers`] on the data dir's `run/`, before the runtime is prepared (its
//!    garbage collection must not remove a runtime a leftover still runs from; GC sweeps
//!    first on its own too), then [`RunRecord::create`];
//! 3. [`Lifeline::spawn_self`];
//! 4. per sidecar, *on the long-lived runtime thread*: [`sidecar_command`], spawn,
//!    [`RunRecord::add`], [`Lifeline::watch`];
//! 5. to stop one: [`request_stop`], a bounded wait, [`force_kill`], reap it, then
//!    [`Lifeline::unwatch`] and [`RunRecord::remove`].

mod leftovers;
mod lifeline;
#[cfg(test)]
mod test_roles;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
use windows as sys;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use leftovers::{Leftover, LeftoverFate, RunRecord, sweep_leftovers};
pub use lifeline::{LIFELINE_ARG, Lifeline, LifelineOutcome, lifeline_main, run_lifeline};

/// How often a stop in progress looks whether its groups are gone.
const POLL: Duration = Duration::from_millis(25);

/// A tokio `Command` for a sidecar, configured so that it cannot outlive the server.
///
/// - unix: the child leads its own process group (`process_group(0)`), so that
///   [`request_stop`] and [`force_kill`] reach its children too, and a Ctrl-C meant for the
///   server's terminal group does not hit it before the supervisor decides to stop it.
/// - Linux: `PR_SET_PDEATHSIG(SIGKILL)` in `pre_exec`, then `getppid()` is compared with the
///   server's pid taken before the fork: if the server died in between, the spawn fails
///   instead of leaving an orphan. The kernel sends that signal when the *thread* that forked
///   exits, not the process: **spawn only from the long-lived runtime thread** (the
///   current-thread tokio runtime's), never from `spawn_blocking` or a short-lived thread.
/// - Windows: `CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP`; containment comes from
///   [`contain_children`].
///
/// stdin is null, stdout and stderr are piped, and `kill_on_drop` is off: the supervisor
/// stops its children explicitly, through the group.
pub fn sidecar_command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    sys::contain_command(&mut cmd);
    cmd
}

/// Asks a sidecar to stop: SIGTERM to its whole process group (`-pid`).
///
/// Windows: `TerminateProcess`, which is not graceful. A console control event would need a
/// console shared with the sidecar, and sidecars are created without one
/// (`CREATE_NO_WINDOW`); opencode keeps no state that a hard stop loses.
///
/// A group that no longer exists is not an error. Refuses pids 0 and 1 and the caller's own
/// group, which as signal targets would mean "us" or "everyone".
pub fn request_stop(pid: u32) -> io::Result<()> {
    sys::request_stop(pid)
}

/// Kills a sidecar's whole process group with SIGKILL (Windows: `TerminateProcess`). A group
/// that no longer exists is not an error.
pub fn force_kill(pid: u32) -> io::Result<()> {
    sys::force_kill(pid)
}

/// Windows: puts the server itself into a Job Object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`.
/// Every process it starts afterwards inherits the job, and when the server dies in any way
/// the kernel closes the job's last handle and kills them all. The handle is deliberately kept
/// open for the life of the process. Nested jobs need Windows 8 or later (if the server already
/// runs in a job on an older system, this fails and the caller should log it). Anything the
/// server starts, not only sidecars, dies with it. Calling it again does nothing.
///
/// Unix: nothing to do (`Ok(())`); see [`Lifeline`].
pub fn contain_children() -> io::Result<()> {
    sys::contain_children()
}

/// Raises this process's soft limit on open files to its hard limit (macOS: at most
/// `OPEN_MAX`, which is what its kernel accepts) and returns the limit now in force; `None`
/// where there is no such limit (Windows). Sidecars inherit the raised limit.
pub fn raise_open_file_limit() -> Option<u64> {
    sys::raise_open_file_limit()
}

/// Whether a process with this pid exists. On Linux a zombie (exited, not yet reaped) counts as
/// gone; elsewhere it counts as alive until its parent reaps it.
pub fn is_alive(pid: u32) -> bool {
    sys::is_alive(pid)
}

/// Whether any process of the group `pgid` still runs (Windows: whether the process runs).
fn group_alive(pgid: u32) -> bool {
    sys::group_alive(pgid)
}

/// The executable a running process was started from, where the platform can tell
/// (Linux, macOS); `None` elsewhere or when the process is gone.
fn executable_of(pid: u32) -> Option<PathBuf> {
    sys::executable_of(pid)
}

/// An opaque, platform-specific start time of a process, which together with its pid tells it
/// apart from a later process that got the same pid (Linux, macOS); `None` elsewhere.
fn start_time_of(pid: u32) -> Option<u64> {
    sys::start_time_of(pid)
}

/// What became of one process group that [`stop_groups`] was asked to stop.
#[derive(Debug)]
enum GroupFate {
    /// It was gone before anything was sent.
    AlreadyGone,
    /// It went away within the grace period after SIGTERM.
    Stopped,
    /// It was still there after the grace period and got SIGKILL.
    Killed,
    /// A signal could not be sent (for instance, it belongs to another user).
    Failed(io::Error),
}

/// SIGTERM to every group at once, one shared grace period, then SIGKILL to what remains.
fn stop_groups(pgids: &[u32], grace: Duration) -> Vec<(u32, GroupFate)> {
    let mut fates: Vec<(u32, Option<GroupFate>)> = pgids
        .iter()
        .map(|&pgid| {
            if !group_alive(pgid) {
                return (pgid, Some(GroupFate::AlreadyGone));
            }
            match request_stop(pgid) {
                Ok(()) => (pgid, None),
                Err(e) => (pgid, Some(GroupFate::Failed(e))),
            }
        })
        .collect();

    let deadline = Instant::now() + grace;
    loop {
        for (pgid, fate) in &mut fates {
            if fate.is_none() && !group_alive(*pgid) {
                *fate = Some(GroupFate::Stopped);
            }
        }
        if fates.iter().all(|(_, f)| f.is_some()) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }

    fates
        .into_iter()
        .map(|(pgid, fate)| {
            let fate = fate.unwrap_or_else(|| match force_kill(pgid) {
                Ok(()) => GroupFate::Killed,
                Err(e) => GroupFate::Failed(e),
            });
            (pgid, fate)
        })
        .collect()
}

/// Test helpers shared by the submodules' tests.
#[cfg(all(test, unix))]
mod test_support {
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// `sleep` from `PATH`, resolved, as the kernel will report it as a process's executable.
    pub fn sleep_exe() -> PathBuf {
        let path = std::env::var_os("PATH").expect("PATH");
        std::env::split_paths(&path)
            .map(|dir| dir.join("sleep"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .expect("sleep in PATH")
    }

    /// A `/bin/sh -c script` child leading its own process group, with stdout piped.
    pub fn spawn_group_sh(script: &str) -> Child {
        use std::os::unix::process::CommandExt;
        Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn /bin/sh")
    }

    /// Reads one line (without its newline) from a child's stdout.
    pub fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read child stdout");
        line.trim_end().to_string()
    }

    /// Reaps `child` on a thread, so that it does not linger as a zombie (which still counts as
    /// a live group member) and its exit status can be examined.
    pub fn reap(mut child: Child) -> JoinHandle<ExitStatus> {
        std::thread::spawn(move || child.wait().expect("wait"))
    }

    /// Waits until `cond` holds, at most `timeout`.
    pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
