//! `fetch`: the npm source of opencode against a fake registry served from this test on
//! 127.0.0.1, plus one test against the real registry that passes offline once the
//! repository's cache is warm.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine as _;
use openwork_packager::fetch::{
    self, CacheRecord, FetchError, FetchRequest, FetchedBinary, Registry, fetch_opencode_npm,
};
use openwork_payload::targets::{self, Target};
use openwork_payload::{Arch, ExecutableFormat};
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
}

impl FakeRegistry {
    fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Vec<Route>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (r, h, t) = (routes.clone(), hits.clone(), total.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, h, t) = (r.clone(), h.clone(), t.clone());
                thread::spawn(move || serve(stream, &r, &h, &t));
            }
        });
        FakeRegistry {
            url,
            routes,
            hits,
            total,
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
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Vec<Route>>>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
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
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            route.status,
            route.body.len()
        );
        if stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(&route.body))
            .is_err()
        {
            return;
        }
    }
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

fn request(target: &'static Target, cache: &Path, registry: Registry) -> FetchRequest {
    FetchRequest {
        cache_root: cache.to_owned(),
        registry: Some(registry),
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
        let text = std::fs::read_to_string(fetch::workspace_root().join("constants.json")).unwrap();
        let constants: serde_json::Value = serde_json::from_str(&text).unwrap();
        constants["opencodeVersion"].as_str().unwrap().to_owned()
    };
    let req = FetchRequest {
        offline: true,
        ..FetchRequest::new(target("linux-x64"), pinned.clone())
    };
    let fetched = fetch_opencode_npm(&req).unwrap();
    assert!(fetched.from_cache);
    assert_eq!(fetched.path, path);
    assert_eq!(fetched.source, format!("npm:opencode-linux-x64@{pinned}"));

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
