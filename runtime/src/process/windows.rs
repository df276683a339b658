//! Windows side: a Job Object that the kernel closes, killing every sidecar, when the server
//! dies; `TerminateProcess` for stops.
//!
//! Tested twice: the module's own tests (a server killed with `TerminateProcess` takes its
//! sidecar and grandchild with it, and not without the job) run natively in the CI
//! workflow's Windows job and under Wine in `scripts/test`; tests/tests/wine.rs does the same
//! with the packed Windows server and a SIGKILL of its Wine process.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, HANDLE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, GetCurrentProcess, OpenProcess,
    PROCESS_ACCESS_RIGHTS, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
    PROCESS_TERMINATE, TerminateProcess, WaitForSingleObject,
};

/// Exit code a sidecar stopped by us reports (like a Ctrl-C'd console program).
const STOPPED_EXIT_CODE: u32 = 1;

pub(super) fn contain_command(cmd: &mut tokio::process::Command) {
    // No console window per sidecar; a process group of its own so that a Ctrl-C in the
    // server's console is the supervisor's to handle, not delivered to every sidecar at once.
    cmd.creation_flags(CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP);
}

/// A process handle, closed on drop.
struct OwnedHandle(HANDLE);

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful Open/Create call and is closed only here.
        unsafe { CloseHandle(self.0) };
    }
}

/// `Ok(None)` when no process has this pid.
fn open_process(pid: u32, access: PROCESS_ACCESS_RIGHTS) -> io::Result<Option<OwnedHandle>> {
    if pid == 0 {
        return Ok(None);
    }
    // SAFETY: OpenProcess has no memory-safety preconditions; a null return means failure.
    let handle = unsafe { OpenProcess(access, 0, pid) };
    if !handle.is_null() {
        return Ok(Some(OwnedHandle(handle)));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) {
        Ok(None)
    } else {
        Err(err)
    }
}

fn has_exited(handle: &OwnedHandle) -> bool {
    // SAFETY: the handle is open and was opened with SYNCHRONIZE.
    unsafe { WaitForSingleObject(handle.0, 0) == WAIT_OBJECT_0 }
}

fn terminate(pid: u32) -> io::Result<()> {
    let Some(handle) = open_process(pid, PROCESS_TERMINATE | PROCESS_SYNCHRONIZE)? else {
        return Ok(());
    };
    // SAFETY: the handle is open and was opened with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(handle.0, STOPPED_EXIT_CODE) } != 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // TerminateProcess on a process that is already exiting fails with access denied.
    if err.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) && has_exited(&handle) {
        Ok(())
    } else {
        Err(err)
    }
}

pub(super) fn request_stop(pid: u32) -> io::Result<()> {
    terminate(pid)
}

pub(super) fn force_kill(pid: u32) -> io::Result<()> {
    terminate(pid)
}

/// Whether the job is in place; a failed attempt may be retried.
static CONTAINED: Mutex<bool> = Mutex::new(false);

pub(super) fn contain_children() -> io::Result<()> {
    let mut contained = CONTAINED.lock().unwrap_or_else(|e| e.into_inner());
    if *contained {
        return Ok(());
    }
    // SAFETY: null attributes (a handle that children do not inherit) and no name.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        return Err(io::Error::last_os_error());
    }
    let job = OwnedHandle(job);
    // SAFETY: the structure is plain data, for which all zeroes is a valid value.
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: the pointer and size describe `limits`, the class this structure belongs to.
    let set = unsafe {
        SetInformationJobObject(
            job.0,
            JobObjectExtendedLimitInformation,
            (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if set == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both handles are valid; GetCurrentProcess is a pseudo-handle needing no close.
    if unsafe { AssignProcessToJobObject(job.0, GetCurrentProcess()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // The job must stay open exactly as long as this process: the kernel closes the handle
    // when we die, however we die, and that is what kills the sidecars.
    std::mem::forget(job);
    *contained = true;
    Ok(())
}

pub(super) fn raise_open_file_limit() -> Option<u64> {
    // Sockets are kernel handles, limited by memory rather than by a per-process count.
    None
}

pub(super) fn is_alive(pid: u32) -> bool {
    match open_process(pid, PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION) {
        // SAFETY: the handle is open and was opened with SYNCHRONIZE.
        Ok(Some(handle)) => unsafe { WaitForSingleObject(handle.0, 0) == WAIT_TIMEOUT },
        Ok(None) => false,
        // It exists, but belongs to someone we may not inspect.
        Err(_) => true,
    }
}

pub(super) fn group_alive(pgid: u32) -> bool {
    is_alive(pgid)
}

/// Not needed on Windows: the job kills leftovers, and leftover records are only bookkeeping.
pub(super) fn executable_of(_pid: u32) -> Option<PathBuf> {
    None
}

pub(super) fn start_time_of(_pid: u32) -> Option<u64> {
    None
}

/// The Job Object end to end, natively (the CI workflow's Windows job runs these, and so
/// does `scripts/test` under Wine): this test binary plays the server, which puts itself into
/// the job and starts a sidecar, which starts a grandchild; the server is then killed
/// with `TerminateProcess`, which no handler can intercept, and both must be gone. The
/// control: without the job, they outlive it.
#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// Set in the processes the tests start from this test binary, to the role they play (a
    /// contract between this test and its own children, not a setting: not the CLI's).
    const ROLE_VAR: &str = "OPENWORK_JOB_TEST_ROLE";

    /// How long a role process lives unless it is killed first.
    const LIFETIME: Duration = Duration::from_secs(120);

    fn role() -> Option<String> {
        std::env::var(ROLE_VAR).ok()
    }

    /// A command running only the test `name` of this module, in this test binary, as `role`.
    fn this_test_binary(name: &str, role: &str) -> Command {
        let mut cmd =
            super::super::test_roles::this_test_binary(module_path!(), name, ROLE_VAR, role);
        cmd.arg("--quiet")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts `role` of `role_process` and reads the line of pids it prints.
    fn start(role: &str) -> (Child, Vec<u32>) {
        let mut child = this_test_binary("role_process", role)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let pids = loop {
            let line = lines.next().expect("the role printed its pids").unwrap();
            if let Some(pids) = line.strip_prefix("PIDS ") {
                break pids
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect();
            }
        };
        (child, pids)
    }

    /// In a process the tests started: `server-with-job` and `server-without-job` start a
    /// sidecar and print `PIDS <sidecar> <grandchild>`; `sidecar` starts a grandchild and
    /// prints `PIDS <grandchild>`; every role then waits to be killed. Outside the tests'
    /// processes it does nothing.
    #[test]
    fn role_process() {
        let Some(role) = role() else { return };
        let pids = match role.as_str() {
            "server-with-job" | "server-without-job" => {
                if role == "server-with-job" {
                    contain_children().unwrap();
                }
                let (sidecar, below) = start("sidecar");
                // Its stdout pipe is not read again; it prints nothing more.
                std::mem::forget(sidecar);
                format!("{} {}", below[0], below[1])
            }
            "sidecar" => {
                let grandchild = this_test_binary("role_process", "grandchild")
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                let pid = grandchild.id();
                std::mem::forget(grandchild);
                format!("{} {pid}", std::process::id())
            }
            "grandchild" => String::new(),
            other => panic!("unknown role {other}"),
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "PIDS {pids}").unwrap();
        stdout.flush().unwrap();
        drop(stdout);
        std::thread::sleep(LIFETIME);
    }

    fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done()
    }

    /// Starts `role`, kills it with TerminateProcess, and returns whether its sidecar and
    /// grandchild were each gone within 5 s; ends them afterwards either way.
    fn gone_after_killing(role: &str) -> Vec<bool> {
        let (mut server, pids) = start(role);
        for pid in &pids {
            assert!(is_alive(*pid), "{pid} should be running before the kill");
        }
        server.kill().unwrap();
        server.wait().unwrap();
        wait_until(Duration::from_secs(5), || {
            pids.iter().all(|p| !is_alive(*p))
        });
        let gone = pids.iter().map(|p| !is_alive(*p)).collect();
        for pid in &pids {
            let _ = terminate(*pid);
        }
        gone
    }

    #[test]
    fn a_killed_servers_job_ends_its_sidecar_and_grandchild() {
        if role().is_none() {
            assert_eq!(gone_after_killing("server-with-job"), [true, true]);
        }
    }

    #[test]
    fn without_the_job_a_killed_servers_sidecar_lives_on() {
        if role().is_none() {
            // The control: without the job nothing ends them.
            assert_eq!(gone_after_killing("server-without-job"), [false, false]);
        }
    }
}
