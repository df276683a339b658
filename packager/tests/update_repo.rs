//! `openwork-packager update-repo` end to end: repositories written for releases of the
//! real opencode linux-x64 packages (1.18.33 → 1.18.34 → 1.19.5, the last one moving Bun
//! from 1.3.14 to 1.4.4), read back by our client and by awslabs' tough; tampered,
//! rolled-back, frozen, mixed and forged metadata refused by both; a publish killed before
//! its timestamp leaves the repository as it was; root keys rotated.
//!
//! Keys come from three real sources: DER key files (the signer's PEM/DER reader), an
//! external command (`openssl dgst -sign`), and a SoftHSM2 token through PKCS#11.
//! Contents are compressed at zstd level 3 here (the default, 19, is what
//! `openwork-bench update` measures): the format and the checks do not depend on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use openwork_packager::pack::{self, Compression, PackRequest, Versions};
use openwork_packager::update::keys::KeysConfig;
use openwork_packager::update::publish::{self, DirectoryFetch, PublishRequest};
use openwork_packager::update::repo::Repository;
use openwork_payload::targets;
use openwork_update_format::custom::{Kind, UpdateTarget};
use openwork_update_format::key::{InMemoryKey, Signer};
use openwork_update_format::metadata::{Role, Signed, Timestamp};
use openwork_update_format::{Error as FormatError, Limits, Store, TrustedState, delta};
use time::{Duration, OffsetDateTime};

const LEVEL: i32 = 3;

/// A small real executable for the host, standing in for the server stub: `fn main()` with
/// `body`, compiled by rustc once per body. Two bodies make two stubs, as two server
/// releases do.
fn tiny_stub(body: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let name = format!(
        "stub-{:x}",
        body.len() * 31 + body.bytes().map(usize::from).sum::<usize>()
    );
    let out = dir.path().join(&name);
    if !out.exists() {
        let src = dir.path().join(format!("{name}.rs"));
        std::fs::write(&src, format!("fn main() {{ {body} }}\n")).unwrap();
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = Command::new(rustc)
            .args(["-C", "strip=symbols", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("rustc runs");
        assert!(status.success());
    }
    out
}

fn opencode(version: &str) -> PathBuf {
    openwork_packager::fetch::ensure_registry_opencode("linux-x64", version)
        .unwrap_or_else(|e| panic!("opencode {version} (npm registry or the warm cache): {e}"))
}

/// A release artifact of `stub` carrying `opencode` (the version for the manifest).
fn artifact(dir: &Path, stub: &Path, opencode: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("openwork-server-v2-linux-x64-{version}"));
    pack::pack(&PackRequest {
        stub: stub.to_owned(),
        sidecars: vec![("opencode".into(), opencode.to_owned())],
        out: out.clone(),
        target: targets::by_name("linux-x64").unwrap(),
        versions: Versions {
            opencode: version.into(),
            router: None,
        },
        compression: Compression {
            level: LEVEL,
            workers: 2,
        },
        mtime: 0,
    })
    .unwrap();
    out
}

/// The keys of a test repository: root, targets and snapshot as DER key files, the
/// timestamp signed by `openssl dgst` as an external command.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for name in ["root", "targets", "snapshot"] {
            std::fs::write(
                dir.path().join(format!("{name}.der")),
                InMemoryKey::generate_pkcs8(),
            )
            .unwrap();
        }
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl runs (apt-get install openssl)");
            assert!(output.status.success(), "openssl {args:?}: {output:?}");
        };
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "timestamp.pem",
        ]);
        openssl(&[
            "ec",
            "-in",
            "timestamp.pem",
            "-pubout",
            "-out",
            "timestamp.pub.pem",
        ]);
        Self { dir }
    }

    /// The configuration file `name`: root, targets and snapshot from the key files, and
    /// the timestamp section `timestamp` (by default: `openssl dgst -sign` as a command;
    /// it runs in the test's working directory, so its key is named by absolute path).
    fn config(&self, name: &str, timestamp: Option<&str>) -> KeysConfig {
        let path = self.dir.path().join(name);
        let dir = self.dir.path().display();
        let command = format!(
            "keys = [{{ command = [\"openssl\", \"dgst\", \"-sha256\", \"-sign\", \
             \"{dir}/timestamp.pem\", \"-out\", \"{{out}}\", \"{{file}}\"], public-key = \
             \"file:timestamp.pub.pem\" }}]"
        );
        let text = format!(
            "[root]\nkeys = [{{ key = \"file:root.der\" }}]\n\n\
             [targets]\nkeys = [{{ key = \"file:targets.der\" }}]\n\n\
             [snapshot]\nkeys = [{{ key = \"file:snapshot.der\" }}]\n\n[timestamp]\n{}\n",
            timestamp.unwrap_or(&command)
        );
        std::fs::write(&path, text).unwrap();
        KeysConfig::load(&path).unwrap()
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn request(artifacts: Vec<PathBuf>, deltas: usize) -> PublishRequest {
    PublishRequest {
        artifacts,
        stubs: Default::default(),
        deltas,
        level: LEVEL,
        full_level: LEVEL,
    }
}

/// A client's saved files, in memory.
#[derive(Default)]
struct Saves(std::collections::BTreeMap<String, Vec<u8>>);

impl Store for Saves {
    fn save(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.0.insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }
}

fn anchor(repo: &Path) -> Vec<u8> {
    std::fs::read(repo.join("metadata/1.root.json")).unwrap()
}

fn our_refresh(repo: &Path, state: &mut TrustedState) -> Result<(), FormatError> {
    state.refresh(
        &mut DirectoryFetch(repo.to_owned()),
        &mut Saves::default(),
        now(),
        Limits::default(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// tough's client over the repository directory, from `root` (its datastore in `store`,
/// so that it remembers what it trusted between loads, as a client does).
fn tough_load(repo: &Path, root: &[u8], store: &Path) -> Result<tough::Repository, String> {
    let metadata = url::Url::from_directory_path(repo.join("metadata")).unwrap();
    let targets = url::Url::from_directory_path(repo.join("targets")).unwrap();
    std::fs::create_dir_all(store).unwrap();
    runtime().block_on(async {
        tough::RepositoryLoader::new(&root, metadata, targets)
            .datastore(store)
            .load()
            .await
            .map_err(|e| format!("{e}"))
    })
}

fn tough_read(repository: &tough::Repository, name: &str) -> Result<Vec<u8>, String> {
    use tough::IntoVec;
    runtime().block_on(async {
        let name = tough::TargetName::new(name).map_err(|e| e.to_string())?;
        let stream = repository
            .read_target(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such target")?;
        stream.into_vec().await.map_err(|e| e.to_string())
    })
}

/// Three releases of the real opencode (the third also a new server stub), published with
/// deltas from the last two; read back by our client and by tough; every delta
/// reconstructs the real next opencode; a re-run is a no-op.
#[test]
fn real_releases_are_read_back_by_tough_and_by_our_client() {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let keys = Keys::new();
    let config = keys.config("keys.toml", None);
    let repo = Repository::new(&repo_dir);
    publish::init(&repo, &config, now()).unwrap();

    let stub_a = tiny_stub("");
    let stub_b = tiny_stub("println!(\"server 2\");");
    let versions = [
        ("1.18.33", &stub_a),
        ("1.18.34", &stub_a),
        ("1.19.5", &stub_b),
    ];
    let mut binaries = Vec::new();
    for (sequence, (version, stub)) in versions.iter().enumerate() {
        let binary = opencode(version);
        let artifact = artifact(work.path(), stub, &binary, version);
        let report = publish::publish(&repo, &config, &request(vec![artifact], 2), now()).unwrap();
        let release = report.release.expect("a new release");
        assert_eq!(
            (release.sequence, release.opencode.as_str()),
            (sequence as u64 + 1, *version)
        );
        binaries.push(std::fs::read(binary).unwrap());
        let deltas = report
            .files
            .iter()
            .filter(|f| f.kind == Kind::SidecarDelta)
            .count();
        assert_eq!(
            deltas,
            sequence.min(2),
            "release {}: {:?}",
            sequence + 1,
            report.files
        );
    }

    // Our client, from the first root, through every check.
    let mut state = TrustedState::from_anchor(&anchor(&repo_dir)).unwrap();
    our_refresh(&repo_dir, &mut state).unwrap();
    let targets = state.targets().unwrap();
    assert_eq!(targets.version, 4, "init, then three releases");
    let ours: Vec<(String, UpdateTarget)> = targets
        .targets
        .iter()
        .map(|(n, t)| (n.clone(), UpdateTarget::of(t).unwrap().unwrap()))
        .collect();
    // Every delta, applied to the content it names, gives the next opencode exactly.
    let mut checked = 0;
    for (name, custom) in &ours {
        if custom.kind != Kind::SidecarDelta {
            continue;
        }
        let from = binaries
            .iter()
            .find(|b| delta::content_of(b) == *custom.from.as_ref().unwrap())
            .expect("the delta's from is an earlier release's opencode");
        let bytes = state
            .fetch_target(&mut DirectoryFetch(repo_dir.clone()), name)
            .unwrap();
        let rebuilt = delta::reconstruct(
            custom.kind.encoding(),
            Some((custom.from.as_ref().unwrap(), from)),
            &bytes,
            &custom.to,
        )
        .unwrap();
        assert!(binaries.contains(&rebuilt));
        checked += 1;
    }
    assert_eq!(checked, 3);

    // tough, from the same root: the same targets, the same bytes.
    let store = work.path().join("tough");
    let repository = tough_load(&repo_dir, &anchor(&repo_dir), &store).unwrap();
    let mut names: Vec<String> = repository
        .targets()
        .signed
        .targets
        .keys()
        .map(|n| n.raw().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ours.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    let (delta_name, _) = ours
        .iter()
        .find(|(_, c)| c.kind == Kind::SidecarDelta && c.release.sequence == 3)
        .unwrap();
    assert_eq!(
        tough_read(&repository, delta_name).unwrap(),
        state
            .fetch_target(&mut DirectoryFetch(repo_dir.clone()), delta_name)
            .unwrap()
    );

    // A re-run of the last publish: nothing new, nothing rewritten.
    let timestamp = std::fs::read(repo_dir.join("metadata/timestamp.json")).unwrap();
    let again = artifact(work.path(), &stub_b, &opencode("1.19.5"), "1.19.5");
    let report = publish::publish(&repo, &config, &request(vec![again], 2), now()).unwrap();
    assert!(report.release.is_none() && report.already_published.len() == 1);
    assert_eq!(
        std::fs::read(repo_dir.join("metadata/timestamp.json")).unwrap(),
        timestamp
    );

    // `verify` lists the three releases.
    let listed = publish::verify(&repo, &anchor(&repo_dir), now()).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[2].files.contains_key("stub"));
}

/// A small repository of two releases (tiny real executables as stub and sidecar), for
/// the attacks: each served to our client and to tough, both of which must refuse it.
struct Small {
    work: tempfile::TempDir,
    repo: PathBuf,
    keys: Keys,
    config: KeysConfig,
}

fn small() -> Small {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let keys = Keys::new();
    let config = keys.config("keys.toml", None);
    publish::init(&Repository::new(&repo), &config, now()).unwrap();
    for (n, body) in ["", "println!(\"2\");"].iter().enumerate() {
        let sidecar = tiny_stub(&format!("{body} let _ = {n};"));
        let artifact = artifact(work.path(), &tiny_stub(body), &sidecar, &format!("0.0.{n}"));
        publish::publish(
            &Repository::new(&repo),
            &config,
            &request(vec![artifact], 1),
            now(),
        )
        .unwrap();
    }
    Small {
        work,
        repo,
        keys,
        config,
    }
}

/// Both clients have read the repository once (so each trusts its current timestamp),
/// then `attack` changes the repository; both must refuse it. Returns the two messages.
fn both_refuse(small: &Small, attack: impl FnOnce(&Small)) -> (FormatError, String) {
    let mut state = TrustedState::from_anchor(&anchor(&small.repo)).unwrap();
    our_refresh(&small.repo, &mut state).unwrap();
    let store = small
        .work
        .path()
        .join(format!("tough-{}", next_store_index()));
    tough_load(&small.repo, &anchor(&small.repo), &store).unwrap();
    attack(small);
    let ours = our_refresh(&small.repo, &mut state).unwrap_err();
    let theirs = match tough_load(&small.repo, &anchor(&small.repo), &store) {
        Err(e) => e,
        Ok(repository) => {
            // Metadata tough accepted: then it must refuse every changed target.
            let mut refused = None;
            for name in repository.targets().signed.targets.keys() {
                if let Err(e) = tough_read(&repository, name.raw()) {
                    refused = Some(e);
                }
            }
            refused.expect("tough accepted the attack")
        }
    };
    (ours, theirs)
}

fn next_store_index() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn metadata(small: &Small, name: &str) -> PathBuf {
    small.repo.join("metadata").join(name)
}

#[test]
fn a_kept_older_timestamp_served_again_is_refused_by_both() {
    let small = small();
    let kept = std::fs::read(metadata(&small, "timestamp.json")).unwrap();
    publish::refresh_timestamp(&Repository::new(&small.repo), &small.config, now()).unwrap();
    let (ours, theirs) = both_refuse(&small, |s| {
        std::fs::write(metadata(s, "timestamp.json"), &kept).unwrap();
    });
    assert!(
        matches!(
            ours,
            FormatError::Rollback {
                role: Role::Timestamp,
                ..
            }
        ),
        "{ours}"
    );
    assert!(theirs.to_lowercase().contains("version"), "{theirs}");
}

/// A freeze: the repository's timestamp is re-signed, but with an expiry that has passed
/// (what a mirror serving a stale copy looks like once it expires).
#[test]
fn an_expired_timestamp_is_refused_by_both() {
    let small = small();
    let (ours, theirs) = both_refuse(&small, |s| {
        let long_ago = now() - Duration::days(30);
        publish::refresh_timestamp(&Repository::new(&s.repo), &s.config, long_ago).unwrap();
    });
    assert!(
        matches!(
            ours,
            FormatError::Expired {
                role: Role::Timestamp,
                ..
            }
        ),
        "{ours}"
    );
    assert!(theirs.to_lowercase().contains("expired"), "{theirs}");
}

/// Mix-and-match: the targets file the snapshot pins replaced by the previous release's
/// (validly signed by the targets key). Clients that start from the root read it.
#[test]
fn targets_from_another_release_are_refused_by_both() {
    let small = small();
    let current = Repository::new(&small.repo).current().unwrap();
    let v = current.targets.version;
    std::fs::copy(
        metadata(&small, &format!("{}.targets.json", v - 1)),
        metadata(&small, &format!("{v}.targets.json")),
    )
    .unwrap();
    let mut state = TrustedState::from_anchor(&anchor(&small.repo)).unwrap();
    let ours = our_refresh(&small.repo, &mut state).unwrap_err();
    assert!(
        matches!(
            ours,
            FormatError::Length { .. } | FormatError::HashMismatch { .. }
        ),
        "{ours}"
    );
    let store = small.work.path().join("tough-fresh");
    let theirs = tough_load(&small.repo, &anchor(&small.repo), &store).unwrap_err();
    assert!(
        theirs.to_lowercase().contains("hash") || theirs.to_lowercase().contains("length"),
        "{theirs}"
    );
}

/// A timestamp signed by a key the root does not name.
#[test]
fn a_timestamp_signed_by_another_key_is_refused_by_both() {
    let small = small();
    let (ours, theirs) = both_refuse(&small, |s| {
        let current = Repository::new(&s.repo).current().unwrap();
        let attacker = InMemoryKey::from_pkcs8(&InMemoryKey::generate_pkcs8()).unwrap();
        let forged = Timestamp {
            version: current.timestamp.version + 1,
            ..current.timestamp
        };
        let bytes = Signed::sign(forged, &[&attacker as &dyn Signer])
            .unwrap()
            .to_bytes();
        std::fs::write(metadata(s, "timestamp.json"), bytes).unwrap();
    });
    assert!(
        matches!(
            ours,
            FormatError::Threshold {
                role: Role::Timestamp,
                ..
            }
        ),
        "{ours}"
    );
    assert!(theirs.to_lowercase().contains("signature"), "{theirs}");
}

/// A target file changed on the mirror.
#[test]
fn a_tampered_target_is_refused_by_both() {
    let small = small();
    let mut state = TrustedState::from_anchor(&anchor(&small.repo)).unwrap();
    our_refresh(&small.repo, &mut state).unwrap();
    let (name, target) = state
        .targets()
        .unwrap()
        .targets
        .iter()
        .find(|(n, _)| n.contains("-from-"))
        .map(|(n, t)| (n.clone(), t.clone()))
        .expect("a delta");
    let path = Repository::new(&small.repo).target_path(&name, target.sha256().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let ours = state
        .fetch_target(&mut DirectoryFetch(small.repo.clone()), &name)
        .unwrap_err();
    assert!(matches!(ours, FormatError::HashMismatch { .. }), "{ours}");
    let repository = tough_load(
        &small.repo,
        &anchor(&small.repo),
        &small.work.path().join("t"),
    )
    .unwrap();
    let theirs = tough_read(&repository, &name).unwrap_err();
    assert!(theirs.to_lowercase().contains("hash"), "{theirs}");
}

/// Root rotation: every role's key replaced, root 2 signed by the old and the new root
/// keys; both clients follow it from root 1, and what the old timestamp key signs is
/// refused afterwards.
#[test]
fn a_root_rotation_is_followed_by_both_clients() {
    let small = small();
    let new_keys = Keys::new();
    let new = new_keys.config("new.toml", None);
    let repo = Repository::new(&small.repo);
    assert_eq!(
        publish::rotate_root(&repo, &small.config, &new, now()).unwrap(),
        2
    );
    let mut state = TrustedState::from_anchor(&anchor(&small.repo)).unwrap();
    our_refresh(&small.repo, &mut state).unwrap();
    assert_eq!(state.root().version, 2);
    let repository = tough_load(
        &small.repo,
        &anchor(&small.repo),
        &small.work.path().join("r"),
    )
    .unwrap();
    assert_eq!(u64::from(repository.root().signed.version), 2);
    // The old keys can no longer publish.
    let error = publish::refresh_timestamp(&repo, &small.config, now()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is not a timestamp key of root version 2"),
        "{error}"
    );
    // The new ones can, and clients accept it.
    publish::refresh_timestamp(&repo, &new, now()).unwrap();
    our_refresh(&small.repo, &mut state).unwrap();
    let _ = small.keys;
}

/// A publish killed at a random point after it started writing targets and before its
/// timestamp: the repository still verifies as before for a fresh client, and the next
/// publish completes.
#[test]
fn a_publish_killed_before_its_timestamp_leaves_the_repository_as_it_was() {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let keys = Keys::new();
    let config_path = keys.dir.path().join("keys.toml");
    let config = keys.config("keys.toml", None);
    publish::init(&Repository::new(&repo_dir), &config, now()).unwrap();
    let first = artifact(work.path(), &tiny_stub(""), &opencode("1.18.33"), "1.18.33");
    publish::publish(
        &Repository::new(&repo_dir),
        &config,
        &request(vec![first], 1),
        now(),
    )
    .unwrap();
    let timestamp = std::fs::read(repo_dir.join("metadata/timestamp.json")).unwrap();
    let second = artifact(work.path(), &tiny_stub(""), &opencode("1.18.34"), "1.18.34");
    let targets_before = std::fs::read_dir(repo_dir.join("targets")).unwrap().count();

    let mut child = Command::new(env!("CARGO_BIN_EXE_openwork-packager"))
        .args([
            "update-repo",
            "publish",
            "--level",
            "19",
            "--deltas",
            "1",
            "--repo",
        ])
        .arg(&repo_dir)
        .arg("--keys")
        .arg(&config_path)
        .arg("--artifact")
        .arg(&second)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has written its first new target (the artifact): the level-19
    // compression of 185 MB that follows takes far longer than this wait's steps.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_dir(repo_dir.join("targets")).unwrap().count() == targets_before {
        assert!(
            std::time::Instant::now() < deadline,
            "publish wrote no target in 2 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "publish ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(repo_dir.join("metadata/timestamp.json")).unwrap(),
        timestamp
    );
    let mut state = TrustedState::from_anchor(&anchor(&repo_dir)).unwrap();
    our_refresh(&repo_dir, &mut state).unwrap();
    assert_eq!(
        state.targets().unwrap().version,
        2,
        "still the first release"
    );

    let report = publish::publish(
        &Repository::new(&repo_dir),
        &config,
        &request(vec![second], 1),
        now(),
    )
    .unwrap();
    assert_eq!(report.release.unwrap().sequence, 2);
    our_refresh(&repo_dir, &mut state).unwrap();
    assert_eq!(state.targets().unwrap().version, 3);
}

/// The timestamp key on a PKCS#11 token (SoftHSM2), generated there, never leaving it: the
/// repository it signs is read by both clients.
#[test]
fn a_timestamp_key_on_a_pkcs11_token_signs_what_both_clients_accept() {
    let module = softhsm_module();
    let hsm = tempfile::tempdir().unwrap();
    let tokens = hsm.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = hsm.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // SAFETY: set before this process loads the module (its only reader, at C_Initialize);
    // no other test of this binary uses PKCS#11.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let tool = |program: &str, args: &[&str]| {
        let output = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|e| panic!("{program} ({e}); apt-get install softhsm2 opensc"));
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
    };
    tool(
        "softhsm2-util",
        &[
            "--init-token",
            "--free",
            "--label",
            "update",
            "--pin",
            "123456",
            "--so-pin",
            "654321",
        ],
    );
    tool(
        "pkcs11-tool",
        &[
            "--module",
            module.to_str().unwrap(),
            "--token-label",
            "update",
            "--login",
            "--pin",
            "123456",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "timestamp",
            "--id",
            "75",
        ],
    );
    let keys = Keys::new();
    std::fs::write(keys.dir.path().join("pin"), "123456").unwrap();
    let section = format!(
        "keys = [{{ pkcs11 = {{ module = \"{}\", token-label = \"update\", key-label = \"timestamp\", pin = \"file:pin\" }} }}]",
        module.display()
    );
    let config = keys.config("hsm.toml", Some(&section));
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let repo = Repository::new(&repo_dir);
    publish::init(&repo, &config, now()).unwrap();
    let sidecar = tiny_stub("let _ = 7;");
    let artifact = artifact(work.path(), &tiny_stub(""), &sidecar, "0.0.7");
    publish::publish(&repo, &config, &request(vec![artifact], 1), now()).unwrap();
    publish::refresh_timestamp(&repo, &config, now()).unwrap();
    let mut state = TrustedState::from_anchor(&anchor(&repo_dir)).unwrap();
    our_refresh(&repo_dir, &mut state).unwrap();
    assert_eq!(state.timestamp().unwrap().version, 3);
    tough_load(&repo_dir, &anchor(&repo_dir), &work.path().join("t")).unwrap();
    // A wrong PIN is a credentials error that names the token, not the PIN.
    std::fs::write(keys.dir.path().join("pin"), "000000").unwrap();
    let error = publish::refresh_timestamp(&repo, &config, now()).unwrap_err();
    assert_eq!(
        error.exit_code(),
        openwork_payload::ExitCode::Credentials,
        "{error}"
    );
    assert!(
        error.to_string().contains("\"update\"") && !error.to_string().contains("000000"),
        "{error}"
    );
}

fn softhsm_module() -> PathBuf {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib64/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("SoftHSM2's module (apt-get install softhsm2)")
}
