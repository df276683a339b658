//! Records of the sidecars each server started (`run/<server pid>.json`), so that the next
//! server to start can stop whatever a dead one left running.
//!
//! This is the last line of defence, for when the lifeline died along with the server (a
//! `kill -9` of both, an OOM kill of the lifeline). Why it is built this way:
//!
//! - A record is exclusively locked (an OS file lock, which the kernel drops when its process
//!   dies) for as long as its server runs. A record whose lock can be taken therefore belongs
//!   to a dead server; a locked one is never touched, since servers may share a data dir.
//! - A record appears under its scanned name already locked: it is created as a dot-file,
//!   locked, then renamed (a rename keeps the inode, and with it the lock). A sweeper never
//!   sees an unlocked record of a live server.
//! - It is rewritten in place rather than through a temp file and a rename, since the lock
//!   belongs to the inode. A shorter text is first padded with spaces to the old length and
//!   only then cut, so the file is valid JSON whenever a kill lands. No fsync: the record is
//!   only read after its server died, and a machine crash ends the sidecars too.
//! - Before killing anything the sweeper proves the process is the recorded one: same
//!   executable (Linux `/proc/<pid>/exe`, macOS `proc_pidpath`) and same start time. A match
//!   on the pid alone is never enough, since pids get reused. Where neither can be read
//!   (Windows, other unixes), nothing is killed: on Windows the Job Object already did it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{GroupFate, executable_of, is_alive, start_time_of, stop_groups};

/// The record format's version, written into every record.
const RECORD_FORMAT: u32 = 1;

/// How long leftovers get to exit after SIGTERM before SIGKILL. Short: they are orphans that
/// nobody is waiting for, and the server's start waits on this.
const SWEEP_GRACE: Duration = Duration::from_millis(1500);

/// Suffix of a record's file name (`<server pid>.json`).
const RECORD_SUFFIX: &str = ".json";
/// Suffix of a record being created (`.<server pid>.json.tmp`).
const CREATING_SUFFIX: &str = ".json.tmp";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordFile {
    format: u32,
    server_pid: u32,
    sidecars: Vec<SidecarEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SidecarEntry {
    name: String,
    /// Also its process group's id.
    pid: u32,
    /// The resolved executable, as the OS reports it for a running process. Lossy for a
    /// non-UTF-8 path, which then never matches: such a leftover is left alone.
    exe: String,
    started_at_unix_ms: u64,
    /// The OS's start time of the process (see `start_time_of`), where it can be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_start: Option<u64>,
}

/// This server's record of the sidecars it started: `run/<server pid>.json`, exclusively
/// locked for as long as it exists. Dropping it removes the file if no sidecar is listed, and
/// otherwise leaves it, unlocked, for the next start's [`sweep_leftovers`].
#[derive(Debug)]
pub struct RunRecord {
    /// Holds the lock.
    file: File,
    path: PathBuf,
    contents: RecordFile,
    /// Length of what is in the file now.
    written_len: u64,
}

impl RunRecord {
    /// Creates and locks `run_dir/<our pid>.json` (creating `run_dir` if needed). Run
    /// [`sweep_leftovers`] first: a record left at the same path by a dead server that had our
    /// pid is replaced.
    pub fn create(run_dir: &Path) -> io::Result<RunRecord> {
        Self::create_for(run_dir, std::process::id())
    }

    fn create_for(run_dir: &Path, server_pid: u32) -> io::Result<RunRecord> {
        crate::trust::create_private_dir(run_dir).map_err(context("create", run_dir))?;
        let path = run_dir.join(format!("{server_pid}{RECORD_SUFFIX}"));
        let creating = run_dir.join(format!(".{server_pid}{CREATING_SUFFIX}"));
        // Created exclusively (mode 0600, never through a link). One already there was left
        // by a dead server with our pid whose record the sweep could not take: replace it.
        let create = || {
            let mut options = crate::trust::new_private_file();
            options.read(true);
            options.open(&creating)
        };
        let file = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&creating).map_err(context("remove", &creating))?;
                create()
            }
            other => other,
        }
        .map_err(context("create", &creating))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by another process", creating.display()),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(context("lock", &creating)(e)),
        }
        let mut record = RunRecord {
            file,
            path,
            contents: RecordFile {
                format: RECORD_FORMAT,
                server_pid,
                sidecars: Vec::new(),
            },
            written_len: 0,
        };
        record.write()?;
        fs::rename(&creating, &record.path).map_err(context("rename", &creating))?;
        Ok(record)
    }

    /// The record's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a sidecar just spawned (`pid` leads its process group), replacing any entry with
    /// the same pid. Call it right after the spawn: the process's start time is read now.
    pub fn add(&mut self, name: &str, pid: u32, exe: &Path) -> io::Result<()> {
        // The OS reports a running process's executable with symlinks resolved.
        let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        self.contents.sidecars.retain(|s| s.pid != pid);
        self.contents.sidecars.push(SidecarEntry {
            name: name.to_string(),
            pid,
            exe: exe.to_string_lossy().into_owned(),
            started_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            process_start: start_time_of(pid),
        });
        self.write()
    }

    /// Forgets a sidecar that was stopped and reaped.
    pub fn remove(&mut self, pid: u32) -> io::Result<()> {
        let before = self.contents.sidecars.len();
        self.contents.sidecars.retain(|s| s.pid != pid);
        if self.contents.sidecars.len() == before {
            return Ok(());
        }
        self.write()
    }

    fn write(&mut self) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&self.contents).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let len = bytes.len() as u64;
        if len < self.written_len {
            bytes.resize(self.written_len as usize, b' ');
        }
        let path = &self.path;
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&bytes))
            .and_then(|()| {
                if len < self.written_len {
                    self.file.set_len(len)
                } else {
                    Ok(())
                }
            })
            .map_err(context("write", path))?;
        self.written_len = len;
        Ok(())
    }
}

impl Drop for RunRecord {
    fn drop(&mut self) {
        // Removed while still locked, so no sweeper can read it half-gone.
        if self.contents.sidecars.is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A sidecar found in a dead server's record, and what the sweep did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The dead server's pid (the record's name).
    pub server_pid: u32,
    /// The sidecar's name.
    pub name: String,
    /// Its pid, which was also its process group's id.
    pub pid: u32,
    /// The executable it was started from.
    pub exe: PathBuf,
    /// What became of it.
    pub fate: LeftoverFate,
}

/// What [`sweep_leftovers`] did about one recorded sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftoverFate {
    /// It was not running any more.
    AlreadyGone,
    /// Its group exited after SIGTERM.
    Stopped,
    /// Its group was still there after the grace period and got SIGKILL.
    Killed,
    /// The pid now belongs to another program, or to a later start of the same one: left
    /// alone.
    PidReused,
    /// Something runs with that pid, but this platform cannot tell which program it is: left
    /// alone.
    Unverifiable,
    /// It could not be signalled.
    Failed(String),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fate = match &self.fate {
            LeftoverFate::AlreadyGone => "already gone".to_string(),
            LeftoverFate::Stopped => "stopped".to_string(),
            LeftoverFate::Killed => "killed".to_string(),
            LeftoverFate::PidReused => "pid now used by another process; left alone".to_string(),
            LeftoverFate::Unverifiable => {
                "running, but cannot be identified here; left alone".to_string()
            }
            LeftoverFate::Failed(e) => format!("could not be stopped: {e}"),
        };
        write!(
            f,
            "{} (pid {}, {}) left by server {}: {fate}",
            self.name,
            self.pid,
            self.exe.display(),
            self.server_pid
        )
    }
}

/// Stops what dead servers left running. Every record under `run_dir` whose lock can be taken
/// belongs to a dead server: each sidecar it lists that still runs *and* is proven to be the
/// recorded process (see the module docs) has its process group stopped (SIGTERM, a short
/// grace period, SIGKILL); then the record is deleted. Records of running servers are never
/// touched. Returns every sidecar found, for the log; a missing `run_dir` is no leftovers.
pub fn sweep_leftovers(run_dir: &Path) -> io::Result<Vec<Leftover>> {
    sweep_with_grace(run_dir, SWEEP_GRACE)
}

/// A dead server's record, locked by us.
struct Claimed {
    path: PathBuf,
    _lock: File,
    record: RecordFile,
}

fn sweep_with_grace(run_dir: &Path, grace: Duration) -> io::Result<Vec<Leftover>> {
    let entries = match fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(context("list", run_dir)(e)),
    };

    let mut claimed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let creating = name.starts_with('.') && name.ends_with(CREATING_SUFFIX);
        let is_record = name
            .strip_suffix(RECORD_SUFFIX)
            .is_some_and(|stem| stem.parse::<u32>().is_ok());
        if !creating && !is_record {
            continue;
        }
        let path = entry.path();
        let mut lock = match claim(&path) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(record = %path.display(), error = %e, "cannot inspect a sidecar record");
                continue;
            }
        };
        if creating {
            // Its server died while creating it, before it could list anything.
            remove_record(&path);
            continue;
        }
        let mut text = String::new();
        let parsed = lock
            .read_to_string(&mut text)
            .map_err(io::Error::other)
            .and_then(|_| serde_json::from_str::<RecordFile>(&text).map_err(io::Error::other));
        match parsed {
            Ok(record) => claimed.push(Claimed {
                path,
                _lock: lock,
                record,
            }),
            Err(e) => {
                tracing::warn!(record = %path.display(), error = %e, "removing an unreadable sidecar record of a dead server");
                remove_record(&path);
            }
        }
    }

    let mut leftovers = Vec::new();
    let mut to_stop = Vec::new();
    for claimed in &claimed {
        for sidecar in &claimed.record.sidecars {
            let fate = identify(sidecar);
            if fate.is_none() {
                to_stop.push(sidecar.pid);
            }
            leftovers.push(Leftover {
                server_pid: claimed.record.server_pid,
                name: sidecar.name.clone(),
                pid: sidecar.pid,
                exe: PathBuf::from(&sidecar.exe),
                fate: fate.unwrap_or(LeftoverFate::Stopped),
            });
        }
    }
    to_stop.sort_unstable();
    to_stop.dedup();
    for (pgid, fate) in stop_groups(&to_stop, grace) {
        let fate = match fate {
            GroupFate::AlreadyGone => LeftoverFate::AlreadyGone,
            GroupFate::Stopped => LeftoverFate::Stopped,
            GroupFate::Killed => LeftoverFate::Killed,
            GroupFate::Failed(e) => LeftoverFate::Failed(e.to_string()),
        };
        for leftover in leftovers.iter_mut().filter(|l| l.pid == pgid) {
            if leftover.fate == LeftoverFate::Stopped {
                leftover.fate = fate.clone();
            }
        }
    }

    // Only now: a sweeper that dies before this point leaves the records for the next one.
    for claimed in claimed {
        remove_record(&claimed.path);
    }
    leftovers.sort_by_key(|l| (l.server_pid, l.pid));
    Ok(leftovers)
}

/// Locks a record if its server is dead; `None` if it is alive or the record is gone.
fn claim(path: &Path) -> io::Result<Option<File>> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let file = match crate::trust::no_follow(&mut options).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(context("open", path)(e)),
    };
    // A record names processes to stop: one that someone else could have written is never
    // acted on (the start refuses such a run dir before it gets here: see `trust`).
    let meta = file.metadata().map_err(context("stat", path))?;
    if let Some(problem) = crate::trust::problem(&meta, false) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not trusted: {problem}", path.display()),
        ));
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(context("lock", path)(e)),
    }
    // Between our open and our lock, its owner (or another sweeper) may have removed it and a
    // new server with the same pid created a new record at this path: our lock is then on a
    // removed file and says nothing about the new one.
    if !still_at(&file, path)? {
        return Ok(None);
    }
    Ok(Some(file))
}

#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().map_err(context("stat", path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == ours.dev() && now.ino() == ours.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(context("stat", path)(e)),
    }
}

/// Windows keeps a removed file's name taken until its last handle closes, so the path cannot
/// already hold a new record while we have the old one open.
#[cfg(not(unix))]
fn still_at(_file: &File, _path: &Path) -> io::Result<bool> {
    Ok(true)
}

/// `None` if `sidecar` is proven to be still running as recorded (so it is to be stopped),
/// otherwise why it is left alone.
fn identify(sidecar: &SidecarEntry) -> Option<LeftoverFate> {
    if !is_alive(sidecar.pid) {
        return Some(LeftoverFate::AlreadyGone);
    }
    let Some(exe) = executable_of(sidecar.pid) else {
        return Some(if is_alive(sidecar.pid) {
            LeftoverFate::Unverifiable
        } else {
            LeftoverFate::AlreadyGone
        });
    };
    if exe.to_string_lossy() != sidecar.exe {
        return Some(LeftoverFate::PidReused);
    }
    match (sidecar.process_start, start_time_of(sidecar.pid)) {
        (Some(recorded), Some(now)) if recorded != now => Some(LeftoverFate::PidReused),
        _ => None,
    }
}

fn remove_record(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(record = %path.display(), error = %e, "cannot remove a sidecar record");
    }
}

/// Wraps an I/O error with what was being done to which file.
fn context<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};

    use super::super::force_kill;
    use super::super::test_support::{reap, sleep_exe};
    use super::*;

    fn spawn_sleep() -> Child {
        Command::new(sleep_exe())
            .arg("1000")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn read_record(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn record_is_locked_rewritten_in_place_and_removed_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut record = RunRecord::create(&run).unwrap();
        let path = run.join(format!("{}.json", std::process::id()));
        assert_eq!(record.path(), path);
        assert_eq!(names(&run), [format!("{}.json", std::process::id())]);

        let exe = sleep_exe();
        record.add("opencode", 4_000_100, &exe).unwrap();
        record
            .add("opencode-router-with-a-long-name", 4_000_101, &exe)
            .unwrap();
        record.remove(4_000_101).unwrap();
        let json = read_record(&path);
        assert_eq!(json["format"], 1);
        assert_eq!(json["serverPid"], std::process::id());
        let sidecars = json["sidecars"].as_array().unwrap();
        assert_eq!(sidecars.len(), 1);
        assert_eq!(sidecars[0]["name"], "opencode");
        assert_eq!(sidecars[0]["exe"], exe.to_str().unwrap());
        // Shrinking must not leave the padding behind.
        assert!(!fs::read(&path).unwrap().ends_with(b" "));

        assert!(matches!(
            File::open(&path).unwrap().try_lock(),
            Err(TryLockError::WouldBlock)
        ));
        assert_eq!(sweep_leftovers(&run).unwrap(), []);
        assert!(path.exists(), "a live server's record was swept");

        record.remove(4_000_100).unwrap();
        drop(record);
        assert_eq!(names(&run), Vec::<String>::new());
    }

    #[test]
    fn sweep_stops_only_proven_leftovers_of_dead_servers() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let sleep = sleep_exe();

        let leftover = spawn_sleep();
        let running = spawn_sleep();
        let other_program = spawn_sleep();
        let restarted = spawn_sleep();
        let gone = {
            let mut child = spawn_sleep();
            child.kill().unwrap();
            child.wait().unwrap();
            child.id()
        };
        let pids = [
            leftover.id(),
            running.id(),
            other_program.id(),
            restarted.id(),
        ];
        let leftover_exit = reap(leftover);
        let others: Vec<_> = [running, other_program, restarted]
            .into_iter()
            .map(reap)
            .collect();

        let mut dead = RunRecord::create_for(run, 4_000_001).unwrap();
        dead.add("opencode", pids[0], &sleep).unwrap();
        dead.add("opencode-router", gone, &sleep).unwrap();
        drop(dead);
        let mut live = RunRecord::create_for(run, 4_000_002).unwrap();
        live.add("opencode", pids[1], &sleep).unwrap();
        let mut mismatch = RunRecord::create_for(run, 4_000_003).unwrap();
        mismatch
            .add("opencode", pids[2], "/bin/sh".as_ref())
            .unwrap();
        drop(mismatch);
        let mut later = RunRecord::create_for(run, 4_000_004).unwrap();
        later.add("opencode", pids[3], &sleep).unwrap();
        drop(later);
        let later_path = run.join("4000004.json");
        let mut json = read_record(&later_path);
        let start = json["sidecars"][0]["processStart"].as_u64().unwrap();
        json["sidecars"][0]["processStart"] = (start + 1).into();
        fs::write(&later_path, serde_json::to_vec(&json).unwrap()).unwrap();
        fs::write(run.join(".4000005.json.tmp"), b"").unwrap();
        fs::write(run.join("notes.txt"), b"not a record").unwrap();

        let found = sweep_with_grace(run, Duration::from_secs(2)).unwrap();
        let survivors: Vec<bool> = pids[1..].iter().map(|&p| is_alive(p)).collect();
        let leftover_status = leftover_exit.join().unwrap();
        for (pid, waiter) in pids[1..].iter().zip(others) {
            force_kill(*pid).unwrap();
            waiter.join().unwrap();
        }

        let fates: Vec<(u32, u32, LeftoverFate)> = found
            .iter()
            .map(|l| (l.server_pid, l.pid, l.fate.clone()))
            .collect();
        let mut expected = vec![
            (4_000_001, pids[0], LeftoverFate::Stopped),
            (4_000_001, gone, LeftoverFate::AlreadyGone),
            (4_000_003, pids[2], LeftoverFate::PidReused),
            (4_000_004, pids[3], LeftoverFate::PidReused),
        ];
        expected.sort_by_key(|&(server, pid, _)| (server, pid));
        assert_eq!(fates, expected);
        assert_eq!(leftover_status.signal(), Some(libc::SIGTERM));
        assert_eq!(survivors, [true, true, true]);
        assert_eq!(names(run), ["4000002.json", "notes.txt"]);
        drop(live);
    }

    #[test]
    fn a_record_others_could_have_written_is_never_acted_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let sleep = sleep_exe();
        let victim = spawn_sleep();
        let pid = victim.id();
        let exit = reap(victim);
        let mut dead = RunRecord::create_for(run, 4_000_011).unwrap();
        dead.add("opencode", pid, &sleep).unwrap();
        drop(dead);
        let path = run.join("4000011.json");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "records are private"
        );
        // Writable by others: it could name any process of ours.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(sweep_with_grace(run, Duration::from_secs(2)).unwrap(), []);
        assert!(is_alive(pid), "stopped on an untrusted record");
        // In place of a record, a link to one: not followed either.
        let elsewhere = dir.path().join("elsewhere.json");
        fs::rename(&path, &elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(sweep_with_grace(run, Duration::from_secs(2)).unwrap(), []);
        assert!(is_alive(pid), "stopped on a linked record");
        // The same record, private and in place: the leftover is stopped.
        fs::remove_file(&path).unwrap();
        fs::rename(&elsewhere, &path).unwrap();
        let found = sweep_with_grace(run, Duration::from_secs(2)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].fate, LeftoverFate::Stopped);
        assert_eq!(exit.join().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_stale_creating_record_or_a_link_in_its_place_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        let outside = dir.path().join("outside");
        // Planted where this server's record is first created: a dangling link.
        std::os::unix::fs::symlink(&outside, run.join(".4000021.json.tmp")).unwrap();
        let record = RunRecord::create_for(&run, 4_000_021).unwrap();
        assert!(!outside.exists(), "the record was created through the link");
        assert!(
            fs::symlink_metadata(record.path())
                .unwrap()
                .file_type()
                .is_file()
        );
        drop(record);
        assert_eq!(names(&run), Vec::<String>::new());
    }
}
