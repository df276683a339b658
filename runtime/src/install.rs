//! Making a runtime directory exist, complete and verified, from a payload source.
//!
//! The protocol (see docs/RUNTIME.md):
//!
//! - **Warm start**, lock-free: take a shared lease on `<dir>/.lease`, then check the stamp
//!   (one `stat` per file). With `--verify full`, rehash every file too.
//! - **First start or damage**: take the runtime's exclusive extraction lock (waiting, with a
//!   message, up to the timeout), check again under the lock (another process may have just
//!   finished), remove abandoned temp dirs of this runtime, move a damaged directory aside,
//!   extract into a fresh temp dir (streaming decode, inline hashing, every file checked
//!   against the manifest, files fsynced), write `manifest.json`, `.lease` and the stamp
//!   last, fsync the directories, rename the temp dir into place and fsync the parent.
//!
//! A process killed at any point leaves either no directory (only temp litter, removed by
//! the next extraction or GC) or a complete, stamped one: nothing partial is ever used.
//!
//! A runtime directory is run only when it is ours ([`crate::trust`]): the directory, every
//! directory and file the stamp covers, the stamp and the lease must be owned by this user
//! (or root), be no symbolic links, and not be writable by group or others; otherwise the
//! start is refused (exit 15). A planted directory with a forged stamp (which anyone can
//! write: it records only sizes, times and inode numbers) is therefore never run. New
//! runtime directories are 0700 and their own files 0644, set explicitly.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openwork_payload::archive;
use openwork_payload::manifest::MANIFEST_FILE_NAME;

use crate::error::{Error, Result, is_out_of_space};
use crate::layout::{
    self, DataLayout, LEASE_FILE, LOCKS_DIR, STAMP_FILE, TMP_PREFIX, TRASH_PREFIX,
};
use crate::lock::{self, Lease};
use crate::source::PayloadSource;
use crate::stamp::Stamp;
use crate::trust::{self, DATA_DIR_FIX};

/// How much a warm start checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// Stamp only: size, mtime and identity of every file.
    #[default]
    Fast,
    /// Stamp and a SHA-256 of every file.
    Full,
}

/// Options for [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// How much a warm start checks.
    pub verify: VerifyMode,
    /// How long to wait for another process's extraction.
    pub lock_timeout: Duration,
    /// The server version that keys the directory.
    pub server_version: String,
}

/// A runtime directory in use by this process.
#[derive(Debug)]
pub struct PreparedRuntime {
    /// The runtime directory.
    pub dir: PathBuf,
    /// Its key (directory name).
    pub key: String,
    /// Whether this call extracted it (false: it was already there).
    pub extracted: bool,
    /// Held for as long as this value lives.
    _lease: Lease,
}

/// Ensures the runtime for `source` exists and is intact, and leases it.
pub fn prepare(
    source: &PayloadSource,
    layout: &DataLayout,
    options: &PrepareOptions,
) -> Result<PreparedRuntime> {
    let key = DataLayout::runtime_key(&options.server_version, &source.digest);
    let dir = layout.runtime_dir(&key);
    trust::check_path(&dir, "the runtime directory", true, DATA_DIR_FIX)?;
    if let Some(lease) = try_warm(source, &dir, options.verify)? {
        return Ok(PreparedRuntime {
            dir,
            key,
            extracted: false,
            _lease: lease,
        });
    }

    trust::create_private_dir(&layout.runtime_root.join(LOCKS_DIR))
        .map_err(|e| Error::io(format!("create {}", layout.runtime_root.display()), e))?;
    let lock_path = layout.lock_file(&key);
    let _lock = lock::lock_exclusive(
        &lock_path,
        options.lock_timeout,
        "to finish extracting this runtime",
    )?;
    if let Some(lease) = try_warm(source, &dir, options.verify)? {
        return Ok(PreparedRuntime {
            dir,
            key,
            extracted: false,
            _lease: lease,
        });
    }

    layout.remove_scratch_dirs(TMP_PREFIX, Some(&key));
    if fs::symlink_metadata(&dir).is_ok() {
        let reason = damage_reason(source, &dir);
        tracing::warn!(dir = %dir.display(), %reason, "runtime directory is damaged; replacing it");
        move_aside(layout, &key, &dir)?;
    }

    let tmp = layout.scratch_dir(TMP_PREFIX, &key);
    let started = std::time::Instant::now();
    if let Err(e) = extract_into(source, &tmp, layout) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &dir).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        Error::io(format!("rename {} to {}", tmp.display(), dir.display()), e)
    })?;
    layout::fsync_dir(&layout.runtime_root)
        .map_err(|e| Error::io(format!("flush {}", layout.runtime_root.display()), e))?;
    tracing::info!(
        dir = %dir.display(),
        files = source.manifest.files.len(),
        bytes = source.manifest.total_size(),
        ms = started.elapsed().as_millis() as u64,
        "runtime extracted"
    );
    let lease =
        Lease::acquire(&dir.join(LEASE_FILE))?.ok_or_else(|| Error::NotExtracted(dir.clone()))?;
    Ok(PreparedRuntime {
        dir,
        key,
        extracted: true,
        _lease: lease,
    })
}

/// [`prepare`], and when that extracted a new runtime — the moment older ones may have
/// become garbage — collect them ([`crate::gc`]; a failure there is only logged: the new
/// runtime is fine).
pub fn prepare_and_collect(
    source: &PayloadSource,
    layout: &DataLayout,
    options: &PrepareOptions,
) -> Result<PreparedRuntime> {
    let prepared = prepare(source, layout, options)?;
    if prepared.extracted
        && let Err(e) = crate::gc::collect(layout, Some(&prepared.key))
    {
        tracing::warn!(error = %e, "garbage collection of old runtimes failed");
    }
    Ok(prepared)
}

/// Leases `dir` if it is complete and matches `source`.
fn try_warm(source: &PayloadSource, dir: &Path, verify: VerifyMode) -> Result<Option<Lease>> {
    let Some(lease) = Lease::acquire(&dir.join(LEASE_FILE))? else {
        return Ok(None);
    };
    let Some(stamp) = Stamp::read(dir) else {
        return Ok(None);
    };
    if let Err(reason) = stamp.check(dir, &source.manifest, &source.digest) {
        tracing::debug!(dir = %dir.display(), %reason, "stamp check failed");
        return Ok(None);
    }
    check_owned_tree(source, dir)?;
    if verify == VerifyMode::Full
        && let Err(e) = verify_files(source, dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "full verification failed");
        return Ok(None);
    }
    Ok(Some(lease))
}

/// Refuses a runtime directory any part of which is not ours (see the module docs): the
/// stamp proves completeness, not who wrote it.
pub fn check_owned_tree(source: &PayloadSource, dir: &Path) -> Result<()> {
    let what = "the runtime directory's";
    let mut checked = std::collections::BTreeSet::new();
    trust::check_path(dir, "the runtime directory", true, DATA_DIR_FIX)?;
    let files = [MANIFEST_FILE_NAME, STAMP_FILE, LEASE_FILE]
        .into_iter()
        .map(|name| dir.join(name))
        .chain(source.manifest.files.values().map(|e| e.path_in(dir)));
    for file in files {
        for parent in file.ancestors().skip(1).take_while(|d| *d != dir) {
            if checked.insert(parent.to_path_buf()) {
                trust::check_path(parent, &format!("{what} subdirectory"), true, DATA_DIR_FIX)?;
            }
        }
        trust::check_path(&file, &format!("{what} file"), false, DATA_DIR_FIX)?;
    }
    Ok(())
}

/// Rehashes every file of `dir` against the manifest.
pub fn verify_files(source: &PayloadSource, dir: &Path) -> Result<()> {
    let on_disk = fs::read(dir.join(MANIFEST_FILE_NAME)).map_err(|e| {
        Error::io(
            format!("read {}", dir.join(MANIFEST_FILE_NAME).display()),
            e,
        )
    })?;
    if on_disk != source.manifest_bytes {
        return Err(Error::Damaged {
            dir: dir.to_path_buf(),
            reason: "manifest.json differs from the payload's".into(),
        });
    }
    for entry in source.manifest.files.values() {
        archive::verify_file(entry, dir).map_err(|e| Error::Damaged {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Why `dir` did not pass the warm check, for the log.
fn damage_reason(source: &PayloadSource, dir: &Path) -> String {
    match Stamp::read(dir) {
        None => "no completion stamp".into(),
        Some(stamp) => match stamp.check(dir, &source.manifest, &source.digest) {
            Err(reason) => reason,
            Ok(()) => match verify_files(source, dir) {
                Err(e) => e.to_string(),
                Ok(()) => "lease file missing".into(),
            },
        },
    }
}

/// Renames `dir` to a trash name (atomic: no process can see it half-deleted), then
/// deletes it, best effort.
fn move_aside(layout: &DataLayout, key: &str, dir: &Path) -> Result<()> {
    let trash = layout.scratch_dir(TRASH_PREFIX, key);
    fs::rename(dir, &trash)
        .map_err(|e| Error::io(format!("move damaged {} aside", dir.display()), e))?;
    let _ = fs::remove_dir_all(&trash);
    Ok(())
}

/// Writes a complete runtime into the new directory `tmp`.
fn extract_into(source: &PayloadSource, tmp: &Path, layout: &DataLayout) -> Result<()> {
    let space = |context: String, e: std::io::Error| {
        if is_out_of_space(&e) {
            Error::DiskFull {
                context,
                data_dir: layout.data_dir.clone(),
            }
        } else {
            Error::io(context, e)
        }
    };
    let payload_error = |e: openwork_payload::Error| match e {
        openwork_payload::Error::Io { context, source } => space(context, source),
        other => Error::Payload(other),
    };
    trust::create_new_private_dir(tmp)
        .map_err(|e| space(format!("create {}", tmp.display()), e))?;
    match &source.embedded {
        Some(embedded) => {
            archive::extract(embedded.payload(), &embedded.trailer, &source.manifest, tmp)
                .map_err(payload_error)?;
        }
        None => {
            for entry in source.manifest.files.values() {
                let from = entry.path_in(&source.path);
                let mut file = fs::File::open(&from)
                    .map_err(|e| Error::io(format!("open bundle file {}", from.display()), e))?;
                archive::write_verified(&mut file, entry, tmp).map_err(payload_error)?;
            }
        }
    }
    let write_synced = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = tmp.join(name);
        let mut file = trust::create_new_file(&path, 0o644)
            .map_err(|e| space(format!("create {}", path.display()), e))?;
        std::io::Write::write_all(&mut file, bytes)
            .map_err(|e| space(format!("write {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| space(format!("flush {}", path.display()), e))
    };
    write_synced(MANIFEST_FILE_NAME, &source.manifest_bytes)?;
    write_synced(LEASE_FILE, b"")?;
    let stamp = Stamp::record(tmp, &source.manifest, &source.digest)
        .map_err(|e| Error::io(format!("stat files in {}", tmp.display()), e))?;
    write_synced(STAMP_FILE, &stamp.to_json())?;
    // Every directory the files went into, then the temp dir itself.
    let mut dirs: Vec<PathBuf> = source
        .manifest
        .files
        .values()
        .flat_map(|e| {
            let file = e.path_in(tmp);
            file.ancestors()
                .skip(1)
                .take_while(|d| d.starts_with(tmp))
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.reverse();
    for dir in dirs {
        // Made by the archive's writer with the umask's mode: 0700 like the runtime dir.
        trust::set_mode(&dir, 0o700)
            .map_err(|e| Error::io(format!("set mode of {}", dir.display()), e))?;
        layout::fsync_dir(&dir).map_err(|e| Error::io(format!("flush {}", dir.display()), e))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use openwork_payload::Manifest;
    use openwork_payload::manifest::{FileEntry, MANIFEST_VERSION};
    use sha2::Digest;

    use super::*;
    use crate::source::{self, SourceKind};

    /// A bundle directory with one sidecar, loaded as a source.
    fn bundle(dir: &Path) -> PayloadSource {
        let target = openwork_payload::targets::host_name().unwrap();
        let path = openwork_payload::targets::by_name(target)
            .unwrap()
            .sidecar_path("opencode");
        let bytes = b"#!/bin/sh\nexit 0\n";
        fs::create_dir_all(dir.join(&path).parent().unwrap()).unwrap();
        fs::write(dir.join(&path), bytes).unwrap();
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            server_version: "0.0.0-test".into(),
            opencode_version: "0.0.0".into(),
            router_version: None,
            target: target.into(),
            files: [(
                "opencode".to_string(),
                FileEntry {
                    path,
                    size: bytes.len() as u64,
                    sha256: hex::encode(sha2::Sha256::digest(bytes)),
                    mode: 0o755,
                },
            )]
            .into(),
        };
        fs::write(dir.join(MANIFEST_FILE_NAME), manifest.to_json()).unwrap();
        source::load_bundle(dir, SourceKind::BundleFlag).unwrap()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_runtime_dir_is_private_and_run_only_while_nobody_else_can_write_it() {
        let tmp = tempfile::tempdir().unwrap();
        let source = bundle(&tmp.path().join("bundle"));
        let layout = DataLayout::resolve(Some(tmp.path().join("data"))).unwrap();
        let options = PrepareOptions {
            verify: VerifyMode::Fast,
            lock_timeout: Duration::from_secs(1),
            server_version: "0.0.0-test".into(),
        };
        let prepared = prepare(&source, &layout, &options).unwrap();
        assert!(prepared.extracted);
        let dir = prepared.dir.clone();
        drop(prepared);
        let opencode = source.manifest.files["opencode"].path_in(&dir);
        let bin = opencode.parent().unwrap().to_path_buf();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&bin), 0o700);
        assert_eq!(mode(&opencode), 0o755);
        for name in [MANIFEST_FILE_NAME, LEASE_FILE, STAMP_FILE] {
            assert_eq!(mode(&dir.join(name)), 0o644, "{name}");
        }
        assert_eq!(mode(&layout.runtime_root), 0o700);
        assert_eq!(mode(&layout.runtime_root.join(LOCKS_DIR)), 0o700);

        // A chmod keeps size, mtime and inode: the stamp still matches, and only the
        // ownership check stands between a writable file and running it.
        let refused = |needle: &str| {
            let err = prepare(&source, &layout, &options).unwrap_err();
            assert_eq!(err.exit_code(), crate::ExitCode::Untrusted, "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        };
        for (path, bits, needle) in [
            (&opencode, 0o775, "the runtime directory's file"),
            (&dir.join(STAMP_FILE), 0o646, "the runtime directory's file"),
            (&bin, 0o770, "the runtime directory's subdirectory"),
            (&dir, 0o707, "refusing the runtime directory"),
        ] {
            let before = mode(path);
            chmod(path, bits);
            refused(needle);
            assert!(
                Stamp::read(&dir)
                    .unwrap()
                    .check(&dir, &source.manifest, &source.digest)
                    .is_ok()
            );
            chmod(path, before);
        }
        // A link in the runtime directory's place is not followed.
        let moved = tmp.path().join("moved");
        fs::rename(&dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        refused("symbolic link");
        fs::remove_file(&dir).unwrap();
        fs::rename(&moved, &dir).unwrap();
        let warm = prepare(&source, &layout, &options).unwrap();
        assert!(!warm.extracted, "intact and ours again: used as it is");
    }
}
