//! Remote access, end to end on the real binary: TLS with pinned and CA-checked clients,
//! plain HTTP refused off loopback, the certificate's validity, names and renewal (paired
//! devices following the signed succession), pairing (happy path, expiry, reuse, guess
//! budgets per address, input errors, device names, a relay in the middle, a second
//! implementation of the protocol), device tokens and their revocation closing live
//! streams, and mDNS between network namespaces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openwork_runtime::remote::pake::ClientStart;
use openwork_runtime::remote::tls::{Statement, Succession, Validity, store, verify_succession};
use openwork_tests::contract::{Contract, checked_in_document};
use openwork_tests::fixtures::{describe, output_of};
use openwork_tests::netns::{self, Lan};
use openwork_tests::server::{
    ServerBuilder, ServerProcess, process_alive, wait_for_exit, wait_until,
};
use openwork_tests::tls::{
    closes_within, connect_presented, open, pinned_client, pinned_config, presented_fingerprint,
};
use serde_json::{Value, json};

/// A server with remote access on every address (`0.0.0.0`: not loopback, so TLS), without
/// mDNS (the namespace test turns it on).
fn remote(dir: &Path) -> ServerBuilder {
    ServerBuilder::fixture(dir)
        .arg("--host")
        .arg("0.0.0.0")
        .arg("--remote-access")
        .arg("--no-mdns")
}

/// A started remote server, its port and certificate fingerprint.
struct Remote {
    server: ServerProcess,
    port: u16,
    fingerprint: String,
}

impl Remote {
    fn start(builder: ServerBuilder) -> Remote {
        let server = builder.start();
        let port = server.ready["port"].as_u64().unwrap() as u16;
        let fingerprint = server.ready["tlsFingerprint"]
            .as_str()
            .unwrap_or_else(|| panic!("no tlsFingerprint in {}", server.ready))
            .to_string();
        assert_eq!(
            server.ready["url"],
            format!("https://0.0.0.0:{port}"),
            "{}",
            server.ready
        );
        Remote {
            server,
            port,
            fingerprint,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn client(&self) -> reqwest::blocking::Client {
        pinned_client(&self.fingerprint)
    }

    /// `method path` with `token`: status and JSON body (null when not JSON).
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client()
            .request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let body = response.json_value();
        (status, body)
    }

    /// A pairing code from `openwork-server-v2 pair --json`, as the host would get one.
    fn pair_command(&self, json_out: bool) -> Output {
        let mut command = Command::new(openwork_tests::host_bin("openwork-server-v2"));
        command
            .arg("pair")
            .arg("--data-dir")
            .arg(&self.server.data_dir)
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_DATA_DIR");
        if json_out {
            command.arg("--json");
        }
        output_of(&mut command)
    }

    fn code(&self) -> Value {
        let output = self.pair_command(true);
        assert!(output.status.success(), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The pending code, as shown (`ABCD-EFGH`).
    fn code_text(&self) -> String {
        self.code()["code"].as_str().unwrap().to_string()
    }

    /// `127.0.0.1:<port>`: where `join` reaches this server from here.
    fn loopback(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pairs a device the way a person on a second computer does (`join` with the code the
    /// host's `pair` printed): its id and token.
    fn paired(&self, name: &str) -> (String, String) {
        let joined = joined(&join(&[
            &self.loopback(),
            "--code",
            &self.code_text(),
            "--name",
            name,
        ]));
        assert_eq!(joined["fingerprint"], self.fingerprint.as_str(), "{joined}");
        (
            joined["deviceId"].as_str().unwrap().to_string(),
            joined["token"].as_str().unwrap().to_string(),
        )
    }

    /// `POST /pair/start` with the code (`msgA` made by the server's own client code, for
    /// the certificate this server shows): the client side, the session and `msgB`.
    fn pair_start(&self, code: &str) -> (ClientStart, String, Vec<u8>) {
        let (client, msg_a) = ClientStart::new(code, Some(&self.fingerprint));
        let (status, started) = self.call(
            "POST",
            "/pair/start",
            None,
            Some(json!({"pake": BASE64.encode(msg_a)})),
        );
        assert_eq!(status, 201, "{started}");
        let msg_b = BASE64.decode(started["pake"].as_str().unwrap()).unwrap();
        (
            client,
            started["session"].as_str().unwrap().to_string(),
            msg_b,
        )
    }

    /// The names of the paired devices (host token).
    fn device_names(&self) -> Vec<String> {
        let (status, devices) = self.call(
            "GET",
            "/system/devices",
            Some(&self.server.host_token),
            None,
        );
        assert_eq!(status, 200, "{devices}");
        devices["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `openwork-server-v2 join ARGS… --json` (the device's side), from this machine.
fn join(args: &[&str]) -> Output {
    output_of(join_command(Command::new(openwork_tests::host_bin("openwork-server-v2"))).args(args))
}

/// `command` (the server's executable, perhaps behind `ip netns exec`) made into `join
/// --json`, with nothing on standard input.
fn join_command(mut command: Command) -> Command {
    command
        .arg("join")
        .arg("--json")
        .stdin(Stdio::null())
        .env_remove("OPENWORK_DATA_DIR");
    command
}

/// What a successful `join --json` printed.
fn joined(output: &Output) -> Value {
    assert!(output.status.success(), "{}", describe(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A code that is surely not `code`.
fn wrong_code(code: &str) -> &'static str {
    if code.starts_with('2') {
        "3333-3333"
    } else {
        "2222-2222"
    }
}

trait JsonValue {
    fn json_value(self) -> Value;
}

impl JsonValue for reqwest::blocking::Response {
    fn json_value(self) -> Value {
        let bytes = self.bytes().unwrap();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

#[test]
fn a_remote_server_speaks_tls_only_with_a_reused_certificate_that_clients_pin() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let fingerprint = remote.fingerprint.clone();
    assert_eq!(fingerprint.len(), 64);

    // A client pinning the fingerprint gets in; /system/runtime names the same certificate.
    let (status, runtime) = remote.call("GET", "/system/runtime", Some(&remote.server.token), None);
    assert_eq!(status, 200, "{runtime}");
    assert_eq!(runtime["tls"]["fingerprint"], fingerprint.as_str());
    let cert = remote.server.data_dir.join("tls/cert.pem");
    assert_eq!(runtime["tls"]["certificate"], cert.to_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = remote.server.data_dir.join("tls/key.pem");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A client pinning another certificate refuses the server.
    let wrong = pinned_client(&"00".repeat(32))
        .get(remote.url("/health"))
        .send()
        .expect_err("a wrong fingerprint must be refused");
    assert!(wrong.is_connect(), "{wrong:?}");

    // curl, trusting the generated certificate as its CA (it names localhost), and not
    // without it.
    let curl = |extra: &[&str]| {
        output_of(
            Command::new("curl")
                .args(["-sS", "--max-time", "10"])
                .args(extra)
                .arg(format!("https://localhost:{}/health", remote.port)),
        )
    };
    let trusted = curl(&["--cacert", cert.to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        openwork_tests::fixtures::describe(&trusted)
    );
    let health: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(health["healthy"], true);
    let untrusted = curl(&[]);
    assert!(
        !untrusted.status.success(),
        "curl must refuse an unknown self-signed certificate"
    );

    // Plain HTTP on the same port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", remote.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP was served: {}",
        String::from_utf8_lossy(&answer)
    );

    // The next start reuses the certificate; `tls rotate` replaces it.
    let data = remote.server.data_dir.clone();
    let mut server = remote.server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let again = Remote::start(remote_in(dir.path()));
    assert_eq!(again.fingerprint, fingerprint, "reused");
    drop(again);
    let run = |args: &[&str]| {
        output_of(
            Command::new(openwork_tests::host_bin("openwork-server-v2"))
                .args(args)
                .arg("--data-dir")
                .arg(&data)
                .arg("--json"),
        )
    };
    let shown: Value = serde_json::from_slice(&run(&["tls", "show"]).stdout).unwrap();
    assert_eq!(shown["fingerprint"], fingerprint.as_str());
    let rotated: Value = serde_json::from_slice(&run(&["tls", "rotate"]).stdout).unwrap();
    let rotated = rotated["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(rotated, fingerprint);
    let after = Remote::start(remote_in(dir.path()));
    assert_eq!(
        after.fingerprint, rotated,
        "the rotated certificate is served"
    );
}

/// [`remote`] again in the same directory (same data dir).
fn remote_in(dir: &Path) -> ServerBuilder {
    remote(dir)
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_with_exit_16() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, stderr) = remote(dir.path()).arg("--tls").arg("off").spawn();
    let status = wait_for_exit(&mut child, Duration::from_secs(30), || {
        std::fs::read_to_string(&stderr).unwrap_or_default()
    });
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(16), "{text}");
    assert!(text.contains("refusing plain HTTP on 0.0.0.0"), "{text}");
    assert!(text.contains("drop --tls off"), "says what to do: {text}");
    assert!(
        !dir.path().join("data/tls").exists(),
        "nothing was made before refusing"
    );
}

/// A certificate file read with x509-parser (not the server's own parser): its validity in
/// Unix seconds and the names it covers.
struct Certificate {
    der: Vec<u8>,
    not_before: i64,
    not_after: i64,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

fn read_certificate(path: &Path) -> Certificate {
    use x509_parser::extensions::GeneralName;
    let text = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns.push(name.to_string()),
                GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                }),
                _ => {}
            }
        }
    }
    Certificate {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        der: pem.contents.clone(),
        dns,
        ips,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const DAY: i64 = 24 * 60 * 60;

/// What a paired device does when its pin fails: connect again accepting whatever is
/// presented, ask for the statements leading from its pin over that very connection, check
/// the answer against the contract, and follow them with the runtime's verifier. The
/// fingerprint to pin from now on, or why not.
fn follow(port: u16, pinned: &str) -> Result<String, String> {
    let (mut stream, presented) = connect_presented(port).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /tls/succession?from={pinned} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream);
    let (status, headers) = openwork_tests::http::read_head(&mut reader).unwrap();
    let body = openwork_tests::http::read_body(&mut reader, "GET", status, &headers).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    Contract::new(checked_in_document())
        .validate_component("TlsSuccession", &body)
        .unwrap_or_else(|problem| panic!("{body} does not conform: {problem}"));
    let succession: Succession = serde_json::from_value(body).unwrap();
    verify_succession(pinned, &presented, &succession).map_err(|e| e.to_string())
}

/// An attacker's certificate and key: made by `tls rotate` in a data dir of its own.
fn attacker_identity(dir: &Path) -> store::Pair {
    let data = dir.join("attacker");
    let output = output_of(
        Command::new(openwork_tests::host_bin("openwork-server-v2"))
            .args(["tls", "rotate", "--data-dir"])
            .arg(&data),
    );
    assert!(
        output.status.success(),
        "{}",
        openwork_tests::fixtures::describe(&output)
    );
    store::Pair {
        certificate: std::fs::read_to_string(data.join("tls/cert.pem")).unwrap(),
        key: std::fs::read_to_string(data.join("tls/key.pem")).unwrap(),
    }
}

#[test]
fn a_generated_certificate_is_valid_for_about_a_year_and_names_no_link_local_address_unless_bound()
{
    let Some(lan) = Lan::create() else {
        return;
    };
    // The server's machine also has a link-local address (an interface without DHCP).
    let added = output_of(Command::new(lan.ip_program()).args([
        "-n",
        &lan.server_ns,
        "addr",
        "add",
        "169.254.7.7/16",
        "dev",
        "lo",
    ]));
    assert!(
        added.status.success(),
        "{}",
        openwork_tests::fixtures::describe(&added)
    );
    // And an IPv6 one, where the kernel has IPv6 (the assertion below covers both).
    let added_v6 = output_of(Command::new(lan.ip_program()).args([
        "-n",
        &lan.server_ns,
        "addr",
        "add",
        "fe80::7/64",
        "dev",
        "lo",
    ]));
    if !added_v6.status.success() {
        eprintln!(
            "no IPv6 link-local address in the namespace: {}",
            openwork_tests::fixtures::describe(&added_v6)
        );
    }
    let link_local: IpAddr = "169.254.7.7".parse().unwrap();
    let serve = |dir: &Path, host: &str| {
        ServerBuilder::executable(&openwork_tests::host_bin("openwork-server-v2"), dir)
            .wrapped(lan.ip_program(), &lan.server_wrapper())
            .arg("--sidecar")
            .arg(format!(
                "opencode={}",
                openwork_tests::host_bin("openwork-fixture-sidecar").display()
            ))
            .arg("--host")
            .arg(host)
            .arg("--remote-access")
            .arg("--no-mdns")
            .start()
    };

    // On every address: valid from a day ago for a year, naming the LAN address and
    // loopback, and neither the link-local address nor any fe80:: one.
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), "0.0.0.0");
    let cert = read_certificate(&server.data_dir.join("tls/cert.pem"));
    let now = unix_now();
    assert!(
        (cert.not_before - (now - DAY)).abs() < 120,
        "valid from a day before it was made: {} vs now {now}",
        cert.not_before
    );
    assert!(
        (cert.not_after - (now + 365 * DAY)).abs() < 120,
        "valid for a year: until {} (now {now}, {} days)",
        cert.not_after,
        (cert.not_after - now) / DAY
    );
    let server_ip: IpAddr = netns::SERVER_IP.parse().unwrap();
    for expected in [
        server_ip,
        "127.0.0.1".parse().unwrap(),
        "::1".parse().unwrap(),
    ] {
        assert!(
            cert.ips.contains(&expected),
            "{expected} missing: {:?}",
            cert.ips
        );
    }
    assert!(
        cert.dns.contains(&"localhost".to_string()),
        "{:?}",
        cert.dns
    );
    let is_link_local = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    assert!(
        !cert.ips.iter().any(is_link_local),
        "a link-local address is named: {:?}",
        cert.ips
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(15)).success());

    // Bound to the link-local address itself: that address is named (and the LAN one is not).
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "169.254.7.7");
    let cert = read_certificate(&server.data_dir.join("tls/cert.pem"));
    assert!(cert.ips.contains(&link_local), "{:?}", cert.ips);
    assert!(!cert.ips.contains(&server_ip), "{:?}", cert.ips);
}

#[test]
fn a_near_expiry_certificate_is_renewed_while_the_server_runs_and_paired_devices_follow_the_signed_statement()
 {
    let dir = tempfile::tempdir().unwrap();
    // Certificates valid 30 s, renewed with 20 s left, checked every 100 ms: the first is
    // renewed 10 s after the start, and each renewal leaves 10 s before the next.
    let started = Instant::now();
    let remote = Remote::start(
        remote(dir.path())
            .arg("--tls-timings")
            .arg("lifetime_ms=30000,renew_before_ms=20000,check_ms=100"),
    );
    let first = remote.fingerprint.clone();
    let first_der = read_certificate(&remote.server.data_dir.join("tls/cert.pem")).der;
    let (_, token) = remote.paired("phone");
    // A stream the device opened before the renewal.
    let (status, _, mut events) = open(
        remote.port,
        &first,
        &format!(
            "GET /system/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status, 200);

    // Renewed while it runs: new connections get another certificate, from the same process.
    assert!(
        wait_until(Duration::from_secs(40), || presented_fingerprint(
            remote.port
        ) != first),
        "never renewed\n{}",
        remote.server.stderr()
    );
    let renewed_after = started.elapsed();
    assert!(process_alive(remote.server.pid()), "not restarted");
    // Logged once the renewal is done (the new certificate is presented a moment before).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let stderr = remote.server.stderr();
            stderr.contains("renewed the TLS certificate") && stderr.contains("expires on")
        }),
        "{}",
        remote.server.stderr()
    );

    // A client that only pins (as every client did before) sees its pin fail.
    let refused = pinned_client(&first)
        .get(remote.url("/health"))
        .send()
        .expect_err("the old pin no longer matches");
    assert!(refused.is_connect(), "{refused:?}");
    // The device follows the statement signed by the old key, re-pins, and its token works.
    let pinned = follow(remote.port, &first).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(pinned, first);
    let response = pinned_client(&pinned)
        .get(remote.url("/system/runtime"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let runtime: Value = response.json().unwrap();
    assert_eq!(runtime["tls"]["fingerprint"], pinned.as_str());
    // The stream opened before the renewal is still open.
    assert!(!closes_within(&mut events, Duration::from_millis(200)));
    // Local commands pin what server.json names, which follows.
    let server_file = || -> Value {
        serde_json::from_slice(&std::fs::read(remote.server.data_dir.join("server.json")).unwrap())
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(5), || server_file()["fingerprint"]
            == pinned.as_str()),
        "{}",
        server_file()
    );
    assert_eq!(remote.code()["fingerprint"], pinned.as_str());

    // What an attacker on the LAN can do with the same statements: present its own
    // certificate and relay them (they lead elsewhere), or sign one from the pinned
    // certificate with its own key (not the pinned certificate's). Both are refused.
    let attacker = attacker_identity(dir.path());
    let attacker_der = attacker.leaf().unwrap().to_vec();
    let attacker_fp = openwork_runtime::remote::tls::fingerprint(&attacker_der);
    let (mut stream, _) = connect_presented(remote.port).unwrap();
    write!(
        stream,
        "GET /tls/succession?from={first} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let (status, headers) = openwork_tests::http::read_head(&mut reader).unwrap();
    assert_eq!(status, 200);
    let relayed: Succession = serde_json::from_slice(
        &openwork_tests::http::read_body(&mut reader, "GET", status, &headers).unwrap(),
    )
    .unwrap();
    let refused = verify_succession(&first, &attacker_der, &relayed).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not to the certificate this connection presents"),
        "{refused}"
    );
    let attacker_key = attacker.certified().unwrap().key;
    let forged = Succession {
        statements: vec![
            Statement::sign(&first_der, attacker_key.as_ref(), &attacker_fp, 1).unwrap(),
        ],
        ..Succession::default()
    };
    let refused = verify_succession(&first, &attacker_der, &forged).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not signed by that certificate's key"),
        "{refused}"
    );
    eprintln!("renewed {renewed_after:?} after the start");
}

#[test]
fn mdns_advertises_the_fingerprint_of_a_renewed_certificate() {
    let Some(lan) = Lan::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server_exe = openwork_tests::host_bin("openwork-server-v2");
    // Certificates valid 40 s, renewed with 25 s left: the first renewal 15 s after the
    // start, the next 15 s later.
    let server = ServerBuilder::executable(&server_exe, dir.path())
        .wrapped(lan.ip_program(), &lan.server_wrapper())
        .arg("--sidecar")
        .arg(format!(
            "opencode={}",
            openwork_tests::host_bin("openwork-fixture-sidecar").display()
        ))
        .arg("--host")
        .arg(netns::SERVER_IP)
        .arg("--remote-access")
        .arg("--tls-timings")
        .arg("lifetime_ms=40000,renew_before_ms=25000,check_ms=100")
        .start();
    let first = server.ready["tlsFingerprint"].as_str().unwrap().to_string();
    let port = server.ready["port"].as_u64().unwrap();
    let advertised = || {
        let output =
            output_of(
                lan.on_peer(&server_exe)
                    .args(["discover", "--timeout", "4", "--json"]),
            );
        let found: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        found
            .iter()
            .find(|s| s["port"] == port)
            .and_then(|s| s["fingerprintPrefix"].as_str().map(str::to_string))
    };
    assert_eq!(advertised().as_deref(), Some(&first[..16]));
    let cert = server.data_dir.join("tls/cert.pem");
    let on_disk = || openwork_runtime::remote::tls::fingerprint(&read_certificate(&cert).der);
    assert!(
        wait_until(Duration::from_secs(30), || on_disk() != first),
        "never renewed\n{}",
        server.stderr()
    );
    let renewed = on_disk();
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut seen = advertised();
    while seen.as_deref() != Some(&renewed[..16]) && Instant::now() < deadline {
        seen = advertised();
    }
    assert_eq!(
        seen.as_deref(),
        Some(&renewed[..16]),
        "the advertisement names the old certificate\n{}",
        server.stderr()
    );
}

#[test]
fn an_old_certificate_valid_from_1975_to_4096_is_renewed_at_start_with_a_statement() {
    let dir = tempfile::tempdir().unwrap();
    let builder = remote(dir.path());
    // What every generated certificate was before: rcgen's defaults.
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let legacy = store::generate(
        &["localhost".to_string(), "127.0.0.1".to_string()],
        Validity {
            not_before: at(157_766_400),   // 1975-01-01
            not_after: at(67_090_118_400), // 4096-01-01
        },
    )
    .unwrap();
    let legacy_fp = legacy.fingerprint().unwrap();
    let tls_dir = dir.path().join("data/tls");
    std::fs::create_dir(&tls_dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tls_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (name, text) in [("cert.pem", &legacy.certificate), ("key.pem", &legacy.key)] {
            std::fs::write(tls_dir.join(name), text).unwrap();
            std::fs::set_permissions(tls_dir.join(name), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
    }

    let remote = Remote::start(builder);
    assert_ne!(
        remote.fingerprint, legacy_fp,
        "the 1975-4096 certificate is still served"
    );
    let cert = read_certificate(&tls_dir.join("cert.pem"));
    assert!((cert.not_after - (unix_now() + 365 * DAY)).abs() < 120);
    let stderr = remote.server.stderr();
    assert!(
        stderr.contains("renewed the TLS certificate")
            && stderr.contains("1975-01-01")
            && stderr.contains("4096-01-01"),
        "says why: {stderr}"
    );
    // A device that pinned the old certificate follows.
    assert_eq!(
        follow(remote.port, &legacy_fp),
        Ok(remote.fingerprint.clone())
    );
}

#[test]
fn tls_rotate_writes_a_statement_a_running_server_presents_it_and_forget_writes_none() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()).arg("--tls-timings").arg("check_ms=100"));
    let first = remote.fingerprint.clone();
    let (_, token) = remote.paired("laptop");
    let rotate = |extra: &[&str]| -> Value {
        let output = output_of(
            Command::new(openwork_tests::host_bin("openwork-server-v2"))
                .args(["tls", "rotate", "--json", "--data-dir"])
                .arg(&remote.server.data_dir)
                .args(extra),
        );
        assert!(
            output.status.success(),
            "{}",
            openwork_tests::fixtures::describe(&output)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let presents = |fingerprint: &str| {
        wait_until(Duration::from_secs(10), || {
            presented_fingerprint(remote.port) == fingerprint
        })
    };

    let rotated = rotate(&[]);
    let second = rotated["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(rotated["previous"], first.as_str());
    assert_eq!(rotated["announced"], true);
    assert!(presents(&second), "the running server never presented it");
    assert_eq!(follow(remote.port, &first), Ok(second.clone()));
    let response = pinned_client(&second)
        .get(remote.url("/system/runtime"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // A key that may be stolen: no statement, and the old ones are dropped.
    let forgotten = rotate(&["--forget"]);
    let third = forgotten["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(forgotten["announced"], false);
    assert!(presents(&third));
    for pinned in [&first, &second] {
        let refused = follow(remote.port, pinned).unwrap_err();
        assert!(
            refused.contains("404") && refused.contains("unknown_certificate"),
            "{refused}"
        );
    }
    // The device pairs again.
    let code = remote.code();
    assert_eq!(code["fingerprint"], third.as_str());
}

#[test]
fn device_names_with_bidi_or_invisible_characters_are_refused_with_400_saying_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    // A pairing session with the right code and confirmation: only the name is wrong.
    let (client, session, msg_b) = remote.pair_start(&remote.code_text());
    let confirm = BASE64.encode(client.finish(&msg_b).unwrap().client_confirm());
    let finish = |name: &str| {
        remote.call(
            "POST",
            "/pair/finish",
            None,
            Some(json!({"session": session, "deviceName": name, "confirm": confirm})),
        )
    };
    for (name, code_point) in [
        ("phone\u{202E}gnp.exe", "U+202E"),
        ("\u{2066}Ana", "U+2066"),
        ("Ana\u{200B}phone", "U+200B"),
        ("\u{3164}", "U+3164"),
        ("phone\u{E0041}", "U+E0041"),
        ("a\u{2028}b", "U+2028"),
    ] {
        let (status, body) = finish(name);
        assert_eq!(status, 400, "{name:?} was paired: {body}");
        assert_eq!(body["error"], "bad_request");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(code_point) && message.contains("printable"),
            "says what is wrong and what is allowed: {message}"
        );
        assert!(!message.contains(name), "never echoes the name: {message}");
    }
    let (status, paired) = finish("Ana’s \u{2764}\u{FE0F} phone");
    assert_eq!(status, 201, "{paired}");
    assert_eq!(remote.device_names(), ["Ana’s \u{2764}\u{FE0F} phone"]);
}

#[test]
fn pairing_gives_a_device_its_own_token_and_a_code_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let host = remote.server.host_token.clone();
    let client = remote.server.token.clone();

    // `pair` prints the code, the URL with address, port and fingerprint, and a QR code.
    let shown = remote.pair_command(false);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success(), "{text}");
    assert!(text.contains("Pairing code:"), "{text}");
    assert!(
        text.contains(&format!("fingerprint={}", remote.fingerprint)),
        "{text}"
    );
    assert!(
        text.contains(&format!(":{}/pair?code=", remote.port)),
        "{text}"
    );
    assert!(
        text.contains('▀') || text.contains('▄') || text.contains('█'),
        "a QR code: {text}"
    );

    // Asking over the API needs the host token.
    let (status, _) = remote.call("POST", "/system/pairing", Some(&client), None);
    assert_eq!(status, 403);
    let (status, issued) = remote.call("POST", "/system/pairing", Some(&host), None);
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["expiresInSeconds"], 300);
    assert_eq!(issued["fingerprint"], remote.fingerprint.as_str());
    let code = issued["code"].as_str().unwrap().to_string();

    // The retired protocol, which sent the code itself, is refused whatever it carries,
    // and spends nothing.
    let (status, retired) = remote.call(
        "POST",
        "/pair",
        None,
        Some(json!({"code": code, "deviceName": "old client"})),
    );
    assert_eq!(status, 410, "{retired}");
    assert_eq!(retired["error"], "pake_required");
    assert!(
        retired["message"].as_str().unwrap().contains("/pair/start"),
        "names the new endpoints: {retired}"
    );

    // Joined with the URL (addresses, pinned fingerprint) and the code typed in lower case
    // with a space: still the code. Once. The URL's first address is made one that does
    // not answer: the device goes on to the next (`also`).
    let typed = code.to_ascii_lowercase().replace('-', " ");
    let url = issued["url"].as_str().unwrap();
    let first = issued["addresses"][0].as_str().unwrap();
    assert!(
        url.starts_with(&format!("openwork://{first}/pair?")),
        "{url}"
    );
    let url = format!("{}&also={first}", url.replacen(first, "127.0.0.1:1", 1));
    let paired = joined(&join(&[&url, "--code", &typed, "--name", "Ana's phone"]));
    assert_eq!(paired["fingerprint"], remote.fingerprint.as_str());
    assert_eq!(paired["name"], "Ana's phone");
    let token = paired["token"].as_str().unwrap().to_string();
    let again = join(&[
        &remote.loopback(),
        "--code",
        &code,
        "--name",
        "someone else",
    ]);
    assert_eq!(
        again.status.code(),
        Some(10),
        "a used code: {}",
        describe(&again)
    );
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("refused the pairing"), "{text}");

    // The device's token works like the client token (not the host's), and the client token
    // keeps working.
    assert_eq!(
        remote.call("GET", "/system/runtime", Some(&token), None).0,
        200
    );
    assert_eq!(
        remote
            .call("GET", "/opencode/global/health", Some(&token), None)
            .0,
        200
    );
    assert_eq!(
        remote
            .call("POST", "/system/shutdown", Some(&token), None)
            .0,
        403
    );
    assert_eq!(
        remote.call("GET", "/system/runtime", Some(&client), None).0,
        200
    );

    // The host sees it, with its last-seen time; the token is stored only as a digest.
    let (status, devices) = remote.call("GET", "/system/devices", Some(&host), None);
    assert_eq!(status, 200);
    let items = devices["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{devices}");
    assert_eq!(items[0]["name"], "Ana's phone");
    assert_eq!(items[0]["id"], paired["deviceId"]);
    assert!(items[0]["lastSeenMs"].as_u64().is_some(), "{devices}");
    assert_eq!(
        remote.call("GET", "/system/devices", Some(&client), None).0,
        403
    );
    let stored = std::fs::read_to_string(remote.server.data_dir.join("devices.json")).unwrap();
    assert!(!stored.contains(&token), "the token itself is never stored");

    // The health panel (host token) counts the refusal and lists the device as seen.
    let (_, health) = remote.call("GET", "/system/health", Some(&host), None);
    let panel = &health["panel"];
    assert_eq!(panel["connectionFailures"]["pairingRefused"], 1, "{health}");
    assert_eq!(
        panel["devicesSeenRecently"][0]["name"], "Ana's phone",
        "{health}"
    );
    assert!(panel["uptimeMs"].as_u64().is_some(), "{health}");
    let (_, health) = remote.call("GET", "/system/health", Some(&client), None);
    assert!(health.get("panel").is_none(), "only for the host: {health}");
}

#[test]
fn a_pairing_code_expires() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()).env("OPENWORK_SERVER_V2_PAIRING_TTL_MS", "300"));
    let code = remote.code_text();
    std::thread::sleep(Duration::from_millis(600));
    let late = join(&[&remote.loopback(), "--code", &code, "--name", "late"]);
    assert_eq!(late.status.code(), Some(10), "{}", describe(&late));
    assert!(remote.server.stderr().contains("the pairing code expired"));
}

#[test]
fn wrong_guesses_are_counted_per_address_and_logged_without_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let code = remote.code_text();
    let wrong = wrong_code(&code);
    for _ in 0..5 {
        let guess = join(&[&remote.loopback(), "--code", wrong, "--name", "guesser"]);
        assert_eq!(guess.status.code(), Some(10), "{}", describe(&guess));
    }
    // Out of guesses: this address is refused even with the right code.
    let right = join(&[&remote.loopback(), "--code", &code, "--name", "too late"]);
    assert_eq!(right.status.code(), Some(10), "{}", describe(&right));
    assert!(remote.device_names().is_empty());
    let stderr = remote.server.stderr();
    assert!(
        stderr.contains("that was this address's last of 5 wrong guesses"),
        "{stderr}"
    );
    assert!(
        stderr.contains("this address has used its 5 wrong guesses"),
        "{stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1"),
        "the guesser's address is logged: {stderr}"
    );
    assert!(!stderr.contains(&code), "the code is never logged");
    assert!(
        !stderr.contains(&code.replace('-', "")),
        "the code is never logged"
    );
}

#[test]
fn input_errors_never_spend_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let code = remote.code_text();
    let bad_request = |path: &str, body: Value| {
        let (status, answer) = remote.call("POST", path, None, Some(body));
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{answer}");
    };
    let (_, msg_a) = ClientStart::new(&code, Some(&remote.fingerprint));
    let mut reflected = msg_a;
    reflected[0] = b'B';
    // Far more input errors than the five wrong guesses this address has, each with the
    // right code where a code is involved.
    for _ in 0..10 {
        bad_request("/pair/start", json!({"pake": "not base64!"}));
        bad_request("/pair/start", json!({"pake": BASE64.encode(&msg_a[..32])}));
        bad_request("/pair/start", json!({"pake": BASE64.encode(reflected)}));
        bad_request("/pair/start", json!({"spake": BASE64.encode(msg_a)}));
        bad_request(
            "/pair/start",
            json!({"pake": BASE64.encode(msg_a), "extra": 1}),
        );
    }
    let (client, live, msg_b) = remote.pair_start(&code);
    let transcript = client.finish(&msg_b).unwrap();
    let confirm = BASE64.encode(transcript.client_confirm());
    let finish = |session: &str, name: &str, confirm: &str| {
        remote.call(
            "POST",
            "/pair/finish",
            None,
            Some(json!({"session": session, "deviceName": name, "confirm": confirm})),
        )
    };
    for _ in 0..10 {
        // The right confirmation with unusable names (finding 7: these burned the code).
        for name in ["", "   ", "tab\there", &"x".repeat(65)] {
            let (status, answer) = finish(&live, name, &confirm);
            assert_eq!(status, 400, "{name:?}: {answer}");
            assert!(
                answer["message"].as_str().unwrap().contains("deviceName"),
                "{answer}"
            );
        }
        // Confirmations that are not 32 bytes of base64.
        bad_request(
            "/pair/finish",
            json!({"session": live, "deviceName": "tablet", "confirm": "%%%"}),
        );
        bad_request(
            "/pair/finish",
            json!({"session": live, "deviceName": "tablet", "confirm": BASE64.encode([0u8; 31])}),
        );
        // Sessions that do not exist.
        let (status, answer) = finish(&"0".repeat(32), "tablet", &confirm);
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"], "unknown_pairing_session");
    }
    // The session was kept through all of the above.
    let (status, paired) = finish(&live, "tablet", &confirm);
    assert_eq!(status, 201, "{paired}");
    let proof = BASE64.decode(paired["confirm"].as_str().unwrap()).unwrap();
    assert!(
        transcript.verify_server(&proof),
        "the server proves the code too"
    );
    assert_eq!(paired["fingerprint"], remote.fingerprint.as_str());
    assert_eq!(remote.device_names(), ["tablet"]);
    assert!(
        !remote.server.stderr().contains("pairing refused"),
        "nothing was refused as a guess:\n{}",
        remote.server.stderr()
    );
}

/// A LAN attacker's relay: it answers TLS with a certificate of its own, and passes each
/// HTTP request on to the real server (pinned: the attacker can see its certificate) from
/// an address of its own, 127.0.0.2, recording everything it sees.
struct Relay {
    port: u16,
    fingerprint: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(dir: &Path, server_port: u16, server_fingerprint: &str) -> Relay {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let fingerprint = openwork_runtime::remote::tls::rotate(
            dir,
            &names,
            openwork_runtime::remote::tls::Followers::Forget,
        )
        .unwrap()
        .fingerprint;
        let (cert, key) = openwork_runtime::remote::tls::data_dir_files(dir);
        let certs = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let upstream = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(pinned_config(server_fingerprint))
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, upstream, record) = (config.clone(), upstream.clone(), record.clone());
                std::thread::spawn(move || {
                    let _ = relay_connection(tcp, config, &upstream, server_port, &record);
                });
            }
        });
        Relay {
            port,
            fingerprint,
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Relays one client connection, request by request, until the client closes it.
fn relay_connection(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    upstream: &reqwest::blocking::Client,
    server_port: u16,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let tls = rustls::StreamOwned::new(
        rustls::ServerConnection::new(config).map_err(std::io::Error::other)?,
        tcp,
    );
    let mut reader = BufReader::new(tls);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
        seen.lock().unwrap().push(format!(
            "{method} {path} {}",
            String::from_utf8_lossy(&body)
        ));
        let answer = upstream
            .request(
                method.parse().map_err(std::io::Error::other)?,
                format!("https://127.0.0.1:{server_port}{path}"),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(std::io::Error::other)?;
        let status = answer.status().as_u16();
        let text = answer.text().map_err(std::io::Error::other)?;
        seen.lock().unwrap().push(format!("{status} {text}"));
        let out = reader.get_mut();
        write!(
            out,
            "HTTP/1.1 {status} Relayed\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )?;
        out.flush()?;
    }
}

#[test]
fn a_relay_with_its_own_certificate_cannot_pair_and_never_sees_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(relay_dir.path(), remote.port, &remote.fingerprint);
    assert_ne!(relay.fingerprint, remote.fingerprint);
    let code = remote.code_text();
    let through_relay = format!("127.0.0.1:{}", relay.port);

    // A client that trusts the first certificate it sees and sends the code itself (the
    // protocol before this one): the relay would pair in its place. Refused outright.
    let trusting = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let old = trusting
        .post(format!("https://{through_relay}/pair"))
        .header("content-type", "application/json")
        .body(json!({"code": code, "deviceName": "victim"}).to_string())
        .send()
        .unwrap();
    let old_status = old.status().as_u16();
    let old_body = old.text().unwrap();
    assert!(
        !old_body.contains("\"token\""),
        "the relay was handed a device token: {old_body}"
    );
    assert_eq!(old_status, 410, "{old_body}");

    // The device types the right code, but talks to the relay: the exchange fails on the
    // device, which keeps nothing and says which certificate it saw.
    let relayed = join(&[&through_relay, "--code", &code, "--name", "victim"]);
    assert_eq!(relayed.status.code(), Some(10), "{}", describe(&relayed));
    assert!(relayed.stdout.is_empty(), "nothing printed, no token kept");
    let said = String::from_utf8_lossy(&relayed.stderr);
    assert!(said.contains("refused the pairing"), "{said}");
    assert!(
        said.contains(&relay.fingerprint),
        "names what it saw: {said}"
    );

    // Nothing was paired, and the relay saw no token on the way.
    assert!(remote.device_names().is_empty());
    let seen = relay.seen();
    assert!(
        seen.iter()
            .any(|line| line.starts_with("POST /pair/finish")),
        "the exchange went through the relay: {seen:?}"
    );
    assert!(
        seen.iter().all(|line| !line.contains("\"token\"")),
        "the relay saw a device token: {seen:?}"
    );

    // It cost the relay's address one guess; the code still works directly.
    let stderr = remote.server.stderr();
    assert!(
        stderr.contains("127.0.0.2") && stderr.contains("4 more wrong guesses"),
        "{stderr}"
    );
    let direct = joined(&join(&[
        &remote.loopback(),
        "--code",
        &code,
        "--name",
        "Ana's laptop",
    ]));
    assert_eq!(direct["fingerprint"], remote.fingerprint.as_str());
    assert_eq!(remote.device_names(), ["Ana's laptop"]);
    let token = direct["token"].as_str().unwrap();
    assert_eq!(
        remote.call("GET", "/system/runtime", Some(token), None).0,
        200
    );
}

#[test]
fn one_peer_on_the_lan_cannot_burn_the_code_for_others() {
    let Some(lan) = Lan::create() else {
        return;
    };
    // The server in its namespace, on every address: the peer reaches it over the veth
    // pair, a client in the server's namespace over loopback (another source).
    let dir = tempfile::tempdir().unwrap();
    let server_exe = openwork_tests::host_bin("openwork-server-v2");
    let server = ServerBuilder::executable(&server_exe, dir.path())
        .wrapped(lan.ip_program(), &lan.server_wrapper())
        .arg("--sidecar")
        .arg(format!(
            "opencode={}",
            openwork_tests::host_bin("openwork-fixture-sidecar").display()
        ))
        .arg("--host")
        .arg("0.0.0.0")
        .arg("--remote-access")
        .arg("--no-mdns")
        .start();
    let port = server.ready["port"].as_u64().unwrap();
    let issued = output_of(
        lan.on_server(&server_exe)
            .args(["pair", "--json", "--data-dir"])
            .arg(&server.data_dir)
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_DATA_DIR"),
    );
    let issued: Value = joined(&issued);
    let code = issued["code"].as_str().unwrap().to_string();

    // The peer guesses many times, then tries the right code: refused after its budget.
    let on_lan = format!("{}:{port}", netns::SERVER_IP);
    let peer_join = |code: &str| {
        output_of(join_command(lan.on_peer(&server_exe)).args([
            on_lan.as_str(),
            "--code",
            code,
            "--name",
            "guesser",
        ]))
    };
    for _ in 0..12 {
        let guess = peer_join(wrong_code(&code));
        assert_eq!(guess.status.code(), Some(10), "{}", describe(&guess));
    }
    let right = peer_join(&code);
    assert_eq!(right.status.code(), Some(10), "{}", describe(&right));
    let stderr = server.stderr();
    let refused_peer = |what: &str| {
        stderr
            .lines()
            .filter(|line| line.contains(netns::PEER_IP) && line.contains(what))
            .count()
    };
    assert_eq!(
        refused_peer("more wrong guesses from this address"),
        4,
        "{stderr}"
    );
    assert_eq!(refused_peer("last of 5 wrong guesses"), 1, "{stderr}");
    // Eight refusals of the same kind in about a second: the first five are logged one by
    // one, the rest are counted (http::log_limit).
    assert!(
        refused_peer("has used its 5 wrong guesses") >= 5,
        "{stderr}"
    );
    assert!(!stderr.contains("pairing code burned"), "{stderr}");

    // Another address pairs with the same code.
    let other = joined(&output_of(join_command(lan.on_server(&server_exe)).args([
        &format!("127.0.0.1:{port}"),
        "--code",
        &code,
        "--name",
        "Ana's laptop",
    ])));
    assert_eq!(other["name"], "Ana's laptop");
    assert_eq!(
        other["fingerprint"], server.ready["tlsFingerprint"],
        "{other}"
    );
}

#[test]
fn a_python_client_written_from_the_docs_pairs() {
    // A second implementation of the protocol (PyPI's spake2; scripts/test installs it):
    // what docs/RUNTIME.md specifies is what the server speaks.
    let probe = output_of(Command::new("python3").args(["-c", "import spake2"]));
    if !probe.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with PyPI's spake2 is needed (scripts/test installs it): {}",
            describe(&probe)
        );
        eprintln!("SKIPPED (loudly): python3 -m pip install spake2==0.9 to run this test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let script = openwork_tests::workspace_root().join("tests/python/pair.py");
    let python = |code: &str, name: &str| {
        output_of(Command::new("python3").arg(&script).args([
            "127.0.0.1",
            &remote.port.to_string(),
            code,
            name,
        ]))
    };
    // A wrong code fails there too (and costs one guess).
    let code = remote.code_text();
    let wrong = python(wrong_code(&code), "python");
    assert!(!wrong.status.success(), "{}", describe(&wrong));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("pairing_refused"));
    let paired = joined(&python(&code.to_ascii_lowercase(), "python"));
    assert_eq!(paired["fingerprint"], remote.fingerprint.as_str());
    assert_eq!(paired["name"], "python");
    let token = paired["token"].as_str().unwrap();
    assert_eq!(
        remote.call("GET", "/system/runtime", Some(token), None).0,
        200
    );
    assert_eq!(remote.device_names(), ["python"]);
}

#[test]
fn revoking_a_device_fails_its_token_and_closes_its_event_stream_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::start(remote(dir.path()));
    let (id, token) = remote.paired("tablet");
    let (_, other) = remote.paired("laptop");

    // A live supervisor event stream and a live WebSocket (through /opencode), both made
    // with the device's token.
    let (status, _, mut events) = open(
        remote.port,
        &remote.fingerprint,
        &format!(
            "GET /system/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status, 200);
    let (status, _, mut socket) = open(
        remote.port,
        &remote.fingerprint,
        &format!(
            "GET /opencode/ws HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status, 101);
    // The WebSocket echoes (the fixture echoes raw bytes): it is live.
    socket.get_mut().write_all(b"ping").unwrap();
    socket.get_mut().flush().unwrap();
    let mut echoed = [0u8; 4];
    std::io::Read::read_exact(&mut socket, &mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    // Neither closes on its own.
    assert!(!closes_within(&mut events, Duration::from_millis(300)));

    let (status, body) = remote.call(
        "DELETE",
        &format!("/system/devices/{id}"),
        Some(&remote.server.host_token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        closes_within(&mut events, Duration::from_secs(3)),
        "the event stream was closed"
    );
    assert!(
        closes_within(&mut socket, Duration::from_secs(3)),
        "the WebSocket was closed"
    );

    // Its token fails at once; the other device's and the client token do not.
    let (status, body) = remote.call("GET", "/system/runtime", Some(&token), None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        remote.call("GET", "/system/runtime", Some(&other), None).0,
        200
    );
    assert_eq!(
        remote
            .call("GET", "/system/runtime", Some(&remote.server.token), None)
            .0,
        200
    );
    let (status, _) = remote.call(
        "DELETE",
        &format!("/system/devices/{id}"),
        Some(&remote.server.host_token),
        None,
    );
    assert_eq!(status, 404, "already revoked");
}

/// A server in the LAN's server namespace, bound to its address, with remote access and
/// mDNS (no --no-mdns).
fn mdns_server(lan: &Lan, dir: &Path) -> ServerProcess {
    ServerBuilder::executable(&openwork_tests::host_bin("openwork-server-v2"), dir)
        .wrapped(lan.ip_program(), &lan.server_wrapper())
        .arg("--sidecar")
        .arg(format!(
            "opencode={}",
            openwork_tests::host_bin("openwork-fixture-sidecar").display()
        ))
        .arg("--host")
        .arg(netns::SERVER_IP)
        .arg("--remote-access")
        .start()
}

/// `discover --timeout 4 --json` run by `command` (in one namespace or the other).
fn discover_json(mut command: Command) -> Vec<Value> {
    let output = output_of(command.args(["discover", "--timeout", "4", "--json"]));
    assert!(
        output.status.success(),
        "{}",
        openwork_tests::fixtures::describe(&output)
    );
    serde_json::from_slice::<Vec<Value>>(&output.stdout).unwrap()
}

/// The entry for `server` in what `discover` on the peer finds, checked against its ready
/// line (TLS, address, fingerprint prefix, version, no token).
fn discovered_from_peer(lan: &Lan, server: &ServerProcess) -> Value {
    let server_exe = openwork_tests::host_bin("openwork-server-v2");
    let found = discover_json(lan.on_peer(&server_exe));
    let port = server.ready["port"].as_u64().unwrap();
    let fingerprint = server.ready["tlsFingerprint"].as_str().unwrap();
    let ours = found
        .iter()
        .find(|s| s["port"] == port)
        .unwrap_or_else(|| panic!("not discovered: {found:?}\nserver:\n{}", server.stderr()))
        .clone();
    assert_eq!(ours["tls"], true);
    assert_eq!(ours["addresses"], json!([netns::SERVER_IP]));
    assert_eq!(ours["fingerprintPrefix"], &fingerprint[..16]);
    assert_eq!(ours["version"], openwork_runtime::SERVER_VERSION);
    let everything = serde_json::to_string(&ours).unwrap();
    assert!(!everything.contains(&server.token) && !everything.contains(&server.host_token));
    ours
}

#[test]
fn mdns_announces_a_remote_server_and_discover_finds_it_across_network_namespaces() {
    let Some(lan) = Lan::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = mdns_server(&lan, dir.path());
    let port = server.ready["port"].as_u64().unwrap();
    discovered_from_peer(&lan, &server);

    // Withdrawn on stop: a goodbye, so the next browse finds nothing.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let after = discover_json(lan.on_peer(openwork_tests::host_bin("openwork-server-v2")));
    assert!(
        after.iter().all(|s| s["port"] != port),
        "still advertised after stop: {after:?}"
    );
}

/// The LAN peer's side of the mDNS attacks, in Python (a peer's own tools, not ours):
/// `flood COUNT PER_SECOND PEER_IP` sends COUNT mDNS responses without a PTR record (A, AAAA, TXT and
/// SRV records with random names and a week's TTL, about 1.3 KB each) to the group;
/// `instances COUNT PEER_IP` sends COUNT responses each announcing a new fake
/// `_openwork._tcp` instance with SRV, TXT and 40 addresses; `queries COUNT SECONDS PEER_IP
/// SERVER_IP` sends COUNT queries for `_openwork._tcp.local` from port 5353 and COUNT as
/// legacy unicast (from another port) over SECONDS, and counts the server's answers to each.
/// Each prints one JSON line.
const LAN_PEER: &str = r#"
import json, os, random, select, socket, struct, sys, time

GROUP = "224.0.0.251"
rand = random.Random(24)

def name(*labels):
    return b"".join(bytes([len(l)]) + l for l in labels) + b"\0"

def rr(owner, rtype, data, ttl=7 * 86400):
    return owner + struct.pack("!HHIH", rtype, 0x8001, ttl, len(data)) + data

def response(records):
    return struct.pack("!HHHHHH", 0, 0x8400, 0, len(records), 0, 0) + b"".join(records)

def mdns_socket(port, peer):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(peer))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    # Our own queries looped back would crowd the server's answers out of the buffer.
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return s

def paced(count, per_second, send):
    start = time.monotonic()
    for i in range(count):
        send(i)
        # Paced, so that what the receiver reads is decided by its reading, not by a burst
        # overflowing its socket buffer.
        ahead = start + (i + 1) / per_second - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return time.monotonic() - start

def flood(count, per_second, peer):
    s = mdns_socket(5353, peer)
    sent_bytes = 0
    def send(_):
        nonlocal sent_bytes
        records, size = [], 12
        while size < 1300:
            owner = name(os.urandom(8).hex().encode(), b"local")
            kind = rand.randrange(4)
            if kind == 0:
                r = rr(owner, 1, os.urandom(4))
            elif kind == 1:
                r = rr(owner, 28, os.urandom(16))
            elif kind == 2:
                t = os.urandom(60).hex().encode()
                r = rr(owner, 16, bytes([len(t)]) + t)
            else:
                r = rr(owner, 33, struct.pack("!HHH", 0, 0, rand.randrange(1, 65536)) + owner)
            records.append(r)
            size += len(r)
        packet = response(records)
        sent_bytes += len(packet)
        s.sendto(packet, (GROUP, 5353))
    seconds = paced(count, per_second, send)
    print(json.dumps({"packets": count, "bytes": sent_bytes, "seconds": seconds}))

def instances(count, peer):
    s = mdns_socket(5353, peer)
    service = name(b"_openwork", b"_tcp", b"local")
    def send(i):
        label = b"fake openwork %d" % i
        instance = name(label, b"_openwork", b"_tcp", b"local")
        host = name(b"fake%d" % i, b"local")
        txt = b"".join(bytes([len(t)]) + t for t in [b"version=6.6.6", b"tls=1", b"fp=%016x" % i])
        records = [
            rr(service, 12, instance),
            rr(instance, 33, struct.pack("!HHH", 0, 0, 443) + host),
            rr(instance, 16, txt),
        ] + [rr(host, 1, struct.pack("!I", 0x0A000000 + i * 64 + n)) for n in range(40)]
        s.sendto(response(records), (GROUP, 5353))
    seconds = paced(count, 1000, send)
    print(json.dumps({"packets": count, "seconds": seconds}))

def queries(count, seconds, peer, server):
    multicast = mdns_socket(5353, peer)
    multicast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(peer))
    legacy = mdns_socket(0, peer)
    query = struct.pack("!HHHHHH", 0x2424, 0, 1, 0, 0, 0) + name(b"_openwork", b"_tcp", b"local") + struct.pack("!HH", 12, 1)
    answers = {"multicast": 0, "unicast": 0}
    def drain(timeout):
        while True:
            ready, _, _ = select.select([multicast, legacy], [], [], timeout)
            if not ready:
                return
            timeout = 0
            for s in ready:
                packet, source = s.recvfrom(9000)
                if source[0] == server and len(packet) > 2 and packet[2] & 0x80:
                    answers["multicast" if s is multicast else "unicast"] += 1
    def send(_):
        multicast.sendto(query, (GROUP, 5353))
        legacy.sendto(query, (GROUP, 5353))
        drain(0)
    elapsed = paced(count, count / seconds, send)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        drain(max(0, end - time.monotonic()))
    print(json.dumps({"queries": count, "seconds": elapsed, "multicastAnswers": answers["multicast"], "unicastAnswers": answers["unicast"]}))

mode = sys.argv[1]
if mode == "flood":
    flood(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
elif mode == "instances":
    instances(int(sys.argv[2]), sys.argv[3])
else:
    queries(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5])
"#;

/// Runs [`LAN_PEER`] on the peer with `args`; its JSON line.
fn lan_peer(lan: &Lan, args: &[&str]) -> Value {
    let output = output_of(
        lan.on_peer("/usr/bin/python3")
            .arg("-c")
            .arg(LAN_PEER)
            .args(args),
    );
    assert!(
        output.status.success(),
        "{}",
        openwork_tests::fixtures::describe(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM).
fn status_kb(pid: u64, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// UDP datagrams delivered to sockets and dropped for a full receive buffer, in the
/// server's namespace (`/proc/net/snmp` is per namespace).
fn udp_counters(lan: &Lan) -> (u64, u64) {
    let output = output_of(lan.on_server("cat").arg("/proc/net/snmp"));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let field = |wanted: &str| {
        let at = names.split_whitespace().position(|n| n == wanted).unwrap();
        values
            .split_whitespace()
            .nth(at)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    (field("InDatagrams"), field("RcvbufErrors"))
}

/// How much the server's RSS may grow while the LAN floods it: nothing it is sent is kept,
/// so what remains is allocator noise (the parse of a query is freed when it is answered).
/// mdns-sd grew by about 11.5 KB a packet here (+85 MB from the 7,369 of 20,000 it read at
/// 400 a second); a leak of even 200 bytes a packet would pass 4 MB. Measured after the
/// change: +16 kB.
const FLOOD_RSS_GROWTH_KB: u64 = 4 * 1024;

#[test]
fn mdns_flood_from_the_lan_neither_grows_the_server_nor_makes_it_an_amplifier() {
    let Some(lan) = Lan::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = mdns_server(&lan, dir.path());
    // The pid in the ready line is the server's own (`ip netns exec` execs).
    let pid = server.ready["pid"].as_u64().unwrap();
    discovered_from_peer(&lan, &server);
    let rss_before = status_kb(pid, "VmRSS").unwrap();
    let (delivered_before, dropped_before) = udp_counters(&lan);

    let flood = lan_peer(&lan, &["flood", "20000", "4000", netns::PEER_IP]);
    let (delivered, dropped) = udp_counters(&lan);
    let (delivered, dropped) = (delivered - delivered_before, dropped - dropped_before);
    // Whatever it still has queued is read by the time its answers below come back.
    let burst = lan_peer(
        &lan,
        &["queries", "2000", "2", netns::PEER_IP, netns::SERVER_IP],
    );
    let rss_after = status_kb(pid, "VmRSS").unwrap();
    eprintln!(
        "mDNS flood: {flood}; {delivered} delivered, {dropped} dropped; server VmRSS {rss_before} kB -> {rss_after} kB; query burst: {burst}"
    );
    assert!(
        rss_after <= rss_before + FLOOD_RSS_GROWTH_KB,
        "the server's RSS grew from {rss_before} kB to {rss_after} kB with {delivered} hostile mDNS responses"
    );
    // The server must really have been handed the flood, or the RSS says nothing.
    assert!(
        delivered >= 18_000,
        "only {delivered} datagrams delivered ({dropped} dropped at a full buffer): {flood}"
    );

    // RFC 6762 §6: at most one multicast answer a second (per record and interface), and
    // legacy unicast answers within their own budget; but answers still. Queries span
    // `seconds`, so at most one answer per started second (mdns-sd: 1,705 unicast answers
    // to the 2,000 legacy queries).
    let seconds = burst["seconds"].as_f64().unwrap().floor() as u64 + 1;
    let multicast = burst["multicastAnswers"].as_u64().unwrap();
    let unicast = burst["unicastAnswers"].as_u64().unwrap();
    assert!(
        (1..=seconds).contains(&multicast),
        "{multicast} multicast answers to 2,000 queries: {burst}"
    );
    let budget = openwork_runtime::remote::mdns::responder::UNICAST_ANSWERS_PER_SECOND;
    assert!(
        (1..=u64::from(budget) * seconds).contains(&unicast),
        "{unicast} unicast answers to 2,000 legacy queries: {burst}"
    );

    // And it is still found, with the right fingerprint.
    discovered_from_peer(&lan, &server);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn discover_stays_bounded_when_the_lan_floods_it_with_fake_instances() {
    let Some(lan) = Lan::create() else {
        return;
    };
    let server_exe = openwork_tests::host_bin("openwork-server-v2");
    // The peak RSS of `discover` (VmHWM; `ip netns exec` execs, so the child is it),
    // sampled until it exits, with its JSON output.
    let run = |flood: bool| -> (Vec<Value>, u64) {
        let flooder = flood.then(|| {
            let mut command = lan.on_peer("/usr/bin/python3");
            command
                .arg("-c")
                .arg(LAN_PEER)
                .args(["instances", "6000", netns::PEER_IP])
                .stdout(std::process::Stdio::null());
            command.spawn().unwrap()
        });
        let mut discover = lan.on_server(&server_exe);
        discover
            .args(["discover", "--timeout", "4", "--json"])
            .stdout(std::process::Stdio::piped());
        let mut child = discover.spawn().unwrap();
        let pid = u64::from(child.id());
        let mut peak = 0;
        let started = std::time::Instant::now();
        let exited = openwork_tests::server::wait_until(Duration::from_secs(30), || {
            peak = peak.max(status_kb(pid, "VmHWM").unwrap_or(0));
            child.try_wait().unwrap().is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        assert!(
            exited,
            "discover --timeout 4 still running after {:?}, peak RSS {peak} kB",
            started.elapsed()
        );
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        if let Some(mut flooder) = flooder {
            let _ = flooder.kill();
            let _ = flooder.wait();
        }
        (serde_json::from_slice(&output.stdout).unwrap(), peak)
    };
    let (quiet, quiet_peak) = run(false);
    assert!(quiet.is_empty(), "{quiet:?}");
    let (found, peak) = run(true);
    eprintln!(
        "discover under a flood of fake instances: {} listed, peak RSS {peak} kB (quiet: {quiet_peak} kB)",
        found.len()
    );
    let budget = openwork_runtime::remote::mdns::browser::MAX_INSTANCES;
    assert!(
        (1..=budget).contains(&found.len()),
        "{} instances listed",
        found.len()
    );
    let addresses = openwork_runtime::remote::mdns::browser::MAX_ADDRESSES;
    assert!(
        found
            .iter()
            .all(|f| f["addresses"].as_array().unwrap().len() <= addresses)
    );
    assert!(
        peak <= quiet_peak + 4 * 1024,
        "discover's peak RSS went from {quiet_peak} kB to {peak} kB under the flood"
    );
}

#[test]
fn opencodes_published_sdk_works_over_https_through_the_proxy() {
    // The real opencode (the pinned one, from the cache the release tests fill), behind a
    // server that speaks TLS; node trusts the generated certificate and nothing else.
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "node is needed for the SDK-over-HTTPS test"
        );
        eprintln!("SKIPPED (loudly): node is not installed");
        return;
    }
    let target = openwork_payload::targets::host().expect("a known host target");
    let opencode = openwork_packager::fetch::ensure_pinned_opencode(&target.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerBuilder::executable(&openwork_tests::host_bin("openwork-server-v2"), dir.path())
            .isolated_home()
            .arg("--sidecar")
            .arg(format!("opencode={}", opencode.display()))
            .arg("--tls")
            .arg("on")
            .start();
    let port = server.ready["port"].as_u64().unwrap();
    assert!(
        server.ready["tlsFingerprint"].is_string(),
        "{}",
        server.ready
    );
    let cert = server.data_dir.join("tls/cert.pem");
    let url = format!("https://localhost:{port}");

    let client_dir = openwork_tests::workspace_root().join("clients/typescript");
    let npm = |args: &[&str]| {
        let output = output_of(Command::new("npm").args(args).current_dir(&client_dir));
        assert!(
            output.status.success(),
            "{}",
            openwork_tests::fixtures::describe(&output)
        );
    };
    if !client_dir.join("node_modules").exists() {
        npm(&["ci", "--no-audit", "--no-fund"]);
    }
    npm(&["run", "build"]);
    let node_script = |script: &str, extra_ca: Option<&Path>| {
        let mut command = Command::new("node");
        command
            // Node 20 (what CI installs) has WebSocket behind this flag.
            .arg("--experimental-websocket")
            .arg(script)
            .current_dir(&client_dir)
            .env("OPENWORK_URL", &url)
            .env("OPENWORK_TOKEN", &server.token)
            .env_remove("NODE_TLS_REJECT_UNAUTHORIZED");
        match extra_ca {
            Some(cert) => command.env("NODE_EXTRA_CA_CERTS", cert),
            None => command.env_remove("NODE_EXTRA_CA_CERTS"),
        };
        output_of(&mut command)
    };
    let node = |extra_ca: Option<&Path>| node_script("test/e2e.mjs", extra_ca);
    let trusted = node(Some(&cert));
    let out = String::from_utf8_lossy(&trusted.stdout).into_owned();
    assert!(
        trusted.status.success(),
        "{}\nserver:\n{}",
        openwork_tests::fixtures::describe(&trusted),
        server.stderr()
    );
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(seen["baseUrl"], format!("{url}/opencode"), "{seen}");
    assert!(
        seen["sessionTitle"].as_str().unwrap().starts_with("e2e "),
        "{seen}"
    );
    assert_eq!(seen["firstEvent"], "snapshot", "{seen}");
    // opencode's own SSE stream through the proxy, and a terminal: opencode's SDK creates a
    // PTY through the proxy, and a WebSocket (wss://, upgraded through the proxy) runs a
    // command in it.
    let pty = node_script("test/pty.mjs", Some(&cert));
    assert!(
        pty.status.success(),
        "{}\nserver:\n{}",
        openwork_tests::fixtures::describe(&pty),
        server.stderr()
    );
    let pty: Value = serde_json::from_str(String::from_utf8_lossy(&pty.stdout).trim()).unwrap();
    assert_eq!(pty["firstEvent"], "server.connected", "{pty}");
    assert_eq!(pty["echoed"], true, "{pty}");
    // Without the certificate, node refuses the server.
    let refused = node(None);
    assert!(
        !refused.status.success(),
        "node accepted an unknown certificate"
    );
}
