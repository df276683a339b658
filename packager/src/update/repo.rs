//! Reading and writing an update repository directory.
//!
//! The publisher trusts nothing it finds there either: the current root is the chain from
//! `1.root.json` through every next root, each signed as a client requires, and the current
//! targets are the ones the timestamp and snapshot pin, with every signature checked. Only
//! expiry is not checked (the publisher is what renews it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openwork_update_format::client::{SNAPSHOT_META, TARGETS_META};
use openwork_update_format::key::Signer;
use openwork_update_format::metadata::{
    self, MetaFile, Role, RoleBody, Root, Signed, Snapshot, Target, Targets, Timestamp,
};
use openwork_update_format::{METADATA_DIR, SPEC_VERSION, TARGETS_DIR, TrustedState, delta};
use time::{Duration, OffsetDateTime};

use super::UpdateError;
use super::keys::KeysConfig;

/// A repository directory.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
}

/// What the repository publishes now, every signature checked.
#[derive(Debug, Clone)]
pub struct Current {
    /// The latest root.
    pub root: Root,
    /// The timestamp.
    pub timestamp: Timestamp,
    /// The snapshot it pins.
    pub snapshot: Snapshot,
    /// The targets that pins.
    pub targets: Targets,
}

impl Repository {
    /// The repository in `dir` (which may not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn metadata(&self, name: &str) -> PathBuf {
        self.dir.join(METADATA_DIR).join(name)
    }

    /// Where a target's bytes are: `targets/<sha256>.<name>`.
    pub fn target_path(&self, name: &str, sha256: &str) -> PathBuf {
        self.dir.join(TARGETS_DIR).join(format!("{sha256}.{name}"))
    }

    fn refuse(&self, reason: impl Into<String>) -> UpdateError {
        UpdateError::Repository {
            dir: self.dir.clone(),
            reason: reason.into(),
        }
    }

    /// Whether the repository has a first root.
    pub fn exists(&self) -> bool {
        self.metadata(&Role::Root.file_name(1)).exists()
    }

    /// The chain of roots from `1.root.json`, each checked as a client checks it.
    pub fn root_chain(&self) -> Result<TrustedState, UpdateError> {
        let first = self.metadata(&Role::Root.file_name(1));
        if !first.exists() {
            return Err(self.refuse(
                "has no metadata/1.root.json: create it with `openwork-packager update-repo init`",
            ));
        }
        let mut state = TrustedState::from_anchor(&fs_err::read(first)?)?;
        loop {
            let next = self.metadata(&Role::Root.file_name(state.root().version + 1));
            if !next.exists() {
                return Ok(state);
            }
            state.update_root(&fs_err::read(next)?)?;
        }
    }

    /// The current timestamp, snapshot and targets under the latest root.
    pub fn current(&self) -> Result<Current, UpdateError> {
        let root = self.root_chain()?.root().clone();
        let timestamp =
            metadata::verify::<Timestamp>(&fs_err::read(self.metadata("timestamp.json"))?, &root)?
                .signed;
        let pin = timestamp
            .meta
            .get(SNAPSHOT_META)
            .ok_or_else(|| self.refuse("its timestamp pins no snapshot.json"))?;
        let snapshot = metadata::verify::<Snapshot>(
            &fs_err::read(self.metadata(&Role::Snapshot.file_name(pin.version)))?,
            &root,
        )?
        .signed;
        let pin = snapshot
            .meta
            .get(TARGETS_META)
            .ok_or_else(|| self.refuse("its snapshot pins no targets.json"))?;
        let targets = metadata::verify::<Targets>(
            &fs_err::read(self.metadata(&Role::Targets.file_name(pin.version)))?,
            &root,
        )?
        .signed;
        Ok(Current {
            root,
            timestamp,
            snapshot,
            targets,
        })
    }

    /// Writes `bytes` as target `name` unless a file with that content is already there;
    /// returns the target entry.
    pub fn put_target(
        &self,
        name: &str,
        bytes: &[u8],
        custom: Option<serde_json::Value>,
    ) -> Result<Target, UpdateError> {
        let content = delta::content_of(bytes);
        let path = self.target_path(name, &content.sha256);
        let present = fs_err::read(&path)
            .map(|old| delta::content_of(&old) == content)
            .unwrap_or(false);
        if !present {
            write_file(&path, bytes)?;
        }
        Ok(Target {
            length: content.size,
            hashes: [("sha256".to_owned(), content.sha256)].into(),
            custom,
        })
    }

    /// A target's bytes, checked against its entry.
    pub fn read_target(&self, name: &str, target: &Target) -> Result<Vec<u8>, UpdateError> {
        let bytes = fs_err::read(self.target_path(name, target.sha256()?))?;
        openwork_update_format::client::check_target(name, target, &bytes)?;
        Ok(bytes)
    }

    /// Writes a new version of targets (if given), a new snapshot pinning it, and a new
    /// timestamp pinning that, in that order, the timestamp last: the one rename that
    /// publishes. Versions are one more than `current`'s (or 1).
    pub fn commit(
        &self,
        current: Option<&Current>,
        targets: Option<Targets>,
        keys: &KeysConfig,
        signers: &Signers,
        now: OffsetDateTime,
    ) -> Result<u64, UpdateError> {
        let expires = |role: Role| -> Result<OffsetDateTime, UpdateError> {
            Ok(metadata::whole_seconds(
                now + Duration::days(i64::from(keys.role(role)?.expires_days)),
            ))
        };
        let targets_pin = match targets {
            Some(mut body) => {
                body.version = current.map_or(1, |c| c.targets.version + 1);
                body.expires = expires(Role::Targets)?;
                let bytes = sign(body.clone(), &signers.targets)?;
                let name = Role::Targets.file_name(body.version);
                write_file(&self.metadata(&name), &bytes)?;
                pin(body.version, &bytes)
            }
            None => {
                let current = current.expect("a commit without new targets has current ones");
                current.snapshot.meta[TARGETS_META].clone()
            }
        };
        let version = current.map_or(1, |c| c.snapshot.version + 1);
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: expires(Role::Snapshot)?,
            meta: [(TARGETS_META.to_owned(), targets_pin)].into(),
            extra: BTreeMap::new(),
        };
        let bytes = sign(snapshot, &signers.snapshot)?;
        write_file(&self.metadata(&Role::Snapshot.file_name(version)), &bytes)?;
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: current.map_or(1, |c| c.timestamp.version + 1),
            expires: expires(Role::Timestamp)?,
            meta: [(SNAPSHOT_META.to_owned(), pin(version, &bytes))].into(),
            extra: BTreeMap::new(),
        };
        let bytes = sign(timestamp, &signers.timestamp)?;
        sync_dir(&self.dir.join(TARGETS_DIR))?;
        sync_dir(&self.dir.join(METADATA_DIR))?;
        write_file(&self.metadata("timestamp.json"), &bytes)?;
        sync_dir(&self.dir.join(METADATA_DIR))?;
        Ok(version)
    }

    /// Signs `root` and writes it as `<version>.root.json`.
    pub fn write_root(&self, root: Root, signers: &[Box<dyn Signer>]) -> Result<(), UpdateError> {
        let name = Role::Root.file_name(root.version);
        let bytes = sign(root, signers)?;
        write_file(&self.metadata(&name), &bytes)?;
        sync_dir(&self.dir.join(METADATA_DIR))
    }

    /// The sum of the sizes of every file in the repository.
    pub fn size(&self) -> Result<u64, UpdateError> {
        let mut total = 0;
        for sub in [METADATA_DIR, TARGETS_DIR] {
            let dir = self.dir.join(sub);
            if !dir.exists() {
                continue;
            }
            for entry in fs_err::read_dir(dir)? {
                total += entry?.metadata()?.len();
            }
        }
        Ok(total)
    }
}

/// The signers of the three online roles.
pub struct Signers {
    /// targets.
    pub targets: Vec<Box<dyn Signer>>,
    /// snapshot.
    pub snapshot: Vec<Box<dyn Signer>>,
    /// timestamp.
    pub timestamp: Vec<Box<dyn Signer>>,
}

impl Signers {
    /// Loads the keys of the roles a publish signs.
    pub fn load(keys: &KeysConfig, roles: &[Role]) -> Result<Self, UpdateError> {
        let load = |role| {
            if roles.contains(&role) {
                keys.signers(role)
            } else {
                Ok(Vec::new())
            }
        };
        Ok(Self {
            targets: load(Role::Targets)?,
            snapshot: load(Role::Snapshot)?,
            timestamp: load(Role::Timestamp)?,
        })
    }

    /// Checks that the loaded keys are those `root` names for their roles, and enough of
    /// them: signing with other keys would publish metadata no client accepts.
    pub fn check_against(&self, root: &Root) -> Result<(), UpdateError> {
        for (role, signers) in [
            (Role::Targets, &self.targets),
            (Role::Snapshot, &self.snapshot),
            (Role::Timestamp, &self.timestamp),
        ] {
            if signers.is_empty() {
                continue;
            }
            check_keys(root, role, signers)?;
        }
        Ok(())
    }
}

/// `signers` are keys `root` names for `role`, at least its threshold of them.
pub fn check_keys(root: &Root, role: Role, signers: &[Box<dyn Signer>]) -> Result<(), UpdateError> {
    let named = &root.role_keys(role)?.keyids;
    for signer in signers {
        let id = signer.public_key().key_id();
        if !named.contains(&id) {
            return Err(UpdateError::Key {
                role,
                reason: format!(
                    "the configured key {id} is not a {role} key of root version {}: a \
                     client would refuse what it signs (rotate the root to it first, \
                     `update-repo rotate-root`)",
                    root.version
                ),
            });
        }
    }
    let threshold = root.role_keys(role)?.threshold;
    if (signers.len() as u64) < threshold {
        return Err(UpdateError::Key {
            role,
            reason: format!(
                "{} key(s) configured, and root version {} needs {threshold} signatures",
                signers.len(),
                root.version
            ),
        });
    }
    Ok(())
}

/// The canonical-JSON signatures of every signer, and the file's bytes.
pub fn sign<T: RoleBody>(body: T, signers: &[Box<dyn Signer>]) -> Result<Vec<u8>, UpdateError> {
    let signers: Vec<&dyn Signer> = signers.iter().map(|s| s.as_ref()).collect();
    Ok(Signed::sign(body, &signers)?.to_bytes())
}

fn pin(version: u64, bytes: &[u8]) -> MetaFile {
    let content = delta::content_of(bytes);
    MetaFile {
        version,
        length: Some(content.size),
        hashes: Some([("sha256".to_owned(), content.sha256)].into()),
    }
}

/// Through a temp file in the same directory and a rename: never half-written.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    crate::pack::write_atomically(path, bytes, false).map_err(|e| match e {
        crate::Error::Io(io) => UpdateError::Io(io),
        other => UpdateError::Io(std::io::Error::other(other.to_string())),
    })
}

/// Flushes a directory's entries (the renames into it) to disk.
fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    #[cfg(unix)]
    if dir.exists() {
        fs_err::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An empty targets body (versions and expiry are set by [`Repository::commit`]).
pub fn empty_targets() -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 0,
        expires: OffsetDateTime::UNIX_EPOCH,
        targets: BTreeMap::new(),
        extra: BTreeMap::new(),
    }
}

/// A root body naming the keys of `signers` per role with `keys`' thresholds.
pub fn root_body(
    version: u64,
    keys: &KeysConfig,
    root_signers: &[Box<dyn Signer>],
    online: &Signers,
    now: OffsetDateTime,
) -> Result<Root, UpdateError> {
    let mut all = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (role, signers) in [
        (Role::Root, root_signers),
        (Role::Targets, &online.targets[..]),
        (Role::Snapshot, &online.snapshot[..]),
        (Role::Timestamp, &online.timestamp[..]),
    ] {
        let mut ids = Vec::new();
        for signer in signers {
            let id = signer.public_key().key_id();
            all.insert(id.clone(), signer.public_key().clone());
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        roles.insert(
            role,
            openwork_update_format::RoleKeys {
                keyids: ids,
                threshold: keys.role(role)?.threshold,
            },
        );
    }
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires: metadata::whole_seconds(
            now + Duration::days(i64::from(keys.role(Role::Root)?.expires_days)),
        ),
        keys: all,
        roles,
        extra: BTreeMap::new(),
    };
    root.check_well_formed()?;
    Ok(root)
}
