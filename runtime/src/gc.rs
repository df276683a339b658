//! Garbage collection of runtime directories.
//!
//! Keeps the newest [`KEEP_NEWEST`] runtimes (by completion time), the current one, and every
//! runtime a running process holds a lease on; removes the rest, and temp and trash
//! directories nobody is working in. A runtime is removed under its extraction lock and only
//! while an exclusive lock on its lease succeeds, by renaming it to a trash name first, so a
//! process starting at that moment either leases it before (and GC skips it) or finds it
//! gone (and extracts anew).
//!
//! A killed server's sidecar may still run from a runtime nobody leases any more (the
//! lease belonged to the server, not to the sidecar). So every collection first stops such
//! leftovers ([`crate::process::sweep_leftovers`]): removed first, the runtime would leave
//! the sidecar running from `.trash~…` or a deleted file, which no longer matches its record
//! and would be taken for a reused pid and left running.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::{self, DataLayout, LEASE_FILE, TMP_PREFIX, TRASH_PREFIX};
use crate::lock;
use crate::stamp::Stamp;

/// How many runtimes GC keeps regardless of use.
pub const KEEP_NEWEST: usize = 2;

/// What a GC run did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Runtime directories removed.
    pub removed: Vec<PathBuf>,
    /// Runtime directories kept because a process is using them.
    pub in_use: Vec<PathBuf>,
    /// Runtime directories kept as the newest or current ones.
    pub kept: Vec<PathBuf>,
    /// Abandoned temp and trash directories removed.
    pub scratch_removed: Vec<PathBuf>,
    /// Sidecars of killed servers found first (see the module docs), and what became of them.
    pub leftovers: Vec<String>,
}

/// Collects garbage under `layout`, never touching the runtime named `current`.
pub fn collect(layout: &DataLayout, current: Option<&str>) -> Result<GcReport> {
    let mut report = GcReport::default();
    if !layout.runtime_root.is_dir() {
        return Ok(report);
    }
    report.leftovers = stop_leftovers(layout);
    report.scratch_removed = layout.remove_scratch_dirs(TRASH_PREFIX, None);
    // Temp dirs are abandoned only if nobody holds their runtime's extraction lock.
    let mut tmp_keys: Vec<String> = read_names(layout)?
        .into_iter()
        .filter_map(|n| layout::scratch_key(&n, TMP_PREFIX).map(str::to_string))
        .collect();
    tmp_keys.sort();
    tmp_keys.dedup();
    for key in tmp_keys {
        if let Some(_lock) = lock::try_lock_exclusive(&layout.lock_file(&key))? {
            report
                .scratch_removed
                .extend(layout.remove_scratch_dirs(TMP_PREFIX, Some(&key)));
        }
    }

    let mut runtimes: Vec<(u64, String)> = read_names(layout)?
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter(|n| layout.runtime_dir(n).is_dir())
        .map(|n| {
            let completed = Stamp::read(&layout.runtime_dir(&n)).map_or(0, |s| s.completed_at_ms);
            (completed, n)
        })
        .collect();
    // Newest first; equal times by name, so the order is stable.
    runtimes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    for (index, (_, key)) in runtimes.iter().enumerate() {
        let dir = layout.runtime_dir(key);
        if index < KEEP_NEWEST || current == Some(key.as_str()) {
            report.kept.push(dir);
            continue;
        }
        let Some(_lock) = lock::try_lock_exclusive(&layout.lock_file(key))? else {
            report.in_use.push(dir);
            continue;
        };
        let lease_path = dir.join(LEASE_FILE);
        let mut no_follow = fs::OpenOptions::new();
        crate::trust::no_follow(no_follow.read(true));
        let lease = match no_follow.open(&lease_path) {
            Ok(file) => Some(file),
            // A link in the lease's place leases nothing: the runtime is broken anyway.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || crate::trust::is_symlink_error(&e) =>
            {
                None
            }
            Err(e) => return Err(Error::io(format!("open {}", lease_path.display()), e)),
        };
        if let Some(file) = &lease
            && file.try_lock().is_err()
        {
            report.in_use.push(dir);
            continue;
        }
        // Windows cannot rename a directory with an open file in it: let go of the lease
        // there first (a process that takes it in between makes the rename fail, and the
        // runtime is then simply kept).
        #[cfg(windows)]
        drop(lease);
        let trash = layout.scratch_dir(TRASH_PREFIX, key);
        if fs::rename(&dir, &trash).is_err() {
            report.in_use.push(dir);
            continue;
        }
        #[cfg(not(windows))]
        drop(lease);
        let _ = fs::remove_dir_all(&trash);
        // The lock file stays: deleting it while another process waits on it would let a
        // third create a new one and extract concurrently.
        report.removed.push(dir);
    }
    Ok(report)
}

/// Stops what killed servers left running, logging each one: the sweep every start makes
/// first, and every collection too (see the module docs). A failure is only logged.
pub fn stop_leftovers(layout: &DataLayout) -> Vec<String> {
    match crate::process::sweep_leftovers(&layout.run_dir()) {
        Ok(found) => found
            .into_iter()
            .map(|leftover| {
                if leftover.fate == crate::process::LeftoverFate::AlreadyGone {
                    tracing::debug!("recorded by a server that was killed: {leftover}");
                } else {
                    tracing::warn!("left behind by a server that was killed: {leftover}");
                }
                leftover.to_string()
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not check for sidecars left by a killed server");
            Vec::new()
        }
    }
}

fn read_names(layout: &DataLayout) -> Result<Vec<String>> {
    let entries = fs::read_dir(&layout.runtime_root)
        .map_err(|e| Error::io(format!("list {}", layout.runtime_root.display()), e))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}
