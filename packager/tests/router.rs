//! opencode-router built from `fixtures/opencode-router` with the pinned Bun from the npm
//! registry: real downloads (once, into the shared cache), real builds, real processes.
//! With a warm cache these pass offline.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use openwork_packager::constants::Constants;
use openwork_packager::router::{BuiltRouter, RouterBuildRequest, build_router};
use openwork_packager::{Error, ExitCode, bun};
use openwork_payload::container::identify;
use openwork_payload::targets::{self, Target};
use openwork_testkit::http::{Response, TestServer};

fn target(name: &str) -> &'static Target {
    targets::by_name(name).unwrap()
}

/// The stand-in's source: `fixtures/opencode-router` (no release carries it unless pointed
/// at it).
fn fixture_source() -> PathBuf {
    openwork_packager::paths::workspace_root().join("fixtures/opencode-router")
}

/// A build of the stand-in with the pinned Bun, expecting its version.
fn pinned(target: &'static Target) -> RouterBuildRequest {
    let mut req = RouterBuildRequest::new(target, fixture_source(), &Constants::built_in());
    req.expected_version = Some(FIXTURE_VERSION.into());
    req.quiet = true;
    req
}

/// `fixtures/opencode-router/package.json`'s version.
const FIXTURE_VERSION: &str = "0.1.0";

/// The pinned build into a private build cache (Bun still from the shared cache), so that
/// the test sees a real build and not an earlier run's output.
fn fresh_build(target: &'static Target, source: &Path, cache: &Path) -> BuiltRouter {
    let mut req = pinned(target);
    req.source = source.to_owned();
    req.cache_root = cache.to_owned();
    let built = build_router(&req).unwrap();
    eprintln!(
        "{}: {} in {:.2} s",
        target.name,
        if built.from_cache { "cached" } else { "built" },
        built.seconds
    );
    built
}

fn copy_tree(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for dirent in fs_err::read_dir(from).unwrap() {
        let dirent = dirent.unwrap();
        let dest = to.join(dirent.file_name());
        if dirent.file_type().unwrap().is_dir() {
            copy_tree(&dirent.path(), &dest);
        } else {
            fs_err::copy(dirent.path(), dest).unwrap();
        }
    }
}

fn fixture_copy(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    copy_tree(&pinned(target("linux-x64")).source, &dir);
    dir
}

fn assert_target(path: &Path, target: &Target) {
    let info = identify(&fs_err::read(path).unwrap()).unwrap();
    assert_eq!(
        (info.format, info.arch),
        (target.format, target.arch),
        "{} for {}",
        path.display(),
        target.name
    );
}

#[test]
fn pinned_bun_is_verified_and_cached_for_every_target() {
    let version = Constants::built_in().bun_version;
    for target in targets::all() {
        let started = Instant::now();
        let path = bun::ensure_bun(target, &version, false).unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            bun::file_name(target)
        );
        assert_target(&path, target);
        eprintln!(
            "bun {version} for {}: {:.1} MB in {:.2} s",
            target.name,
            fs_err::metadata(&path).unwrap().len() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
}

/// A stand-in for `opencode serve`: `GET /global/health` answers 200 with the right basic
/// auth, 401 without it; it goes away (connections refused) when dropped.
struct FakeOpencode {
    url: String,
    authorized: Arc<AtomicUsize>,
    _server: TestServer,
}

impl FakeOpencode {
    fn start(user: &str, password: &str) -> FakeOpencode {
        let expected = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let authorized = Arc::new(AtomicUsize::new(0));
        let server = {
            let authorized = authorized.clone();
            TestServer::start("fake-opencode", move |request| {
                let auth_ok = request
                    .header("authorization")
                    .is_some_and(|value| value.trim().eq_ignore_ascii_case(&expected));
                let (status, body) = if (request.method.as_str(), request.target.as_str())
                    != ("GET", "/global/health")
                {
                    (404, "{}")
                } else if auth_ok {
                    authorized.fetch_add(1, Ordering::SeqCst);
                    (200, r#"{"healthy":true,"version":"1.2.27"}"#)
                } else {
                    (401, r#"{"error":"unauthorized"}"#)
                };
                Response::new(status, "application/json", body)
            })
        };
        FakeOpencode {
            url: server.base_url(),
            authorized,
            _server: server,
        }
    }
}

/// `GET /health` on the router: status and body.
fn get_health(port: u16) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    )?;
    // Read the head, then Content-Length bytes: some Bun releases keep the connection open
    // despite `connection: close`, so reading to EOF would wait for the timeout.
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the router if a test fails before it stops it.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn host_build_honours_the_router_process_contract() {
    let host = bun::host_target().unwrap();
    let built = build_router(&pinned(host)).unwrap();
    assert_target(&built.path, host);
    assert_eq!(built.version, FIXTURE_VERSION);

    let version = Command::new(&built.path).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "0.1.0");

    for bad in [
        &[][..],
        &["frobnicate"],
        &["serve"],
        &["serve", ".", "--bogus"],
    ] {
        let out = Command::new(&built.path).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }

    let opencode = FakeOpencode::start("opencode", "s3cret-for-the-test");
    let workspace = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(&built.path)
        .arg("serve")
        .arg(workspace.path())
        .arg("--opencode-url")
        .arg(&opencode.url)
        .env_clear()
        .env("OPENCODE_ROUTER_HEALTH_PORT", port.to_string())
        .env("OPENCODE_SERVER_USERNAME", "opencode")
        .env("OPENCODE_SERVER_PASSWORD", "s3cret-for-the-test")
        .current_dir(workspace.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut router = Reaper(child);
    let mut stdout = BufReader::new(router.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("opencode-router 0.1.0") && first.contains(&port.to_string()),
        "{first:?}"
    );

    let (status, body) = get_health(port).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""ok":true"#) && body.contains(r#""version":"0.1.0""#));
    assert!(opencode.authorized.load(Ordering::SeqCst) >= 1);

    drop(opencode);
    let (status, body) = get_health(port).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""ok":false"#), "{body}");

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &router.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = router.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!(
        "router exited {:.0} ms after SIGTERM ({status})",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(status.success(), "{status}");
}

#[test]
fn cross_builds_have_the_targets_format_and_architecture() {
    let host = bun::host_target().unwrap();
    for target in targets::all().iter().filter(|t| t.name != host.name) {
        let built = build_router(&pinned(target)).unwrap();
        assert_target(&built.path, target);
        assert!(
            built
                .path
                .to_str()
                .unwrap()
                .ends_with(&format!("opencode-router{}", target.exe_suffix))
        );
        eprintln!(
            "{}: {:.1} MB, {} in {:.2} s",
            target.name,
            built.size as f64 / 1e6,
            if built.from_cache { "cached" } else { "built" },
            built.seconds
        );
    }
}

#[test]
fn unchanged_source_comes_from_the_cache_and_a_change_rebuilds() {
    let host = bun::host_target().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let source = fixture_copy(temp.path(), "source");
    let cache = temp.path().join("cache");
    let out = temp.path().join("out").join("opencode-router");

    let first = fresh_build(host, &source, &cache);
    assert!(!first.from_cache);
    let built_at = fs_err::metadata(&first.path).unwrap().modified().unwrap();
    let mut req = pinned(host);
    req.source = source.clone();
    req.cache_root = cache.clone();
    req.out = Some(out.clone());
    let second = build_router(&req).unwrap();
    eprintln!(
        "cache hit in {:.3} s, build took {:.2} s",
        second.seconds, first.seconds
    );
    assert!(second.from_cache);
    assert_eq!(second.path, first.path);
    assert_eq!(second.sha256, first.sha256);
    // Served, not rebuilt: the cached executable was not written again. (Timing is the
    // bench's business; a 0.4 s Bun build is as fast as a cache check on a busy runner.)
    assert_eq!(
        fs_err::metadata(&second.path).unwrap().modified().unwrap(),
        built_at
    );
    assert_eq!(
        fs_err::read(&out).unwrap(),
        fs_err::read(&first.path).unwrap()
    );

    let cli = source.join("src/cli.ts");
    let text = fs_err::read_to_string(&cli).unwrap();
    fs_err::write(
        &cli,
        text.replace("usage: opencode-router", "Usage: opencode-router"),
    )
    .unwrap();
    let changed = build_router(&req).unwrap();
    assert!(!changed.from_cache);
    assert_ne!(changed.source_sha256, first.source_sha256);
    assert_ne!(changed.sha256, first.sha256);
    assert_ne!(changed.path, first.path);

    // A damaged cached executable is rebuilt, not served.
    fs_err::write(&changed.path, b"damaged").unwrap();
    let repaired = build_router(&req).unwrap();
    assert!(!repaired.from_cache);
    assert_eq!(repaired.sha256, changed.sha256);
}

/// The same source, Bun and target give the same bytes, wherever the source and the cache
/// are: Bun embeds only the output's file name and the entry's path relative to its working
/// directory, both of which the builder fixes.
#[test]
fn builds_are_reproducible_across_directories() {
    let temp = tempfile::tempdir().unwrap();
    let a = fixture_copy(temp.path(), "a");
    let b = fixture_copy(&temp.path().join("somewhere/else"), "b");
    for name in ["linux-x64", "darwin-arm64", "windows-x64"] {
        let first = fresh_build(target(name), &a, &temp.path().join("cache-a"));
        let second = fresh_build(target(name), &b, &temp.path().join("cache-b"));
        assert!(!first.from_cache && !second.from_cache);
        assert_eq!(first.source_sha256, second.source_sha256);
        assert_eq!(first.sha256, second.sha256, "{name} is not reproducible");
    }
}

#[test]
fn version_must_be_plain_semver_and_match_the_pin() {
    let temp = tempfile::tempdir().unwrap();
    let source = fixture_copy(temp.path(), "source");
    let mut req = pinned(target("linux-x64"));
    req.source = source.clone();
    req.cache_root = temp.path().join("cache");
    for (version, needle) in [("0.2.0", "pinned router.version"), ("v0.1", "plain semver")] {
        let manifest = format!(r#"{{"name":"opencode-router","version":"{version}"}}"#);
        fs_err::write(source.join("package.json"), manifest).unwrap();
        let err = build_router(&req).unwrap_err();
        assert!(matches!(err, Error::Input { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::BadInput);
        assert!(err.to_string().contains(needle), "{err}");
    }
    req.source = temp.path().join("missing");
    let err = build_router(&req).unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::BadInput, "{err}");
}

/// `build-router` in a network namespace of its own (no network at all), from a cache that
/// holds only the two Buns: cross builds need nothing from the network.
#[test]
fn cli_builds_with_no_network() {
    let isolated = Command::new("unshare")
        .args(["-n", "-r", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let version = Constants::built_in().bun_version;
    for name in [bun::host_target().unwrap().name.as_str(), "darwin-x64"] {
        let bun = bun::ensure_bun(target(name), &version, false).unwrap();
        let entry = bun.parent().unwrap();
        copy_tree(
            entry,
            &cache
                .join(bun::CACHE_NAME)
                .join(name)
                .join(entry.file_name().unwrap()),
        );
    }
    let out = temp.path().join("opencode-router-darwin-x64");
    let packager = env!("CARGO_BIN_EXE_openwork-packager");
    let mut command = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-n", "-r", packager]);
        c
    } else {
        eprintln!("unshare -n is not available here: running with --offline only");
        Command::new(packager)
    };
    let output = command
        .args([
            "build-router",
            "--target",
            "darwin-x64",
            "--offline",
            "--json",
        ])
        .arg("--source")
        .arg(fixture_source())
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["target"], "darwin-x64");
    assert_eq!(json["fromCache"], false);
    assert_target(&out, target("darwin-x64"));

    let output = Command::new(packager)
        .args(["build-router", "--target", "nope", "--source"])
        .arg(fixture_source())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // No router is named in constants.json: nothing is built unless a source is given.
    let output = Command::new(packager)
        .args(["build-router", "--target", "linux-x64"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("pass --source DIR"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(packager)
        .args([
            "build-router",
            "--target",
            "linux-x64",
            "--offline",
            "--source",
        ])
        .arg(fixture_source())
        .arg("--cache-dir")
        .arg(temp.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(11));
}
