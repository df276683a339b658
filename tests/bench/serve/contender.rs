//! The contenders and their sampler: one timed start of ours, bare opencode or the
//! orchestrator in an isolated home, from spawn to ready (health polled and hedged, or the
//! ready line, or the orchestrator's own log), its idle memory and tree, and its stop.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::measure::Stats;
use crate::procs::{Running, describe_exit, isolated_command, mkdir, proc_name, vm_rss};

/// Health poll interval for bare opencode and the orchestrator's opencode port.
pub(super) const POLL: Duration = Duration::from_millis(5);
/// An unanswered health probe gets another beside it after this long (the server's own
/// readiness probes do the same).
pub(super) const HEDGE: Duration = Duration::from_millis(50);
/// opencode's basic-auth user name (`OPENCODE_SERVER_USERNAME`'s default).
pub(super) const OPENCODE_USER: &str = "opencode";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `openwork-server-v2 serve`, the packed artifact.
    Ours,
    /// `opencode serve`.
    Bare,
    /// `openwork serve` of openwork-orchestrator.
    Orchestrator,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Ours => "openwork-server-v2",
            Kind::Bare => "opencode",
            Kind::Orchestrator => "orchestrator",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One start of the packed artifact with an empty data directory: extraction of the whole
/// runtime, then the same readiness as a warm start. The data directory goes afterwards.
pub(super) fn first_start(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    round: usize,
    idle: Duration,
) -> anyhow::Result<Duration> {
    let data_dir = work.join(format!("first-start-data-{round}"));
    let relative = env
        .runtime_dir
        .strip_prefix(&env.data_dir)
        .context("the runtime dir is not in the data dir")?;
    let fresh = Environment {
        runtime_dir: data_dir.join(relative),
        data_dir: mkdir(&data_dir)?,
        ..env.clone()
    };
    let workspace = mkdir(&work.join("workspaces").join(format!("first-{round}")))?;
    let sample = ours
        .run_once(&fresh, &workspace, round, idle)
        .with_context(|| format!("first start (round {round})"))?;
    std::fs::remove_dir_all(&data_dir).with_context(|| format!("remove {}", data_dir.display()))?;
    Ok(sample.ready)
}

/// What every run needs besides its contender.
#[derive(Clone)]
pub(super) struct Environment {
    /// Our server's data directory, extracted once before the first round.
    pub(super) data_dir: PathBuf,
    /// The runtime directory in it.
    pub(super) runtime_dir: PathBuf,
    /// opencode in that runtime directory.
    pub(super) opencode: PathBuf,
    /// What the orchestrator runs as its openwork-server.
    pub(super) stand_in: PathBuf,
}

/// One contender, its isolated home and its measurements.
pub(super) struct Contender {
    pub(super) kind: Kind,
    pub(super) exe: PathBuf,
    pub(super) home: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) samples: Vec<Sample>,
    pub(super) failed: Option<String>,
}

/// One timed start.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Sample {
    pub(super) round: usize,
    /// Spawn to ready (see the module docs for what ready means per contender).
    #[serde(serialize_with = "as_ms")]
    pub(super) ready: Duration,
    /// The orchestrator: spawn to the first 200 from its opencode port.
    #[serde(serialize_with = "as_ms_opt")]
    pub(super) polled: Option<Duration>,
    /// The orchestrator: spawn to its log line saying it spawned opencode.
    #[serde(serialize_with = "as_ms_opt")]
    pub(super) opencode_spawned: Option<Duration>,
    /// Ours: opencode's spawn to healthy as the server measured and logged it
    /// (`startupMs`), so that `ready` minus this is the server's own share.
    #[serde(serialize_with = "as_ms_opt")]
    pub(super) opencode_startup: Option<Duration>,
    /// VmRSS of the contender's own process after the idle time.
    pub(super) rss: u64,
    /// Its descendants then, with their VmRSS.
    pub(super) children: Vec<ProcInfo>,
    /// SIGTERM to exit.
    #[serde(serialize_with = "as_ms")]
    pub(super) stop: Duration,
    /// How it exited.
    pub(super) exit: String,
    /// Processes of its tree still running `ORPHAN_GRACE` after it exited.
    pub(super) orphans: Vec<String>,
    /// The orchestrator's own log lines up to opencode healthy, with their time since spawn.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) timeline: Vec<String>,
    /// The first lines of its stderr.
    pub(super) stderr_head: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct ProcInfo {
    pub(super) pid: u32,
    pub(super) name: String,
    pub(super) exe: Option<PathBuf>,
    pub(super) rss: u64,
}

impl Contender {
    pub(super) fn new(kind: Kind, work: &Path, exe: PathBuf) -> anyhow::Result<Contender> {
        let home = mkdir(&work.join("homes").join(kind.name()))?;
        Ok(Contender {
            kind,
            exe,
            home,
            logs: mkdir(&work.join("logs"))?,
            samples: Vec::new(),
            failed: None,
        })
    }

    /// The contender's command: see [`isolated_command`].
    pub(super) fn command(&self, workspace: &Path) -> anyhow::Result<Command> {
        isolated_command(&self.exe, &self.home, workspace)
    }

    pub(super) fn run_once(
        &self,
        env: &Environment,
        workspace: &Path,
        round: usize,
        idle: Duration,
    ) -> anyhow::Result<Sample> {
        let stderr_path = self
            .logs
            .join(format!("{}-{round}.stderr", self.kind.name()));
        let mut cmd = self.command(workspace)?;
        cmd.stderr(
            std::fs::File::create(&stderr_path)
                .with_context(|| format!("create {}", stderr_path.display()))?,
        );
        let password = password(round);
        let mut opencode_port = None;
        match self.kind {
            Kind::Ours => {
                cmd.arg("serve")
                    .args(["--port", "0"])
                    .arg("--data-dir")
                    .arg(&env.data_dir)
                    .arg("--workspace")
                    .arg(workspace);
            }
            Kind::Bare => {
                let port = free_port()?;
                opencode_port = Some(port);
                cmd.args(["serve", "--hostname", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .env("OPENCODE_SERVER_PASSWORD", &password);
            }
            Kind::Orchestrator => {
                let port = free_port()?;
                opencode_port = Some(port);
                // Nothing may be downloaded: both sidecars are given, and the download
                // locations point at a closed loopback port in case it tries anyway.
                let nowhere = "http://127.0.0.1:9/";
                cmd.arg("serve")
                    .arg("--workspace")
                    .arg(workspace)
                    .arg("--data-dir")
                    .arg(self.home.join("orchestrator-data"))
                    .arg("--opencode-bin")
                    .arg(&env.opencode)
                    .args(["--opencode-source", "external"])
                    .arg("--openwork-server-bin")
                    .arg(&env.stand_in)
                    .args(["--sidecar-source", "external", "--allow-external"])
                    .arg("--opencode-port")
                    .arg(port.to_string())
                    .arg("--openwork-port")
                    .arg(free_port()?.to_string())
                    .args(["--sidecar-base-url", nowhere])
                    .arg("--sidecar-manifest")
                    .arg(format!("{nowhere}manifest.json"))
                    .args(["--log-format", "json", "--no-color"])
                    .env("OPENWORK_OPENCODE_USERNAME", OPENCODE_USER)
                    .env("OPENWORK_OPENCODE_PASSWORD", &password)
                    // It refuses given credentials unless told that this is intended.
                    .env("OPENWORK_INTERNAL_ALLOW_OPENCODE_CREDENTIALS", "1");
            }
        }
        let authorization = basic_auth(OPENCODE_USER, &password);

        let mut running = Running::spawn(&mut cmd, &stderr_path)?;
        let mut timeline = Vec::new();
        let (ready, polled, opencode_spawned) = match self.kind {
            Kind::Ours => {
                let (at, ready) = running.wait_ready_line()?;
                let dir = ready["runtimeDir"].as_str().map(PathBuf::from);
                if dir.as_deref() != Some(env.runtime_dir.as_path()) {
                    bail!(
                        "the server did not use the runtime extracted before (a warm start \
                         was wanted): {ready}"
                    );
                }
                (at.duration_since(running.spawned), None, None)
            }
            Kind::Bare => {
                let port = opencode_port.expect("bare opencode has a port");
                let at = running.poll_health(port, &authorization)?;
                (at.duration_since(running.spawned), None, None)
            }
            Kind::Orchestrator => {
                let port = opencode_port.expect("the orchestrator's opencode has a port");
                let seen = running.wait_orchestrator(port, &authorization)?;
                let since = |at: Instant| at.duration_since(running.spawned);
                timeline = seen
                    .timeline
                    .iter()
                    .map(|(at, what)| format!("{:.1} ms {what}", since(*at).as_secs_f64() * 1e3))
                    .collect();
                (
                    since(seen.healthy),
                    Some(since(seen.polled)),
                    seen.spawned.map(since),
                )
            }
        };
        running.observe();
        std::thread::sleep(idle);
        running.observe();
        let rss = vm_rss(running.pid())
            .with_context(|| format!("read the RSS of {} (it exited?)", self.kind))?;
        let children = running
            .descendants()
            .into_iter()
            .filter_map(|p| {
                Some(ProcInfo {
                    pid: p.pid,
                    name: proc_name(p.pid)?,
                    exe: std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok(),
                    rss: vm_rss(p.pid).ok()?,
                })
            })
            .collect();
        let (stop, status) = running.terminate()?;
        let orphans = running.left_behind();
        let opencode_startup = match self.kind {
            Kind::Ours => logged_startup(&stderr_path),
            _ => None,
        };
        Ok(Sample {
            round,
            ready,
            polled,
            opencode_spawned,
            opencode_startup,
            rss,
            children,
            stop,
            exit: describe_exit(status),
            orphans,
            timeline,
            stderr_head: head_lines(&stderr_path, 6),
        })
    }

    /// Statistics of one duration of every sample that has it; `None` if none has.
    pub(super) fn durations(&self, pick: impl Fn(&Sample) -> Option<Duration>) -> Option<Stats> {
        let picked: Vec<Duration> = self.samples.iter().filter_map(pick).collect();
        (!picked.is_empty()).then(|| Stats::of(&picked))
    }

    pub(super) fn details(&self) -> Value {
        json!({
            "name": self.kind.name(),
            "executable": self.exe,
            "failed": self.failed,
            "ready": self.durations(|s| Some(s.ready)),
            "samples": self.samples,
        })
    }
}

impl Running {
    /// When `GET /global/health` on `port` first answered 200, polled every [`POLL`] and
    /// hedged as the server's own readiness is: opencode 1.18 accepts connections about
    /// 0.4 s before it answers them and never answers those, so a probe unanswered for
    /// [`HEDGE`] gets another beside it. Without that the floor would wait out a probe's
    /// read limit and flatter every contender measured against it.
    pub(super) fn poll_health(
        &mut self,
        port: u16,
        authorization: &str,
    ) -> anyhow::Result<Instant> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (answers, answered) = std::sync::mpsc::channel();
        let mut in_flight = 0usize;
        let mut newest: Option<Instant> = None;
        loop {
            let due = match newest {
                None => true,
                Some(at) if in_flight == 0 => at.elapsed() >= POLL,
                Some(at) => at.elapsed() >= HEDGE,
            };
            if due && in_flight < 16 {
                let (answers, authorization) = (answers.clone(), authorization.to_owned());
                std::thread::spawn(move || answers.send(health_ok(addr, &authorization)));
                in_flight += 1;
                newest = Some(Instant::now());
            }
            match answered.recv_timeout(POLL) {
                Ok(true) => return Ok(Instant::now()),
                Ok(false) => in_flight -= 1,
                Err(_) => {}
            }
            self.check_alive()?;
        }
    }

    /// Waits until the orchestrator has logged opencode healthy and its opencode port has
    /// answered 200.
    pub(super) fn wait_orchestrator(
        &mut self,
        port: u16,
        authorization: &str,
    ) -> anyhow::Result<Seen> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (mut spawned, mut healthy, mut polled) = (None, None, None);
        let mut timeline = Vec::new();
        loop {
            while let Ok((at, line)) = self.lines.try_recv() {
                if let Some(entry) = orchestrator_own_line(&line) {
                    timeline.push((at, entry));
                }
                match orchestrator_event(&line) {
                    Some(OrchestratorEvent::Spawned) if spawned.is_none() => spawned = Some(at),
                    Some(OrchestratorEvent::Healthy) if healthy.is_none() => healthy = Some(at),
                    _ => {}
                }
            }
            if polled.is_none() && health_ok(addr, authorization) {
                polled = Some(Instant::now());
            }
            if let (Some(healthy), Some(polled)) = (healthy, polled) {
                return Ok(Seen {
                    spawned,
                    healthy,
                    polled,
                    timeline,
                });
            }
            self.check_alive()?;
            std::thread::sleep(POLL);
        }
    }
}

pub(super) fn health_ok(addr: SocketAddr, authorization: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET /global/health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The status line is enough: reading to the end would wait on a server that keeps the
    // connection open despite `Connection: close`.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 ")
}

/// What the orchestrator said, and what was seen of its opencode, during one start.
pub(super) struct Seen {
    /// It logged that it spawned opencode.
    pub(super) spawned: Option<Instant>,
    /// It logged opencode healthy.
    pub(super) healthy: Instant,
    /// Its opencode port first answered 200.
    pub(super) polled: Instant,
    /// Its own log lines (not its children's output it passes on), as `component: message`.
    pub(super) timeline: Vec<(Instant, String)>,
}

/// `component: message` of one of the orchestrator's own JSON log lines; `None` for
/// anything else, such as opencode's output that it passes on (those carry a `stream`).
pub(super) fn orchestrator_own_line(line: &str) -> Option<String> {
    let value = serde_json::from_str::<Value>(line).ok()?;
    let attributes = &value["attributes"];
    if !attributes["stream"].is_null() {
        return None;
    }
    Some(format!(
        "{}: {}",
        attributes["service.component"].as_str()?,
        value["body"].as_str()?
    ))
}

/// The first `n` lines of a file, each cut at 300 characters.
pub(super) fn head_lines(path: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .take(n)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum OrchestratorEvent {
    Spawned,
    Healthy,
}

/// The orchestrator's JSON log lines about opencode that matter here.
pub(super) fn orchestrator_event(line: &str) -> Option<OrchestratorEvent> {
    let value = serde_json::from_str::<Value>(line).ok()?;
    if value["attributes"]["service.component"] != "opencode" {
        return None;
    }
    match value["body"].as_str()? {
        "Process spawned" => Some(OrchestratorEvent::Spawned),
        "Healthy" => Some(OrchestratorEvent::Healthy),
        _ => None,
    }
}

/// opencode's start-up time as our server logged it (`"startupMs":N` in its `ready` event
/// for opencode, in either log format); `None` if the log does not say.
pub(super) fn logged_startup(stderr: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(stderr).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("opencode") && l.contains("startupMs"))?;
    let (_, rest) = line.split_once("startupMs")?;
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_millis)
}

/// The value of `name` in the environment process `pid` was started with (Linux).
pub(super) fn environment_value(pid: u32, name: &str) -> anyhow::Result<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("read the environment of {pid}"))?;
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
        .with_context(|| format!("{name} is not in the environment of {pid}"))
}

/// `Basic <base64 user:password>`.
pub(super) fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

pub(super) fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A password for one run's opencode (only loopback sees it; it needs no strength).
pub(super) fn password(round: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{round}-{nanos:08x}-{:x}", std::process::id())
}

/// A port that was free a moment ago.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `opencode x5, sh x5`.
pub(super) fn summarize(names: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(name, n)| format!("{name} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

pub(super) fn as_ms_opt<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(basic_auth("opencode", "pw"), "Basic b3BlbmNvZGU6cHc=");
    }

    #[test]
    fn orchestrator_lines() {
        let line = r#"{"body":"Healthy","attributes":{"service.component":"opencode","url":"x"}}"#;
        assert_eq!(orchestrator_event(line), Some(OrchestratorEvent::Healthy));
        let line = r#"{"body":"Process spawned","attributes":{"service.component":"opencode"}}"#;
        assert_eq!(orchestrator_event(line), Some(OrchestratorEvent::Spawned));
        let other = r#"{"body":"Healthy","attributes":{"service.component":"openwork-server"}}"#;
        assert_eq!(orchestrator_event(other), None);
        assert_eq!(orchestrator_event("[opencode] Healthy"), None);
    }

    #[test]
    fn orchestrator_own_lines_only() {
        let own =
            r#"{"body":"Process spawned","attributes":{"service.component":"opencode","pid":7}}"#;
        assert_eq!(
            orchestrator_own_line(own).as_deref(),
            Some("opencode: Process spawned")
        );
        let passed_on = r#"{"body":"listening","attributes":{"service.component":"opencode","stream":"stdout"}}"#;
        assert_eq!(orchestrator_own_line(passed_on), None);
    }

    #[test]
    fn startup_from_the_server_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z  INFO supervisor sidecar=opencode event=\"starting\" \
             details={\"event\":\"starting\",\"pid\":1,\"port\":2}\n\
             2026-01-01T00:00:01Z  INFO supervisor sidecar=opencode event=\"ready\" \
             details={\"event\":\"ready\",\"pid\":1,\"startupMs\":1155}\n",
        )
        .unwrap();
        assert_eq!(logged_startup(&log), Some(Duration::from_millis(1155)));
        std::fs::write(&log, "nothing\n").unwrap();
        assert_eq!(logged_startup(&log), None);
    }
}
