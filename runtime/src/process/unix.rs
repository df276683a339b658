//! Unix side: process groups, signals, and (Linux, macOS) telling one process from another
//! that later got the same pid.

use std::io;
use std::path::PathBuf;

pub(super) fn contain_command(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    linux::set_parent_death_signal(cmd);
}

pub(super) fn request_stop(pid: u32) -> io::Result<()> {
    signal_group(pid, libc::SIGTERM)
}

pub(super) fn force_kill(pid: u32) -> io::Result<()> {
    signal_group(pid, libc::SIGKILL)
}

pub(super) fn contain_children() -> io::Result<()> {
    Ok(())
}

/// The pid as a signal target, refusing values that `kill(-pid)` would turn into "every
/// process we may signal" (1), "our own group" (0, or our group's id), or garbage.
fn group_target(pgid: u32) -> io::Result<libc::pid_t> {
    let target = libc::pid_t::try_from(pgid).ok().filter(|&p| p > 1);
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let own_group = unsafe { libc::getpgrp() };
    match target {
        Some(p) if p != own_group => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        )),
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let target = group_target(pgid)?;
    // SAFETY: kill has no memory-safety preconditions; the target was checked above.
    if unsafe { libc::kill(-target, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// `kill(target, 0)`: whether the target exists, counting ones we may not signal (EPERM).
fn exists(target: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let signalled = unsafe { libc::kill(target, 0) } == 0;
    signalled || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(super) fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let wanted = if cfg!(target_os = "macos") {
        // macOS refuses a soft limit above OPEN_MAX (10240) even when the hard limit is
        // "unlimited".
        limit.rlim_max.min(10240)
    } else {
        limit.rlim_max
    };
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
    Some(limit.rlim_cur as u64)
}

pub(super) fn is_alive(pid: u32) -> bool {
    let Some(pid) = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0) else {
        return false;
    };
    if !exists(pid) {
        return false;
    }
    #[cfg(target_os = "linux")]
    if let Some(stat) = linux::Stat::read(pid) {
        return !stat.is_zombie();
    }
    true
}

pub(super) fn group_alive(pgid: u32) -> bool {
    let Some(pgid) = libc::pid_t::try_from(pgid).ok().filter(|&p| p > 1) else {
        return false;
    };
    if !exists(-pgid) {
        return false;
    }
    // kill(-pgid, 0) also succeeds for a group of zombies nobody reaps (a container whose pid 1
    // does not reap, for instance): they would look alive for the whole grace period and earn
    // a pointless SIGKILL.
    #[cfg(target_os = "linux")]
    if let Some(live) = linux::group_has_live_member(pgid) {
        return live;
    }
    true
}

pub(super) fn executable_of(pid: u32) -> Option<PathBuf> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    #[cfg(target_os = "linux")]
    {
        linux::executable_of(pid)
    }
    #[cfg(target_os = "macos")]
    {
        macos::executable_of(pid)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        None
    }
}

pub(super) fn start_time_of(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    #[cfg(target_os = "linux")]
    {
        linux::Stat::read(pid).map(|s| s.start_ticks)
    }
    #[cfg(target_os = "macos")]
    {
        macos::start_time_of(pid)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsString;
    use std::io;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::PathBuf;

    pub(super) fn set_parent_death_signal(cmd: &mut tokio::process::Command) {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec, so it may only make async-signal-safe
        // calls and must not allocate: prctl and getppid are plain system calls, and both
        // errors are built from an errno without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The server may have died between fork and prctl: then the death signal was
                // armed too late and would never come.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// The fields of `/proc/<pid>/stat` this module needs.
    pub(super) struct Stat {
        state: u8,
        pgrp: libc::pid_t,
        /// Clock ticks after boot at which the process started.
        pub(super) start_ticks: u64,
    }

    impl Stat {
        pub(super) fn read(pid: libc::pid_t) -> Option<Stat> {
            Self::parse(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
        }

        fn parse(raw: &[u8]) -> Option<Stat> {
            // The command name (field 2) is in parentheses and may itself hold spaces and
            // parentheses: the fields that follow start after the *last* ')'.
            let close = raw.iter().rposition(|&b| b == b')')?;
            let rest = std::str::from_utf8(&raw[close + 1..]).ok()?;
            let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
            // fields[0] is field 3 of proc(5): state, ppid, pgrp, …, starttime is field 22.
            Some(Stat {
                state: *fields.first()?.as_bytes().first()?,
                pgrp: fields.get(2)?.parse().ok()?,
                start_ticks: fields.get(19)?.parse().ok()?,
            })
        }

        pub(super) fn is_zombie(&self) -> bool {
            self.state == b'Z' || self.state == b'X'
        }
    }

    /// `None` when `/proc` cannot be listed.
    pub(super) fn group_has_live_member(pgid: libc::pid_t) -> Option<bool> {
        let entries = std::fs::read_dir("/proc").ok()?;
        let live = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .filter_map(Stat::read)
            .any(|s| s.pgrp == pgid && !s.is_zombie());
        Some(live)
    }

    pub(super) fn executable_of(pid: libc::pid_t) -> Option<PathBuf> {
        let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        // A running executable whose file was since removed (a garbage-collected runtime) is
        // still the same program.
        let bytes = link.as_os_str().as_bytes();
        let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
        Some(PathBuf::from(OsString::from_vec(bytes.to_vec())))
    }

    #[cfg(test)]
    #[test]
    fn stat_parses_names_with_spaces_and_parentheses() {
        let raw =
            b"4242 (a) b (c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2\n";
        let stat = Stat::parse(raw).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.pgrp, 4240);
        assert_eq!(stat.start_ticks, 987654);
        assert!(Stat::parse(b"4242 (truncated").is_none());
    }
}

#[cfg(target_os = "macos")]
mod macos {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    pub(super) fn executable_of(pid: libc::pid_t) -> Option<PathBuf> {
        let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
        // SAFETY: the buffer is writable for the length passed.
        let len = unsafe { libc::proc_pidpath(pid, buf.as_mut_ptr().cast(), buf.len() as u32) };
        if len <= 0 {
            return None;
        }
        buf.truncate(len as usize);
        Some(PathBuf::from(OsString::from_vec(buf)))
    }

    pub(super) fn start_time_of(pid: libc::pid_t) -> Option<u64> {
        // SAFETY: proc_bsdinfo is plain data, for which all zeroes is a valid value.
        let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        // SAFETY: the buffer is a proc_bsdinfo of the size passed.
        let got = unsafe {
            libc::proc_pidinfo(
                pid,
                libc::PROC_PIDTBSDINFO,
                0,
                (&mut info as *mut libc::proc_bsdinfo).cast(),
                size,
            )
        };
        (got == size).then(|| info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufReader;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    use super::super::test_support::{read_line, reap, spawn_group_sh, wait_until};
    use super::super::{force_kill, is_alive, request_stop, sidecar_command};

    #[test]
    fn sidecar_leads_its_own_process_group() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut child = sidecar_command("/bin/sh".as_ref())
                .args(["-c", "sleep 1000"])
                .spawn()
                .unwrap();
            let pid = child.id().unwrap();
            // SAFETY: getpgid has no memory-safety preconditions.
            let pgid = unsafe { libc::getpgid(pid as libc::pid_t) };
            // SAFETY: as above.
            let ours = unsafe { libc::getpgrp() };
            force_kill(pid).unwrap();
            child.wait().await.unwrap();
            assert_eq!(pgid, pid as libc::pid_t);
            assert_ne!(pgid, ours);
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sidecar_dies_with_the_thread_that_spawned_it() {
        let mut child = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                sidecar_command("/bin/sh".as_ref())
                    .args(["-c", "sleep 1000"])
                    .spawn()
                    .unwrap()
            })
        })
        .join()
        .unwrap();
        let pid = child.id().unwrap();
        let mut status = None;
        let died = wait_until(Duration::from_secs(5), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        // The death signal reaches only the sidecar: its `sleep` lives on in the group.
        let _ = force_kill(pid);
        assert!(died, "sidecar {pid} outlived the thread that spawned it");
        assert_eq!(status.unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn request_stop_reaches_a_grandchild() {
        let mut child = spawn_group_sh("sleep 1000 & echo $!; wait");
        let grandchild: u32 = read_line(&mut BufReader::new(child.stdout.take().unwrap()))
            .parse()
            .unwrap();
        let pid = child.id();
        let waiter = reap(child);
        assert!(is_alive(grandchild));
        request_stop(pid).unwrap();
        let status = waiter.join().unwrap();
        let gone = wait_until(Duration::from_secs(5), || !is_alive(grandchild));
        if !gone {
            let _ = force_kill(pid);
        }
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(
            gone,
            "grandchild {grandchild} survived SIGTERM to its group"
        );
    }

    #[test]
    fn force_kill_reaches_a_grandchild_that_ignores_term() {
        let mut child = spawn_group_sh("trap '' TERM; sleep 1000 & echo $!; wait");
        let grandchild: u32 = read_line(&mut BufReader::new(child.stdout.take().unwrap()))
            .parse()
            .unwrap();
        let pid = child.id();
        let waiter = reap(child);
        request_stop(pid).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(is_alive(grandchild), "the grandchild should ignore SIGTERM");
        force_kill(pid).unwrap();
        let status = waiter.join().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(wait_until(Duration::from_secs(5), || !is_alive(grandchild)));
        // Gone is not an error, for either signal.
        force_kill(pid).unwrap();
        request_stop(pid).unwrap();
    }

    #[test]
    fn refuses_targets_that_mean_everyone_or_us() {
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() } as u32;
        for pid in [0, 1, ours, u32::MAX] {
            assert_eq!(
                request_stop(pid).unwrap_err().kind(),
                std::io::ErrorKind::InvalidInput,
                "{pid}"
            );
            assert!(force_kill(pid).is_err(), "{pid}");
        }
    }
}
