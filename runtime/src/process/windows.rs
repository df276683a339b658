//! Windows side: a Job Object that the kernel closes, killing every sidecar, when the server
//! dies; `TerminateProcess` for stops.
//!
//! Run under Wine by tests/tests/wine.rs (a SIGKILLed server's sidecar and grandchild are
//! gone; without the job they are not); native Windows runs belong to the CI workflow.

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
