//! A stale record of a server that died, attacked for real (docs/SECURITY.md, "A stale
//! record of a server that died"): after an unclean stop, `<data dir>/server.json` still
//! names the server's port, and another user binds it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use openwork_tests::attacker::{attacker_dir, can_attack, spawn_python};
use openwork_tests::fixtures::{describe, output_of};
use openwork_tests::server::{ServerBuilder, wait_until};
use serde_json::Value;

use super::wait_for_file;

/// Binds the port it is given (SO_REUSEADDR: the dead server's connections linger in
/// TIME-WAIT) and answers every request on every connection `201 {}`, as a pairing code
/// would be answered, appending every byte it receives to `captured.bin`.
const SQUATTER: &str = r#"
import os, socket, sys, threading
out, port = sys.argv[1], int(sys.argv[2])
captured = open(os.path.join(out, "captured.bin"), "ab", buffering=0)
lock = threading.Lock()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
open(os.path.join(out, "listening"), "w").close()
def serve(conn):
    conn.settimeout(5)
    pending = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            with lock:
                captured.write(chunk)
            pending += chunk
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
    except OSError:
        pass
    finally:
        conn.close()
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// `openwork-server-v2 pair` for the data dir `data`, as the user who started the server.
fn pair(data: &Path) -> Output {
    output_of(
        Command::new(openwork_tests::host_bin("openwork-server-v2"))
            .arg("pair")
            .arg("--json")
            .arg("--data-dir")
            .arg(data)
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_DATA_DIR"),
    )
}

fn server_file(data: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data.join("server.json")).unwrap()).unwrap()
}

/// Defence: a local command sends a token only to the process `server.json` names when that
/// process still runs and proves it holds the key the file names (a new one every start;
/// the HMAC of a nonce of the command's choosing); the next start removes a stale file.
/// Attack: the server is SIGKILLed, another user binds the port its `server.json` names and
/// answers `201 {}`; the user runs `pair`. Before, `pair` sent the squatter
/// `Authorization: Bearer <host token>`, printed an empty code and exited 0.
#[test]
fn a_stale_server_record_never_hands_the_host_token_to_a_port_squatter() {
    if !can_attack() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spy = attacker_dir(dir.path());
    let mut server = ServerBuilder::fixture(&dir.path().join("server")).start();
    let data = server.data_dir.clone();
    let host_token = server.host_token.clone();
    let port = server.ready["port"].as_u64().unwrap();
    let record = server_file(&data);
    assert_eq!(record["url"], format!("http://127.0.0.1:{port}"));
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    assert!(data.join("server.json").exists(), "a SIGKILL leaves it");

    let _squatter = spawn_python(
        &spy,
        "squatter.py",
        SQUATTER,
        &[spy.display().to_string(), port.to_string()],
    );
    wait_for_file(&spy.join("listening"));
    let captured = || {
        String::from_utf8_lossy(&std::fs::read(spy.join("captured.bin")).unwrap_or_default())
            .into_owned()
    };

    // The pid in the record has exited: nothing is sent anywhere.
    let refused = pair(&data);
    assert!(
        captured().is_empty(),
        "the squatter received:\n{}",
        captured()
    );
    assert_eq!(refused.status.code(), Some(10), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("which has exited"), "{stderr}");
    assert_eq!(
        record["identityKey"].as_str().map(str::len),
        Some(64),
        "{record}"
    );

    // The next start removes the stale record before it is ready (and writes its own once
    // it is), and `pair` works with it.
    let (mut child, stderr_file) = ServerBuilder::fixture(&dir.path().join("server"))
        .env("FIXTURE_OPENCODE_READY_DELAY_MS", "1500")
        .spawn();
    assert!(
        wait_until(Duration::from_secs(20), || !data
            .join("server.json")
            .exists()),
        "the stale server.json was not removed at start: {}",
        std::fs::read_to_string(&stderr_file).unwrap_or_default()
    );
    let (ready, _lines) = openwork_tests::server::await_ready_line(&mut child, &stderr_file);
    let restarted = server_file(&data);
    assert_eq!(restarted["pid"], ready["pid"]);
    assert_ne!(
        restarted["identityKey"], record["identityKey"],
        "a new key each start"
    );
    let paired = pair(&data);
    assert!(paired.status.success(), "{}", describe(&paired));
    let code: Value = serde_json::from_slice(&paired.stdout).unwrap();
    assert_eq!(code["code"].as_str().map(str::len), Some(9), "{code}");

    // A record that names a live pid but a port someone else holds (a pid reused, a
    // record damaged): the squatter is asked to prove itself, cannot, and gets no token.
    let mut forged = restarted.clone();
    forged["url"] = Value::String(format!("http://127.0.0.1:{port}"));
    std::fs::write(data.join("server.json"), forged.to_string()).unwrap();
    let refused = pair(&data);
    assert_eq!(refused.status.code(), Some(17), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not the server that wrote server.json"),
        "{stderr}"
    );
    let seen = captured();
    assert!(seen.contains("GET /system/identity?nonce="), "{seen}");
    assert!(
        !seen.contains(&host_token),
        "the host token reached the squatter"
    );
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "credentials reached the squatter:\n{seen}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
