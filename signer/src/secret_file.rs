//! A secret written to a file for a program that reads keys only from files (`xcrun
//! notarytool --key`), and the guarantees that it does not outlive its use:
//!
//! | exit path | what removes the file |
//! |---|---|
//! | normal return, error, panic (unwinding) | [`SecretFile`]'s `Drop` |
//! | SIGINT, SIGTERM, SIGHUP (Ctrl-C, a CI job cancelled, a closed terminal) | a signal handler that unlinks every registered file, then dies of the signal as it would have |
//! | SIGKILL, a power cut, `panic = "abort"` | [`sweep`] at the start of the next run: a directory whose process is gone is removed |
//!
//! The file lives in a fresh owner-only directory `openwork-signer-<pid>-<random>` in the
//! temp dir, as the only file in it, owner-only itself. Its name carries the process id so
//! that the next run can tell a leftover from a file another signer is using right now.
//! The Linux notarizer needs none of this: it keeps the key in memory.

use std::path::{Path, PathBuf};

use crate::error::Result;

/// The prefix of the directories secret files live in.
pub const DIR_PREFIX: &str = "openwork-signer-";

/// A secret in a file, removed when dropped (and on SIGINT/SIGTERM/SIGHUP).
pub struct SecretFile {
    /// Removes the directory when dropped, after `Drop` removed the file.
    _dir: tempfile::TempDir,
    path: PathBuf,
    #[cfg(unix)]
    slot: Option<usize>,
}

impl SecretFile {
    /// Writes `secret` as `name` into a new owner-only directory under `temp_dir`.
    pub fn write(temp_dir: &Path, name: &str, secret: &[u8]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(temp_dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.path().join(name);
        #[cfg(unix)]
        let slot = signals::register(dir.path(), &path);
        let mut options = fs_err::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(options.options_mut(), 0o600);
        let file = Self {
            _dir: dir,
            path,
            #[cfg(unix)]
            slot,
        };
        std::io::Write::write_all(&mut options.open(&file.path)?, secret)?;
        Ok(file)
    }

    /// Where the secret is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.path);
        #[cfg(unix)]
        if let Some(slot) = self.slot {
            signals::unregister(slot);
        }
    }
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .finish()
    }
}

/// Removes the secret directories under `temp_dir` left by signer processes that are gone
/// (killed with SIGKILL, or a machine that lost power); returns how many. Directories of
/// running processes are left alone.
pub fn sweep(temp_dir: &Path) -> usize {
    let Ok(entries) = fs_err::read_dir(temp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let is_leftover = entry
            .metadata()
            .is_ok_and(|m| m.is_dir() && is_owned_by_me(&m) && is_leftover(pid, &m));
        if is_leftover && fs_err::remove_dir_all(entry.path()).is_ok() {
            tracing::warn!(
                "removed {}, a secret left by a signer process that was killed",
                entry.path().display()
            );
            removed += 1;
        }
    }
    removed
}

#[cfg(unix)]
fn is_owned_by_me(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    metadata.uid() == unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
fn is_owned_by_me(_metadata: &std::fs::Metadata) -> bool {
    true
}

/// Whether the process `pid` is gone.
#[cfg(unix)]
fn is_leftover(pid: u32, _metadata: &std::fs::Metadata) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    !alive && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Without a liveness check at hand, a directory is a leftover when it is a day old.
#[cfg(not(unix))]
fn is_leftover(_pid: u32, metadata: &std::fs::Metadata) -> bool {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(24 * 3600))
}

/// The signal handler's registry: a fixed table of C paths that the handler may read
/// without allocating or locking (async-signal-safe: loads, `unlink`, `rmdir`, `raise`).
#[cfg(unix)]
mod signals {
    use std::ffi::{CString, c_char, c_int};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::Once;
    use std::sync::atomic::{AtomicPtr, Ordering};

    const SLOTS: usize = 8;
    const SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// (file, directory) per registered secret. The strings are leaked on purpose: a
    /// handler running on another thread may still hold a pointer it loaded, so they are
    /// never freed (a few dozen bytes per secret file, a handful per run).
    static FILES: [AtomicPtr<c_char>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static DIRS: [AtomicPtr<c_char>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static INSTALL: Once = Once::new();

    /// Registers a file and its directory for removal on a signal; `None` when every
    /// slot is taken (the file is then still removed on drop and swept next run).
    pub(super) fn register(dir: &Path, file: &Path) -> Option<usize> {
        INSTALL.call_once(install);
        let c = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .ok()
                .map(|s| s.into_raw())
        };
        let (file, dir) = (c(file)?, c(dir)?);
        for slot in 0..SLOTS {
            if FILES[slot]
                .compare_exchange(
                    std::ptr::null_mut(),
                    file,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                DIRS[slot].store(dir, Ordering::SeqCst);
                return Some(slot);
            }
        }
        None
    }

    pub(super) fn unregister(slot: usize) {
        DIRS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
        FILES[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
    }

    fn install() {
        for signal in SIGNALS {
            // SAFETY: a plain sigaction with an async-signal-safe handler; the previous
            // disposition is kept only when it was "ignore" (nohup), which we respect.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as extern "C" fn(c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESETHAND;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    }

    extern "C" fn handler(signal: c_int) {
        for slot in 0..SLOTS {
            let file = FILES[slot].load(Ordering::SeqCst);
            let dir = DIRS[slot].load(Ordering::SeqCst);
            // SAFETY: the pointers are leaked CStrings, never freed; unlink and rmdir are
            // async-signal-safe.
            unsafe {
                if !file.is_null() {
                    libc::unlink(file);
                }
                if !dir.is_null() {
                    libc::rmdir(dir);
                }
            }
        }
        // SA_RESETHAND restored the default action: die of the signal, as without us
        // (the parent sees the same status).
        // SAFETY: raise is async-signal-safe.
        unsafe {
            libc::raise(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private_and_goes_with_its_guard() {
        let temp = tempfile::tempdir().unwrap();
        let file = SecretFile::write(temp.path(), "AuthKey.p8", b"secret").unwrap();
        let path = file.path().to_owned();
        assert_eq!(fs_err::read(&path).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        drop(file);
        assert_eq!(fs_err::read_dir(temp.path()).unwrap().count(), 0);
    }

    #[test]
    fn sweep_removes_the_leftovers_of_dead_processes_only() {
        let temp = tempfile::tempdir().unwrap();
        let live = SecretFile::write(temp.path(), "AuthKey.p8", b"mine").unwrap();
        // No process has pid 2^22 + 1 (above Linux's pid_max default), so its directory
        // is a leftover.
        let dead = temp.path().join(format!("{DIR_PREFIX}4194305-abcdef"));
        fs_err::create_dir(&dead).unwrap();
        fs_err::write(dead.join("AuthKey.p8"), b"left behind").unwrap();
        let unrelated = temp.path().join("openwork-signer-notes");
        fs_err::create_dir(&unrelated).unwrap();
        assert_eq!(sweep(temp.path()), 1);
        assert!(!dead.exists());
        assert!(live.path().exists(), "a running process's file was swept");
        assert!(unrelated.exists());
    }
}
