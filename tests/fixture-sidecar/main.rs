//! `openwork-fixture-sidecar`: stands in for both sidecars with their real process contracts
//! (defined in runtime/src/supervisor/contract.rs), and misbehaves when a test
//! sets `FIXTURE_OPENCODE_*` / `FIXTURE_ROUTER_*` in its environment.
//!
//! - `<exe> serve --hostname H --port P`: the opencode role (HTTP basic auth when
//!   `OPENCODE_SERVER_PASSWORD` is set; `/global/health`, `/event`, `/echo`, `/headers`,
//!   `/pid`, `/slow?ms=N`, `/ws`).
//! - `<exe> serve <dir> --opencode-url <url>`: the router role (`GET /health` on
//!   `127.0.0.1:$OPENCODE_ROUTER_HEALTH_PORT`).
//! - `<exe> child`: a grandchild that sleeps forever (for `SPAWN_CHILD=1`).
//!
//! Knobs, read per role (`FIXTURE_OPENCODE_` or `FIXTURE_ROUTER_` + name): `CRASH_AFTER_MS`,
//! `EXIT_CODE` (default 1), `CRASH_TIMES`, `READY_DELAY_MS`, `HANG`, `DEAF_FOR_MS` (connections
//! accepted that soon after listening are never answered), `UNHEALTHY_AFTER_MS`
//! (counted from when it listens), `IGNORE_SIGTERM`, `SPAWN_CHILD`, `OUTLIVE_SERVER` (Linux:
//! clears its parent-death signal, so that it can outlive a killed server, for the leftover
//! sweep's tests). `CRASH_TIMES=K` limits
//! crashing, hanging and unhealthiness to the role's first K starts, as counted in
//! `$FIXTURE_STATE_DIR/starts.jsonl`, where every start appends one JSON line.
//!
//! A mistake in how a test uses the fixture (bad arguments, a knob that does not parse) exits
//! with code 2, so that it cannot pass for a knob-made crash.
//!
//! The HTTP side runs on the workspace's one test server (`openwork_testkit::http`, hyper):
//! keep-alive, `Content-Length` and chunked request bodies, a chunked event stream (as
//! opencode's Bun server sends it), a WebSocket upgrade, and `DEAF_FOR_MS` through the
//! server's hold-connections-unanswered option.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use openwork_testkit::http::{Request, Response, TestServer, Upgraded};
use serde_json::{Value, json};

/// Exit code for a fixture that was used wrongly.
const USAGE_EXIT: i32 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Opencode,
    Router,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Opencode => "opencode",
            Role::Router => "router",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Role::Opencode => "FIXTURE_OPENCODE_",
            Role::Router => "FIXTURE_ROUTER_",
        }
    }
}

/// What the command line asked for.
struct Invocation {
    role: Role,
    host: String,
    port: u16,
}

/// The behaviour knobs of one role.
struct Knobs {
    crash_after: Option<Duration>,
    exit_code: i32,
    crash_times: Option<usize>,
    ready_delay: Option<Duration>,
    hang: bool,
    /// Connections accepted this soon after listening are held open and never answered,
    /// as opencode 1.18 does for about 0.4 s after it announces its address.
    deaf_for: Option<Duration>,
    unhealthy_after: Option<Duration>,
    ignore_sigterm: bool,
    spawn_child: bool,
}

/// What the request handlers need.
struct Server {
    role: Role,
    /// `Basic <base64(user:password)>`, when opencode's password is set.
    expected_auth: Option<String>,
    /// When health turns to 503.
    unhealthy_at: Option<Instant>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        sleep_forever();
    }
    if let Err(error) = run(args) {
        eprintln!("openwork-fixture-sidecar: {error:#}");
        std::process::exit(USAGE_EXIT);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let invocation = parse_args(&args)?;
    let role = invocation.role;
    let knobs = Knobs::from_env(role.env_prefix())?;
    let state_dir = std::env::var_os("FIXTURE_STATE_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let misbehave = match knobs.crash_times {
        None => true,
        Some(times) => {
            let Some(dir) = &state_dir else {
                bail!("{}CRASH_TIMES needs FIXTURE_STATE_DIR", role.env_prefix());
            };
            earlier_starts(dir, role)? < times
        }
    };

    // Spawned before SIGTERM is ignored, so that the grandchild keeps the default disposition
    // and only a group-wide SIGKILL (or SIGTERM) is needed for it.
    let child_pid = if knobs.spawn_child {
        let exe = std::env::current_exe().context("current_exe")?;
        let child = Command::new(exe)
            .arg("child")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the grandchild")?;
        Some(child.id())
    } else {
        None
    };
    if knobs.ignore_sigterm {
        ignore_sigterm();
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os(format!("{}OUTLIVE_SERVER", role.env_prefix())).is_some() {
        // SAFETY: prctl with PR_SET_PDEATHSIG and 0 only clears this process's setting.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    }
    let password = std::env::var("OPENCODE_SERVER_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(dir) = &state_dir {
        record_start(dir, role, child_pid, &args, password.as_deref())?;
    }

    let who = format!("fixture {}", role.name());
    println!("{who} starting, pid {}", std::process::id());
    eprintln!("{who}: this line goes to stderr");
    if std::env::var_os("FIXTURE_PRINT_SECRET").is_some() {
        println!("{who} password is {}", password.as_deref().unwrap_or(""));
    }

    if misbehave && let Some(after) = knobs.crash_after {
        let code = knobs.exit_code;
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!("fixture: crashing with exit code {code} as told");
            std::process::exit(code);
        });
    }
    if misbehave && knobs.hang {
        eprintln!("{who}: hanging as told");
        sleep_forever();
    }
    if let Some(delay) = knobs.ready_delay {
        thread::sleep(delay);
    }

    let address = (invocation.host.as_str(), invocation.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .with_context(|| format!("resolve {}:{}", invocation.host, invocation.port))?;
    let user = std::env::var("OPENCODE_SERVER_USERNAME").unwrap_or_else(|_| "opencode".to_owned());
    let server = Server {
        role,
        // The router's health server is not behind opencode's password.
        expected_auth: password
            .filter(|_| role == Role::Opencode)
            .map(|p| format!("Basic {}", base64(format!("{user}:{p}").as_bytes()))),
        unhealthy_at: knobs
            .unhealthy_after
            .filter(|_| misbehave)
            .map(|after| Instant::now() + after),
    };
    let mut builder = TestServer::builder(&who).bind(address);
    if let Some(deaf) = knobs.deaf_for {
        builder = builder.unanswered_for(deaf);
    }
    let http = builder
        .start(move |request| handle(&server, request))
        .with_context(|| format!("listen on {}:{}", invocation.host, invocation.port))?;
    let address = http.address();
    // Announced the way the real sidecars do: the supervisor learns the port from this line.
    match role {
        Role::Opencode => println!("opencode server listening on http://{address}"),
        Role::Router => println!("{who}: health on http://{address}/health"),
    }
    http.wait().context("serve")?;
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Invocation> {
    let Some((command, rest)) = args.split_first() else {
        bail!("usage: serve --hostname H --port P | serve <dir> --opencode-url <url> | child");
    };
    if command != "serve" {
        bail!("unknown command {command:?} (expected serve or child)");
    }
    let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i].as_str();
        if let Some(flag) = arg.strip_prefix("--") {
            if let Some((name, value)) = flag.split_once('=') {
                flags.insert(name, value);
            } else {
                let value = rest
                    .get(i + 1)
                    .with_context(|| format!("--{flag} needs a value"))?;
                flags.insert(flag, value);
                i += 1;
            }
        } else {
            positional.push(arg);
        }
        i += 1;
    }
    let role = if flags.contains_key("opencode-url") {
        Role::Router
    } else {
        Role::Opencode
    };
    let known: &[&str] = match role {
        Role::Opencode => &["hostname", "port"],
        Role::Router => &["opencode-url"],
    };
    if let Some(unknown) = flags.keys().find(|k| !known.contains(k)) {
        bail!("{} role: unknown flag --{unknown}", role.name());
    }
    match role {
        Role::Opencode => {
            if !positional.is_empty() {
                bail!("opencode role: unexpected arguments {positional:?}");
            }
            let port = flags
                .get("port")
                .context("opencode role: --port is required")?;
            Ok(Invocation {
                role,
                host: flags.get("hostname").unwrap_or(&"127.0.0.1").to_string(),
                port: port.parse().with_context(|| format!("--port {port:?}"))?,
            })
        }
        Role::Router => {
            if positional.len() != 1 {
                bail!("router role: expected one directory argument, got {positional:?}");
            }
            let port = std::env::var("OPENCODE_ROUTER_HEALTH_PORT")
                .context("router role: OPENCODE_ROUTER_HEALTH_PORT is not set")?;
            Ok(Invocation {
                role,
                host: "127.0.0.1".to_owned(),
                port: port
                    .parse()
                    .with_context(|| format!("OPENCODE_ROUTER_HEALTH_PORT={port:?}"))?,
            })
        }
    }
}

impl Knobs {
    fn from_env(prefix: &str) -> Result<Knobs> {
        let number = |name: &str| -> Result<Option<u64>> {
            let key = format!("{prefix}{name}");
            match std::env::var(&key) {
                Ok(value) => Ok(Some(
                    value
                        .trim()
                        .parse()
                        .with_context(|| format!("{key}={value:?}"))?,
                )),
                Err(_) => Ok(None),
            }
        };
        let millis = |name: &str| Ok::<_, anyhow::Error>(number(name)?.map(Duration::from_millis));
        let flag = |name: &str| {
            std::env::var(format!("{prefix}{name}")).is_ok_and(|v| !matches!(v.as_str(), "" | "0"))
        };
        let exit_code = match std::env::var(format!("{prefix}EXIT_CODE")) {
            Ok(value) => value
                .trim()
                .parse()
                .with_context(|| format!("{prefix}EXIT_CODE={value:?}"))?,
            Err(_) => 1,
        };
        Ok(Knobs {
            crash_after: millis("CRASH_AFTER_MS")?,
            exit_code,
            crash_times: number("CRASH_TIMES")?.map(|n| n as usize),
            ready_delay: millis("READY_DELAY_MS")?,
            hang: flag("HANG"),
            deaf_for: millis("DEAF_FOR_MS")?,
            unhealthy_after: millis("UNHEALTHY_AFTER_MS")?,
            ignore_sigterm: flag("IGNORE_SIGTERM"),
            spawn_child: flag("SPAWN_CHILD"),
        })
    }
}

fn starts_file(dir: &std::path::Path) -> PathBuf {
    dir.join("starts.jsonl")
}

fn earlier_starts(dir: &std::path::Path, role: Role) -> Result<usize> {
    let path = starts_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|start| start["role"] == role.name())
        .count())
}

fn record_start(
    dir: &std::path::Path,
    role: Role,
    child_pid: Option<u32>,
    args: &[String],
    password: Option<&str>,
) -> Result<()> {
    #[cfg(unix)]
    // SAFETY: neither call has preconditions or can fail.
    let (ppid, pgid) = unsafe { (Some(libc::getppid()), Some(libc::getpgrp())) };
    #[cfg(not(unix))]
    let (ppid, pgid): (Option<i32>, Option<i32>) = (None, None);
    let start = json!({
        "role": role.name(),
        "pid": std::process::id(),
        "exe": std::env::current_exe().ok(),
        "ppid": ppid,
        "pgid": pgid,
        "childPid": child_pid,
        "startedAtMs": SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
        "args": args,
        "hasPassword": password.is_some(),
        // Tells one start's password from another's without putting it in the file.
        "passwordSha256": password.map(|p| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(p.as_bytes()))
        }),
        "cwd": std::env::current_dir()?,
    });
    let mut line = serde_json::to_vec(&start)?;
    line.push(b'\n');
    let path = starts_file(dir);
    // One write on an O_APPEND file, so that concurrent starts never interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&line))
        .with_context(|| format!("append to {}", path.display()))
}

#[cfg(unix)]
fn ignore_sigterm() {
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn ignore_sigterm() {}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn handle(server: &Server, request: &Request) -> Response {
    if let Some(expected) = &server.expected_auth
        && request.header("authorization") != Some(expected.as_str())
    {
        return Response::json(401, &json!({"error": "unauthorized"}))
            .with_header("WWW-Authenticate", "Basic realm=\"opencode\"");
    }
    match (server.role, request.method.as_str(), request.path()) {
        (Role::Opencode, "GET", "/event") => stream_events(),
        (Role::Opencode, "GET", "/ws") if is_upgrade(request) => echo_upgraded(request),
        _ => {
            let (status, content_type, body) = route(server, request);
            Response::new(status, &content_type, body)
        }
    }
}

fn route(server: &Server, request: &Request) -> (u16, String, Vec<u8>) {
    let healthy = server.unhealthy_at.is_none_or(|at| Instant::now() < at);
    let json = |status: u16, value: Value| {
        (
            status,
            "application/json".to_owned(),
            value.to_string().into_bytes(),
        )
    };
    match (server.role, request.method.as_str(), request.path()) {
        (Role::Router, "GET", "/health") if healthy => json(200, json!({"ok": true})),
        (Role::Router, "GET", "/health") => json(503, json!({"ok": false})),
        (Role::Opencode, "GET", "/global/health") if healthy => {
            json(200, json!({"healthy": true, "version": "0.0.0-fixture"}))
        }
        (Role::Opencode, "GET", "/global/health") => json(503, json!({"healthy": false})),
        (Role::Opencode, "POST", "/echo") => {
            let content_type = request
                .header("content-type")
                .unwrap_or("application/octet-stream");
            (200, content_type.to_owned(), request.body.clone())
        }
        (Role::Opencode, "GET", "/headers") => {
            let mut seen = serde_json::Map::new();
            for (name, value) in &request.headers {
                let joined = match seen.get(name).and_then(Value::as_str) {
                    Some(earlier) => format!("{earlier}, {value}"),
                    None => value.clone(),
                };
                seen.insert(name.clone(), Value::String(joined));
            }
            seen.insert("_path".to_owned(), Value::String(request.target.clone()));
            json(200, Value::Object(seen))
        }
        (Role::Opencode, "GET", "/pid") => json(200, json!({"pid": std::process::id()})),
        (Role::Opencode, "GET", "/slow") => match request.query("ms").map(str::parse::<u64>) {
            Some(Ok(ms)) => {
                thread::sleep(Duration::from_millis(ms));
                json(200, json!({"slept": ms}))
            }
            _ => json(400, json!({"error": "/slow needs ?ms=<milliseconds>"})),
        },
        (Role::Opencode, "GET", "/ws") => json(426, json!({"error": "upgrade to websocket"})),
        _ => json(404, json!({"error": "not found", "path": request.target})),
    }
}

/// `data: {"n":i}` every 50 ms until the client goes away.
fn stream_events() -> Response {
    let events = (0u64..).map(|n| {
        if n > 0 {
            thread::sleep(Duration::from_millis(50));
        }
        format!("data: {{\"n\":{n}}}\n\n").into_bytes()
    });
    Response::stream(200, "text/event-stream", events).with_header("Cache-Control", "no-cache")
}

fn is_upgrade(request: &Request) -> bool {
    request.header_has_token("connection", "upgrade")
        && request
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// Answers `101`, then sends back every byte it receives until EOF. The bytes are not
/// WebSocket frames: tests check that a proxy pipes both ways, and echoing raw bytes shows
/// that without a WebSocket implementation here.
fn echo_upgraded(request: &Request) -> Response {
    let mut response = Response::upgrade(|mut io| {
        // A client that goes away mid-echo is normal for a proxy test.
        let _ = echo(&mut io);
    })
    .with_header("Upgrade", "websocket")
    .with_header("Connection", "Upgrade");
    if let Some(key) = request.header("sec-websocket-key") {
        response = response.with_header("Sec-WebSocket-Accept", &websocket_accept(key));
    }
    response
}

fn echo(io: &mut Upgraded) -> io::Result<()> {
    // Bytes that arrived with the request are echoed too: the upgraded I/O starts with them.
    let mut buf = [0; 16 * 1024];
    loop {
        let n = io.read(&mut buf)?;
        if n == 0 {
            return io.shutdown_write();
        }
        io.write_all(&buf[..n])?;
        io.flush()?;
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&input))
}

/// SHA-1 (FIPS 180-4), only for the WebSocket accept value above: this crate has no SHA-1
/// dependency and the handshake needs nothing more.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(word);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut out = [0; 20];
    for (chunk, word) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
