//! The fetch cache: one immutable directory per sidecar, target and version.
//!
//! ```text
//! <cache_root>/<sidecar>/<target>/
//!     v<version>/<file>          the executable (opencode, opencode.exe)
//!     v<version>/fetch.json      its record: source, integrity, sha256, size, and
//!                                [`Provenance`]: verified, assetSha256
//!     .v<version>.lock           OS file lock serialising fetches of this entry
//!     .tmp-v<version>-XXXXXX/    staging directory of a fetch in progress
//! ```
//!
//! An entry is built completely in a staging directory and renamed into place, so it
//! appears with both files or not at all, and a failed or interrupted fetch leaves nothing
//! but a staging directory that the next fetch of that entry removes. Readers verify the
//! executable against the record's SHA-256 (cheap next to a download, and it catches a
//! damaged disk or a hand-edited file); they need no lock because entries never change
//! once renamed into place: a damaged one is removed under the lock and fetched again.
//!
//! There is one entry per target and version whatever the source (npm, GitHub, a mirror,
//! a local file), because the packer wants "opencode 1.18.32 for linux-x64" and not a
//! source. The record says where the entry came from and whether anything vouched for it;
//! a request only takes an entry from its own source that satisfies its pins (see the
//! `fetch` module). An entry that does not do is replaced by an atomic swap
//! ([`Entry::commit`]) once the new download has verified, so it is never lost to a
//! download that fails.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Result, io_err};

/// Version of the [`CacheRecord`] layout.
const RECORD_VERSION: u32 = 1;
/// The record's file name inside an entry.
pub const RECORD_FILE: &str = "fetch.json";

/// What the cache knows about an executable it holds (`fetch.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRecord {
    /// Layout version of this record.
    pub record_version: u32,
    /// Target name.
    pub target: String,
    /// Version, without a leading `v`.
    pub version: String,
    /// Where it came from: `npm:<package>@<version>`, `github:v<version>/<asset>`,
    /// `url:<url>` or `file:<file name>`.
    pub source: String,
    /// The downloaded file's Subresource Integrity: as published for npm
    /// (`sha512-<base64>`), computed for the other sources (`sha256-<base64>`).
    pub integrity: String,
    /// The executable's file name inside the entry.
    pub file: String,
    /// Lower-case hex SHA-256 of the executable.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Size of the downloaded tarball, for comparing payload sizes with what the registry
    /// ships (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tarball_size: Option<u64>,
}

/// How far a record's content can be trusted: kept in the same `fetch.json` as the
/// [`CacheRecord`], as fields of their own so that records of builds and npm downloads
/// (which never carry them) read as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// Whether a published integrity or a pin vouched for the content; `false` only for
    /// downloads accepted with `--allow-unverified` and unpinned local files.
    #[serde(default = "verified_by_default")]
    pub verified: bool,
    /// Lower-case hex SHA-256 of the file downloaded or given (the archive, or the
    /// executable itself when it came bare); absent for npm, whose `integrity` names the
    /// tarball.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_sha256: Option<String>,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            verified: true,
            asset_sha256: None,
        }
    }
}

fn verified_by_default() -> bool {
    true
}

/// An entry's state.
pub(crate) enum State {
    /// Not there.
    Missing,
    /// There, and the executable matches its record.
    Valid(CacheRecord, Provenance),
    /// There, but damaged.
    Corrupt(String),
}

/// One cache entry's paths.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub target_dir: PathBuf,
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub version: String,
    pub file: String,
    pub target: String,
}

impl Entry {
    pub(crate) fn new(
        cache_root: &Path,
        sidecar: &str,
        target: &str,
        version: &str,
        file: &str,
    ) -> Self {
        let target_dir = cache_root.join(sidecar).join(target);
        let dir = target_dir.join(format!("v{version}"));
        Entry {
            binary: dir.join(file),
            dir,
            target_dir,
            version: version.to_owned(),
            file: file.to_owned(),
            target: target.to_owned(),
        }
    }

    /// Verifies the entry against its record; whether the record suits a request is the
    /// caller's question.
    pub(crate) fn inspect(&self) -> Result<State> {
        let record_path = self.dir.join(RECORD_FILE);
        let text = match fs_err::read_to_string(&record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.dir.exists() => {
                return Ok(State::Missing);
            }
            Err(e) => return Ok(State::Corrupt(format!("unreadable record: {e}"))),
        };
        let record: CacheRecord = match serde_json::from_str(&text) {
            Ok(record) => record,
            Err(e) => return Ok(State::Corrupt(format!("unparsable {RECORD_FILE}: {e}"))),
        };
        let expected = (
            RECORD_VERSION,
            self.target.as_str(),
            self.version.as_str(),
            self.file.as_str(),
        );
        let found = (
            record.record_version,
            &*record.target,
            &*record.version,
            &*record.file,
        );
        if expected != found {
            return Ok(State::Corrupt(format!(
                "the record describes {found:?}, expected {expected:?}"
            )));
        }
        let (sha256, size) = match sha256_file(&self.binary) {
            Ok(hash) => hash,
            Err(e) => return Ok(State::Corrupt(format!("unreadable executable: {e}"))),
        };
        if size != record.size || sha256 != record.sha256 {
            return Ok(State::Corrupt(format!(
                "{} has sha256 {sha256} and {size} bytes, the record says {} and {} bytes",
                self.file, record.sha256, record.size
            )));
        }
        let provenance = serde_json::from_str(&text).unwrap_or_default();
        Ok(State::Valid(record, provenance))
    }

    /// Takes the entry's lock, waiting for another process's fetch to finish. File systems
    /// without locks are tolerated: staging + rename keeps the entry consistent anyway.
    pub(crate) fn lock(&self) -> Result<Option<fs_err::File>> {
        fs_err::create_dir_all(&self.target_dir)?;
        let path = self.target_dir.join(format!(".v{}.lock", self.version));
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.file().lock() {
            Ok(()) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(None),
            Err(e) => Err(io_err("lock", path)(e)),
        }
    }

    /// Removes the entry (under the lock).
    pub(crate) fn remove(&self) -> Result<()> {
        match fs_err::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes staging directories of this entry left by interrupted fetches. Only called
    /// under the lock, when no other fetch of this entry can be running.
    pub(crate) fn remove_stale_staging(&self) {
        remove_dirs_with_prefix(&self.target_dir, &self.staging_prefix());
    }

    /// A fresh staging directory, removed when dropped unless committed.
    pub(crate) fn staging(&self) -> Result<tempfile::TempDir> {
        fs_err::create_dir_all(&self.target_dir)?;
        tempfile::Builder::new()
            .prefix(&self.staging_prefix())
            .tempdir_in(&self.target_dir)
            .map_err(io_err("create a staging directory in", &self.target_dir))
    }

    /// Writes the record and its provenance into `staging` and renames it into place as
    /// the entry, swapping out an existing entry (under the lock) so that there is always
    /// a complete one.
    pub(crate) fn commit(
        &self,
        staging: tempfile::TempDir,
        record: &CacheRecord,
        provenance: &Provenance,
    ) -> Result<()> {
        let mut value = serde_json::to_value(record).expect("records serialise");
        if let (Some(map), serde_json::Value::Object(extra)) = (
            value.as_object_mut(),
            serde_json::to_value(provenance).expect("provenance serialises"),
        ) {
            map.extend(extra);
        }
        // Without a working lock another process may have won the race: its entry is as
        // good as ours if it verifies and came from the same place.
        self.commit_record(staging, RECORD_FILE, &value, || {
            Ok(matches!(self.inspect()?, State::Valid(r, _) if r.source == record.source))
        })
    }

    /// Writes `record` as `record_file` into `staging` (whose other files the caller has
    /// made durable) and renames it into place as the entry, swapping out an existing entry
    /// (under the lock) so that there is always a complete one. When the final rename
    /// fails, `already_there` says whether an entry another process put there meanwhile
    /// will do.
    pub(crate) fn commit_record(
        &self,
        staging: tempfile::TempDir,
        record_file: &str,
        record: &impl serde::Serialize,
        already_there: impl FnOnce() -> Result<bool>,
    ) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(record).expect("records serialise");
        json.push(b'\n');
        let mut file = fs_err::File::create(staging.path().join(record_file))?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        // Make the entry directory's contents durable before it becomes visible.
        sync_dir(staging.path());
        // Named like staging so that an interrupted swap is cleaned up like one.
        let aside = if self.dir.exists() {
            let aside = self.staging()?.keep();
            fs_err::rename(&self.dir, aside.join("old"))?;
            Some(aside)
        } else {
            None
        };
        let staged = staging.keep();
        if let Err(e) = fs_err::rename(&staged, &self.dir) {
            let _ = fs_err::remove_dir_all(&staged);
            if let Some(aside) = &aside {
                let _ = fs_err::rename(aside.join("old"), &self.dir);
                let _ = fs_err::remove_dir_all(aside);
            }
            if already_there()? {
                return Ok(());
            }
            return Err(e.into());
        }
        sync_dir(&self.target_dir);
        if let Some(aside) = aside {
            let _ = fs_err::remove_dir_all(aside);
        }
        Ok(())
    }

    fn staging_prefix(&self) -> String {
        format!(".tmp-v{}-", self.version)
    }
}

/// Removes every directory in `dir` whose name starts with `prefix` (abandoned staging
/// directories of a cache entry; the caller holds the entry's lock).
pub(crate) fn remove_dirs_with_prefix(dir: &Path, prefix: &str) {
    let Ok(read_dir) = fs_err::read_dir(dir) else {
        return;
    };
    for dirent in read_dir.flatten() {
        if dirent
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(prefix))
        {
            let _ = fs_err::remove_dir_all(dirent.path());
        }
    }
}

/// fsyncs a directory so renames into it survive a crash (a no-op where that is not possible).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = fs_err::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Hex SHA-256 and size of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = fs_err::File::open(path)?;
    let mut writer = Sha256Writer::new(io::sink());
    io::copy(&mut file, &mut writer).map_err(io_err("read", path))?;
    let (_, sha256, size) = writer.finish();
    Ok((sha256, size))
}

/// A new file at `dest` behind a large buffer and a hasher: where an executable is
/// extracted to. [`finish_executable`] completes it.
pub(crate) fn create_executable(dest: &Path) -> Result<Sha256Writer<io::BufWriter<fs_err::File>>> {
    let out = fs_err::File::create(dest)?;
    Ok(Sha256Writer::new(io::BufWriter::with_capacity(
        1 << 20,
        out,
    )))
}

/// Flushes and fsyncs what was written through `writer` to `dest` and makes it executable;
/// returns its hex SHA-256 and size.
pub(crate) fn finish_executable(
    writer: Sha256Writer<io::BufWriter<fs_err::File>>,
    dest: &Path,
) -> Result<(String, u64)> {
    let (out, sha256, size) = writer.finish();
    let out = out
        .into_inner()
        .map_err(|e| io_err("write", dest)(e.into_error()))?;
    out.sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((sha256, size))
}

/// Passes bytes through to `inner` while hashing and counting them.
pub(crate) struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub(crate) fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the lower-case hex SHA-256 and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(entry: &Entry, sha256: String, size: u64) -> CacheRecord {
        CacheRecord {
            record_version: RECORD_VERSION,
            target: entry.target.clone(),
            version: entry.version.clone(),
            source: "npm:pkg@1.0.0".into(),
            integrity: "sha512-x".into(),
            file: entry.file.clone(),
            sha256,
            size,
            tarball_size: None,
        }
    }

    #[test]
    fn commit_then_check_then_detect_damage() {
        let root = tempfile::tempdir().unwrap();
        let entry = Entry::new(root.path(), "opencode", "linux-x64", "1.0.0", "opencode");
        assert!(matches!(entry.inspect().unwrap(), State::Missing));

        let _lock = entry.lock().unwrap();
        let staging = entry.staging().unwrap();
        fs_err::write(staging.path().join("opencode"), b"binary").unwrap();
        let (sha, size) = sha256_file(&staging.path().join("opencode")).unwrap();
        let rec = record(&entry, sha, size);
        entry.commit(staging, &rec, &Provenance::default()).unwrap();
        assert!(
            matches!(entry.inspect().unwrap(), State::Valid(r, p) if r == rec && p == Provenance::default())
        );

        // A second commit swaps the entry and leaves nothing aside.
        let staging = entry.staging().unwrap();
        fs_err::write(staging.path().join("opencode"), b"binary2").unwrap();
        let (sha, size) = sha256_file(&staging.path().join("opencode")).unwrap();
        let rec = record(&entry, sha, size);
        entry.commit(staging, &rec, &Provenance::default()).unwrap();
        assert!(
            matches!(entry.inspect().unwrap(), State::Valid(r, p) if r == rec && p == Provenance::default())
        );
        let names: Vec<_> = fs_err::read_dir(&entry.target_dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(names, ["v1.0.0"]);
        fs_err::write(&entry.binary, b"binary").unwrap();

        fs_err::write(&entry.binary, b"binarY").unwrap();
        let State::Corrupt(detail) = entry.inspect().unwrap() else {
            panic!("damage not seen")
        };
        assert!(detail.contains("the record says"), "{detail}");
        entry.remove().unwrap();
        assert!(matches!(entry.inspect().unwrap(), State::Missing));
    }

    #[test]
    fn stale_staging_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let entry = Entry::new(root.path(), "opencode", "linux-x64", "1.0.0", "opencode");
        let other = Entry::new(root.path(), "opencode", "linux-x64", "1.0.1", "opencode");
        let stale = entry.staging().unwrap().keep();
        let unrelated = other.staging().unwrap().keep();
        entry.remove_stale_staging();
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }
}
