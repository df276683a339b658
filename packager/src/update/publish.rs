//! The repository commands: `init`, `publish`, `timestamp`, `rotate-root`, `verify`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use openwork_update_format::custom::{Content, Kind, ReleaseId, UpdateTarget};
use openwork_update_format::key::Signer;
use openwork_update_format::metadata::{Role, Target, Timestamp};
use openwork_update_format::{TrustedState, delta};
use serde::Serialize;
use time::OffsetDateTime;

use super::UpdateError;
use super::keys::KeysConfig;
use super::repo::{Current, Repository, Signers, check_keys, empty_targets, root_body};

/// `init`: the first root, signed by the root keys, and empty targets, snapshot and
/// timestamp. Refuses a directory that already has a root.
pub fn init(repo: &Repository, keys: &KeysConfig, now: OffsetDateTime) -> Result<u64, UpdateError> {
    if repo.exists() {
        return Err(UpdateError::Repository {
            dir: repo.dir().to_owned(),
            reason: "already has metadata/1.root.json; `publish` extends it, `rotate-root` \
                     changes its keys"
                .into(),
        });
    }
    let root_signers = keys.signers(Role::Root)?;
    let online = Signers::load(keys, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let root = root_body(1, keys, &root_signers, &online, now)?;
    repo.write_root(root, &root_signers)?;
    repo.commit(None, Some(empty_targets()), keys, &online, now)?;
    Ok(1)
}

/// What `publish` is asked to add.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The release's artifacts, one per platform.
    pub artifacts: Vec<PathBuf>,
    /// Stubs for platforms whose artifact the stub cannot be cut from (PE, Mach-O: the
    /// signed stub as published), by platform.
    pub stubs: BTreeMap<String, PathBuf>,
    /// Deltas from how many previous releases' contents (N).
    pub deltas: usize,
    /// zstd level of deltas.
    pub level: i32,
    /// zstd level of the compressed whole contents (the fallback when no delta applies):
    /// level 19 over a 185 MB sidecar takes minutes on two cores for a few percent.
    pub full_level: i32,
}

/// What `publish` added.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishReport {
    /// The release, or none when every artifact was published already.
    pub release: Option<ReleaseId>,
    /// The targets metadata's version now.
    pub targets_version: u64,
    /// Every target written.
    pub files: Vec<PublishedFile>,
    /// Artifacts that were published already (a re-run).
    pub already_published: Vec<String>,
    /// Seconds spent compressing and writing deltas.
    pub encode_seconds: f64,
    /// Bytes of the whole repository afterwards.
    pub repository_bytes: u64,
}

/// One target written.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedFile {
    /// The target's name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its bytes.
    pub size: u64,
    /// What it decodes to.
    pub to: Content,
    /// What a delta applies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Content>,
    /// Seconds to encode it.
    pub seconds: f64,
}

/// An artifact taken apart.
struct Release {
    artifact: Vec<u8>,
    manifest_json: Vec<u8>,
    platform: String,
    server: String,
    opencode: String,
    stub: Option<Vec<u8>>,
    sidecars: Vec<(String, Vec<u8>)>,
}

fn read_release(path: &PathBuf, stubs: &BTreeMap<String, PathBuf>) -> Result<Release, UpdateError> {
    let artifact = fs_err::read(path)?;
    let (format, region) = openwork_payload::container::locate(&artifact)?;
    let manifest = region.manifest.clone();
    let dir = tempfile::tempdir()?;
    openwork_payload::archive::extract(region.payload, &region.trailer, &manifest, dir.path())?;
    let mut sidecars = Vec::new();
    for (name, entry) in &manifest.files {
        sidecars.push((name.clone(), fs_err::read(entry.path_in(dir.path()))?));
    }
    let stub = match stubs.get(&manifest.target) {
        Some(stub) => Some(fs_err::read(stub)?),
        // An ELF artifact is the stub with the region appended: the stub is what precedes it.
        None if format == openwork_payload::ExecutableFormat::Elf => {
            Some(artifact[..region.span().start as usize].to_vec())
        }
        None => None,
    };
    let manifest_json = region.manifest_bytes.to_vec();
    Ok(Release {
        manifest_json,
        platform: manifest.target.clone(),
        server: manifest.server_version.clone(),
        opencode: manifest.opencode_version.clone(),
        stub,
        sidecars,
        artifact,
    })
}

/// The targets the current metadata has, with our custom data.
fn ours(current: &Current) -> Vec<(String, Target, UpdateTarget)> {
    current
        .targets
        .targets
        .iter()
        .filter_map(|(name, target)| {
            UpdateTarget::of(target)
                .ok()
                .flatten()
                .map(|custom| (name.clone(), target.clone(), custom))
        })
        .collect()
}

/// The contents of the last `count` releases of `platform` for `kind` (and sidecar name),
/// newest first, one per distinct content, with the target that holds each.
fn previous(
    ours: &[(String, Target, UpdateTarget)],
    platform: &str,
    kind: Kind,
    sidecar: Option<&str>,
    count: usize,
) -> Vec<(String, Target, UpdateTarget)> {
    let mut found: Vec<_> = ours
        .iter()
        .filter(|(_, _, c)| {
            c.platform == platform && c.kind == kind && c.sidecar.as_deref() == sidecar
        })
        .cloned()
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.2.release.sequence));
    let mut seen = std::collections::BTreeSet::new();
    found.retain(|(_, _, c)| seen.insert(c.to.sha256.clone()));
    found.truncate(count);
    found
}

/// `publish`: adds a release to the repository (see the module docs of [`super`]).
pub fn publish(
    repo: &Repository,
    keys: &KeysConfig,
    request: &PublishRequest,
    now: OffsetDateTime,
) -> Result<PublishReport, UpdateError> {
    // Keys first: a release whose metadata cannot be signed fails before minutes of work.
    let signers = Signers::load(keys, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let current = repo.current()?;
    signers.check_against(&current.root)?;
    let existing = ours(&current);
    let sequence = existing
        .iter()
        .map(|(_, _, c)| c.release.sequence)
        .max()
        .unwrap_or(0)
        + 1;
    let mut targets = current.targets.clone();
    let mut report = PublishReport {
        release: None,
        targets_version: current.targets.version,
        files: Vec::new(),
        already_published: Vec::new(),
        encode_seconds: 0.0,
        repository_bytes: 0,
    };
    for path in &request.artifacts {
        let release = read_release(path, &request.stubs)?;
        let artifact = delta::content_of(&release.artifact);
        if existing.iter().any(|(_, _, c)| {
            c.kind == Kind::Artifact && c.platform == release.platform && c.to == artifact
        }) {
            report.already_published.push(path.display().to_string());
            continue;
        }
        let id = ReleaseId {
            sequence,
            server: release.server.clone(),
            opencode: release.opencode.clone(),
        };
        if let Some(other) = &report.release
            && other != &id
        {
            return Err(UpdateError::Repository {
                dir: repo.dir().to_owned(),
                reason: format!(
                    "{} carries server {} and opencode {}, another artifact of this release \
                     {} and {}: publish one release at a time",
                    path.display(),
                    id.server,
                    id.opencode,
                    other.server,
                    other.opencode
                ),
            });
        }
        report.release = Some(id.clone());
        // Time spent on deltas that were not kept (larger than the compressed content).
        let mut discarded_seconds = 0.0;
        let mut add = |kind: Kind,
                       sidecar: Option<&str>,
                       from: Option<Content>,
                       bytes: &[u8],
                       to: Content,
                       seconds: f64|
         -> Result<(), UpdateError> {
            let custom = UpdateTarget {
                release: id.clone(),
                platform: release.platform.clone(),
                kind,
                sidecar: sidecar.map(str::to_owned),
                from: from.clone(),
                to: to.clone(),
            };
            let name = custom.file_name();
            let target = repo.put_target(&name, bytes, Some(custom.to_custom()))?;
            report.files.push(PublishedFile {
                name: name.clone(),
                kind,
                size: target.length,
                to,
                from,
                seconds,
            });
            report.encode_seconds += seconds;
            targets.targets.insert(name, target);
            Ok(())
        };
        add(
            Kind::Artifact,
            None,
            None,
            &release.artifact,
            artifact.clone(),
            0.0,
        )?;
        let manifest = delta::content_of(&release.manifest_json);
        add(
            Kind::Manifest,
            None,
            None,
            &release.manifest_json,
            manifest,
            0.0,
        )?;
        let mut contents: Vec<(Kind, Kind, Option<&str>, &[u8])> = Vec::new();
        if let Some(stub) = &release.stub {
            contents.push((Kind::Stub, Kind::StubDelta, None, stub));
        }
        for (name, bytes) in &release.sidecars {
            contents.push((Kind::Sidecar, Kind::SidecarDelta, Some(name), bytes));
        }
        for (full_kind, delta_kind, sidecar, bytes) in contents {
            let to = delta::content_of(bytes);
            let started = Instant::now();
            let compressed = delta::compress(bytes, request.full_level)?;
            add(
                full_kind,
                sidecar,
                None,
                &compressed,
                to.clone(),
                started.elapsed().as_secs_f64(),
            )?;
            // The stub: a delta from the previous release's only; sidecars: from the last N.
            let count = if full_kind == Kind::Stub {
                1
            } else {
                request.deltas
            };
            for (name, target, old) in
                previous(&existing, &release.platform, full_kind, sidecar, count)
            {
                if old.to == to {
                    continue;
                }
                let reference = delta::decompress(&repo.read_target(&name, &target)?, old.to.size)?;
                delta::check_content(&name, &old.to, &reference)?;
                let started = Instant::now();
                let patch = delta::diff(&reference, bytes, request.level)?;
                let seconds = started.elapsed().as_secs_f64();
                // Kept only where it saves something over the compressed content.
                if patch.len() < compressed.len() {
                    add(
                        delta_kind,
                        sidecar,
                        Some(old.to.clone()),
                        &patch,
                        to.clone(),
                        seconds,
                    )?;
                } else {
                    discarded_seconds += seconds;
                }
            }
        }
        report.encode_seconds += discarded_seconds;
    }
    if report.release.is_some() {
        repo.commit(Some(&current), Some(targets), keys, &signers, now)?;
        report.targets_version = current.targets.version + 1;
    }
    report.repository_bytes = repo.size()?;
    Ok(report)
}

/// `timestamp`: a new timestamp (version + 1, a fresh expiry) pinning the same snapshot.
/// What a scheduled job runs so that the timestamp never expires while the repository is
/// live; only the timestamp key is needed.
pub fn refresh_timestamp(
    repo: &Repository,
    keys: &KeysConfig,
    now: OffsetDateTime,
) -> Result<u64, UpdateError> {
    let signers = keys.signers(Role::Timestamp)?;
    let current = repo.current()?;
    check_keys(&current.root, Role::Timestamp, &signers)?;
    let timestamp = Timestamp {
        version: current.timestamp.version + 1,
        expires: openwork_update_format::metadata::whole_seconds(
            now + time::Duration::days(i64::from(keys.role(Role::Timestamp)?.expires_days)),
        ),
        ..current.timestamp.clone()
    };
    let version = timestamp.version;
    let bytes = super::repo::sign(timestamp, &signers)?;
    crate::pack::write_atomically(
        &repo
            .dir()
            .join(openwork_update_format::METADATA_DIR)
            .join("timestamp.json"),
        &bytes,
        false,
    )
    .map_err(|e| UpdateError::Io(std::io::Error::other(e.to_string())))?;
    Ok(version)
}

/// `rotate-root`: root N+1 naming the keys of `new` for every role, signed by the current
/// root keys (`old`, a threshold of them) and by the new root keys (a threshold of them:
/// both, as clients require); then targets, snapshot and timestamp signed again by the new
/// keys, the timestamp last.
pub fn rotate_root(
    repo: &Repository,
    old: &KeysConfig,
    new: &KeysConfig,
    now: OffsetDateTime,
) -> Result<u64, UpdateError> {
    let current = repo.current()?;
    let old_root_signers = old.signers(Role::Root)?;
    check_keys(&current.root, Role::Root, &old_root_signers)?;
    let new_root_signers = new.signers(Role::Root)?;
    let online = Signers::load(new, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let version = current.root.version + 1;
    let root = root_body(version, new, &new_root_signers, &online, now)?;
    let mut ids = std::collections::BTreeSet::new();
    let signers: Vec<Box<dyn Signer>> = old_root_signers
        .into_iter()
        .chain(new_root_signers)
        .filter(|s| ids.insert(s.public_key().key_id()))
        .collect();
    // Checked as a client will before anything is written.
    let bytes = super::repo::sign(root.clone(), &signers)?;
    let mut chain = repo.root_chain()?;
    chain.update_root(&bytes)?;
    repo.write_root(root, &signers)?;
    repo.commit(
        Some(&current),
        Some(current.targets.clone()),
        new,
        &online,
        now,
    )?;
    Ok(version)
}

/// One release as `verify` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedRelease {
    /// The release.
    pub release: ReleaseId,
    /// Its platform.
    pub platform: String,
    /// Its targets by kind: count and bytes.
    pub files: BTreeMap<String, (u64, u64)>,
}

/// `verify`: reads the repository as a client does, from `anchor` (a root the client
/// trusts), through every check including expiry, and every target file's length and hash.
pub fn verify(
    repo: &Repository,
    anchor: &[u8],
    now: OffsetDateTime,
) -> Result<Vec<ListedRelease>, UpdateError> {
    let mut state = TrustedState::from_anchor(anchor)?;
    let mut files = DirectoryFetch(repo.dir().to_owned());
    state.refresh(&mut files, &mut NoStore, now, Default::default())?;
    let mut listed: BTreeMap<(u64, String), ListedRelease> = BTreeMap::new();
    for (name, target) in &state.targets().expect("refreshed").targets {
        // Every file is read and checked against its signed length and SHA-256.
        repo.read_target(name, target)?;
        let Some(custom) = UpdateTarget::of(target)? else {
            continue;
        };
        let entry = listed
            .entry((custom.release.sequence, custom.platform.clone()))
            .or_insert_with(|| ListedRelease {
                release: custom.release.clone(),
                platform: custom.platform.clone(),
                files: BTreeMap::new(),
            });
        let kind = serde_json::to_value(custom.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let slot = entry.files.entry(kind).or_default();
        slot.0 += 1;
        slot.1 += target.length;
    }
    Ok(listed.into_values().collect())
}

/// A repository directory as a [`openwork_update_format::Fetch`]: what `verify` and the
/// tests read through.
#[derive(Debug, Clone)]
pub struct DirectoryFetch(pub PathBuf);

impl openwork_update_format::Fetch for DirectoryFetch {
    fn fetch(
        &mut self,
        path: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, openwork_update_format::FetchError> {
        use std::io::Read;
        let file = match fs_err::File::open(self.0.join(path)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(openwork_update_format::FetchError::Transport(e.to_string())),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| openwork_update_format::FetchError::Transport(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(openwork_update_format::FetchError::TooLarge { limit });
        }
        Ok(Some(bytes))
    }
}

/// `verify` keeps nothing.
struct NoStore;

impl openwork_update_format::Store for NoStore {
    fn save(&mut self, _: &str, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}
