//! Holding the server's connections without a token, attacked for real (docs/SECURITY.md,
//! "Holding connections without a token"): from another local user (uid 65534 through
//! `setpriv`) and from a LAN peer (a network namespace), at the open-file limit a macOS GUI
//! app gets (256: 96 connections). Each test says which defence it proves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use openwork_tests::attacker::{PYTHON, attacker_dir, can_attack, spawn_python, spawn_script};
use openwork_tests::netns::{self, Lan};
use openwork_tests::server::{ServerBuilder, ServerProcess, wait_until};
use serde_json::Value;

use super::{FAST, Rounds, plain_round, wait_for_file};

/// Opens `count` connections (TLS with `tls`), sends each a complete `POST /pair/start` head that
/// announces a 4 KiB body, and never sends the body; every connection the server closes or
/// answers is opened again at once. Writes its counts to `held.json` at the end.
const STALLED_BODY: &str = r#"
import json, os, selectors, socket, ssl, sys, time
host, port, count, duration, out, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
HEAD = (b"POST /pair/start HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4096\r\n\r\n" % host.encode())
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sel = selectors.DefaultSelector()
stats = {"opened": 0, "closed": 0, "answered": 0, "failed": 0}
def connect():
    try:
        s = socket.create_connection((host, port), timeout=2)
        if mode == "tls":
            s = ctx.wrap_socket(s)
        s.sendall(HEAD)
        s.setblocking(False)
    except (OSError, ssl.SSLError):
        stats["failed"] += 1
        return
    sel.register(s, selectors.EVENT_READ)
    stats["opened"] += 1
for _ in range(count):
    connect()
open(os.path.join(out, "holding"), "w").close()
end = time.time() + duration
while time.time() < end:
    for key, _ in sel.select(timeout=0.1):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except (OSError, ssl.SSLError):
            data = b""
        if data.startswith(b"HTTP/"):
            stats["answered"] += 1
        sel.unregister(s)
        s.close()
        stats["closed"] += 1
    while len(sel.get_map()) < count and time.time() < end:
        connect()
json.dump(stats, open(os.path.join(out, "held.json.tmp"), "w"))
os.rename(os.path.join(out, "held.json.tmp"), os.path.join(out, "held.json"))
"#;

/// Opens `count` connections and sends each the first 100 bytes of a TLS ClientHello whose
/// record announces 512, then nothing: a handshake that never finishes. Reopens every one
/// the server closes. Writes its counts to `held.json` at the end.
const HALF_OPEN_TLS: &str = r#"
import json, os, selectors, socket, sys, time
host, port, count, duration, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(89)
sel = selectors.DefaultSelector()
stats = {"opened": 0, "closed": 0, "failed": 0}
def connect():
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_WRITE)
    stats["opened"] += 1
for _ in range(count):
    connect()
open(os.path.join(out, "holding"), "w").close()
end = time.time() + duration
while time.time() < end:
    for key, events in sel.select(timeout=0.1):
        s = key.fileobj
        if events & selectors.EVENT_WRITE:
            try:
                s.send(HELLO)
                sel.modify(s, selectors.EVENT_READ)
                continue
            except OSError:
                stats["failed"] += 1
        else:
            try:
                if s.recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
        sel.unregister(s)
        s.close()
        stats["closed"] += 1
        connect()
json.dump(stats, open(os.path.join(out, "held.json.tmp"), "w"))
os.rename(os.path.join(out, "held.json.tmp"), os.path.join(out, "held.json"))
"#;

/// The attacker's counts, once it has ended.
fn held(dir: &Path) -> Value {
    let file = dir.join("held.json");
    assert!(
        wait_until(Duration::from_secs(30), || file.exists()),
        "the attacker did not end: {}",
        std::fs::read_to_string(dir.join("attack.py.stderr")).unwrap_or_default()
    );
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// Sends a raw request head and returns the status line and how long it took to come.
fn raw_status(addr: &str, head: &str, patience: Duration) -> (String, Duration) {
    raw_status_from(None, addr, head, patience)
}

/// [`raw_status`] from the local address `from` (another loopback address, say).
fn raw_status_from(
    from: Option<&str>,
    addr: &str,
    head: &str,
    patience: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(from) => {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(
                    &format!("{from}:0")
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            socket
                .connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())
                .unwrap();
            socket.into()
        }
    };
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    (line.trim().to_string(), started.elapsed())
}

/// Defence: a body the server reads itself must arrive within 10 s (else 408), a
/// `Content-Length` over the route's limit is refused before anything is read, and a
/// connection in the middle of a request without a token can be evicted like an idle one
/// (the heaviest address first; no one younger than 250 ms). Attack: with `ulimit -n 256`
/// (96 connections), another user holds 150 connections, each with a complete `POST /pair/start`
/// head announcing a 4 KiB body that never comes, and reopens each one as soon as it is
/// closed, for 15 s. Before, every new connection (`/health` included) was locked out for as
/// long as they stayed open.
#[test]
fn a_stalled_body_flood_from_another_user_locks_no_one_out() {
    if !can_attack() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spy = attacker_dir(dir.path());
    let server = ServerBuilder::fixture(&dir.path().join("server"))
        .tuning(FAST)
        .open_file_limit(256)
        .start();
    let before = server.sidecar("opencode");
    let port = server.ready["port"].as_u64().unwrap();

    let seconds = 15;
    let _attacker = spawn_python(
        &spy,
        "attack.py",
        STALLED_BODY,
        &[
            "127.0.0.1".into(),
            port.to_string(),
            "150".into(),
            seconds.to_string(),
            spy.display().to_string(),
            "plain".into(),
        ],
    );
    wait_for_file(&spy.join("holding"));
    // One stalled request of the user's own, from another loopback address (a source that
    // holds one connection, not 96): it is not evicted, and gets 408 when its body does not
    // come.
    let addr = server.addr.clone();
    let own = std::thread::spawn(move || {
        raw_status_from(
            Some("127.0.0.2"),
            &addr,
            "POST /pair/start HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",
            Duration::from_secs(20),
        )
    });

    let rounds = Rounds::run(seconds - 3, || plain_round(&server));
    assert!(
        !spy.join("held.json").exists(),
        "the attack ended before the checks did"
    );
    rounds.assert_answered(95, &server);
    let stats = held(&spy);
    assert!(
        stats["closed"].as_u64().unwrap() >= 100,
        "the server should have closed stalled connections to make room: {stats}"
    );
    let (own_status, own_took) = own.join().unwrap();
    assert!(own_status.starts_with("HTTP/1.1 408"), "{own_status:?}");
    assert!(
        own_took >= Duration::from_secs(9) && own_took < Duration::from_secs(13),
        "408 after the 10 s a body may take: {own_took:?}"
    );

    let after = server.wait_state("opencode", "running", Duration::from_secs(5));
    assert_eq!(
        after["pid"], before["pid"],
        "opencode was restarted: {after}"
    );

    // Refused before a byte of the body is read: a `Content-Length` of 100 GB.
    let (status, took) = raw_status(
        &server.addr,
        "POST /pair/start HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(took < Duration::from_secs(2), "answered at once: {took:?}");
    eprintln!(
        "stalled bodies: {stats}; {}/{} rounds answered, slowest {:?}",
        rounds.answered, rounds.tried, rounds.slowest
    );
}

/// The same attack from a LAN peer over TLS (the server in one network namespace with
/// remote access, the attacker in another, joined by a veth pair), and the same defences;
/// the user's client (curl, trusting the server's certificate) comes from another address.
#[test]
fn a_stalled_body_flood_from_the_lan_over_tls_locks_no_one_out() {
    let Some(lan) = Lan::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spy = attacker_dir(dir.path());
    let server = ServerBuilder::fixture(&dir.path().join("server"))
        .wrapped(lan.ip_program(), &lan.server_wrapper())
        .tuning(FAST)
        .open_file_limit(256)
        .arg("--host")
        .arg(netns::SERVER_IP)
        .arg("--remote-access")
        .arg("--no-mdns")
        .start();
    let port = server.ready["port"].as_u64().unwrap();
    let cert = server.data_dir.join("tls/cert.pem");
    let url = format!("https://{}:{port}/health", netns::SERVER_IP);
    let seconds = 15;
    let _attacker = spawn_script(
        lan.on_peer(PYTHON),
        &spy,
        "attack.py",
        STALLED_BODY,
        &[
            netns::SERVER_IP.into(),
            port.to_string(),
            "150".into(),
            seconds.to_string(),
            spy.display().to_string(),
            "tls".into(),
        ],
    );
    wait_for_file(&spy.join("holding"));
    let rounds = Rounds::run(seconds - 3, || {
        let output = lan
            .on_server("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .arg(&url)
            .output()
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && body.contains("\"healthy\":true") {
            Ok(())
        } else {
            Err(format!(
                "curl: {} {}",
                body,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    });
    assert!(
        !spy.join("held.json").exists(),
        "the attack ended before the checks did"
    );
    rounds.assert_answered(95, &server);
    let stats = held(&spy);
    assert!(
        stats["opened"].as_u64().unwrap() >= 150,
        "the attacker held its connections: {stats}"
    );
    eprintln!(
        "stalled bodies over TLS from the LAN: {stats}; {}/{} rounds answered, slowest {:?}",
        rounds.answered, rounds.tried, rounds.slowest
    );
}

/// Defence: a TLS handshake that has not finished holds a connection only until room is
/// needed (after 250 ms), before any connection that has finished one, and for 10 s at
/// most; while every place is held by connections younger than that, newcomers wait in the
/// kernel's backlog instead of being accepted and dropped. Attack: with `ulimit -n 256`,
/// another user holds 600 handshakes that never finish (a ClientHello cut short), reopening
/// each one the server closes, for 15 s, against a TLS server on loopback (`--tls on`).
/// Before, 17-20 % of the user's new connections failed.
#[test]
fn half_open_tls_handshakes_from_another_user_fail_no_new_connection() {
    if !can_attack() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spy = attacker_dir(dir.path());
    let server = ServerBuilder::fixture(&dir.path().join("server"))
        .tuning(FAST)
        .open_file_limit(256)
        .arg("--tls")
        .arg("on")
        .start();
    let port = server.ready["port"].as_u64().unwrap();
    let fingerprint = server.ready["tlsFingerprint"].as_str().unwrap().to_string();
    let seconds = 15;
    let _attacker = spawn_python(
        &spy,
        "attack.py",
        HALF_OPEN_TLS,
        &[
            "127.0.0.1".into(),
            port.to_string(),
            "600".into(),
            seconds.to_string(),
            spy.display().to_string(),
        ],
    );
    wait_for_file(&spy.join("holding"));
    let url = format!("https://127.0.0.1:{port}/health");
    let rounds = Rounds::run(seconds - 3, || {
        // A new client each round: a new connection, a new handshake.
        let client = openwork_tests::tls::pinned_client(&fingerprint);
        match client.get(&url).timeout(Duration::from_secs(5)).send() {
            Ok(response) if response.status() == 200 => Ok(()),
            Ok(response) => Err(format!("status {}", response.status())),
            Err(e) => Err(format!("{e:?}")),
        }
    });
    assert!(
        !spy.join("held.json").exists(),
        "the attack ended before the checks did"
    );
    rounds.assert_answered(99, &server);
    let stats = held(&spy);
    assert!(
        stats["closed"].as_u64().unwrap() >= 500,
        "the server should have closed unfinished handshakes: {stats}"
    );
    eprintln!(
        "half-open TLS: {stats}; {}/{} rounds answered, slowest {:?}",
        rounds.answered, rounds.tried, rounds.slowest
    );
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Sends a WebSocket upgrade through the proxy; the stream (kept open) and the status.
fn upgrade(server: &ServerProcess) -> (TcpStream, u16) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /opencode/ws HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.token
    )
    .unwrap();
    // Byte by byte up to the end of the head, so nothing after it is taken from the stream.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (stream, status)
}

/// Defence: an upgraded connection (a WebSocket through the proxy) keeps its place among
/// the server's connections for as long as it lives, and at most half of the places can be
/// upgraded ones; beyond that an upgrade gets 503 `too_many_upgrades`. Attack: a client
/// with a token (a paired device, say) opens 118 WebSockets with `ulimit -n 256` (96
/// connections). Before, every one was upgraded and forgotten by the connection bound: the
/// server reached 256 of 256 descriptors and `/health` timed out.
#[test]
fn a_websocket_flood_stays_within_its_bound_and_the_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerBuilder::fixture(dir.path())
        .tuning(FAST)
        .open_file_limit(256)
        .start();
    let mut sockets = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..118 {
        let (stream, status) = upgrade(&server);
        *statuses.entry(status).or_default() += 1;
        if status == 101 {
            sockets.push(stream);
        }
    }
    assert_eq!(
        statuses.get(&101).copied().unwrap_or(0),
        48,
        "half of the 96 places: {statuses:?}"
    );
    assert_eq!(statuses.get(&503).copied().unwrap_or(0), 70, "{statuses:?}");
    // The ones that upgraded work: the fixture echoes.
    for socket in sockets.iter_mut().take(3) {
        socket.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        socket.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping");
    }
    let descriptors = open_descriptors(server.pid());
    assert!(
        descriptors < 256 - 32,
        "{descriptors} descriptors open: too close to the limit of 256"
    );
    // The server answers, and so does opencode through it.
    let health = openwork_tests::http::try_request(
        &server.addr,
        "GET",
        "/health",
        &[],
        b"",
        Duration::from_secs(5),
    )
    .expect("/health answers");
    assert_eq!(health.status, 200);
    let proxied = server.request("GET", "/opencode/global/health", Some(&server.token), b"");
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    // An upgrade refused for lack of room says so.
    let (mut refused, status) = upgrade(&server);
    assert_eq!(status, 503);
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body);
    assert!(body.contains("too_many_upgrades"), "{body}");
    // Closing one frees its place for another.
    drop(sockets.pop());
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (stream, status) = upgrade(&server);
            if status == 101 {
                sockets.push(stream);
            }
            status == 101
        }),
        "a closed WebSocket's place is given to the next one"
    );
}

/// Sends requests with a wrong token over one keep-alive connection, 100 at a time, for
/// `duration` seconds; writes how many were answered to `flood.json`.
const LOG_FLOOD: &str = r#"
import json, os, socket, sys, time
host, port, duration, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
REQUEST = (b"GET /system/runtime HTTP/1.1\r\nHost: localhost\r\n"
           b"Authorization: Bearer not-the-token-not-the-token\r\n\r\n")
s = socket.create_connection((host, port))
open(os.path.join(out, "flooding"), "w").close()
MARK = b"HTTP/1.1 401"
answered, end = 0, time.time() + duration
while time.time() < end:
    s.sendall(REQUEST * 100)
    got, tail = 0, b""
    while got < 100:
        data = s.recv(1 << 16)
        if not data:
            raise SystemExit("closed")
        tail += data
        got += tail.count(MARK)
        # What is kept is too short to hold a whole mark: none is counted twice.
        tail = tail[-(len(MARK) - 1):]
    answered += got
json.dump({"answered": answered}, open(os.path.join(out, "flood.json.tmp"), "w"))
os.rename(os.path.join(out, "flood.json.tmp"), os.path.join(out, "flood.json"))
"#;

/// Defence: the log lines of requests refused without a token are limited to a few a
/// second per status; the rest are counted and the count is logged ("… and N more"), and
/// the health panel counts every one. Attack: another user sends wrong-token requests as
/// fast as it can over one keep-alive connection for 5 s. Before, each was a log line: the
/// log grew about 2 MB a second.
#[test]
fn a_flood_of_refused_requests_does_not_flood_the_log() {
    if !can_attack() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spy = attacker_dir(dir.path());
    let server = ServerBuilder::fixture(&dir.path().join("server"))
        .arg("--log-format")
        .arg("json")
        .start();
    let port = server.ready["port"].as_u64().unwrap();
    let log_before = server.stderr().len();
    let _attacker = spawn_python(
        &spy,
        "flood.py",
        LOG_FLOOD,
        &[
            "127.0.0.1".into(),
            port.to_string(),
            "5".into(),
            spy.display().to_string(),
        ],
    );
    wait_for_file(&spy.join("flooding"));
    assert!(
        wait_until(Duration::from_secs(30), || spy.join("flood.json").exists()),
        "the flood did not end: {}",
        std::fs::read_to_string(spy.join("flood.py.stderr")).unwrap_or_default()
    );
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(spy.join("flood.json")).unwrap()).unwrap();
    let sent = stats["answered"].as_u64().unwrap();
    assert!(
        sent >= 5_000,
        "the flood was too slow to prove anything: {stats}"
    );

    // Every refusal is accounted for: logged one by one, or counted in a later line (the
    // summary comes within 5 s).
    let told = |log: &str| -> u64 {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|l| {
                let fields = &l["fields"];
                if fields["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("request"))
                    && fields["status"] == 401
                {
                    1 + fields["untold"].as_u64().unwrap_or(0)
                } else if fields["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("more refused in the last"))
                    && fields["status"] == 401
                {
                    fields["count"].as_u64().unwrap_or(0)
                } else {
                    0
                }
            })
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(15), || told(&server.stderr()) >= sent),
        "{} of {sent} refusals told in the log",
        told(&server.stderr())
    );
    let grown = server.stderr().len() - log_before;
    assert!(
        grown < 64 * 1024,
        "the log grew {grown} bytes for {sent} refused requests in 5 s"
    );
    // The health panel counts every one.
    let health = server.request("GET", "/system/health", Some(&server.host_token), b"");
    let counted = health.json()["panel"]["connectionFailures"]["unauthorized"]
        .as_u64()
        .unwrap();
    assert!(counted >= sent, "{counted} counted, {sent} sent");
    eprintln!("log flood: {sent} refused requests in 5 s, the log grew {grown} bytes");
}
