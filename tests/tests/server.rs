//! `openwork-server-v2 serve` end to end, with the fixture sidecar standing in for opencode
//! and opencode-router (`openwork-fixture-sidecar`: the same process contracts, and
//! misbehaviour on request). Real processes, real sockets, real signals.

#![cfg(unix)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use openwork_tests::http;
use openwork_tests::server::{ServerBuilder, process_alive, wait_until};
use openwork_tests::sse::SseReader;
use serde_json::Value;

/// Fast timings, so failures and restarts happen within a test's patience.
const FAST: &str = "ready_poll_ms=10,ready_timeout_ms=5000,liveness_interval_ms=100,liveness_timeout_ms=200,liveness_failures=2,stop_grace_ms=1000";

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn the_ready_line_is_the_only_stdout_and_names_url_port_version_and_token_file() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path()).start();
    let ready = &server.ready;
    let port = ready["port"].as_u64().unwrap();
    assert_eq!(ready["url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"));
    assert!(ready.get("runtimeDir").is_some(), "{ready}");
    let token_file = ready["tokenFile"].as_str().unwrap();
    assert!(token_file.starts_with(server.data_dir.to_str().unwrap()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    // The handshake answers as soon as the ready line is out.
    let health = server.request("GET", "/health", None, b"").json();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        server.more_stdout().is_empty(),
        "stdout carries only the ready line"
    );
}

/// opencode 1.18 accepts connections about 0.4 s before it answers them and never answers
/// those. A readiness probe that lands there must not hold up the next: with a 30 s probe
/// limit, waiting it out would take 30 s; hedged probes are ready soon after the deaf spell.
#[test]
fn a_readiness_probe_that_is_never_answered_does_not_hold_up_readiness() {
    let dir = tempdir();
    let started = Instant::now();
    let server = ServerBuilder::fixture(dir.path())
        .tuning("ready_poll_ms=5,ready_timeout_ms=60000,liveness_timeout_ms=30000")
        .env("FIXTURE_OPENCODE_DEAF_FOR_MS", "400")
        .start();
    let took = started.elapsed();
    eprintln!("ready {:.0} ms after the spawn", took.as_secs_f64() * 1e3);
    assert!(
        took < Duration::from_secs(15),
        "ready only after {took:?}: a probe waited out its 30 s limit"
    );
    assert_eq!(server.sidecar("opencode")["state"], "running");
}

#[test]
fn tokens_are_required_compared_exactly_and_never_logged() {
    let dir = tempdir();
    // The fixture prints its opencode password to stdout: the log file must redact it.
    let server = ServerBuilder::fixture(dir.path())
        .env("FIXTURE_PRINT_SECRET", "1")
        .start();
    for (token, expected) in [
        (None, 401),
        (Some("wrong-token-0123456789"), 401),
        (Some(&server.token[..server.token.len() - 1]), 401),
        (Some(server.token.as_str()), 200),
        (Some(server.host_token.as_str()), 200),
    ] {
        let response = server.request("GET", "/system/runtime", token, b"");
        assert_eq!(response.status, expected, "{token:?}: {}", response.text());
        if expected == 401 {
            assert_eq!(response.json()["error"], "unauthorized");
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        }
    }
    // The same token in the other header works too.
    let response = http::request(
        &server.addr,
        "GET",
        "/workspaces",
        &[("X-OpenWork-Token", &server.token)],
        b"",
    );
    assert_eq!(response.status, 200);
    // Privileged routes need the host token.
    let response = server.request(
        "POST",
        "/system/sidecars/opencode/restart",
        Some(&server.token),
        b"",
    );
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.json()["error"], "host_token_required");
    // The proxy is behind the token as well.
    assert_eq!(
        server
            .request("GET", "/opencode/global/health", None, b"")
            .status,
        401
    );

    let log = server.get_json("/system/sidecars/opencode/logs?tail=100");
    let lines = serde_json::to_string(&log["lines"]).unwrap();
    assert!(
        lines.contains("[redacted]"),
        "the fixture printed its password: {lines}"
    );
    let stderr = server.stderr();
    let log_file = std::fs::read_to_string(server.data_dir.join("logs/opencode.log")).unwrap();
    let start = &server.starts()[0];
    assert_eq!(start["hasPassword"], true);
    for text in [&stderr, &log_file, &lines] {
        assert!(!text.contains(&server.token), "client token leaked");
        assert!(!text.contains(&server.host_token), "host token leaked");
    }
    assert!(log_file.contains("[redacted]"));
}

#[test]
fn the_api_answers_json_for_unknown_routes_and_methods_and_sends_no_cors_by_default() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path()).start();
    let response = server.get("/no/such/route");
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"], "not_found");
    let response = server.request("POST", "/system/runtime", Some(&server.token), b"");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
    assert_eq!(response.json()["error"], "method_not_allowed");
    let response = server.get("/system/sidecars/nope/logs");
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"], "unknown_sidecar");
    let response = http::request(
        &server.addr,
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert!(response.header("access-control-allow-origin").is_none());

    let workspaces = server.get_json("/workspaces");
    let item = &workspaces["items"][0];
    assert_eq!(
        item["directory"],
        dir.path()
            .join("workspace")
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(item["name"], "workspace");
    assert_eq!(
        item["opencode"]["baseUrl"],
        format!("{}/opencode", server.url)
    );
    assert_eq!(workspaces["activeId"], item["id"]);
    let capabilities = server.get_json("/capabilities");
    assert_eq!(capabilities["opencode"]["basePath"], "/opencode");
    // A request head beyond the limit is refused, not buffered.
    let huge = "x".repeat(100 * 1024);
    let response = http::request(&server.addr, "GET", "/health", &[("X-Big", &huge)], b"");
    assert_eq!(response.status, 431, "{}", response.text());
}

#[test]
fn an_allowed_origin_gets_cors_headers_and_preflight() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path())
        .arg("--cors-origin")
        .arg("https://app.example")
        .start();
    let response = http::request(
        &server.addr,
        "OPTIONS",
        "/system/runtime",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    );
    assert_eq!(response.status, 204);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let response = http::request(
        &server.addr,
        "GET",
        "/health",
        &[("Origin", "https://other.example")],
        b"",
    );
    assert!(response.header("access-control-allow-origin").is_none());
}

#[test]
fn the_proxy_reaches_opencode_with_its_password_and_streams() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path()).start();
    let health = server.get_json("/opencode/global/health");
    assert_eq!(health["version"], "0.0.0-fixture", "opencode's own answer");
    let headers = server.get_json("/opencode/headers?a=1&b=2");
    assert_eq!(headers["_path"], "/headers?a=1&b=2");
    assert!(
        headers["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Basic ")
    );
    assert!(
        !headers.to_string().contains(&server.token),
        "our token is not forwarded"
    );
    // A 4 MiB body goes there and back intact.
    let body: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let response = server.request("POST", "/opencode/echo", Some(&server.token), &body);
    assert_eq!(response.status, 200);
    assert!(response.body == body, "echoed body differs");
    // Server-sent events arrive one by one, not when the stream ends.
    let auth = format!("Bearer {}", server.token);
    let (status, _, mut reader) = http::stream(
        &server.addr,
        "/opencode/event",
        &[("Authorization", &auth)],
        Duration::from_secs(5),
    );
    assert_eq!(status, 200);
    let mut seen = 0;
    let mut events = SseReader::new(&mut reader);
    while seen < 3 {
        let event = events.next_event().unwrap().expect("the stream ended");
        if event.data.starts_with("{\"n\":") {
            seen += 1;
        }
    }
    // A WebSocket upgrade passes through: bytes flow both ways after 101.
    let mut socket = std::net::TcpStream::connect(&server.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        socket,
        "GET /opencode/ws HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    socket.write_all(b"ping through the proxy").unwrap();
    let mut echoed = [0u8; 22];
    socket.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through the proxy");
}

#[test]
fn a_crashing_sidecar_is_restarted_with_growing_delays() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path())
        .tuning(FAST)
        .env("FIXTURE_OPENCODE_CRASH_AFTER_MS", "50")
        .env("FIXTURE_OPENCODE_CRASH_TIMES", "4")
        .start();
    assert!(
        wait_until(Duration::from_secs(20), || server.starts().len() >= 5),
        "five starts expected: {:?}",
        server.starts()
    );
    let running = server.wait_state("opencode", "running", Duration::from_secs(10));
    assert_eq!(running["restarts"], 4);
    assert_eq!(running["lastExit"]["code"], 1);
    let times: Vec<u64> = server
        .starts()
        .iter()
        .map(|s| s["startedAtMs"].as_u64().unwrap())
        .collect();
    // Each run lives ~50 ms (+ readiness); the delays before restarts are 250, 500, 1000,
    // 2000 ms ±20%.
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, delay) in gaps.iter().zip([250u64, 500, 1000, 2000]) {
        let low = delay * 8 / 10 + 50;
        let high = delay * 12 / 10 + 50 + 600;
        assert!(
            (low..=high).contains(gap),
            "gap {gap} ms for a {delay} ms backoff: {gaps:?}"
        );
    }
    // A fresh pid each time, every one of them gone.
    let pids: Vec<u32> = server
        .starts()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap() as u32)
        .collect();
    for pid in &pids[..4] {
        assert!(!process_alive(*pid), "pid {pid} is still alive");
    }
}

#[test]
fn the_crash_loop_limit_shows_failed_until_a_restart_over_the_api() {
    let dir = tempdir();
    let mut server = ServerBuilder::fixture(dir.path())
        .tuning(&format!("{FAST},backoff_initial_ms=20,backoff_max_ms=100"))
        .env("FIXTURE_OPENCODE_CRASH_AFTER_MS", "100")
        .env("FIXTURE_OPENCODE_CRASH_TIMES", "5")
        .start();
    let failed = server.wait_state("opencode", "failed", Duration::from_secs(20));
    assert_eq!(server.starts().len(), 5);
    assert!(failed["pid"].is_null());
    let health = server.request("GET", "/system/health", None, b"").json();
    assert_eq!(health["healthy"], false);
    assert_eq!(health["sidecars"]["opencode"]["state"], "failed");
    assert_eq!(
        server.request("GET", "/health", None, b"").json()["healthy"],
        false
    );
    // It stays failed: no more starts on its own.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(server.starts().len(), 5);
    // The proxy says opencode is unavailable, clearly, and not to ask again too soon: it
    // comes back only when a restart is asked for.
    let response = server.get("/opencode/global/health");
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"], "opencode_unavailable");
    assert_eq!(response.header("retry-after"), Some("5"));

    let response = server.request(
        "POST",
        "/system/sidecars/opencode/restart",
        Some(&server.host_token),
        b"",
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let running = server.wait_state("opencode", "running", Duration::from_secs(10));
    assert_eq!(server.starts().len(), 6);
    assert_eq!(running["restarts"], 5);
    assert_eq!(server.get_json("/opencode/global/health")["healthy"], true);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn opencode_that_never_gets_healthy_fails_the_start_with_exit_12() {
    let dir = tempdir();
    let (child, stderr) = ServerBuilder::fixture(dir.path())
        .tuning("ready_timeout_ms=300,crash_limit=2,backoff_initial_ms=10,stop_grace_ms=200")
        .env("FIXTURE_OPENCODE_HANG", "1")
        .spawn();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(12),
        "{}",
        std::fs::read_to_string(&stderr).unwrap()
    );
    assert!(output.stdout.is_empty(), "no ready line");
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    assert!(stderr.contains("did not become healthy"), "{stderr}");
    // It hangs before it listens: the supervisor says it never announced an address.
    assert!(
        stderr.contains("did not announce a loopback address on stdout within"),
        "{stderr}"
    );
    for start in openwork_tests::server::fixture_starts(&dir.path().join("state")) {
        assert!(!process_alive(start["pid"].as_u64().unwrap() as u32));
    }
}

#[test]
fn an_unhealthy_sidecar_is_stopped_and_restarted() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path())
        .tuning(FAST)
        .env("FIXTURE_OPENCODE_UNHEALTHY_AFTER_MS", "300")
        .env("FIXTURE_OPENCODE_CRASH_TIMES", "1")
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || server.starts().len() >= 2),
        "restart after failed liveness checks"
    );
    let running = server.wait_state("opencode", "running", Duration::from_secs(10));
    let reason = running["lastExit"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("unhealthy"), "{running}");
    let first = server.starts()[0]["pid"].as_u64().unwrap() as u32;
    assert!(!process_alive(first));
}

#[test]
fn a_sidecar_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempdir();
    let mut server = ServerBuilder::fixture(dir.path())
        .tuning("stop_grace_ms=700")
        .env("FIXTURE_OPENCODE_IGNORE_SIGTERM", "1")
        .start();
    let pid = server.starts()[0]["pid"].as_u64().unwrap() as u32;
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(650),
        "waited the grace period: {took:?}"
    );
    assert!(!process_alive(pid), "pid {pid} survived");
    let log = std::fs::read_to_string(server.data_dir.join("logs/opencode.log")).unwrap();
    assert!(log.contains("killing it"), "{log}");
}

#[test]
fn restart_over_the_api_replaces_the_process_and_events_tell_the_story() {
    let dir = tempdir();
    let server = ServerBuilder::fixture(dir.path()).tuning(FAST).start();
    let auth = format!("Bearer {}", server.token);
    let (status, headers, events) = http::stream(
        &server.addr,
        "/system/events",
        &[("Authorization", &auth)],
        Duration::from_secs(10),
    );
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    );
    let before = server.sidecar("opencode");
    let response = server.request(
        "POST",
        "/system/sidecars/opencode/restart",
        Some(&server.host_token),
        b"",
    );
    assert_eq!(response.status, 202);
    let mut names = Vec::new();
    let mut events = SseReader::new(events);
    while !names.contains(&"ready".to_string()) {
        let Some(event) = events.next_event().unwrap() else {
            panic!("event stream ended; saw {names:?}");
        };
        if !event.name.is_empty() {
            names.push(event.name);
        }
    }
    assert_eq!(names[0], "snapshot");
    let order: Vec<&str> = names.iter().map(String::as_str).collect();
    let position = |n: &str| {
        order
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing from {order:?}"))
    };
    assert!(position("restartRequested") < position("starting"));
    assert!(position("starting") < position("ready"));
    let after = server.wait_state("opencode", "running", Duration::from_secs(5));
    assert_ne!(before["pid"], after["pid"]);
    assert_eq!(after["restarts"], 1);
    assert!(!process_alive(before["pid"].as_u64().unwrap() as u32));
}

#[test]
fn sigkill_of_the_server_leaves_no_sidecar_or_grandchild_alive() {
    let dir = tempdir();
    let mut server = ServerBuilder::fixture(dir.path())
        .with_router()
        .env("FIXTURE_OPENCODE_SPAWN_CHILD", "1")
        .start();
    server.wait_state("opencode-router", "running", Duration::from_secs(10));
    let mut pids = Vec::new();
    for start in server.starts() {
        pids.push(start["pid"].as_u64().unwrap() as u32);
        if let Some(child) = start["childPid"].as_u64() {
            pids.push(child as u32);
        }
    }
    assert_eq!(
        pids.len(),
        3,
        "opencode, its child and the router: {:?}",
        server.starts()
    );
    for pid in &pids {
        assert!(process_alive(*pid));
    }
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(5));
    let gone = wait_until(Duration::from_secs(1), || {
        pids.iter().all(|p| !process_alive(*p))
    });
    let alive: Vec<_> = pids.iter().filter(|p| process_alive(**p)).collect();
    assert!(
        gone,
        "still alive 1 s after SIGKILL of the server: {alive:?}"
    );
}

#[test]
fn sigterm_stops_the_router_before_opencode_and_exits_zero() {
    let dir = tempdir();
    let mut server = ServerBuilder::fixture(dir.path()).with_router().start();
    let router = server.wait_state("opencode-router", "running", Duration::from_secs(10));
    let opencode = server.sidecar("opencode");
    let router_start = server
        .starts()
        .into_iter()
        .find(|s| s["role"] == "router")
        .unwrap();
    let args: Vec<String> = serde_json::from_value(router_start["args"].clone()).unwrap();
    let url = format!("http://127.0.0.1:{}", opencode["port"]);
    assert_eq!(args[0], "serve");
    assert_eq!(args[2..], ["--opencode-url".to_string(), url]);
    assert_eq!(router_start["hasPassword"], true);

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    for status in [&router, &opencode] {
        assert!(!process_alive(status["pid"].as_u64().unwrap() as u32));
    }
    let stderr = server.stderr();
    let stopped = |name: &str| {
        stderr
            .lines()
            .position(|l| l.contains(&format!("sidecar={name} ")) && l.contains("\"stopped\""))
            .unwrap_or_else(|| panic!("{name} not stopped:\n{stderr}"))
    };
    assert!(stopped("opencode-router") < stopped("opencode"));
}

#[test]
fn bad_flags_get_distinct_exit_codes_and_clear_messages() {
    let dir = tempdir();
    let run = |extra: &[&str]| {
        let mut builder = ServerBuilder::fixture(dir.path());
        for arg in extra {
            builder = builder.arg(arg);
        }
        let (child, stderr) = builder.spawn();
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            std::fs::read_to_string(stderr).unwrap(),
        )
    };
    let (code, stderr) = run(&["--host", "0.0.0.0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--remote-access"), "{stderr}");
    let (code, stderr) = run(&["--sidecar", "opencode-router=relative/path"]);
    assert_eq!(code, Some(10), "{stderr}");
    assert!(stderr.contains("absolute"), "{stderr}");
    let missing = dir.path().join("missing-token");
    let (code, stderr) = run(&["--token-file", missing.to_str().unwrap()]);
    assert_eq!(code, Some(10), "{stderr}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run(&["--port", &port]);
    assert_eq!(code, Some(13), "{stderr}");
    assert!(stderr.contains("--port"), "{stderr}");
}

#[test]
fn a_given_token_file_is_used_and_nothing_is_generated() {
    let dir = tempdir();
    let token_file = dir.path().join("my-token");
    std::fs::write(&token_file, "given-token-0123456789abcdef\n").unwrap();
    let server = ServerBuilder::fixture(dir.path())
        .arg("--token-file")
        .arg(&token_file)
        .start();
    assert_eq!(server.token, "given-token-0123456789abcdef");
    assert_eq!(server.ready["tokenFile"], token_file.to_str().unwrap());
    assert!(!server.data_dir.join("token").exists());
    assert_eq!(server.get("/system/runtime").status, 200);
}

#[test]
fn shutdown_over_the_api_needs_the_host_token_and_exits_zero() {
    let dir = tempdir();
    let mut server = ServerBuilder::fixture(dir.path()).start();
    let pid = server.starts()[0]["pid"].as_u64().unwrap() as u32;
    let response = server.request("POST", "/system/shutdown", Some(&server.token), b"");
    assert_eq!(response.status, 403);
    let response = server.request("POST", "/system/shutdown", Some(&server.host_token), b"");
    assert_eq!(response.status, 202);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    assert!(!process_alive(pid));
    let record_dir = server.data_dir.join("run");
    let records: Vec<Value> = std::fs::read_dir(&record_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| Value::from(e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        records.is_empty(),
        "a clean stop leaves no run record: {records:?}"
    );
}

#[test]
fn a_staged_bundle_dir_runs_under_the_same_supervisor() {
    use openwork_payload::manifest::{FileEntry, MANIFEST_FILE_NAME, MANIFEST_VERSION, Manifest};
    use sha2::Digest;
    let dir = tempdir();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("bin")).unwrap();
    let fixture = openwork_tests::host_bin("openwork-fixture-sidecar");
    let bytes = std::fs::read(&fixture).unwrap();
    std::fs::write(bundle.join("bin/opencode"), &bytes).unwrap();
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        server_version: env!("CARGO_PKG_VERSION").into(),
        opencode_version: "0.0.0-fixture".into(),
        router_version: None,
        target: openwork_payload::targets::host_name().unwrap().into(),
        files: [(
            "opencode".to_string(),
            FileEntry {
                path: "bin/opencode".into(),
                size: bytes.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                mode: 0o755,
            },
        )]
        .into(),
    };
    std::fs::write(bundle.join(MANIFEST_FILE_NAME), manifest.to_json()).unwrap();

    let server =
        ServerBuilder::executable(&openwork_tests::host_bin("openwork-server-v2"), dir.path())
            .arg("--bundle-dir")
            .arg(&bundle)
            .start();
    let runtime_dir = std::path::PathBuf::from(server.ready["runtimeDir"].as_str().unwrap());
    let runtime = server.get_json("/system/runtime");
    assert_eq!(runtime["payload"]["source"], "bundle-flag");
    let opencode = server.sidecar("opencode");
    assert_eq!(opencode["state"], "running");
    assert!(
        opencode["executable"]
            .as_str()
            .unwrap()
            .starts_with(runtime_dir.to_str().unwrap()),
        "the staged file is installed into a runtime dir and run from there: {opencode}"
    );
    assert_eq!(server.get_json("/opencode/global/health")["healthy"], true);
}
