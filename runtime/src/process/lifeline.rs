//! The lifeline: a watchdog process that stops the sidecars' process groups once the server is
//! gone, however it went.
//!
//! Why a separate process and a pipe: nothing inside a process runs after SIGKILL, but the
//! kernel closes every descriptor of a dead process, so the read end of a pipe from the server
//! sees EOF exactly when the server is gone, with no polling and no pid that could be reused.
//! macOS has no `PR_SET_PDEATHSIG`, and on Linux that signal reaches only the sidecar itself,
//! not the children it started (opencode starts language servers): the lifeline stops whole
//! groups.
//!
//! The lifeline is the server's own executable run as `<exe> __lifeline` ([`LIFELINE_ARG`]),
//! so there is no second binary to ship. It leads its own process group, so the SIGINT a
//! terminal sends to its foreground group on Ctrl-C does not reach it, and it ignores SIGINT,
//! SIGHUP and SIGTERM anyway: it must outlive the server to clean up after it, and it exits on
//! its own right after.
//!
//! Protocol, one command a line on its stdin: `watch <pgid>` and `unwatch <pgid>`. Unknown
//! lines are ignored, so that an older lifeline never fails a newer server.
//!
//! Windows needs no lifeline: the Job Object from [`super::contain_children`] does this job in
//! the kernel, and a lifeline would be in that job too. [`Lifeline::spawn`] returns an inert
//! lifeline there.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{GroupFate, stop_groups};

/// The hidden first argument that makes the server binary run [`lifeline_main`] instead of
/// parsing its command line.
pub const LIFELINE_ARG: &str = "__lifeline";

/// How long the lifeline lets sidecars exit after SIGTERM before it sends SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// The server's end of the lifeline. Dropping it closes the pipe, which makes the lifeline stop
/// every group still watched and exit: unwatch each sidecar once it has been stopped and reaped.
#[derive(Debug)]
pub struct Lifeline {
    /// `None` where no lifeline is needed (Windows).
    inner: Option<Running>,
    /// Whether a failed write was already reported.
    warned: AtomicBool,
}

#[derive(Debug)]
struct Running {
    stdin: ChildStdin,
    child: Child,
}

impl Lifeline {
    /// Starts `<exe> __lifeline`. Call it once, before the first sidecar is spawned.
    ///
    /// Windows: returns an inert lifeline (see the module docs).
    pub fn spawn(exe: &Path) -> io::Result<Lifeline> {
        #[cfg(unix)]
        {
            let mut cmd = std::process::Command::new(exe);
            cmd.arg(LIFELINE_ARG);
            if let Ok(current) = std::env::current_exe() {
                // Shows up in `ps` under the server's name even when `exe` is /proc/self/exe.
                std::os::unix::process::CommandExt::arg0(&mut cmd, current);
            }
            Self::spawn_command(cmd)
        }
        #[cfg(not(unix))]
        {
            let _ = exe;
            Ok(Lifeline {
                inner: None,
                warned: AtomicBool::new(false),
            })
        }
    }

    /// [`Lifeline::spawn`] with the running server's own executable. On Linux that is
    /// `/proc/self/exe`, which still works after an upgrade replaced or removed the file the
    /// server was started from.
    pub fn spawn_self() -> io::Result<Lifeline> {
        #[cfg(target_os = "linux")]
        let exe = std::path::PathBuf::from("/proc/self/exe");
        #[cfg(not(target_os = "linux"))]
        let exe = std::env::current_exe()?;
        Self::spawn(&exe)
    }

    #[cfg(unix)]
    fn spawn_command(mut cmd: std::process::Command) -> io::Result<Lifeline> {
        use std::os::unix::process::CommandExt;
        // std creates the pipe with O_CLOEXEC on both ends (pipe2 where available, else pipe
        // and FD_CLOEXEC before anything can be spawned on our single runtime thread), so
        // sidecars spawned later do not inherit our write end. If they did, the lifeline
        // would not see EOF while any of them lived. The test
        // `pipe_to_the_lifeline_is_close_on_exec` checks this.
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| {
            io::Error::other("the lifeline was spawned without a pipe to its stdin")
        })?;
        Ok(Lifeline {
            inner: Some(Running { stdin, child }),
            warned: AtomicBool::new(false),
        })
    }

    /// The lifeline's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.as_ref().map(|r| r.child.id())
    }

    /// Tells the lifeline to stop process group `pgid` if the server dies. Best effort: a
    /// failed write is logged once, as a warning.
    pub fn watch(&self, pgid: u32) {
        self.send("watch", pgid);
    }

    /// Tells the lifeline that group `pgid` was stopped by the server, so that a later process
    /// group that gets the same id is never touched.
    pub fn unwatch(&self, pgid: u32) {
        self.send("unwatch", pgid);
    }

    fn send(&self, verb: &str, pgid: u32) {
        let Some(running) = &self.inner else {
            return;
        };
        // One write per line: the lifeline never sees half a command from us, and a line is
        // far below the pipe's buffer, so this does not block the runtime thread.
        let line = format!("{verb} {pgid}\n");
        if let Err(err) = (&running.stdin).write_all(line.as_bytes())
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                lifeline_pid = running.child.id(),
                error = %err,
                "the lifeline is gone: sidecars will not be stopped if this server is killed (they are recorded under run/ and stopped at the next start)"
            );
        }
    }
}

/// What the lifeline did once the server was gone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LifelineOutcome {
    /// Watched groups that exited after SIGTERM, within the grace period.
    pub terminated: Vec<u32>,
    /// Watched groups still present after the grace period, sent SIGKILL.
    pub killed: Vec<u32>,
    /// Watched groups that could not be signalled, with the reason.
    pub failed: Vec<(u32, String)>,
}

impl LifelineOutcome {
    /// Whether nothing had to be done.
    pub fn is_empty(&self) -> bool {
        self.terminated.is_empty() && self.killed.is_empty() && self.failed.is_empty()
    }
}

impl fmt::Display for LifelineOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process groups stopped: {:?}; killed after {GRACE:?}: {:?}",
            self.terminated, self.killed
        )?;
        for (pgid, reason) in &self.failed {
            write!(f, "; could not signal {pgid}: {reason}")?;
        }
        Ok(())
    }
}

/// The `__lifeline` entry point: route [`LIFELINE_ARG`] here before parsing the command line.
pub fn lifeline_main() -> std::process::ExitCode {
    ignore_stop_signals();
    let outcome = run_lifeline(io::stdin().lock(), GRACE);
    if !outcome.is_empty() {
        // Not eprintln!: it panics when stderr is gone, and the server's stderr may be a pipe
        // whose reader went away with it.
        let _ = writeln!(
            io::stderr(),
            "openwork-server-v2 lifeline: the server is gone; {outcome}"
        );
    }
    std::process::ExitCode::SUCCESS
}

/// The lifeline's core: applies `watch`/`unwatch` lines from `input` until EOF (or a read
/// error, which is as final), then sends SIGTERM to every group still watched, waits up to
/// `grace` for them to go, and sends SIGKILL to what remains.
pub fn run_lifeline(mut input: impl BufRead, grace: Duration) -> LifelineOutcome {
    let mut watched = BTreeSet::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => match parse_command(&line) {
                Some(Command::Watch(pgid)) => {
                    watched.insert(pgid);
                }
                Some(Command::Unwatch(pgid)) => {
                    watched.remove(&pgid);
                }
                None => {}
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }

    let pgids: Vec<u32> = watched.into_iter().collect();
    let mut outcome = LifelineOutcome::default();
    for (pgid, fate) in stop_groups(&pgids, grace) {
        match fate {
            GroupFate::AlreadyGone => {}
            GroupFate::Stopped => outcome.terminated.push(pgid),
            GroupFate::Killed => outcome.killed.push(pgid),
            GroupFate::Failed(e) => outcome.failed.push((pgid, e.to_string())),
        }
    }
    outcome
}

enum Command {
    Watch(u32),
    Unwatch(u32),
}

fn parse_command(line: &[u8]) -> Option<Command> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let (verb, arg) = line.split_once(' ')?;
    // 0 and 1 as groups would mean "our own group" and "everyone".
    let pgid = arg.trim().parse::<u32>().ok().filter(|&p| p > 1)?;
    match verb {
        "watch" => Some(Command::Watch(pgid)),
        "unwatch" => Some(Command::Unwatch(pgid)),
        _ => None,
    }
}

fn ignore_stop_signals() {
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM] {
        // SAFETY: installing SIG_IGN runs no code of ours in a signal handler.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    #[cfg(windows)]
    // SAFETY: a null handler with TRUE makes this process ignore Ctrl-C; nothing else changes.
    unsafe {
        windows_sys::Win32::System::Console::SetConsoleCtrlHandler(None, 1);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{BufRead, BufReader, Cursor, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::super::test_support::{read_line, reap, spawn_group_sh, wait_until};
    use super::super::{force_kill, group_alive, is_alive, sidecar_command};
    use super::*;

    #[test]
    fn stops_watched_groups_on_eof_and_spares_unwatched_ones() {
        let watched = spawn_group_sh("exec sleep 1000");
        let unwatched = spawn_group_sh("exec sleep 1000");
        let (watched_pid, unwatched_pid) = (watched.id(), unwatched.id());
        let watched_exit = reap(watched);
        let unwatched_exit = reap(unwatched);

        let (reader, mut writer) = std::io::pipe().unwrap();
        let lifeline = std::thread::spawn(move || {
            run_lifeline(BufReader::new(reader), Duration::from_secs(2))
        });
        write!(
            writer,
            "watch {watched_pid}\nwatch {unwatched_pid}\nnonsense\nwatch 1\nunwatch {unwatched_pid}\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            is_alive(watched_pid),
            "the lifeline acted before its input ended"
        );

        drop(writer);
        let outcome = lifeline.join().unwrap();
        let still_alive = is_alive(unwatched_pid);
        force_kill(unwatched_pid).unwrap();
        unwatched_exit.join().unwrap();

        assert_eq!(
            outcome,
            LifelineOutcome {
                terminated: vec![watched_pid],
                ..Default::default()
            }
        );
        assert_eq!(watched_exit.join().unwrap().signal(), Some(libc::SIGTERM));
        assert!(still_alive, "an unwatched group was stopped");
    }

    #[test]
    fn escalates_to_sigkill_when_term_is_ignored() {
        let mut child = spawn_group_sh("trap '' TERM; echo ready; exec sleep 1000");
        assert_eq!(
            read_line(&mut BufReader::new(child.stdout.take().unwrap())),
            "ready"
        );
        let pid = child.id();
        let exit = reap(child);

        let started = Instant::now();
        let outcome = run_lifeline(
            Cursor::new(format!("watch {pid}\n")),
            Duration::from_millis(300),
        );
        let took = started.elapsed();

        assert_eq!(
            outcome,
            LifelineOutcome {
                killed: vec![pid],
                ..Default::default()
            }
        );
        assert_eq!(exit.join().unwrap().signal(), Some(libc::SIGKILL));
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }

    #[test]
    fn pipe_to_the_lifeline_is_close_on_exec() {
        let mut stub = Command::new("/bin/sh");
        stub.args(["-c", "cat >/dev/null"]);
        let mut lifeline = Lifeline::spawn_command(stub).unwrap();
        let running = lifeline.inner.take().unwrap();
        // SAFETY: F_GETFD on a descriptor we own has no side effects.
        let flags = unsafe { libc::fcntl(running.stdin.as_raw_fd(), libc::F_GETFD) };
        drop(running.stdin);
        let mut child = running.child;
        let exited = wait_until(Duration::from_secs(5), || {
            child.try_wait().unwrap().is_some()
        });
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "{flags}");
        assert!(exited, "the lifeline stub did not see EOF");
    }

    /// Set in the processes that the end-to-end test starts from this test binary, to the role
    /// they play: a contract between this test and its own children, not a setting, so it is
    /// read here and not by the CLI.
    const ROLE_VAR: &str = "OPENWORK_PROCESS_TEST_ROLE";

    fn role() -> Option<String> {
        std::env::var(ROLE_VAR).ok()
    }

    /// A command running only the test `name` of this module, in this test binary, as `role`.
    fn this_test_binary(name: &str, role: &str) -> Command {
        super::super::test_roles::this_test_binary(module_path!(), name, ROLE_VAR, role)
    }

    /// In the end-to-end test's lifeline process: the lifeline. Otherwise does nothing.
    #[test]
    fn role_lifeline() {
        if role().as_deref() != Some("lifeline") {
            return;
        }
        ignore_stop_signals();
        run_lifeline(io::stdin().lock(), GRACE);
    }

    /// In the end-to-end test's server process: starts a lifeline and a sidecar with a
    /// grandchild, reports their pids, and waits to be killed. Otherwise does nothing.
    #[test]
    fn role_server() {
        if role().as_deref() != Some("server") {
            return;
        }
        let mut lifeline_cmd = this_test_binary("role_lifeline", "lifeline");
        lifeline_cmd.stderr(Stdio::null());
        let lifeline = Lifeline::spawn_command(lifeline_cmd).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncBufReadExt;
            let mut sidecar = sidecar_command("/bin/sh".as_ref())
                .args(["-c", "sleep 1000 & echo $!; wait"])
                .spawn()
                .unwrap();
            let pid = sidecar.id().unwrap();
            lifeline.watch(pid);
            let mut out = tokio::io::BufReader::new(sidecar.stdout.take().unwrap());
            let mut grandchild = String::new();
            out.read_line(&mut grandchild).await.unwrap();
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "FAKE-SERVER {pid} {}", grandchild.trim()).unwrap();
            stdout.flush().unwrap();
            drop(stdout);
            std::future::pending::<()>().await;
        });
    }

    #[test]
    fn sidecar_and_its_grandchild_die_when_the_server_is_sigkilled() {
        if role().is_some() {
            return;
        }
        let mut server = this_test_binary("role_server", "server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let report = BufReader::new(server.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("FAKE-SERVER ").map(str::to_string));
        let Some(report) = report else {
            let _ = server.kill();
            panic!(
                "the fake server exited without reporting: {:?}",
                server.wait()
            );
        };
        let pids: Vec<u32> = report
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let (sidecar, grandchild) = (pids[0], pids[1]);
        let alive_before = group_alive(sidecar) && is_alive(grandchild);

        server.kill().unwrap();
        server.wait().unwrap();
        let gone = wait_until(Duration::from_secs(10), || {
            !group_alive(sidecar) && !is_alive(grandchild)
        });
        if !gone {
            let _ = force_kill(sidecar);
        }

        assert!(alive_before, "the sidecar was not running under the server");
        assert!(
            gone,
            "sidecar group {sidecar} (grandchild {grandchild}) outlived the SIGKILLed server"
        );
    }
}
