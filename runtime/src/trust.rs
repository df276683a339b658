//! Files are trusted only when they are ours.
//!
//! The server runs programs from its data directory and reads its tokens from there, so
//! anyone who can write into that directory can make it run their program or accept their
//! token. Whatever the server trusts on disk must therefore be owned by the user running it
//! (or by root, who can do anything anyway) and must not be writable by group or others;
//! anything else is refused with [`Error::Untrusted`] (exit 15) and a message saying what to
//! do. The rules, all applied to the *link itself* (`lstat`), never to what a planted link
//! points at:
//!
//! - The data directory, `runtime/`, `runtime/.locks/`, `runtime/<key>/`, `logs/` and `run/`
//!   are created `0700` (set explicitly, not left to the umask), and at start each one that
//!   exists must be a real directory, ours, and not writable by group or others.
//! - The data directory *path itself* may be a symbolic link when the link is ours (a user
//!   who moved the data to another disk and linked it back): its target is then checked by
//!   the same rules. A link made by another user in a shared parent is refused, since it
//!   could point our writes into any directory of ours. The data directory's parents are not
//!   checked: they are the user's choice (the default lives in the user's own home).
//! - Every file the server creates there is created exclusively (`O_CREAT|O_EXCL`) where it
//!   is new (temp files, records, runtime files), and every file it opens there is opened with
//!   `O_NOFOLLOW` and checked with `fstat` on the open descriptor: a planted symlink is never
//!   followed, and what is checked is what is read.
//! - A token file (`token`, `host-token`, `--token-file`) is refused when it is not ours or
//!   is writable by group or others; one readable by others is only warned about.
//!
//! Windows: the default data directory lies in the user's profile (`%APPDATA%`), whose ACL
//! admits only the user, SYSTEM and Administrators, and files created there inherit it. The
//! owner and ACL checks above are not made on Windows (reading an owner SID and comparing
//! ACLs needs the security API for every path); a `--data-dir` on a shared volume is
//! trusted as given there. That is the documented gap.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::{self, DataLayout};

/// What to do about an untrusted part of the data directory.
pub const DATA_DIR_FIX: &str = "another user could plant tokens or programs there; make it yours and private (chown it to yourself, chmod 700 for a directory or 600 for a file) or choose another --data-dir";

/// What to do about an untrusted `--token-file`.
pub const TOKEN_FILE_FIX: &str = "another user could replace the token; make it yours and chmod 600 it, or pass another --token-file";

/// What is wrong with a path, by the rules of this module; `None` when it is trusted.
///
/// `meta` must come from `lstat` (or `fstat` of a descriptor opened with `O_NOFOLLOW`), so
/// that a symbolic link is seen as one.
pub fn problem(meta: &Metadata, want_dir: bool) -> Option<String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if want_dir && !kind.is_dir() {
        return Some("it is not a directory".into());
    }
    if !want_dir && !kind.is_file() {
        return Some("it is not a regular file".into());
    }
    owner_problem(meta)
}

#[cfg(unix)]
fn owner_problem(meta: &Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "it is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {mode:o})",
            match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            }
        ));
    }
    None
}

#[cfg(not(unix))]
fn owner_problem(_meta: &Metadata) -> Option<String> {
    None
}

/// The effective uid of this process.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn untrusted(what: &str, path: &Path, problem: String, fix: &str) -> Error {
    Error::Untrusted {
        what: what.into(),
        path: path.to_path_buf(),
        problem,
        fix: fix.into(),
    }
}

/// Checks an existing path with `lstat`; a missing one is fine (`Ok(false)`).
pub fn check_path(path: &Path, what: &str, want_dir: bool, fix: &str) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("inspect {}", path.display()), e)),
    };
    match problem(&meta, want_dir) {
        None => Ok(true),
        Some(problem) => Err(untrusted(what, path, problem, fix)),
    }
}

/// Checks the data directory itself: like [`check_path`], except that the path may be a
/// symbolic link of ours (see the module docs), whose target is then checked.
pub fn check_data_dir(dir: &Path) -> Result<bool> {
    const WHAT: &str = "the data directory";
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("inspect {}", dir.display()), e)),
    };
    if meta.file_type().is_symlink() {
        // The link's own owner: who decided where our data goes.
        if let Some(problem) = owner_problem(&meta).filter(|p| p.starts_with("it is owned")) {
            return Err(untrusted(
                WHAT,
                dir,
                format!("it is a symbolic link made by someone else ({problem})"),
                DATA_DIR_FIX,
            ));
        }
        let target = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("follow the link {}", dir.display()), e))?;
        return match problem(&target, true) {
            None => Ok(true),
            Some(problem) => Err(untrusted(
                WHAT,
                dir,
                format!("its link target {problem}"),
                DATA_DIR_FIX,
            )),
        };
    }
    match problem(&meta, true) {
        None => Ok(true),
        Some(problem) => Err(untrusted(WHAT, dir, problem, DATA_DIR_FIX)),
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist; an existing
/// directory is left as it is (check it with [`check_path`]).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    set_mode(dir, 0o700)
}

/// Creates the new directory `dir` (its parent must exist; fails if anything is at `dir`,
/// a symbolic link included), mode 0700.
pub fn create_new_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    set_mode(dir, 0o700)
}

/// Sets a mode explicitly, whatever the umask did (a no-op on Windows).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Adds "never follow a symbolic link in the last component" to `options` (`O_NOFOLLOW`;
/// opening a link then fails with `ELOOP`). Windows has no equivalent flag that still opens
/// regular files normally; there, exclusive creation is what protects new files.
pub fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(options, libc::O_NOFOLLOW);
    options
}

/// Options for a new private file: write-only, created exclusively (fails on anything
/// already there, a symbolic link included), mode 0600, links not followed.
pub fn new_private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    no_follow(&mut options);
    options
}

/// Creates `path` exclusively with [`new_private_file`] and then sets `mode` on the open
/// file (so the umask does not decide it).
pub fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    let file = new_private_file().open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(file)
}

/// Writes `bytes` to `path`, readable by the owner only: an exclusively created temp file
/// beside it (mode 0600, never through a link, a fresh random name), fsynced, then renamed
/// over `path` (creating its directory 0700 if needed). A reader sees the old content or the
/// new, never half of it, and a link planted at `path` is replaced, never followed.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = temp_path_beside(path);
    let write = || -> io::Result<()> {
        let mut file = create_new_file(&tmp, 0o600)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // rename replaces whatever is at `path`, a link included, and never follows it.
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|e| {
        // Only ever our own temp file: a name that was taken made the create fail first.
        if e.kind() != io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&tmp);
        }
    })
}

/// Whether an open error means "a symbolic link was there" (`O_NOFOLLOW`'s `ELOOP`).
pub fn is_symlink_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Checks an open file (`fstat`): the checked object is the one that will be read.
pub fn check_open_file(file: &File, path: &Path, what: &str, fix: &str) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("inspect {}", path.display()), e))?;
    match problem(&meta, false) {
        None => Ok(()),
        Some(problem) => Err(untrusted(what, path, problem, fix)),
    }
}

/// Opens an existing file of the data directory for reading without following a link, and
/// checks it is trusted; `Ok(None)` when there is none.
pub fn open_trusted(path: &Path, what: &str) -> Result<Option<File>> {
    let mut options = OpenOptions::new();
    options.read(true);
    no_follow(&mut options);
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if is_symlink_error(&e) => {
            return Err(untrusted(
                what,
                path,
                "it is a symbolic link".into(),
                DATA_DIR_FIX,
            ));
        }
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    check_open_file(&file, path, what, DATA_DIR_FIX)?;
    Ok(Some(file))
}

/// Makes sure the data directory exists (when `create`; mode 0700) and that it, and every
/// part of it the server trusts and that already exists, is ours: the directory, `runtime/`,
/// `runtime/.locks/`, `logs/`, `run/` and the sidecar records in it. Runtime directories
/// and token files are checked where they are used (`install`, `serve::token`).
pub fn secure_data_dir(layout: &DataLayout, create: bool) -> Result<()> {
    let data_dir = &layout.data_dir;
    if create && std::fs::symlink_metadata(data_dir).is_err() {
        create_private_dir(data_dir)
            .map_err(|e| Error::io(format!("create {}", data_dir.display()), e))?;
    }
    if !check_data_dir(data_dir)? {
        return Ok(());
    }
    let dirs = [
        (layout.runtime_root.clone(), "the runtime directory root"),
        (
            layout.runtime_root.join(layout::LOCKS_DIR),
            "the lock directory",
        ),
        (layout.logs_dir(), "the log directory"),
        (layout.run_dir(), "the sidecar record directory"),
    ];
    for (dir, what) in &dirs {
        check_path(dir, what, true, DATA_DIR_FIX)?;
    }
    check_records(&layout.run_dir())
}

/// Every entry of `run/` must be ours: a record tells the next start which processes to
/// stop, so a planted one could make it stop any process of ours.
fn check_records(run_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("list {}", run_dir.display()), e)),
    };
    for entry in entries.flatten() {
        check_path(&entry.path(), "the sidecar record", false, DATA_DIR_FIX)?;
    }
    Ok(())
}

/// A fresh name for a temp file beside `path`: `.<name>.tmp-<pid>-<random>`.
pub fn temp_path_beside(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// The tests that hand a file to another user need root; as anyone else they say so and
    /// check nothing.
    fn root() -> bool {
        if current_uid() == 0 {
            return true;
        }
        eprintln!("skipped: needs root to give a file to another uid (CI runs as root)");
        false
    }

    /// To uid 65534: the link itself, never its target.
    fn give_away(path: &Path) {
        std::os::unix::fs::lchown(path, Some(65534), Some(65534)).unwrap();
    }

    fn layout(dir: &Path) -> DataLayout {
        DataLayout::resolve(Some(dir.to_path_buf())).unwrap()
    }

    fn refusal(result: Result<impl std::fmt::Debug>) -> String {
        let err = result.expect_err("expected a refusal");
        assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
        err.to_string()
    }

    #[test]
    fn a_new_data_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("a/b/data");
        secure_data_dir(&layout(&data), true).unwrap();
        // (The test process's umask is 022: a plain create_dir_all would make 0755.)
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Without `create`, a missing data dir is no error and is not made.
        let other = tmp.path().join("other");
        secure_data_dir(&layout(&other), false).unwrap();
        assert!(!other.exists());
    }

    #[test]
    fn a_data_dir_writable_by_others_or_group_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for (bits, says) in [
            (0o777, "group and others"),
            (0o770, "its group"),
            (0o703, "others"),
        ] {
            set_mode(&data, bits).unwrap();
            let message = refusal(secure_data_dir(&layout(&data), true));
            assert!(message.contains(says), "{message}");
            assert!(message.contains("--data-dir"), "{message}");
            assert!(message.contains("chmod 700"), "{message}");
        }
        set_mode(&data, 0o755).unwrap();
        secure_data_dir(&layout(&data), true).unwrap();
        // A subdirectory the server trusts is held to the same rule.
        std::fs::create_dir(data.join("run")).unwrap();
        set_mode(&data.join("run"), 0o777).unwrap();
        let message = refusal(secure_data_dir(&layout(&data), true));
        assert!(message.contains("record directory"), "{message}");
    }

    #[test]
    fn a_data_dir_link_is_followed_only_when_it_is_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        set_mode(&real, 0o700).unwrap();
        let link = tmp.path().join("data");
        symlink(&real, &link).unwrap();
        secure_data_dir(&layout(&link), true).unwrap();
        // Our link to an open directory: the target is what counts.
        set_mode(&real, 0o777).unwrap();
        let message = refusal(secure_data_dir(&layout(&link), true));
        assert!(message.contains("link target"), "{message}");
        set_mode(&real, 0o700).unwrap();
        if !root() {
            return;
        }
        // Someone else's link, even to a directory of ours, decides nothing.
        give_away(&link);
        let message = refusal(secure_data_dir(&layout(&link), true));
        assert!(message.contains("made by someone else"), "{message}");
    }

    #[test]
    fn parts_owned_by_another_uid_are_refused() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        create_private_dir(&data).unwrap();
        give_away(&data);
        let message = refusal(secure_data_dir(&layout(&data), true));
        assert!(message.contains("owned by uid 65534"), "{message}");

        let data = tmp.path().join("data2");
        create_private_dir(&data.join("run")).unwrap();
        std::fs::write(data.join("run/4000001.json"), b"{}").unwrap();
        set_mode(&data.join("run/4000001.json"), 0o600).unwrap();
        secure_data_dir(&layout(&data), true).unwrap();
        give_away(&data.join("run/4000001.json"));
        let message = refusal(secure_data_dir(&layout(&data), true));
        assert!(message.contains("sidecar record"), "{message}");
        assert!(message.contains("65534"), "{message}");
    }

    #[test]
    fn a_symlink_is_refused_where_a_directory_or_file_belongs() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        create_private_dir(&data).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        create_private_dir(&elsewhere).unwrap();
        symlink(&elsewhere, data.join("logs")).unwrap();
        let message = refusal(secure_data_dir(&layout(&data), true));
        assert!(message.contains("symbolic link"), "{message}");
        std::fs::remove_file(data.join("logs")).unwrap();

        let target = elsewhere.join("secret");
        std::fs::write(&target, b"not a token").unwrap();
        symlink(&target, data.join("token")).unwrap();
        let message = refusal(open_trusted(&data.join("token"), "the token file"));
        assert!(message.contains("symbolic link"), "{message}");
        assert!(open_trusted(&data.join("missing"), "x").unwrap().is_none());
    }

    #[test]
    fn new_files_are_exclusive_private_and_never_follow_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let planted = tmp.path().join("planted");
        symlink(&outside, &planted).unwrap();
        // A dangling link: O_CREAT alone would create `outside` through it.
        let err = create_new_file(&planted, 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(!outside.exists(), "the link was followed");
        // A link to an existing file: neither truncated nor written.
        std::fs::write(&outside, b"keep me").unwrap();
        assert!(create_new_file(&planted, 0o600).is_err());
        let mut options = OpenOptions::new();
        options.write(true).truncate(true);
        let err = no_follow(&mut options).open(&planted).unwrap_err();
        assert!(is_symlink_error(&err), "{err}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");

        // Created 0600, then given its mode explicitly.
        create_new_file(&tmp.path().join("exe"), 0o755).unwrap();
        assert_eq!(mode(&tmp.path().join("exe")), 0o755, "the mode is explicit");
        create_new_file(&tmp.path().join("private"), 0o600).unwrap();
        assert_eq!(mode(&tmp.path().join("private")), 0o600);
        let temp = temp_path_beside(&tmp.path().join("token"));
        assert_ne!(temp, temp_path_beside(&tmp.path().join("token")));
        assert!(
            temp.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".token.tmp-")
        );
    }
}
