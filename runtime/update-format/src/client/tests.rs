//! Each client check against the attack it stops, on metadata signed for real: a
//! repository held in memory, written with this crate's own signing, and read through
//! [`TrustedState::refresh`] as a client would.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::*;
use crate::key::{InMemoryKey, Signer};
use crate::metadata::{MetaFile, RoleKeys, Snapshot, Target, Targets, Timestamp, whole_seconds};

fn key() -> InMemoryKey {
    InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8()).unwrap()
}

fn now() -> OffsetDateTime {
    whole_seconds(OffsetDateTime::now_utc())
}

/// A repository in memory: file path → bytes, served by [`Fetch`].
#[derive(Default, Clone)]
struct Files(BTreeMap<String, Vec<u8>>);

impl Fetch for Files {
    fn fetch(
        &mut self,
        path: &str,
        limit: u64,
    ) -> std::result::Result<Option<Vec<u8>>, FetchError> {
        match self.0.get(path) {
            Some(bytes) if bytes.len() as u64 > limit => Err(FetchError::TooLarge { limit }),
            Some(bytes) => Ok(Some(bytes.clone())),
            None => Ok(None),
        }
    }
}

/// What a client saved.
#[derive(Default)]
struct Saves(BTreeMap<String, Vec<u8>>);

impl Store for Saves {
    fn save(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.0.insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }
}

/// The keys of a repository and the versions it is at.
struct Publisher {
    root_keys: Vec<InMemoryKey>,
    root_threshold: u64,
    targets: Vec<InMemoryKey>,
    targets_threshold: u64,
    snapshot: InMemoryKey,
    timestamp: InMemoryKey,
    root_version: u64,
    files: Files,
}

fn role(keys: &[&InMemoryKey], threshold: u64) -> RoleKeys {
    RoleKeys {
        keyids: keys.iter().map(|k| k.public_key().key_id()).collect(),
        threshold,
    }
}

impl Publisher {
    fn new() -> Self {
        let mut publisher = Self {
            root_keys: vec![key()],
            root_threshold: 1,
            targets: vec![key()],
            targets_threshold: 1,
            snapshot: key(),
            timestamp: key(),
            root_version: 0,
            files: Files::default(),
        };
        let signers: Vec<&InMemoryKey> = publisher.root_keys.iter().collect();
        let root = publisher.root_body(1, now() + Duration::days(365));
        let bytes = sign(root, &signers);
        publisher.put_root(1, bytes);
        publisher
    }

    fn root_body(&self, version: u64, expires: OffsetDateTime) -> Root {
        let mut keys = BTreeMap::new();
        let all = self
            .root_keys
            .iter()
            .chain(&self.targets)
            .chain([&self.snapshot, &self.timestamp]);
        for k in all {
            keys.insert(k.public_key().key_id(), k.public_key().clone());
        }
        let root_keys: Vec<&InMemoryKey> = self.root_keys.iter().collect();
        let targets: Vec<&InMemoryKey> = self.targets.iter().collect();
        Root {
            type_: "root".into(),
            spec_version: crate::SPEC_VERSION.into(),
            consistent_snapshot: true,
            version,
            expires,
            keys,
            roles: [
                (Role::Root, role(&root_keys, self.root_threshold)),
                (Role::Targets, role(&targets, self.targets_threshold)),
                (Role::Snapshot, role(&[&self.snapshot], 1)),
                (Role::Timestamp, role(&[&self.timestamp], 1)),
            ]
            .into(),
            extra: BTreeMap::new(),
        }
    }

    fn put_root(&mut self, version: u64, bytes: Vec<u8>) {
        self.root_version = version;
        self.files
            .0
            .insert(format!("metadata/{version}.root.json"), bytes);
    }

    fn anchor(&self) -> Vec<u8> {
        self.files.0["metadata/1.root.json"].clone()
    }

    fn targets_body(version: u64, expires: OffsetDateTime, files: &[(&str, &[u8])]) -> Targets {
        Targets {
            type_: "targets".into(),
            spec_version: crate::SPEC_VERSION.into(),
            version,
            expires,
            targets: files
                .iter()
                .map(|(name, bytes)| {
                    let content = crate::delta::content_of(bytes);
                    (
                        (*name).to_owned(),
                        Target {
                            length: content.size,
                            hashes: [("sha256".to_owned(), content.sha256)].into(),
                            custom: None,
                        },
                    )
                })
                .collect(),
            extra: BTreeMap::new(),
        }
    }

    /// Publishes a release: targets `version` with `files`, snapshot `version`, timestamp
    /// `version`, each expiring in a week; returns the targets, snapshot and timestamp bytes.
    fn release(&mut self, version: u64, files: &[(&str, &[u8])]) -> [Vec<u8>; 3] {
        let week = now() + Duration::days(7);
        let targets_signers: Vec<&InMemoryKey> = self.targets.iter().collect();
        let targets = sign(Self::targets_body(version, week, files), &targets_signers);
        let snapshot = sign(
            snapshot_body(version, week, version, &targets),
            &[&self.snapshot],
        );
        let timestamp = sign(
            timestamp_body(version, week, version, &snapshot),
            &[&self.timestamp],
        );
        for (name, bytes) in files {
            let sha = crate::delta::content_of(bytes).sha256;
            self.files
                .0
                .insert(format!("targets/{sha}.{name}"), bytes.to_vec());
        }
        self.files
            .0
            .insert(format!("metadata/{version}.targets.json"), targets.clone());
        self.files.0.insert(
            format!("metadata/{version}.snapshot.json"),
            snapshot.clone(),
        );
        self.files
            .0
            .insert("metadata/timestamp.json".into(), timestamp.clone());
        [targets, snapshot, timestamp]
    }
}

fn snapshot_body(
    version: u64,
    expires: OffsetDateTime,
    targets_version: u64,
    targets: &[u8],
) -> Snapshot {
    Snapshot {
        type_: "snapshot".into(),
        spec_version: crate::SPEC_VERSION.into(),
        version,
        expires,
        meta: [(TARGETS_META.to_owned(), pin(targets_version, targets))].into(),
        extra: BTreeMap::new(),
    }
}

fn timestamp_body(
    version: u64,
    expires: OffsetDateTime,
    snapshot_version: u64,
    snapshot: &[u8],
) -> Timestamp {
    Timestamp {
        type_: "timestamp".into(),
        spec_version: crate::SPEC_VERSION.into(),
        version,
        expires,
        meta: [(SNAPSHOT_META.to_owned(), pin(snapshot_version, snapshot))].into(),
        extra: BTreeMap::new(),
    }
}

fn pin(version: u64, bytes: &[u8]) -> MetaFile {
    let content = crate::delta::content_of(bytes);
    MetaFile {
        version,
        length: Some(content.size),
        hashes: Some([("sha256".to_owned(), content.sha256)].into()),
    }
}

fn sign<T: RoleBody>(body: T, keys: &[&InMemoryKey]) -> Vec<u8> {
    let signers: Vec<&dyn Signer> = keys.iter().map(|k| *k as &dyn Signer).collect();
    Signed::sign(body, &signers).unwrap().to_bytes()
}

/// A client that trusts the publisher's first root and refreshed once.
fn client(publisher: &Publisher) -> (TrustedState, Saves) {
    let mut state = TrustedState::from_anchor(&publisher.anchor()).unwrap();
    let mut saves = Saves::default();
    state
        .refresh(
            &mut publisher.files.clone(),
            &mut saves,
            now(),
            Limits::default(),
        )
        .unwrap();
    (state, saves)
}

#[test]
fn a_consistent_repository_refreshes_and_its_targets_download() {
    let mut publisher = Publisher::new();
    publisher.release(1, &[("a", b"first")]);
    let (state, saves) = client(&publisher);
    assert_eq!(state.targets().unwrap().version, 1);
    assert_eq!(
        saves.0.keys().collect::<Vec<_>>(),
        ["snapshot.json", "targets.json", "timestamp.json"]
    );
    let bytes = state
        .fetch_target(&mut publisher.files.clone(), "a")
        .unwrap();
    assert_eq!(bytes, b"first");
}

/// go-tuf CVE-2022-29173 and tough CVE-2025-2888: an older, validly signed timestamp is
/// refused, and neither the trusted state nor the saved files change.
#[test]
fn a_rollback_to_an_older_signed_timestamp_is_refused_and_nothing_is_saved() {
    let mut publisher = Publisher::new();
    let [_, _, old_timestamp] = publisher.release(1, &[("a", b"first")]);
    publisher.release(2, &[("a", b"second")]);
    let (mut state, mut saves) = client(&publisher);
    let saved_before = saves.0.clone();
    // The attacker serves release 1's timestamp (validly signed, not expired).
    publisher
        .files
        .0
        .insert("metadata/timestamp.json".into(), old_timestamp);
    let error = state
        .refresh(&mut publisher.files, &mut saves, now(), Limits::default())
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Rollback {
                role: Role::Timestamp,
                trusted: 2,
                offered: 1
            }
        ),
        "{error}"
    );
    assert_eq!(state.timestamp().unwrap().version, 2);
    assert_eq!(saves.0, saved_before);
}

/// A newer timestamp that pins an older snapshot (a rollback of the snapshot through a
/// freshly signed timestamp: a compromised timestamp key alone) is refused.
#[test]
fn a_timestamp_pinning_an_older_snapshot_is_refused() {
    let mut publisher = Publisher::new();
    let [_, old_snapshot, _] = publisher.release(1, &[("a", b"first")]);
    publisher.release(2, &[("a", b"second")]);
    let (mut state, _) = client(&publisher);
    let forged = sign(
        timestamp_body(3, now() + Duration::days(1), 1, &old_snapshot),
        &[&publisher.timestamp],
    );
    let error = state.update_timestamp(&forged, now()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Rollback {
                role: Role::Snapshot,
                trusted: 2,
                offered: 1
            }
        ),
        "{error}"
    );
}

/// A freeze attack: the mirror keeps serving the last timestamp after it expired.
#[test]
fn an_expired_timestamp_is_refused() {
    let mut publisher = Publisher::new();
    let [_, snapshot, _] = publisher.release(1, &[("a", b"first")]);
    let expired = sign(
        timestamp_body(1, now() - Duration::seconds(1), 1, &snapshot),
        &[&publisher.timestamp],
    );
    publisher
        .files
        .0
        .insert("metadata/timestamp.json".into(), expired);
    let mut state = TrustedState::from_anchor(&publisher.anchor()).unwrap();
    let mut saves = Saves::default();
    let error = state
        .refresh(&mut publisher.files, &mut saves, now(), Limits::default())
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Expired {
                role: Role::Timestamp,
                ..
            }
        ),
        "{error}"
    );
    assert!(saves.0.is_empty(), "{:?}", saves.0.keys());
    // The same frozen repository, seen again later by a client that trusted it while it
    // was fresh: the trusted timestamp expired too, and an equal version does not renew it.
    let mut publisher = Publisher::new();
    let [_, _, timestamp] = publisher.release(1, &[("a", b"first")]);
    let (mut state, _) = client(&publisher);
    let later = now() + Duration::days(8);
    let error = state.update_timestamp(&timestamp, later).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Expired {
                role: Role::Timestamp,
                ..
            }
        ),
        "{error}"
    );
}

/// Mix-and-match: release 2's snapshot served with release 1's targets (both validly
/// signed by their keys).
#[test]
fn targets_of_another_version_than_the_snapshot_pins_are_refused() {
    let mut publisher = Publisher::new();
    let [old_targets, _, _] = publisher.release(1, &[("a", b"first")]);
    publisher.release(2, &[("a", b"second")]);
    let mut state = TrustedState::from_anchor(&publisher.anchor()).unwrap();
    let files = publisher.files.0.clone();
    state
        .update_timestamp(&files["metadata/timestamp.json"], now())
        .unwrap();
    state
        .update_snapshot(&files["metadata/2.snapshot.json"], now())
        .unwrap();
    let error = state.update_targets(&old_targets, now()).unwrap_err();
    // The snapshot pins the length and hash of targets.json: caught before the signature.
    assert!(
        matches!(error, Error::Length { .. } | Error::HashMismatch { .. }),
        "{error}"
    );
    // A snapshot that pins only the version (as other writers may): the version check.
    let snapshot = sign(
        Snapshot {
            meta: [(
                TARGETS_META.to_owned(),
                MetaFile {
                    version: 2,
                    length: None,
                    hashes: None,
                },
            )]
            .into(),
            ..snapshot_body(3, now() + Duration::days(1), 2, b"")
        },
        &[&publisher.snapshot],
    );
    let timestamp = sign(
        timestamp_body(3, now() + Duration::days(1), 3, &snapshot),
        &[&publisher.timestamp],
    );
    state.update_timestamp(&timestamp, now()).unwrap();
    state.update_snapshot(&snapshot, now()).unwrap();
    let error = state.update_targets(&old_targets, now()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::VersionMismatch {
                role: Role::Targets,
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(state.targets().is_none());
}

/// A snapshot that pins an older targets version than the trusted snapshot did.
#[test]
fn a_snapshot_rolling_back_targets_is_refused() {
    let mut publisher = Publisher::new();
    let [old_targets, _, _] = publisher.release(1, &[("a", b"first")]);
    publisher.release(2, &[("a", b"second")]);
    let (mut state, _) = client(&publisher);
    let snapshot = sign(
        snapshot_body(3, now() + Duration::days(1), 1, &old_targets),
        &[&publisher.snapshot],
    );
    let timestamp = sign(
        timestamp_body(3, now() + Duration::days(1), 3, &snapshot),
        &[&publisher.timestamp],
    );
    state.update_timestamp(&timestamp, now()).unwrap();
    let error = state.update_snapshot(&snapshot, now()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Rollback {
                role: Role::Targets,
                trusted: 2,
                offered: 1
            }
        ),
        "{error}"
    );
}

/// Metadata signed by a key the root does not name for the role, and metadata changed
/// after signing.
#[test]
fn a_signature_by_another_key_or_over_other_bytes_is_refused() {
    let mut publisher = Publisher::new();
    let [_, snapshot, _] = publisher.release(1, &[("a", b"first")]);
    let attacker = key();
    let forged = sign(
        timestamp_body(2, now() + Duration::days(1), 1, &snapshot),
        &[&attacker],
    );
    let mut state = TrustedState::from_anchor(&publisher.anchor()).unwrap();
    let error = state.update_timestamp(&forged, now()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Threshold {
                role: Role::Timestamp,
                valid: 0,
                threshold: 1,
                ..
            }
        ),
        "{error}"
    );
    // The snapshot key is the repository's, but not the timestamp role's.
    let wrong_role = sign(
        timestamp_body(2, now() + Duration::days(1), 1, &snapshot),
        &[&publisher.snapshot],
    );
    assert!(matches!(
        state.update_timestamp(&wrong_role, now()).unwrap_err(),
        Error::Threshold { valid: 0, .. }
    ));
    // Signed, then its expiry pushed out by hand.
    let genuine = publisher.files.0["metadata/timestamp.json"].clone();
    let mut value: serde_json::Value = serde_json::from_slice(&genuine).unwrap();
    value["signed"]["expires"] = "2099-01-01T00:00:00Z".into();
    let tampered = serde_json::to_vec(&value).unwrap();
    assert!(matches!(
        state.update_timestamp(&tampered, now()).unwrap_err(),
        Error::Threshold { valid: 0, .. }
    ));
    assert!(state.timestamp().is_none());
}

/// A role with a threshold of 2 signed by 1 key (or by the same key twice).
#[test]
fn a_threshold_that_is_not_met_is_refused() {
    let mut publisher = Publisher::new();
    publisher.targets.push(key());
    publisher.targets_threshold = 2;
    let root_keys: Vec<&InMemoryKey> = publisher.root_keys.iter().collect();
    let root = sign(
        publisher.root_body(2, now() + Duration::days(365)),
        &root_keys,
    );
    publisher.put_root(2, root);
    let (state, _) = {
        publisher.release(1, &[("a", b"first")]);
        client(&publisher)
    };
    let one = &publisher.targets[0];
    let body = Publisher::targets_body(2, now() + Duration::days(1), &[("a", b"x")]);
    let once = sign(body.clone(), &[one]);
    let twice = sign(body, &[one, one]);
    for bytes in [once, twice] {
        let error = verify::<Targets>(&bytes, state.root()).unwrap_err();
        assert!(
            matches!(
                error,
                Error::Threshold {
                    role: Role::Targets,
                    valid: 1,
                    threshold: 2,
                    ..
                }
            ),
            "{error}"
        );
    }
    assert_eq!(state.targets().unwrap().version, 1);
    state.check_root_expiry(now()).unwrap();
}

/// Root rotation done right: 2.root.json names new timestamp and root keys and is signed
/// by the old root key and the new one; the client follows it, forgets the old timestamp,
/// and from then on refuses what the old timestamp key signs.
#[test]
fn a_root_rotation_signed_by_the_old_and_new_root_keys_is_followed() {
    let mut publisher = Publisher::new();
    publisher.release(1, &[("a", b"first")]);
    let (mut state, mut saves) = client(&publisher);
    let old_root_key = publisher.root_keys.remove(0);
    let old_timestamp_key = std::mem::replace(&mut publisher.timestamp, key());
    publisher.root_keys.push(key());
    let root = sign(
        publisher.root_body(2, now() + Duration::days(365)),
        &[&old_root_key, &publisher.root_keys[0]],
    );
    publisher.put_root(2, root);
    publisher.release(2, &[("a", b"second")]);
    state
        .refresh(
            &mut publisher.files.clone(),
            &mut saves,
            now(),
            Limits::default(),
        )
        .unwrap();
    assert_eq!(state.root().version, 2);
    assert!(saves.0.contains_key("2.root.json"));
    assert_eq!(state.targets().unwrap().version, 2);
    let [_, snapshot, _] = publisher.release(3, &[("a", b"third")]);
    let by_old_key = sign(
        timestamp_body(4, now() + Duration::days(1), 3, &snapshot),
        &[&old_timestamp_key],
    );
    assert!(matches!(
        state.update_timestamp(&by_old_key, now()).unwrap_err(),
        Error::Threshold {
            role: Role::Timestamp,
            ..
        }
    ));
    // A client that saved the chain resumes at root 2 from the anchor and its saved files.
    let saved = Saved {
        roots: vec![saves.0["2.root.json"].clone()],
        timestamp: saves.0.get("timestamp.json").cloned(),
        snapshot: saves.0.get("snapshot.json").cloned(),
        targets: saves.0.get("targets.json").cloned(),
    };
    let resumed = TrustedState::resume(&publisher.anchor(), &saved).unwrap();
    assert_eq!(resumed.root().version, 2);
    assert_eq!(resumed.timestamp().unwrap().version, 2);
}

/// Root rotation done wrong: signed only by the new keys (an attacker's root), only by the
/// old ones (the new keys never agreed), skipping a version, or replaying version 1.
#[test]
fn a_root_rotation_done_wrong_is_refused() {
    let mut publisher = Publisher::new();
    publisher.release(1, &[("a", b"first")]);
    let (state, _) = client(&publisher);
    let old_root_key = publisher.root_keys.remove(0);
    publisher.root_keys.push(key());
    let new_root_key = &publisher.root_keys[0];
    let body = |version| publisher.root_body(version, now() + Duration::days(365));
    let cases: [(Vec<u8>, &str); 4] = [
        (sign(body(2), &[new_root_key]), "new keys only"),
        (sign(body(2), &[&old_root_key]), "old keys only"),
        (
            sign(body(3), &[&old_root_key, new_root_key]),
            "skips version 2",
        ),
        (publisher.anchor(), "version 1 again"),
    ];
    for (bytes, case) in cases {
        let mut attempt = state.clone();
        let error = attempt.update_root(&bytes).unwrap_err();
        let expected = match case {
            "new keys only" | "old keys only" => matches!(
                error,
                Error::Threshold {
                    role: Role::Root,
                    ..
                }
            ),
            "skips version 2" => matches!(
                error,
                Error::VersionMismatch {
                    expected: 2,
                    found: 3,
                    ..
                }
            ),
            _ => matches!(
                error,
                Error::Rollback {
                    role: Role::Root,
                    trusted: 1,
                    offered: 1
                }
            ),
        };
        assert!(expected, "{case}: {error}");
        assert_eq!(attempt.root().version, 1, "{case}");
    }
    // A root with a threshold of 0 would need no signature at all.
    let mut zero = body(2);
    zero.roles.get_mut(&Role::Timestamp).unwrap().threshold = 0;
    let bytes = sign(zero, &[&old_root_key, new_root_key]);
    let error = state.clone().update_root(&bytes).unwrap_err();
    assert!(error.to_string().contains("threshold is 0"), "{error}");
}

/// A root planted among the client's saved files (not signed by the chain) is ignored.
#[test]
fn a_planted_root_in_the_saved_state_is_ignored() {
    let publisher = Publisher::new();
    let mut planted = Publisher::new();
    planted.root_keys = vec![key()];
    let attacker_keys: Vec<&InMemoryKey> = planted.root_keys.iter().collect();
    let bytes = sign(
        planted.root_body(2, now() + Duration::days(365)),
        &attacker_keys,
    );
    let saved = Saved {
        roots: vec![bytes],
        ..Saved::default()
    };
    let state = TrustedState::resume(&publisher.anchor(), &saved).unwrap();
    assert_eq!(state.root().version, 1);
}

/// A target whose bytes were changed on the mirror, and one that never ends.
#[test]
fn a_tampered_or_endless_target_is_refused() {
    let mut publisher = Publisher::new();
    publisher.release(1, &[("a", b"first")]);
    let (state, _) = client(&publisher);
    let sha = crate::delta::content_of(b"first").sha256;
    let path = format!("targets/{sha}.a");
    let mut files = publisher.files.clone();
    files.0.insert(path.clone(), b"fir5t".to_vec());
    let error = state.fetch_target(&mut files, "a").unwrap_err();
    assert!(matches!(error, Error::HashMismatch { .. }), "{error}");
    files.0.insert(path, vec![b'x'; 1 << 20]);
    let error = state.fetch_target(&mut files, "a").unwrap_err();
    assert!(
        matches!(
            error,
            Error::Fetch {
                source: FetchError::TooLarge { limit: 5 },
                ..
            }
        ),
        "{error}"
    );
}

/// An expired root is refused after the root update, whatever the other roles say.
#[test]
fn an_expired_root_is_refused() {
    let mut publisher = Publisher::new();
    publisher.release(1, &[("a", b"first")]);
    let root_keys: Vec<&InMemoryKey> = publisher.root_keys.iter().collect();
    let root = sign(
        publisher.root_body(2, now() - Duration::seconds(5)),
        &root_keys,
    );
    publisher.put_root(2, root);
    let mut state = TrustedState::from_anchor(&publisher.anchor()).unwrap();
    let error = state
        .refresh(
            &mut publisher.files,
            &mut Saves::default(),
            now(),
            Limits::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Expired {
                role: Role::Root,
                version: 2,
                ..
            }
        ),
        "{error}"
    );
}
