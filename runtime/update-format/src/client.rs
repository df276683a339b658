//! The client's checks, in the order of TUF 1.0 §5 ("detailed client workflow").
//!
//! [`TrustedState`] holds the metadata a client trusts. Each `update_*` method takes the
//! bytes of one role file, runs every check on them, and only then replaces the trusted
//! copy: a file that fails any check changes nothing, and the caller persists a role only
//! after its method returned `Ok` ([`TrustedState::refresh`] does exactly that). Two known
//! client bugs are the reason for that order: go-tuf CVE-2022-29173 (rollback checks
//! missing for non-root roles: here every role's version is checked against the trusted
//! one) and tough CVE-2025-2888 (the timestamp persisted before the rollback check: here
//! nothing is persisted before every check passed).
//!
//! | step | check | error |
//! |---|---|---|
//! | 5.2 | the trust anchor (the root compiled in) is signed by its own threshold | [`Error::Threshold`] |
//! | 5.3 | each next root `N+1.root.json`: signed by a threshold of the trusted root's root keys *and* of its own, version exactly N+1, well formed; repeated until there is none (at most [`Limits::max_root_rotations`]) | `Threshold`, `VersionMismatch`, `Malformed` |
//! | 5.3.10 | the final root has not expired | [`Error::Expired`] |
//! | 5.3.11 | timestamp or snapshot keys rotated: the trusted timestamp and snapshot are forgotten | — |
//! | 5.4 | `timestamp.json` (bounded by [`Limits::max_timestamp`]): timestamp keys' threshold; version not below the trusted one (equal: the trusted one is kept); the snapshot version it pins not below the trusted pin; not expired | `Threshold`, `Rollback`, `Expired` |
//! | 5.5 | `<v>.snapshot.json` with v from the timestamp: length and SHA-256 as pinned; snapshot keys' threshold; version = the pin; no targets entry removed or older than trusted; not expired | `Length`, `HashMismatch`, `Threshold`, `VersionMismatch`, `Missing`, `Rollback`, `Expired` |
//! | 5.6 | `<v>.targets.json` with v from the snapshot: length and SHA-256 as pinned; targets keys' threshold; version = the pin; not expired | as above |
//! | 5.7 | a target file: never read past its signed length, SHA-256 as signed | `Length`, `HashMismatch` |
//!
//! Expiry is checked against one time fixed at the start of a refresh (5.1), so a refresh
//! that runs across an expiry cannot accept one role and refuse the next inconsistently.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use crate::error::FetchError;
use crate::error::{Error, Result};
use crate::metadata::{
    MetaFile, Role, RoleBody, Root, Signed, Snapshot, Target, Targets, Timestamp, sha256_of, verify,
};

/// The name under which `timestamp.json` pins the snapshot, and the snapshot pins targets.
pub const SNAPSHOT_META: &str = "snapshot.json";
/// The name under which the snapshot pins the top-level targets.
pub const TARGETS_META: &str = "targets.json";

/// Bounds of a refresh: no download is read past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest root file (a root with a dozen keys is about 5 KB).
    pub max_root: u64,
    /// Largest timestamp file (about 1 KB).
    pub max_timestamp: u64,
    /// Largest snapshot or targets file when the pinning role gives no length (this
    /// repository always gives one).
    pub max_unpinned: u64,
    /// The most root versions one refresh walks through.
    pub max_root_rotations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_root: 512 * 1024,
            max_timestamp: 64 * 1024,
            max_unpinned: 16 * 1024 * 1024,
            max_root_rotations: 256,
        }
    }
}

/// A transport that reads repository files (HTTP on the server, a directory in tests).
pub trait Fetch {
    /// The file at `path` (relative to the repository root, `/`-separated), or `None`
    /// when the repository has no such file. Must fail with [`FetchError::TooLarge`]
    /// rather than return more than `limit` bytes.
    fn fetch(&mut self, path: &str, limit: u64)
    -> std::result::Result<Option<Vec<u8>>, FetchError>;
}

/// Where a client keeps the metadata it trusts between runs.
pub trait Store {
    /// Saves `bytes` as `name` (`<v>.root.json`, `timestamp.json`, `snapshot.json`,
    /// `targets.json`), atomically: a crash leaves the old file or the new one.
    fn save(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()>;
}

/// The metadata a client trusts.
#[derive(Debug, Clone)]
pub struct TrustedState {
    root: Signed<Root>,
    timestamp: Option<Held<Timestamp>>,
    snapshot: Option<Held<Snapshot>>,
    targets: Option<Held<Targets>>,
}

/// A trusted role with the bytes it was read from: signatures cover the canonical form of
/// what was parsed, so re-checking them after a root rotation uses the original bytes,
/// never a re-serialisation.
#[derive(Debug, Clone)]
struct Held<T> {
    signed: T,
    bytes: Vec<u8>,
}

impl<T: RoleBody> Held<T> {
    fn read(bytes: &[u8], root: &Root) -> Result<Self> {
        Ok(Self {
            signed: verify::<T>(bytes, root)?.signed,
            bytes: bytes.to_vec(),
        })
    }

    fn still_signed(&self, root: &Root) -> bool {
        verify::<T>(&self.bytes, root).is_ok()
    }
}

/// The files a client saved, as [`TrustedState::resume`] takes them back.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// Every `<v>.root.json` saved, in any order.
    pub roots: Vec<Vec<u8>>,
    /// `timestamp.json`.
    pub timestamp: Option<Vec<u8>>,
    /// `snapshot.json`.
    pub snapshot: Option<Vec<u8>>,
    /// `targets.json`.
    pub targets: Option<Vec<u8>>,
}

impl TrustedState {
    /// Starts from the trust anchor: a root the client carries (compiled in), which must be
    /// signed by its own root keys (5.2). Its expiry is checked after the root update.
    pub fn from_anchor(root: &[u8]) -> Result<Self> {
        let loose: Signed<serde_json::Value> =
            serde_json::from_slice(root).map_err(|e| Error::Parse {
                role: Role::Root,
                reason: e.to_string(),
            })?;
        let body: Root = serde_json::from_value(loose.signed).map_err(|e| Error::Parse {
            role: Role::Root,
            reason: e.to_string(),
        })?;
        body.check_well_formed()?;
        let root = verify::<Root>(root, &body)?;
        Ok(Self {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
        })
    }

    /// Starts from the anchor and what was saved before: saved roots are accepted only as
    /// a chain from the anchor (each one signed as [`update_root`](Self::update_root)
    /// requires), so a root planted in the client's directory is ignored; the saved
    /// timestamp, snapshot and targets are kept as the baselines of the rollback checks only
    /// if the current root's keys still sign them. Nothing here checks expiry: old trusted
    /// metadata is what the next refresh compares against.
    pub fn resume(anchor: &[u8], saved: &Saved) -> Result<Self> {
        let mut state = Self::from_anchor(anchor)?;
        let mut remaining: Vec<&[u8]> = saved.roots.iter().map(Vec::as_slice).collect();
        while let Some(index) = remaining
            .iter()
            .position(|bytes| state.clone().update_root(bytes).is_ok())
        {
            let bytes = remaining.swap_remove(index);
            state.update_root(bytes)?;
        }
        let root = &state.root.signed;
        state.timestamp = saved
            .timestamp
            .as_deref()
            .and_then(|b| Held::read(b, root).ok());
        state.snapshot = saved
            .snapshot
            .as_deref()
            .and_then(|b| Held::read(b, root).ok());
        state.targets = saved
            .targets
            .as_deref()
            .and_then(|b| Held::read(b, root).ok());
        Ok(state)
    }

    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root.signed
    }

    /// The trusted timestamp, if any.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref().map(|s| &s.signed)
    }

    /// The trusted snapshot, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().map(|s| &s.signed)
    }

    /// The trusted targets, if any. After a successful [`refresh`](Self::refresh) it is the
    /// one the timestamp and snapshot pin.
    pub fn targets(&self) -> Option<&Targets> {
        self.targets.as_ref().map(|s| &s.signed)
    }

    /// 5.3: accepts `bytes` as the next root (version N+1), signed by a threshold of the
    /// trusted root's root keys and of its own. Forgets the trusted timestamp and snapshot
    /// when their keys changed (5.3.11), and any trusted role the new keys do not sign.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<()> {
        let trusted = &self.root.signed;
        let by_old = verify::<Root>(bytes, trusted)?;
        by_old.signed.check_well_formed()?;
        let new = verify::<Root>(bytes, &by_old.signed)?;
        let expected = trusted.version + 1;
        if new.signed.version != expected {
            return Err(if new.signed.version <= trusted.version {
                Error::Rollback {
                    role: Role::Root,
                    trusted: trusted.version,
                    offered: new.signed.version,
                }
            } else {
                Error::VersionMismatch {
                    role: Role::Root,
                    pinned_by: "the trusted root (the next root is exactly one version more)",
                    expected,
                    found: new.signed.version,
                }
            });
        }
        let rotated = |role| trusted.roles.get(&role) != new.signed.roles.get(&role);
        if rotated(Role::Timestamp) || rotated(Role::Snapshot) {
            self.timestamp = None;
            self.snapshot = None;
        }
        let root = &new.signed;
        self.timestamp = self.timestamp.take().filter(|t| t.still_signed(root));
        self.snapshot = self.snapshot.take().filter(|s| s.still_signed(root));
        self.targets = self.targets.take().filter(|t| t.still_signed(root));
        self.root = new;
        Ok(())
    }

    /// 5.3.10: the trusted root has not expired at `now`.
    pub fn check_root_expiry(&self, now: OffsetDateTime) -> Result<()> {
        not_expired(&self.root.signed, now)
    }

    /// 5.4: accepts `bytes` as the new timestamp. An equal version keeps the trusted one
    /// (after checking the offered one is signed), which must then not have expired.
    pub fn update_timestamp(&mut self, bytes: &[u8], now: OffsetDateTime) -> Result<()> {
        let new = Held::<Timestamp>::read(bytes, &self.root.signed)?;
        let pin = pinned(&new.signed.meta, Role::Timestamp, SNAPSHOT_META)?;
        if let Some(trusted) = &self.timestamp {
            let trusted_pin = pinned(&trusted.signed.meta, Role::Timestamp, SNAPSHOT_META)?;
            if new.signed.version < trusted.signed.version {
                return Err(Error::Rollback {
                    role: Role::Timestamp,
                    trusted: trusted.signed.version,
                    offered: new.signed.version,
                });
            }
            if pin.version < trusted_pin.version {
                return Err(Error::Rollback {
                    role: Role::Snapshot,
                    trusted: trusted_pin.version,
                    offered: pin.version,
                });
            }
            if new.signed.version == trusted.signed.version {
                return not_expired(&trusted.signed, now);
            }
        }
        not_expired(&new.signed, now)?;
        self.timestamp = Some(new);
        Ok(())
    }

    /// 5.5: accepts `bytes` as the snapshot the trusted timestamp pins.
    pub fn update_snapshot(&mut self, bytes: &[u8], now: OffsetDateTime) -> Result<()> {
        let timestamp = self.timestamp.as_ref().ok_or(Error::Missing {
            role: Role::Timestamp,
            entry: "a trusted timestamp (update it first)".into(),
        })?;
        let pin = pinned(&timestamp.signed.meta, Role::Timestamp, SNAPSHOT_META)?;
        check_pinned_bytes(bytes, pin, Role::Snapshot)?;
        let new = Held::<Snapshot>::read(bytes, &self.root.signed)?;
        if new.signed.version != pin.version {
            return Err(Error::VersionMismatch {
                role: Role::Snapshot,
                pinned_by: "the timestamp",
                expected: pin.version,
                found: new.signed.version,
            });
        }
        if let Some(trusted) = &self.snapshot {
            if new.signed.version < trusted.signed.version {
                return Err(Error::Rollback {
                    role: Role::Snapshot,
                    trusted: trusted.signed.version,
                    offered: new.signed.version,
                });
            }
            for (name, old) in &trusted.signed.meta {
                let Some(now_pinned) = new.signed.meta.get(name) else {
                    return Err(Error::Missing {
                        role: Role::Snapshot,
                        entry: format!("{name}, which the trusted snapshot lists"),
                    });
                };
                if now_pinned.version < old.version {
                    return Err(Error::Rollback {
                        role: Role::Targets,
                        trusted: old.version,
                        offered: now_pinned.version,
                    });
                }
            }
        }
        not_expired(&new.signed, now)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// 5.6: accepts `bytes` as the targets the trusted snapshot pins.
    pub fn update_targets(&mut self, bytes: &[u8], now: OffsetDateTime) -> Result<()> {
        let snapshot = self.snapshot.as_ref().ok_or(Error::Missing {
            role: Role::Snapshot,
            entry: "a trusted snapshot (update it first)".into(),
        })?;
        let pin = pinned(&snapshot.signed.meta, Role::Snapshot, TARGETS_META)?;
        check_pinned_bytes(bytes, pin, Role::Targets)?;
        let new = Held::<Targets>::read(bytes, &self.root.signed)?;
        if new.signed.version != pin.version {
            return Err(Error::VersionMismatch {
                role: Role::Targets,
                pinned_by: "the snapshot",
                expected: pin.version,
                found: new.signed.version,
            });
        }
        if let Some(trusted) = &self.targets
            && new.signed.version < trusted.signed.version
        {
            return Err(Error::Rollback {
                role: Role::Targets,
                trusted: trusted.signed.version,
                offered: new.signed.version,
            });
        }
        not_expired(&new.signed, now)?;
        self.targets = Some(new);
        Ok(())
    }

    /// The whole workflow (5.1-5.6) against a repository: every role fetched within its
    /// bound, checked, and saved to `store` only once it passed. `now` is the fixed time
    /// of the refresh.
    pub fn refresh(
        &mut self,
        repository: &mut dyn Fetch,
        store: &mut dyn Store,
        now: OffsetDateTime,
        limits: Limits,
    ) -> Result<()> {
        // 5.3: every next root the repository has.
        for _ in 0..limits.max_root_rotations {
            let name = Role::Root.file_name(self.root.signed.version + 1);
            let Some(bytes) = get(repository, &name, limits.max_root)? else {
                break;
            };
            self.update_root(&bytes)?;
            save(store, &name, &bytes)?;
        }
        self.check_root_expiry(now)?;
        // 5.4
        let bytes = get(repository, "timestamp.json", limits.max_timestamp)?
            .ok_or_else(|| not_found("timestamp.json"))?;
        let before = self.timestamp.as_ref().map(|t| t.signed.version);
        self.update_timestamp(&bytes, now)?;
        if before != self.timestamp.as_ref().map(|t| t.signed.version) {
            save(store, "timestamp.json", &bytes)?;
        }
        // 5.5
        let pin = pinned(
            &self.timestamp().expect("set").meta,
            Role::Timestamp,
            SNAPSHOT_META,
        )?
        .clone();
        if self.snapshot().map(|s| s.version) != Some(pin.version) {
            let name = Role::Snapshot.file_name(pin.version);
            let limit = pin.length.unwrap_or(limits.max_unpinned);
            let bytes = get(repository, &name, limit)?.ok_or_else(|| not_found(&name))?;
            self.update_snapshot(&bytes, now)?;
            save(store, "snapshot.json", &bytes)?;
        } else {
            not_expired(self.snapshot().expect("set"), now)?;
        }
        // 5.6
        let pin = pinned(
            &self.snapshot().expect("set").meta,
            Role::Snapshot,
            TARGETS_META,
        )?
        .clone();
        if self.targets().map(|t| t.version) != Some(pin.version) {
            let name = Role::Targets.file_name(pin.version);
            let limit = pin.length.unwrap_or(limits.max_unpinned);
            let bytes = get(repository, &name, limit)?.ok_or_else(|| not_found(&name))?;
            self.update_targets(&bytes, now)?;
            save(store, "targets.json", &bytes)?;
        } else {
            not_expired(self.targets().expect("set"), now)?;
        }
        Ok(())
    }

    /// A target the trusted targets list, by name.
    pub fn target(&self, name: &str) -> Result<&Target> {
        self.targets()
            .and_then(|t| t.targets.get(name))
            .ok_or_else(|| Error::Missing {
                role: Role::Targets,
                entry: format!("the target {name:?}"),
            })
    }

    /// 5.7: downloads a target from `targets/<sha256>.<name>`, never past its signed length,
    /// and checks length and SHA-256.
    pub fn fetch_target(&self, repository: &mut dyn Fetch, name: &str) -> Result<Vec<u8>> {
        let target = self.target(name)?;
        let path = format!("{}/{}.{name}", crate::TARGETS_DIR, target.sha256()?);
        let bytes = repository
            .fetch(&path, target.length)
            .map_err(|source| Error::Fetch {
                file: path.clone(),
                source,
            })?
            .ok_or_else(|| not_found(&path))?;
        check_target(name, target, &bytes)?;
        Ok(bytes)
    }
}

/// `bytes` are exactly the target's signed length and SHA-256.
pub fn check_target(name: &str, target: &Target, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != target.length {
        return Err(Error::Length {
            what: format!("the target {name:?}"),
            found: bytes.len() as u64,
            expected: format!("the targets metadata says {}", target.length),
        });
    }
    let computed = hex::encode(Sha256::digest(bytes));
    let expected = target.sha256()?;
    if computed != expected {
        return Err(Error::HashMismatch {
            what: format!("the target {name:?}"),
            expected: expected.to_owned(),
            computed,
        });
    }
    Ok(())
}

fn pinned<'a>(
    meta: &'a std::collections::BTreeMap<String, MetaFile>,
    role: Role,
    entry: &str,
) -> Result<&'a MetaFile> {
    meta.get(entry).ok_or_else(|| Error::Missing {
        role,
        entry: entry.to_owned(),
    })
}

/// A pinned metadata file's length and hash, when the pin names them.
fn check_pinned_bytes(bytes: &[u8], pin: &MetaFile, role: Role) -> Result<()> {
    let what = || format!("the {role} metadata version {}", pin.version);
    if let Some(length) = pin.length
        && bytes.len() as u64 != length
    {
        return Err(Error::Length {
            what: what(),
            found: bytes.len() as u64,
            expected: format!("the pinning role says {length}"),
        });
    }
    if let Some(hashes) = &pin.hashes {
        let expected = sha256_of(hashes, &what())?;
        let computed = hex::encode(Sha256::digest(bytes));
        if computed != expected {
            return Err(Error::HashMismatch {
                what: what(),
                expected: expected.to_owned(),
                computed,
            });
        }
    }
    Ok(())
}

fn not_expired<T: RoleBody>(body: &T, now: OffsetDateTime) -> Result<()> {
    if body.expires() <= now {
        let format = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        return Err(Error::Expired {
            role: T::ROLE,
            version: body.version(),
            expires: format(body.expires()),
            now: format(now),
        });
    }
    Ok(())
}

fn get(repository: &mut dyn Fetch, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let path = format!("{}/{name}", crate::METADATA_DIR);
    repository
        .fetch(&path, limit)
        .map_err(|source| Error::Fetch { file: path, source })
}

fn save(store: &mut dyn Store, name: &str, bytes: &[u8]) -> Result<()> {
    store.save(name, bytes).map_err(|source| Error::Store {
        file: name.to_owned(),
        source,
    })
}

fn not_found(path: &str) -> Error {
    Error::Fetch {
        file: path.to_owned(),
        source: FetchError::Transport("the repository has no such file".into()),
    }
}

#[cfg(test)]
mod tests;
