//! OS file locks (`flock` / `LockFileEx` through std): a crashed or killed process never
//! leaves one held, unlike the pid files and lock directories upstream used.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::trust;

/// How often a waiting process retries.
const POLL: Duration = Duration::from_millis(20);

/// An exclusive lock, released on drop (or when the process dies).
#[derive(Debug)]
pub struct ExclusiveLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Opens (creating, mode 0600) a lock file: never through a link, and only one of ours.
/// Lock files are shared by every process that extracts the same runtime, so unlike temp
/// files they cannot be created exclusively.
fn open_lock_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = trust::no_follow(&mut options).open(path).map_err(|e| {
        if trust::is_symlink_error(&e) {
            Error::Untrusted {
                what: "the lock file".into(),
                path: path.to_path_buf(),
                problem: "it is a symbolic link".into(),
                fix: trust::DATA_DIR_FIX.into(),
            }
        } else {
            Error::io(format!("open lock file {}", path.display()), e)
        }
    })?;
    trust::check_open_file(&file, path, "the lock file", trust::DATA_DIR_FIX)?;
    Ok(file)
}

/// Opens an existing file read-only without following a link (a link is "not found").
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    trust::no_follow(&mut options).open(path).map_err(|e| {
        if trust::is_symlink_error(&e) {
            std::io::Error::new(std::io::ErrorKind::NotFound, e)
        } else {
            e
        }
    })
}

/// Takes the exclusive lock at `path`, waiting at most `timeout`. Says once, through the
/// log, that it is waiting and for what.
pub fn lock_exclusive(path: &Path, timeout: Duration, waiting_for: &str) -> Result<ExclusiveLock> {
    let file = open_lock_file(path)?;
    let start = Instant::now();
    let mut said_waiting = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                if said_waiting {
                    tracing::info!(
                        waited_ms = start.elapsed().as_millis() as u64,
                        "lock acquired"
                    );
                }
                return Ok(ExclusiveLock {
                    _file: file,
                    path: path.to_path_buf(),
                });
            }
            Err(TryLockError::WouldBlock) => {
                if !said_waiting {
                    tracing::info!(lock = %path.display(), "waiting for another openwork-server-v2 {waiting_for}");
                    said_waiting = true;
                }
                if start.elapsed() >= timeout {
                    return Err(Error::LockTimeout {
                        path: path.to_path_buf(),
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(POLL);
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
    }
}

/// Takes the exclusive lock at `path` only if nobody holds it.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<ExclusiveLock>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(ExclusiveLock {
            _file: file,
            path: path.to_path_buf(),
        })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(Error::io(format!("lock {}", path.display()), e)),
    }
}

/// A shared lock on a runtime's `.lease`: held for as long as a process runs that runtime,
/// so that GC can tell which runtimes are in use.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

impl Lease {
    /// Takes a shared lease on an existing lease file; `None` if the file is gone (the
    /// runtime was removed meanwhile).
    pub fn acquire(path: &Path) -> Result<Option<Lease>> {
        let file = match open_no_follow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open lease {}", path.display()), e)),
        };
        file.lock_shared()
            .map_err(|e| Error::io(format!("lease {}", path.display()), e))?;
        Ok(Some(Lease { _file: file }))
    }

    /// Whether anybody holds a lease on `path` (tries, and at once drops, an exclusive lock).
    pub fn in_use(path: &Path) -> Result<bool> {
        match open_no_follow(path) {
            Ok(file) => match file.try_lock() {
                Ok(()) => Ok(false),
                Err(TryLockError::WouldBlock) => Ok(true),
                Err(TryLockError::Error(e)) => {
                    Err(Error::io(format!("lock {}", path.display()), e))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("open {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_times_out_while_held_and_is_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock_exclusive(&path, Duration::from_secs(1), "test").unwrap();
        let err = lock_exclusive(&path, Duration::from_millis(100), "test").unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(held);
        // Another test thread's fork can hold a copy of the descriptor until its exec
        // closes it (O_CLOEXEC): the lock is free once that moment passes.
        let deadline = Instant::now() + Duration::from_secs(2);
        while try_lock_exclusive(&path).unwrap().is_none() {
            assert!(Instant::now() < deadline, "the lock was not freed on drop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lease_marks_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lease");
        std::fs::write(&path, b"").unwrap();
        assert!(!Lease::in_use(&path).unwrap());
        let lease = Lease::acquire(&path).unwrap().unwrap();
        assert!(Lease::in_use(&path).unwrap());
        drop(lease);
        assert!(!Lease::in_use(&path).unwrap());
        assert!(Lease::acquire(&dir.path().join("gone")).unwrap().is_none());
    }
}
