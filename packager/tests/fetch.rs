//! `fetch`: the npm source of opencode against a fake registry served from this test on
//! 127.0.0.1, the github, url and file sources against the same fake server standing in
//! for GitHub and mirrors (real archives of a real executable compiled by the test), plus
//! one test against the real registry that passes offline once the repository's cache is
//! warm.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine as _;
use openwork_packager::ExitCode;
use openwork_packager::fetch::{
    self, CacheRecord, FetchError, FetchRequest, FetchedBinary, Registry, Source, fetch_opencode,
    fetch_opencode_npm,
};
use openwork_packager::lock::{Input, InputsLock, LockedInput, LockedPackages};
use openwork_payload::targets::{self, Target};
use openwork_payload::{Arch, ExecutableFormat};
use openwork_testkit::http::{Request, Response, TestServer};
use sha2::{Digest, Sha256, Sha512};

const VERSION: &str = "1.0.0";

// ---------------------------------------------------------------------------------------
// A fake npm registry.

#[derive(Clone)]
struct Route {
    status: u16,
    body: Vec<u8>,
}

/// Serves fixed responses per path; responses queued with `fail_first` come first.
struct FakeRegistry {
    url: String,
    routes: Arc<Mutex<HashMap<String, Vec<Route>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    _server: TestServer,
}

impl FakeRegistry {
    fn start() -> FakeRegistry {
        let routes: Arc<Mutex<HashMap<String, Vec<Route>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let server = {
            let (r, h, t) = (routes.clone(), hits.clone(), total.clone());
            TestServer::start("fake-registry", move |request| serve(request, &r, &h, &t))
        };
        FakeRegistry {
            url: format!("{}/", server.base_url()),
            routes,
            hits,
            total,
            _server: server,
        }
    }

    fn set(&self, path: &str, status: u16, body: Vec<u8>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), vec![Route { status, body }]);
    }

    /// Answers `path` with `status` `times` times before its normal response.
    fn fail_first(&self, path: &str, status: u16, times: usize) {
        let mut routes = self.routes.lock().unwrap();
        let queue = routes.get_mut(path).expect("set the route first");
        for _ in 0..times {
            queue.insert(
                0,
                Route {
                    status,
                    body: b"try later".to_vec(),
                },
            );
        }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    fn registry(&self) -> Registry {
        Registry::new(&self.url).unwrap()
    }

    /// Publishes `package@VERSION` as a tarball with `files`; `integrity_of` overrides
    /// the bytes the published integrity is computed from.
    fn publish(&self, package: &str, files: &[(&str, &[u8])], integrity_of: Option<&[u8]>) {
        let tgz = tarball(files);
        let integrity = sri_sha512(integrity_of.unwrap_or(&tgz));
        let tgz_path = format!("/{package}/-/{package}-{VERSION}.tgz");
        let doc = serde_json::json!({
            "name": package,
            "version": VERSION,
            "dist": { "tarball": format!("{}{}", self.url, &tgz_path[1..]), "integrity": integrity, "shasum": "0" },
        });
        self.set(
            &format!("/{package}/{VERSION}"),
            200,
            serde_json::to_vec(&doc).unwrap(),
        );
        self.set(&tgz_path, 200, tgz);
    }
}

fn serve(
    request: &Request,
    routes: &Mutex<HashMap<String, Vec<Route>>>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
) -> Response {
    let path = request.target.clone();
    total.fetch_add(1, Ordering::SeqCst);
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let route = {
        let mut routes = routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(queue) if queue.len() > 1 => queue.remove(0),
            Some(queue) => queue[0].clone(),
            None => Route {
                status: 404,
                body: b"{\"error\":\"Not found\"}".to_vec(),
            },
        }
    };
    Response::new(route.status, "application/octet-stream", route.body)
}

// ---------------------------------------------------------------------------------------
// Test inputs.

/// A minimal 64-bit little-endian ELF executable header for `machine` (62 = x86-64,
/// 183 = AArch64): enough for goblin to identify, nothing to run.
fn elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    h[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(b"not really code, just bytes to hash");
    h
}

const ELF_X86_64: u16 = 62;
const ELF_AARCH64: u16 = 183;

fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let json = br#"{"name":"fake","version":"1.0.0"}"#;
    for (path, data) in [("package/package.json", &json[..])]
        .into_iter()
        .chain(files.iter().copied())
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn sri_sha512(data: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(data))
    )
}

fn target(name: &str) -> &'static Target {
    targets::by_name(name).unwrap()
}

/// An npm request to the fake registry that the lock does not pin: these tests are about
/// the registry's own integrity, the cache and the network; the lock's checks come after.
fn request(target: &'static Target, cache: &Path, registry: Registry) -> FetchRequest {
    FetchRequest {
        cache_root: cache.to_owned(),
        registry: Some(registry),
        allow_unpinned: true,
        ..FetchRequest::new(target, format!("v{VERSION}"))
    }
}

/// A registry URL nothing listens on.
fn dead_registry() -> Registry {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    Registry::new(&url).unwrap()
}

fn target_dir(cache: &Path, target: &str) -> PathBuf {
    cache.join("opencode").join(target)
}

/// Everything in the target's cache directory except lock files.
fn leftovers(cache: &Path, target: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(target_dir(cache, target)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    names.sort();
    names
}

fn assert_cached_ok(fetched: &FetchedBinary, expected: &[u8]) {
    assert_eq!(std::fs::read(&fetched.path).unwrap(), expected);
    assert_eq!(fetched.sha256, hex::encode(Sha256::digest(expected)));
    assert_eq!(fetched.size, expected.len() as u64);
    let record: CacheRecord =
        serde_json::from_slice(&std::fs::read(fetched.path.with_file_name("fetch.json")).unwrap())
            .unwrap();
    assert_eq!(
        (record.sha256.as_str(), record.size),
        (fetched.sha256.as_str(), fetched.size)
    );
    assert_eq!(record.integrity, fetched.integrity);
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn fetches_verifies_caches_and_then_works_offline() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let linux = target("linux-x64");

    let first = fetch_opencode_npm(&request(linux, cache.path(), server.registry())).unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.version, VERSION);
    assert_eq!(first.source, "npm:opencode-linux-x64@1.0.0");
    assert!(
        first.path.ends_with("opencode/linux-x64/v1.0.0/opencode"),
        "{}",
        first.path.display()
    );
    assert!(first.integrity.starts_with("sha512-"));
    assert_cached_ok(&first, &binary);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&first.path).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert_eq!(server.total(), 2, "version document + tarball");
    assert_eq!(
        leftovers(cache.path(), "linux-x64"),
        ["v1.0.0"],
        "no staging left behind"
    );

    // Warm: offline, with no registry reachable at all.
    let offline = FetchRequest {
        offline: true,
        ..request(linux, cache.path(), dead_registry())
    };
    let warm = fetch_opencode_npm(&offline).unwrap();
    assert_eq!(
        warm,
        FetchedBinary {
            from_cache: true,
            ..first.clone()
        }
    );
    // Warm and online: still no request.
    let warm = fetch_opencode_npm(&request(linux, cache.path(), server.registry())).unwrap();
    assert!(warm.from_cache);
    assert_eq!(server.total(), 2);
}

#[test]
fn integrity_mismatch_is_refused_and_leaves_the_cache_untouched() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        Some(b"other bytes"),
    );
    let cache = tempfile::tempdir().unwrap();

    let err = fetch_opencode_npm(&request(
        target("linux-x64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap_err();
    let FetchError::IntegrityMismatch {
        expected,
        computed,
        url,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(expected, &sri_sha512(b"other bytes"));
    assert!(computed.starts_with("sha512-") && computed != expected);
    assert!(url.ends_with("/opencode-linux-x64-1.0.0.tgz"), "{url}");
    let message = err.to_string();
    assert!(
        message.contains(expected.as_str()) && message.contains(computed.as_str()),
        "{message}"
    );
    assert_eq!(
        server.hits("/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz"),
        1,
        "a mismatch is not retried"
    );
    assert!(
        leftovers(cache.path(), "linux-x64").is_empty(),
        "{:?}",
        leftovers(cache.path(), "linux-x64")
    );
}

/// The lock, not the registry, vouches for an input: a registry (or a mirror, or an
/// `.npmrc` added to the repository) that serves another build with an integrity field
/// computed from it is refused before anything is downloaded, and so is what the lock does
/// not pin; a cached entry the lock no longer names is not served.
#[test]
fn the_lock_refuses_what_a_registry_vouches_for_itself() {
    let server = FakeRegistry::start();
    let linux = target("linux-x64");
    let tgz_path = "/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz";
    let locked_binary = elf(ELF_X86_64);
    let locked_tgz = tarball(&[("package/bin/opencode", &locked_binary)]);
    let lock = lock_of(linux, &locked_tgz, &locked_binary);
    let cache = tempfile::tempdir().unwrap();
    let pinned = |lock: &InputsLock| {
        let mut req = FetchRequest {
            allow_unpinned: false,
            ..request(linux, cache.path(), server.registry())
        };
        req.pin_from(lock, Input::Opencode, &Source::Npm);
        req
    };

    // Another build, announced with its own (self-consistent) integrity.
    let mut other = locked_binary.clone();
    other.extend_from_slice(b"and a little extra");
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &other)],
        None,
    );
    let err = fetch_opencode_npm(&pinned(&lock)).unwrap_err();
    assert!(matches!(err, FetchError::LockMismatch { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Integrity);
    assert!(
        err.to_string().contains("openwork-packager lock"),
        "says what to do: {err}"
    );
    assert_eq!(server.hits(tgz_path), 0, "refused before the download");
    assert!(leftovers(cache.path(), "linux-x64").is_empty());

    // Nothing pins it and it is not allowed: refused before any request.
    let before = server.total();
    let unpinned = FetchRequest {
        allow_unpinned: false,
        ..request(linux, cache.path(), server.registry())
    };
    let err = fetch_opencode_npm(&unpinned).unwrap_err();
    assert!(matches!(err, FetchError::Unverified { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::BadInput);
    assert!(err.to_string().contains("--allow-unpinned"), "{err}");
    assert_eq!(server.total(), before);

    // The locked build: fetched, checked, cached.
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &locked_binary)],
        None,
    );
    let fetched = fetch_opencode_npm(&pinned(&lock)).unwrap();
    assert_cached_ok(&fetched, &locked_binary);
    assert!(fetched.verified);

    // A lock that names another executable: the cached entry is not served, the download
    // does not match, and the entry in place survives.
    let mut relocked = lock.clone();
    relocked
        .opencode
        .targets
        .get_mut("linux-x64")
        .unwrap()
        .sha256 = sha256_hex(b"another");
    let err = fetch_opencode_npm(&pinned(&relocked)).unwrap_err();
    assert!(matches!(err, FetchError::Sha256Mismatch { .. }), "{err}");
    assert_eq!(std::fs::read(&fetched.path).unwrap(), locked_binary);
}

/// A download never grows past the size the lock says, whatever the registry announces:
/// a body without an end (no `Content-Length`) is cut off there and nothing is cached.
#[test]
fn a_download_stops_at_the_locked_size() {
    let endless = TestServer::start("endless", |_| {
        let chunk = vec![0x1f; 64 * 1024];
        Response::stream(200, "application/octet-stream", std::iter::repeat(chunk))
    });
    let endless_url = format!("{}/endless.tgz", endless.base_url());
    let server = FakeRegistry::start();
    let linux = target("linux-x64");
    let binary = elf(ELF_X86_64);
    let tgz = tarball(&[("package/bin/opencode", &binary)]);
    let lock = lock_of(linux, &tgz, &binary);
    // The registry announces the locked integrity but points at a body without end.
    let doc = serde_json::json!({
        "name": "opencode-linux-x64",
        "version": VERSION,
        "dist": { "tarball": endless_url, "integrity": sri_sha512(&tgz) },
    });
    server.set(
        &format!("/opencode-linux-x64/{VERSION}"),
        200,
        serde_json::to_vec(&doc).unwrap(),
    );
    let cache = tempfile::tempdir().unwrap();
    let mut req = FetchRequest {
        allow_unpinned: false,
        ..request(linux, cache.path(), server.registry())
    };
    req.pin_from(&lock, Input::Opencode, &Source::Npm);
    let err = fetch_opencode_npm(&req).unwrap_err();
    let FetchError::TooLarge { limit, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*limit, tgz.len() as u64);
    assert_eq!(err.exit_code(), ExitCode::Integrity);
    assert!(leftovers(cache.path(), "linux-x64").is_empty());
}

/// `release` of an input the registry serves differently from the lock: a clear error (exit
/// 4) before any download, and neither the cache nor the dist dir gets anything.
#[test]
fn a_release_of_a_lock_mismatched_input_fails_and_leaves_cache_and_dist_untouched() {
    let server = FakeRegistry::start();
    let linux = target("linux-x64");
    let locked_binary = elf(ELF_X86_64);
    let locked_tgz = tarball(&[("package/bin/opencode", &locked_binary)]);
    let dir = tempfile::tempdir().unwrap();
    let lock_path = dir.path().join("inputs.lock.json");
    std::fs::write(
        &lock_path,
        lock_of(linux, &locked_tgz, &locked_binary).to_text(),
    )
    .unwrap();
    let constants = dir.path().join("constants.json");
    std::fs::write(
        &constants,
        format!(r#"{{"opencodeVersion":"{VERSION}","bunVersion":"1.3.10"}}"#),
    )
    .unwrap();
    // Another build, with an integrity computed from it.
    let mut other = locked_binary.clone();
    other.extend_from_slice(b"and a little extra");
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &other)],
        None,
    );

    let dist = dir.path().join("dist");
    let entry = openwork_packager::paths::default_cache_root()
        .join(format!("opencode/linux-x64/v{VERSION}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openwork-packager"))
        .args(["--constants", constants.to_str().unwrap()])
        .args(["--lock", lock_path.to_str().unwrap()])
        .args(["release", "--target", "linux-x64", "--fast", "--stub"])
        .arg(dir.path().join("never-read"))
        .arg("--dist")
        .arg(&dist)
        .env("NPM_CONFIG_REGISTRY", &server.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("inputs.lock.json locked") && stderr.contains("openwork-packager lock"),
        "{stderr}"
    );
    assert_eq!(
        server.hits("/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz"),
        0
    );
    assert!(!dist.exists(), "dist/ was touched");
    assert!(!entry.exists(), "{} was cached", entry.display());
}

/// `openwork-packager lock` against the fake registry: it records what the registry serves
/// (integrity, sizes, the executable's hash), leaves out what the registry lacks, prints the
/// changes, and `--check` fails (exit 4, nothing written) while the file is stale.
#[test]
fn lock_records_what_the_registry_serves_and_check_catches_a_stale_lock() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let constants = dir.path().join("constants.json");
    std::fs::write(
        &constants,
        format!(r#"{{"opencodeVersion":"{VERSION}","bunVersion":"{VERSION}"}}"#),
    )
    .unwrap();
    let lock_path = dir.path().join("inputs.lock.json");
    let mut empty = InputsLock::built_in();
    empty.opencode.targets.clear();
    std::fs::write(&lock_path, empty.to_text()).unwrap();
    let cache = dir.path().join("cache");
    let lock = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_openwork-packager"))
            .args(["--constants", constants.to_str().unwrap()])
            .args(["--lock", lock_path.to_str().unwrap()])
            .args(["lock", "--cache-dir", cache.to_str().unwrap()])
            .args(extra)
            .env("NPM_CONFIG_REGISTRY", &server.url)
            .output()
            .unwrap()
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let before = std::fs::read(&lock_path).unwrap();
    let out = lock(&["--check"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("+ opencode linux-x64"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(&lock_path).unwrap(),
        before,
        "--check writes nothing"
    );

    let out = lock(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the registry has no opencode-windows-x64@1.0.0"),
        "{}",
        text(&out)
    );
    let written = InputsLock::load(Some(&lock_path)).unwrap();
    let entry = written
        .entry(Input::Opencode, "linux-x64", VERSION)
        .unwrap();
    let tgz = tarball(&[("package/bin/opencode", &binary)]);
    assert_eq!(entry.integrity, sri_sha512(&tgz));
    assert_eq!(entry.tarball_size, tgz.len() as u64);
    assert_eq!(entry.sha256, sha256_hex(&binary));
    assert_eq!(
        written.opencode.targets.len(),
        1,
        "only what the registry has"
    );
    assert!(lock(&["--check"]).status.success());

    // The registry changes its bytes: the lock shows it as a change, downloaded afresh.
    let mut rebuilt = binary.clone();
    rebuilt.extend_from_slice(b"rebuilt");
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &rebuilt)],
        None,
    );
    let out = lock(&["--check"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("~ opencode linux-x64"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains(&sha256_hex(&rebuilt)), "{}", text(&out));
}

/// A lock with `target`'s opencode at [`VERSION`] as `tgz` holding `binary`.
fn lock_of(target: &Target, tgz: &[u8], binary: &[u8]) -> InputsLock {
    let mut lock = InputsLock::built_in();
    lock.opencode = LockedPackages {
        version: VERSION.into(),
        targets: [(
            target.name.clone(),
            LockedInput {
                package: target.opencode.npm_package.clone(),
                integrity: sri_sha512(tgz),
                tarball_size: tgz.len() as u64,
                sha256: sha256_hex(binary),
                size: binary.len() as u64,
                asset_sha256: None,
            },
        )]
        .into(),
    };
    lock.validate().unwrap();
    lock
}

#[test]
fn wrong_architecture_or_format_is_refused() {
    let server = FakeRegistry::start();
    let x86_64 = elf(ELF_X86_64);
    // An x86-64 ELF published as opencode for arm64 Linux and for Windows.
    server.publish(
        "opencode-linux-arm64",
        &[("package/bin/opencode", &x86_64)],
        None,
    );
    server.publish(
        "opencode-windows-x64",
        &[("package/bin/opencode.exe", &x86_64)],
        None,
    );
    let cache = tempfile::tempdir().unwrap();

    let err = fetch_opencode_npm(&request(
        target("linux-arm64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap_err();
    let FetchError::WrongBinary {
        expected, found, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (expected.as_str(), found.as_str()),
        ("elf aarch64", "elf x86_64")
    );
    assert!(err.to_string().contains("linux-arm64"), "{err}");

    let err = fetch_opencode_npm(&request(
        target("windows-x64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap_err();
    let FetchError::WrongBinary {
        expected, found, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (expected.as_str(), found.as_str()),
        ("pe x86_64", "elf x86_64")
    );

    assert!(leftovers(cache.path(), "linux-arm64").is_empty());
    assert!(leftovers(cache.path(), "windows-x64").is_empty());
}

#[test]
fn the_right_architecture_is_accepted_for_arm64() {
    // The same path with the binary that does match, so the refusal above is about the
    // architecture and nothing else.
    let server = FakeRegistry::start();
    let aarch64 = elf(ELF_AARCH64);
    server.publish(
        "opencode-linux-arm64",
        &[("package/bin/opencode", &aarch64)],
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch_opencode_npm(&request(
        target("linux-arm64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap();
    assert_cached_ok(&fetched, &aarch64);
    let info =
        openwork_payload::container::identify(&std::fs::read(&fetched.path).unwrap()).unwrap();
    assert_eq!(
        (info.format, info.arch),
        (ExecutableFormat::Elf, Arch::Aarch64)
    );
}

#[test]
fn damaged_cache_entry_is_removed_then_fetched_again() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let linux = target("linux-x64");
    let first = fetch_opencode_npm(&request(linux, cache.path(), server.registry())).unwrap();

    std::fs::write(&first.path, b"tampered").unwrap();
    let offline = FetchRequest {
        offline: true,
        ..request(linux, cache.path(), dead_registry())
    };
    let err = fetch_opencode_npm(&offline).unwrap_err();
    assert!(matches!(err, FetchError::CacheCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("without --offline"), "{err}");
    assert!(!first.path.exists(), "the damaged entry is gone");

    let again = fetch_opencode_npm(&request(linux, cache.path(), server.registry())).unwrap();
    assert!(!again.from_cache);
    assert_cached_ok(&again, &binary);
}

#[test]
fn offline_with_a_cold_cache_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest {
        offline: true,
        ..request(target("linux-x64"), cache.path(), dead_registry())
    };
    let err = fetch_opencode_npm(&req).unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
    assert!(
        err.to_string().contains("npm:opencode-linux-x64@1.0.0"),
        "{err}"
    );
}

#[test]
fn unknown_version_and_missing_executable_are_clear_errors() {
    let server = FakeRegistry::start();
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_opencode_npm(&request(
        target("linux-x64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap_err();
    assert!(matches!(err, FetchError::VersionNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("opencode-linux-x64@1.0.0"),
        "{err}"
    );

    server.publish(
        "opencode-linux-x64",
        &[("package/README.md", b"no binary here")],
        None,
    );
    let err = fetch_opencode_npm(&request(
        target("linux-x64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap_err();
    assert!(matches!(err, FetchError::MissingMember { .. }), "{err}");
    assert!(leftovers(cache.path(), "linux-x64").is_empty());
}

#[test]
fn unreachable_registry_fails_after_retries_and_says_what_to_check() {
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_opencode_npm(&request(target("linux-x64"), cache.path(), dead_registry()))
        .unwrap_err();
    let FetchError::Http { attempts, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*attempts, 4);
    assert!(err.to_string().contains("NPM_CONFIG_REGISTRY"), "{err}");
    assert!(leftovers(cache.path(), "linux-x64").is_empty());
}

#[test]
fn transient_server_errors_are_retried() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        None,
    );
    server.fail_first("/opencode-linux-x64/1.0.0", 503, 1);
    server.fail_first("/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz", 502, 2);
    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch_opencode_npm(&request(
        target("linux-x64"),
        cache.path(),
        server.registry(),
    ))
    .unwrap();
    assert_cached_ok(&fetched, &binary);
    assert_eq!(server.hits("/opencode-linux-x64/1.0.0"), 2);
    assert_eq!(
        server.hits("/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz"),
        3
    );
}

#[test]
fn concurrent_fetches_share_one_download() {
    let server = FakeRegistry::start();
    let binary = elf(ELF_X86_64);
    server.publish(
        "opencode-linux-x64",
        &[("package/bin/opencode", &binary)],
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let req = request(target("linux-x64"), cache.path(), server.registry());
    let results: Vec<FetchedBinary> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fetch_opencode_npm(&req).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for fetched in &results {
        assert_cached_ok(fetched, &binary);
    }
    assert_eq!(
        results.iter().filter(|f| !f.from_cache).count(),
        1,
        "one download, the rest waited for it"
    );
    assert_eq!(
        server.hits("/opencode-linux-x64/-/opencode-linux-x64-1.0.0.tgz"),
        1
    );
    assert_eq!(leftovers(cache.path(), "linux-x64"), ["v1.0.0"]);
}

/// The real thing: opencode's linux-x64 package at the pinned version (about 46 MB to
/// download, 141 MB unpacked) into the repository's git-ignored cache. Needs the network
/// once; afterwards it runs offline.
#[test]
fn real_pinned_opencode_linux_x64_from_npm() {
    let path = fetch::ensure_pinned_opencode("linux-x64").unwrap();
    let pinned = {
        let text = std::fs::read_to_string(
            openwork_packager::paths::workspace_root().join("constants.json"),
        )
        .unwrap();
        let constants: serde_json::Value = serde_json::from_str(&text).unwrap();
        constants["opencodeVersion"].as_str().unwrap().to_owned()
    };
    let mut req = FetchRequest {
        offline: true,
        ..FetchRequest::new(target("linux-x64"), pinned.clone())
    };
    let lock = InputsLock::built_in();
    req.pin_from(&lock, Input::Opencode, &Source::Npm);
    let fetched = fetch_opencode_npm(&req).unwrap();
    assert!(fetched.from_cache);
    assert_eq!(fetched.path, path);
    assert_eq!(fetched.source, format!("npm:opencode-linux-x64@{pinned}"));
    // What the committed lock says, byte for byte.
    let locked = lock
        .entry(Input::Opencode, "linux-x64", &pinned)
        .expect("the pinned linux-x64 opencode is locked");
    assert_eq!(
        (
            &fetched.integrity,
            &fetched.sha256,
            fetched.size,
            fetched.download_size
        ),
        (
            &locked.integrity,
            &locked.sha256,
            locked.size,
            Some(locked.tarball_size)
        )
    );

    // The tarball was checked against the registry's SHA-512 before it was unpacked; the
    // record keeps that integrity, which must be a well-formed SHA-512.
    let digest = fetched
        .integrity
        .strip_prefix("sha512-")
        .expect("sha512 integrity");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(digest)
            .unwrap()
            .len(),
        64
    );

    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len() as u64, fetched.size);
    assert!(
        fetched.size > 50_000_000,
        "opencode is a big single-file executable"
    );
    assert_eq!(hex::encode(Sha256::digest(&data)), fetched.sha256);
    let info = openwork_payload::container::identify(&data).unwrap();
    assert_eq!(
        (info.format, info.arch),
        (ExecutableFormat::Elf, Arch::X86_64)
    );
}

// ---------------------------------------------------------------------------------------
// The github, url and file sources.

/// A real, small executable for the host: `fn main() {}` compiled by rustc once per run.
fn real_exe() -> &'static [u8] {
    static EXE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("main.rs");
        std::fs::write(&src, "fn main() {}\n").unwrap();
        let out = dir.path().join("tiny");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = std::process::Command::new(rustc)
            .args(["-C", "strip=symbols", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("rustc runs");
        assert!(status.success());
        std::fs::read(&out).unwrap()
    })
}

fn host() -> &'static Target {
    target(targets::host_name().expect("tests run on a release target"))
}

/// A target whose executables the host's are not.
fn foreign() -> &'static Target {
    let host = host();
    targets::all()
        .iter()
        .find(|t| (t.format, t.arch) != (host.format, host.arch))
        .unwrap()
}

fn exe_name(target: &Target) -> String {
    format!("opencode{}", target.exe_suffix)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

enum Member<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A name written into the header as is, bypassing the tar crate's own checks.
    RawName(&'a str, &'a [u8]),
}

fn tar_gz(members: &[Member<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    builder
        .append_data(&mut file_header(7), "README.md", &b"opencode"[..])
        .unwrap();
    for member in members {
        match *member {
            Member::File(path, data) => {
                builder
                    .append_data(&mut file_header(data.len()), path, data)
                    .unwrap();
            }
            Member::Symlink(path, to) => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, to).unwrap();
            }
            Member::RawName(name, data) => {
                let mut header = file_header(data.len());
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                header.set_cksum();
                builder.append(&header, data).unwrap();
            }
        }
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn file_header(size: usize) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o755);
    header.set_cksum();
    header
}

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    for (name, data) in members {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn url_request(cache: &Path) -> FetchRequest {
    FetchRequest {
        cache_root: cache.to_owned(),
        quiet: true,
        ..FetchRequest::new(host(), VERSION)
    }
}

fn read_record(fetched: &FetchedBinary) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fetched.path.with_file_name("fetch.json")).unwrap())
        .unwrap()
}

/// The executable runs: the cache holds the real thing, intact and executable.
fn assert_runs(path: &Path) {
    if std::env::consts::OS != "windows" {
        let status = std::process::Command::new(path).status().unwrap();
        assert!(status.success(), "{}", path.display());
    }
}

#[test]
fn url_source_with_a_pin_caches_tar_gz_and_zip_and_then_works_offline() {
    let exe = real_exe();
    let name = exe_name(host());
    let server = FakeRegistry::start();
    let tgz = tar_gz(&[Member::File(&format!("opencode-x/{name}"), exe)]);
    let zip = zip_of(&[("LICENSE", b"MIT"), (&name, exe)]);
    server.set("/mirror/a.tar.gz", 200, tgz.clone());
    server.set("/mirror/a.zip", 200, zip.clone());

    for (path, asset) in [("mirror/a.tar.gz", &tgz), ("mirror/a.zip", &zip)] {
        let cache = tempfile::tempdir().unwrap();
        let url = format!("{}{path}", server.url);
        let source = Source::Url(url.clone());
        let req = FetchRequest {
            asset_sha256: Some(sha256_hex(asset)),
            ..url_request(cache.path())
        };
        let before = server.total();
        let fetched = fetch_opencode(&req, &source).unwrap();
        assert!(!fetched.from_cache && fetched.verified);
        assert_eq!(fetched.source, format!("url:{url}"));
        assert_eq!(fetched.asset_sha256.as_deref(), Some(&*sha256_hex(asset)));
        assert_cached_ok(&fetched, exe);
        assert_runs(&fetched.path);
        let record = read_record(&fetched);
        assert_eq!(record["source"], fetched.source.as_str());
        assert_eq!(record["verified"], true);
        assert_eq!(record["assetSha256"], sha256_hex(asset).as_str());
        assert_eq!(record["sha256"], sha256_hex(exe).as_str());
        assert_eq!(leftovers(cache.path(), &host().name), ["v1.0.0"]);
        assert_eq!(server.total(), before + 1);

        // Warm: no request, and offline with nothing listening.
        let warm = fetch_opencode(&req, &source).unwrap();
        assert!(warm.from_cache && warm.verified);
        assert_eq!(server.total(), before + 1);
        let offline = FetchRequest {
            offline: true,
            ..req.clone()
        };
        let dead = dead_registry();
        let gone = Source::Url(format!("{}{path}", dead.display_url()));
        let err = fetch_opencode(&offline, &gone).unwrap_err();
        assert!(matches!(err, FetchError::CacheUnusable { .. }), "{err}");
        assert!(err.to_string().contains(&format!("url:{url}")), "{err}");
        let warm = fetch_opencode(&offline, &source).unwrap();
        assert_eq!(warm.path, fetched.path);
    }
}

#[test]
fn pin_mismatch_is_an_integrity_error_and_leaves_no_trace() {
    let server = FakeRegistry::start();
    let tgz = tar_gz(&[Member::File(&exe_name(host()), real_exe())]);
    server.set("/a.tar.gz", 200, tgz.clone());
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest {
        asset_sha256: Some(sha256_hex(b"something else")),
        ..url_request(cache.path())
    };
    let err = fetch_opencode(&req, &Source::Url(format!("{}a.tar.gz", server.url))).unwrap_err();
    let FetchError::Sha256Mismatch {
        expected, computed, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (expected.as_str(), computed.as_str()),
        (&*sha256_hex(b"something else"), &*sha256_hex(&tgz))
    );
    assert_eq!(err.exit_code(), ExitCode::Integrity);
    assert_eq!(server.hits("/a.tar.gz"), 1, "a mismatch is not retried");
    assert!(leftovers(cache.path(), &host().name).is_empty());

    // An executable pin is checked too, after extraction.
    let req = FetchRequest {
        asset_sha256: Some(sha256_hex(&tgz)),
        expected_sha256: Some(sha256_hex(b"another build")),
        ..url_request(cache.path())
    };
    let err = fetch_opencode(&req, &Source::Url(format!("{}a.tar.gz", server.url))).unwrap_err();
    assert!(matches!(err, FetchError::Sha256Mismatch { .. }), "{err}");
    assert!(leftovers(cache.path(), &host().name).is_empty());
}

#[test]
fn unpinned_downloads_are_refused_unless_allowed_and_then_recorded_unverified() {
    let server = FakeRegistry::start();
    let tgz = tar_gz(&[Member::File(&exe_name(host()), real_exe())]);
    server.set("/a.tar.gz", 200, tgz.clone());
    let source = Source::Url(format!("{}a.tar.gz", server.url));
    let cache = tempfile::tempdir().unwrap();

    let missing = FetchRequest {
        allow_unpinned: true,
        ..url_request(cache.path())
    };
    let err =
        fetch_opencode(&missing, &Source::Url(format!("{}nope.zip", server.url))).unwrap_err();
    assert!(
        matches!(err, FetchError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no such release asset"), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Network);
    assert!(leftovers(cache.path(), &host().name).is_empty());
    let before = server.total();

    let err = fetch_opencode(&url_request(cache.path()), &source).unwrap_err();
    assert!(matches!(err, FetchError::Unverified { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::BadInput);
    assert!(err.to_string().contains("--allow-unpinned"), "{err}");
    assert_eq!(server.total(), before, "refused before any download");

    let allowed = FetchRequest {
        allow_unpinned: true,
        ..url_request(cache.path())
    };
    let fetched = fetch_opencode(&allowed, &source).unwrap();
    assert!(!fetched.verified);
    assert_eq!(read_record(&fetched)["verified"], false);
    assert_cached_ok(&fetched, real_exe());
    let again = fetch_opencode(&allowed, &source).unwrap();
    assert!(again.from_cache && !again.verified);

    // A pin added later vouches for the entry it matches...
    let pinned = FetchRequest {
        asset_sha256: Some(sha256_hex(&tgz)),
        ..url_request(cache.path())
    };
    let vouched = fetch_opencode(&pinned, &source).unwrap();
    assert!(vouched.from_cache && vouched.verified);
    // ...and one it does not match is not answered from the cache: the download is
    // checked again, and the entry stays as it was when that fails.
    let other_pin = FetchRequest {
        asset_sha256: Some(sha256_hex(b"x")),
        ..url_request(cache.path())
    };
    let err = fetch_opencode(&other_pin, &source).unwrap_err();
    assert!(matches!(err, FetchError::Sha256Mismatch { .. }), "{err}");
    assert_eq!(server.hits("/a.tar.gz"), 2);
    assert_eq!(leftovers(cache.path(), &host().name), ["v1.0.0"]);
    assert_cached_ok(&fetched, real_exe());
}

#[test]
fn unsafe_or_incomplete_archives_are_refused() {
    let exe = real_exe();
    let name = exe_name(host());
    let escaping = format!("../{name}");
    let absolute = format!("/tmp/{name}");
    let nested = format!("a/b/{name}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "escape.tar.gz",
            tar_gz(&[Member::RawName(&escaping, exe)]),
            "climbs out",
        ),
        (
            "escape-other.tar.gz",
            tar_gz(&[
                Member::File(&name, exe),
                Member::RawName("../../etc/evil", b"x"),
            ]),
            "climbs out",
        ),
        (
            "absolute.tar.gz",
            tar_gz(&[Member::RawName(&absolute, exe)]),
            "absolute",
        ),
        (
            "missing.tar.gz",
            tar_gz(&[Member::File(&nested, exe)]),
            "no regular file",
        ),
        (
            "link.tar.gz",
            tar_gz(&[Member::Symlink(&name, "/bin/sh")]),
            "not a regular file",
        ),
        (
            "two.tar.gz",
            tar_gz(&[
                Member::File(&name, exe),
                Member::File(&format!("d/{name}"), exe),
            ]),
            "two members",
        ),
        (
            "escape.zip",
            zip_of(&[(escaping.as_str(), exe)]),
            "outside the archive",
        ),
        (
            "missing.zip",
            zip_of(&[("README", b"hi")]),
            "no regular file",
        ),
        (
            "garbage.tar.gz",
            vec![0x1f, 0x8b, 8, 0, 1, 2, 3],
            "readable",
        ),
    ];
    let server = FakeRegistry::start();
    for (path, body, _) in &cases {
        server.set(&format!("/{path}"), 200, body.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest {
        allow_unpinned: true,
        ..url_request(cache.path())
    };
    for (path, _, expected) in &cases {
        let err = fetch_opencode(&req, &Source::Url(format!("{}{path}", server.url))).unwrap_err();
        assert!(
            matches!(err, FetchError::BadArchive { .. }),
            "{path}: {err}"
        );
        assert!(err.to_string().contains(expected), "{path}: {err}");
        assert_eq!(err.exit_code(), ExitCode::BadInput);
        assert!(leftovers(cache.path(), &host().name).is_empty(), "{path}");
    }
}

#[test]
fn wrong_architecture_asset_is_refused() {
    let foreign = foreign();
    let server = FakeRegistry::start();
    let tgz = tar_gz(&[Member::File(&exe_name(foreign), real_exe())]);
    server.set("/a.tar.gz", 200, tgz.clone());
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest {
        asset_sha256: Some(sha256_hex(&tgz)),
        ..FetchRequest::new(foreign, VERSION)
    };
    let req = FetchRequest {
        cache_root: cache.path().to_owned(),
        quiet: true,
        ..req
    };
    let err = fetch_opencode(&req, &Source::Url(format!("{}a.tar.gz", server.url))).unwrap_err();
    assert!(matches!(err, FetchError::WrongBinary { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::WrongTarget);
    assert!(leftovers(cache.path(), &foreign.name).is_empty());
}

#[test]
fn file_source_takes_binaries_and_archives_checked_against_pins() {
    let exe = real_exe();
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join(exe_name(host()));
    std::fs::write(&binary, exe).unwrap();
    let asset = dir.path().join(&host().opencode.github_asset);
    let archive = if asset.to_string_lossy().ends_with(".zip") {
        zip_of(&[(&*exe_name(host()), exe)])
    } else {
        tar_gz(&[Member::File(&exe_name(host()), exe)])
    };
    std::fs::write(&asset, &archive).unwrap();
    let cache = tempfile::tempdir().unwrap();

    // Unpinned: refused like any other source, unless allowed; then recorded unverified.
    let err =
        fetch_opencode(&url_request(cache.path()), &Source::File(binary.clone())).unwrap_err();
    assert!(matches!(err, FetchError::Unverified { .. }), "{err}");
    assert!(leftovers(cache.path(), &host().name).is_empty());
    let allowed = FetchRequest {
        allow_unpinned: true,
        ..url_request(cache.path())
    };
    let fetched = fetch_opencode(&allowed, &Source::File(binary.clone())).unwrap();
    assert!(!fetched.verified && !fetched.from_cache);
    assert_eq!(fetched.source, format!("file:{}", exe_name(host())));
    assert_cached_ok(&fetched, exe);
    assert_runs(&fetched.path);

    // Pinned through the lock's asset pin, because it is the release asset.
    let dir_path = dir.path();
    let asset_sha = sha256_hex(&archive);
    let lock = InputsLock::load(Some(&lock_with(
        dir_path,
        "lock.json",
        &[(host(), &sha256_hex(exe), Some(&asset_sha))],
    )))
    .unwrap();
    let source = Source::File(asset.clone());
    let mut req = url_request(cache.path());
    req.pin_from(&lock, Input::Opencode, &source);
    assert_eq!(req.asset_sha256, Some(asset_sha.clone()));
    assert_eq!(req.expected_sha256, Some(sha256_hex(exe)));
    let fetched = fetch_opencode(&req, &source).unwrap();
    assert!(fetched.verified);
    assert_eq!(read_record(&fetched)["verified"], true);
    assert_cached_ok(&fetched, exe);
    assert_eq!(leftovers(cache.path(), &host().name), ["v1.0.0"]);

    // A mismatching pin: refused, and the entry already there stays.
    let req = FetchRequest {
        asset_sha256: Some(sha256_hex(b"not it")),
        ..url_request(cache.path())
    };
    let err = fetch_opencode(&req, &Source::File(binary.clone())).unwrap_err();
    assert!(matches!(err, FetchError::Sha256Mismatch { .. }), "{err}");
    assert_cached_ok(&fetched, exe);

    // Not an executable at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a program").unwrap();
    let err = fetch_opencode(&allowed, &Source::File(text)).unwrap_err();
    assert!(matches!(err, FetchError::WrongBinary { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::WrongTarget);
    assert_eq!(leftovers(cache.path(), &host().name), ["v1.0.0"]);
    assert_cached_ok(&fetched, exe);
}

#[test]
fn an_entry_from_one_source_does_not_answer_another() {
    let server = FakeRegistry::start();
    let exe = real_exe();
    let package = &host().opencode.npm_package;
    server.publish(
        package,
        &[(&format!("package/bin/{}", exe_name(host())), exe)],
        None,
    );
    let tgz = tar_gz(&[Member::File(&exe_name(host()), exe)]);
    server.set("/a.tar.gz", 200, tgz.clone());
    let cache = tempfile::tempdir().unwrap();
    let npm = fetch_opencode_npm(&FetchRequest {
        quiet: true,
        ..request(host(), cache.path(), server.registry())
    })
    .unwrap();
    assert!(npm.verified);

    let source = Source::Url(format!("{}a.tar.gz", server.url));
    let req = FetchRequest {
        asset_sha256: Some(sha256_hex(&tgz)),
        ..url_request(cache.path())
    };
    let offline = FetchRequest {
        offline: true,
        ..req.clone()
    };
    let err = fetch_opencode(&offline, &source).unwrap_err();
    let FetchError::CacheUnusable { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("npm:"), "{reason}");
    assert!(
        npm.path.exists(),
        "an offline refusal does not remove the entry"
    );

    let url = fetch_opencode(&req, &source).unwrap();
    assert!(!url.from_cache);
    assert!(url.source.starts_with("url:"));
    assert_eq!(leftovers(cache.path(), &host().name), ["v1.0.0"]);
}

// ---------------------------------------------------------------------------------------
// The command line with --source github, against the fake server as the releases URL.

fn packager(args: &[&str], releases: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_openwork-packager"))
        .args(args)
        .env(fetch::GITHUB_RELEASES_ENV, releases)
        .output()
        .unwrap()
}

/// The repository's inputs.lock.json with opencode at [`VERSION`] pinned as `pins` says:
/// per target, the executable's SHA-256 and the release asset's, if any.
fn lock_with(dir: &Path, name: &str, pins: &[(&Target, &str, Option<&str>)]) -> PathBuf {
    let mut lock = InputsLock::built_in();
    lock.opencode = LockedPackages {
        version: VERSION.into(),
        targets: pins
            .iter()
            .map(|(target, exe_sha256, asset_sha256)| {
                let entry = LockedInput {
                    package: target.opencode.npm_package.clone(),
                    integrity: sri_sha512(b"the npm tarball, not used by github"),
                    tarball_size: 1,
                    sha256: (*exe_sha256).to_owned(),
                    size: 1,
                    asset_sha256: asset_sha256.map(str::to_owned),
                };
                (target.name.clone(), entry)
            })
            .collect(),
    };
    let path = dir.join(name);
    std::fs::write(&path, lock.to_text()).unwrap();
    path
}

#[test]
fn cli_github_source_pins_exit_codes_and_offline() {
    let server = FakeRegistry::start();
    let releases = format!("{}releases", server.url);
    let host = host();
    let foreign = foreign();
    let asset_of = |target: &Target| {
        if target.opencode.github_asset.ends_with(".zip") {
            zip_of(&[(&*exe_name(target), real_exe())])
        } else {
            tar_gz(&[Member::File(&exe_name(target), real_exe())])
        }
    };
    let (host_asset, foreign_asset) = (asset_of(host), asset_of(foreign));
    for (target, asset) in [(host, &host_asset), (foreign, &foreign_asset)] {
        server.set(
            &format!("/releases/download/v1.0.0/{}", target.opencode.github_asset),
            200,
            asset.clone(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = sha256_hex(real_exe());
    let (host_sha, foreign_sha) = (sha256_hex(&host_asset), sha256_hex(&foreign_asset));
    let good = lock_with(
        dir.path(),
        "good.json",
        &[
            (host, &exe, Some(&host_sha)),
            (foreign, &exe, Some(&foreign_sha)),
        ],
    );
    let other = sha256_hex(b"other");
    let wrong = lock_with(dir.path(), "wrong.json", &[(host, &exe, Some(&other))]);
    let none = lock_with(dir.path(), "none.json", &[]);
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let fetch_args = |target: &str, constants: &Path| -> Vec<String> {
        [
            "--lock",
            constants.to_str().unwrap(),
            "fetch",
            "--source",
            "github",
            "--target",
            target,
            "--version",
            "v1.0.0",
            "--cache-dir",
            cache,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |args: &[String], extra: &[&str], releases: &str| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        packager(&all, releases)
    };

    // Unpinned: exit 10 without a download; with --allow-unpinned: a loud warning.
    let out = run(&fetch_args(&host.name, &none), &[], &releases);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-unpinned"));
    assert_eq!(server.total(), 0);
    let out = run(
        &fetch_args(&host.name, &none),
        &["--allow-unpinned"],
        &releases,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning:"));

    let downloads = server.total();
    // Pinned: the pin vouches for the entry already there (its asset's sha256 matches).
    let out = run(&fetch_args(&host.name, &good), &[], &releases);
    assert_eq!(server.total(), downloads);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(std::fs::read(&path).unwrap(), real_exe());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.with_file_name("fetch.json")).unwrap()).unwrap();
    assert_eq!(
        record["source"],
        format!("github:v1.0.0/{}", host.opencode.github_asset)
    );
    assert_eq!(record["assetSha256"], sha256_hex(&host_asset).as_str());
    assert_eq!(record["verified"], false, "stored with --allow-unpinned");

    // Warm cache, server unreachable: works, offline or not.
    let dead = format!("{}releases", dead_registry().display_url());
    for extra in [&["--offline"][..], &[]] {
        let out = run(&fetch_args(&host.name, &good), extra, &dead);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }

    // A pin the download does not match: exit 4, and the entry in place is untouched.
    let out = run(&fetch_args(&host.name, &wrong), &[], &releases);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));
    assert_eq!(std::fs::read(&path).unwrap(), real_exe());

    // The host's executable published as another target's: exit 9, nothing cached.
    let out = run(&fetch_args(&foreign.name, &good), &[], &releases);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(leftovers(Path::new(cache), &foreign.name).is_empty());

    // A malformed pin in the lock file is a clear input error.
    let bad = lock_with(dir.path(), "bad.json", &[(host, &exe, Some("abc"))]);
    let out = run(&fetch_args(&host.name, &bad), &[], &releases);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("opencode.targets.{}.assetSha256", host.name)),
        "{out:?}"
    );
}
