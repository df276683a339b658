//! The processes a benchmark starts, watched through /proc: spawning one that dies with the
//! benchmark, reading its stdout lines, its tree, its memory and descriptors, stopping it,
//! and making sure nothing it started outlives it. Shared by the serve benchmark and the
//! soak. Linux only.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Give up on a start after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Give up on a stop after this long (then the guard SIGKILLs).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long processes of a stopped server may take to go away before they count as left
/// behind (our lifeline notices the server's exit through a pipe, not instantly).
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// A command for `exe` with an isolated environment: `home` as HOME with XDG directories
/// inside it (made here), `workspace` as the working directory, none of the caller's
/// OPENWORK_* or OPENCODE_* settings, stdin closed and stdout piped; it dies with this
/// process. opencode then neither reads nor writes the user's files.
pub(crate) fn isolated_command(
    exe: &Path,
    home: &Path,
    workspace: &Path,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(exe);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("OPENWORK_") || name.starts_with("OPENCODE_") {
            cmd.env_remove(&key);
        }
    }
    for (var, dir) in openwork_tests::isolated_home_env(home) {
        cmd.env(var, mkdir(&dir)?);
    }
    cmd.current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    die_with_this_process(&mut cmd);
    Ok(cmd)
}

/// If the benchmark dies (Ctrl-C, a panic in a thread that aborts), the contender dies with
/// it: the guards' Drop does not run then. Linux only (`PR_SET_PDEATHSIG`); the contender
/// stays in the benchmark's process group, so a terminal's Ctrl-C reaches it anyway.
pub(crate) fn die_with_this_process(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the benchmark exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A started process, with every process seen in its tree. Dropping it SIGKILLs all of
/// them that are still running, whatever path the benchmark took.
pub(crate) struct Running {
    child: Child,
    /// When it was spawned.
    pub(crate) spawned: Instant,
    /// Its stdout, line by line, each with when it was read.
    pub(crate) lines: mpsc::Receiver<(Instant, String)>,
    stderr: PathBuf,
    /// Processes seen in the tree, each with its start time so that a pid the system has
    /// since reused is never signalled.
    seen: Vec<Proc>,
    exited: Option<ExitStatus>,
}

impl Running {
    pub(crate) fn spawn(cmd: &mut Command, stderr: &Path) -> anyhow::Result<Running> {
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", Path::new(cmd.get_program()).display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keeps reading to the end even when nobody listens any more: a full pipe would
        // block the contender's logging.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send((Instant::now(), line.trim_end().to_string()));
                    }
                }
            }
        });
        let mut running = Running {
            seen: Proc::of(child.id()).into_iter().collect(),
            child,
            spawned,
            lines: rx,
            stderr: stderr.to_path_buf(),
            exited: None,
        };
        running.observe();
        Ok(running)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with its stderr if it has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = Some(status);
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let tail: String = stderr
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "exited before it was ready ({}); stderr ends:\n{tail}",
                describe_exit(status)
            );
        }
        if self.spawned.elapsed() > READY_TIMEOUT {
            bail!("not ready within {READY_TIMEOUT:?}");
        }
        Ok(())
    }

    /// The first stdout line that `wanted` accepts, and when it was read.
    pub(crate) fn wait_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Instant, String)> {
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok((at, line)) if wanted(&line) => return Ok((at, line)),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            self.check_alive()?;
        }
    }

    /// The server's ready line (its first stdout line), parsed, with when it was read; an
    /// error if it is not one, or names no port.
    pub(crate) fn wait_ready_line(&mut self) -> anyhow::Result<(Instant, serde_json::Value)> {
        let (at, line) = self.wait_line(|_| true)?;
        let ready: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the ready line is not JSON: {line}"))?;
        if ready["event"] != "ready" || ready["pid"] != self.pid() {
            bail!("unexpected first line on stdout: {line}");
        }
        if !ready["port"].is_u64() {
            bail!("no port in {line}");
        }
        Ok((at, ready))
    }

    /// Adds the tree's current processes to those seen.
    pub(crate) fn observe(&mut self) {
        for proc in self.descendants() {
            if !self.seen.contains(&proc) {
                self.seen.push(proc);
            }
        }
    }

    pub(crate) fn descendants(&self) -> Vec<Proc> {
        descendants(self.pid())
    }

    /// SIGTERM, then waits for the exit; returns how long that took.
    pub(crate) fn terminate(&mut self) -> anyhow::Result<(Duration, ExitStatus)> {
        self.observe();
        let started = Instant::now();
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok((started.elapsed(), status));
            }
            if started.elapsed() > STOP_TIMEOUT {
                bail!("still running {STOP_TIMEOUT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Processes of the tree still running `ORPHAN_GRACE` after the contender exited.
    pub(crate) fn left_behind(&self) -> Vec<String> {
        let root = self.pid();
        let deadline = Instant::now() + ORPHAN_GRACE;
        loop {
            let alive: Vec<&Proc> = self
                .seen
                .iter()
                .filter(|p| p.pid != root && p.alive())
                .collect();
            if alive.is_empty() || Instant::now() > deadline {
                return alive
                    .iter()
                    .map(|p| proc_name(p.pid).unwrap_or_else(|| "?".into()))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.observe();
        }
        for proc in &self.seen {
            proc.kill();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process, identified by pid and start time (in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) start: u64,
}

/// The fields of /proc/<pid>/stat this benchmark uses.
pub(crate) struct Stat {
    pub(crate) state: char,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    pub(crate) start: u64,
    /// User and system time, in clock ticks.
    pub(crate) cpu_ticks: u64,
}

pub(crate) fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// The CPU time (user and system) `pid` has used so far.
pub(crate) fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).ok().filter(|&t| t > 0)?;
    let ticks = read_stat(pid)?.cpu_ticks;
    Some(std::time::Duration::from_nanos(
        ticks * 1_000_000_000 / ticks_per_second,
    ))
}

impl Proc {
    pub(crate) fn of(pid: u32) -> Option<Proc> {
        read_stat(pid).map(|s| Proc {
            pid,
            start: s.start,
        })
    }

    /// Running (not a zombie) and still the same process.
    pub(crate) fn alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.start == self.start && !matches!(s.state, 'Z' | 'X'))
    }

    /// SIGKILLs it and, if it leads one, its process group.
    pub(crate) fn kill(&self) {
        let Some(stat) = read_stat(self.pid).filter(|s| s.start == self.start) else {
            return;
        };
        // SAFETY: kill(2) on a process this benchmark started (checked by start time).
        unsafe {
            if stat.pgrp == self.pid {
                libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL);
            }
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Every process below `root`, from one scan of /proc.
pub(crate) fn descendants(root: u32) -> Vec<Proc> {
    let mut children: HashMap<u32, Vec<Proc>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            children.entry(stat.ppid).or_default().push(Proc {
                pid,
                start: stat.start,
            });
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            out.push(*child);
            queue.push(child.pid);
        }
    }
    out
}

pub(crate) fn proc_name(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// What this crate reads of /proc/<pid>/status.
pub(crate) struct Status {
    /// VmRSS, in bytes.
    pub(crate) rss: u64,
    /// Threads.
    pub(crate) threads: u64,
}

/// /proc/<pid>/status, read once.
pub(crate) fn status(pid: u32) -> anyhow::Result<Status> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Status {
        rss: field("VmRSS")? * 1024,
        threads: field("Threads")?,
    })
}

/// VmRSS of `pid` in bytes.
pub(crate) fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    Ok(status(pid)?.rss)
}

/// After every run's guard has done its work: any process still running one of
/// `executables` (there should be none), SIGKILLed and listed. This catches what
/// a guard never saw, such as a grandchild re-parented between two looks at the tree.
pub(crate) fn check_nothing_left(executables: &[&Path]) -> Vec<String> {
    let exes: Vec<PathBuf> = executables
        .iter()
        .filter_map(|exe| std::fs::canonicalize(exe).ok())
        .collect();
    let mut left = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return left;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let running = read_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'));
        if running && exes.contains(&exe) {
            left.push(format!("{pid} {}", exe.display()));
            if let Some(proc) = Proc::of(pid) {
                proc.kill();
            }
        }
    }
    left
}

/// `exit N` or `signal N`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

pub(crate) fn mkdir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}
