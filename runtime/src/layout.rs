//! The data directory's layout, defined in one place.
//!
//! ```text
//! <data dir>/                         --data-dir, OPENWORK_DATA_DIR, or <app data>/openwork-server-v2
//!   runtime/
//!     <version>-<digest16>/           one complete runtime: never modified once renamed here
//!       manifest.json
//!       bin/opencode, bin/opencode-router
//!       .lease                        shared-locked by every process running this runtime
//!       .stamp.json                   written last: size, mtime and file id of every file
//!     .locks/<version>-<digest16>.lock   exclusive while extracting or removing that runtime
//!     .tmp~<key>~<pid>-<nonce>/       an extraction in progress (or abandoned by a crash)
//!     .trash~<key>~<pid>-<nonce>/     a runtime being deleted
//!   logs/<sidecar>.log[.1 .. .N]      sidecar stdout/stderr, size-capped and rotated
//!   run/<server pid>.json             sidecars a running server started, locked while it runs:
//!                                     an unlocked record is a dead server's leftovers
//!   token                             the generated client token (0600), if none was given
//!   host-token                        the generated host token (0600), if none was given
//!   opencode-router.json              present = run opencode-router (its settings)
//!   tls/cert.pem, tls/key.pem         the self-signed certificate of remote access (key 0600)
//!   tls/succession.json               statements leading paired devices to a renewed certificate
//!   tls/next.json, tls/.lock          a replacement in progress; held while replacing
//!   devices.json                      paired devices: name, times, SHA-256 of their token (0600)
//!   server.json                       the running server's URL and certificate fingerprint,
//!                                     for local commands (`pair`); removed at stop (0600)
//! ```
//!
//! `<digest16>` is the first 16 hex digits of the manifest's SHA-256, which covers every
//! file's SHA-256: the same content always lands in the same directory, whatever the
//! compression or source (embedded or bundle), and different content never does.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the directory under the data dir that holds runtimes.
pub const RUNTIME_DIR_NAME: &str = "runtime";
/// Lease lock file inside a runtime directory.
pub const LEASE_FILE: &str = ".lease";
/// Completion stamp inside a runtime directory.
pub const STAMP_FILE: &str = ".stamp.json";
/// Directory of per-runtime extraction locks.
pub const LOCKS_DIR: &str = ".locks";
/// Prefix of temporary extraction directories.
pub const TMP_PREFIX: &str = ".tmp~";
/// Prefix of directories being deleted.
pub const TRASH_PREFIX: &str = ".trash~";

/// Directory of sidecar log files.
pub const LOGS_DIR: &str = "logs";
/// Directory of running servers' sidecar records.
pub const RUN_DIR: &str = "run";
/// The generated client token.
pub const TOKEN_FILE: &str = "token";
/// The generated host token.
pub const HOST_TOKEN_FILE: &str = "host-token";
/// The remembered active workspace (`{"directory": …}`, 0600).
pub const WORKSPACE_FILE: &str = "workspace.json";
/// opencode-router's configuration: when it exists, the router runs.
pub const ROUTER_CONFIG_FILE: &str = "opencode-router.json";

/// Directory of the generated TLS certificate and key.
pub const TLS_DIR: &str = "tls";
/// The generated certificate (PEM), in [`TLS_DIR`].
pub const TLS_CERT_FILE: &str = "cert.pem";
/// The generated certificate's private key (PEM, 0600), in [`TLS_DIR`].
pub const TLS_KEY_FILE: &str = "key.pem";
/// Statements signed by replaced certificates' keys, leading paired devices to the new one
/// (JSON), in [`TLS_DIR`].
pub const TLS_SUCCESSION_FILE: &str = "succession.json";
/// A replacement of the certificate and key that is decided but not yet in place (a crash
/// left it; JSON, 0600), in [`TLS_DIR`].
pub const TLS_NEXT_FILE: &str = "next.json";
/// Held while the certificate is replaced, in [`TLS_DIR`].
pub const TLS_LOCK_FILE: &str = ".lock";
/// Paired devices (never their tokens: SHA-256 digests only).
pub const DEVICES_FILE: &str = "devices.json";
/// Where the running server says how local commands reach it.
pub const SERVER_FILE: &str = "server.json";

/// Resolved paths for one data directory.
#[derive(Debug, Clone)]
pub struct DataLayout {
    /// The data directory.
    pub data_dir: PathBuf,
    /// `<data dir>/runtime`.
    pub runtime_root: PathBuf,
}

impl DataLayout {
    /// `<data dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join(LOGS_DIR)
    }

    /// `<data dir>/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join(RUN_DIR)
    }

    /// From `given` (`--data-dir` or `OPENWORK_DATA_DIR`, which the CLI reads), else the
    /// platform's app-data directory.
    pub fn resolve(given: Option<PathBuf>) -> Result<DataLayout> {
        let data_dir = match given {
            Some(dir) => dir,
            None => dirs::data_dir()
                .ok_or(Error::NoDataDir)?
                .join("openwork-server-v2"),
        };
        let data_dir = std::path::absolute(&data_dir)
            .map_err(|e| Error::io(format!("resolve {}", data_dir.display()), e))?;
        Ok(DataLayout {
            runtime_root: data_dir.join(RUNTIME_DIR_NAME),
            data_dir,
        })
    }

    /// The directory name for a server version and manifest digest.
    pub fn runtime_key(server_version: &str, digest: &str) -> String {
        format!("{server_version}-{}", &digest[..16.min(digest.len())])
    }

    /// `<runtime root>/<key>`.
    pub fn runtime_dir(&self, key: &str) -> PathBuf {
        self.runtime_root.join(key)
    }

    /// The extraction lock for `key`.
    pub fn lock_file(&self, key: &str) -> PathBuf {
        self.runtime_root
            .join(LOCKS_DIR)
            .join(format!("{key}.lock"))
    }

    /// A fresh, unique temporary or trash directory path for `key`.
    pub fn scratch_dir(&self, prefix: &str, key: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.runtime_root
            .join(format!("{prefix}{key}~{}-{nanos:08x}", std::process::id()))
    }

    /// Removes the scratch directories (see [`scratch_dir`](Self::scratch_dir)) with
    /// `prefix`, for one key or all; best effort. Returns what it removed.
    pub fn remove_scratch_dirs(&self, prefix: &str, only_key: Option<&str>) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.runtime_root) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(key) = scratch_key(name, prefix) else {
                continue;
            };
            if only_key.is_some_and(|k| k != key) {
                continue;
            }
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
        removed
    }
}

/// Parses a scratch directory name back into its key.
pub fn scratch_key<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .rsplit_once('~')
        .map(|(key, _)| key)
}

/// Flushes a directory's entries to disk (a no-op where directories cannot be opened).
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_round_trip() {
        let layout = DataLayout {
            data_dir: "/d".into(),
            runtime_root: "/d/runtime".into(),
        };
        let key = DataLayout::runtime_key("0.1.0-beta.1", &"ab".repeat(32));
        assert_eq!(key, "0.1.0-beta.1-abababababababab");
        let tmp = layout.scratch_dir(TMP_PREFIX, &key);
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(scratch_key(name, TMP_PREFIX), Some(key.as_str()));
        assert_eq!(scratch_key(name, TRASH_PREFIX), None);
    }
}
